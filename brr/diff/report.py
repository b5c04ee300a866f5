"""The diff report rendered: ``report.json`` (``report.schema.json``), ``report.md``, ``report.html``.

Every rendering leads with what a person must learn first: where non-finite values start (node,
op, stage, why, and what hid them downstream), then the findings, each named node followed by its
path to a probe judged node by node (origin or propagator), then the stages, then the next step as
commands. The sentences are written here once (``origin_sentences``, ``findings``, ``role_line``)
and both the Markdown and the HTML page (``templates/report.html.j2``, figures from
``brr.diff.plots`` embedded) use them.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import jinja2
import jsonschema
from markupsafe import Markup, escape

from brr.diff.plots import offenders, plot_errors_per_stage, plot_magnitudes_per_tensor
from brr.diff.results import (
    SCHEMA_VERSION,
    DiffReport,
    EngineResult,
    NodeRole,
    NonfiniteOrigin,
    ReplayedNode,
    ReplayedPath,
)
from brr.diff.verdict import NonfiniteKind, Verdict
from brr.onnx.source import ModuleSource

SCHEMA_PATH = Path(__file__).with_name("report.schema.json")
PLOT_FILE = "error_per_stage.png"
NEXT_STEP_INTRO = "Next step: find the nodes to keep in fp32, then export with that plan:"
ROLE_TONES = {NodeRole.ORIGIN: "bad", NodeRole.PROPAGATOR: "ok"}

__all__ = ["SCHEMA_VERSION", "findings", "markdown", "origin_sentences", "replayed_paths", "role_line", "validate",
           "write_report"]


def validate(document: dict) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``document`` follows the report schema."""
    jsonschema.validate(document, json.loads(SCHEMA_PATH.read_text()))


def write_report(report: DiffReport, directory: str | Path) -> dict[str, Path]:
    """report.json (validated), report.md, report.html and the figures it embeds; returns their paths:
    "json", "md", "html", "plot" (error per stage) and "magnitudes:ENGINE" (per compared tensor)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    document = report.to_dict()
    validate(document)
    paths = {"json": directory / "report.json", "md": directory / "report.md", "html": directory / "report.html"}
    paths["json"].write_text(json.dumps(document, indent=1))
    paths["md"].write_text(markdown(report))
    if plot_errors_per_stage(report, directory / PLOT_FILE):
        paths["plot"] = directory / PLOT_FILE
    for engine in report.engines:
        if engine.nodes:
            path = directory / magnitudes_file(engine)
            plot_magnitudes_per_tensor(engine, path)
            paths[f"magnitudes:{engine.name}"] = path
    paths["html"].write_text(html_page(report, directory))
    return paths


def magnitudes_file(engine: EngineResult) -> str:
    return f"magnitude_per_tensor-{re.sub(r'[^A-Za-z0-9._-]+', '_', engine.name)}.png"


def reference_line(report: DiffReport) -> str:
    return f"Reference `{report.reference}`, {len(report.inputs)} inputs, fail on {report.fail_on}."


def bundle_line(report: DiffReport) -> str | None:
    """Where the repro bundle is (``brr.diff.repro``), or which bundle a ``--check`` report judged again."""
    if report.rejudged:
        judged = report.rejudged
        return (f"Judged again offline from the outputs saved in `{judged['bundle']}` ({judged['inputs']} of "
                f"the live run's {judged['live_inputs']} inputs); node level was not rerun.")
    if report.repro:
        return (f"Repro bundle: `{report.repro}` (README.md, repro.sh: the Polygraphy lines that reproduce "
                "it); `brr-diff --check` judges its saved outputs again offline.")
    return None


def where(node: str, op_type: str, stage: str | None, module: ModuleSource | None) -> str:
    """A node as the sentences name it: ONNX node, op, stage, and the nn.Module it was traced in."""
    return f"`{node}` ({op_type}, stage `{stage}`)" + (f" in {module.describe()}" if module else "")


def origin_sentences(engine: EngineResult) -> list[str]:
    """One sentence per place the engine's non-finite values start: where, why, and what hid them."""
    if not engine.origins:
        if engine.first_nonfinite_stage is None:
            return []
        return [f"{engine.name}: non-finite values first reach the `{engine.first_nonfinite_stage}` probe; "
                f"no node was named ({'; '.join(engine.node_level_notes) or 'node level did not run'})"]
    return [origin_sentence(engine, origin) for origin in engine.origins]


