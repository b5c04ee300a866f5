"""Training-step benchmark: brr-train's step (forward + focal loss + backward + clip + AdamW) with the
selective scan's pure-PyTorch reference ("before") and its native CPU kernel ("after"), in one run.

    python benchmarks/train_step.py [--config v3-small] [--batch 4] [--crop-s 15] [--steps 6]

Each kernel runs in its own process (clean peak RSS) from the same initial weights on the same fixed
batch. The first step (same weights, same batch, same dropout masks) must give the same loss to
--tolerance and the same gradients (max difference relative to the largest gradient entry); later steps
are listed too, where AdamW's normalised updates let float32 rounding differences grow. Writes
benchmarks/results/<stamp>-train.json and .md and prints the table.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from report_files import utc_stamp, write_report  # noqa: E402

from brr.resources import peak_rss_mb  # noqa: E402

KERNELS = ("reference", "native")


def _run(kernel: str, config: str, batch: int, crop_s: float, steps: int, queue) -> None:
    os.environ["BRR_SELECTIVE_SCAN"] = kernel
    try:
        import numpy as np
        import torch

        from brr.model import build_detector
        from brr.ops.selective_scan import native
        from brr.train.loop import seed_everything, train_step
        from brr.train.optim import build_optimizer
        from brr.train.settings import TrainSettings

        if kernel == "native" and not native.enabled():
            native.require()
        settings = TrainSettings(model=config, batch_size=batch, crop_s=crop_s)
        seed_everything(0)
        model = build_detector(config)
        model.train()
        samples = int(crop_s * model.config.sampling_rate)
        rng = np.random.default_rng(0)
        signals = rng.standard_normal((batch, model.config.n_channels, samples)).astype(np.float32)
        labels = np.zeros((batch, samples), np.float32)
        labels[:, samples // 3 : samples // 2] = 1.0  # a seizure in every crop: both classes in the loss
        valid = np.ones((batch, samples), bool)
        tensors = tuple(torch.from_numpy(a) for a in (signals, labels, valid))
        optimizer = build_optimizer(model, settings.lr, settings.weight_decay)
        losses, times, first_gradient = [], [], None
        for _ in range(steps):
            seed_everything(1)  # the same dropout masks in both processes
            start = time.perf_counter()
            outcome = train_step(model, optimizer, tensors, settings, torch.device("cpu"))
            times.append(time.perf_counter() - start)
            if outcome.stage is not None:
                raise RuntimeError(f"step skipped at {outcome.stage}")
            losses.append(outcome.loss)
            if first_gradient is None:  # train_step has stepped; its gradients are still in .grad
                first_gradient = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        queue.put({"losses": losses, "times": times, "threads": torch.get_num_threads(),
                   "first_gradient": first_gradient.double().numpy(),
                   "peak_rss_mb": peak_rss_mb()})
    except Exception as exc:  # reported, not raised: the other kernel still runs
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def measure(kernel: str, *args) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_run, args=(kernel, *args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="v3-small")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--crop-s", type=float, default=15.0)
    parser.add_argument("--steps", type=int, default=6, help="steps per kernel; the first is a warm-up")
    parser.add_argument("--tolerance", type=float, default=1e-5, help="max |loss difference| at the first step")
    parser.add_argument("--gradient-tolerance", type=float, default=1e-4,
                        help="max gradient difference at the first step, relative to the largest entry")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    from machine import cpu_info

    report = {"machine": cpu_info(), "config": args.config, "batch": args.batch, "crop_s": args.crop_s,
              "steps": args.steps, "kernels": {}}
    for kernel in KERNELS:
        result = measure(kernel, args.config, args.batch, args.crop_s, args.steps)
        if "times" in result:
            result["step_s_median"] = statistics.median(result["times"][1:])
        report["kernels"][kernel] = result
        print(kernel, {k: v for k, v in result.items() if k not in ("times", "first_gradient")})
    before, after = (report["kernels"][k] for k in KERNELS)
    lines = [f"CPU: {report['machine']['cpu_model']}, {report['machine']['threads']} threads; {args.config}, "
             f"{args.batch} x {args.crop_s:g} s crops, forward + backward + AdamW, median of steps 2..{args.steps}", "",
             "| scan kernel | s/step | peak RSS MB | losses |", "|---|---|---|---|"]
    for kernel in KERNELS:
        r = report["kernels"][kernel]
        lines.append(f"| {kernel} | unavailable: {r['error']} |||" if "error" in r else
                     f"| {kernel} | {r['step_s_median']:.3f} | {r['peak_rss_mb']:.0f} | "
                     f"{', '.join(f'{v:.6f}' for v in r['losses'])} |")
    status = 0
    if "error" not in before and "error" not in after:
        import numpy as np

        loss_diff = abs(before["losses"][0] - after["losses"][0])
        g0, g1 = before.pop("first_gradient"), after.pop("first_gradient")
        grad_diff = float(np.abs(g0 - g1).max() / np.abs(g0).max())
        report.update({
            "speedup": before["step_s_median"] / after["step_s_median"],
            "first_step_loss_difference": loss_diff,
            "first_step_gradient_relative_difference": grad_diff,
            "later_steps_max_loss_difference": max(abs(a - b) for a, b in zip(before["losses"], after["losses"])),
            "agree": loss_diff <= args.tolerance and grad_diff <= args.gradient_tolerance,
        })
        lines += ["", f"Speed-up native / reference: **{report['speedup']:.2f}x**. First step: loss difference "
                      f"{loss_diff:.1e} (tolerance {args.tolerance:g}), gradient difference {grad_diff:.1e} of the "
                      f"largest entry (tolerance {args.gradient_tolerance:g}): "
                      f"{'agree' if report['agree'] else 'DISAGREE'}; over all {args.steps} steps the losses differ "
                      f"by at most {report['later_steps_max_loss_difference']:.1e}."]
        status = 0 if report["agree"] else 1
    for result in report["kernels"].values():
        result.pop("first_gradient", None)
    write_report(args.out, f"{utc_stamp()}-train", report, "\n".join(lines))
    return status


if __name__ == "__main__":
    sys.exit(main())
