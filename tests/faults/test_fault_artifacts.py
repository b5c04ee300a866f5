"""Tampered checkpoints and artifacts: refused before anything runs, with exit status 2 and one line.

Checkpoints: a flipped byte anywhere in either file, deleted digests, another model's weights, NaN
weights. ``load_checkpoint`` must refuse every one (``CheckpointError``); each command given one
exits 2 without writing an output. A swap whose every hash and digest is recomputed is simply another
valid checkpoint, and is not a fault these checks can see. Exported artifacts: a flipped byte in
each file the manifest hashes is refused by ``load_runner``; ``brr-export`` of a checkpoint still
works (the model's input check does not disturb tracing).
"""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
from faultkit import flip_byte, good_edf, run_cli, spread_offsets
from safetensors.torch import load_file, save

from brr.cli.calibrate import main as calibrate_main
from brr.cli.diff import main as diff_main
from brr.cli.export import main as export_main
from brr.cli.infer import main as infer_main
from brr.artifact.files import MANIFEST_FILE
from brr.artifact.manifest import ManifestError
from brr.model import CheckpointError, build_detector, load_checkpoint
from brr.model.checkpoint import meta_digest
from brr.artifact.load import load_runner
from brr.backends.onnxrt.loader import CUDA_ONNXRUNTIME_COMMAND

CHECKPOINT_FILES = ("config.json", "model.safetensors")
FLIPS_PER_FILE = 16


@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_every_byte_flip_of_a_checkpoint_is_refused(fault_checkpoint, tmp_path, name):
    offsets = spread_offsets((fault_checkpoint / name).stat().st_size, FLIPS_PER_FILE)
    assert len(offsets) == FLIPS_PER_FILE
    for offset in offsets:
        copy = shutil.copytree(fault_checkpoint, tmp_path / str(offset))
        flip_byte(copy / name, offset)
        with pytest.raises(CheckpointError):
            load_checkpoint(copy)


def _rewrite_meta(directory, edit, redigest=True):
    meta = json.loads((directory / "config.json").read_text())
    edit(meta)
    if redigest:
        meta["meta_sha256"] = meta_digest(meta)
    (directory / "config.json").write_text(json.dumps(meta))


def _swap_weights(directory, state, rehash_weights=True, redigest=True):
    data = save(state)
    (directory / "model.safetensors").write_bytes(data)
    if rehash_weights:
        _rewrite_meta(directory, lambda m: m.update(weights_sha256=hashlib.sha256(data).hexdigest()), redigest)


def _other_model(directory, **kwargs):
    torch.manual_seed(123)
    _swap_weights(directory, build_detector("v3-small").state_dict(), **kwargs)


def _nan_weight(directory):
    state = load_file(directory / "model.safetensors")
    state["tcn.dilated.3.bias"] = torch.full_like(state["tcn.dilated.3.bias"], float("nan"))
    _swap_weights(directory, state)


def _wider_model(directory):
    _swap_weights(directory, build_detector({"base": "v3-small", "electrode_dim": 16,
                                             "node_mamba": {"d_model": 16}}).state_dict())


TAMPERED = {
    # name: (tamper, words of the refusal)
    "other_weights": (lambda d: _other_model(d, rehash_weights=False), "weights_sha256"),
    "other_weights_rehashed": (lambda d: _other_model(d, redigest=False), "meta_sha256"),
    "nan_weight_rehashed": (_nan_weight, "non-finite weights in tcn.dilated.3.bias"),
    "wider_model_rehashed": (_wider_model, "does not fit config"),
    "config_digest_deleted": (lambda d: _rewrite_meta(d, lambda m: m.pop("config_digest")), "no config_digest"),
    "weights_hash_deleted": (lambda d: _rewrite_meta(d, lambda m: m.pop("weights_sha256")), "no weights_sha256"),
    "meta_digest_deleted": (lambda d: _rewrite_meta(d, lambda m: m.pop("meta_sha256"), False), "no meta_sha256"),
    "top_k_edited": (lambda d: _rewrite_meta(d, lambda m: m["config"].update(edge_top_k=5)), "config digest"),
    "postprocess_edited": (lambda d: _rewrite_meta(d, lambda m: m.update(training={"postprocess": {"enter": 0.1}}),
                                                   False), "meta_sha256"),
    "weights_deleted": (lambda d: (d / "model.safetensors").unlink(), "missing model.safetensors"),
    "config_not_json": (lambda d: (d / "config.json").write_text("{not json"), "invalid JSON"),
}


