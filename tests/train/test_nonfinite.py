"""brr.train.nonfinite: the first module and operation of a forward that went non-finite, and why.

The seed's incident (every batch non-finite from the first step, blamed on the edge stream's lift and
Mamba) is planted in v3-small; an fp16-only overflow, a clean model, a non-finite input, and one tiny
module per cause complete it. Windows of 2.5 s (640 samples, 40 steps) keep each replay short.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from brr.diff.results import Cause
from brr.diff.verdict import NonfiniteKind
from brr.model import build_detector
from brr.train.nonfinite import locate_nonfinite

CPU = torch.device("cpu")
SAMPLES = 640
FP16_MAX = torch.finfo(torch.float16).max


def window(batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 19, SAMPLES)


def probes_of(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return model.eval()(x, return_probes=True)[1]


def test_the_seeds_incident_is_named_at_the_edge_streams_mamba():
    # The seed: a lift initialised so large that the edge stream's values go non-finite from the
    # first batch. Without guards its weights are NaN everywhere (the probe training skips on).
    model = build_detector("v3-small", guards=False)
    with torch.no_grad():
        model.edge_stream.lift.weight.mul_(1e30)
    x = window()
    assert torch.isnan(probes_of(model, x)["edge_weights"]).all()
    model.train()
    model.tcn.dilated[2].eval()  # a module's own mode must survive the replay

    finding = locate_nonfinite(model, x, autocast_dtype=None, device=CPU)

    assert finding is not None and finding.module == "edge_stream.mamba.0.forward_mamba"
    assert (finding.module_class, finding.op, finding.dtype) == ("Mamba2", "brr.selective_scan.default", "fp32")
    # Its inputs are finite (up to ~1e30); its exact result, computed again in fp64, is beyond fp32.
    assert all(i.range.nonfinite == 0 for i in finding.inputs)
    assert max(i.range.abs_max for i in finding.inputs) > 1e28
    assert finding.cause is Cause.OVERFLOW and finding.reference_dtype == "fp64"
    assert finding.reference_abs_max > torch.finfo(torch.float32).max
    assert finding.fp32_finite is False and finding.kind is NonfiniteKind.FP32
    assert finding.nan == finding.output.nonfinite > 0
    text = finding.describe()
    assert text.startswith("first non-finite value at edge_stream.mamba.0.forward_mamba (Mamba2), "
                           "brr.selective_scan.default, fp32: overflow (")
    assert "a model defect" in text and "x fp32 in [" in text
    assert json.loads(json.dumps(finding.to_dict()))["cause"] == "overflow"
    assert model.training and not model.tcn.dilated[2].training and model.edge_stream.training


def test_guards_clamp_the_lift_but_hide_a_nan_of_the_edge_mamba_from_every_probe():
    model = build_detector("v3-small", guards=True)
    with torch.no_grad():
        model.edge_stream.lift.weight.mul_(1e30)
    x = window()
    assert locate_nonfinite(model, x, autocast_dtype=None, device=CPU) is None  # LIFT_LIMIT holds it

    with torch.no_grad():
        model.edge_stream.mamba[0].forward_mamba.in_proj.weight.mul_(1e30)
    assert all(torch.isfinite(p).all() for p in probes_of(model, x).values())  # nan_to_num hid it

    finding = locate_nonfinite(model, x, autocast_dtype=None, device=CPU)

    assert finding is not None and finding.module.startswith("edge_stream.mamba.0.")
    assert finding.cause is Cause.OVERFLOW and finding.kind is NonfiniteKind.FP32


def fp16_overflow_model() -> tuple[nn.Module, torch.Tensor]:
    """v3-small whose TCN mixing conv reaches 2e5 in fp32: finite there, beyond fp16's 65504."""
    model = build_detector("v3-small", guards=True).eval()
    x = window()
    peak = {}
    handle = model.tcn.mix.register_forward_hook(lambda module, args, out: peak.update(fp32=out.abs().max()))
    with torch.no_grad():
        model(x)
        handle.remove()
        model.tcn.mix.weight.mul_(2e5 / peak["fp32"])
    # The weights themselves stay within fp16, so autocast's cast of them is not where it overflows.
    assert model.tcn.mix.weight.abs().max() < FP16_MAX
    return model, x


def test_an_fp16_only_overflow_is_named_with_fp32_finite_there():
    model, x = fp16_overflow_model()

    finding = locate_nonfinite(model, x, autocast_dtype=torch.float16, device=CPU)

    assert finding is not None
    assert (finding.module, finding.module_class, finding.op) == ("tcn.mix", "Conv1d", "aten.convolution.default")
    assert (finding.dtype, finding.autocast) == ("fp16", "fp16")
    assert finding.cause is Cause.OVERFLOW and finding.fp32_finite is True
    assert finding.kind is NonfiniteKind.PRECISION
    assert FP16_MAX < finding.reference_abs_max < 2.1e5
    assert finding.inf == finding.output.nonfinite > 0 and finding.nan == 0
    assert [i.name for i in finding.inputs] == ["input", "weight", "bias"]
    assert all(i.dtype == "fp16" for i in finding.inputs)
    text = finding.describe()
    assert text.startswith("first non-finite value at tcn.mix (Conv1d), aten.convolution.default, fp16: overflow (")
    assert "> 65504" in text and "fp32 is finite there" in text
    # bf16 has fp32's range: the same weights stay finite under it.
    assert locate_nonfinite(model, x, autocast_dtype=torch.bfloat16, device=CPU) is None


