"""Our fp16 precision plan against NVIDIA Model Optimizer's ONNX AutoCast, on the same graph and windows.

Run in an environment with ``nvidia-modelopt[onnx]`` (it pins its own onnx/onnxruntime; a venv made
with ``--system-site-packages`` sees brr):

    python benchmarks/autocast_anchor.py CAL/onnx-standard/model.probed.onnx --plan CAL/precision_plan.json \
        --ours FP16/model.probed.onnx --data EDF_OR_DIR --out benchmarks/results/autocast

where ``FP16`` is ``brr-export CHECKPOINT --engine fp16 --ops standard --precision-plan
CAL/precision_plan.json --out FP16`` run in the project's environment.

Both mixed models are judged the same way, by the calibration search's fp16 evaluator given the set of
nodes each keeps in fp32 (fp16 storage of every other node output, fp32 accumulation inside kernels,
as TensorRT runs fp16; ONNX Runtime's CPU provider on the mixed models themselves would compute much
of either in fp32), against ONNX Runtime fp32, with the diff's probe comparator, on the EDF windows
plus the adversarial suite. Reported side by side: non-finite outputs, max error at the logits and at
each stage, nodes computing in fp32, and the ONNX Runtime CPU latency of the two mixed models.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from brr.calibration.run import resolve_config_of, window_samples
from brr.calibration.search import PlanSearch
from brr.calibration.speed import onnxruntime_latency
from brr.diff import AdversarialWindows, ChainedWindows, EdfWindows
from brr.export.precision_plan import PrecisionPlan

FLOAT = onnx.TensorProto.FLOAT


def autocast_fp16(model_path: Path, calibration_feed: dict, data_max: float) -> onnx.ModelProto:
    """AutoCast's rule-based fp16 model: nodes with |outputs| > data_max on the calibration input stay fp32."""
    from modelopt.onnx.autocast import convert_to_mixed_precision

    with tempfile.TemporaryDirectory(prefix="autocast-") as tmp:
        calibration = Path(tmp) / "calibration.npz"
        np.savez(calibration, **calibration_feed)
        # modelopt 0.47 cannot convert the eigendecomposition's Loop body (its standalone type inference
        # asserts on a node of the body), so AutoCast keeps that one Loop node in fp32: counted as one
        # fp32 node, and it spares AutoCast every fp16 hazard of the Jacobi sweeps.
        return convert_to_mixed_precision(str(model_path), low_precision_type="fp16", keep_io_types=True,
                                          op_types_to_exclude=["Loop"], data_max=data_max,
                                          calibration_data=str(calibration))


