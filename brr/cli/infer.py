"""brr-infer ENGINE INPUT... --out DIR: seizure events for every recording, on any engine.

Exit codes: 0 every recording ok (or already done), 1 some recording failed (see summary.json),
2 usage error (bad option, no recordings, engine refused, a Ray node that cannot see the paths),
130 interrupted (Ctrl-C or SIGTERM; the summary of what finished is written, no half-written file is
left, and a rerun on the same folder does only the rest).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Self

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from brr.artifact.load import select_engine, tuned_postprocess
from brr.artifact.manifest import ManifestError
from brr.cli.common import EXIT_INTERRUPTED, command_parser, run_main
from brr.data.quality import bad_channels_line
from brr.events.postprocess import PostprocessConfig
from brr.model.checkpoint import CheckpointError
from brr.runtime import (
    OUTPUT_FORMATS,
    SUMMARY_FILE,
    InferenceInterrupted,
    InferenceSettings,
    InferenceSummary,
    InferenceUsageError,
    RecordingEntry,
    WindowMode,
    run_inference,
)
from brr.runtime.worker import auto_window_mode

DEFAULTS = InferenceSettings()
# --window-mode's default: chosen per engine and stride (``auto_window_mode``), then recorded as chosen.
AUTO_WINDOW_MODE = "auto"
POST = PostprocessConfig()
# Command-line flag (argparse dest) -> (PostprocessConfig field, its architecture default).
POST_FLAGS = {flag: (field, getattr(POST, field)) for flag, field in (
    ("enter", "enter"), ("leave", "leave"), ("opening", "opening_samples"), ("closing", "closing_samples"),
    ("min_duration", "min_duration_s"), ("max_duration", "max_duration_s"), ("merge_gap", "merge_gap_s"))}


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("brr-infer", __doc__)
    parser.add_argument("engine", help="checkpoint directory, exported engine (its manifest decides the backend), "
                                       "or the folder brr-export --out wrote (its fastest verified engine; see --precision)")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="EDF/BDF files, directories (searched recursively) or glob patterns")
    parser.add_argument("-o", "--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16", "int8"), default=None,
                        help="with an export folder: serve its engine of this precision")
    parser.add_argument("--stride", type=float, default=DEFAULTS.stride_s,
                        help="seconds between 60 s windows")
    parser.add_argument("--window-mode", choices=[AUTO_WINDOW_MODE, *(m.value for m in WindowMode)],
                        default=AUTO_WINDOW_MODE,
                        help="per-window: each window through the whole detector; overlap: the detector's front "
                        "(encoder and electrode projection) runs once over the recording, each window's edges "
                        "apart so that its numbers are per-window's, and only the rest per window (a "
                        "checkpoint, or an export folder written with brr-export --split); auto (default): "
                        "overlap where the engine served holds a front and rest that passed their verification "
                        "and the stride shares samples in whole front steps, else per-window")
    parser.add_argument("--front-chunk", type=float, default=DEFAULTS.front_chunk_s, metavar="SECONDS",
                        help="overlap mode: seconds of EEG the front runs on at once (bounds its memory)")
    parser.add_argument("--batch", type=int, default=None,
                        help="windows per engine call (default: 1 on a CPU, where more only costs memory; a TensorRT "
                             "engine's profile optimum, or 8, on a GPU)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per engine (default: backend's)")
    parser.add_argument("--device", default=DEFAULTS.device,
                        help="cpu or cuda (PyTorch and ONNX Runtime; TensorRT plans always run on the GPU)")
    parser.add_argument("--format", default=",".join(DEFAULTS.formats),
                        help=f"comma-separated subset of {','.join(OUTPUT_FORMATS)} (default all)")
    parser.add_argument("--save-probabilities", action="store_true",
                        help="also write <name>_probabilities.npz (per-second mean and max, float16)")
    parser.add_argument("--reference", metavar="ANNOTATIONS_DIR",
                        help="score against <name>.csv_bi or <name>_events.tsv found there; a BIDS recording "
                        "(<entities>_eeg.edf) against the <entities>_events.tsv with its entities anywhere under it")
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true",
                          help="skip recordings whose outputs are complete and current (the default)")
    existing.add_argument("--overwrite", action="store_true", help="redo every recording")
    parser.add_argument("--executor", choices=("local", "ray"), default="local",
                        help="run here, or one Ray task per recording (pip install '.[ray]')")
    parser.add_argument("--ray-address", default=None, help="ray.init address (default: a local instance)")
    parser.add_argument("--mains", default="60", choices=("50", "60", "none"), help="notch frequency")
    parser.add_argument("--min-recording", type=float, default=DEFAULTS.min_recording_s,
                        help="shorter recordings are reported as too short (seconds, default one window)")
    parser.add_argument("--max-unusable-channels", type=int, default=DEFAULTS.max_unusable_channels,
                        help="a recording with more montage channels non-finite, flat or saturated for most "
                        "of its length fails")
    post = parser.add_argument_group(
        "post-processing", "Defaults: what brr-train chose on validation data for this model (stored in the "
        "checkpoint and carried by brr-export), else " + ", ".join(f"{k}={v}" for k, v in POST_FLAGS.values())
        + ". A flag given here overrides that one setting.")
    post.add_argument("--enter", type=float, help="hysteresis: event starts at p >= this")
    post.add_argument("--leave", type=float, help="hysteresis: event ends at p < this")
    post.add_argument("--opening", type=int, help="opening length (samples)")
    post.add_argument("--closing", type=int, help="closing length (samples)")
    post.add_argument("--min-duration", type=float, help="shortest event (s)")
    post.add_argument("--max-duration", type=float, help="longest event (s)")
    post.add_argument("--merge-gap", type=float, help="merge events closer than this (s)")
    parser.add_argument("--allow-unverified", action="store_true",
                        help="serve an exported engine whose verification failed, never ran or ran another model")
    return parser


def model_postprocess(engine: str) -> dict:
    """The engine's validation-tuned post-processing, or {} (an unreadable engine is refused later,
    by run_inference, with its own message)."""
    try:
        return dict(tuned_postprocess(engine) or {})
    except (ManifestError, CheckpointError, OSError):
        return {}


def chosen_window_mode(args: argparse.Namespace) -> tuple[WindowMode, str | None]:
    """The window mode asked for, ``auto`` chosen for the engine and stride (with why)."""
    if args.window_mode == AUTO_WINDOW_MODE:
        return auto_window_mode(args.engine, args.stride)
    return WindowMode(args.window_mode), None


def settings_from_args(args: argparse.Namespace) -> InferenceSettings:
    try:
        values = model_postprocess(args.engine)
        values.update({field: getattr(args, flag) for flag, (field, _) in POST_FLAGS.items()
                       if getattr(args, flag) is not None})
        postprocess = PostprocessConfig(**values)
    except (TypeError, ValueError) as error:
        raise InferenceUsageError(f"post-processing: {error}") from error
    return InferenceSettings(
        stride_s=args.stride, batch_size=args.batch, threads=args.threads, device=args.device,
        formats=tuple(f.strip() for f in args.format.split(",") if f.strip()),
        save_probabilities=args.save_probabilities, reference_dir=args.reference, overwrite=args.overwrite,
        executor=args.executor, ray_address=args.ray_address, postprocess=postprocess,
        mains_hz=None if args.mains == "none" else float(args.mains), min_recording_s=args.min_recording,
        max_unusable_channels=args.max_unusable_channels, allow_unverified=args.allow_unverified,
        window_mode=chosen_window_mode(args)[0], front_chunk_s=args.front_chunk,
    )


class RichProgress:
    """Two bars (recordings, windows of the current recording) and hours of EEG per minute."""

    def __init__(self, console: Console) -> None:
        # Descriptions hold file names: shown as they are, never read as rich markup.
        self.progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=console)
        self.files = self.progress.add_task("recordings", total=0, rate="")
        self.windows = self.progress.add_task("windows", total=0, rate="", visible=False)
        self.started = time.perf_counter()
        self.eeg_seconds = 0.0
        self.current: str | None = None  # the recording whose windows are being reported

    def __enter__(self) -> Self:
        self.progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.progress.stop()

    def _rate(self) -> str:
        minutes = (time.perf_counter() - self.started) / 60.0
        return f"{self.eeg_seconds / 3600.0 / minutes:.2f} h EEG/min" if minutes > 0 else ""

    def run_started(self, n_recordings: int) -> None:
        self.started = time.perf_counter()
        self.progress.update(self.files, total=n_recordings)

    def recording_started(self, name: str, n_windows: int) -> None:
        self.current = name
        self.progress.reset(self.windows, total=n_windows, description=f"  {name}", visible=True)

    def windows_done(self, n_windows: int, eeg_seconds: float) -> None:
        self.eeg_seconds += eeg_seconds
        self.progress.update(self.windows, advance=n_windows, rate=self._rate())

    def recording_finished(self, entry: RecordingEntry) -> None:
        if entry.status == "ok" and entry.name != self.current:
            # Ray reports whole recordings only, never their windows.
            self.eeg_seconds += entry.duration_s or 0.0
        self.current = None
        self.progress.update(self.files, advance=1, rate=self._rate())


def _fmt_score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def summary_table(summary: InferenceSummary) -> Table:
    title = f"brr-infer: {summary.count('ok')} ok, {summary.count('failed')} failed, {summary.count('skipped')} skipped"
    table = Table(title=title)
    for column in ("recording", "status", "duration", "events", "time", "event F1", "detail"):
        table.add_column(column)
    for entry in summary.entries:
        scores = entry.scores or {}
        f1 = _fmt_score(scores["event"]["f1"]) if "event" in scores else "-"
        quality_note = bad_channels_line(entry.data_quality) if entry.data_quality else ""
        table.add_row(
            Text(entry.name), entry.status,
            "-" if entry.duration_s is None else f"{entry.duration_s / 60:.1f} min",
            "-" if entry.n_events is None else str(entry.n_events),
            f"{entry.time_s:.1f} s", f1, Text(entry.error or scores.get("error", "") or quality_note),
        )
    return table


def say(console: Console, line: str) -> None:
    """Print ``line`` as it is: paths and messages may hold ``[...]``, which is not markup here."""
    console.print(line, markup=False, highlight=False, soft_wrap=True)


def print_summary(console: Console, summary: InferenceSummary) -> None:
    console.print(summary_table(summary))
    rate = summary.eeg_hours_per_minute
    say(console, f"{summary.eeg_hours_processed:.2f} h of EEG in {summary.wall_s / 60:.1f} min"
        + (f" ({rate:.2f} h EEG/min)" if rate is not None else ""))
    if summary.scores:
        for view in ("event", "sample"):
            s = summary.scores[view]
            say(console, f"{view}-based over {summary.scores['n_files']} file(s): sensitivity "
                f"{_fmt_score(s['sensitivity'])}, precision {_fmt_score(s['precision'])}, "
                f"F1 {_fmt_score(s['f1'])}, false alarms/24h {_fmt_score(s['fp_per_24h'])}")
    say(console, f"summary: {summary.out_dir}/{SUMMARY_FILE}")


def describe_engine(console: Console, engine: str, allow_unverified: bool, split: bool = False,
                    quiet: bool = False) -> None:
    """Say how the engine (its front and rest with ``split``) was verified, with ``quiet`` only when that is a
    warning; refusal itself happens when it is loaded."""
    from brr.artifact.files import MANIFEST_FILE
    from brr.artifact.manifest import verification_line

    if not (Path(engine) / MANIFEST_FILE).is_file():
        return
    line = verification_line(engine, split)
    if line.startswith("UNVERIFIED") and allow_unverified:
        line = f"WARNING: serving an unverified engine (--allow-unverified): {line}"
    elif quiet:
        return
    say(console, f"engine {engine}: {line}")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, a scheduler stopping the job) ends the run as Ctrl-C does: the running
    recordings are abandoned cleanly and the summary of the finished ones is written."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread sets handlers
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    args.engine = str(select_engine(args.engine, args.precision, split=args.window_mode == WindowMode.OVERLAP))
    mode, why = chosen_window_mode(args)
    args.window_mode = mode.value
    if why is not None and not args.quiet:
        say(console, f"window mode {mode}: {why}")
    overlap = WindowMode(args.window_mode) is WindowMode.OVERLAP
    settings = settings_from_args(args)
    describe_engine(console, args.engine, args.allow_unverified, split=overlap, quiet=args.quiet)
    try:
        with sigterm_as_interrupt():
            summary = _infer(args, settings, console)
    except InferenceInterrupted as interrupted:
        print_summary(console, interrupted.summary)
        say(console, "interrupted: finished recordings are complete, the rest were not written")
        return EXIT_INTERRUPTED
    if not args.quiet or summary.exit_code != 0:  # quiet: the summary only where a recording failed
        print_summary(console, summary)
    return summary.exit_code


def _infer(args: argparse.Namespace, settings: InferenceSettings, console: Console) -> InferenceSummary:
    if args.quiet:
        return run_inference(args.engine, args.inputs, args.out, settings)
    with RichProgress(console) as progress:
        return run_inference(args.engine, args.inputs, args.out, settings, progress)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("brr-infer", build_parser(), run, argv, mmap_threshold=None)


if __name__ == "__main__":
    sys.exit(main())