def test_a_clean_model_has_no_finding():
    assert locate_nonfinite(build_detector("v3-small", guards=False), window(2), autocast_dtype=None,
                            device=CPU) is None


def test_a_nonfinite_input_is_named_as_the_input():
    x = window(2)
    x[1, 3, 100:104] = float("nan")
    x[0, 0, 7] = float("inf")

    finding = locate_nonfinite(build_detector("v3-small"), x, autocast_dtype=None, device=CPU)

    assert finding is not None and finding.where == "input" and finding.module is None and finding.op is None
    assert (finding.nan, finding.inf, finding.output.nonfinite) == (4, 1, 5)
    assert "window 1 channel P3 samples 100..103" in finding.describe()
    assert json.loads(json.dumps(finding.to_dict()))["where"] == "input"


class Divide(nn.Module):
    def forward(self, x):
        return x[:, :2] / x[:, 2:]


class Reciprocal(nn.Module):
    def forward(self, x):
        return torch.reciprocal(x)


class Logarithm(nn.Module):
    def forward(self, x):
        return torch.log(x)


class Exponential(nn.Module):
    def forward(self, x):
        return torch.exp(x)


class Product(nn.Module):
    """x @ [[1e20], [-1e20]]: in fp32 the two terms overflow to +inf and -inf, while the sum is 0 (what the
    matmul returns depends on how the CPU's kernel accumulates: ``cancelling_overflow_cause``)."""

    def forward(self, x):
        return x @ torch.tensor([[1e20], [-1e20]])


def cancelling_overflow_cause() -> Cause:
    """What this CPU's matmul makes of ``Product``: partial sums kept apart meet as +inf - inf, NaN (seen on an
    AMD EPYC); one fused multiply-add chain keeps its first +inf, because the exact -1e40 it adds next is
    finite (seen on an Intel Xeon), an inf whose fp64 result is 0. Both are findings, with different causes."""
    return Cause.INF_MINUS_INF if torch.isnan(Product()(torch.tensor([[1e20, 1e20]]))).any() else Cause.OVERFLOW


class Masked(nn.Module):
    """A -inf mask before a softmax makes inf on purpose: not a finding."""

    def forward(self, x):
        return torch.softmax(x.masked_fill(x < 0, float("-inf")), dim=-1)


class Wrapped(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


@pytest.mark.parametrize("inner, x, op, cause", [
    (Divide(), [[0.0, 1.0, 0.0, 0.0]], "aten.div.Tensor", Cause.ZERO_DIVIDED_BY_ZERO),
    (Divide(), [[2.0, 1.0, 0.0, 1.0]], "aten.div.Tensor", Cause.DIVISION_BY_ZERO),
    (Reciprocal(), [[0.0, 1.0]], "aten.reciprocal.default", Cause.DIVISION_BY_ZERO),
    (Logarithm(), [[-1.0, 1.0]], "aten.log.default", Cause.INVALID_DOMAIN),
    (Exponential(), [[1000.0, 1.0]], "aten.exp.default", Cause.OVERFLOW),  # beyond fp64 as well
    (Exponential(), [[100.0, 1.0]], "aten.exp.default", Cause.OVERFLOW),  # 2.7e43: beyond fp32 only
    (Product(), [[1e20, 1e20]], "aten.mm.default", cancelling_overflow_cause()),
])
def test_each_cause_within_one_operation(inner, x, op, cause):
    finding = locate_nonfinite(Wrapped(inner), torch.tensor(x), autocast_dtype=None, device=CPU)
    assert finding is not None
    assert (finding.module, finding.module_class, finding.op, finding.cause) == ("inner", type(inner).__name__,
                                                                                  op, cause)
    assert f": {cause} (" in finding.describe()


def test_an_asked_for_infinity_is_no_finding_and_the_root_is_named_as_such():
    assert locate_nonfinite(Masked(), torch.tensor([[1.0, -1.0, 2.0]]), autocast_dtype=None, device=CPU) is None
    finding = locate_nonfinite(Exponential(), torch.tensor([[100.0]]), autocast_dtype=None, device=CPU)
    assert finding.where == "Exponential (root)"


def test_a_fully_masked_softmax_row_is_named_as_inf_minus_inf():
    finding = locate_nonfinite(Wrapped(Masked()), torch.tensor([[1.0, 2.0], [-1.0, -2.0]]), autocast_dtype=None,
                               device=CPU)
    assert finding is not None and finding.op == "aten._softmax.default"
    assert finding.cause is Cause.INF_MINUS_INF and finding.inputs[0].range.nonfinite == 2


def test_a_parameter_already_nonfinite_is_named_before_any_operation():
    model = build_detector("v3-small")
    with torch.no_grad():
        model.edge_stream.project.weight[0, 3] = float("nan")
    finding = locate_nonfinite(model, window(), autocast_dtype=None, device=CPU)
    assert (finding.parameter, finding.module, finding.op, finding.nan) == ("edge_stream.project.weight",
                                                                            "edge_stream.project", None, 1)
    assert finding.describe().startswith("the parameter edge_stream.project.weight is non-finite before the "
                                         "forward of edge_stream.project (Linear)")
