"""The diff report: statistics per engine, input, stage and node; written as JSON, Markdown and HTML.

``report.json`` follows ``report.schema.json`` (shipped beside this file, version in
``SCHEMA_VERSION``); ``report.md`` is a few lines per engine for a CI step summary; ``report.html``
embeds ``error_per_stage.png``, the error of every stage (and compared node) per engine.
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema

from brr.diff.compare import EigenspaceStats, SelectionStats, TensorStats
from brr.diff.localise import Localisation

SCHEMA_VERSION = "1.0"
SCHEMA_PATH = Path(__file__).with_name("report.schema.json")
PLOT_FILE = "error_per_stage.png"
# Least to most severe; an engine's (and the report's) verdict is the most severe of its inputs'.
VERDICTS = ("clean", "basis_ambiguous", "nonfinite_input", "divergence", "nonfinite_precision", "nonfinite_fp32")
FAILING = {
    "nonfinite": {"nonfinite_precision", "nonfinite_fp32"},
    "divergence": {"divergence", "nonfinite_precision", "nonfinite_fp32"},
    "never": set(),
}


def most_severe(verdicts) -> str:
    return max(verdicts, key=VERDICTS.index, default="clean")


@dataclass
class StageResult:
    status: str
    stats: TensorStats
    eigenspace: EigenspaceStats | None = None
    selection: SelectionStats | None = None

    def to_dict(self) -> dict:
        out = {"status": self.status, "stats": _json_floats(self.stats.to_dict())}
        if self.eigenspace is not None:
            out["eigenspace"] = self.eigenspace.to_dict()
        if self.selection is not None:
            out["selection"] = _json_floats(self.selection.to_dict())
        return out


@dataclass
class InputResult:
    input: str
    verdict: str
    first_divergent_stage: str | None
    stages: dict[str, StageResult]
    node_level: Localisation | None = None

    def to_dict(self) -> dict:
        level = None
        if self.node_level is not None:
            level = {"mode": self.node_level.mode, "runs": self.node_level.runs,
                     "reproduced": self.node_level.reproduced, "first_nonfinite": self.node_level.first_nonfinite}
        return {"input": self.input, "verdict": self.verdict, "first_divergent_stage": self.first_divergent_stage,
                "stages": {k: v.to_dict() for k, v in self.stages.items()}, "node_level": level}


@dataclass
class EngineResult:
    name: str
    precision: str
    node_level_note: str | None = None
    inputs: list[InputResult] = field(default_factory=list)
    stages: dict[str, TensorStats] = field(default_factory=dict)
    # node -> (op_type, stage, stats), in the order first compared
    nodes: dict[str, tuple[str, str | None, TensorStats]] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return most_severe(i.verdict for i in self.inputs)

    @property
    def first_divergent_stage(self) -> str | None:
        return next((i.first_divergent_stage for i in self.inputs if i.verdict == self.verdict), None)

    @property
    def first_nonfinite(self) -> dict | None:
        return next((i.node_level.first_nonfinite for i in self.inputs
                     if i.node_level is not None and i.node_level.first_nonfinite), None)

    def to_dict(self) -> dict:
        return {
            "name": self.name, "precision": self.precision, "verdict": self.verdict,
            "first_divergent_stage": self.first_divergent_stage, "node_level_note": self.node_level_note,
            "stages": {k: _json_floats(v.to_dict()) for k, v in self.stages.items()},
            "inputs": [i.to_dict() for i in self.inputs],
            "nodes": [{"node": n, "op_type": op, "stage": stage, "stats": _json_floats(s.to_dict())}
                      for n, (op, stage, s) in self.nodes.items()],
        }


@dataclass
class DiffReport:
    reference: str
    atol: float
    rtol: float
    fail_on: str
    inputs: list[str] = field(default_factory=list)
    engines: list[EngineResult] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return most_severe(e.verdict for e in self.engines)

    @property
    def failed(self) -> bool:
        return any(e.verdict in FAILING[self.fail_on] for e in self.engines)

    def engine(self, name: str) -> EngineResult:
        return next(e for e in self.engines if e.name == name)

    def to_dict(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "tool": "brr-diff", "reference": self.reference,
                "atol": self.atol, "rtol": self.rtol, "fail_on": self.fail_on, "verdict": self.verdict,
                "inputs": self.inputs, "engines": [e.to_dict() for e in self.engines]}


def validate(document: dict) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``document`` follows the report schema."""
    jsonschema.validate(document, json.loads(SCHEMA_PATH.read_text()))