def origin_sentence(engine: EngineResult, origin: NonfiniteOrigin) -> str:
    at = where(origin.node, origin.op_type, origin.stage, origin.module)
    if origin.kind is NonfiniteKind.FP32:
        return f"{engine.name}: non-finite values already in fp32 at {at}: {origin.explanation}"
    sentence = f"{engine.name}: {engine.precision} {origin.cause} at {at} on `{origin.input}`: " \
               f"{origin.explanation}."
    hidden = origin.hidden_by
    if hidden:
        first = hidden[0]
        more = origin.hidden_by_count - 1
        sentence += (f" Hidden downstream by `{first.node}` ({first.op_type}, stage `{first.stage}`)"
                     + (f" and {more} more" if more > 0 else ""))
        logits = engine.stages.get("logits")
        if "logits" in origin.nonfinite_outputs:
            sentence += "; the logits are non-finite all the same."
        elif logits is not None:
            sentence += (f": the logits stay finite but are off by up to {logits.max_abs_err:.3g} "
                         f"(cosine {logits.cosine:.4f}).")
        else:
            sentence += "."
    return sentence


def findings(engine: EngineResult) -> list[str]:
    """The other lines worth reading about one engine, most important first."""
    lines = []
    events = engine.events
    if events is not None:
        lines.append(f"served events {'match' if events.agree else 'DIFFER FROM'} fp32's: {events.describe()}")
    lines += [f"warning: {warning}" for warning in engine.warnings]
    node = engine.first_divergent_node
    if node is not None:
        lines.append(f"first node beyond tolerance (atol {engine.atol:g}, rtol {engine.rtol:g}): "
                     f"{where(node.node, node.op_type, node.stage, node.module)} on `{node.input}`, max abs "
                     f"error {float(node.stats.max_abs_err):.3g}")
    ambiguous = [i for i in engine.inputs if i.verdict is Verdict.BASIS_AMBIGUOUS]
    if ambiguous:
        stages = sorted({i.first_divergent_stage for i in ambiguous})
        why = {"adjacency": "top-k near-ties", "laplacian_pe": "repeated eigenvalues"}
        causes = ", ".join(f"{s} ({why.get(s, 'ambiguous')})" for s in stages)
        lines.append(f"two correct answers at {causes} on {len(ambiguous)} inputs: "
                     f"{', '.join(sorted(i.input for i in ambiguous)[:5])}")
        eigenspaces = [i.stages["laplacian_pe"].eigenspace for i in ambiguous
                       if "laplacian_pe" in i.stages and i.stages["laplacian_pe"].eigenspace is not None]
        if eigenspaces:
            worst = max(eigenspaces, key=lambda e: e.max_projector_err)
            lines.append(f"ambiguity measured: {worst.describe()}")
        logits = [i.stages["logits"].stats.max_abs_err for i in ambiguous if "logits" in i.stages]
        if logits:
            lines.append(f"its effect on what is served: logits up to {max(logits):.3g} from fp32's (tolerance "
                         f"{engine.atol:g}), the same events on those inputs")
    bad = [i.input for i in engine.inputs if not i.verdict.accepted]
    if bad:
        lines.append(f"{len(bad)} of {len(engine.inputs)} inputs off: {', '.join(bad[:6])}")
    lines += engine.node_level_notes
    return lines


def replayed_paths(engine: EngineResult) -> list[tuple[str, ReplayedPath]]:
    """Each named node (origins, first divergent node) whose path was judged origin or propagator: a
    sentence saying where the path goes and how it was judged, and the path."""
    paths = []
    for finding in [*engine.origins, engine.first_divergent_node]:
        if finding is None or finding.roles is None:
            continue
        roles = finding.roles
        towards = f"to the `{roles.probe}` probe" if roles.probe else "(it reaches no probe)"
        shown = len(roles.nodes)
        first = f", its first {shown} of {roles.path_length} nodes" if roles.probe and 0 < shown < roles.path_length \
            else ""
        head = (f"origin or propagator from `{finding.node}` {towards}{first}, each node run alone in "
                f"{engine.precision} on fp32's inputs (atol {roles.atol:g}, rtol {roles.rtol:g})")
        paths.append((head + (f": {roles.note}" if roles.note else ":"), roles))
    return paths


def role_line(node: ReplayedNode) -> str:
    """One replayed node: where, its role, and its own error alone."""
    at = f"`{node.node}` ({node.op_type})" + (f" in {node.module.describe()}" if node.module else "")
    if node.role is None:
        return f"{at}: {node.skipped}"
    detail = "own max abs error " + ("-" if node.own_error is None else f"{node.own_error:.3g}")
    if node.own_nonfinite:
        detail += f", {node.own_nonfinite:,} of {node.elements:,} values non-finite alone"
    if node.inputs_nonfinite:
        detail += (f"; {node.inputs_nonfinite:,} of its input values, finite in fp32, are non-finite once stored "
                   "(its producer's store made them)")
    return f"{at}: {node.role}, {detail}"


