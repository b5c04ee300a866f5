"""Benchmark harness: every engine against PyTorch eager fp32, on the same windows, in one run.

    python benchmarks/run.py [--configs v3-small,v3] [--batches 1,4] [--engines ...] [--repeats 5]

Writes benchmarks/results/<stamp>.json and .md and prints the table. Each engine runs in its own
process (clean peak RSS); each figure is the median of ``repeats`` timed runs after one warm-up,
with min/max as its spread. Speed is reported next to fidelity: the engine's max logit error
against PyTorch fp32 on the same inputs, and the verdict of brr's diff on them at the precision's
tolerance (clean: what export verification would pass); the best clean engine per batch ends the table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from machine import machine_peaks  # noqa: E402
from report_files import utc_stamp, write_report  # noqa: E402

from brr.calibration.flops import count_flops  # noqa: E402
from brr.resources import peak_rss_mb  # noqa: E402

WINDOW_MINUTES = 1.0  # one 60 s window = one minute of EEG at stride 60 s

# engine name -> (brr-export arguments, or None for a PyTorch runner; precision)
ENGINES: dict[str, tuple[list[str] | None, str]] = {
    "torch-fp32": (None, "fp32"),
    "torch-bf16": (None, "bf16"),
    "torch-compile": (None, "fp32"),
    "ort-fp32": (["--backend", "onnxruntime", "--engine", "fp32", "--ops", "standard"], "fp32"),
    "ort-plugin-fp32": (["--backend", "onnxruntime", "--engine", "fp32", "--ops", "plugin"], "fp32"),
    "ort-fp16": (["--backend", "onnxruntime", "--engine", "fp16", "--ops", "standard"], "fp16"),
    "ort-int8": (["--backend", "onnxruntime", "--engine", "int8", "--ops", "standard"], "int8"),
    # int8 in the TCN alone (VNNI/AMX int8 convolutions), every other stage in fp32.
    "ort-int8-tcn": (["--backend", "onnxruntime", "--engine", "int8", "--ops", "standard",
                      "--precision-plan", "int8-tcn"], "int8"),
    "openvino-fp32": (["--backend", "openvino", "--engine", "fp32", "--ops", "standard"], "fp32"),
    "openvino-bf16": (["--backend", "openvino", "--engine", "bf16", "--ops", "standard"], "bf16"),
    # Plugin-mode exports on OpenVINO: the custom nodes run brr's extension (native scan and eigh kernels).
    "openvino-plugin-fp32": (["--backend", "openvino", "--engine", "fp32", "--ops", "plugin"], "fp32"),
    "openvino-plugin-bf16": (["--backend", "openvino", "--engine", "bf16", "--ops", "plugin"], "bf16"),
    # bf16 except the TCN encoder: what a bf16 CPU runs with a clean diff on large-amplitude windows.
    "openvino-plugin-bf16-fp32-tcn": (["--backend", "openvino", "--engine", "bf16", "--ops", "plugin",
                                       "--precision-plan", "bf16-fp32-tcn"], "bf16"),
    # int8 in the TCN alone through NNCF (VNNI/AMX int8 convolutions), the rest fp32; NNCF gives back fp32 to
    # the convolutions the verification windows need.
    "openvino-plugin-int8-tcn": (["--backend", "openvino", "--engine", "int8", "--ops", "plugin",
                                  "--precision-plan", "int8-tcn", "--calibration-windows", "32"], "int8"),
    # The same int8 TCN, the rest bf16 with the default bf16 plan's fp32 islands.
    "openvino-plugin-int8-tcn-bf16": (["--backend", "openvino", "--engine", "int8", "--ops", "plugin",
                                       "--precision-plan", "int8-tcn-bf16", "--calibration-windows", "32"], "int8"),
    "tensorrt-fp32": (["--backend", "tensorrt", "--engine", "fp32", "--ops", "plugin"], "fp32"),
    "tensorrt-fp16": (["--backend", "tensorrt", "--engine", "fp16", "--ops", "plugin"], "fp16"),
    "tensorrt-bf16": (["--backend", "tensorrt", "--engine", "bf16", "--ops", "plugin"], "bf16"),
    # int8: the Q/DQ graph of ONNX Runtime's quantizer, which takes standard ops only.
    "tensorrt-int8": (["--backend", "tensorrt", "--engine", "int8", "--ops", "standard"], "int8"),
}
DEFAULT_ENGINES = ("torch-fp32,torch-compile,torch-bf16,ort-fp32,ort-plugin-fp32,ort-fp16,ort-int8,ort-int8-tcn,"
                   "openvino-fp32,openvino-bf16,openvino-plugin-fp32,openvino-plugin-bf16,"
                   "openvino-plugin-bf16-fp32-tcn,openvino-plugin-int8-tcn,openvino-plugin-int8-tcn-bf16")


def benchmark_windows(n: int, seed: int) -> np.ndarray:
    """Real preprocessed EEG windows from a synthetic recording the project writes itself."""
    import tempfile

    from brr.data import iter_windows, read_recording
    from brr.data.synthetic import write_corpus

    with tempfile.TemporaryDirectory() as tmp:
        write_corpus(tmp, recordings=1, minutes=max(2, n + 1), seed=seed)
        recording = read_recording(next(Path(tmp).glob("*.edf")))
        windows = [w.signals for w in iter_windows(recording, window_s=60, stride_s=60)][:n]
    return np.stack(windows).astype(np.float32)


# Layers that move no data of their own: constants, the graph's ends, and reshapes (OpenVINO runs them in place).
IN_PLACE_LAYERS = {"Const", "Input", "Output", "Reshape"}
COMPUTE_LAYERS = {"FullyConnected", "Convolution", "MatMul"}
# A compute layer's runtime precision -> the machine peak that bounds it (``machine.machine_peaks``' keys).
LAYER_PRECISIONS = {"bf16": "bf16", "i8": "int8", "u8": "int8"}
# The stage of what no node of the model accounts for.
UNATTRIBUTED = "unattributed"


def runtime_layer_stages(runtime_model, stages: dict[str, str]) -> dict[str, str]:
    """Stage of each layer of a compiled OpenVINO model, by ``openvino_stage_profile``'s rules."""
    stage_names = set(stages.values())
    layer_stages: dict[str, str] = {}
    for op in reversed(runtime_model.get_ordered_ops()):  # consumers before their producers
        name, info = op.get_friendly_name(), op.get_rt_info()
        fused = info["originalLayersNames"].astype(str).split(",") if "originalLayersNames" in info else []
        # A layer OpenVINO split off a node is named "<node>/<part>" (the phase rewrite's, a bias it unfused).
        stage = next((stages[n] for candidate in (name, *fused) for n in (candidate, candidate.split("/")[0])
                      if n in stages), name if name in stage_names else None)
        if stage is None:
            consumers = (layer_stages.get(target.get_node().get_friendly_name(), UNATTRIBUTED)
                         for output in op.outputs() for target in output.get_target_inputs())
            stage = next((s for s in consumers if s != UNATTRIBUTED), UNATTRIBUTED)
        layer_stages[name] = stage
    return layer_stages


