"""brr-train under torchrun: 2 CPU processes (gloo) take the same steps as one process with the same global
batch, and a checkpoint written by 2 processes resumes in 1 on the same global stream."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from tiny_models import TINY_MODEL, without_dropout

from brr.data.synthetic import write_corpus

# Dropout off: otherwise each process draws its own masks and no two runs could be compared step by step.
MODEL = without_dropout(TINY_MODEL)


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ddp")
    write_corpus(folder / "corpus", recordings=3, minutes=1, seed=5)
    (folder / "tiny.yaml").write_text(yaml.safe_dump(MODEL))
    settings = {"data": str(folder / "corpus"), "model": str(folder / "tiny.yaml"), "guards": False,
                "steps_per_epoch": 3, "batch_size": 4, "lr": 5e-3, "warmup_steps": 0, "stride_s": 5.0,
                "val_stride_s": 5.0, "threads": 1, "loader_workers": 0, "progress": False}
    (folder / "train.yaml").write_text(yaml.safe_dump(settings))
    return folder / "train.yaml"


def run_train(config: Path, out: Path, processes: int, *options: str) -> list[float | None]:
    """brr-train in ``processes`` processes (torchrun when more than one); the losses of this invocation."""
    command = [sys.executable, "-m", "brr.cli.train", "--config", str(config), "-o", str(out), "-q", *options]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
                   "-m", "brr.cli.train", *command[3:]]
    # A process that aborts (SIGABRT in C++) prints every thread's Python stack: what a failure here must show.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads((out / "train_result.json").read_text())["losses"]


def test_two_processes_take_the_steps_of_one(config, tmp_path):
    one = run_train(config, tmp_path / "one", 1, "--epochs", "1")
    two = run_train(config, tmp_path / "two", 2, "--epochs", "1")
    assert len(one) == len(two) == 3 and None not in one + two
    # The same step (gradients summed in another order: differences of 1e-8); AdamW's normalised updates then
    # amplify them on parameters whose gradients are near zero, so the tolerance widens after two steps.
    np.testing.assert_allclose(two[:2], one[:2], rtol=0, atol=1e-5)
    np.testing.assert_allclose(two, one, rtol=0, atol=1e-4)


def test_checkpoint_of_two_processes_resumes_in_one(config, tmp_path):
    # The same first epoch written by 1 and by 2 processes; each resumed in 1 for a second epoch.
    run_train(config, tmp_path / "by_one", 1, "--epochs", "1")
    run_train(config, tmp_path / "by_two", 2, "--epochs", "1")
    after_one = run_train(config, tmp_path / "by_one", 1, "--epochs", "2", "--resume")
    after_two = run_train(config, tmp_path / "by_two", 1, "--epochs", "2", "--resume")
    assert len(after_one) == len(after_two) == 3 and None not in after_one + after_two
    # The same windows in the same order from the same state; the first epoch's rounding differences (1e-6)
    # grow through AdamW's normalised updates, but stay far below a different batch's loss (~1e-2 away).
    np.testing.assert_allclose(after_two, after_one, rtol=0, atol=2e-4)
    state = json.loads((tmp_path / "by_two" / "last" / "training_state.json").read_text())["loop"]
    assert (state["epoch"], state["step"]) == (2, 6)
