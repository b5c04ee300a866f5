"""Where a training step first went non-finite: the module, the operation, and why.

A skipped step names a probe or a gradient; behind a probe lie hundreds of operations, and the guards'
``nan_to_num`` can hide a NaN before any probe sees it. :func:`locate_nonfinite` replays the step's
forward (no gradient, dropout off, the training's autocast) under a ``TorchDispatchMode``, which sees
every aten operation with the dtypes autocast chose, and stops at the first one whose output holds a
NaN or inf while all its floating inputs are finite: the origin. Only summaries of it are kept
(``ValueRange`` of its inputs and output). The operation is computed once more on the same inputs in
float64 (else float32) to tell overflow from 0/0, a division by zero or a value outside the function's
domain; under autocast a second replay in fp32 says whether fp32 stays finite there (reduced precision)
or not (a model defect), the distinction ``brr-diff`` makes for engines (``NonfiniteKind``).

Modules are followed by global forward pre/post hooks that keep a stack of (path, call) frames, rather
than ``torch.utils.module_tracker.ModuleTracker``: that one keeps the set of modules running, neither
their nesting nor which call of a module it is, and the fp32 replay must find the same call again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from brr.diff.results import Cause, ValueRange, json_floats
from brr.diff.verdict import NonfiniteKind
from brr.model.detector import NonFiniteInputError, check_finite_input

DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64"}
# Operations whose output is uninitialised memory: garbage NaNs there are no finding.
UNINITIALISED = {"aten::empty", "aten::empty_like", "aten::new_empty", "aten::empty_strided",
                 "aten::new_empty_strided", "aten::empty_permuted"}
# Operations that overwrite their first argument without reading it.
OVERWRITES_SELF = {"aten::copy_", "aten::fill_", "aten::zero_"}
QUOTIENTS = {"div", "divide", "true_divide", "floor_divide"}
RECIPROCALS = {"reciprocal", "rsqrt"}  # 1/0 gives inf
# Functions defined on part of the line: NaN (or log's -inf at 0) there is a value outside the domain.
PARTIAL_FUNCTIONS = {"log", "log2", "log10", "log1p", "sqrt", "rsqrt", "pow", "acos", "asin", "atanh", "acosh",
                     "lgamma", "digamma", "polygamma", "xlogy", "special_xlog1py"}
SHOWN_INPUTS = 6


class _Stop(Exception):
    """Ends a replay once it has what it came for; the forward's remaining work is not needed."""


