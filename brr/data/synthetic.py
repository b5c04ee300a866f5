"""Synthetic scalp-EEG corpora: real EDF files with TUH-style labels plus TUH ``csv_bi`` annotations.

Each recording is planned up front from its seed (seizure times, artefact events), then synthesised
and written in :data:`CHUNK_S` chunks with filter states carried across chunks, so a 24-hour file
needs only one chunk in memory. Same arguments -> identical bytes (fixed EDF start date, seeded
``numpy`` generators; recording ``i`` of seed ``s`` depends only on ``(s, i)`` and its arguments).

Content (microvolts):
- background: pink (1/f) noise, spatially correlated by mixing each electrode with its 10-20
  neighbours, plus posterior alpha (narrow-band noise at 9-11 Hz, strongest on O1/O2, then P3/P4/Pz)
  and a little mains hum;
- seizures: rhythmic spike-and-wave discharges whose frequency slows from 6-8 Hz to ~3 Hz while the
  amplitude grows, starting on a focal electrode and spreading hop by hop to its neighbours over
  ~10 s; 20-120 s long;
- artefacts: eye blinks (Fp1/Fp2, frontal), muscle bursts (20 Hz+ noise on one temporal chain),
  electrode pops (step and exponential decay on one electrode), high-amplitude movement (slow
  large waves on all channels, occasionally railing at the physical range), and one electrode that
  goes flat for a stretch.
"""

from __future__ import annotations

import datetime
import json
import math
import os
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyedflib
from scipy import signal, special

from brr.atomic import atomic_write_text
from brr.data.annotations import SeizureEvent, write_csv_bi
from brr.errors import UsageError
from brr.montage import CHANNELS, N_CHANNELS, NEIGHBOUR_PAIRS

__all__ = [
    "CHUNK_S",
    "PHYSICAL_RANGE_UV",
    "TUH_LABELS",
    "PlannedSeizure",
    "RecordingPlan",
    "plan_recording",
    "synthesize",
    "write_corpus",
    "write_recording",
]

TUH_LABELS: tuple[str, ...] = tuple(f"EEG {name.upper()}-REF" for name in CHANNELS)
# 16-bit EDF over +-3000 uV resolves 0.09 uV: fine enough for EEG, wide enough for movement bursts.
PHYSICAL_RANGE_UV = 3000.0
DIGITAL_MAX = 32767
CHUNK_S = 60
MIN_RATE = 100
START_DATETIME = datetime.datetime(2000, 1, 1)

SEIZURE_MIN_S, SEIZURE_MAX_S = 20.0, 120.0
SEIZURE_MARGIN_S = 10.0  # no seizure in the first / last seconds
SEIZURE_GAP_S = 30.0  # minimum background between seizures
SEIZURES_PER_10_MIN = (1.0, 3.0)  # default count is drawn uniformly from this rate range
SPREAD_S_PER_HOP = 3.3  # three hops (most of the scalp) in ~10 s
SPREAD_GAIN = (1.0, 0.7, 0.45, 0.3, 0.2)  # by hop distance from the focus (last entry: 4 and more)

# Mean events per minute.
ARTEFACT_RATES = {"blink": 6.0, "muscle": 1.0, "pop": 0.3, "movement": 0.15}

_INDEX = {name: i for i, name in enumerate(CHANNELS)}


def _weights(table: dict[str, float], default: float) -> np.ndarray:
    return np.array([table.get(name, default) for name in CHANNELS])


ALPHA_WEIGHTS = _weights(
    {
        "O1": 1.0,
        "O2": 1.0,
        "P3": 0.7,
        "P4": 0.7,
        "Pz": 0.8,
        "T5": 0.5,
        "T6": 0.5,
        "C3": 0.2,
        "C4": 0.2,
        "Cz": 0.2,
    },
    0.1,
)
BLINK_WEIGHTS = _weights(
    {"Fp1": 1.0, "Fp2": 1.0, "F7": 0.4, "F8": 0.4, "F3": 0.35, "F4": 0.35, "Fz": 0.3}, 0.03
)
MUSCLE_CHAINS = (("F7", "T3", "T5"), ("F8", "T4", "T6"))


def _hop_distances(focus: str) -> np.ndarray:
    """Graph distance of every electrode from ``focus`` over the 10-20 neighbour pairs."""
    neighbours: dict[str, list[str]] = {name: [] for name in CHANNELS}
    for a, b in NEIGHBOUR_PAIRS:
        neighbours[a].append(b)
        neighbours[b].append(a)
    hops = {focus: 0}
    queue = deque([focus])
    while queue:
        name = queue.popleft()
        for other in neighbours[name]:
            if other not in hops:
                hops[other] = hops[name] + 1
                queue.append(other)
    return np.array([hops[name] for name in CHANNELS])


