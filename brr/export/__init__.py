"""Export: fp32 ONNX with probe outputs and stage map, engines per backend, manifests.

Entry points: ``brr.export.artifact.export_artifacts`` (what ``brr-export`` runs),
``brr.export.onnx_export.export_onnx``, the backends' ``build`` (``brr.backends``),
``brr.export.manifest.write_manifest`` / ``verify_manifest``. Verification against PyTorch is the
diff's job (``brr.diff.verify.verify_engine``), run by ``brr-export`` after the build.
This package imports nothing at load time so that runtimes can import its leaf modules freely.
"""
