"""The detector: shapes at every probe, finiteness, gradients, config and checkpoints."""

import hashlib
import json
import os

import pytest
import torch
from safetensors.torch import load_file, save

from brr.diff.inputs import AdversarialWindows
from brr.model import (PROBE_NAMES, CheckpointError, ConfigError, NonFiniteInputError, build_detector,
                       load_checkpoint, resolve_config, save_checkpoint)
from brr.model.checkpoint import meta_digest
from brr.model.contract import INPUT_NAME
from brr.model.edge_stream import pair_similarity


def expected_shapes(cfg, b):
    t, d, c = cfg.steps, cfg.electrode_dim, cfg.tcn_out
    return {
        "tcn": (b, c, t), "electrodes": (b, 19, t, d), "node_stream": (b, 19, t, d),
        "edge_similarity": (b, 171, t), "edge_weights": (b, 171, t), "adjacency": (b, t, 19, 19),
        "laplacian_pe": (b, t, 19, cfg.k_eigenvectors), "gnn": (b, 19, t, d), "backprojection": (b, c, t),
        "decoder": (b, 19, 15360), "logits": (b, 15360),
    }


@pytest.mark.parametrize("name", ["v3-small", pytest.param("v3", marks=pytest.mark.slow)])
def test_probe_shapes_and_finite_logits(name):
    model = build_detector(name).eval()
    with torch.no_grad():
        logits, probes = model(torch.randn(2, 19, 15360), return_probes=True)
    assert tuple(probes) == PROBE_NAMES
    assert {k: tuple(v.shape) for k, v in probes.items()} == expected_shapes(model.config, 2)
    assert torch.equal(logits, probes["logits"])
    assert all(torch.isfinite(v).all() for v in probes.values())


@pytest.mark.parametrize("guards", [True, False])
def test_finite_at_initialisation_on_adversarial_windows(guards):
    """The suite every engine must survive (``brr.diff.inputs``: flat, pops, saturation, zeros, mains)."""
    model = build_detector("v3-small", guards=guards).eval()
    for name, feed in AdversarialWindows().labelled():
        window = torch.from_numpy(feed[INPUT_NAME])
        with torch.no_grad():
            logits = model(window)
        assert torch.isfinite(logits).all(), f"non-finite logits for {name} with guards={guards}"


def test_guards_clamp_the_similarity_and_floor_the_norm():
    features = torch.randn(1, 19, 4, 8)
    features[:, 1] = 2 * features[:, 0]  # parallel: similarity exactly 1
    features[:, 2] = 0.0  # flat: zero norm
    raw = pair_similarity(features, "cosine", guarded=False)
    guarded = pair_similarity(features, "cosine", guarded=True)
    assert torch.allclose(raw[0, 0], torch.ones(4))  # pair (Fp1, F3)
    assert torch.allclose(guarded[0, 0], torch.full((4,), 0.99))
    assert torch.isnan(raw[0, 1]).all()  # pair (Fp1, C3): 0/0 without the guard
    assert torch.equal(guarded[0, 1], torch.zeros(4))
    # Wherever no guard applies, guarded and raw agree exactly.
    free = torch.isfinite(raw) & (raw.abs() < 0.99)
    assert torch.equal(raw[free], guarded[free])


def test_correlation_metric_is_pearson():
    features = torch.randn(1, 19, 3, 32)
    sim = pair_similarity(features, "correlation", guarded=False)
    expected = torch.corrcoef(features[0, :, 1])[0, 5]
    assert torch.allclose(sim[0, 4, 1], expected, atol=1e-6)  # pair (Fp1, T3) is edge 4


@pytest.mark.parametrize("guards", [True, False])
def test_gradients_reach_every_parameter(guards):
    model = build_detector("v3-small", guards=guards).train()
    logits = model(torch.randn(1, 19, 15360) * 3)
    logits.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    nonfinite = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not missing, f"no gradient for {missing}"
    assert not nonfinite, f"non-finite gradient for {nonfinite}"


