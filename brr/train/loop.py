"""The training loop: ``train(settings) -> TrainResult``.

One step: forward with probes, focal loss on the valid samples, backward, gradient clipping,
AdamW. A step is skipped (no update) and counted when the input, any probe, the loss or the
gradient norm is non-finite; where it went non-finite first (``input``, or the first probe in
``PROBE_NAMES`` order) is logged with it. Probes are checked even when the loss is finite because
the guarded network's ``nan_to_num`` turns a NaN upstream into finite zeros downstream: training on
those is exactly the incident this prevents.
An epoch in which every step is skipped stops training with :class:`TrainingError`.

The learning rate follows the batch counter (skipped batches included), so a resumed run sees
the same schedule. Checkpoints: ``OUT/last`` after every epoch and when the time budget ends
(model + training state, see :mod:`brr.train.state`), ``OUT/best`` whenever validation improves
by :func:`brr.train.evaluate.selection_key`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from brr.atomic import atomic_write_text
from brr.errors import CheckFailed
from brr.model import (
    PROBE_NAMES,
    NonFiniteInputError,
    V3Detector,
    build_detector,
    load_checkpoint,
    save_checkpoint,
)
from brr.output_folder import OutputLock, prepare_output_folder, remove_stale_temporaries
from brr.train.dataset import WindowDataset, find_corpus, load_recording, split_corpus
from brr.train.evaluate import predict_corpus, score_probabilities, selection_key, tune_enter_threshold
from brr.train.losses import focal_loss
from brr.train.optim import build_optimizer, learning_rate
from brr.train.settings import SettingsError, TrainSettings
from brr.train.state import LoopState, load_training_state, save_training_state

log = logging.getLogger(__name__)

# Settings that fix the data order and the schedule: a resumed run must keep them.
RESUME_FIXED = ("data", "model", "seed", "batch_size", "steps_per_epoch", "crop_s", "stride_s",
                "val_fraction", "positive_fraction", "lr", "warmup_steps", "min_lr_ratio")


class TrainingError(CheckFailed):
    """Training that cannot go on (e.g. every step of an epoch was non-finite)."""


@dataclass
class TrainResult:
    history: list[dict[str, Any]]  # one row per finished epoch
    best_metrics: dict[str, Any] | None
    best_checkpoint: Path | None
    last_checkpoint: Path
    skipped_steps: int  # over the whole run, resumed parts included
    skipped: list[dict[str, Any]]  # {"step", "stage"} of each skipped step
    steps: int  # batches consumed over the whole run
    losses: list[float | None] = field(default_factory=list)  # this invocation, None where skipped
    stopped_by_budget: bool = False
    seconds: float = 0.0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def training_crop_s(config, crop_s: float) -> float:
    """The training window length in seconds: the model's window, or a shorter crop it can run on."""
    window_s = config.window_samples / config.sampling_rate
    if crop_s == 0:
        return window_s
    # The positional encoding is recomputed every semi_dynamic_interval downsampled steps.
    granule = config.downsample * config.semi_dynamic_interval
    samples = crop_s * config.sampling_rate
    if crop_s > window_s or abs(samples - round(samples)) > 1e-6 or round(samples) % granule:
        raise SettingsError(
            f"crop_s={crop_s} must be at most the model's {window_s} s window and a multiple of "
            f"{granule / config.sampling_rate} s ({granule} samples: downsample x semi_dynamic_interval)")
    return crop_s


def first_nonfinite_probe(probes: dict[str, torch.Tensor]) -> str | None:
    for name in PROBE_NAMES:
        if name in probes and not torch.isfinite(probes[name]).all():
            return name
    return None


def first_nonfinite_gradient(model: torch.nn.Module) -> str | None:
    for name, param in model.named_parameters():
        if param.grad is not None and not torch.isfinite(param.grad).all():
            return name
    return None


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: tuple[np.ndarray, ...],
               settings: TrainSettings, device: torch.device) -> tuple[float | None, str | None]:
    """(loss, None) after an update, or (None, stage) for a skipped non-finite step."""
    signals, labels, valid = (torch.from_numpy(a).to(device) for a in batch)
    optimizer.zero_grad(set_to_none=True)
    try:
        logits, probes = model(signals, return_probes=True)
    except NonFiniteInputError:
        return None, "input"
    stage = first_nonfinite_probe(probes)
    if stage is not None:
        return None, stage
    loss = focal_loss(logits, labels, valid, settings.focal_alpha, settings.focal_gamma)
    if not torch.isfinite(loss):
        return None, "loss"
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
    if not torch.isfinite(grad_norm):
        parameter = first_nonfinite_gradient(model)
        optimizer.zero_grad(set_to_none=True)
        return None, f"gradient of {parameter}"
    optimizer.step()
    return float(loss.detach()), None


def _check_resumable(saved: dict[str, Any], settings: TrainSettings, where: Path) -> None:
    current = settings.to_dict()
    for key in RESUME_FIXED:
        if saved.get(key) != current[key]:
            raise SettingsError(
                f"{where}: cannot resume with {key}={current[key]!r}; the run was started with "
                f"{key}={saved.get(key)!r}"
            )


