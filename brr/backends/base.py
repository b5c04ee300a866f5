"""What every backend of an exported engine offers: ``Backend``, and what its build returns.

A backend builds an engine from the exported fp32 ONNX (``build``), runs an artifact's engine
(``runner``: a Polygraphy runner, input ``eeg`` (B, 19, N), output ``logits`` and with ``probes``
every probe), and, where its engine computes the ONNX graph tensor for tensor, runs edited copies of
that graph exactly as the engine under test is run (``edited_graphs``), which is what the diff's node
level needs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx
from polygraphy.backend.base import BaseRunner

from brr.errors import UsageError
from brr.model import OUTPUT_NAME, DetectorConfig
from brr.model.contract import GraphPart
from brr.onnx.statistics import ObservedRanges


class EngineBuildError(UsageError):
    """An engine that cannot be built as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Int8Scope:
    """What an int8 engine quantizes: the layers of ``stages`` (every stage when empty) outside its fp32 nodes;
    the layers it leaves unquantized run in ``unquantized_precision``."""

    stages: tuple[str, ...] = ()
    unquantized_precision: str = "fp32"

    def quantizes(self, stage: str | None) -> bool:
        return not self.stages or stage in self.stages


@dataclass(frozen=True)
class Int8Calibration:
    """What an int8 build reads: float32 (B, 19, N) windows to calibrate on, and the plan's scope."""

    windows: list[np.ndarray]
    scope: Int8Scope = Int8Scope()


def plain_int8_windows(backend: str, calibration: Int8Calibration | None) -> list[np.ndarray] | None:
    """The windows of a backend that quantizes every layer outside the fp32 nodes and runs the rest in fp32;
    refuses a plan that asks for another scope."""
    if calibration is None:
        return None
    if calibration.scope != Int8Scope():
        raise EngineBuildError(f"{backend} int8 engines quantize every layer outside the plan's fp32 nodes and run "
                               "the rest in fp32: the plan's int8_stages and unquantized_precision are for "
                               "OpenVINO (brr-export --backend openvino)")
    return list(calibration.windows)


@dataclass(frozen=True)
class BuiltEngine:
    """What a build wrote into the engine directory, as the manifest records it."""

    model_file: str
    pinned_nodes: list[str]
    settings: dict
    # Why ``model_file`` is not there (``Backend.prepare``: the build's dependency was missing), else None.
    unbuilt: str | None = None
    companion_files: tuple[str, ...] = ()  # what ``model_file`` reads beside it (an OpenVINO IR's weights)


class TensorStatistics(Protocol):
    """Engine-side tensor statistics read by the backend itself (TensorRT debug tensors), for backends
    whose engine is not the ONNX graph node for node.

    ``materialise=False`` reads the engine as built: a tensor it computes without storing (fused) is
    absent from the result. ``materialise=True`` makes every named tensor observable, even where that
    changes what the backend fuses. ``ObservedRanges.method`` says which way was taken.
    """

    def __call__(self, names: list[str], feed: dict, materialise: bool = False) -> ObservedRanges: ...


@dataclass(frozen=True)
class EditedGraphs:
    """How to run edited copies (outputs marked, statistics inserted) of the ONNX graph an engine computes,
    on its backend with the settings of the engine under test."""

    graph: onnx.ModelProto  # the graph the engine computes; its tensors keep the fp32 graph's names
    runner_for: Callable[[onnx.ModelProto, str], BaseRunner]  # (edited copy of graph, runner name) -> runner
    tensor_statistics: TensorStatistics | None = None  # set: the engine's own tensors read, not an instrumented copy's
    note: str | None = None  # what the report must say about these runs


