"""Overlap inference against per-window inference: event agreement, speed and peak memory.

    python benchmarks/overlap.py ENGINE EDF... [--stride 10] [--chunk 120] [--rss-chunks 60 120 600] [--eager]

ENGINE is a checkpoint or an export folder written with ``brr-export --split``: its engine that holds a
front and rest (``select_engine(..., split=True)``) runs overlap inference with them and per-window
inference with its whole model, on the engine's own backend and precision. Each recording runs
both ways in this process, through brr-infer's own functions (``predict_probabilities`` and
``predict_probabilities_overlap``, preprocessing included), the order alternating from one recording to
the next so that a drift of the machine's load does not favour one way; the seconds per hour of EEG are
those runs'. With ``--eager``, PyTorch eager fp32 (the engine's source checkpoint) runs each recording
per-window as a third way in the same rotation: the speed of each way against it is then a ratio from one
run, per window of output (at the same stride, a window of output is the same time of EEG every way). Its
events are then the reference of the engine's, either way: what a reduced-precision engine (int8, bf16) changes
in the events against the fp32 checkpoint it was exported from.

Agreement, per-window inference the reference:
- per window, the engine verdict of ``brr.diff.probes.compare_outputs`` on the window's logits (at the
  tolerance of the engine's precision; the events the model's post-processing makes of them must be the same),
  and the logit and probability differences. A window the logits alone reject is judged again at the probes,
  as brr-diff judges (``ProbeJudge``): the two fronts' rounding (a chunk and a window compile different
  convolution blockings) can tip an adjacency top-k near-tie or an eigenbasis choice, two equally correct
  answers (``basis_ambiguous``) that the logits cannot tell from a real divergence. The probes are the
  engine's whole model on the window (what per-window inference serves) against its rest on the window's
  overlap features, so the first stage off tolerance is named;
- per recording, the events brr-infer writes (post-processing of the stitched trace) scored with
  ``brr.events.scoring.score_events``, and each way's events against the recording's annotations
  (``<name>.csv_bi`` beside it) where there are some.

Peak RSS: brr-infer on the first recording in a fresh process per way (and per front chunk), under
``/usr/bin/time -f %M``.

For an OpenVINO engine, the stage table of each way per window of output (``--stages``): per-window, the
whole model on one window; overlap, the front over one chunk scaled to one stride of new signal, plus the
front over a window's two edge spans, plus the rest on one window. Each stage against its limit on this
machine as the harness computes it (``run.stage_limits``: its layers' FLOPs at the GEMM peak of their
precision, its scans' recurrence at the fp32 peak and its transcendentals at the SiLU rate, or its bytes at
the memory bandwidth); the front's work is the whole model's TCN and electrode work scaled by the samples it
runs per window (its convolutions are linear in the samples).
Figures go to ``benchmarks/results/<UTC>-overlap.{json,md}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from report_files import utc_stamp, write_report

from brr.artifact.files import is_checkpoint
from brr.artifact.load import load_runner, load_split_runners, select_engine, tuned_postprocess
from brr.artifact.manifest import read_manifest
from brr.data import open_recording
from brr.data.annotations import read_csv_bi
from brr.diff.compare import EventAgreement
from brr.diff.composed import ProbeJudge, WindowsFed
from brr.diff.probes import compare_outputs
from brr.diff.repro import Judging
from brr.diff.verdict import Verdict
from brr.events.postprocess import PostprocessConfig, probabilities_to_events
from brr.events.scoring import score_events
from brr.machine import cpu_model_and_flags, cpu_threads
from brr.model.config import resolve_config
from brr.model.contract import OUTPUT_NAME
from brr.model.front import FrontGeometry
from brr.runtime.windows import predict_probabilities, predict_probabilities_overlap
from brr.tolerances import TOLERANCES

RESULTS = Path(__file__).parent / "results"
RATE = 256


def run_way(engine, edf: Path, overlap: bool, stride_s: float, chunk_s: float
            ) -> tuple[np.ndarray, WindowsFed, float, float]:
    """(stitched probabilities, every window's logits and inputs, seconds, hours of EEG) of one recording, one
    way."""
    recorder = WindowsFed(engine)
    with open_recording(edf) as stream:
        started = time.perf_counter()
        if overlap:
            chunks = predict_probabilities_overlap(recorder, stream, stride_s, 1, round(chunk_s * RATE))
        else:
            chunks = predict_probabilities(recorder, stream, stride_s, 1)
        trace = np.concatenate(list(chunks))
        seconds = time.perf_counter() - started
        hours = stream.duration_s / 3600
    return trace, recorder, seconds, hours


def event_match(reference: list, hypothesis: list, duration_s: float) -> dict:
    """TP, FP, FN and F1 of ``hypothesis``'s events against ``reference``'s, and the largest boundary shift
    between paired events (None unless both found as many)."""
    scores = score_events(reference, hypothesis, duration_s)["event"]
    shifts = [max(abs(a.start_s - b.start_s), abs(a.stop_s - b.stop_s))
              for a, b in zip(reference, hypothesis)]
    return {**{k: scores[k] for k in ("tp", "fp", "fn", "f1")},
            "max_boundary_shift_s": max(shifts) if len(reference) == len(hypothesis) and shifts else None}


def against_eager(eager: tuple, per_window: tuple, overlap: tuple, postprocess: PostprocessConfig) -> dict:
    """The engine's events, either way, against PyTorch eager fp32's on the same recording (the same
    post-processing), and the largest probability difference."""
    duration_s = len(eager[0]) / RATE
    reference = probabilities_to_events(eager[0], postprocess)
    return {"eager_events": len(reference),
            **{way: {**event_match(reference, probabilities_to_events(run[0], postprocess), duration_s),
                     "max_abs_probability_error": float(np.abs(run[0] - eager[0]).max())}
               for way, run in (("per-window", per_window), ("overlap", overlap))}}


def agreement(edf: Path, per_window: tuple, overlap: tuple, postprocess: PostprocessConfig,
              geometry: FrontGeometry, precision: str, judge: ProbeJudge) -> dict:
    atol, rtol = TOLERANCES[precision]
    events = EventAgreement()
    verdicts: dict[str, int] = {}
    logit_error = []
    # The samples of a window whose front steps differ (its edges), and the rest of it.
    edges = np.zeros(geometry.window, dtype=bool)
    first, last = geometry.edge_steps
    edges[: first * geometry.downsample] = edges[geometry.window - last * geometry.downsample :] = True
    edge_error = interior_error = 0.0
    judged_at_probes = []
    windows = zip(per_window[1].logits, overlap[1].logits, per_window[1].inputs, overlap[1].inputs)
    for index, (ref, eng, samples, features) in enumerate(windows):
        edge_error = max(edge_error, float(np.abs(ref - eng)[edges].max()))
        interior_error = max(interior_error, float(np.abs(ref - eng)[~edges].max()))
        events.add(ref, eng, postprocess)
        verdict = compare_outputs(edf.name, {}, {OUTPUT_NAME: ref[None]}, {OUTPUT_NAME: eng[None]}, None, atol,
                                  rtol, postprocess=postprocess).verdict
        if not verdict.accepted:
            at_probes = judge(f"{edf.name} window {index}", samples, features)
            judged_at_probes.append({"window": index, "logit_verdict": verdict.value,
                                     "verdict": at_probes.verdict.value,
                                     "first_off_stage": at_probes.first_divergent_stage,
                                     "max_abs_logit_error": float(np.abs(ref - eng).max())})
            verdict = at_probes.verdict
        verdicts[verdict.value] = verdicts.get(verdict.value, 0) + 1
        logit_error.append(float(np.abs(ref - eng).max()))
    duration_s = len(per_window[0]) / RATE
    reference = probabilities_to_events(per_window[0], postprocess)
    hypothesis = probabilities_to_events(overlap[0], postprocess)
    recording = event_match(reference, hypothesis, duration_s)
    result = {
        "recording": edf.name, "windows": len(per_window[1].logits),
        "window_verdicts": verdicts, "judged_at_probes": judged_at_probes, "window_events": events.to_dict(),
        "max_abs_logit_error": max(logit_error), "median_window_max_abs_logit_error": float(np.median(logit_error)),
        "max_abs_logit_error_at_edges": edge_error, "max_abs_logit_error_inside": interior_error,
        "max_abs_probability_error": float(np.abs(per_window[0] - overlap[0]).max()),
        "per_window_events": len(reference), "overlap_events": len(hypothesis),
        "recording_events": {k: recording[k] for k in ("tp", "fp", "fn", "f1")},
        "max_boundary_shift_s": recording["max_boundary_shift_s"],
        "seconds": {"per-window": per_window[2], "overlap": overlap[2]}, "hours": per_window[3],
    }
    annotations = edf.with_suffix(".csv_bi")
    if annotations.is_file():
        truth = read_csv_bi(annotations)
        result["vs_annotations_f1"] = {way: score_events(truth, events, duration_s)["event"]["f1"]
                                       for way, events in (("per-window", reference), ("overlap", hypothesis))}
    return result


def identical(recording: dict) -> bool:
    """Whether overlap inference found the events per-window inference found, and no other."""
    return recording["recording_events"]["fp"] == 0 and recording["recording_events"]["fn"] == 0


def number(value: float | None) -> str:
    """A score for the table; '-' where it is undefined (no events on either side)."""
    return "-" if value is None else f"{value:.3g}"


def peak_rss(engine: str, edf: Path, mode: str, stride_s: float, chunk_s: float) -> dict:
    """brr-infer on ``edf`` in a fresh process: peak RSS (KB -> MB) and the recording's own seconds."""
    with tempfile.TemporaryDirectory() as out:
        command = ["/usr/bin/time", "-f", "%M", sys.executable, "-m", "brr.cli.infer", engine, str(edf), "-o", out,
                   "--window-mode", mode, "--stride", str(stride_s), "--front-chunk", str(chunk_s), "-q",
                   "--allow-unverified"]
        run = subprocess.run(command, capture_output=True, text=True, check=True)
        entry = json.loads(Path(out, "summary.json").read_text())["recordings"][0]
    return {"mode": mode, "front_chunk_s": chunk_s if mode == "overlap" else None,
            "peak_rss_mb": round(int(run.stderr.strip().splitlines()[-1]) / 1024, 1),
            "recording_s": round(entry["time_s"], 1)}


def stage_tables(engine: str, geometry: FrontGeometry, stride: int, chunk: int, repeats: int = 3) -> dict:
    """Per window of output at ``stride`` samples, each way's stages of an OpenVINO engine against their limits
    (see the module's docstring); ``chunk``: the samples the front runs on at once."""
    from machine import machine_peaks
    from run import StageWork, openvino_stage_profile, reference_onnx, stage_limits, stage_work

    from brr.model.contract import FRONT_OUTPUT_NAME, INPUT_NAME, GraphPart

    rng, engine_dir = np.random.default_rng(0), Path(engine)
    machine = machine_peaks()
    work = stage_work(reference_onnx(engine_dir))
    window = {INPUT_NAME: rng.standard_normal((1, 19, geometry.window)).astype(np.float32)}
    chunk_feed = {INPUT_NAME: rng.standard_normal((1, 19, geometry.left + chunk + geometry.right)).astype(np.float32)}
    edges_feed = {INPUT_NAME: rng.standard_normal((2, 19, geometry.edge_span)).astype(np.float32)}
    front_samples = stride + 2 * geometry.edge_span  # per window of output
    per_window = openvino_stage_profile(engine_dir, window, repeats)
    front_chunk = openvino_stage_profile(engine_dir, chunk_feed, repeats, part=GraphPart.FRONT)
    edges = openvino_stage_profile(engine_dir, edges_feed, repeats, part=GraphPart.FRONT)
    with load_split_runners(engine_dir) as split:
        features = split.run_front(window[INPUT_NAME])
    rest = openvino_stage_profile(engine_dir, {FRONT_OUTPUT_NAME: features}, repeats, part=GraphPart.REST)
    overlap: dict[str, dict[str, float]] = {}
    for profile, scale in ((front_chunk, stride / chunk), (edges, 1.0), (rest, 1.0)):
        for stage, measured in profile.items():
            into = overlap.setdefault(stage, {"seconds": 0.0, "bytes": 0.0})
            for key in ("seconds", "bytes", "compute_layers", "bf16_layers", "int8_layers"):
                if key in measured:
                    into[key] = into.get(key, 0.0) + measured[key] * (scale if key in ("seconds", "bytes") else 1)
    front_stages = set(GraphPart.FRONT.probe_names)

    def front_over(samples: int) -> dict[str, StageWork]:
        return {stage: count.scaled(samples / geometry.window if stage in front_stages else 1.0)
                for stage, count in work.items()}

    return {"machine": machine, "stride_samples": stride, "chunk_samples": chunk,
            "front_samples_per_window": front_samples,
            "per-window": stage_limits(per_window, work, 1, machine),
            "overlap": stage_limits(overlap, front_over(front_samples), 1, machine),
            # The front's limit had it computed only the stride's new samples: the edge spans are work beyond it.
            "overlap_stride_limit_s": sum(v["limit_s"] for v in stage_limits(overlap, front_over(stride), 1,
                                                                              machine).values())}


def stage_lines(tables: dict) -> list[str]:
    m = tables["machine"]
    lines = ["", (f"Stages per window of output (OpenVINO per-node counters; limit: layers' FLOPs at the GEMM peak "
                  f"of their precision, scans' recurrence at fp32's, fp32 {m['fp32_gemm_gflops']:.0f}"
                  + (f" / bf16 {m['bf16_gemm_gflops']:.0f}" if "bf16_gemm_gflops" in m else "")
                  + " GFLOP/s" + (f" / int8 {m['int8_gemm_gflops']:.0f} GOP/s" if "int8_gemm_gflops" in m else "")
                  + f", plus transcendentals at {m['silu_gvalues']:.1f} G SiLU values/s (the SiLU ms column), or "
                  f"bytes at {m['memory_gbs']:.0f} GB/s; overlap's front runs "
                  f"{tables['front_samples_per_window']} samples a window)"), "",
             "| stage | per-window ms | limit ms | x limit | overlap ms | limit ms | of it SiLU ms | x limit "
             "| bound (overlap) |",
             "|---|---|---|---|---|---|---|---|---|"]
    ways = tables["per-window"], tables["overlap"]
    for stage in sorted(set(ways[0]) | set(ways[1]), key=lambda k: -ways[0].get(k, {"seconds": 0})["seconds"]):
        cells = []
        for way, with_transcendentals in zip(ways, (False, True)):
            v = way.get(stage)
            cells += (["-"] * (3 + with_transcendentals) if v is None else
                      [f"{v['seconds'] * 1e3:.1f}", f"{v['limit_s'] * 1e3:.1f}"]
                      + ([f"{v['transcendental_s'] * 1e3:.1f}"] if with_transcendentals else [])
                      + ["" if v["x_limit"] is None else f"{v['x_limit']:.1f}"])
        lines.append(f"| {stage} | {' | '.join(cells)} | {ways[1].get(stage, {}).get('bound', '-')} |")
    totals = [sum(v["seconds"] for v in way.values()) for way in ways]
    limits = [sum(v["limit_s"] for v in way.values()) for way in ways]
    transcendental = sum(v["transcendental_s"] for v in ways[1].values())
    lines.append(f"| **total** | {totals[0] * 1e3:.0f} | {limits[0] * 1e3:.0f} | {totals[0] / limits[0]:.1f} "
                 f"| {totals[1] * 1e3:.0f} | {limits[1] * 1e3:.0f} | {transcendental * 1e3:.0f} "
                 f"| {totals[1] / limits[1]:.1f} | |")
    flops_limit = sum(v["flops_limit_s"] for v in ways[1].values())
    stride_limit = tables["overlap_stride_limit_s"]
    lines += ["", (f"Without the transcendentals (FLOPs and bytes alone), overlap's limit is {flops_limit * 1e3:.0f} "
                   f"ms: {totals[1] / flops_limit:.1f}x. Counting the front's work as the {tables['stride_samples']} "
                   f"new samples of a stride alone (its edge spans as work beyond the limit), overlap's limit is "
                   f"{stride_limit * 1e3:.0f} ms: {totals[1] / stride_limit:.1f}x.")]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("engine")
    parser.add_argument("edfs", nargs="+", type=Path)
    parser.add_argument("--stride", type=float, default=10.0)
    parser.add_argument("--chunk", type=float, default=120.0, help="front chunk (s) of the agreement runs")
    parser.add_argument("--rss-chunks", type=float, nargs="*", default=[60.0, 120.0, 600.0])
    parser.add_argument("--label", default="", help="what the engine is, for the table's title")
    parser.add_argument("--stages", action="store_true", help="the stage tables of an OpenVINO engine")
    parser.add_argument("--eager", action="store_true",
                        help="also run PyTorch eager fp32 per-window (the engine's source checkpoint) on each recording")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    engine = str(select_engine(args.engine, split=True))
    # Both ways run the engine's precision: they are judged at its tolerance, as its verification is.
    precision = "fp32" if is_checkpoint(Path(engine)) else read_manifest(engine)["precision"]
    postprocess = PostprocessConfig(**(tuned_postprocess(engine) or {}))
    config = resolve_config(read_manifest(engine)["config"]) if not is_checkpoint(Path(engine)) else None
    checkpoint = engine if is_checkpoint(Path(engine)) else read_manifest(engine)["source"]["checkpoint"]
    recordings = []
    with (load_runner(engine) as runner, load_split_runners(engine) as split,
          load_runner(engine, probes=True) as probed,
          load_split_runners(engine, probes=True) as probed_split,
          load_runner(checkpoint) if args.eager else contextlib.nullcontext() as eager):
        judging = (Judging.of_config(config, postprocess) if config is not None else
                   Judging.of(probed, postprocess))
        judge = ProbeJudge(probed, probed_split.rest, judging, *TOLERANCES[precision])
        runners = {"per-window": runner, "overlap": split, **({"eager": eager} if args.eager else {})}
        for index, edf in enumerate(args.edfs):
            order = list(runners)[index % len(runners):] + list(runners)[: index % len(runners)]
            runs = {way: run_way(runners[way], edf, way == "overlap", args.stride, args.chunk) for way in order}
            recordings.append(agreement(edf, runs["per-window"], runs["overlap"], postprocess, split.geometry,
                                        precision, judge))
            if args.eager:
                recordings[-1]["seconds"]["eager"] = runs["eager"][2]
                recordings[-1]["vs_eager"] = against_eager(runs["eager"], runs["per-window"], runs["overlap"],
                                                           postprocess)
            print(json.dumps(recordings[-1]), flush=True)
    tables = (stage_tables(engine, split.geometry, round(args.stride * RATE), round(args.chunk * RATE))
              if args.stages else None)
    memory = [peak_rss(engine, args.edfs[0], "per-window", args.stride, args.chunk)]
    memory += [peak_rss(engine, args.edfs[0], "overlap", args.stride, chunk) for chunk in args.rss_chunks]

    hours = sum(r["hours"] for r in recordings)
    speed = {way: sum(r["seconds"][way] for r in recordings) / hours for way in runners}
    verdicts: dict[str, int] = {}
    for r in recordings:
        for verdict, count in r["window_verdicts"].items():
            verdicts[verdict] = verdicts.get(verdict, 0) + count
    accepted = sum(count for verdict, count in verdicts.items() if Verdict(verdict).accepted)
    at_probes = [window for r in recordings for window in r["judged_at_probes"]]
    first_off: dict[str, int] = {}
    for window in at_probes:
        stage = f"{window['verdict']} at {window['first_off_stage']}"
        first_off[stage] = first_off.get(stage, 0) + 1
    windows = sum(r["windows"] for r in recordings)
    document = {
        "machine": {"cpu": cpu_model_and_flags()[0], "threads": cpu_threads()}, "engine": engine,
        "label": args.label, "precision": precision, "stride_s": args.stride, "front_chunk_s": args.chunk,
        "postprocess": postprocess.__dict__, "recordings": recordings, "memory": memory,
        "summary": {"windows": windows, "window_verdicts": verdicts, "windows_accepted": accepted,
                    "judged_at_probes": {"windows": len(at_probes), "outcomes": first_off},
                    "recordings_with_identical_events": sum(identical(r) for r in recordings),
                    "s_per_hour_of_eeg": speed, "speedup": speed["per-window"] / speed["overlap"],
                    "x_eager": ({way: speed["eager"] / speed[way] for way in ("per-window", "overlap")}
                                if args.eager else None)},
        "stages": tables,
    }
    lines = [(f"Overlap vs per-window inference: {args.label or engine} ({document['machine']['cpu']}, "
             f"{cpu_threads()} threads), stride {args.stride:g} s, front chunk {args.chunk:g} s; windows judged at "
             f"the {precision} tolerance"), "",
             ("| recording | windows | window verdicts (vs per-window) | max abs logit err (edges / inside) | max abs p err | "
             "events per-window / overlap | event F1 | max boundary shift s | F1 vs annotations (pw / ov) | "
             "s per-window | s overlap |"), "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in recordings:
        truth, shift = r.get("vs_annotations_f1"), r["max_boundary_shift_s"]
        verdict_counts = ", ".join(f"{verdict} {count}" for verdict, count in r["window_verdicts"].items())
        inside = f" ({r['max_abs_logit_error_at_edges']:.3g} / {r['max_abs_logit_error_inside']:.3g})"
        vs_truth = "-" if truth is None else f"{number(truth['per-window'])} / {number(truth['overlap'])}"
        lines.append(
            f"| {r['recording']} | {r['windows']} | {verdict_counts} | {r['max_abs_logit_error']:.3g}{inside} | "
            f"{r['max_abs_probability_error']:.3g} | {r['per_window_events']} / {r['overlap_events']} | "
            f"{number(r['recording_events']['f1'])} | {number(shift)} | {vs_truth} | "
            f"{r['seconds']['per-window']:.1f} | {r['seconds']['overlap']:.1f} |")
    lines += ["", (f"Windows accepted by the engine verdict: {accepted} of {windows} ({verdicts}); recordings with "
              f"identical events: {document['summary']['recordings_with_identical_events']} of {len(recordings)}."),
              (f"Windows whose logits alone are beyond tolerance, judged at the probes: {len(at_probes)}"
               + (f" ({', '.join(f'{k}: {n}' for k, n in first_off.items())})" if at_probes else "") + "."),
              (f"Seconds per hour of EEG: per-window {speed['per-window']:.0f}, overlap {speed['overlap']:.0f} "
              f"(x{document['summary']['speedup']:.2f})."
               + (f" PyTorch eager fp32 per-window {speed['eager']:.0f}, in the same rotation: per window of output, "
                  f"per-window is {document['summary']['x_eager']['per-window']:.2f}x eager and overlap "
                  f"{document['summary']['x_eager']['overlap']:.2f}x." if args.eager else "")), "",
              "| brr-infer | front chunk s | peak RSS MB | recording s |", "|---|---|---|---|"]
    lines += [f"| {m['mode']} | {m['front_chunk_s'] or '-'} | {m['peak_rss_mb']} | {m['recording_s']} |"
              for m in memory]
    if args.eager:
        lines += ["", (f"Events against PyTorch eager fp32 (the {precision} engine against the fp32 checkpoint "
                       "it was exported from, the same post-processing; F1 as SzCORE scores events)"), "",
                  "| recording | way | events eager / engine | event F1 | max boundary shift s | max abs p err |",
                  "|---|---|---|---|---|---|"]
        for r in recordings:
            for way in ("per-window", "overlap"):
                match, found = r["vs_eager"][way], r["per_window_events" if way == "per-window" else "overlap_events"]
                lines.append(f"| {r['recording']} | {way} | {r['vs_eager']['eager_events']} / {found} | "
                             f"{number(match['f1'])} | {number(match['max_boundary_shift_s'])} | "
                             f"{match['max_abs_probability_error']:.3g} |")
    if tables is not None:
        lines += stage_lines(tables)
    write_report(Path(args.out), f"{utc_stamp()}-overlap", document, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