def openvino_stage_profile(engine_dir: Path, feed: dict, repeats: int = 3, part=None) -> dict[str, dict[str, float]]:
    """Per model stage of one OpenVINO inference: ``seconds`` from the per-node performance counters (each node's
    median over ``repeats`` inferences after a warm-up), and ``bytes`` its executed layers read and write (every
    input and output once, at the precision it runs in), compiled for the feed's static shapes as the runner is.
    ``part`` (a ``GraphPart``): that part of an engine built as front and rest, instead of its whole model.

    Layers are attributed through the exporter's stage map (``model.stages.json`` of the reference export, or
    the stage tags of the part's fp32 graph): a layer named ``<node>/<part>`` to its node's stage, a layer
    OpenVINO fused from several nodes to the stage of the first of its ``originalLayersNames`` the map knows,
    the layer that writes a stage's output (named after it) to that stage. A layer made from no node of the
    model (a layout reorder, a normalisation OpenVINO assembled into one MVN) is attributed to its consumers'
    stage, for which it exists; only what feeds no attributed layer is reported as ``unattributed``.
    """
    import onnx

    from brr.artifact.files import STAGES_FILE, reference_folder
    from brr.artifact.manifest import read_manifest
    from brr.backends.openvino.loader import CompiledModel, openvino_extensions
    from brr.onnx.stages import node_stages

    manifest = read_manifest(engine_dir)
    reference = reference_folder(engine_dir.parent, manifest["ops"])
    if part is None:
        model_file, stages = manifest["model_file"], json.loads((reference / STAGES_FILE).read_text())
    else:
        model_file = manifest["split"][part.value]
        stages = node_stages(onnx.load(str(reference / part.file), load_external_data=False))
    loader = CompiledModel(engine_dir / model_file, manifest["settings"]["inference_precision"],
                           extensions=openvino_extensions(manifest["ops"]))
    loader.config["PERF_COUNT"] = True
    compiled = loader({name: array.shape for name, array in feed.items()})
    request = compiled.create_infer_request()
    request.infer(feed)
    layer_stages = runtime_layer_stages(compiled.get_runtime_model(), stages)
    node_seconds: dict[str, list[float]] = {}
    for _ in range(repeats):
        request.infer(feed)
        for counter in request.get_profiling_info():
            node_seconds.setdefault(counter.node_name, []).append(counter.real_time.total_seconds())
    profile: dict[str, dict[str, float]] = {}

    def stage_of(layer: str) -> dict[str, float]:
        return profile.setdefault(layer_stages.get(layer, UNATTRIBUTED), {"seconds": 0.0, "bytes": 0.0})

    for node, times in node_seconds.items():
        stage_of(node)["seconds"] += statistics.median(times)
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        layer = info["layerType"].astype(str)
        if layer in IN_PLACE_LAYERS:
            continue
        stage = stage_of(op.get_friendly_name())
        ports = [op.input(i) for i in range(op.get_input_size())] + list(op.outputs())
        stage["bytes"] += sum(port.get_element_type().size * int(np.prod(port.get_partial_shape().to_shape()))
                              for port in ports)
        if layer in COMPUTE_LAYERS:  # which GEMM peak bounds the stage: that of the precision its layers ran in
            precision = LAYER_PRECISIONS.get(info["runtimePrecision"].astype(str).lower(), "fp32")
            stage["compute_layers"] = stage.get("compute_layers", 0) + 1
            stage[f"{precision}_layers"] = stage.get(f"{precision}_layers", 0) + 1
    return profile


