"""Batch inference (``brr-infer``), one module per concern: ``settings`` (what a run is asked),
``discovery`` (which recordings), ``windows`` (a recording through the engine), ``worker`` (one
recording, start to finish), ``outputs`` (its files, done-markers, resume), ``executors`` (here or on
Ray), ``run`` (the batch, its summary and scores).
"""

from brr.runtime.discovery import RecordingJob, find_recordings
from brr.runtime.outputs import DONE_SUFFIX, RecordingOutputs
from brr.runtime.run import SUMMARY_FILE, InferenceInterrupted, InferenceSummary, run_inference
from brr.runtime.settings import OUTPUT_FORMATS, InferenceSettings, InferenceUsageError, WindowMode
from brr.runtime.windows import (
    EngineFailure,
    EngineOutputError,
    model_windows,
    predict_probabilities,
    predict_probabilities_overlap,
)
from brr.runtime.worker import RecordingEntry, RecordingWorker

__all__ = [
    "DONE_SUFFIX", "OUTPUT_FORMATS", "SUMMARY_FILE", "EngineFailure", "EngineOutputError", "InferenceInterrupted",
    "InferenceSettings", "InferenceSummary", "InferenceUsageError", "RecordingEntry", "RecordingJob",
    "RecordingOutputs", "RecordingWorker", "WindowMode", "find_recordings", "model_windows", "predict_probabilities",
    "predict_probabilities_overlap", "run_inference",
]
