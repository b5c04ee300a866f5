"""Peak memory as brr and its benchmarks report it."""

from __future__ import annotations

import multiprocessing

import numpy as np

from brr.resources import peak_rss_mb


def _report_peak(queue) -> None:
    queue.put(peak_rss_mb())


def test_a_spawned_process_reports_its_own_peak_not_its_parents():
    """ru_maxrss survives exec: a benchmark child spawned after its parent held 600 MB reported 600 MB."""
    held = np.ones(600 * 2**20 // 8)
    assert peak_rss_mb() >= 600
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_report_peak, args=(queue,))
    child.start()
    child_peak = queue.get(timeout=120)
    child.join()
    assert 0 < child_peak < 400, child_peak
    del held


def test_the_peak_grows_with_what_the_process_touches():
    before = peak_rss_mb()
    touched = np.ones(int((before + 300) * 2**20 // 8))
    assert peak_rss_mb() >= before + 250
    del touched
