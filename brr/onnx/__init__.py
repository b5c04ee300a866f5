"""Transforms of ONNX graphs (``ModelProto`` in, ``ModelProto`` out) shared by export, diff and calibration."""