def write_report(report: DiffReport, directory: str | Path) -> dict[str, Path]:
    """report.json (validated), report.md, report.html and its plot; returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    document = report.to_dict()
    validate(document)
    paths = {"json": directory / "report.json", "md": directory / "report.md",
             "html": directory / "report.html", "plot": directory / PLOT_FILE}
    paths["json"].write_text(json.dumps(document, indent=1))
    paths["md"].write_text(markdown(report))
    plot_errors(report, paths["plot"])
    paths["html"].write_text(html_page(report, paths["plot"]))
    return paths


def _first_nonfinite_line(first: dict) -> str:
    return (f"first non-finite ({first['kind']}): `{first['node']}` ({first['op_type']}, stage "
            f"`{first['stage']}`): {first['explanation']}; contaminates {first['contaminated']} downstream outputs")


def markdown(report: DiffReport) -> str:
    """A short summary: one table row per engine, then one line per finding."""
    lines = [f"## brr-diff: {report.verdict}", "",
             (f"Reference `{report.reference}`, {len(report.inputs)} inputs, atol {report.atol:g}, rtol "
              f"{report.rtol:g}, fail on {report.fail_on}."), "",
             "| engine | verdict | first stage off | logits non-finite | logits max abs err | logits cosine |",
             "|---|---|---|---|---|---|"]
    for e in report.engines:
        logits = e.stages.get("logits")
        err = f"{logits.max_abs_err:.3g}" if logits else "-"
        cos = f"{logits.cosine:.6f}" if logits else "-"
        bad = f"{logits.engine_nonfinite}/{logits.elements}" if logits else "-"
        lines.append(f"| {e.name} | {e.verdict} | {e.first_divergent_stage or '-'} | {bad} | {err} | {cos} |")
    lines.append("")
    for e in report.engines:
        if e.first_nonfinite:
            lines.append(f"- **{e.name}**: {_first_nonfinite_line(e.first_nonfinite)}")
        ambiguous = [i for i in e.inputs if i.verdict == "basis_ambiguous"]
        if ambiguous:
            stages = sorted({i.first_divergent_stage for i in ambiguous})
            why = {"adjacency": "top-k near-ties", "laplacian_pe": "repeated eigenvalues"}
            causes = ", ".join(f"{s} ({why.get(s, 'ambiguous')})" for s in stages)
            lines.append(f"- **{e.name}**: two correct answers at {causes} on {len(ambiguous)} inputs: "
                         f"{', '.join(sorted(i.input for i in ambiguous)[:5])}")
        bad_inputs = [i.input for i in e.inputs if i.verdict not in ("clean", "basis_ambiguous")]
        if bad_inputs:
            lines.append(f"- **{e.name}**: {len(bad_inputs)} inputs off: {', '.join(bad_inputs[:5])}")
        reproduced = [i.node_level.reproduced for i in e.inputs if i.node_level is not None]
        if False in reproduced:
            lines.append(f"- **{e.name}**: the marked engine did not reproduce the unmarked verdict on some inputs")
        if e.node_level_note:
            lines.append(f"- **{e.name}**: {e.node_level_note}")
    return "\n".join(lines) + "\n"


def plot_errors(report: DiffReport, path: Path) -> None:
    """Max abs error per stage (left) and per compared node in topological order (right), log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_nodes = any(e.nodes for e in report.engines)
    fig, axes = plt.subplots(1, 2 if with_nodes else 1, figsize=(13 if with_nodes else 7, 4.2), squeeze=False)
    ax = axes[0][0]
    for e in report.engines:
        names = list(e.stages)
        ax.plot(names, [max(s.max_abs_err, 1e-12) for s in e.stages.values()], marker="o", label=f"{e.name} ({e.verdict})")
        bad = [n for n, s in e.stages.items() if s.precision_nonfinite or s.ref_nonfinite]
        ax.scatter(bad, [1e6] * len(bad), marker="x", color="red")
    ax.set_yscale("log")
    ax.set_ylabel("max abs error (x: non-finite)")
    ax.set_title("error per stage")
    ax.tick_params(axis="x", rotation=60)
    ax.legend(fontsize=7)
    if with_nodes:
        ax = axes[0][1]
        for e in report.engines:
            if e.nodes:
                stats = [s for _, _, s in e.nodes.values()]
                ax.plot(range(len(stats)), [max(s.max_abs_err, 1e-12) for s in stats], lw=0.8, label=e.name)
                bad = [i for i, s in enumerate(stats) if s.precision_nonfinite]
                ax.scatter(bad, [1e6] * len(bad), marker="x", color="red", s=8)
        ax.set_yscale("log")
        ax.set_xlabel("compared node (topological order)")
        ax.set_title("error per node")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def html_page(report: DiffReport, plot: Path) -> str:
    rows = []
    for e in report.engines:
        for i in e.inputs:
            first = i.node_level.first_nonfinite if i.node_level is not None else None
            rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
                e.name, i.input, i.verdict, i.first_divergent_stage or "-",
                _first_nonfinite_line(first) if first else "-")) + "</tr>")
    image = base64.b64encode(plot.read_bytes()).decode()
    summary = html.escape(markdown(report))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>brr-diff: {report.verdict}</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{border:1px solid #ccc;padding:3px 6px}}
table{{border-collapse:collapse;font-size:13px}}</style></head><body>
<h1>brr-diff: {report.verdict}</h1>
<p><a href="{plot.name}"><img alt="error per stage and node" src="data:image/png;base64,{image}"></a></p>
<pre>{summary}</pre>
<table><tr><th>engine</th><th>input</th><th>verdict</th><th>first stage off</th><th>first non-finite</th></tr>
{''.join(rows)}
</table></body></html>
"""


def _json_floats(value):
    """JSON has no inf/NaN: write them as strings (the schema allows it where they can occur)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_floats(v) for k, v in value.items()}
    return value