def markdown(report: DiffReport) -> str:
    lines = [f"## brr-diff: {report.verdict}", ""]
    origins = [s for e in report.engines for s in origin_sentences(e)]
    lines += [f"**{s}**" for s in origins] + ([""] if origins else [])
    bundle = bundle_line(report)
    lines += [reference_line(report), *([bundle] if bundle else []), "",
              ("| engine | tolerance | verdict | first stage non-finite | first stage beyond tolerance | "
               "logits non-finite | logits max abs err | logits cosine |"),
              "|---|---|---|---|---|---|---|---|"]
    for e in report.engines:
        logits = e.stages.get("logits")
        err = f"{logits.max_abs_err:.3g}" if logits else "-"
        cos = f"{logits.cosine:.6f}" if logits else "-"
        bad = f"{logits.engine_nonfinite}/{logits.elements}" if logits else "-"
        lines.append(f"| {e.name} | {e.atol:g} / {e.rtol:g} | {e.verdict} | {e.first_nonfinite_stage or '-'} | "
                     f"{e.first_divergent_stage or '-'} | {bad} | {err} | {cos} |")
    lines.append("")
    for e in report.engines:
        lines += [f"- **{e.name}**: {line}" for line in findings(e)]
        for head, roles in replayed_paths(e):
            lines += [f"- **{e.name}**: {head}", *(f"  - {role_line(node)}" for node in roles.nodes)]
    cost = report.cost
    if cost:
        lines += ["", (f"Cost: {cost['seconds']:g} s, peak RSS {cost['peak_rss_mb']} MB, "
                       f"{cost['node_level_runs']} node-level runs.")]
    steps = report.next_steps()
    if steps:
        lines += ["", NEXT_STEP_INTRO, "", "```bash", *steps, "```"]
    return "\n".join(lines) + "\n"


def inline_code(text: str) -> Markup:
    """The sentences' `code` spans as <code>, the rest escaped."""
    return Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", str(escape(text))))


def number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, int) else f"{value:.3g}"


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _engine_view(engine: EngineResult, directory: Path) -> dict:
    """What the page shows of one engine, in the order the template reads it."""
    stages = []
    for name, stats in engine.stages.items():
        status = Verdict.most_severe(i.stages[name].status for i in engine.inputs if name in i.stages)
        stages.append({"name": name, "status": status, "tone": status.tone, "stats": stats,
                       "first_nonfinite": name == engine.first_nonfinite_stage,
                       "first_divergent": name == engine.first_divergent_stage})
    origin = engine.origin
    marked = []
    if origin is not None and origin.tensor in engine.nodes:
        cause = origin.cause if origin.kind is NonfiniteKind.PRECISION else "fp32"
        marked.append({"range": engine.nodes[origin.tensor], "origin": True, "why": f"first non-finite ({cause})"})
    marked += [{"range": o.node, "origin": False, "why": o.reason} for o in offenders(engine)]
    figure = directory / magnitudes_file(engine)
    inputs = []
    for i in engine.inputs:
        level = i.node_level
        named = level and (level.first_nonfinite or level.first_divergent)
        inputs.append({"input": i.input, "verdict": i.verdict, "tone": i.verdict.tone,
                       "first_nonfinite_stage": i.first_nonfinite_stage,
                       "first_divergent_stage": i.first_divergent_stage,
                       "node": f"{named.node} ({named.op_type})" if named else None,
                       "module": named.module.describe() if named and named.module else None})
    paths = [{"head": head, "nodes": [{"node": node, "tone": ROLE_TONES.get(node.role, "neutral"),
                                       "note": node.skipped or (f"{node.inputs_nonfinite:,} input values non-finite "
                                                                "once stored" if node.inputs_nonfinite else "")}
                                      for node in roles.nodes]}
             for head, roles in replayed_paths(engine)]
    return {"engine": engine, "tone": engine.verdict.tone, "logits": engine.stages.get("logits"),
            "findings": findings(engine), "paths": paths, "stages": stages, "inputs": inputs, "marked": marked,
            "figure": _data_uri(figure) if engine.nodes and figure.is_file() else None,
            "figure_file": figure.name}


def html_page(report: DiffReport, directory: Path) -> str:
    """The report as one self-contained page; the figures written in ``directory`` are embedded."""
    environment = jinja2.Environment(loader=jinja2.PackageLoader("brr.diff", "templates"), autoescape=True,
                                     undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    environment.filters.update(code=inline_code, number=number)
    stage_plot = Path(directory) / PLOT_FILE
    return environment.get_template("report.html.j2").render(
        report=report, tone=report.verdict.tone, meaning=report.verdict.meaning,
        origins=[s for e in report.engines for s in origin_sentences(e)], reference_line=reference_line(report),
        bundle_line=bundle_line(report),
        engines=[_engine_view(e, Path(directory)) for e in report.engines],
        stage_plot=_data_uri(stage_plot) if any(e.stages for e in report.engines) else None,
        steps=report.next_steps(), next_step_intro=NEXT_STEP_INTRO)
