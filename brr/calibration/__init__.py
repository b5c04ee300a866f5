"""Calibration: fp16/bf16 precision plans (the fewest fp32 nodes, proved on windows) and INT8 calibration.

Entry point: :func:`calibrate` (``brr-calibrate``; :func:`calibrate_with` takes the settings as one
:class:`CalibrationSettings`). The search is :class:`PlanSearch`, starting from what one fp32 run tells
(``brr.calibration.ranges``), with its sessions reused (``brr.calibration.sessions``) and its windows on
disk (``brr.calibration.windows.WindowStore``); INT8 lives in ``brr.calibration.int8``; EDF calibration
batches in ``brr.calibration.windows``.
"""

from brr.calibration.flops import count_flops, flop_share, node_flops
from brr.calibration.run import (
    CalibrationError,
    CalibrationResult,
    CalibrationSettings,
    calibrate,
    calibrate_with,
)
from brr.calibration.search import PlanSearch, SearchError
from brr.calibration.windows import EdfBatches

__all__ = ["CalibrationError", "CalibrationResult", "CalibrationSettings", "EdfBatches", "PlanSearch",
           "SearchError", "calibrate", "calibrate_with", "count_flops", "flop_share", "node_flops"]
