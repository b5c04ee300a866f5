"""INT8 OpenVINO engines: NNCF's post-training quantization of the IR, given back fp32 where verification asks.

Only layers made from ONNX nodes outside the precision plan's fp32 nodes are quantized (with ``int8-tcn``, the
TCN encoder's convolutions, run by VNNI/AMX int8 dot products), weights per channel, activation ranges the
minimum and maximum seen over the calibration windows: EEG windows hold mains and artefacts far beyond their
typical range, and ranges cut at a percentile clip them. Then ``nncf.quantize_with_accuracy_control`` returns
to fp32 the quantized layers that cost the logits most, in the order NNCF ranks them, until every validation
window (the calibration windows and the windows export verifies with) has logits within half the int8
tolerance of the fp32 IR's: half, so that windows never seen here keep a margin. The layers that stayed fp32
are recorded in the manifest's settings.

NNCF is an optional dependency (``brr[int8]``), imported only here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import openvino as ov

from brr.backends.base import EngineBuildError
from brr.backends.openvino.signal_stack import kept_signal_stack
from brr.errors import DependencyUnavailable
from brr.model import OUTPUT_NAME
from brr.tolerances import TOLERANCES

log = logging.getLogger(__name__)

QUANTIZABLE_TYPES = frozenset({"Convolution", "GroupConvolution", "MatMul"})
# Half the int8 tolerance: the largest error a validation window may keep, as a fraction of that tolerance.
VALIDATION_MARGIN = 0.5


def import_nncf():
    try:
        import nncf
    except ImportError:
        raise DependencyUnavailable("an int8 OpenVINO engine is quantized by NNCF, which is not installed: "
                                    "pip install 'brr[int8]'") from None
    return nncf


def tolerance_ratio(logits: np.ndarray, reference: np.ndarray, precision: str = "int8") -> float:
    """The largest |logits - reference| as a fraction of the precision's allowed error there
    (atol + rtol * |reference|): at most 1 where the verification's tolerance holds."""
    atol, rtol = TOLERANCES[precision]
    return float(np.max(np.abs(logits - reference) / (atol + rtol * np.abs(reference))))


def quantize_ir(model: ov.Model, quantizable_layers: Sequence[str], calibration: Sequence[np.ndarray],
                validation: Sequence[np.ndarray] | None) -> tuple[ov.Model, dict]:
    """``model`` with int8 on those of ``quantizable_layers`` that keep every ``validation`` window within
    ``VALIDATION_MARGIN`` of the int8 tolerance, or without ``validation`` on all of them (a part of a
    detector whose whole engine chose its layers: the composed parts are verified); returns (the quantized
    model, settings for the manifest)."""
    nncf = import_nncf()
    from nncf.quantization.advanced_parameters import (
        AdvancedAccuracyRestorerParameters,
        AdvancedQuantizationParameters,
    )
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    from brr.backends.openvino.loader import compile_model

    input_name = model.inputs[0].get_any_name()
    wanted = set(quantizable_layers)
    candidates = [op.get_friendly_name() for op in model.get_ordered_ops()
                  if op.get_type_name() in QUANTIZABLE_TYPES and op.get_friendly_name() in wanted]
    if not candidates:
        raise EngineBuildError("no convolution or matmul of the graph is outside the plan's fp32 nodes: nothing to quantize")
    chosen = set(candidates)
    ignored = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_friendly_name() not in chosen]

    ranges = AdvancedQuantizationParameters(activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX)
    calibration_set = nncf.Dataset(list(calibration), lambda window: {input_name: window})
    common = {"preset": nncf.QuantizationPreset.PERFORMANCE, "subset_size": len(calibration),
              "ignored_scope": nncf.IgnoredScope(names=ignored, validate=False)}
    if validation is None:
        with kept_signal_stack():
            quantized = nncf.quantize(model, calibration_set, advanced_parameters=ranges, **common)
        int8 = int8_layers(quantized, candidates)
        return quantized, {"quantizer": f"nncf {nncf.__version__}", "int8_layers": int8,
                           "calibration_windows": len(calibration)}

    fp32 = compile_model(ov.Core(), model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    items = [(window, fp32({input_name: window})[fp32.output(OUTPUT_NAME)]) for window in validation]
    del fp32

    def validate(compiled: ov.CompiledModel, data) -> tuple[float, list[float]]:
        ratios = [tolerance_ratio(compiled({input_name: window})[compiled.output(OUTPUT_NAME)], reference)
                  for window, reference in data]
        # NNCF maximises the metric and divides by the fp32 model's, which must not be 0: 1 - the worst error.
        return 1.0 - max(ratios), [1.0 - r for r in ratios]

    with kept_signal_stack():
        quantized = nncf.quantize_with_accuracy_control(
            model, calibration_set, nncf.Dataset(items, lambda item: {input_name: item[0]}), validate,
            max_drop=VALIDATION_MARGIN, drop_type=nncf.DropType.ABSOLUTE, advanced_quantization_parameters=ranges,
            advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(ranking_subset_size=len(items)),
            **common)
    int8 = int8_layers(quantized, candidates)
    # NNCF returns its last model also where it "could not achieve the required accuracy drop": judged here.
    worst = 1.0 - validate(compile_model(ov.Core(), quantized, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}), items)[0]
    if not int8 or worst > VALIDATION_MARGIN:
        found = (f"each of the {len(candidates)} quantizable layers had to go back to fp32" if not int8 else
                 f"with {len(int8)} of the {len(candidates)} quantizable layers int8, a validation window's logits "
                 f"are {worst:.2f} of the tolerance from fp32")
        raise EngineBuildError(
            f"no int8 engine within {VALIDATION_MARGIN:g} of the int8 tolerance: {found}; calibrate on more windows "
            "like the recordings to be served (brr-export --data, --calibration-windows), or serve fp32/bf16")
    settings = {"quantizer": f"nncf {nncf.__version__}", "int8_layers": int8,
                "fp32_restored_layers": [name for name in candidates if name not in int8],
                "calibration_windows": len(calibration), "validation_windows": len(items),
                "validation_worst_of_tolerance": round(worst, 4)}
    log.info(f"int8 on {len(int8)} of {len(candidates)} quantizable layers; "
             f"fp32 restored: {settings['fp32_restored_layers'] or 'none'}")
    return quantized, settings


def int8_layers(model: ov.Model, candidates: Sequence[str]) -> list[str]:
    """Those of ``candidates`` that read a FakeQuantize'd activation (what the CPU plugin runs in int8)."""
    def fake_quantized(op) -> bool:
        return op.get_input_size() > 0 and op.input_value(0).get_node().get_type_name() == "FakeQuantize"
    wanted = set(candidates)
    return [op.get_friendly_name() for op in model.get_ordered_ops()
            if op.get_friendly_name() in wanted and fake_quantized(op)]