def _spatial_mixing() -> np.ndarray:
    """Each electrode = itself + half of each neighbour, rows scaled to unit gain (unit variance out)."""
    mixing = np.eye(N_CHANNELS)
    for a, b in NEIGHBOUR_PAIRS:
        mixing[_INDEX[a], _INDEX[b]] = mixing[_INDEX[b], _INDEX[a]] = 0.5
    return mixing / np.linalg.norm(mixing, axis=1, keepdims=True)


# Paul Kellet / J.O. Smith 1/f ("pink") filter, valid over most of the band at any sampling rate.
_PINK_B = np.array([0.049922035, -0.095993537, 0.050612699, -0.004408786])
_PINK_A = np.array([1.0, -2.494956002, 2.017265875, -0.522189400])
_PINK_GAIN = float(np.sqrt(np.sum(signal.lfilter(_PINK_B, _PINK_A, np.eye(1, 1 << 16)[0]) ** 2)))


@dataclass(frozen=True)
class PlannedSeizure:
    """One synthetic seizure and the parameters of its discharge."""

    start_s: float
    stop_s: float
    focus: str
    onset_hz: float
    offset_hz: float
    amplitude_uv: float

    def to_event(self) -> SeizureEvent:
        return SeizureEvent(self.start_s, self.stop_s)


@dataclass(frozen=True)
class Artefact:
    """A transient artefact; its waveform details are drawn from its own ``seed``."""

    kind: str
    start_s: float
    duration_s: float
    amplitude_uv: float
    channel: int  # pop: the electrode; muscle: which temporal chain (0 left, 1 right); else unused
    seed: int


@dataclass(frozen=True)
class RecordingPlan:
    """Everything about one synthetic recording that is decided before synthesis."""

    name: str
    seed: int
    index: int
    rate: int
    duration_s: int
    mains_hz: float
    background_uv: float
    alpha_hz: float
    alpha_uv: float
    seizures: tuple[PlannedSeizure, ...]
    artefacts: tuple[Artefact, ...]
    flat_channel: str
    flat_start_s: float
    flat_stop_s: float

    @property
    def n_samples(self) -> int:
        return self.duration_s * self.rate


def _default_seizure_count(rng: np.random.Generator, duration_s: float) -> int:
    low, high = SEIZURES_PER_10_MIN
    return max(1, round(duration_s / 600.0 * rng.uniform(low, high)))