@dataclass(frozen=True)
class OperandSummary:
    """One floating input of the operation: its argument name in the op's schema, dtype, shape and values."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    range: ValueRange

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "range": self.range.to_dict()}


@dataclass(frozen=True)
class NonfiniteFinding:
    """The first operation of a forward whose output went non-finite from finite inputs; or the input, or a
    parameter, that was non-finite before the forward began."""

    module: str | None  # ``model.named_modules()`` path, "" for the model itself; None for the input
    module_class: str | None
    call: int  # which call of that module (0: its first in the forward)
    op: str | None  # "aten.mm.default", "brr.selective_scan.default"; None for the input or a parameter
    dtype: str  # of the non-finite output: "fp16", "bf16", "fp32", "fp64"
    autocast: str | None  # the replay's autocast dtype; None for fp32
    output: ValueRange  # its finite values, and how many are not
    nan: int
    inf: int
    inputs: tuple[OperandSummary, ...]
    cause: Cause | None  # None for the input or a parameter
    explanation: str  # the cause in numbers; the input's locations, or the parameter's name
    # fp32 stays finite through the same call of the module: reduced precision caused it. False for a finding
    # of an fp32 replay; None for the input, or where the fp32 replay never made that call.
    fp32_finite: bool | None
    fp32_op: str | None = None  # where fp32 first went non-finite in that call, when it did
    reference_dtype: str | None = None  # the wider precision the op was computed again in, if it could be
    reference_abs_max: float | None = None  # |result| there, at the places that went non-finite
    parameter: str | None = None  # ``model.named_parameters()`` name of a parameter already non-finite

    @property
    def where(self) -> str:
        if self.module is None:
            return "input"
        if self.module == "":
            return f"{self.module_class} (root)"
        call = f", call {self.call + 1}" if self.call else ""
        return f"{self.module} ({self.module_class}{call})"

    @property
    def kind(self) -> NonfiniteKind | None:
        if self.fp32_finite is None:
            return None
        return NonfiniteKind.PRECISION if self.fp32_finite else NonfiniteKind.FP32

    def to_dict(self) -> dict:
        return json_floats({
            "where": self.where, "module": self.module, "module_class": self.module_class, "call": self.call,
            "op": self.op, "dtype": self.dtype, "autocast": self.autocast, "cause": self.cause,
            "explanation": self.explanation, "fp32_finite": self.fp32_finite, "fp32_op": self.fp32_op,
            "kind": self.kind, "nan": self.nan, "inf": self.inf, "output": self.output.to_dict(),
            "inputs": [i.to_dict() for i in self.inputs], "reference_dtype": self.reference_dtype,
            "reference_abs_max": self.reference_abs_max, "parameter": self.parameter,
        })

    def describe(self) -> str:
        """One paragraph for a person: where, which operation, why, and the numbers behind it."""
        if self.module is None:
            return self.explanation
        count = f"{self.output.nonfinite:,} of {self.output.elements:,} values non-finite"
        split = ", ".join(f"{n:,} {name}" for n, name in ((self.nan, "NaN"), (self.inf, "inf")) if n)
        if self.parameter is not None:
            return f"{self.explanation} of {self.where}, {self.dtype}: {count} ({split})."
        text = (f"first non-finite value at {self.where}, {self.op}, {self.dtype}: {self.cause} "
                f"({self.explanation}; {self._fp32_clause()}); {count} ({split})")
        if self.inputs:
            shown = ", ".join(_operand_text(i) for i in self.inputs[:SHOWN_INPUTS])
            more = f" and {len(self.inputs) - SHOWN_INPUTS} more" if len(self.inputs) > SHOWN_INPUTS else ""
            text += f"; inputs: {shown}{more}"
        return text + "."

    def _fp32_clause(self) -> str:
        if self.autocast is None:
            return "in fp32: a model defect, not precision"
        replay = f"replayed under {self.autocast} autocast"
        if self.fp32_finite:
            return f"fp32 is finite there; {replay}"
        if self.fp32_finite is None:
            return f"the fp32 replay never made that call; {replay}"
        at = f" (first at {self.fp32_op})" if self.fp32_op else ""
        return f"fp32 itself goes non-finite in that call{at}: a model defect, not precision; {replay}"


def locate_nonfinite(model: torch.nn.Module, signals: torch.Tensor, *, autocast_dtype: torch.dtype | None,
                     device: torch.device) -> NonfiniteFinding | None:
    """The first non-finite value of ``model(signals)`` under ``autocast_dtype`` (None: fp32), or None when
    the forward stays finite (then the loss or the backward went non-finite). The model's train/eval
    modes are restored afterwards; its parameters are not touched."""
    signals = signals.to(device)
    if not bool(torch.isfinite(signals).all()):
        return _input_finding(signals)
    damaged = _parameter_finding(model)
    if damaged is not None:
        return damaged
    with _evaluating(model):
        finding = _first_origin(model, signals, autocast_dtype, device)
        if finding is None or autocast_dtype is None:
            return finding
        fp32_finite, fp32_op = _fp32_finite_in(model, signals, device, finding.module, finding.call)
    return dataclasses.replace(finding, fp32_finite=fp32_finite, fp32_op=fp32_op)


@contextlib.contextmanager
def _evaluating(model: torch.nn.Module) -> Iterator[None]:
    """Dropout off for the replay, each module's own mode back afterwards."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