def train(settings: TrainSettings) -> TrainResult:
    """Train as ``settings`` say. ``settings.out`` is locked for the run (a second run on it is refused,
    :class:`~brr.output_folder.OutputFolderBusy`), and the temporaries a killed run left are removed first."""
    out = prepare_output_folder(settings.out)
    with OutputLock(out, "brr-train"):
        remove_stale_temporaries(out)
        return _train(settings)


def _train(settings: TrainSettings) -> TrainResult:
    return _Trainer(settings).run()


@dataclass
class _Data:
    """The training windows and the validation recordings (decoded once when the corpus fits in memory)."""

    train_set: WindowDataset
    val_entries: list
    val_cache: dict | None

    @classmethod
    def load(cls, settings: TrainSettings, config) -> _Data:
        window_s = config.window_samples / config.sampling_rate
        crop_s = training_crop_s(config, settings.crop_s)
        for key, limit in (("stride_s", crop_s), ("val_stride_s", window_s)):
            if getattr(settings, key) > limit:
                raise SettingsError(f"{key}={getattr(settings, key)} exceeds the {limit} s window it steps over")
        train_entries, val_entries = split_corpus(find_corpus(settings.data), settings.val_fraction, settings.seed)
        train_set = WindowDataset(train_entries, crop_s, settings.stride_s, settings.mains_hz,
                                  settings.cache_max_mb)
        val_cache = None
        if not train_set.streaming:
            val_cache = {e.recording_path: load_recording(e, settings.mains_hz)[0] for e in val_entries}
        log.info(f"[train] {len(train_entries)} training recordings ({len(train_set)} windows, "
                 f"{len(train_set.positives)} with seizure), {len(val_entries)} validation recordings; "
                 f"{'streaming' if train_set.streaming else 'in memory'}")
        return cls(train_set, val_entries, val_cache)


