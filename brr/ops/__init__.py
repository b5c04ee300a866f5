"""Custom ops of the detector, each in its own folder with every implementation and its spec.

Importing an op's folder (``brr.ops.selective_scan``, ``brr.ops.eigh``) registers its PyTorch op;
this package itself imports nothing, so that ``brr.ops.registry`` (what runtimes load kernels through)
does not bring PyTorch into a process that serves an exported engine.
"""
