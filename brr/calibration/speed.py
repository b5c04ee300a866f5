"""What a plan costs on this CPU: ONNX Runtime latency of fp32 and reduced-precision models, same windows."""

from __future__ import annotations

import statistics
import time

import onnx
from polygraphy.logger import G_LOGGER

from brr.backends.onnxrt.runner import onnxruntime_runner


def onnxruntime_latency(model: onnx.ModelProto, feeds: list[dict], repeats: int = 3, name: str = "model") -> dict:
    """Median and best seconds per window of an ONNX Runtime CPU session (default optimisations, the
    serving session's settings), after a warm-up run; every feed is run ``repeats`` times."""
    times = []
    with G_LOGGER.verbosity(G_LOGGER.ERROR), onnxruntime_runner(model, name) as runner:
        runner.infer(feeds[0])
        for _ in range(repeats):
            for feed in feeds:
                start = time.perf_counter()
                runner.infer(feed)
                times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "best_s": min(times), "runs": len(times)}


def compare_latency(models: dict[str, onnx.ModelProto], feeds: list[dict], repeats: int = 3) -> dict:
    """Latency of each model, and each one's time relative to the first (the fp32 baseline)."""
    results = {name: onnxruntime_latency(model, feeds, repeats, name) for name, model in models.items()}
    baseline = next(iter(results.values()))["median_s"]
    for result in results.values():
        result["relative_to_fp32"] = result["median_s"] / baseline
    return results
