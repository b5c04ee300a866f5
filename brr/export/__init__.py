"""Export: fp32 ONNX with probe outputs and stage map, engines per backend, manifests.

Entry points: ``brr.export.run.export_artifacts`` (what ``brr-export`` runs: torch -> ONNX ->
the backend's build -> manifest), ``brr.export.onnx_export.export_onnx``, and the precision plans
(``brr.export.precision_plan``). Verification against PyTorch is the diff's job
(``brr.diff.verify.verify_engine``), run by ``brr-export`` after the build.
"""
