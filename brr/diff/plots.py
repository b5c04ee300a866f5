"""The diff report's figures: error per stage, and each engine's magnitudes per compared tensor.

Both use log axes, where 0 and inf/NaN have no place: they get rows of their own below and above the
data, labelled, so a value that became 0 or non-finite in the engine stays visible. The per-tensor
figure follows the fp32 graph's topological order, shades the model's stages along it, draws the
precision's limits, and names the first non-finite tensor and the worst offenders (``offenders``),
which the HTML page lists again in a table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from brr.diff.results import PRECISION_LIMITS, DiffReport, EngineResult, NodeRange
from brr.diff.verdict import NonfiniteKind

# Tensors named on the per-tensor figure besides the origin; more would not stay legible.
OFFENDERS_SHOWN = 5
# A tensor whose fp32 magnitude comes this close (a factor) to the largest finite value is an offender.
NEAR_LIMIT_FACTOR = 10.0
# A limit line is drawn only within this many decades of the data, so bf16's 3.4e38 does not flatten it.
LIMIT_LINE_DECADES = 4
FP32_COLOUR, ENGINE_COLOUR, NONFINITE_COLOUR, LIMIT_COLOUR = "#3b6ea5", "#e08a2c", "#c0392b", "#6d6d6d"
# Pale, distinct hues for the stage bands (V3 has 11 stages); tensors with no stage are grey.
STAGE_COLOURS = ("#cfe3f2", "#f6dfc4", "#d7ecd0", "#ead7ef", "#f3e5a8", "#c8e6e2", "#f2d0d6", "#c9d3ef",
                 "#e6dcc8", "#dcefb8", "#f7cdb8", "#e3d0e8")
UNASSIGNED_COLOUR = "#e4e4e4"
LABEL_FONT = 7.5
# The per-tensor figure's axes span these fractions of its width.
AXES_LEFT, AXES_RIGHT = 0.08, 0.985


@dataclass(frozen=True)
class Offender:
    """A compared tensor worth naming, and why, in a few words."""

    node: NodeRange
    position: int  # index in the engine's compared tensors (topological order)
    reason: str


def offenders(engine: EngineResult, count: int = OFFENDERS_SHOWN) -> list[Offender]:
    """The tensors, other than the origin, most at risk in the engine's precision, worst first.

    Over the largest finite value in fp32, then flushed to 0 (fp32 holds values below the smallest
    normal, the engine none), then within ``NEAR_LIMIT_FACTOR`` of the largest finite value; with no
    such tensor left, those non-finite in the engine (mostly the origin's consequences), in order.
    """
    origin = engine.origin
    limits = PRECISION_LIMITS.get(engine.precision)
    ranked = []
    for position, node in enumerate(engine.nodes.values()):
        if origin is not None and node.tensor == origin.tensor or node.fp32_nonfinite_inputs:
            continue
        fp32 = node.fp32_abs_max
        if limits is not None and fp32 > limits[0]:
            ranked.append((0, -fp32 / limits[0], position,
                           f"{fp32:.2g} in fp32 > {engine.precision} max {limits[0]:.6g}"))
        elif (limits is not None and 0.0 < fp32 < limits[1] and node.engine_abs_max == 0.0
              and not node.engine_nonfinite_inputs):
            ranked.append((1, fp32 / limits[1], position,
                           f"{fp32:.2g} in fp32 < {engine.precision} normal {limits[1]:.2g}: all 0"))
        elif limits is not None and fp32 * NEAR_LIMIT_FACTOR > limits[0]:
            ranked.append((2, -fp32 / limits[0], position,
                           f"{fp32:.2g} in fp32, near {engine.precision} max {limits[0]:.6g}"))
        elif node.engine_nonfinite_inputs:
            ranked.append((3, position, position, f"non-finite in {engine.precision}"))
    ranked.sort()
    if ranked and ranked[0][0] < 3:
        ranked = [r for r in ranked if r[0] < 3]
    nodes = list(engine.nodes.values())
    return [Offender(nodes[position], position, reason) for *_, position, reason in ranked[:count]]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _special_rows(values: list[float], limits: tuple[float, ...]) -> tuple[float, float, tuple[float, float]]:
    """(row for 0, row for non-finite, y limits) on a log axis around the positive ``values`` and ``limits``."""
    positive = [v for v in (*values, *limits) if v > 0 and math.isfinite(v)] or [1.0]
    low, high = min(positive), max(positive)
    zero_row, nonfinite_row = low / 10**1.2, high * 10**1.2
    return zero_row, nonfinite_row, (zero_row / 10**0.5, nonfinite_row * 10**0.5)


def _label_special_rows(ax, zero_row: float, nonfinite_row: float, what: str) -> None:
    """Decade ticks between the rows for 0 and for non-finite values (at most 8), and those two rows named."""
    from matplotlib.ticker import NullLocator

    low, high = math.ceil(math.log10(zero_row) + 0.6), math.floor(math.log10(nonfinite_row) - 0.6)
    step = max(1, math.ceil((high - low + 1) / 8))
    decades = list(range(low, high + 1, step))
    ax.set_yticks([zero_row, *(10.0**k for k in decades), nonfinite_row],
                  ["0", *(f"$10^{{{k}}}$" for k in decades), what])
    ax.yaxis.set_minor_locator(NullLocator())
    for row in (zero_row, nonfinite_row):
        ax.axhline(row, color="#bbbbbb", lw=0.6, ls=":")
    for row in (zero_row * 10**0.6, nonfinite_row / 10**0.6):
        ax.axhline(row, color="#dddddd", lw=0.8)


def plot_errors_per_stage(report: DiffReport, path: Path) -> bool:
    """Largest absolute error per stage per engine (log); stages that went non-finite are marked. False if
    no engine has stages."""
    engines = [e for e in report.engines if e.stages]
    if not engines:
        return False
    plt = _pyplot()
    stages = list(dict.fromkeys(name for e in engines for name in e.stages))
    errors = [s.max_abs_err for e in engines for s in e.stages.values()]
    zero_row, nonfinite_row, ylim = _special_rows(errors, ())
    fig, ax = plt.subplots(figsize=(11, 3.4))
    colours = plt.get_cmap("tab10").colors
    for index, engine in enumerate(engines):
        colour = colours[index % len(colours)]
        shift = 0.12 * (index - (len(engines) - 1) / 2)  # engines side by side, so equal marks stay apart
        xs, ys = [], []
        for name, stats in engine.stages.items():
            if stats.finite_pairs:
                xs.append(stages.index(name) + shift)
                ys.append(stats.max_abs_err if stats.max_abs_err > 0 else zero_row)
        ax.plot(xs, ys, marker="o", ms=5, lw=1.5, color=colour, label=f"{engine.name} ({engine.verdict})")
        bad = [stages.index(n) + shift for n, s in engine.stages.items() if s.engine_nonfinite or s.ref_nonfinite]
        ax.scatter(bad, [nonfinite_row] * len(bad), marker="X", s=70, color=NONFINITE_COLOUR, zorder=3,
                   edgecolors=colour, linewidths=1.2)
    ax.set_yscale("log")
    ax.set_ylim(*ylim)
    _label_special_rows(ax, zero_row, nonfinite_row, "non-finite")
    ax.set_xticks(range(len(stages)), stages, rotation=25, ha="right", fontsize=8)
    ax.set_xlim(-0.5, len(stages) - 0.5)
    ax.set_ylabel("largest absolute error")
    ax.grid(axis="y", color="#eeeeee", lw=0.6)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=8, frameon=False, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _stage_runs(nodes: list[NodeRange]) -> list[tuple[str, int, int]]:
    """(stage, first, last) for each run of consecutive tensors in one stage."""
    runs = []
    for position, node in enumerate(nodes):
        stage = node.stage or "unassigned"
        if runs and runs[-1][0] == stage:
            runs[-1] = (stage, runs[-1][1], position)
        else:
            runs.append((stage, position, position))
    return runs


def _spread(ideal: list[float], widths: list[float], low: float, high: float) -> list[float]:
    """Centres near ``ideal`` (ascending) for boxes of ``widths`` that neither overlap nor leave [low, high]."""
    centres = list(ideal)
    for i in range(len(centres)):
        floor = low + widths[i] / 2 if i == 0 else centres[i - 1] + (widths[i - 1] + widths[i]) / 2
        centres[i] = max(centres[i], floor)
    for i in reversed(range(len(centres))):
        ceiling = high - widths[i] / 2 if i == len(centres) - 1 else centres[i + 1] - (widths[i + 1] + widths[i]) / 2
        centres[i] = min(centres[i], ceiling)
    return centres


def _short(name: str, limit: int = 34) -> str:
    return name if len(name) <= limit else name[: limit // 2 - 1] + "…" + name[-(limit // 2 - 1):]


def plot_magnitudes_per_tensor(engine: EngineResult, path: Path) -> list[Offender]:
    """fp32 and engine largest magnitude per compared tensor, in topological order; returns the offenders
    it names (the origin is named too, when node level found one)."""
    figure = _MagnitudeFigure(_pyplot(), engine)
    figure.shade_stages()
    figure.plot_magnitudes()
    found = offenders(engine)
    figure.name_tensors(found)
    figure.save(path)
    return found


class _MagnitudeFigure:
    """The per-tensor figure: the names above, the magnitudes on a log axis, the stages in a strip below."""

    def __init__(self, plt, engine: EngineResult):
        self.plt, self.engine = plt, engine
        self.nodes = nodes = list(engine.nodes.values())
        limits = PRECISION_LIMITS.get(engine.precision)
        values = [v for n in nodes for v in (n.fp32_abs_max, n.engine_abs_max)]
        finite_values = [v for v in values if v > 0] or [1.0]
        self.drawn_limits = []
        if limits is not None:
            low, high = min(finite_values) / 10**LIMIT_LINE_DECADES, max(finite_values) * 10**LIMIT_LINE_DECADES
            self.drawn_limits = [(value, label) for value, label in
                                 ((limits[0], f"{engine.precision} largest finite {limits[0]:.6g}"),
                                  (limits[1], f"{engine.precision} smallest normal {limits[1]:.2g}"))
                                 if low <= value <= high]
        self.zero_row, self.nonfinite_row, self.ylim = _special_rows(values, tuple(v for v, _ in self.drawn_limits))

        self.fig = fig = plt.figure(figsize=(11, 5.6))
        grid = fig.add_gridspec(3, 1, height_ratios=[1.0, 3.6, 0.28], hspace=0.04, left=AXES_LEFT, right=AXES_RIGHT,
                                top=0.99, bottom=0.15)
        self.labels_ax, self.ax, self.strip = (fig.add_subplot(grid[0]), fig.add_subplot(grid[1]),
                                               fig.add_subplot(grid[2]))
        self.xlim = (-0.5, len(nodes) - 0.5)
        for axis in (self.labels_ax, self.ax, self.strip):
            axis.set_xlim(*self.xlim)
        self.axes_width_in = fig.get_figwidth() * (AXES_RIGHT - AXES_LEFT)
        self.colour_of: dict[str, str] = {}
        self.unlabelled: list[str] = []  # stages too narrow for their name in the strip: named in the legend

    def shade_stages(self) -> None:
        """Each run of one stage's tensors shaded behind the data and in the strip, named where it fits."""
        from matplotlib.ticker import MaxNLocator

        nodes, ax, strip, labels_ax = self.nodes, self.ax, self.strip, self.labels_ax
        stages = list(dict.fromkeys(node.stage or "unassigned" for node in nodes))
        colour_of = self.colour_of
        colour_of.update({stage: STAGE_COLOURS[i % len(STAGE_COLOURS)] for i, stage in enumerate(stages)})
        colour_of["unassigned"] = UNASSIGNED_COLOUR
        per_tensor_in = self.axes_width_in / max(len(nodes), 1)
        widest = {}
        for stage, first, last in _stage_runs(nodes):
            ax.axvspan(first - 0.5, last + 0.5, color=colour_of[stage], alpha=0.45, lw=0, zorder=0)
            strip.axvspan(first - 0.5, last + 0.5, color=colour_of[stage], lw=0)
            if stage not in widest or last - first > widest[stage][1] - widest[stage][0]:
                widest[stage] = (first, last)
        for stage, (first, last) in widest.items():
            if (last - first + 1) * per_tensor_in >= len(stage) * LABEL_FONT * 0.62 / 72:
                strip.text((first + last) / 2, 0.5, stage, ha="center", va="center", fontsize=LABEL_FONT)
            else:
                self.unlabelled.append(stage)
        strip.set_yticks([])
        strip.set_xlabel("compared tensor, in the fp32 graph's topological order (shading: model stage)", fontsize=8)
        strip.tick_params(axis="x", labelsize=7)
        strip.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(axis="x", labelbottom=False)
        for spine in (*labels_ax.spines.values(), *strip.spines.values()):
            spine.set_visible(False)
        labels_ax.axis("off")
        labels_ax.set_ylim(0.0, 1.0)

    def plot_magnitudes(self) -> None:
        """fp32 as a line, the engine as dots, non-finite values on their row, the precision's limits."""
        ax, nodes, engine = self.ax, self.nodes, self.engine
        zero_row, nonfinite_row = self.zero_row, self.nonfinite_row
        xs = range(len(nodes))
        ax.plot(xs, [n.fp32_abs_max if n.fp32_abs_max > 0 else zero_row for n in nodes], color=FP32_COLOUR, lw=1.3,
                label="fp32", zorder=2)
        finite = [(i, n.engine_abs_max if n.engine_abs_max > 0 else zero_row) for i, n in enumerate(nodes)
                  if not n.engine_nonfinite_inputs]
        ax.scatter([i for i, _ in finite], [v for _, v in finite], s=9, color=ENGINE_COLOUR, zorder=3,
                   label=engine.precision if engine.precision != "fp32" else engine.name)
        nonfinite = [i for i, n in enumerate(nodes) if n.engine_nonfinite_inputs]
        ax.scatter(nonfinite, [nonfinite_row] * len(nonfinite), marker="x", s=16, color=NONFINITE_COLOUR, zorder=3,
                   label=f"non-finite in {engine.precision}")
        fp32_bad = [i for i, n in enumerate(nodes) if n.fp32_nonfinite_inputs]
        if fp32_bad:
            ax.scatter(fp32_bad, [nonfinite_row] * len(fp32_bad), marker="+", s=30, color="black", zorder=3,
                       label="non-finite in fp32")
        for value, label in self.drawn_limits:
            ax.axhline(value, color=LIMIT_COLOUR, lw=1.0, ls="--", zorder=1)
            ax.text(self.xlim[1], value, label + " ", ha="right", va="bottom", fontsize=LABEL_FONT,
                    color=LIMIT_COLOUR)
        ax.set_yscale("log")
        ax.set_ylim(*self.ylim)
        _label_special_rows(ax, zero_row, nonfinite_row, "inf/NaN")
        ax.set_ylabel("largest |value| over the inputs")
        ax.grid(axis="y", color="#ffffff", lw=0.6, alpha=0.6)
        ax.spines[["top", "right"]].set_visible(False)

    def name_tensors(self, found: list[Offender]) -> None:
        """The origin and ``found`` named above the plot, spread so that they never overlap, each with a line
        to its tensor."""
        ax, nodes, origin = self.ax, self.nodes, self.engine.origin
        named = []
        if origin is not None:
            position = next((i for i, n in enumerate(nodes) if n.tensor == origin.tensor), None)
            if position is not None:
                ax.axvline(position, color=NONFINITE_COLOUR, lw=1.2, zorder=1)
                cause = origin.cause if origin.kind is NonfiniteKind.PRECISION else "already in fp32"
                named.append((position, f"first non-finite: {_short(origin.node)}\n{origin.op_type}, {cause}", True))
        named += [(o.position, f"{_short(o.node.node)} ({o.node.op_type})\n{o.reason}", False) for o in found]
        named.sort()
        rows = ([], [])
        for index, item in enumerate(named):
            rows[index % 2].append(item)
        for row, y in zip(rows, (0.74, 0.26)):
            self._name_row(row, y)

    def _name_row(self, row: list[tuple[int, str, bool]], y: float) -> None:
        """One row of names at height ``y`` of the names' axes."""
        xlim, ylim, zero_row = self.xlim, self.ylim, self.zero_row
        data_per_inch = (xlim[1] - xlim[0]) / self.axes_width_in
        widths = [(max(map(len, text.split("\n"))) * LABEL_FONT * 0.6 / 72 + 0.12) * data_per_inch
                  for _, text, _ in row]
        centres = _spread([p for p, _, _ in row], widths, *xlim)
        for (position, text, is_origin), centre in zip(row, centres):
            colour = NONFINITE_COLOUR if is_origin else "#333333"
            self.labels_ax.text(centre, y, text, ha="center", va="center", fontsize=LABEL_FONT, color=colour,
                                zorder=3, fontweight="bold" if is_origin else "normal", linespacing=1.25,
                                bbox={"boxstyle": "round,pad=0.3", "fc": "white",
                                      "ec": colour if is_origin else "#bbbbbb", "lw": 1.0})
            # The leader runs behind the labels (lower zorder) from the box to the tensor's fp32 value.
            self.labels_ax.plot([centre, position], [y, 0.0], color=colour, lw=0.7, zorder=1)
            node = self.nodes[position]
            target = node.fp32_abs_max if node.fp32_abs_max > 0 else zero_row
            self.ax.plot([position, position], [target, ylim[1]], color=colour, lw=0.7, zorder=1.5)
            self.ax.scatter([position], [target], s=42, facecolors="none", edgecolors=colour, lw=1.3, zorder=4)

    def save(self, path: Path) -> None:
        """The legend (with the stages the strip could not name) below, then the file."""
        from matplotlib.patches import Patch

        handles, texts = self.ax.get_legend_handles_labels()
        handles += [Patch(color=self.colour_of[s]) for s in self.unlabelled]
        texts += [f"stage {s}" for s in self.unlabelled]
        self.fig.legend(handles, texts, loc="lower center", ncol=min(len(texts), 6), fontsize=8, frameon=False,
                        bbox_to_anchor=(0.5, 0.0))
        self.fig.savefig(path, dpi=100)
        self.plt.close(self.fig)