class StageWork(NamedTuple):
    """A stage's work: FLOPs of its ``layers`` (MatMul, Gemm, Conv), which run at the GEMM peak of the precision
    they are compiled in; FLOPs of its ``recurrence`` (SelectiveScan's), which the scan kernels compute in fp32
    multiply-adds whatever the storage precision, so at the fp32 peak; and its ``transcendentals``, the values
    it evaluates a sigmoid, exp, softplus, ... of (``brr.calibration.flops.TRANSCENDENTAL_OP_TYPES``), at the
    machine's SiLU rate."""

    layers: float = 0.0
    recurrence: float = 0.0
    transcendentals: float = 0.0

    @property
    def flops(self) -> float:
        return self.layers + self.recurrence

    def scaled(self, factor: float) -> StageWork:
        return StageWork(*(part * factor for part in self))


def stage_work(onnx_path: Path) -> dict[str, StageWork]:
    """Work per model stage of one window (MatMul, Gemm, Conv and SelectiveScan FLOPs and transcendental values of
    the fp32 export, by its stage map)."""
    import onnx

    from brr.artifact.files import STAGES_FILE
    from brr.calibration.flops import node_flops, node_transcendentals

    model = onnx.load(str(onnx_path))
    stages = json.loads((onnx_path.parent / STAGES_FILE).read_text())
    scans = {node.name for node in model.graph.node if node.op_type == "SelectiveScan"}
    counted = [("recurrence" if node in scans else "layers", node, count) for node, count in node_flops(model).items()]
    counted += [("transcendentals", node, count) for node, count in node_transcendentals(model).items()]
    parts: dict[str, dict[str, float]] = {}
    for part, node, count in counted:
        into = parts.setdefault(stages.get(node, UNATTRIBUTED), {})
        into[part] = into.get(part, 0.0) + (count or 0.0)
    return {stage: StageWork(**counts) for stage, counts in parts.items()}