def float32_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes (Casts aside) with a float32 output: what a mixed model computes in fp32."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]}
    return {n.name for n in inferred.graph.node if n.op_type != "Cast" and any(types.get(o) == FLOAT for o in n.output)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("onnx", type=Path, help="fp32 probed ONNX (model.probed.onnx of brr-export/brr-calibrate)")
    parser.add_argument("--plan", type=Path, required=True, help="our precision_plan.json for this graph")
    parser.add_argument("--ours", type=Path,
                        help="our fp16 model.probed.onnx as brr-export --engine fp16 --precision-plan built it "
                             "(default: converted here, by this environment's onnxruntime, which may differ)")
    parser.add_argument("--data", type=Path, nargs="+", required=True)
    parser.add_argument("--max-windows", type=int, default=2)
    parser.add_argument("--atol", type=float, default=1e-2)
    parser.add_argument("--rtol", type=float, default=1e-2)
    parser.add_argument("--data-max", type=float, default=512.0, help="AutoCast's data_max rule (its default)")
    parser.add_argument("--autocast-windows", type=lambda text: text.split(","), default=None,
                        help="labels of the windows AutoCast calibrates on, as one batch, comma-separated "
                             "(default: the first window; its reference run holds every intermediate tensor)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/autocast"))
    args = parser.parse_args(argv)

    fp32 = onnx.load(str(args.onnx))
    samples = window_samples(fp32)
    windows = list(ChainedWindows([EdfWindows(args.data, samples, samples / 256, args.max_windows),
                                   AdversarialWindows(samples)]).labelled())
    # The detector config (adjacency top-k, Laplacian settings) tells near-tie flips from errors.
    config = resolve_config_of(args.onnx) or (resolve_config_of(args.ours) if args.ours else None)
    search = PlanSearch(fp32, "fp16", windows, args.atol, args.rtol, config)
    plan = PrecisionPlan.load(args.plan)
    ours = onnx.load(str(args.ours)) if args.ours else search.reduced_model(plan.resolve(args.onnx, search.stages))
    # AutoCast's ranges come from one reference run over one batch that keeps every intermediate tensor:
    # two v3 windows already exhaust 24 GiB, so by default it calibrates on the first window only.
    chosen = [(label, feed) for label, feed in windows
              if label in (args.autocast_windows or [windows[0][0]])]
    if not chosen:
        parser.error(f"--autocast-windows names none of the windows: {', '.join(label for label, _ in windows)}")
    batch = {name: np.concatenate([feed[name] for _, feed in chosen]) for name in chosen[0][1]}
    theirs = autocast_fp16(args.onnx, batch, args.data_max)
    original = {n.name for n in fp32.graph.node}
    results = {}
    for name, model in (("brr-plan", ours), ("modelopt-autocast", theirs)):
        kept = float32_nodes(model)
        evaluation = search.evaluate(search.engine(kept & original), stop_at_failure=False)
        results[name] = {
            "nonfinite_outputs": sum(s.precision_nonfinite for s in evaluation.stages.values()),
            "verdicts": {i.input: i.verdict for i in evaluation.inputs},
            "max_abs_err": {stage: s.max_abs_err for stage, s in evaluation.stages.items()},
            "fp32_compute_nodes": len(kept),
        }
        print(f"{name}: {results[name]['nonfinite_outputs']} non-finite, "
              f"{results[name]['fp32_compute_nodes']} fp32 nodes", flush=True)
    feeds = [feed for _, feed in windows]
    latency = {}
    for name, model in (("fp32", fp32), ("brr-plan", ours), ("modelopt-autocast", theirs)):
        try:
            latency[name] = onnxruntime_latency(model, feeds, name=name)
        except Exception as error:  # noqa: BLE001 - a mixed model ONNX Runtime refuses is a result to report
            latency[name] = {"error": str(error).splitlines()[0]}
            print(f"{name}: ONNX Runtime cannot run it: {latency[name]['error']}", flush=True)
        if "median_s" in latency[name] and "median_s" in latency["fp32"]:
            latency[name]["relative_to_fp32"] = latency[name]["median_s"] / latency["fp32"]["median_s"]
    document = {"onnx": str(args.onnx), "plan": str(args.plan), "windows": [label for label, _ in windows],
                "tolerance": {"atol": args.atol, "rtol": args.rtol}, "autocast_data_max": args.data_max,
                "autocast_calibration_windows": [label for label, _ in chosen],
                "results": results, "latency_onnxruntime_cpu": latency}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "autocast_anchor.json").write_text(json.dumps(document, indent=1, default=str))
    stages = list(next(iter(results.values()))["max_abs_err"])
    lines = ["| | " + " | ".join(results) + " |", "|---|" + "---|" * len(results),
             "| non-finite outputs | " + " | ".join(str(r["nonfinite_outputs"]) for r in results.values()) + " |",
             "| nodes computing in fp32 | " + " | ".join(str(r["fp32_compute_nodes"]) for r in results.values()) + " |"]
    lines += [f"| max abs err {s} | " + " | ".join(f"{r['max_abs_err'][s]:.3g}" for r in results.values()) + " |"
              for s in stages]
    lines.append("| ORT CPU s/window | " + " | ".join(
        f"{latency[n]['median_s']:.3f}" if "median_s" in latency[n] else "fails to load" for n in results) + " |")
    lines.append("| verdicts | " + " | ".join(
        ", ".join(sorted(set(r["verdicts"].values()))) for r in results.values()) + " |")
    (args.out / "autocast_anchor.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
