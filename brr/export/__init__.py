"""Export: fp32 ONNX with probe outputs and stage map, engines per backend, manifests, verification.

Entry points: ``brr.export.artifact.export_artifacts`` (what ``brr-export`` runs),
``brr.export.onnx_export.export_onnx``, ``brr.export.engines.build_engine``,
``brr.export.manifest.write_manifest`` / ``verify_manifest``, ``brr.export.verify.verify_engine``.
This package imports nothing at load time so that runtimes can import its leaf modules freely.
"""
