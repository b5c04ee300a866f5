"""Peak memory as brr and its benchmarks report it."""

from __future__ import annotations

import multiprocessing

import numpy as np

from brr.resources import peak_rss_mb

HELD_MB = 600


def _report_peak(queue) -> None:
    queue.put(peak_rss_mb())


def _hold_then_spawn(queue) -> None:
    """Touches HELD_MB, then spawns a child that reports its own peak; returns both peaks."""
    held = np.ones(HELD_MB * 2**20 // 8)
    context = multiprocessing.get_context("spawn")
    child_queue = context.Queue()
    child = context.Process(target=_report_peak, args=(child_queue,))
    child.start()
    child_peak = child_queue.get(timeout=120)
    child.join()
    queue.put((peak_rss_mb(), child_peak))
    del held


def test_a_spawned_process_reports_its_own_peak_not_its_parents():
    """ru_maxrss survives exec: a benchmark child spawned after its parent held 600 MB reported 600 MB.
    The parent is a process of its own, so that the test adds nothing to the suite's peak."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    parent = context.Process(target=_hold_then_spawn, args=(queue,))
    parent.start()
    parent_peak, child_peak = queue.get(timeout=240)
    parent.join()
    assert parent_peak >= HELD_MB, parent_peak
    assert 0 < child_peak < HELD_MB - 200, child_peak