@pytest.fixture
def tampered(fault_checkpoint, tmp_path, request):
    tamper, words = TAMPERED[request.param]
    copy = shutil.copytree(fault_checkpoint, tmp_path / "tampered")
    tamper(copy)
    return copy, words


@pytest.mark.parametrize("tampered", list(TAMPERED), indirect=True)
def test_tampered_checkpoint_is_refused_with_its_reason(tampered):
    directory, words = tampered
    with pytest.raises(CheckpointError, match=words.replace(".", r"\.")):
        load_checkpoint(directory)


@pytest.mark.parametrize("tampered", ["nan_weight_rehashed", "other_weights_rehashed", "config_digest_deleted"],
                         indirect=True)
def test_every_command_refuses_a_tampered_checkpoint_before_writing(tampered, tmp_path):
    directory, words = tampered
    edf = good_edf(tmp_path / "in" / "rec.edf")
    commands = {
        "brr-infer": (infer_main, [directory, edf, "--out", tmp_path / "infer", "--quiet"], "infer"),
        "brr-export": (export_main, [directory, "--out", tmp_path / "export", "--no-verify"], "export"),
        "brr-diff": (diff_main, [directory, "torch:bf16", "--synthetic", "1", "--out", tmp_path / "diff"], "diff"),
        "brr-calibrate": (calibrate_main, [directory, "--data", edf, "--out", tmp_path / "cal"], "cal"),
    }
    for tool, (main, argv, out) in commands.items():
        run = run_cli(main, argv)
        assert run.code == 2, (tool, run.stderr)
        run.assert_one_line_error(tool, words)
        written = [p for p in (tmp_path / out).rglob("*") if p.is_file()] if (tmp_path / out).exists() else []
        assert written == [], (tool, written)


def test_export_of_a_missing_checkpoint_exits_2(tmp_path):
    run = run_cli(export_main, [tmp_path / "no-such-checkpoint", "--out", tmp_path / "out", "--no-verify"])
    assert run.code == 2
    run.assert_one_line_error("brr-export", "no-such-checkpoint", "not a checkpoint")


@pytest.fixture(scope="module")
def exported(fault_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("fault-export")
    run = run_cli(export_main, [fault_checkpoint, "--out", out, "--engine", "fp32", "--backend", "onnxruntime",
                                "--no-verify"])
    assert run.code == 0, run.stderr
    (manifest,) = out.rglob(MANIFEST_FILE)
    return manifest.parent


def test_export_of_a_checkpoint_still_works(exported):
    names = {p.name for p in exported.iterdir()}
    assert {"model.onnx", MANIFEST_FILE} <= names
    load_runner(exported)  # verified


def test_every_byte_flip_of_a_hashed_artifact_file_is_refused(exported, tmp_path):
    hashed = sorted(json.loads((exported / MANIFEST_FILE).read_text())["files"])
    assert {"model.onnx", "model.stages.json"} <= set(hashed)
    for name in hashed:
        for offset in spread_offsets((exported / name).stat().st_size, 4):
            copy = shutil.copytree(exported, tmp_path / f"{name}-{offset}")
            flip_byte(copy / name, offset)
            with pytest.raises(ManifestError, match=f"{name} does not match its sha256"):
                load_runner(copy)


def test_gpu_extra_hint_is_printed_literally(exported, tmp_path):
    """The fix for a CPU-only onnxruntime reaches the user whole, as a command to paste: quotes, ``&&`` and
    ``>=`` untouched by console markup."""
    edf = good_edf(tmp_path / "in" / "rec.edf")
    run = run_cli(infer_main, [exported, edf, "--out", tmp_path / "out", "--device", "cuda", "--quiet",
                               "--allow-unverified"])
    assert run.code == 2
    run.assert_one_line_error("brr-infer", CUDA_ONNXRUNTIME_COMMAND)


def test_every_byte_flip_of_the_manifest_is_refused(exported, tmp_path):
    offsets = spread_offsets((exported / MANIFEST_FILE).stat().st_size, 16)
    accepted = []
    for offset in offsets:
        copy = shutil.copytree(exported, tmp_path / str(offset))
        flip_byte(copy / MANIFEST_FILE, offset)
        try:
            load_runner(copy)
        except ManifestError:
            continue
        accepted.append(offset)
    assert accepted == []