class _Trainer:
    """One invocation of ``train``: the model, its optimizer and data, and the ``LoopState`` it saves with
    each checkpoint and resumes from."""

    def __init__(self, settings: TrainSettings):
        self.started = time.monotonic()
        self.settings = settings
        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.device = torch.device(settings.device)
        self.out = Path(settings.out)
        self.last_dir, self.best_dir = self.out / "last", self.out / "best"
        seed_everything(settings.seed)

        self.model: V3Detector = build_detector(settings.model, guards=settings.guards)
        self.data = _Data.load(settings, self.model.config)
        self.optimizer = build_optimizer(self.model, settings.lr, settings.weight_decay)
        self.loop = LoopState(settings=settings.to_dict())
        if settings.resume:
            self.loop = _resume(self.model, self.optimizer, settings, self.last_dir)
        self.model.to(self.device).train()

        self.steps_per_epoch = settings.steps_per_epoch or math.ceil(
            self.data.train_set.default_epoch_size(settings.positive_fraction) / settings.batch_size)
        self.total_steps = settings.epochs * self.steps_per_epoch
        self.losses: list[float | None] = []  # this invocation's, None where skipped

    def run(self) -> TrainResult:
        """Epochs until ``settings.epochs`` or the time budget; ``last`` saved after each and at the budget."""
        settings, loop = self.settings, self.loop
        stopped_by_budget = False
        while loop.epoch < settings.epochs:
            stopped_by_budget = self._run_epoch()
            if stopped_by_budget:
                log.info(f"[train] time budget of {settings.max_minutes} min reached at step {loop.step}; "
                         f"resume with --resume")
                break
            if loop.epoch_applied == 0:
                stages = sorted({s["stage"] for s in loop.skipped[-loop.epoch_skipped:]})
                raise TrainingError(f"every step of epoch {loop.epoch + 1} was non-finite (stages: {stages}); "
                                    "refusing to go on training on nothing")
            self._finish_epoch()
            loop.next_epoch()
            self._save_last()
        if stopped_by_budget:
            self._save_last()
        return self._result(stopped_by_budget)

    def _run_epoch(self) -> bool:
        """The current epoch's batches from ``loop.batch`` on; True when the time budget ends it early."""
        settings, loop, batch_size = self.settings, self.loop, self.settings.batch_size
        budget_s = settings.max_minutes * 60.0
        drawn = self.data.train_set.draw_epoch(self.steps_per_epoch * batch_size, settings.positive_fraction,
                                               settings.seed, loop.epoch)
        with _epoch_progress(settings.progress) as progress:
            bar = progress.add_task(f"epoch {loop.epoch + 1}/{settings.epochs}", total=self.steps_per_epoch,
                                    completed=loop.batch, status="")
            tick = time.monotonic()
            for batch in self.data.train_set.batches(drawn, batch_size, skip_batches=loop.batch):
                loss, lr = self._step(batch)
                now = time.monotonic()
                loss_text = f"{loss:.4f}" if loss is not None else "skip"
                windows_per_s = len(batch[0]) / max(now - tick, 1e-9)
                progress.update(bar, advance=1, status=f"loss {loss_text}, lr {lr:.2e}, {windows_per_s:.2f} "
                                f"windows/s, skipped {len(loop.skipped)}")
                tick = now
                if budget_s and now - self.started >= budget_s and loop.batch < self.steps_per_epoch:
                    return True
        return False

    def _step(self, batch: tuple[np.ndarray, ...]) -> tuple[float | None, float]:
        """One batch at the schedule's learning rate, counted in the loop state; (loss or None, lr)."""
        settings, loop = self.settings, self.loop
        lr = learning_rate(loop.step, settings.lr, settings.warmup_steps, self.total_steps, settings.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss, stage = train_step(self.model, self.optimizer, batch, settings, self.device)
        self.losses.append(loss)
        if stage is not None:
            log.info(f"[train] step {loop.step}: skipped, non-finite values first at {stage}")
        loop.record_step(loss, stage)
        return loss, lr

    def _finish_epoch(self) -> None:
        """Validation of the epoch, its history row, and ``best`` when it is the best so far."""
        settings, loop, model = self.settings, self.loop, self.model
        base = settings.postprocess_config()
        window_s = model.config.window_samples / model.config.sampling_rate
        predictions = predict_corpus(model, self.data.val_entries, window_s, settings.val_stride_s,
                                     settings.batch_size, self.device, settings.mains_hz, self.data.val_cache)
        if settings.tune_threshold:
            postprocess, scores = tune_enter_threshold(predictions, base, settings.selection,
                                                       settings.max_fa_per_24h)
        else:
            postprocess, scores = base, score_probabilities(predictions, base)
        row = {
            "epoch": loop.epoch + 1, "step": loop.step,
            "train_loss": loop.epoch_loss_sum / loop.epoch_applied, "skipped_steps": loop.epoch_skipped,
            "postprocess": dataclasses.asdict(postprocess), "validation": scores,
        }
        loop.history.append(row)
        ev = scores["event"]
        log.info(f"[train] epoch {row['epoch']}: loss {row['train_loss']:.4f}, validation event sensitivity "
                 f"{_fmt(ev['sensitivity'])}, precision {_fmt(ev['precision'])}, F1 {_fmt(ev['f1'])}, "
                 f"FA/24h {_fmt(ev['fp_per_24h'])} (enter {postprocess.enter:.2f})")
        key = list(selection_key(scores, settings.selection, settings.max_fa_per_24h))
        # On a tie the later epoch wins: it has trained longer on the same evidence.
        if loop.best_key is None or key >= loop.best_key:
            loop.best_key, loop.best_metrics = key, row
            save_checkpoint(model, self.best_dir, extra={"training": {
                "epoch": row["epoch"], "step": row["step"], "selection": settings.selection,
                "max_fa_per_24h": settings.max_fa_per_24h, "postprocess": row["postprocess"], "validation": scores,
            }})
            log.info(f"[train] new best checkpoint: {self.best_dir}")

    def _save_last(self) -> None:
        save_checkpoint(self.model, self.last_dir, extra={"training": {"epoch": self.loop.epoch,
                                                                       "step": self.loop.step}})
        save_training_state(self.last_dir, self.optimizer, self.loop)

    def _result(self, stopped_by_budget: bool) -> TrainResult:
        """The run's result, also written as ``train_result.json``."""
        loop, skipped = self.loop, self.loop.skipped
        log.info(f"[train] {loop.step} steps, {len(skipped)} skipped as non-finite"
                 + (f" (first stages: {sorted({s['stage'] for s in skipped})})" if skipped else ""))
        result = TrainResult(
            history=loop.history, best_metrics=loop.best_metrics,
            best_checkpoint=self.best_dir if loop.best_metrics is not None else None,
            last_checkpoint=self.last_dir, skipped_steps=len(skipped), skipped=skipped, steps=loop.step,
            losses=self.losses, stopped_by_budget=stopped_by_budget, seconds=time.monotonic() - self.started,
        )
        summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(result).items()}
        atomic_write_text(self.out / "train_result.json", json.dumps(summary, indent=2) + "\n")
        return result


def _resume(model, optimizer, settings: TrainSettings, last_dir: Path) -> LoopState:
    """Load the last checkpoint's weights into ``model`` and its optimizer/RNG state; return the loop state."""
    saved = load_checkpoint(last_dir)
    if saved.config.digest() != model.config.digest():
        raise SettingsError(f"{last_dir}: its model config differs from model={settings.model!r} "
                            f"guards={settings.guards}")
    model.load_state_dict(saved.state_dict())
    loop = load_training_state(last_dir, optimizer)
    _check_resumable(loop.settings, settings, last_dir)
    loop.settings = settings.to_dict()
    log.info(f"[train] resumed from {last_dir} at epoch {loop.epoch + 1}, step {loop.step}")
    return loop


def _epoch_progress(shown: bool) -> Progress:
    """One epoch's bar on stderr; its last frame stays as the epoch's line (rich, like brr-infer)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[status]}", markup=False), console=Console(stderr=True),
                    disable=not shown)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
