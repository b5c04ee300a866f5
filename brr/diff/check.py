"""``brr-diff --check``: judge a repro bundle's saved outputs again, offline: no engine, no checkpoint.

Every saved input is judged by the live diff's own functions (``compare_outputs`` with the recorded
model parameters, ``Judging``), at the recorded tolerances or the ones given. Node level is not run
again: where the live run found non-finite values inside an engine that its probes hid, the recorded
finding still raises that input's verdict (``InputResult.found_nonfinite``), as it did live.
"""

from __future__ import annotations

from pathlib import Path

from polygraphy.comparator import RunResults

from brr.diff.compare import TensorStats
from brr.diff.probes import compare_outputs
from brr.diff.report import where
from brr.diff.repro import (
    INPUTS,
    REFERENCE_RESULTS,
    RESULTS,
    Judging,
    iteration_file,
    load_bundle,
    saved_arrays,
)
from brr.diff.results import DiffReport, EngineResult
from brr.diff.verdict import FailOn, NonfiniteKind
from brr.onnx.source import ModuleSource

NOT_RERUN = "judged again from saved outputs (brr-diff --check): node level not rerun"


def check_saved(folder: str | Path, atol: float | None = None, rtol: float | None = None,
                fail_on: str | None = None) -> DiffReport:
    """The diff of the outputs saved in ``folder`` (a report folder with ``repro/``, or a bundle), judged
    again; ``atol``/``rtol`` None: each engine's tolerance in the live run; ``fail_on`` None: the live
    run's."""
    directory, bundle = load_bundle(folder)
    judging = Judging.from_dict(bundle["judging"])
    report = DiffReport(bundle["reference"], FailOn(fail_on or bundle["fail_on"]))
    report.rejudged = {"bundle": str(directory), "inputs": len(bundle["inputs"]),
                       "live_inputs": bundle["live_inputs"]}
    engines = bundle["engines"]
    results = [EngineResult(e["name"], e["precision"], e["atol"] if atol is None else atol,
                            e["rtol"] if rtol is None else rtol, path=e["path"], node_level_note=_note(e))
               for e in engines]
    streams = [RunResults.load_streaming(str(directory / RESULTS / REFERENCE_RESULTS))]
    streams += [RunResults.load_streaming(str(directory / e["results"])) for e in engines]
    for index, saved in enumerate(bundle["inputs"]):
        label = saved["label"]
        feed = saved_arrays(directory / INPUTS / iteration_file(index, ".npz"))
        runs = [next(stream) for stream in streams]
        ref_out = runs[0][bundle["reference_runner"]][0]
        spectrum = judging.spectrum(ref_out)
        for entry, result, run in zip(engines, results, runs[1:]):
            outcome = compare_outputs(label, feed, ref_out, run[entry["runner"]][0], spectrum, result.atol,
                                      result.rtol, judging.top_k, judging.postprocess)
            found = entry["nonfinite_found"].get(label)
            if found is not None:
                outcome.found_nonfinite(NonfiniteKind(found["kind"]), found["stage"])
            for name, stage in outcome.stages.items():
                result.stages.setdefault(name, TensorStats()).merge(stage.stats)
            result.inputs.append(outcome)
    report.inputs = [saved["label"] for saved in bundle["inputs"]]
    report.engines = results
    return report


def _note(entry: dict) -> str:
    """What the check says of node level: not rerun, and what the live run found there."""
    found = []
    findings = {"origin": "non-finite values starting at", "first_divergent": "the first node beyond tolerance at"}
    for key, what in findings.items():
        node = entry[key]
        if node is not None:
            module = ModuleSource.from_dict(node["module"]) if node["module"] else None
            found.append(f"{what} {where(node['node'], node['op_type'], node['stage'], module)} on "
                         f"`{node['input']}`")
    return NOT_RERUN + (f"; the live run found {' and '.join(found)}" if found else "")