def stage_limits(profile: dict[str, dict[str, float]], work: dict[str, StageWork], batch: int, machine: dict
                 ) -> dict[str, dict[str, float]]:
    """Each stage's time limit on this machine, the larger of its compute and its bytes at the memory bandwidth,
    and how far the engine is from it (``x_limit``: measured / limit). Compute: its layers' FLOPs at the peak of
    the precision most of its compute layers ran in (bf16 GEMM, int8 convolution, else fp32 GEMM; fp32 where the
    machine has no such peak), plus its scans' recurrence at the fp32 peak, plus its transcendentals at the SiLU
    rate (``transcendental_s``): the three share the vector units. ``flops_limit_s`` leaves the transcendentals
    out, as limits did before they were counted."""
    total = sum(v["seconds"] for v in profile.values())
    limits = {}
    for stage, measured in sorted(profile.items(), key=lambda kv: -kv[1]["seconds"]):
        precision = next((p for p in ("bf16", "int8") if 2 * measured.get(f"{p}_layers", 0) > measured.get(
            "compute_layers", 0) and f"{p}_gemm_gflops" in machine), "fp32")
        counted = work.get(stage, StageWork()).scaled(batch)
        flops_s = (counted.layers / (machine[f"{precision}_gemm_gflops"] * 1e9)
                   + counted.recurrence / (machine["fp32_gemm_gflops"] * 1e9))
        transcendental_s = counted.transcendentals / (machine["silu_gvalues"] * 1e9)
        memory_s = measured["bytes"] / (machine["memory_gbs"] * 1e9)
        limit = max(flops_s + transcendental_s, memory_s)
        limits[stage] = {**measured, "share": measured["seconds"] / total, "gflop": counted.flops / 1e9,
                         "transcendental_m": counted.transcendentals / 1e6, "transcendental_s": transcendental_s,
                         "limit_s": limit, "flops_limit_s": max(flops_s, memory_s),
                         "bound": f"{precision} compute" if flops_s + transcendental_s >= memory_s else "memory",
                         "x_limit": measured["seconds"] / limit if limit else None}
    return limits


def _measure(engine: str, source: str, inputs_path: str, batch: int, repeats: int, queue) -> None:
    """Child process: load the engine, time it, return timings, peak RSS and the logits."""
    try:
        from brr.backends.torch.runner import TorchRunner

        windows = np.load(inputs_path)
        if engine.startswith("torch"):
            runner = TorchRunner(source, autocast="bf16" if engine == "torch-bf16" else None,
                                 compile=engine == "torch-compile")
        else:
            from brr.artifact.load import load_runner

            runner = load_runner(source)
        with runner:
            feed = {"eeg": np.ascontiguousarray(np.resize(windows, (batch, *windows.shape[1:])))}
            runner.infer(feed)  # warm-up (and compilation)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                runner.infer(feed)
                times.append(time.perf_counter() - start)
            logits = np.concatenate([runner.infer({"eeg": windows[i : i + 1]})["logits"] for i in range(len(windows))])
        peak_rss = peak_rss_mb()  # before the profiling compile
        stages = openvino_stage_profile(Path(source), feed) if engine.startswith("openvino") else None
        queue.put({"times": times, "peak_rss_mb": peak_rss, "logits": logits, "stage_seconds": stages})
    except Exception as exc:  # reported in the results, the other engines still run
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def measure(engine: str, source: str, inputs_path: str, batch: int, repeats: int) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_measure, args=(engine, source, inputs_path, batch, repeats, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def diff_verdict(engine: str, checkpoint: Path, artifact: Path, windows: np.ndarray) -> tuple[str, bool]:
    """(verdict, clean) of brr's diff of the engine against PyTorch fp32 on the fidelity windows, at its
    precision's tolerance: what export verification judges (a top-k near-tie or an eigenbasis choice is
    two correct answers, not an error)."""
    from brr.backends.torch.runner import TorchRunner
    from brr.diff import run_diff
    from brr.diff.engines import Engine

    if engine == "torch-fp32":
        return "reference", True
    if engine == "torch-compile":
        target = Engine(engine, TorchRunner(checkpoint, probes=True, compile=True, name=engine), "fp32",
                        node_level_note="torch.compile has no ONNX graph: compared at its probes")
    elif engine == "torch-bf16":
        target = "torch:bf16"
    else:
        target = artifact
    report = run_diff(checkpoint, [target], [{"eeg": w[None]} for w in windows], fail_on="divergence",
                      node_level=False)
    return report.engines[0].verdict, not report.failed


def build_artifact(engine: str, checkpoint: Path, out: Path, calibration_data: Path | None = None
                   ) -> tuple[Path | None, float, str | None]:
    args = ENGINES[engine][0]
    if args is None:
        return checkpoint, 0.0, None
    calibration = ["--data", str(calibration_data)] if calibration_data and ENGINES[engine][1] == "int8" else []
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "brr.cli.export", str(checkpoint), "--out", str(out), *args,
                           *calibration, "--no-verify"], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        return None, elapsed, (proc.stderr.strip().splitlines() or ["export failed"])[-1]
    options = dict(zip(args[::2], args[1::2]))
    backend, precision, ops = options["--backend"], options["--engine"], options["--ops"]
    # brr-export's layout: the fp32 reference is the ONNX Runtime fp32 engine itself.
    engine_dir = f"onnx-{ops}" if (backend, precision) == ("onnxruntime", "fp32") else f"{backend}-{precision}-{ops}"
    return out / engine_dir, elapsed, None


