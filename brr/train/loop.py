"""The training loop: ``train(settings) -> TrainResult``, in one process or several (``torchrun``).

One step: forward with probes (under autocast in bf16/fp16, :mod:`brr.train.precision`), focal loss on
the valid samples, backward, gradient clipping, AdamW. With several processes each holds a contiguous
share of the global batch (``DistributedDataParallel``; :mod:`brr.train.distributed`), and the loss is
the batch's sum over every process divided by its valid-sample count over every process, so one step
is the same step however many processes share it.

A step is skipped (no update) and counted when the input, any probe, the loss or the gradient norm is
non-finite, on any process (they decide together). Probes are checked even when the loss is finite
because the guarded network's ``nan_to_num`` turns a NaN upstream into finite zeros downstream: training
on those is exactly the incident this prevents. The first skipped step of a run of them is replayed
to name the first module and operation that went non-finite and why (:mod:`brr.train.nonfinite`), and
its evidence is saved with the ``brr-diff`` command that reproduces it (:mod:`brr.train.incident`).
Training stops with :class:`TrainingError` after ``max_consecutive_nonfinite`` skipped steps in a row,
or an epoch of nothing but skipped steps. fp16's loss-scale overflows are the GradScaler at work:
counted, not incidents.

The learning rate follows the batch counter (skipped batches included), so a resumed run sees
the same schedule. Checkpoints (rank 0): ``OUT/last`` after every epoch and when the time budget ends
(model + training state, see :mod:`brr.train.state`), ``OUT/best`` whenever validation improves
by :func:`brr.train.evaluate.selection_key`. ``init`` starts from a checkpoint's weights with a fresh
optimizer and schedule.
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
from torch.nn.parallel import DistributedDataParallel

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
from brr.train.dataset import epoch_loader, load_training_data, training_store
from brr.train.distributed import Processes, process_group, processes_from_environment
from brr.train.evaluate import predict_corpus, score_probabilities, selection_key, tune_enter_threshold
from brr.train.incident import NonfiniteStep, save_nonfinite_step
from brr.train.losses import focal_loss_terms
from brr.train.nonfinite import locate_nonfinite
from brr.train.optim import build_optimizer, learning_rate
from brr.train.precision import TrainPrecision
from brr.train.settings import SettingsError, TrainSettings
from brr.train.state import LoopState, load_training_state, save_training_state

log = logging.getLogger(__name__)

# Settings that fix the data order and the schedule: a resumed run must keep them.
RESUME_FIXED = ("data", "model", "seed", "batch_size", "steps_per_epoch", "crop_s", "stride_s",
                "val_fraction", "positive_fraction", "lr", "warmup_steps", "min_lr_ratio")


ONE_PROCESS = Processes()
# The stage of a step the fp16 loss scaler skipped (its gradients overflowed at the current scale).
SCALER_STAGE = "gradient (fp16 loss scale)"


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
    # This invocation's seconds in training steps (forward, backward, update; not reading or validating),
    # and the windows they took over every process: its training throughput.
    step_seconds: float = 0.0
    windows_per_s: float | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


@dataclass(frozen=True)
class StepOutcome:
    """One batch: its loss over every process where it was applied, else the stage where it went non-finite."""

    loss: float | None
    stage: str | None = None
    scaler_overflow: bool = False  # fp16 gradients overflowed at the current loss scale: the scaler's skip


def train_step(model: V3Detector, optimizer: torch.optim.Optimizer, batch: tuple[torch.Tensor, ...],
               settings: TrainSettings, device: torch.device, *, precision: TrainPrecision = TrainPrecision.FP32,
               scaler: torch.amp.GradScaler | None = None, forward: torch.nn.Module | None = None,
               processes: Processes = ONE_PROCESS) -> StepOutcome:
    """One step on this process's share ``batch`` (signals, labels, valid on ``device``); ``forward`` is the
    model as called (its DistributedDataParallel wrapper under torchrun)."""
    signals, labels, valid = batch
    forward = forward or model
    optimizer.zero_grad(set_to_none=True)
    stage = None
    try:
        with precision.autocast(device):
            logits, probes = forward(signals, return_probes=True)
    except NonFiniteInputError:
        stage = "input"
    else:
        stage = first_nonfinite_probe(probes)
    if stage is None:
        loss_sum, count = focal_loss_terms(logits, labels, valid, settings.focal_alpha, settings.focal_gamma)
        if not torch.isfinite(loss_sum):
            stage = "loss"
    # Every process takes the same decision, or the others would wait for its gradients for ever.
    stages = processes.gather(stage) if processes.any(stage is not None) else [None]
    stage = next((s for s in stages if s is not None), None)
    if stage is not None:
        return StepOutcome(None, stage)
    total_loss, total_count = processes.sum(loss_sum.detach(), count)
    # DistributedDataParallel averages gradients over processes: scaled back up to the batch's sum.
    loss = loss_sum * (processes.world_size / max(total_count, 1.0))
    (scaler.scale(loss) if scaler is not None else loss).backward()
    if scaler is not None:
        scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
    if scaler is not None:
        finite = bool(torch.isfinite(grad_norm))
        scaler.step(optimizer)  # skips the update when the unscaled gradients are not finite
        scaler.update()
        if not finite:
            return StepOutcome(None, SCALER_STAGE, scaler_overflow=True)
    elif not torch.isfinite(grad_norm):
        parameter = first_nonfinite_gradient(model)
        optimizer.zero_grad(set_to_none=True)
        return StepOutcome(None, f"gradient of {parameter}")
    else:
        optimizer.step()
    return StepOutcome(total_loss / max(total_count, 1.0))


def _check_resumable(saved: dict[str, Any], settings: TrainSettings, where: Path) -> None:
    current = settings.to_dict()
    for key in RESUME_FIXED:
        if saved.get(key) != current[key]:
            raise SettingsError(
                f"{where}: cannot resume with {key}={current[key]!r}; the run was started with "
                f"{key}={saved.get(key)!r}"
            )


def train(settings: TrainSettings) -> TrainResult:
    """Train as ``settings`` say, in this process or in the group ``torchrun`` started. ``settings.out`` is
    locked for the run by rank 0 (a second run on it is refused, :class:`~brr.output_folder.OutputFolderBusy`),
    and the temporaries a killed run left are removed first."""
    processes = processes_from_environment()
    if not processes.main:
        # Joining waits for rank 0, which joins once it has prepared the folder and the window store.
        with process_group(processes, settings.device):
            return _Trainer(settings, processes).run()
    out = prepare_output_folder(settings.out)
    with OutputLock(out, "brr-train"):
        remove_stale_temporaries(out)
        # Before joining: preparing forks worker processes, which must not inherit the group's threads and
        # sockets.
        training_store(settings, prepare=True)
        with process_group(processes, settings.device):
            return _Trainer(settings, processes).run()


class _Trainer:
    """One invocation of ``train`` in one process: the model, its optimizer and data, and the ``LoopState``
    it saves with each checkpoint and resumes from."""

    def __init__(self, settings: TrainSettings, processes: Processes):
        self.started = time.monotonic()
        self.settings, self.processes = settings, processes
        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.device = processes.device(settings.device)
        self.precision = TrainPrecision(settings.precision)
        self.precision.check_device(self.device)
        if settings.batch_size % processes.world_size:
            raise SettingsError(f"batch_size={settings.batch_size} (the global batch) must be a multiple of the "
                                f"{processes.world_size} processes")
        self.out = Path(settings.out)
        self.last_dir, self.best_dir = self.out / "last", self.out / "best"
        seed_everything(settings.seed)

        self.model: V3Detector = build_detector(settings.model, guards=settings.guards)
        if settings.init:
            _load_initial_weights(self.model, settings)
        self.data = load_training_data(settings, self.model.config, prepare=False)
        self.optimizer = build_optimizer(self.model, settings.lr, settings.weight_decay)
        self.scaler = self.precision.grad_scaler(self.device)
        self.loop = LoopState(settings=settings.to_dict())
        if settings.resume:
            self.loop = _resume(self.model, self.optimizer, settings, self.last_dir)
        if processes.distributed:
            # Each process its own dropout masks, reproducibly from the step it starts at.
            seed_everything(int(np.random.SeedSequence([settings.seed, processes.rank, self.loop.step])
                                .generate_state(1)[0]))
        self.model.to(self.device).train()
        self.forward: torch.nn.Module = self.model
        if processes.distributed:
            # No buffer sync: V3's buffers are constants computed alike in every process.
            self.forward = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                forward_sync_buffers=False)

        self.steps_per_epoch = settings.steps_per_epoch or math.ceil(
            self.data.train.default_epoch_size(settings.positive_fraction) / settings.batch_size)
        self.total_steps = settings.epochs * self.steps_per_epoch
        self.losses: list[float | None] = []  # this invocation's, None where skipped
        self.step_seconds = 0.0
        self.incidents: list[NonfiniteStep] = []

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
                self._stop(f"every step of epoch {loop.epoch + 1} was non-finite")
            if self.processes.main:
                self._finish_epoch()
            loop.next_epoch()
            if self.processes.main:
                self._save_last()
        if stopped_by_budget and self.processes.main:
            self._save_last()
        return self._result(stopped_by_budget)

    def _run_epoch(self) -> bool:
        """The current epoch's batches from ``loop.batch`` on; True when the time budget ends it early."""
        settings, loop, processes = self.settings, self.loop, self.processes
        budget_s = settings.max_minutes * 60.0
        drawn = self.data.train.draw_epoch(self.steps_per_epoch * settings.batch_size, settings.positive_fraction,
                                           settings.seed, loop.epoch)
        batches = epoch_loader(self.data.train, drawn, settings.batch_size, rank=processes.rank,
                               world_size=processes.world_size, skip_batches=loop.batch,
                               workers=settings.loader_workers, pin_memory=self.device.type == "cuda")
        with _epoch_progress(settings.progress and processes.main) as progress:
            bar = progress.add_task(f"epoch {loop.epoch + 1}/{settings.epochs}", total=self.steps_per_epoch,
                                    completed=loop.batch, status="")
            tick = time.monotonic()
            for batch in batches:
                started = time.monotonic()
                outcome, lr = self._step(batch, drawn)
                now = time.monotonic()
                self.step_seconds += now - started
                loss_text = f"{outcome.loss:.4f}" if outcome.loss is not None else "skip"
                windows_per_s = settings.batch_size / max(now - tick, 1e-9)
                progress.update(bar, advance=1, status=f"loss {loss_text}, lr {lr:.2e}, {windows_per_s:.2f} "
                                f"windows/s, skipped {len(loop.skipped)}")
                tick = now
                over_budget = bool(budget_s) and now - self.started >= budget_s
                if processes.any(over_budget) and loop.batch < self.steps_per_epoch:
                    return True
        return False

    def _step(self, batch: tuple[torch.Tensor, ...], drawn: np.ndarray) -> tuple[StepOutcome, float]:
        """One batch at the schedule's learning rate, counted in the loop state; (outcome, lr)."""
        settings, loop = self.settings, self.loop
        lr = learning_rate(loop.step, settings.lr, settings.warmup_steps, self.total_steps, settings.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        signals, labels, valid = (t.to(self.device, non_blocking=True) for t in batch)
        outcome = train_step(self.model, self.optimizer, (signals, labels, valid), settings, self.device,
                             precision=self.precision, scaler=self.scaler, forward=self.forward,
                             processes=self.processes)
        self.losses.append(outcome.loss)
        detail = None
        if outcome.scaler_overflow:
            log.info(f"[train] step {loop.step}: fp16 gradients overflowed at loss scale "
                     f"{self.scaler.get_scale():g} (lowered); step skipped")
        elif outcome.stage is not None:
            detail = self._nonfinite_step(outcome.stage, signals, drawn)
        loop.record_step(outcome.loss, outcome.stage, detail)
        consecutive = _consecutive_incidents(loop)
        if consecutive >= settings.max_consecutive_nonfinite:
            self._stop(f"{consecutive} consecutive steps were non-finite")
        return outcome, lr

    def _nonfinite_step(self, stage: str, signals: torch.Tensor, drawn: np.ndarray) -> dict[str, Any] | None:
        """Name and save the first skipped step of a run of them; the report's entry for the loop state."""
        loop, processes = self.loop, self.processes
        if _consecutive_incidents(loop) > 0:
            return None  # the run's first step already holds the evidence
        # Every process replays its own share: the first module may have gone non-finite on any of them.
        finding = locate_nonfinite(self.model, signals, autocast_dtype=self.precision.autocast_dtype,
                                   device=self.device)
        shares = processes.gather((finding, signals.detach().float().cpu().numpy()))
        first = next((f for f, _ in shares if f is not None), None)
        if not processes.main:
            return None
        batch = self.data.train.window_labels(_batch_indices(drawn, loop.batch, self.settings.batch_size))
        incident = save_nonfinite_step(self.out, loop.step, stage, first, self.model,
                                       np.concatenate([s for _, s in shares]), batch, self.precision)
        self.incidents.append(incident)
        log.warning(f"[train] {incident.describe()}")
        return {"incident": str(incident.folder), "finding": None if first is None else first.describe()}

    def _stop(self, why: str) -> None:
        """End training on non-finite steps with what the first of them showed."""
        evidence = self.incidents[-1].describe() if self.incidents else (
            f"stages: {sorted({s['stage'] for s in self.loop.skipped})}")
        raise TrainingError(f"{why}; refusing to go on training on nothing.\n{evidence}")

    def _finish_epoch(self) -> None:
        """Validation of the epoch, its history row, and ``best`` when it is the best so far."""
        settings, loop, model = self.settings, self.loop, self.model
        base = settings.postprocess_config()
        window_s = model.config.window_samples / model.config.sampling_rate
        predictions = predict_corpus(model, self.data.validation, window_s, settings.val_stride_s,
                                     settings.batch_size, self.device)
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
        """The run's result, also written as ``train_result.json`` (by rank 0)."""
        loop, skipped = self.loop, self.loop.skipped
        log.info(f"[train] {loop.step} steps, {len(skipped)} skipped as non-finite"
                 + (f" (first stages: {sorted({s['stage'] for s in skipped})})" if skipped else ""))
        result = TrainResult(
            history=loop.history, best_metrics=loop.best_metrics,
            best_checkpoint=self.best_dir if loop.best_metrics is not None else None,
            last_checkpoint=self.last_dir, skipped_steps=len(skipped), skipped=skipped, steps=loop.step,
            losses=self.losses, stopped_by_budget=stopped_by_budget, seconds=time.monotonic() - self.started,
            step_seconds=self.step_seconds,
            windows_per_s=(len(self.losses) * self.settings.batch_size / self.step_seconds
                           if self.step_seconds else None),
        )
        if self.processes.main:
            summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(result).items()}
            atomic_write_text(self.out / "train_result.json", json.dumps(summary, indent=2) + "\n")
        return result


