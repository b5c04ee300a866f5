"""Serving an exported engine, standard or custom ops, needs neither PyTorch nor matplotlib: ``brr-infer`` runs in a
process where importing them fails, and ``requirements-serve.txt`` (the serving install) asks only for
what the package itself requires."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from brr.cli.export import main as export_main
from brr.data.synthetic import plan_recording, write_recording

ROOT = Path(__file__).resolve().parents[2]
UNSERVED = ("torch", "matplotlib")
# Run brr-infer with PyTorch and matplotlib made unimportable; report whether either got in anyway.
BLOCKED_RUN = f"""
import importlib.abc, sys
class Unserved(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {UNSERVED!r}:
            raise ImportError(name + " is not part of the serving install")
sys.meta_path.insert(0, Unserved())
from brr.cli.infer import main
code = main(sys.argv[1:])
assert not any(name in sys.modules for name in {UNSERVED!r})
sys.exit(code)
"""


def _serve(*argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKED_RUN, *map(str, argv)], capture_output=True, text=True,
                          timeout=600)


def test_serving_requirements_are_the_packages_own():
    requirements = [line.strip() for line in (ROOT / "requirements-serve.txt").read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert set(requirements) <= set(declared), set(requirements) - set(declared)
    assert not [r for r in requirements if r.split(">")[0].split("=")[0] in UNSERVED]


def test_help_without_pytorch():
    run = _serve("--help")
    assert run.returncode == 0, run.stderr
    assert "--precision" in run.stdout


@pytest.mark.parametrize("ops", ["standard", "plugin"])
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_an_exported_engine_is_served_without_pytorch(checkpoint, tmp_path, backend, ops):
    export = tmp_path / "export"
    assert export_main([str(checkpoint), "-o", str(export), "--precision", "fp32", "--backend", backend,
                        "--ops", ops, "--no-verify", "-q"]) == 0
    edf = write_recording(plan_recording(seed=5, index=0, duration_s=120), tmp_path / "rec.edf")
    run = _serve(export, edf, "-o", tmp_path / "out", "--allow-unverified", "-q")
    assert run.returncode == 0, run.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [r["status"] for r in summary["recordings"]] == ["ok"]
    assert (tmp_path / "out" / "rec_events.tsv").is_file()


def test_overlap_inference_is_served_without_pytorch(checkpoint, tmp_path):
    export = tmp_path / "export"
    assert export_main([str(checkpoint), "-o", str(export), "--backend", "onnxruntime", "--split", "--no-verify",
                        "-q"]) == 0
    edf = write_recording(plan_recording(seed=5, index=0, duration_s=75), tmp_path / "rec.edf")
    run = _serve(export, edf, "-o", tmp_path / "out", "--window-mode", "overlap", "--allow-unverified", "-q")
    assert run.returncode == 0, run.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [r["status"] for r in summary["recordings"]] == ["ok"]
    assert summary["settings"]["window_mode"] == "overlap"