def _max_seizures(duration_s: float) -> int:
    room = duration_s - 2 * SEIZURE_MARGIN_S + SEIZURE_GAP_S
    return max(0, int(room // (SEIZURE_MIN_S + SEIZURE_GAP_S)))


def _plan_seizures(rng: np.random.Generator, duration_s: int, count: int) -> tuple[PlannedSeizure, ...]:
    if count == 0:
        return ()
    # Plan in integer tenths of a second: exact in csv_bi's 4 decimals, so annotations read back equal.
    tenths = 10
    min_len, max_len = round(SEIZURE_MIN_S * tenths), round(SEIZURE_MAX_S * tenths)
    margin, gap = round(SEIZURE_MARGIN_S * tenths), round(SEIZURE_GAP_S * tenths)
    available = duration_s * tenths - 2 * margin - gap * (count - 1)
    lengths = rng.integers(min_len, max_len, count, endpoint=True)
    if lengths.sum() > available:
        # Shrink the part above the minimum so all of them fit and none drops below 20 s.
        excess = lengths - min_len
        lengths = min_len + excess * (available - min_len * count) // excess.sum()
    slack = np.sort(rng.integers(0, available - lengths.sum(), count, endpoint=True))
    starts = margin + slack + np.concatenate([[0], np.cumsum(lengths)[:-1]]) + gap * np.arange(count)
    return tuple(
        PlannedSeizure(
            start_s=int(start) / tenths,
            stop_s=int(start + length) / tenths,
            focus=CHANNELS[int(rng.integers(N_CHANNELS))],
            onset_hz=float(rng.uniform(6.0, 8.0)),
            offset_hz=float(rng.uniform(2.5, 3.5)),
            amplitude_uv=float(rng.uniform(80.0, 180.0)),
        )
        for start, length in zip(starts, lengths, strict=True)
    )


def _plan_artefacts(rng: np.random.Generator, duration_s: float) -> tuple[Artefact, ...]:
    artefacts = []
    for kind, per_minute in ARTEFACT_RATES.items():
        count = int(rng.poisson(per_minute * duration_s / 60.0))
        for _ in range(count):
            if kind == "blink":
                length, amplitude, channel = 0.6, rng.uniform(80.0, 200.0), 0
            elif kind == "muscle":
                length, amplitude, channel = (
                    rng.uniform(1.0, 5.0),
                    rng.uniform(15.0, 40.0),
                    int(rng.integers(2)),
                )
            elif kind == "pop":
                length, amplitude = 1.5, rng.choice([-1.0, 1.0]) * rng.uniform(150.0, 400.0)
                channel = int(rng.integers(N_CHANNELS))
            else:
                length, amplitude, channel = rng.uniform(2.0, 8.0), rng.uniform(300.0, 2500.0), 0
            start = rng.uniform(0.0, max(duration_s - length, 0.0))
            artefacts.append(
                Artefact(
                    kind, float(start), float(length), float(amplitude), channel, int(rng.integers(2**31))
                )
            )
    return tuple(sorted(artefacts, key=lambda a: a.start_s))


def plan_recording(
    seed: int,
    index: int,
    duration_s: int,
    rate: int = 256,
    seizures: int | None = None,
    mains_hz: float = 60.0,
) -> RecordingPlan:
    """Decide one recording's events. ``seizures`` None: about 1-3 per 10 minutes (at least one)."""
    if rate < MIN_RATE or int(rate) != rate:
        raise UsageError(f"rate must be a whole number of Hz >= {MIN_RATE}, got {rate!r}")
    if duration_s < 1 or int(duration_s) != duration_s:
        raise UsageError(f"duration_s must be a whole number of seconds >= 1, got {duration_s!r}")
    duration_s = int(duration_s)
    rng = np.random.default_rng([seed, index, 0])
    fitting = _max_seizures(duration_s)
    if seizures is None:
        count = min(_default_seizure_count(rng, duration_s), fitting)
    elif 0 <= seizures <= fitting:
        count = seizures
    else:
        raise UsageError(f"{seizures} seizures do not fit in {duration_s} s (at most {fitting})")
    flat_length = rng.uniform(0.1, 0.3) * duration_s
    flat_start = rng.uniform(0.0, duration_s - flat_length)
    return RecordingPlan(
        name=f"synth_s{seed}_{index:04d}",
        seed=seed,
        index=index,
        rate=int(rate),
        duration_s=duration_s,
        mains_hz=float(mains_hz),
        background_uv=float(rng.uniform(10.0, 20.0)),
        alpha_hz=float(rng.uniform(9.0, 11.0)),
        alpha_uv=float(rng.uniform(8.0, 20.0)),
        seizures=_plan_seizures(rng, duration_s, count),
        artefacts=_plan_artefacts(rng, duration_s),
        flat_channel=CHANNELS[int(rng.integers(N_CHANNELS))],
        flat_start_s=float(flat_start),
        flat_stop_s=float(flat_start + flat_length),
    )


def _seizure_signal(seizure: PlannedSeizure, t: np.ndarray) -> np.ndarray:
    """``(19, len(t))`` discharge at absolute times ``t`` (all inside the seizure)."""
    duration = seizure.stop_s - seizure.start_s
    tau = t - seizure.start_s
    progress = tau / duration
    # Frequency slows as f0 + (f1 - f0) * progress^0.7; the phase is its closed-form integral.
    power = 0.7
    df = seizure.offset_hz - seizure.onset_hz
    phase = 2 * np.pi * (seizure.onset_hz * tau + df * duration / (power + 1) * progress ** (power + 1))
    hops = _hop_distances(seizure.focus)
    gain = np.array(SPREAD_GAIN)[np.minimum(hops, len(SPREAD_GAIN) - 1)]
    delay = np.minimum(hops, 3) * SPREAD_S_PER_HOP
    channel_phase = phase[None, :] - 0.3 * hops[:, None]  # later, slightly lagging discharges further out
    # Spikes sharpen as the seizure evolves; exp(k(cos - 1)) minus its mean is a zero-mean spike train.
    sharpness = 1.0 + 4.0 * progress
    spikes = np.exp(sharpness * (np.cos(channel_phase) - 1.0)) - special.i0e(sharpness)
    slow_wave = 0.5 * np.sin(channel_phase - 2.2)
    waveform = -(spikes + slow_wave)  # surface-negative spikes
    growth = 0.25 + 0.75 * progress
    fade = np.clip(np.minimum(tau / 2.0, (duration - tau) / 3.0), 0.0, 1.0)
    recruitment = np.clip((tau[None, :] - delay[:, None]) / 2.0, 0.0, 1.0)
    return seizure.amplitude_uv * gain[:, None] * recruitment * (growth * fade)[None, :] * waveform


def _artefact_signal(artefact: Artefact, rate: int) -> np.ndarray:
    """``(19, n)`` waveform of the whole artefact (``n`` samples from its start)."""
    rng = np.random.default_rng(artefact.seed)
    n = max(1, int(round(artefact.duration_s * rate)))
    t = np.arange(n) / rate
    out = np.zeros((N_CHANNELS, n))
    if artefact.kind == "blink":
        shape = np.exp(-0.5 * ((t - 0.25) / 0.07) ** 2)
        out += artefact.amplitude_uv * BLINK_WEIGHTS[:, None] * shape[None, :]
    elif artefact.kind == "muscle":
        high = min(150.0, 0.45 * rate)
        sos = signal.butter(4, [20.0, high], btype="bandpass", fs=rate, output="sos")
        envelope = np.hanning(n)
        for name in MUSCLE_CHAINS[artefact.channel]:
            noise = signal.sosfilt(sos, rng.standard_normal(n))
            out[_INDEX[name]] = artefact.amplitude_uv * noise / (noise.std() + 1e-12) * envelope
    elif artefact.kind == "pop":
        decay = rng.uniform(0.1, 0.3)
        out[artefact.channel] = artefact.amplitude_uv * np.exp(-t / decay)
    else:  # movement
        slow, faster = rng.uniform(0.5, 1.5), rng.uniform(1.5, 3.0)
        phases = rng.uniform(0.0, 2 * np.pi, (2, N_CHANNELS, 1))
        channel_gain = rng.uniform(0.5, 1.0, (N_CHANNELS, 1))
        waves = np.sin(2 * np.pi * slow * t + phases[0]) + 0.6 * np.sin(2 * np.pi * faster * t + phases[1])
        out += artefact.amplitude_uv * channel_gain * np.hanning(n)[None, :] * waves
    return out


def _hemisphere_mixing() -> np.ndarray:
    """``(19, 2)`` weights of a left and a right alpha generator: lateral electrodes mostly see their
    own hemisphere (odd numbers are left), midline ones both equally; rows have unit norm."""
    side = np.array([0 if name[-1] == "z" else (1 if int(name[-1]) % 2 else -1) for name in CHANNELS])
    mix = np.stack([0.5 + 0.3 * side, 0.5 - 0.3 * side], axis=1)
    return mix / np.linalg.norm(mix, axis=1, keepdims=True)


def synthesize(plan: RecordingPlan) -> Iterator[np.ndarray]:
    """Yield the recording as consecutive ``(19, CHUNK_S * rate)`` microvolt chunks (last may be shorter)."""
    rate = plan.rate
    rng = np.random.default_rng([plan.seed, plan.index, 1])
    mixing = _spatial_mixing()
    pink_state = np.zeros((N_CHANNELS, len(_PINK_A) - 1))
    alpha_sos = signal.butter(
        2, [plan.alpha_hz - 1.0, plan.alpha_hz + 1.0], btype="bandpass", fs=rate, output="sos"
    )
    alpha_state = np.zeros((alpha_sos.shape[0], 2, 2))  # two alpha generators: left and right hemisphere
    alpha_gain = float(np.sqrt(np.sum(signal.sosfilt(alpha_sos, np.eye(1, 1 << 14)[0]) ** 2)))
    alpha_mix = _hemisphere_mixing()
    flat = _INDEX[plan.flat_channel]
    chunk = CHUNK_S * rate
    artefact_starts = np.array([a.start_s for a in plan.artefacts])
    longest_artefact = max((a.duration_s for a in plan.artefacts), default=0.0)

    for begin in range(0, plan.n_samples, chunk):
        end = min(begin + chunk, plan.n_samples)
        n = end - begin
        t = np.arange(begin, end) / rate

        pink, pink_state = signal.lfilter(
            _PINK_B, _PINK_A, rng.standard_normal((N_CHANNELS, n)), axis=-1, zi=pink_state
        )
        x = plan.background_uv / _PINK_GAIN * (mixing @ pink)
        alpha, alpha_state = signal.sosfilt(alpha_sos, rng.standard_normal((2, n)), axis=-1, zi=alpha_state)
        x += plan.alpha_uv / alpha_gain * ALPHA_WEIGHTS[:, None] * (alpha_mix @ alpha)
        if plan.mains_hz < rate / 2:
            x += 2.0 * np.sin(2 * np.pi * plan.mains_hz * t)[None, :]

        for seizure in plan.seizures:
            a = max(begin, int(np.ceil(seizure.start_s * rate)))
            b = min(end, int(np.ceil(seizure.stop_s * rate)))
            if a < b:
                x[:, a - begin : b - begin] += _seizure_signal(seizure, np.arange(a, b) / rate)

        first = np.searchsorted(artefact_starts, begin / rate - longest_artefact)
        last = np.searchsorted(artefact_starts, end / rate)
        for artefact in plan.artefacts[first:last]:
            a0 = int(round(artefact.start_s * rate))
            wave = _artefact_signal(artefact, rate)
            a, b = max(begin, a0), min(end, a0 + wave.shape[-1])
            if a < b:
                x[:, a - begin : b - begin] += wave[:, a - a0 : b - a0]

        a = max(begin, int(round(plan.flat_start_s * rate)))
        b = min(end, int(round(plan.flat_stop_s * rate)))
        if a < b:
            x[flat, a - begin : b - begin] = 0.0
        # The amplifier rails: movement bursts that exceed the range saturate, as in real recordings.
        yield np.clip(x, -PHYSICAL_RANGE_UV, PHYSICAL_RANGE_UV)


def write_recording(plan: RecordingPlan, edf_path: str | os.PathLike) -> Path:
    """Write the plan's EDF (chunk by chunk, atomically) and its ``.csv_bi`` beside it; return the EDF."""
    edf_path = Path(edf_path)
    edf_path.parent.mkdir(parents=True, exist_ok=True)
    partial = edf_path.with_name(f".{edf_path.name}.partial")
    writer = pyedflib.EdfWriter(str(partial), N_CHANNELS, file_type=pyedflib.FILETYPE_EDF)
    try:
        try:
            writer.setStartdatetime(START_DATETIME)
            writer.setPatientCode(plan.name)
            writer.setEquipment("brr-synth")
            writer.setSignalHeaders(
                [
                    {
                        "label": label,
                        "dimension": "uV",
                        "sample_frequency": plan.rate,
                        "physical_max": PHYSICAL_RANGE_UV,
                        "physical_min": -PHYSICAL_RANGE_UV,
                        "digital_max": DIGITAL_MAX,
                        "digital_min": -DIGITAL_MAX,
                        "transducer": "synthetic",
                        "prefilter": "none",
                    }
                    for label in TUH_LABELS
                ]
            )
            for chunk in synthesize(plan):
                writer.writeSamples(list(chunk))
        finally:
            writer.close()
        os.replace(partial, edf_path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    write_csv_bi(
        edf_path.with_suffix(".csv_bi"),
        [s.to_event() for s in plan.seizures],
        plan.duration_s,
        bname=plan.name,
    )
    return edf_path


def write_corpus(
    out_dir: str | os.PathLike,
    recordings: int,
    minutes: float,
    seed: int = 0,
    rate: int = 256,
    seizures: int | None = None,
    mains_hz: float = 60.0,
) -> Path:
    """Write ``recordings`` EDF + csv_bi pairs of ``minutes`` each plus a ``corpus.json`` index (returned)."""
    if recordings < 0:
        raise UsageError(f"recordings must be >= 0, got {recordings}")
    if not (math.isfinite(minutes) and minutes > 0):
        raise UsageError(f"minutes must be a positive number, got {minutes!r}")
    duration_s = int(round(minutes * 60))
    out_dir = Path(out_dir)
    entries = []
    for index in range(recordings):
        plan = plan_recording(seed, index, duration_s, rate, seizures, mains_hz)
        edf = write_recording(plan, out_dir / f"{plan.name}.edf")
        entries.append(
            {
                "name": plan.name,
                "edf": edf.name,
                "csv_bi": edf.with_suffix(".csv_bi").name,
                "duration_s": plan.duration_s,
                "seizures": [asdict(s) for s in plan.seizures],
                "flat_channel": {
                    "channel": plan.flat_channel,
                    "start_s": plan.flat_start_s,
                    "stop_s": plan.flat_stop_s,
                },
                "artefact_counts": {k: sum(a.kind == k for a in plan.artefacts) for k in ARTEFACT_RATES},
            }
        )
    index_doc = {
        "generator": "brr.data.synthetic",
        "seed": seed,
        "sampling_rate": rate,
        "mains_hz": mains_hz,
        "physical_range_uv": PHYSICAL_RANGE_UV,
        "labels": list(TUH_LABELS),
        "recordings": entries,
    }
    return atomic_write_text(out_dir / "corpus.json", json.dumps(index_doc, indent=2, allow_nan=False) + "\n")