def _batch_indices(drawn: np.ndarray, batch: int, batch_size: int) -> np.ndarray:
    """The drawn window indices of global batch ``batch`` (every process's share, in rank order)."""
    return drawn[batch * batch_size: (batch + 1) * batch_size]


def _consecutive_incidents(loop: LoopState) -> int:
    """Skipped steps in a row up to the last step, the loss scaler's own skips not counted."""
    count, step = 0, loop.step - 1
    for entry in reversed(loop.skipped):
        if entry["step"] != step or entry["stage"] == SCALER_STAGE:
            break
        count, step = count + 1, step - 1
    return count


def _load_initial_weights(model: V3Detector, settings: TrainSettings) -> None:
    """``init``: a checkpoint's weights (verified like every load), for a run with a fresh optimizer."""
    if settings.resume:
        raise SettingsError(f"init={settings.init!r} and resume exclude each other: init starts a new run from "
                            "a checkpoint's weights, resume continues OUT/last")
    saved = load_checkpoint(settings.init)
    if saved.config.digest() != model.config.digest():
        raise SettingsError(f"{settings.init}: its model config ({saved.config.name}) differs from "
                            f"model={settings.model!r} guards={settings.guards}")
    model.load_state_dict(saved.state_dict())
    log.info(f"[train] initial weights from {settings.init}")


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