def reference_onnx(artifact: Path) -> Path:
    """The fp32 ONNX export an engine folder was built from (an OpenVINO folder holds no ONNX)."""
    from brr.artifact.files import ONNX_FILE, reference_folder
    from brr.artifact.manifest import read_manifest

    return reference_folder(artifact.parent, read_manifest(artifact)["ops"]) / ONNX_FILE


def run(configs: list[str], batches: list[int], engines: list[str], repeats: int, n_windows: int,
        workdir: Path, checkpoint: Path | None, calibration_data: Path | None = None) -> dict:
    import torch

    from brr.model import build_detector, save_checkpoint

    sys.path.insert(0, str(HERE))
    from stages import stage_profile

    machine = machine_peaks()
    results, profiles, model_flops = [], {}, {}
    windows = benchmark_windows(n_windows, seed=0)
    inputs_path = workdir / "windows.npy"
    workdir.mkdir(parents=True, exist_ok=True)
    np.save(inputs_path, windows)
    for config in configs:
        ckpt = checkpoint or workdir / f"{config}-checkpoint"
        if checkpoint is None:
            torch.manual_seed(0)
            save_checkpoint(build_detector(config), ckpt)
        from brr.model import load_checkpoint

        model = load_checkpoint(ckpt)
        profile = stage_profile(model, torch.as_tensor(windows[:1]))
        total = sum(profile.values())
        profiles[config] = {k: {"seconds": v, "share": v / total} for k, v in profile.items()}
        reference_logits = None
        for engine in engines:
            artifact, export_s, error = build_artifact(engine, ckpt, workdir / f"{config}-{engine}", calibration_data)
            if error is None and ENGINES[engine][0] is not None and config not in model_flops:
                import onnx

                model_flops[config] = count_flops(onnx.load(str(reference_onnx(artifact))))["total"]
            verdict, clean = diff_verdict(engine, ckpt, artifact, windows) if error is None else (None, False)
            # The export the engine was built from (a standard-ops scan is MatMuls, a plugin one is none).
            work_by_stage = stage_work(reference_onnx(artifact)) if error is None and engine.startswith("openvino") else {}
            for batch in batches:
                entry = {"config": config, "engine": engine, "precision": ENGINES[engine][1], "batch": batch,
                         "export_s": export_s, **{k: machine[k] for k in ("cpu_model", "cpu_flags", "threads")}}
                measured = {"error": error} if error else measure(engine, str(artifact), str(inputs_path), batch, repeats)
                if "error" in measured:
                    results.append({**entry, "error": measured["error"]})
                    print(f"{config:9s} {engine:16s} b={batch}: {measured['error']}")
                    continue
                seconds = statistics.median(measured["times"])
                logits = measured["logits"]
                if engine == "torch-fp32":
                    reference_logits = logits
                error_max = float(np.abs(logits - reference_logits).max()) if reference_logits is not None else None
                finite = bool(np.isfinite(logits).all())
                windows_per_s = batch / seconds
                flops = model_flops.get(config)
                entry.update({
                    "windows_per_s": windows_per_s,
                    "eeg_hours_per_min": windows_per_s * 60 * WINDOW_MINUTES / 60,
                    "latency_per_window_p50_s": seconds / batch,
                    "latency_per_window_p95_s": float(np.percentile(measured["times"], 95)) / batch,
                    "spread_s": [min(measured["times"]), max(measured["times"])],
                    "peak_rss_mb": measured["peak_rss_mb"],
                    "model_gflop_per_window": flops / 1e9 if flops else None,
                    "fp32_peak_fraction": (flops * windows_per_s / 1e9 / machine["fp32_gemm_gflops"]) if flops else None,
                    "max_logit_error": error_max,
                    "diff_verdict": verdict,
                    "diff_clean": finite and clean,
                })
                if measured.get("stage_seconds"):
                    entry["stage_profile"] = stage_limits(measured["stage_seconds"], work_by_stage, batch, machine)
                results.append(entry)
        for peer, key in (("torch-fp32", "speedup_vs_pytorch_eager_fp32"), ("torch-compile", "speedup_vs_torch_compile")):
            rates = {r["batch"]: r["windows_per_s"] for r in results
                     if r["config"] == config and r["engine"] == peer and "windows_per_s" in r}
            for r in results:
                if r["config"] == config and "windows_per_s" in r and r["batch"] in rates:
                    r[key] = r["windows_per_s"] / rates[r["batch"]]
    return {"machine": machine, "results": results, "stage_profile": profiles, "model_flops": model_flops}


