"""Custom ops of the detector, each in its own folder with every implementation and its spec."""

from brr.ops.eigh import eigh
from brr.ops.selective_scan import selective_scan

__all__ = ["eigh", "selective_scan"]