class Backend:
    """One kind of exported engine; ``name`` is how manifests and ``--backend`` call it."""

    name: str
    model_file: str  # the file of the engine in its artifact folder
    applies_precision_plan = True  # the plan's fp32 nodes are pinned in the engine
    batch_profile = False  # the engine is built for a batch range (recorded in the manifest)
    # Why the diff cannot read this backend's intermediate tensors, when it cannot.
    node_level_unavailable: str | None = None
    # Without its dependency, ``prepare`` writes all a build needs and ``commands`` say how to build elsewhere.
    builds_offline = False

    def require(self) -> None:
        """Raise ``DependencyUnavailable`` (one line saying what to install) when it cannot run here."""

    def build(self, onnx_path: Path, ops: str, directory: Path, precision: str, fp32_nodes: list[str],
              batch: tuple[int, int, int], config: DetectorConfig,
              calibration: Int8Calibration | None) -> BuiltEngine:
        """Build ``precision`` from the fp32 export ``onnx_path`` (of ``ops`` mode) into ``directory``;
        ``calibration`` is read for int8 only."""
        raise NotImplementedError

    def prepare(self, onnx_path: Path, ops: str, directory: Path, precision: str, fp32_nodes: list[str],
                batch: tuple[int, int, int], config: DetectorConfig, calibration: Int8Calibration | None,
                missing: str) -> BuiltEngine:
        """What ``build`` writes but the engine, where its dependency is ``missing`` (``builds_offline``): the
        returned ``BuiltEngine.unbuilt`` says so."""
        raise NotImplementedError(f"{self.name} builds nothing without its dependency")

    def check_split(self, precision: str) -> None:
        """Raise ``EngineBuildError`` saying why, where this backend builds no ``precision`` engine split into
        front and rest (checked before anything is built)."""
        raise EngineBuildError(f"{self.name} builds no detector split into front and rest (brr-export --split); "
                               "ONNX Runtime and OpenVINO do")

    def build_part(self, onnx_path: Path, part: GraphPart, ops: str, directory: Path, precision: str,
                   fp32_nodes: list[str], calibration: Int8Calibration | None = None) -> BuiltEngine:
        """Build ``precision`` of one part of the detector (``brr.model.front``) from its fp32 graph ``onnx_path``
        into ``directory``, beside the whole detector's engine, under a file name of its own; ``calibration``
        is read for int8 only."""
        self.check_split(precision)
        raise NotImplementedError(f"{self.name} splits {precision} engines but builds no part")

    def commands(self, settings: dict, export_command: str) -> list[str]:
        """Lines to print after an export: commands that build or run the engine outside brr, each after a
        ``#`` line saying what it does; ``export_command`` is the brr-export line of this export."""
        return []

    def runner(self, model: Path, manifest: Mapping[str, Any], probes: bool = False, name: str | None = None,
               device: str = "cpu", threads: int | None = None, lean: bool = False) -> BaseRunner:
        """The runner of an artifact's (checked) ``model`` file. ``lean``: memory given back after each
        run, for the diff's instrumented runs."""
        raise NotImplementedError

    def part_runner(self, model: Path, part: GraphPart, manifest: Mapping[str, Any], probes: bool = False,
                    name: str | None = None, device: str = "cpu", threads: int | None = None) -> BaseRunner:
        """The runner of one part of a detector exported as two graphs (``brr.model.front``), the (checked)
        ``model`` file of an artifact: input ``part.input_name``, output ``part.output_name``, and with
        ``probes`` every probe of the part."""
        raise EngineBuildError(f"{self.name} serves no detector split into front and rest; "
                               "ONNX Runtime and OpenVINO do")

    def edited_graphs(self, directory: Path, manifest: Mapping[str, Any], fp32_model: onnx.ModelProto
                      ) -> EditedGraphs:
        """Edited copies of the artifact's graph, run as its engine is; ``fp32_model`` is the fp32 ONNX it
        was built from. Raises ``EngineBuildError`` when they cannot be built as the engine was."""
        raise NotImplementedError(f"{self.name}: {self.node_level_unavailable}")


def selected_outputs(probes: bool) -> list[str] | None:
    """The outputs a runner returns: every one (None) with probes, else the logits alone."""
    return None if probes else [OUTPUT_NAME]