@pytest.mark.parametrize("name", ["v3-small", pytest.param("v3", marks=pytest.mark.slow)])
def test_initialisation_keeps_the_input_visible(name):
    """At initialisation the electrode features must depend on the input, not on bias patterns:
    replacing the input by another draw changes them by about their own spread, and scaling the
    input scales them. (With PyTorch's default conv init the change was ~6% of the spread and
    training sat on a plateau.)"""
    torch.manual_seed(0)
    model = build_detector(name).eval()
    x = torch.randn(1, 19, 2560)
    with torch.no_grad():
        features = model.electrodes(model.tcn(x))
        other = model.electrodes(model.tcn(torch.randn(1, 19, 2560)))
        louder = model.electrodes(model.tcn(3 * x))
    assert (features - other).std() > 0.5 * features.std()
    assert torch.allclose(louder, 3 * features, rtol=1e-4, atol=1e-4)  # zero biases, ReLU: homogeneous


def test_static_pe_and_zero_edge_layers():
    model = build_detector({"base": "v3-small", "use_dynamic_pe": False,
                            "edge_mamba": {"layers": 0}}).eval()
    assert len(model.edge_stream.mamba) == 0
    with torch.no_grad():
        logits, probes = model(torch.randn(1, 19, 15360), return_probes=True)
    pe = probes["laplacian_pe"]
    assert torch.equal(pe[0, 0], pe[0, -1])  # static: the same for every step
    assert torch.isfinite(logits).all()


def test_presets_and_config_files(tmp_path):
    assert resolve_config("v3").tcn_channels == (64, 128, 256, 512, 64, 128, 256, 512)
    assert resolve_config("v3").node_mamba.layers == 6 and resolve_config("v3").edge_mamba.layers == 2
    path = tmp_path / "cfg.yaml"
    path.write_text("base: v3-small\nedge_top_k: 5\nnode_mamba: {layers: 3}\n")
    cfg = resolve_config(str(path))
    assert (cfg.edge_top_k, cfg.node_mamba.layers, cfg.tcn_out) == (5, 3, 64)
    json_path = tmp_path / "cfg.json"
    json_path.write_text(json.dumps(cfg.to_dict()))
    assert resolve_config(str(json_path)) == cfg


