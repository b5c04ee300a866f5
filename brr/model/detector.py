"""The V3 dual-stream detector: wires the stages and names the probe points.

x (B, 19, 15360) -> logits (B, 15360). ``forward(x, return_probes=True)`` also returns the output of
every stage under the names in ``brr.model.contract.PROBE_NAMES``; the diff tool, the exporter and the reports are
keyed by these names, so they never change. ``forward`` is ``forward_rest(forward_front(x))``: the front
(encoder and electrode projection) computes each step from the samples around it, so a recording's windows
can share it (``brr.model.front``); the rest sees the whole window.

The input must be finite: one NaN sample would otherwise become logits of exactly 0 (p = 0.5) for
its whole window through the guards' ``nan_to_num``, a confident-looking number. ``forward`` raises
:class:`NonFiniteInputError` naming the windows, channels and samples instead. The check is skipped
while the model is being traced or compiled (ONNX export, ``torch.compile``), where the input has no
values; the runtimes check their own inputs and outputs.
"""

from __future__ import annotations

import torch
from torch import nn

from brr.errors import InputError
from brr.model.adjacency import AdjacencyAssembly
from brr.model.config import DetectorConfig
from brr.model.edge_stream import EdgeStream
from brr.model.graph import GraphNetwork
from brr.model.heads import BackProjection, Decoder, DetectionHead, ElectrodeProjection
from brr.model.node_stream import NodeStream
from brr.model.positional_encoding import LaplacianPE
from brr.model.tcn import TCNEncoder
from brr.montage import CHANNELS


class NonFiniteInputError(InputError):
    """The detector's input holds NaN or +-inf; ``locations`` lists (window, channel, first, last sample)."""

    def __init__(self, count: int, locations: list[tuple[int, str, int, int]]) -> None:
        self.count = count
        self.locations = locations
        shown = "; ".join(f"window {w} channel {c} samples {a}..{b}" for w, c, a, b in locations[:5])
        more = f"; ... ({len(locations)} channel runs in all)" if len(locations) > 5 else ""
        super().__init__(f"the input has {count} non-finite value(s) (NaN or inf): {shown}{more}. "
                         "The detector has no answer for them: repair or drop those samples first "
                         "(brr.data's preprocessing interpolates short gaps).")


def _being_traced() -> bool:
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting()


def check_finite_input(x: torch.Tensor) -> None:
    """Raise :class:`NonFiniteInputError` when ``x`` (B, channels, samples) holds a non-finite value."""
    bad = ~torch.isfinite(x)
    if not bad.any():
        return
    locations = []
    for window, channel in (bad.any(dim=-1)).nonzero().tolist():
        samples = bad[window, channel].nonzero().flatten()
        name = CHANNELS[channel] if x.shape[1] == len(CHANNELS) else str(channel)
        locations.append((window, name, int(samples[0]), int(samples[-1])))
    raise NonFiniteInputError(int(bad.sum()), locations)


class V3Detector(nn.Module):
    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        self.config = cfg
        self.tcn = TCNEncoder(cfg)
        self.electrodes = ElectrodeProjection(cfg)
        self.node_stream = NodeStream(cfg)
        self.edge_stream = EdgeStream(cfg)
        self.adjacency = AdjacencyAssembly(cfg)
        self.positional_encoding = LaplacianPE(cfg)
        self.gnn = GraphNetwork(cfg)
        self.backprojection = BackProjection(cfg)
        self.decoder = Decoder(cfg)
        self.head = DetectionHead(cfg)

    def forward(self, x: torch.Tensor, return_probes: bool = False):
        electrodes, probes = self.forward_front(x, return_probes=True)
        logits, rest = self.forward_rest(electrodes, return_probes=True)
        probes |= rest
        return (logits, probes) if return_probes else logits

    def forward_front(self, x: torch.Tensor, return_probes: bool = False):
        """The stages that compute each step from the samples around it alone (``brr.model.front``):
        x (B, 19, N) -> electrode features (B, 19, N // downsample, D), for a window or any longer span."""
        if not _being_traced():
            check_finite_input(x)
        probes: dict[str, torch.Tensor] = {}
        probes["tcn"] = self.tcn(x)
        probes["electrodes"] = self.electrodes(probes["tcn"])
        return (probes["electrodes"], probes) if return_probes else probes["electrodes"]

    def forward_rest(self, electrodes: torch.Tensor, return_probes: bool = False):
        """The stages that see the whole window at once: electrode features (B, 19, T, D) -> logits (B, 16T)."""
        probes: dict[str, torch.Tensor] = {}
        probes["node_stream"] = self.node_stream(electrodes)
        probes["edge_similarity"], probes["edge_weights"] = self.edge_stream(electrodes)
        probes["adjacency"] = self.adjacency(probes["edge_weights"])
        probes["laplacian_pe"] = self.positional_encoding(probes["adjacency"])
        probes["gnn"] = self.gnn(probes["node_stream"], probes["laplacian_pe"], probes["adjacency"])
        probes["backprojection"] = self.backprojection(probes["gnn"])
        probes["decoder"] = self.decoder(probes["backprojection"])
        probes["logits"] = self.head(probes["decoder"])
        return (probes["logits"], probes) if return_probes else probes["logits"]


def summarize_probes(probes: dict[str, torch.Tensor]) -> list[dict]:
    """One row per probe: shape, range, mean and the share of finite values (the first check of a NaN hunt)."""
    rows = []
    for name, tensor in probes.items():
        t = tensor.detach().float()
        finite = torch.isfinite(t)
        values = t[finite]
        rows.append({
            "probe": name, "shape": tuple(t.shape), "finite_fraction": finite.float().mean().item(),
            "min": values.min().item() if values.numel() else float("nan"),
            "max": values.max().item() if values.numel() else float("nan"),
            "mean": values.mean().item() if values.numel() else float("nan"),
        })
    return rows
