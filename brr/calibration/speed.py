"""What a plan costs on this CPU: ONNX Runtime latency of fp32 and reduced-precision models, same windows."""

from __future__ import annotations

import statistics
import time

import onnx
from polygraphy.logger import G_LOGGER

from brr.backends.onnxrt.runner import onnxruntime_runner


def onnxruntime_latency(model: onnx.ModelProto, feeds: list[dict], repeats: int = 3, name: str = "model",
                        lean: bool = False) -> dict:
    """Median and best seconds per window of an ONNX Runtime CPU session (default optimisations), after a
    warm-up run; every feed is run ``repeats`` times. ``lean``: no memory arena, so the peak is one
    run's (fp16 v3-small engine, measured: 1.45 GB lean, 2.8 GB with the arena, which runs 1.5x faster)."""
    times = []
    with G_LOGGER.verbosity(G_LOGGER.ERROR), onnxruntime_runner(model, name, lean=lean) as runner:
        runner.infer(feeds[0])
        for _ in range(repeats):
            for feed in feeds:
                start = time.perf_counter()
                runner.infer(feed)
                times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "best_s": min(times), "runs": len(times)}


def compare_latency(models: dict[str, onnx.ModelProto], feeds: list[dict], repeats: int = 3,
                    lean: bool = False) -> dict:
    """Latency of each model, and each one's time relative to the first (the fp32 baseline)."""
    results = {name: onnxruntime_latency(model, feeds, repeats, name, lean) for name, model in models.items()}
    baseline = next(iter(results.values()))["median_s"]
    for result in results.values():
        result["relative_to_fp32"] = result["median_s"] / baseline
    return results