def best_clean_engines(results: list[dict]) -> dict[tuple[str, int], dict]:
    """Per (config, batch): the fastest engine whose diff is clean, PyTorch itself excluded."""
    best: dict[tuple[str, int], dict] = {}
    for r in results:
        if r.get("diff_clean") and not r["engine"].startswith("torch-"):
            key = (r["config"], r["batch"])
            if key not in best or r["windows_per_s"] > best[key]["windows_per_s"]:
                best[key] = r
    return best


def _ratio(result: dict, key: str) -> str:
    """A speed-up as the table shows it; empty where its peer was not part of the run."""
    return f"{result[key]:.2f}" if key in result else ""


def markdown(report: dict) -> str:
    m = report["machine"]
    peaks = ", ".join(f"{precision} {max(by_library.values()):.0f} "
                      f"{'GOP/s' if precision == 'int8' else 'GFLOP/s'} ("
                      + ", ".join(f"{library} {value:.0f}" for library, value in by_library.items()) + ")"
                      for precision, by_library in m["gemm_gflops_by_library"].items())
    silu = ", ".join(f"{library} {value:.1f}" for library, value in m["silu_gvalues_by_library"].items())
    lines = [f"CPU: {m['cpu_model']} ({', '.join(m['cpu_flags'])}), {m['threads']} threads; GEMM peak {peaks}; "
             f"SiLU {m['silu_gvalues']:.1f} G values/s ({silu}); memory {m['memory_gbs']:.0f} GB/s (copy, read + "
             "write)", "",
             "| config | engine | batch | windows/s | EEG h/min | p50 s/window | peak RSS MB | fp32 peak | x eager fp32 "
             "| x torch.compile | max logit err | diff verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        if "error" in r:
            lines.append(f"| {r['config']} | {r['engine']} | {r['batch']} | unavailable: {r['error'][:80]} ||||||||||")
            continue
        frac = r["fp32_peak_fraction"]
        eager, compiled = (_ratio(r, key) for key in ("speedup_vs_pytorch_eager_fp32", "speedup_vs_torch_compile"))
        lines.append(
            f"| {r['config']} | {r['engine']} | {r['batch']} | {r['windows_per_s']:.3f} | {r['eeg_hours_per_min']:.3f} "
            f"| {r['latency_per_window_p50_s']:.3f} | {r['peak_rss_mb']:.0f} | {'' if frac is None else f'{frac:.0%}'} "
            f"| {eager} | {compiled} | {r['max_logit_error']:.2e} "
            f"| {r['diff_verdict']}{'' if r['diff_clean'] else ' (fails)'} |")
    for (config, batch), best in best_clean_engines(report["results"]).items():
        lines.append(f"\nBest engine with a clean diff, {config} batch {batch}: **{best['engine']}**, "
                     f"{best['latency_per_window_p50_s']:.3f} s/window, "
                     f"{_ratio(best, 'speedup_vs_pytorch_eager_fp32')}x PyTorch eager fp32"
                     + (f", {_ratio(best, 'speedup_vs_torch_compile')}x torch.compile"
                        if "speedup_vs_torch_compile" in best else ", torch.compile not in this run"))
    for config, profile in report["stage_profile"].items():
        top = max(profile, key=lambda k: profile[k]["share"])
        lines += ["", f"Stage profile, {config} (PyTorch eager, batch 1): the costliest stage is **{top}**", "",
                  "| stage | s | share |", "|---|---|---|"]
        lines += [f"| {k} | {v['seconds']:.3f} | {v['share']:.0%} |" for k, v in profile.items()]
    engine_profiles = [r for r in report["results"] if r.get("stage_profile")]
    if engine_profiles:
        lines += ["", "Stage profile per OpenVINO engine (per-node performance counters, one inference; "
                      "share of the summed node time)", "",
                  "| config | engine | batch | mamba stages (node + edge) | top stages |", "|---|---|---|---|---|"]
        for r in engine_profiles:
            profile = r["stage_profile"]
            mamba = sum(v["share"] for k, v in profile.items() if k in ("node_stream", "edge_weights"))
            top = ", ".join(f"{k} {v['share']:.0%}" for k, v in list(profile.items())[:5])
            lines.append(f"| {r['config']} | {r['engine']} | {r['batch']} | {mamba:.0%} | {top} |")
        for r in engine_profiles:
            lines += ["", (f"Distance to each stage's limit, {r['config']} {r['engine']} batch {r['batch']} (limit: the "
                           f"stage's layers' FLOPs at the GEMM peak of their precision plus its scans' recurrence at "
                           f"the fp32 peak plus its transcendentals at {m['silu_gvalues']:.1f} G SiLU values/s, or "
                           f"its bytes read and written at {m['memory_gbs']:.0f} GB/s, whichever is larger)"), "",
                      "| stage | ms | share | GFLOP | M transcendentals | MB moved | limit ms | of it SiLU ms | bound "
                      "| x limit |", "|---|---|---|---|---|---|---|---|---|---|"]
            for stage, v in r["stage_profile"].items():
                if v["seconds"] >= 1e-3:
                    distance = "" if v["x_limit"] is None else f"{v['x_limit']:.1f}"
                    lines.append(f"| {stage} | {v['seconds'] * 1e3:.1f} | {v['share']:.0%} | {v['gflop']:.2f} "
                                 f"| {v['transcendental_m']:.1f} | {v['bytes'] / 1e6:.0f} | {v['limit_s'] * 1e3:.1f} "
                                 f"| {v['transcendental_s'] * 1e3:.1f} | {v['bound']} | {distance} |")
    for config, flops in report["model_flops"].items():
        lines.append(f"\n{config}: {flops / 1e9:.1f} GFLOP per window (MatMul, Gemm, Conv and the selective scan's "
                     "recurrence, counted from the ONNX graph)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="v3-small,v3")
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--engines", default=DEFAULT_ENGINES, help=f"comma list from: {', '.join(ENGINES)}")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--windows", type=int, default=4, help="distinct windows for the fidelity check")
    parser.add_argument("--checkpoint", type=Path, help="a trained checkpoint instead of a random initialisation")
    parser.add_argument("--calibration-data", type=Path,
                        help="EDF/BDF recordings the int8 engines are calibrated on (default: synthetic noise)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    engines = args.engines.split(",")
    unknown = set(engines) - set(ENGINES)
    if unknown:
        parser.error(f"unknown engines {sorted(unknown)}")
    if "torch-fp32" not in engines:
        engines.insert(0, "torch-fp32")  # every ratio is against it, measured in the same run
    stamp = utc_stamp()
    report = run(args.configs.split(","), [int(b) for b in args.batches.split(",")], engines, args.repeats,
                 args.windows, args.out / f"work-{stamp}", args.checkpoint, args.calibration_data)
    write_report(args.out, stamp, report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
