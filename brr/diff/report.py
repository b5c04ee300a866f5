"""The diff report rendered: ``report.json`` (``report.schema.json``), ``report.md``, ``report.html``.

Every rendering leads with what a person must learn first: where non-finite values start (node,
op, stage, why, and what hid them downstream), then the stages, then the next step as commands.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import jsonschema

from brr.diff.results import SCHEMA_VERSION, DiffReport, EngineResult

SCHEMA_PATH = Path(__file__).with_name("report.schema.json")
PLOT_FILE = "error_per_stage.png"

__all__ = ["SCHEMA_VERSION", "findings", "markdown", "origin_sentence", "validate", "write_report"]


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


def origin_sentence(engine: EngineResult) -> str | None:
    """One sentence: where the engine's non-finite values start, why, and what hid them."""
    origin = engine.origin
    if origin is None:
        if engine.first_nonfinite_stage is None:
            return None
        return (f"{engine.name}: non-finite values first reach the `{engine.first_nonfinite_stage}` probe; "
                f"no node was named ({'; '.join(engine.node_level_notes) or 'node level did not run'})")
    where = f"`{origin['node']}` ({origin['op_type']}, stage `{origin['stage']}`)"
    if origin["kind"] == "fp32":
        return f"{engine.name}: non-finite values already in fp32 at {where}: {origin['explanation']}"
    sentence = f"{engine.name}: {engine.precision} {origin['cause']} at {where} on `{origin['input']}`: " \
               f"{origin['explanation']}."
    hidden = origin["hidden_by"]
    if hidden:
        first = hidden[0]
        more = origin["hidden_by_count"] - 1
        sentence += (f" Hidden downstream by `{first['node']}` ({first['op_type']}, stage `{first['stage']}`)"
                     + (f" and {more} more" if more > 0 else ""))
        logits = engine.stages.get("logits")
        if origin["nonfinite_outputs"] and "logits" in origin["nonfinite_outputs"]:
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
    node = engine.first_divergent_node
    if node is not None:
        stats = node["stats"]
        lines.append(f"first node beyond tolerance (atol {engine.atol:g}, rtol {engine.rtol:g}): `{node['node']}` "
                     f"({node['op_type']}, stage `{node['stage']}`) on `{node['input']}`, max abs error "
                     f"{float(stats['max_abs_err']):.3g}")
    ambiguous = [i for i in engine.inputs if i.verdict == "basis_ambiguous"]
    if ambiguous:
        stages = sorted({i.first_divergent_stage for i in ambiguous})
        why = {"adjacency": "top-k near-ties", "laplacian_pe": "repeated eigenvalues"}
        causes = ", ".join(f"{s} ({why.get(s, 'ambiguous')})" for s in stages)
        lines.append(f"two correct answers at {causes} on {len(ambiguous)} inputs: "
                     f"{', '.join(sorted(i.input for i in ambiguous)[:5])}")
    bad = [i.input for i in engine.inputs if i.verdict not in ("clean", "basis_ambiguous")]
    if bad:
        lines.append(f"{len(bad)} of {len(engine.inputs)} inputs off: {', '.join(bad[:6])}")
    lines += engine.node_level_notes
    return lines


def markdown(report: DiffReport) -> str:
    lines = [f"## brr-diff: {report.verdict}", ""]
    origins = [s for s in map(origin_sentence, report.engines) if s]
    lines += [f"**{s}**" for s in origins] + ([""] if origins else [])
    lines += [f"Reference `{report.reference}`, {len(report.inputs)} inputs, fail on {report.fail_on}.", "",
              "| engine | tolerance | verdict | first stage non-finite | first stage beyond tolerance | "
              "logits non-finite | logits max abs err | logits cosine |",
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
    cost = report.cost
    if cost:
        lines += ["", f"Cost: {cost['seconds']:g} s, peak RSS {cost['peak_rss_mb']} MB, "
                      f"{cost['node_level_runs']} node-level runs."]
    steps = report.next_steps()
    if steps:
        lines += ["", "Next step: find the nodes to keep in fp32, then export with that plan:", "", "```bash",
                  *steps, "```"]
    return "\n".join(lines) + "\n"


def plot_errors(report: DiffReport, path: Path) -> None:
    """Max abs error per stage (left) and per compared tensor's magnitude (right), log scale."""
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
                nodes = list(e.nodes.values())
                ax.plot(range(len(nodes)), [max(n.fp32_abs_max, 1e-12) for n in nodes], lw=0.8, label=f"{e.name} fp32")
                bad = [i for i, n in enumerate(nodes) if n.engine_nonfinite_inputs]
                ax.scatter(bad, [1e6] * len(bad), marker="x", color="red", s=8)
        ax.set_yscale("log")
        ax.set_xlabel("compared tensor (topological order)")
        ax.set_title("largest magnitude per tensor (x: non-finite in the engine)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def html_page(report: DiffReport, plot: Path) -> str:
    image = base64.b64encode(plot.read_bytes()).decode()
    summary = html.escape(markdown(report))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>brr-diff: {report.verdict}</title></head><body>
<h1>brr-diff: {report.verdict}</h1>
<p><img alt="error per stage and node" src="data:image/png;base64,{image}"></p>
<pre>{summary}</pre>
</body></html>
"""
