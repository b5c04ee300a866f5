"""Calibration: fp16/bf16 precision plans (the fewest fp32 nodes, proved on windows) and INT8 calibration.

Entry point: :func:`calibrate` (``brr-calibrate``). The search is :class:`PlanSearch`, starting from
what one fp32 run tells (``brr.calibration.ranges``), with its sessions reused (``brr.calibration.sessions``)
and its windows on disk (``brr.calibration.windows.WindowStore``); INT8 lives in ``brr.calibration.int8``;
EDF calibration batches in ``brr.calibration.windows``.
"""

from brr.calibration.flops import count_flops, flop_share, node_flops
from brr.calibration.run import CalibrationError, CalibrationResult, calibrate
from brr.calibration.search import PlanSearch, SearchError
from brr.calibration.windows import EdfBatches

__all__ = ["CalibrationError", "CalibrationResult", "EdfBatches", "PlanSearch", "SearchError", "calibrate",
           "count_flops", "flop_share", "node_flops"]
