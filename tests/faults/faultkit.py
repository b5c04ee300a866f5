"""Builders of broken inputs for the fault-injection suite, and what each one must produce.

Every EDF fault starts from one good 60 s synthetic recording (19 TUH channels, 256 Hz) and changes
exactly one thing: bytes cut off, one header field rewritten, samples that decode to inf, channels
flat or railed, a file that cannot be read. ``EDF_FAULTS`` pairs each with the outcome a person
reading ``summary.json`` must get: the recording fails with this error type and these words (or is
run, with these data-quality counts).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyedflib

from brr.data.synthetic import DIGITAL_MAX, PHYSICAL_RANGE_UV, TUH_LABELS, plan_recording, write_recording

RATE = 256
SECONDS = 60
N_SIGNALS = len(TUH_LABELS)
HEADER_BYTES = 256 * (1 + N_SIGNALS)
# Offset (per signal block, times the signal count) and width of each per-signal header field.
SIGNAL_FIELDS = {"label": (0, 16), "physical_min": (104, 8), "physical_max": (112, 8), "digital_min": (120, 8),
                 "digital_max": (128, 8), "samples_per_record": (216, 8)}
FIXED_FIELDS = {"header_bytes": (184, 8), "records": (236, 8), "record_duration": (244, 8), "signals": (252, 4)}


def good_edf(path: Path, seed: int = 11) -> Path:
    """A 60 s synthetic recording that brr-infer runs without complaint."""
    return write_recording(plan_recording(seed=seed, index=0, duration_s=SECONDS), path)


def _put(data: bytearray, start: int, width: int, text: str) -> None:
    data[start:start + width] = text.encode("ascii").ljust(width)[:width]


def with_fixed_field(name: str, text: str) -> Callable[[bytes], bytes]:
    def change(data: bytes) -> bytes:
        out = bytearray(data)
        _put(out, *FIXED_FIELDS[name], text)
        return bytes(out)
    return change


def with_signal_field(name: str, text: str, signals: range | list[int] = range(N_SIGNALS)) -> Callable[[bytes], bytes]:
    def change(data: bytes) -> bytes:
        out = bytearray(data)
        offset, width = SIGNAL_FIELDS[name]
        for i in signals:
            _put(out, 256 + offset * N_SIGNALS + i * width, width, text)
        return bytes(out)
    return change


def combined(*changes: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
    def change(data: bytes) -> bytes:
        for one in changes:
            data = one(data)
        return data
    return change


def truncated_at(size: int | Callable[[int], int]) -> Callable[[bytes], bytes]:
    return lambda data: data[: size(len(data)) if callable(size) else size]


def write_signals(path: Path, signals: list[np.ndarray], labels=TUH_LABELS, rates: list[int] | None = None,
                  physical: float = PHYSICAL_RANGE_UV) -> Path:
    """An EDF of the given microvolt signals (one data record per second)."""
    rates = rates or [RATE] * len(signals)
    writer = pyedflib.EdfWriter(str(path), len(signals), file_type=pyedflib.FILETYPE_EDF)
    try:
        writer.setSignalHeaders([
            {"label": label, "dimension": "uV", "sample_frequency": rate, "physical_max": physical,
             "physical_min": -physical, "digital_max": DIGITAL_MAX, "digital_min": -DIGITAL_MAX}
            for label, rate in zip(labels, rates, strict=True)])
        writer.writeSamples([np.asarray(s, dtype=np.float64) for s in signals])
    finally:
        writer.close()
    return path


def eeg(seed: int = 0, seconds: int = SECONDS, channels: int = N_SIGNALS) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [20.0 * rng.standard_normal(seconds * RATE) for _ in range(channels)]


def with_channels(flat: tuple[int, ...] = (), railed: tuple[int, ...] = ()) -> list[np.ndarray]:
    signals = eeg()
    for i in flat:
        signals[i] = np.full(SECONDS * RATE, 12.5)  # a dead input at a DC offset
    for i in railed:
        signals[i] = np.full(SECONDS * RATE, PHYSICAL_RANGE_UV)  # stuck at the positive rail
    return signals


@dataclass(frozen=True)
class EdfFault:
    """One broken recording and the outcome it must have in a brr-infer batch."""

    name: str
    build: Callable[[Path, Path], Path | None]  # (good EDF, target path without suffix) -> the file
    error_type: str | None  # None: the recording runs ("ok")
    words: tuple[str, ...] = ()  # in the error message (which also names the file)
    quality: dict[str, int] = field(default_factory=dict)  # bad channel epochs per problem, when it runs


def from_bytes(change: Callable[[bytes], bytes]) -> Callable[[Path, Path], Path]:
    def build(good: Path, target: Path) -> Path:
        path = target.with_suffix(".edf")
        path.write_bytes(change(good.read_bytes()))
        return path
    return build


def from_signals(make: Callable[[], list[np.ndarray]], **kwargs) -> Callable[[Path, Path], Path]:
    return lambda good, target: write_signals(target.with_suffix(".edf"), make(), **kwargs)


def _unreadable_by_permission(good: Path, target: Path) -> Path | None:
    path = from_bytes(lambda data: data)(good, target)
    path.chmod(0)
    return path


def _unreadable_by_io_error(good: Path, target: Path) -> Path:
    # Reading /proc/self/mem at offset 0 fails with EIO for any user, root included.
    path = target.with_suffix(".edf")
    path.symlink_to("/proc/self/mem")
    return path


def _broken_link(good: Path, target: Path) -> Path:
    path = target.with_suffix(".edf")
    path.symlink_to(target.with_name("nowhere.edf"))
    return path


def _random_bytes(good: Path, target: Path) -> Path:
    path = target.with_suffix(".edf")
    path.write_bytes(np.random.default_rng(5).bytes(8192))
    return path


def _text(good: Path, target: Path) -> Path:
    path = target.with_suffix(".edf")
    path.write_text("patient notes, not a recording\n" * 50)
    return path


def _too_short(good: Path, target: Path) -> Path:
    return write_signals(target.with_suffix(".edf"), eeg(seconds=30))


def _mixed_rates(good: Path, target: Path) -> Path:
    signals = eeg()
    signals[5] = np.tile(signals[5], 2)
    return write_signals(target.with_suffix(".edf"), signals, rates=[RATE] * 5 + [2 * RATE] + [RATE] * 13)


def _missing_channel(good: Path, target: Path) -> Path:
    return write_signals(target.with_suffix(".edf"), eeg(channels=18), labels=TUH_LABELS[:-1])


def _duplicate_channel(good: Path, target: Path) -> Path:
    return write_signals(target.with_suffix(".edf"), eeg(channels=20), labels=(*TUH_LABELS, TUH_LABELS[0]))


RUNS_AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0

EDF_FAULTS: list[EdfFault] = [
    # Cut short, at several points.
    EdfFault("trunc_in_fixed_header", from_bytes(truncated_at(100)), "UnreadableRecordingError",
             ("shorter than the 256-byte header",)),
    EdfFault("trunc_after_fixed_header", from_bytes(truncated_at(256)), "TruncatedRecordingError",
             ("truncated",)),
    EdfFault("trunc_in_signal_headers", from_bytes(truncated_at(256 + 16 * N_SIGNALS + 5)),
             "TruncatedRecordingError", ("truncated",)),
    EdfFault("trunc_after_header", from_bytes(truncated_at(HEADER_BYTES)), "TruncatedRecordingError",
             ("truncated", "bytes")),
    EdfFault("trunc_mid_data", from_bytes(truncated_at(lambda n: n // 2)), "TruncatedRecordingError",
             ("truncated",)),
    EdfFault("trunc_last_byte", from_bytes(truncated_at(lambda n: n - 1)), "TruncatedRecordingError",
             ("1 missing",)),
    # Header fields zero, negative, huge, not a number.
    EdfFault("record_duration_zero", from_bytes(with_fixed_field("record_duration", "0")),
             "UnreadableRecordingError", ("data record duration", "positive")),
    EdfFault("record_duration_negative", from_bytes(with_fixed_field("record_duration", "-1")),
             "UnreadableRecordingError", ("Duration",)),
    EdfFault("record_duration_huge", from_bytes(with_fixed_field("record_duration", "99999999")),
             "UnsupportedSamplingRateError", ("sampling rate",)),
    EdfFault("record_duration_text", from_bytes(with_fixed_field("record_duration", "one")),
             "UnreadableRecordingError", ("Duration",)),
    EdfFault("records_zero", from_bytes(with_fixed_field("records", "0")), "UnreadableRecordingError",
             ("Number of Datarecords",)),
    EdfFault("records_negative", from_bytes(with_fixed_field("records", "-5")), "UnreadableRecordingError",
             ("Number of Datarecords",)),
    EdfFault("records_huge", from_bytes(with_fixed_field("records", "99999999")), "TruncatedRecordingError",
             ("truncated",)),
    EdfFault("signals_zero", from_bytes(with_fixed_field("signals", "0")), "UnreadableRecordingError",
             ("number of signals",)),
    EdfFault("signals_huge", from_bytes(with_fixed_field("signals", "9999")), "TruncatedRecordingError",
             ("truncated",)),
    EdfFault("header_bytes_text", from_bytes(with_fixed_field("header_bytes", "xyz")), "UnreadableRecordingError",
             ("Bytes Header",)),
    EdfFault("samples_per_record_zero", from_bytes(with_signal_field("samples_per_record", "0")),
             "UnreadableRecordingError", ("Sample in Datarecord",)),
    EdfFault("samples_per_record_negative", from_bytes(with_signal_field("samples_per_record", "-256")),
             "UnreadableRecordingError", ("Sample in Datarecord",)),
    EdfFault("samples_per_record_huge", from_bytes(with_signal_field("samples_per_record", "99999999")),
             "TruncatedRecordingError", ("truncated",)),
    EdfFault("physical_max_text", from_bytes(with_signal_field("physical_max", "abc")),
             "UnreadableRecordingError", ("Physical Maximum",)),
    EdfFault("physical_range_empty", from_bytes(with_signal_field("physical_max", str(-PHYSICAL_RANGE_UV))),
             "UnreadableRecordingError", ("Physical",)),
    EdfFault("digital_range_empty", from_bytes(with_signal_field("digital_min", str(DIGITAL_MAX))),
             "UnreadableRecordingError", ("digital minimum", "not below digital maximum")),
    EdfFault("digital_range_inverted", from_bytes(combined(with_signal_field("digital_min", str(DIGITAL_MAX)),
                                                           with_signal_field("digital_max", str(-DIGITAL_MAX)))),
             "UnreadableRecordingError", ("digital minimum",)),
    # Values: every sample decodes to +-inf; flat or railed channels.
    EdfFault("all_inf", from_bytes(combined(with_signal_field("physical_min", "-1e308"),
                                            with_signal_field("physical_max", "1e308"))),
             "UnusableRecordingError", ("19 of 19", "nonfinite")),
    EdfFault("all_flat", from_signals(lambda: with_channels(flat=tuple(range(N_SIGNALS)))),
             "UnusableRecordingError", ("19 of 19", "flat")),
    EdfFault("all_railed", from_signals(lambda: with_channels(railed=tuple(range(N_SIGNALS)))),
             "UnusableRecordingError", ("19 of 19", "saturated")),
    EdfFault("five_dead_channels", from_signals(lambda: with_channels(flat=(0, 1, 2), railed=(3, 4))),
             "UnusableRecordingError", ("5 of 19", "at most 4")),
    # Channels, rates, length.
    EdfFault("mixed_rates", _mixed_rates, "UnsupportedSamplingRateError", ("different sampling rates",)),
    EdfFault("missing_channel", _missing_channel, "MissingChannelsError", ("O2",)),
    EdfFault("duplicate_channel", _duplicate_channel, "AmbiguousChannelsError", ("Fp1",)),
    EdfFault("too_short", _too_short, "RecordingTooShortError", ("too short",)),
    # Not a recording at all, or not readable.
    EdfFault("empty", from_bytes(lambda data: b""), "UnreadableRecordingError", ("empty file",)),
    EdfFault("random_bytes", _random_bytes, "UnreadableRecordingError", ("not a readable EDF",)),
    EdfFault("text", _text, "UnreadableRecordingError", ("not a readable EDF",)),
    EdfFault("io_error", _unreadable_by_io_error, "UnreadableRecordingError", ("cannot be read", "Input/output")),
    EdfFault("broken_link", _broken_link, "UnreadableRecordingError", ("no such file",)),
    # Runs, and says what was wrong with it.
    EdfFault("some_dead_channels", from_signals(lambda: with_channels(flat=(2, 7), railed=(11,))), None,
             quality={"flat": 2, "saturated": 1, "nonfinite": 0}),
    EdfFault("one_channel_inf", from_bytes(combined(with_signal_field("physical_min", "-1e308", [18]),
                                                    with_signal_field("physical_max", "1e308", [18]))), None,
             quality={"nonfinite": 1, "flat": 0, "saturated": 0}),
]
if not RUNS_AS_ROOT:  # root reads a file whatever its mode; io_error covers the unreadable file there
    EDF_FAULTS.append(EdfFault("no_read_permission", _unreadable_by_permission, "UnreadableRecordingError",
                               ("cannot be read", "Permission denied")))


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def spread_offsets(size: int, count: int = 12) -> list[int]:
    """``count`` byte offsets spread from the first to the last byte of a file of ``size`` bytes."""
    return sorted({round(i * (size - 1) / (count - 1)) for i in range(count)})


@dataclass
class CliRun:
    code: int
    stdout: str
    stderr: str

    def assert_one_line_error(self, tool: str, *words: str) -> str:
        """The run failed with one ``brr-<tool>: ...`` line naming ``words``, and no traceback."""
        assert "Traceback" not in self.stderr and "internal error" not in self.stderr, self.stderr
        lines = [line for line in self.stderr.splitlines() if line.startswith(f"{tool}: ")]
        assert len(lines) == 1, self.stderr
        for word in words:
            assert word in lines[0], (word, lines[0])
        return lines[0]


def run_cli(main: Callable[[Sequence[str]], int], argv: Sequence[str]) -> CliRun:
    """Run a console script's ``main(argv)`` in this process, capturing what it prints."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return CliRun(code, out.getvalue(), err.getvalue())
