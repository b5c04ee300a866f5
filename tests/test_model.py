"""The detector: shapes at every probe, finiteness, gradients, config and checkpoints."""

import json

import pytest
import torch

from brr.model import (PROBE_NAMES, CheckpointError, ConfigError, build_detector, load_checkpoint,
                       resolve_config, save_checkpoint)
from brr.model.edge_stream import pair_similarity
from conftest import adversarial_windows


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
    model = build_detector("v3-small", guards=guards).eval()
    for name, window in adversarial_windows().items():
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
    meta.pop("config_digest")
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="shape"):
        load_checkpoint(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(tmp_path)
    (tmp_path / "bad").mkdir()
    save_checkpoint(small_model, tmp_path / "bad")
    (tmp_path / "bad" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(tmp_path / "bad")
