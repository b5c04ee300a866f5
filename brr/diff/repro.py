"""The repro bundle: what a failing diff leaves behind so that a person can rerun the failure without brr,
and ``brr-diff --check`` can judge it again without the engine or the checkpoint.

It is written while the diff streams (an input's arrays the moment they are compared, nothing kept in
memory): the inputs on which some engine is not accepted, or every input with ``--save-repro``. Layout::

    README.md, repro.sh     the Polygraphy lines that reproduce the finding, and what each shows
    bundle.json             what was compared, how it was judged (tolerances, model parameters), the
                            inputs saved and, per engine, its outputs, what node level found and the lines
    inputs/0000000000.json  one feed per saved input, Polygraphy's format (``--load-inputs inputs``)
    inputs/0000000000.npz   the same feed, name -> array
    results/reference/      the fp32 reference's outputs, one Polygraphy ``RunResults`` per input
    results/<engine>/       each engine's outputs, likewise (``--load-outputs`` reads these folders)
    <engine>/model.onnx     the engine's ONNX graph
    <engine>/subgraph.onnx  the origin node alone: from its inputs to its first non-finite output
    <engine>/boundary_inputs.json, .npz   the values the engine gave those inputs on the failing input

The subgraph is cut from the engine's own graph (``onnx.utils.Extractor``) and its inputs' values come
from one run of that graph with them marked as outputs, on the engine's backend; it is run once more
here on ONNX Runtime, and the bundle says whether it reproduced the non-finite output there.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state
from polygraphy.backend.base import BaseRunner
from polygraphy.comparator import RunResults
from polygraphy.json import save_json
from polygraphy.json.serde import ITERATION_FILE_INDEX_WIDTH

from brr.backends.onnxrt.loader import SessionWithCustomOps, has_custom_nodes
from brr.diff.compare import LaplacianSpectra, reference_spectrum
from brr.diff.engines import Engine
from brr.diff.results import DiffReport, EngineResult, NonfiniteOrigin
from brr.diff.verdict import Verdict
from brr.errors import InputError, UsageError
from brr.events.postprocess import PostprocessConfig
from brr.model import V3Detector
from brr.model.config import DetectorConfig
from brr.onnx.marking import mark_outputs, read_marked
from brr.onnx.precision import unrounded_name

BUNDLE_FILE = "bundle.json"
BUNDLE_FORMAT = "brr-diff-repro/1"
REPRO_FOLDER = "repro"  # in the report folder
INPUTS, RESULTS, REFERENCE_RESULTS = "inputs", "results", "reference"
SUBGRAPH, BOUNDARY = "subgraph.onnx", "boundary_inputs"
# What ONNX Runtime raises for a graph it cannot load or run (an op or type it has no kernel for).
ONNXRUNTIME_ERRORS = (ort_state.Fail, ort_state.InvalidArgument, ort_state.InvalidGraph,
                      ort_state.NotImplemented, ort_state.RuntimeException)


class BundleError(InputError):
    """A folder that holds no repro bundle brr-diff --check can read, named in the message."""


@dataclass(frozen=True)
class Judging:
    """What judging an input takes besides the outputs and the tolerance: the model's parameters behind the
    adjacency's top-k, the Laplacian spectra the PE is compared by, and the post-processing that makes the
    served events. Recorded in the bundle, so that ``--check`` judges as the live diff did."""

    top_k: int | None = None
    laplacian: tuple[int, float, float] | None = None  # (every how many steps, degree clamp, shift)
    postprocess: PostprocessConfig | None = None

    @classmethod
    def of(cls, reference_runner, postprocess: PostprocessConfig | None = None) -> Judging:
        model = getattr(reference_runner, "model", None)
        if not isinstance(model, V3Detector):
            return cls(postprocess=postprocess)
        return cls.of_config(model.config, postprocess)

    @classmethod
    def of_config(cls, cfg: DetectorConfig, postprocess: PostprocessConfig | None = None) -> Judging:
        """The judging of a V3 detector with configuration ``cfg`` (an exported engine's, from its manifest)."""
        laplacian = (cfg.semi_dynamic_interval, cfg.degree_clamp, cfg.laplacian_shift)
        return cls(cfg.edge_top_k, laplacian if cfg.use_dynamic_pe else None, postprocess)

    def spectrum(self, ref_out) -> LaplacianSpectra | None:
        """The reference Laplacian spectra behind ``laplacian_pe``, where the model has a dynamic PE."""
        if self.laplacian is None or "adjacency" not in ref_out:
            return None
        return reference_spectrum(ref_out["adjacency"], *self.laplacian)

    def to_dict(self) -> dict:
        return {"top_k": self.top_k, "laplacian": list(self.laplacian) if self.laplacian else None,
                "postprocess": dataclasses.asdict(self.postprocess) if self.postprocess else None}

    @classmethod
    def from_dict(cls, data: dict) -> Judging:
        laplacian = data.get("laplacian")
        return cls(data.get("top_k"), tuple(laplacian) if laplacian else None,
                   PostprocessConfig(**data["postprocess"]) if data.get("postprocess") else None)


def folder_name(engine: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", engine)


def iteration_file(index: int, suffix: str = ".json") -> str:
    """Polygraphy's name for an iteration's file in a folder (what ``--save-inputs <dir>`` writes)."""
    return f"{index:0{ITERATION_FILE_INDEX_WIDTH}d}{suffix}"


class ReproWriter:
    """Writes the bundle into ``directory`` as the diff streams: ``add`` per input, ``finish`` at the end.

    ``every_input``: save every input (``--save-repro``), else only those some engine is not accepted on.
    """

    def __init__(self, directory: str | Path, every_input: bool, reference_name: str,
                 reference_runner: BaseRunner, engines: list[Engine], postprocess: PostprocessConfig | None):
        self.directory, self.every_input = Path(directory), every_input
        self.reference_name, self.reference_runner = reference_name, reference_runner
        self.engines, self.postprocess = engines, postprocess
        self.judging: Judging | None = None  # read from the reference model while it runs (it is loaded then)
        self.labels: list[str] = []
        self.live_inputs = 0

    @classmethod
    def for_run(cls, directory: str | Path, every_input: bool, **kwargs) -> ReproWriter:
        """The writer of one diff into ``directory``, which must be empty, new, or hold an earlier bundle
        (removed now, so that no bundle outlives the run it describes)."""
        folder = Path(directory)
        if folder.exists():
            if (folder / BUNDLE_FILE).is_file():
                shutil.rmtree(folder)
            elif not folder.is_dir() or any(folder.iterdir()):
                raise UsageError(f"{folder}: a repro bundle's folder must be empty, new or an earlier bundle")
        return cls(folder, every_input, **kwargs)

    def add(self, label: str, feed: dict, run, accepted: bool) -> None:
        """One compared input: its feed and every runner's outputs, if it is to be kept."""
        self.live_inputs += 1
        self.judging = self.judging or Judging.of(self.reference_runner, self.postprocess)
        if accepted and not self.every_input:
            return
        index = len(self.labels)
        inputs = self.directory / INPUTS
        inputs.mkdir(parents=True, exist_ok=True)
        save_json(feed, inputs / iteration_file(index))
        arrays = {name: np.asarray(value) for name, value in feed.items()}
        np.savez_compressed(inputs / iteration_file(index, ".npz"), **arrays)
        outputs = [(REFERENCE_RESULTS, self.reference_runner.name)]
        outputs += [(folder_name(e.name), e.runner.name) for e in self.engines]
        for folder, runner in outputs:
            single = RunResults()
            single.append((runner, [run[runner][0]]))
            (self.directory / RESULTS / folder).mkdir(parents=True, exist_ok=True)
            single.save(str(self.directory / RESULTS / folder / iteration_file(index)))
        self.labels.append(label)

    def finish(self, report: DiffReport) -> Path | None:
        """Write what needs the whole run (the origins' subgraphs, the lines, the index); None when no
        input was kept."""
        if not self.labels:
            return None
        entries = [self._engine_entry(engine, report.engine(engine.name)) for engine in self.engines]
        saved = [{"label": label, "polygraphy": f"{INPUTS}/{iteration_file(i)}",
                  "npz": f"{INPUTS}/{iteration_file(i, '.npz')}"} for i, label in enumerate(self.labels)]
        bundle = {"format": BUNDLE_FORMAT, "reference": self.reference_name,
                  "reference_runner": self.reference_runner.name, "fail_on": str(report.fail_on),
                  "verdict": str(report.verdict), "judging": self.judging.to_dict(),
                  "live_inputs": self.live_inputs, "every_input": self.every_input, "inputs": saved,
                  "engines": entries}
        (self.directory / BUNDLE_FILE).write_text(json.dumps(bundle, indent=1))
        (self.directory / "repro.sh").write_text(repro_script(entries))
        (self.directory / "repro.sh").chmod(0o755)
        (self.directory / "README.md").write_text(readme(bundle))
        return self.directory

    def _engine_entry(self, engine: Engine, result: EngineResult) -> dict:
        folder = folder_name(engine.name)
        found = {}  # saved input -> the non-finite values node level found inside the engine (kind, stage)
        for outcome in result.inputs:
            origin = outcome.node_level.first_nonfinite if outcome.node_level is not None else None
            if outcome.input in self.labels and origin is not None:
                found[outcome.input] = {"kind": str(origin.kind), "stage": origin.stage}
        entry = {"name": engine.name, "runner": engine.runner.name, "precision": engine.precision,
                 "path": engine.path, "atol": result.atol, "rtol": result.rtol,
                 "verdict": str(result.verdict), "results": f"{RESULTS}/{folder}", "nonfinite_found": found,
                 "model": None, "whole_model": None, "origin": None, "first_divergent": None}
        divergent = result.first_divergent_node
        if divergent is not None:
            entry["first_divergent"] = {"node": divergent.node, "op_type": divergent.op_type,
                                        "stage": divergent.stage, "input": divergent.input,
                                        "module": divergent.module.to_dict() if divergent.module else None}
        if engine.onnx_model is not None:
            (self.directory / folder).mkdir(exist_ok=True)
            onnx.save(engine.onnx_model, str(self.directory / folder / "model.onnx"))
            entry["model"] = f"{folder}/model.onnx"
            entry["whole_model"] = whole_model_line(entry, has_custom_nodes(engine.onnx_model))
        origin = result.origin
        if origin is not None and engine.localisable and origin.input in self.labels:
            entry["origin"] = self._origin_entry(engine, origin, folder)
        return entry

    def _origin_entry(self, engine: Engine, origin: NonfiniteOrigin, folder: str) -> dict:
        entry = {"node": origin.node, "op_type": origin.op_type, "stage": origin.stage,
                 "tensor": origin.tensor, "input": origin.input,
                 "module": origin.module.to_dict() if origin.module else None, "subgraph": None,
                 "boundary_inputs": None, "reproduced_on_onnxruntime": None, "line": None, "note": None}
        feed = saved_arrays(self.directory / INPUTS / iteration_file(self.labels.index(origin.input), ".npz"))
        try:
            # Where the engine stores a copy its consumers read (a result kept in fp32), that store is cut out.
            cut = origin_subgraph(engine, origin.output.read_as or origin.tensor, feed)
        except SubgraphError as error:
            entry["note"] = str(error)
            return entry
        onnx.save(cut.model, str(self.directory / folder / SUBGRAPH))
        save_json([cut.inputs], self.directory / folder / f"{BOUNDARY}.json")
        np.savez_compressed(self.directory / folder / f"{BOUNDARY}.npz", **cut.inputs)
        entry.update(subgraph=f"{folder}/{SUBGRAPH}", boundary_inputs=f"{folder}/{BOUNDARY}.json")
        try:
            reproduced = entry["reproduced_on_onnxruntime"] = cut.reproduces()
        except ONNXRUNTIME_ERRORS as error:
            entry["note"] = f"ONNX Runtime cannot run the subgraph alone: {str(error).splitlines()[0]}"
            return entry
        if has_custom_nodes(cut.model):
            # Run here with brr's kernels loaded; Polygraphy's ONNX Runtime runner cannot load them.
            outcome = "reproduces" if reproduced else "does not reproduce"
            entry["note"] = ("the subgraph holds brr's custom nodes, which polygraphy run --onnxrt cannot "
                             f"load; with brr's kernels it {outcome} the non-finite output")
        elif reproduced:
            entry["line"] = subgraph_line(folder)
        else:
            entry["note"] = (f"run alone on ONNX Runtime, {origin.tensor} stays finite: the engine's backend "
                             "computes it otherwise; the whole-engine line is the one to rerun")
        return entry


class SubgraphError(Exception):
    """Why an origin's subgraph could not be cut out (the bundle says so instead)."""


@dataclass
class Subgraph:
    """An origin node cut out of an engine's graph, with its inputs' values on the failing input."""

    model: onnx.ModelProto
    inputs: dict[str, np.ndarray]
    output: str

    def reproduces(self) -> bool:
        """Whether ONNX Runtime, run on this subgraph alone, gives the non-finite output again."""
        session = SessionWithCustomOps(self.model)()
        (value,) = session.run([self.output], self.inputs)
        return not bool(np.isfinite(np.asarray(value, dtype=np.float64)).all())


def origin_subgraph(engine: Engine, tensor: str, feed: dict) -> Subgraph:
    """The smallest subgraph of ``engine``'s graph from the inputs of the node that computes ``tensor`` to
    ``tensor``, and those inputs' values as the engine computes them on ``feed``.

    On a rounding engine (``brr.onnx.precision``) the computing node is ``<tensor>_unrounded`` and ``tensor``
    is its result stored in the precision: the subgraph holds both. Values the node reads from outside its
    own inputs (a Loop or If body's outer-scope names) are inputs of the subgraph too.
    """
    graph = engine.onnx_model.graph
    producers = {out: node for node in graph.node for out in node.output if out}
    node = producers.get(unrounded_name(tensor)) or producers.get(tensor)
    if node is None:
        raise SubgraphError(f"no node of {engine.name}'s graph computes {tensor}")
    initializers = {i.name: i for i in graph.initializer}
    needed = [*node.input, *_outer_scope_names(node)]
    boundary = list(dict.fromkeys(n for n in needed if n and n not in initializers))
    marked = [n for n in boundary if n not in feed]
    runner = engine.runner_for(mark_outputs(engine.onnx_model, [*marked, tensor]), f"{engine.name}-boundary")
    with runner:
        values = read_marked(dict(runner.infer(feed)))
    values.update({n: feed[n] for n in boundary if n in feed})
    unread = [n for n in [*boundary, tensor] if n not in values]
    if unread:  # an engine that keeps only some of its graph's tensors (OpenVINO) did not keep these
        raise SubgraphError(f"{engine.name} keeps no tensor of its own for {', '.join(unread)}: the origin's "
                            "inputs cannot be read there")
    model = onnx.shape_inference.infer_shapes(engine.onnx_model)
    known = {v.name: v for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    for name in [*boundary, tensor]:
        if name not in known:  # no type inferred (a custom node's output): the value says what it is
            array = np.asarray(values[name])
            model.graph.value_info.append(helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(array.dtype), array.shape))
            known[name] = model.graph.value_info[-1]
    cut = onnx.utils.Extractor(model).extract_model(boundary, [tensor])
    # The Extractor keeps the weights named as node inputs; a body's outer-scope weights are added here.
    cut.graph.initializer.extend(initializers[n] for n in _outer_scope_names(node) if n in initializers)
    inputs = {}
    for name in boundary:
        dtype = helper.tensor_dtype_to_np_dtype(known[name].type.tensor_type.elem_type)
        if dtype.kind not in "fiub":  # bfloat16 has no numpy type of its own
            raise SubgraphError(f"input {name} of the subgraph is {dtype}, which Polygraphy's JSON cannot "
                                "hold")
        inputs[name] = np.asarray(values[name]).astype(dtype)
    onnx.checker.check_model(cut)
    return Subgraph(cut, inputs, tensor)


def _outer_scope_names(node: onnx.NodeProto) -> list[str]:
    """Names a node's bodies (Loop, If, Scan) read from the graph around them."""
    names: list[str] = []
    for attribute in node.attribute:
        bodies = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)
        for body in bodies:
            defined = {i.name for i in body.input} | {i.name for i in body.initializer}
            for inner in body.node:
                names += [n for n in [*inner.input, *_outer_scope_names(inner)] if n and n not in defined]
                defined.update(inner.output)
    return list(dict.fromkeys(names))


# ------------------------------------------------------------------------------------------ the lines
def subgraph_line(folder: str) -> str:
    """The origin alone on ONNX Runtime: ``--validate`` fails on NaN/inf, which is the failure."""
    return shlex.join(["polygraphy", "run", f"{folder}/{SUBGRAPH}", "--onnxrt", "--load-inputs",
                       f"{folder}/{BOUNDARY}.json", "--validate"])


def whole_model_line(entry: dict, custom_nodes: bool) -> str | None:
    """The engine's graph on the saved inputs, compared with the fp32 reference's saved outputs."""
    if custom_nodes:
        return None
    return shlex.join(["polygraphy", "run", entry["model"], "--onnxrt", "--load-inputs", INPUTS,
                       "--load-outputs", f"{RESULTS}/{REFERENCE_RESULTS}", "--atol", f"{entry['atol']:g}",
                       "--rtol", f"{entry['rtol']:g}", "--validate"])


def repro_script(entries: list[dict]) -> str:
    """repro.sh: per failing engine, the origin alone where one was cut out, else the whole engine; exits
    non-zero when the failure reproduces."""
    lines = ["#!/bin/sh", "# Reproduces brr-diff's findings with Polygraphy on ONNX Runtime (see README.md).",
             "# Exit status 1: the failure reproduced.", 'cd "$(dirname "$0")"', "status=0"]
    for entry in entries:
        if Verdict(entry["verdict"]).accepted:
            continue
        line = (entry["origin"] or {}).get("line") or entry["whole_model"]
        if line is None:
            lines.append(f"# {entry['name']}: no line runs it on plain ONNX Runtime (see README.md)")
            continue
        lines += [f"# {entry['name']}: {entry['verdict']}", f"{line} || status=1"]
    return "\n".join([*lines, "exit $status"]) + "\n"


def readme(bundle: dict) -> str:
    saved = len(bundle["inputs"])
    which = "every input" if bundle["every_input"] else "the inputs some engine is not accepted on"
    labels = ", ".join(i["label"] for i in bundle["inputs"][:6])
    lines = [f"# brr-diff repro: {bundle['verdict']}", "",
             (f"Reference `{bundle['reference']}`; {saved} of {bundle['live_inputs']} inputs saved, {which}: "
              f"{labels}."),
             "", "`sh repro.sh` reruns the finding with Polygraphy (exit 1: reproduced).", ""]
    for entry in bundle["engines"]:
        lines += [f"## {entry['name']}: {entry['verdict']}", ""]
        origin = entry["origin"]
        if origin is not None:
            module = origin["module"]
            where = f" in module `{module['path']}` ({module['class']})" if module else ""
            lines.append(f"Non-finite values start at `{origin['node']}` ({origin['op_type']}, stage "
                         f"`{origin['stage']}`){where}, output `{origin['tensor']}`, on `{origin['input']}`.")
            if origin["line"]:
                lines += ["", (f"That node alone, cut out of the engine's graph (`{origin['subgraph']}`) and "
                               f"fed the values the engine gave its inputs (`{origin['boundary_inputs']}`), "
                               "gives the non-finite output again on ONNX Runtime:"),
                          "", "```sh", origin["line"], "```"]
            if origin["note"]:
                lines += ["", origin["note"] + "."]
            lines.append("")
        if entry["whole_model"]:
            lines += [(f"The whole engine on the saved inputs, against the fp32 reference's saved outputs "
                       f"(a plain elementwise check at atol {entry['atol']:g}, rtol {entry['rtol']:g}, which "
                       "does not know that eigenvectors and top-k near-ties have two right answers, as "
                       "brr-diff does):"),
                      "", "```sh", entry["whole_model"], "```", ""]
    folder = "this folder" if bundle["every_input"] else "the report folder"
    lines += ["## Judge again, offline", "",
              (f"`brr-diff --check <{folder}> [--atol A --rtol R]` judges the saved outputs again with "
               "brr-diff's own comparison (no engine, no checkpoint): the same verdicts, or others at other "
               "tolerances."),
              "", "## Files", "",
              ("- `inputs/`: one feed per saved input: `*.json` for `polygraphy run --load-inputs inputs`, "
               "`*.npz` (feed name -> array) for numpy"),
              ("- `results/reference/`, `results/<engine>/`: the outputs (logits and every probe) of the "
               "fp32 reference and of each engine on those inputs, one Polygraphy RunResults per input "
               "(`--load-outputs`)"),
              ("- `<engine>/model.onnx`: the engine's graph; `<engine>/subgraph.onnx` and "
               "`<engine>/boundary_inputs.*`: its origin node alone and that node's inputs"),
              "- `bundle.json`: the index brr-diff --check reads"]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ reading
def bundle_folder(folder: str | Path) -> Path:
    """The bundle a report folder holds (its ``repro/``), or ``folder`` itself if it is one."""
    folder = Path(folder)
    for candidate in (folder / REPRO_FOLDER, folder):
        if (candidate / BUNDLE_FILE).is_file():
            return candidate
    raise BundleError(f"{folder}: no saved results to check: neither {folder / REPRO_FOLDER / BUNDLE_FILE} "
                      f"nor {folder / BUNDLE_FILE} exists (brr-diff writes them when an engine fails, or "
                      "with --save-repro DIR)")


def load_bundle(folder: str | Path) -> tuple[Path, dict]:
    directory = bundle_folder(folder)
    try:
        bundle = json.loads((directory / BUNDLE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise BundleError(f"{directory / BUNDLE_FILE}: not readable ({error})") from None
    if bundle.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{directory / BUNDLE_FILE}: format {bundle.get('format')!r}, expected "
                          f"{BUNDLE_FORMAT!r}")
    return directory, bundle


def saved_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as archive:
        return {name: archive[name] for name in archive.files}