@pytest.mark.parametrize("bad, message", [
    ({"edge_top_k": 0}, "edge_top_k"),
    ({"edge_metric": "euclid"}, "edge_metric"),
    ({"semi_dynamic_interval": 7}, "semi_dynamic_interval"),
    ({"no_such_key": 1}, "no_such_key"),
    ({"node_mamba": {"headdim": 7}}, "headdim"),
    ({"node_mamba": {"colour": 1}}, "colour"),
    ({"guards": "yes"}, "guards"),
])
def test_invalid_config_names_the_key(bad, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config({"base": "v3-small", **bad})


def test_unknown_preset_or_missing_file():
    with pytest.raises(ConfigError, match="neither a preset"):
        resolve_config("v4")


def test_checkpoint_round_trip_and_refusals(tmp_path, small_model):
    save_checkpoint(small_model, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert not loaded.training
    x = torch.randn(1, 19, 15360)
    with torch.no_grad():
        assert torch.equal(small_model(x), loaded(x))
    # Weights of one config do not load into another: the message names a differing tensor.
    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    meta["config"]["electrode_dim"] = 16
    meta["config"]["node_mamba"]["d_model"] = 16
    meta["config_digest"] = resolve_config(meta["config"]).digest()
    meta["meta_sha256"] = meta_digest(meta)
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="shape"):
        load_checkpoint(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(tmp_path)
    # A file that is not safetensors at all, recorded as such: unreadable, not a crash.
    save_checkpoint(small_model, tmp_path / "bad")
    _replace_weights(tmp_path / "bad", b"not safetensors")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(tmp_path / "bad")


def _replace_weights(directory, data: bytes) -> None:
    """Write other weight bytes and record their hash (and the config's digest), as a careful forger would."""
    (directory / "model.safetensors").write_bytes(data)
    _edit_meta(directory, lambda meta: meta.update(weights_sha256=hashlib.sha256(data).hexdigest()))


def _edit_meta(directory, edit, redigest: bool = True) -> None:
    """Edit config.json; with ``redigest`` also recompute its meta_sha256, so that the deeper checks answer."""
    meta = json.loads((directory / "config.json").read_text())
    edit(meta)
    if redigest:
        meta["meta_sha256"] = meta_digest(meta)
    (directory / "config.json").write_text(json.dumps(meta))


def _flip_a_weight_byte(directory) -> None:
    data = bytearray((directory / "model.safetensors").read_bytes())
    data[-3] ^= 0x01  # inside the last tensor's data, past the header
    (directory / "model.safetensors").write_bytes(bytes(data))


def _other_seed_weights(directory) -> None:
    torch.manual_seed(99)
    other = save_checkpoint(build_detector("v3-small"), directory.parent / "other-seed")
    (directory / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())


def _nan_bias(directory) -> None:
    state = load_file(directory / "model.safetensors")
    state["head.conv.bias"] = torch.full_like(state["head.conv.bias"], float("nan"))
    _replace_weights(directory, save(state))


def _top_k_changed_digest_deleted(meta) -> None:
    meta["config"]["edge_top_k"] += 1
    del meta["config_digest"]


def _top_k_changed(meta) -> None:
    meta["config"]["edge_top_k"] += 1


@pytest.mark.parametrize("tamper, message", [
    (_flip_a_weight_byte, "does not match the weights_sha256"),
    (_other_seed_weights, "does not match the weights_sha256"),
    (_nan_bias, r"non-finite weights in head\.conv\.bias"),
    (lambda d: _edit_meta(d, _top_k_changed_digest_deleted), "no config_digest"),
    (lambda d: _edit_meta(d, _top_k_changed), "config digest does not match"),
    (lambda d: _edit_meta(d, lambda meta: meta.pop("weights_sha256")), "no weights_sha256"),
    (lambda d: _edit_meta(d, lambda meta: meta.update(brr_version="0.0.0"), redigest=False),
     "does not match its meta_sha256"),
    (lambda d: _edit_meta(d, lambda meta: meta.pop("meta_sha256"), redigest=False), "no meta_sha256"),
], ids=["byte-flip", "other-seed", "nan-bias-rehashed", "digest-deleted", "config-edited", "hash-deleted",
        "meta-edited", "meta-digest-deleted"])
def test_checkpoint_that_does_not_verify_is_refused(tmp_path, small_model, tamper, message):
    directory = save_checkpoint(small_model, tmp_path / "ckpt")
    tamper(directory)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(directory)


def test_checkpoint_files_follow_the_umask(tmp_path, small_model):
    previous = os.umask(0o022)
    try:
        directory = save_checkpoint(small_model, tmp_path / "ckpt")
    finally:
        os.umask(previous)
    assert {p.name: p.stat().st_mode & 0o777 for p in directory.iterdir()} == {
        "config.json": 0o644, "model.safetensors": 0o644}


def test_nonfinite_input_is_refused_naming_where(small_model):
    x = torch.randn(2, 19, 15360)
    x[1, 2, 100:103] = float("nan")
    x[1, 18, 7] = float("-inf")
    with torch.no_grad(), pytest.raises(NonFiniteInputError) as caught:
        small_model(x)
    assert caught.value.count == 4
    assert caught.value.locations == [(1, "C3", 100, 102), (1, "O2", 7, 7)]
    assert "window 1 channel C3 samples 100..102" in str(caught.value)
    with torch.no_grad():  # the same windows without the bad samples run
        x[1, 2, 100:103] = 0.0
        x[1, 18, 7] = 0.0
        assert torch.isfinite(small_model(x)).all()
