"""brr: train, export, verify and serve the V3 dual-stream EEG seizure detector."""

__version__ = "0.1.0"