class _ModuleStack:
    """The modules being run, innermost last, as (path, class, call) frames."""

    def __init__(self, model: torch.nn.Module):
        self.paths: dict[torch.nn.Module, str] = {}
        for path, module in model.named_modules(remove_duplicate=False):
            self.paths.setdefault(module, path)
        self.calls: Counter[str] = Counter()
        self.frames: list[tuple[str, str, int]] = []
        # Called with each frame as its call ends: a replay that watches one call stops there.
        self.on_exit: Callable[[tuple[str, str, int]], None] | None = None

    def _enter(self, module: torch.nn.Module, args: Any) -> None:
        path = self.paths.get(module, f"<{type(module).__name__} outside the model>")
        self.frames.append((path, type(module).__name__, self.calls[path]))
        self.calls[path] += 1

    def _exit(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        frame = self.frames.pop()
        if self.on_exit is not None:
            self.on_exit(frame)

    @property
    def current(self) -> tuple[str, str, int]:
        return self.frames[-1]

    @contextlib.contextmanager
    def tracking(self) -> Iterator[_ModuleStack]:
        pre, post = register_module_forward_pre_hook(self._enter), register_module_forward_hook(self._exit)
        try:
            yield self
        finally:
            pre.remove()
            post.remove()


class _Interceptor(TorchDispatchMode):
    """Runs every operation as the forward would have and hands its output to ``inspect``."""

    def __init__(self, device: torch.device, autocast_dtype: torch.dtype | None):
        super().__init__()
        self.device, self.autocast_dtype = device, autocast_dtype

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = self._run(func, args, kwargs)
        self.inspect(func, args, kwargs, out)
        return out

    def inspect(self, func, args: tuple, kwargs: dict, out: Any) -> None:
        raise NotImplementedError

    def _run(self, func, args: tuple, kwargs: dict) -> Any:
        # Autocast is off while a dispatch mode handles an op. Aten ops arrive with the dtypes autocast
        # chose; a custom op (brr::eigh, brr::selective_scan) is one autocast does not wrap, and its kernel's
        # own calls are autocast in training (linalg_eigh runs in fp32), so it runs under autocast again.
        if self.autocast_dtype is None or func.namespace == "aten":
            return func(*args, **kwargs)
        key = getattr(torch._C.DispatchKey, "Autocast" + self.device.type.upper())
        excluded = torch._C._dispatch_tls_is_dispatch_key_excluded(key)
        torch._C._dispatch_tls_set_dispatch_key_excluded(key, False)
        try:
            with torch.autocast(self.device.type, dtype=self.autocast_dtype):
                return func(*args, **kwargs)
        finally:
            torch._C._dispatch_tls_set_dispatch_key_excluded(key, excluded)


class _FirstOrigin(_Interceptor):
    def __init__(self, modules: _ModuleStack, device: torch.device, autocast_dtype: torch.dtype | None):
        super().__init__(device, autocast_dtype)
        self.modules = modules
        self.finding: NonfiniteFinding | None = None

    def inspect(self, func, args, kwargs, out) -> None:
        index = _first_nonfinite_output(func, out)
        if index is None or not _is_origin(func, args, kwargs, _tensor_outputs(out)[index]):
            return
        self.finding = _summarise(func, args, kwargs, out, index, self.modules.current, self.autocast_dtype)
        raise _Stop


class _CallWatch(_Interceptor):
    """fp32 replay: does any output go non-finite before one module call ends?"""

    def __init__(self, modules: _ModuleStack, device: torch.device, module: str, call: int):
        super().__init__(device, None)
        self.modules, self.target = modules, (module, call)
        self.nonfinite_op: str | None = None
        self.completed = False
        modules.on_exit = self._on_exit

    def _inside(self) -> bool:
        return any((path, call) == self.target for path, _, call in self.modules.frames)

    def inspect(self, func, args, kwargs, out) -> None:
        if (self._inside() and _first_nonfinite_output(func, out) is not None
                and not _asked_for_nonfinite(func, args, kwargs)):
            self.nonfinite_op = str(func)
            raise _Stop

    def _on_exit(self, frame: tuple[str, str, int]) -> None:
        if (frame[0], frame[2]) == self.target:
            self.completed = True
            raise _Stop


def _first_origin(model, signals, autocast_dtype, device) -> NonfiniteFinding | None:
    modules = _ModuleStack(model)
    mode = _FirstOrigin(modules, device, autocast_dtype)
    with torch.no_grad(), _autocast(device, autocast_dtype), modules.tracking(), mode:
        try:
            model(signals)
        except _Stop:
            pass
    return mode.finding


def _fp32_finite_in(model, signals, device, module: str, call: int) -> tuple[bool | None, str | None]:
    """Replay in fp32 up to the end of that module call: (finite throughout, where it first was not)."""
    modules = _ModuleStack(model)
    mode = _CallWatch(modules, device, module, call)
    with torch.no_grad(), modules.tracking(), mode:
        try:
            model(signals)
        except _Stop:
            pass
    if mode.nonfinite_op is not None:
        return False, mode.nonfinite_op
    return (True, None) if mode.completed else (None, None)


def _floating(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def _first_nonfinite_output(func, out: Any) -> int | None:
    """Index (among the op's tensor outputs) of the first floating one holding a NaN or inf."""
    if func._schema.name in UNINITIALISED:
        return None
    for index, tensor in enumerate(_tensor_outputs(out)):
        if _floating(tensor) and not _all_finite(tensor):
            return index
    return None


def _tensor_outputs(out: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]


def _all_finite(tensor: torch.Tensor) -> bool:
    # A NaN or inf makes the sum non-finite, and one reduction is much cheaper than an elementwise mask;
    # a sum that overflows from finite values is told apart by the mask.
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def _named_inputs(func, args: tuple, kwargs: dict) -> list[tuple[str, torch.Tensor]]:
    """The tensors the op reads, named after its schema's arguments ("tensors[2]" inside a list)."""
    schema = func._schema
    arguments = {a.name: a for a in schema.arguments}
    names = [a.name for a in schema.arguments]
    values = [(names[i] if i < len(names) else f"arg{i}", v) for i, v in enumerate(args)] + list(kwargs.items())
    named = []
    for position, (name, value) in enumerate(values):
        argument = arguments.get(name)
        if (argument is not None and argument.is_out) or (position == 0 and schema.name in OVERWRITES_SELF):
            continue
        leaves = tree_flatten(value)[0]
        tensors = [t for t in leaves if isinstance(t, torch.Tensor)]
        if isinstance(value, torch.Tensor):
            named.append((name, value))
        else:
            named += [(f"{name}[{i}]", t) for i, t in enumerate(tensors)]
    return named


def _asked_for_nonfinite(func, args: tuple, kwargs: dict) -> bool:
    """An op given an inf or NaN number (``full(-inf)``, ``masked_fill(mask, -inf)``, ``clamp(max=inf)``)
    makes non-finite values on purpose: a mask before a softmax is no fault, and what it feeds has a
    non-finite input, so it is no origin either."""
    numbers = [v for v in tree_flatten((args, kwargs))[0] if isinstance(v, float)]
    return any(not math.isfinite(v) for v in numbers)


def _is_origin(func, args: tuple, kwargs: dict, result: torch.Tensor) -> bool:
    """Non-finite from finite inputs; or NaN from inputs without NaN, where the only infinities that can
    reach an op before the first origin are asked-for ones (a fully masked softmax row: -inf - -inf)."""
    if _asked_for_nonfinite(func, args, kwargs):
        return False
    inputs = [t for _, t in _named_inputs(func, args, kwargs) if _floating(t)]
    if all(_all_finite(t) for t in inputs):
        return True
    return bool(torch.isnan(result).any()) and not any(bool(torch.isnan(t).any()) for t in inputs)


def value_range(tensor: torch.Tensor) -> ValueRange:
    """``ValueRange`` of a tensor, computed where it lies (no float64 copy on the host)."""
    values = tensor.detach().reshape(-1)
    finite = values[torch.isfinite(values)]
    elements, count = values.numel(), finite.numel()
    if count == 0:
        return ValueRange(None, None, None, None, 0, elements, elements)
    magnitudes = finite.abs()
    nonzero = magnitudes[magnitudes > 0]
    return ValueRange(min=float(finite.min()), max=float(finite.max()), abs_max=float(magnitudes.max()),
                      abs_min_nonzero=float(nonzero.min()) if nonzero.numel() else None,
                      zeros=count - nonzero.numel(), nonfinite=elements - count, elements=elements)


def _widened(value: Any, wide: torch.dtype) -> Any:
    """Floating tensors and floating dtype arguments in ``wide``; everything else as it is."""
    def widen(leaf: Any) -> Any:
        if _floating(leaf):
            return leaf.to(wide)
        if isinstance(leaf, torch.dtype) and leaf.is_floating_point:
            return wide
        return leaf

    return tree_map(widen, value)


def _recompute(func, args: tuple, kwargs: dict, index: int, out: torch.Tensor
               ) -> tuple[torch.Tensor | None, torch.dtype | None]:
    """The op's ``index``-th output computed again in float64, else float32 when wider than ``out``."""
    for wide in (torch.float64, torch.float32):
        if wide.itemsize <= out.dtype.itemsize:
            continue
        try:
            with torch.autocast(out.device.type, enabled=False):
                result = func(*_widened(args, wide), **_widened(kwargs, wide))
        # A kernel that has no wider dtype (or no such overload) says so by raising; the op then keeps
        # only what its own output and inputs tell.
        except (RuntimeError, NotImplementedError, TypeError):
            continue
        tensors = _tensor_outputs(result)
        if index < len(tensors) and tensors[index].shape == out.shape:
            return tensors[index], wide
    return None, None


def _summarise(func, args: tuple, kwargs: dict, out: Any, index: int, frame: tuple[str, str, int],
               autocast_dtype: torch.dtype | None) -> NonfiniteFinding:
    """The finding for the op at hand, in summaries only: nothing of its tensors outlives this call."""
    result = _tensor_outputs(out)[index]
    inputs = tuple(OperandSummary(name, _dtype_name(t.dtype), tuple(t.shape), value_range(t))
                   for name, t in _named_inputs(func, args, kwargs) if _floating(t))
    nan, inf = int(torch.isnan(result).sum()), int(torch.isinf(result).sum())
    reference, wide = _recompute(func, args, kwargs, index, result)
    at_nonfinite = None if reference is None else reference[~torch.isfinite(result)].double()
    cause, explanation = _explain(func, result.dtype, nan, inf, at_nonfinite, wide, inputs)
    finite_reference = None if at_nonfinite is None else at_nonfinite[torch.isfinite(at_nonfinite)]
    path, module_class, call = frame
    return NonfiniteFinding(
        module=path, module_class=module_class, call=call, op=str(func), dtype=_dtype_name(result.dtype),
        autocast=None if autocast_dtype is None else _dtype_name(autocast_dtype), output=value_range(result),
        nan=nan, inf=inf, inputs=inputs, cause=cause, explanation=explanation,
        fp32_finite=False if autocast_dtype is None else None,
        reference_dtype=None if wide is None else _dtype_name(wide),
        reference_abs_max=(float(finite_reference.abs().max()) if finite_reference is not None
                           and finite_reference.numel() else None))


def _explain(func, dtype: torch.dtype, nan: int, inf: int, reference: torch.Tensor | None,
             wide: torch.dtype | None, inputs: tuple[OperandSummary, ...]) -> tuple[Cause, str]:
    """Why finite inputs gave NaN or inf: ``reference`` is the op's result in ``wide`` at those places."""
    name, largest = _dtype_name(dtype), torch.finfo(dtype).max
    if reference is not None and bool(torch.isfinite(reference).all()):
        peak, wide_name = float(reference.abs().max()), _dtype_name(wide)
        if peak > largest:
            return Cause.OVERFLOW, f"|result| up to {_number(peak)} > {_number(largest, 5)}, {name}'s largest finite"
        if nan:
            return Cause.INF_MINUS_INF, (f"intermediates overflow {name}'s {_number(largest, 5)} with both signs and "
                                         f"cancel to NaN; in {wide_name} |result| is at most {_number(peak)}")
        return Cause.OVERFLOW, (f"an intermediate exceeds {name}'s {_number(largest, 5)}, though in {wide_name} "
                                f"|result| is at most {_number(peak)}")
    # The exact result is not finite either (or could not be computed): the function decides.
    base = func._schema.name.split("::")[-1].rstrip("_")
    first = inputs[0].range if inputs else None
    infinities = sum(i.range.nonfinite for i in inputs)
    if infinities:
        if base == "mul":
            return Cause.UNKNOWN, f"0 x inf: its inputs hold {infinities:,} asked-for infinities (a mask upstream)"
        return Cause.INF_MINUS_INF, (f"its inputs hold {infinities:,} asked-for infinities (a mask upstream) "
                                     "that meet with opposite signs")
    if base in QUOTIENTS:
        if nan:
            also = f", and a non-zero value divided by 0 at {_places(inf)}" if inf else ""
            return Cause.ZERO_DIVIDED_BY_ZERO, f"numerator and denominator both 0 at {_places(nan)}{also}"
        return Cause.DIVISION_BY_ZERO, f"a non-zero value divided by 0 at {_places(inf)}"
    if base in RECIPROCALS and not nan:
        return Cause.DIVISION_BY_ZERO, f"{base} of 0 (1/0) at {_places(inf)}"
    if base in PARTIAL_FUNCTIONS and (nan or base.startswith("log")) and first is not None:
        of = (f"values down to {_number(first.min)}" if first.min is not None and first.min < 0
              else "0" if first.zeros else f"values in [{_number(first.min)}, {_number(first.max)}]")
        return Cause.INVALID_DOMAIN, f"{base} of {of}, at {_places(nan + inf)}"
    if not nan:
        beyond = (f"beyond {_dtype_name(wide)}'s range too" if wide is not None
                  else "the op could not be computed again in a wider precision")
        return Cause.OVERFLOW, f"+-inf from finite inputs, {beyond}"
    again = (f"{_dtype_name(wide)} gives NaN there too" if wide is not None
             else "the op could not be computed again in a wider precision")
    return Cause.UNKNOWN, f"NaN from finite inputs; {again}"


def _dtype_name(dtype: torch.dtype | None) -> str:
    return DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def _parameter_finding(model: torch.nn.Module) -> NonfiniteFinding | None:
    """A parameter that is already NaN or inf: every op reading it inherits that, so none is an origin.
    Buffers are left out: a mask buffer may hold -inf by design."""
    owners = dict(model.named_modules())
    for name, parameter in model.named_parameters():
        if not _floating(parameter) or _all_finite(parameter):
            continue
        path = name.rpartition(".")[0]
        values = parameter.detach()
        return NonfiniteFinding(
            module=path, module_class=type(owners[path]).__name__, call=0, op=None, dtype=_dtype_name(values.dtype),
            autocast=None, output=value_range(values), nan=int(torch.isnan(values).sum()),
            inf=int(torch.isinf(values).sum()), inputs=(), cause=None,
            explanation=f"the parameter {name} is non-finite before the forward", fp32_finite=None, parameter=name)
    return None


def _input_finding(signals: torch.Tensor) -> NonfiniteFinding:
    try:
        check_finite_input(signals)
        explanation = "the input holds non-finite values"
    except NonFiniteInputError as error:
        explanation = str(error)
    return NonfiniteFinding(
        module=None, module_class=None, call=0, op=None, dtype=_dtype_name(signals.dtype),
        autocast=None, output=value_range(signals), nan=int(torch.isnan(signals).sum()),
        inf=int(torch.isinf(signals).sum()), inputs=(), cause=None, explanation=explanation, fp32_finite=None)


def _number(value: float | None, digits: int = 3) -> str:
    """Compact: 3.1e5, 65504 (with digits=5), 0 rather than -0."""
    if value is None:
        return "n/a"
    text = f"{value + 0.0:.{digits}g}"
    return text.replace("e+0", "e").replace("e+", "e").replace("e-0", "e-")


def _places(count: int) -> str:
    return f"{count:,} place" + ("" if count == 1 else "s")


def _operand_text(operand: OperandSummary) -> str:
    r = operand.range
    counts = [f"{r.zeros:,} zero" + ("" if r.zeros == 1 else "s")] if r.zeros else []
    counts += [f"{r.nonfinite:,} non-finite"] if r.nonfinite else []
    counted = f" ({', '.join(counts)})" if counts else ""
    return f"{operand.name} {operand.dtype} in [{_number(r.min)}, {_number(r.max)}]{counted}"
