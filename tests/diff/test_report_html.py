"""brr-diff's report.html as a person sees it: rendered by headless Chromium (Debian's ``chromium``), the
page of a planted fp16 fault must lead with the origin sentence, hold real tables and show both figures,
and the per-tensor figure must name the tensors at risk. Checked on the screenshot's pixels and on the
DOM Chromium built, not only on the HTML text.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from planted_nets import PLANTED, CosineNet, diff, export_pair

from brr.diff import write_report
from brr.diff.plots import FP32_COLOUR, offenders
from brr.diff.report import PLOT_FILE, SCHEMA_PATH, magnitudes_file, origin_sentences
from brr.diff.results import PRECISION_LIMITS
from brr.diff.verdict import Verdict

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium package is not installed "
                                                              "(apt-get install chromium; .ci/run installs it)")
WIDTH, HEIGHT = 1280, 4000
BANNER_RGB = (0xFD, 0xEC, 0xEA)  # .banner.bad's background in templates/report.html.j2
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Element:
    def __init__(self, tag: str, attrs: dict):
        self.tag, self.attrs, self.children = tag, attrs, []

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def iter(self, tag: str | None = None):
        for child in self.children:
            if isinstance(child, Element):
                if tag is None or child.tag == tag:
                    yield child
                yield from child.iter(tag)

    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())


class TreeBuilder(HTMLParser):
    """The DOM as Chromium serialised it, as a tree of ``Element``s."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        element = Element(tag, dict(attrs))
        self.stack[-1].children.append(element)
        if tag not in VOID:
            self.stack.append(element)

    def handle_endtag(self, tag):
        while len(self.stack) > 1 and self.stack.pop().tag != tag:
            pass

    def handle_data(self, data):
        self.stack[-1].children.append(data)


def parse(html: str) -> Element:
    builder = TreeBuilder()
    builder.feed(html)
    return builder.root


def chromium(page: Path, *arguments: str) -> str:
    result = subprocess.run([CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
                             f"--user-data-dir={page.parent / 'chromium-profile'}", *arguments, page.as_uri()],
                            capture_output=True, text=True, timeout=180, check=True)
    return result.stdout


def rows(table: Element) -> list[list[str]]:
    return [[" ".join(cell.text().split()) for cell in row.children if isinstance(cell, Element)]
            for row in table.iter("tr")]


def near(pixels: np.ndarray, rgb, tolerance: int = 3) -> np.ndarray:
    return (np.abs(pixels[..., :3].astype(int) - np.array(rgb)) <= tolerance).all(axis=-1)


@pytest.fixture(scope="module")
def planted():
    return {name: export_pair(factory()) for name, (factory, _, _) in PLANTED.items()}


@pytest.fixture(scope="module")
def softplus_report(planted, tmp_path_factory):
    """A planted fp16 overflow whose NaN a later node hides: the page's hardest sentence."""
    report = diff(*planted["softplus_exp"])
    directory = tmp_path_factory.mktemp("html")
    return report, write_report(report, directory)


@needs_chromium
def test_page_in_chromium_leads_with_the_origin_and_holds_tables_and_figures(softplus_report):
    report, paths = softplus_report
    engine = report.engines[0]
    dom = parse(chromium(paths["html"], "--dump-dom"))
    body = next(dom.iter("body"))

    # The title carries the verdict; the first paragraph after it is the origin sentence.
    elements = list(body.iter())
    title = next(i for i, e in enumerate(elements) if e.tag == "h1")
    assert report.verdict in elements[title].text()
    first_paragraph = next(e for e in elements[title:] if e.tag == "p")
    assert " ".join(first_paragraph.text().split()) == origin_sentences(engine)[0].replace("`", "")
    assert "node_exp" in first_paragraph.text() and "Hidden downstream by node_pow_1" in first_paragraph.text()
    assert [c.text() for c in first_paragraph.iter("code")][:2] == ["node_exp", "edge_weights"]

    # Real tables, not Markdown: the engines, each engine's stages, the named tensors.
    text = body.text()
    assert "## brr-diff" not in text and "|---|" not in text and "**" not in text
    engines = rows(next(t for t in body.iter("table") if t.attrs.get("id") == "engines"))
    assert "first stage non-finite" in engines[0] and "first stage beyond tolerance" in engines[0]
    assert len(engines) == 2 and engines[1][:4] == [engine.name, "fp16", "0.01 / 0.01", "nonfinite_precision"]
    assert engines[1][engines[0].index("first stage non-finite")] == engine.first_nonfinite_stage
    stages = rows(next(t for t in body.iter("table") if "stages" in t.classes()))
    assert [r[0].split()[0] for r in stages[1:]] == list(engine.stages)
    marked = rows(next(t for t in body.iter("table") if "marked" in t.classes()))
    assert marked[1][0] == "node_exp" and marked[1][-1] == "first non-finite (overflow)"
    assert [r[0] for r in marked[2:]] == [o.node.node for o in offenders(engine)]
    # Monospace only where it belongs: code spans and the next-step commands.
    (pre,) = body.iter("pre")
    assert pre.text() == "\n".join(report.next_steps())

    # Both figures embedded, byte for byte the PNGs written beside the page.
    images = {i.attrs["alt"]: i.attrs["src"] for i in body.iter("img")}
    assert len(images) == 2
    expected = [paths["plot"], paths[f"magnitudes:{engine.name}"]]
    for src, path in zip(images.values(), expected):
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]) == path.read_bytes()


@needs_chromium
def test_screenshot_shows_the_banner_on_top_and_the_figures_below(softplus_report):
    _, paths = softplus_report
    shot = paths["html"].with_name("screenshot.png")
    chromium(paths["html"], f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}")
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape == (HEIGHT, WIDTH, 3)
    # Not blank: a page of text, tables and figures has many colours and much ink.
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500
    assert (pixels.sum(axis=-1) < 300).mean() > 0.002
    # The origin banner: rows of its colour wider than any pill of the same colour, near the top.
    banner = near(pixels, BANNER_RGB)
    banner_rows = np.flatnonzero(banner.sum(axis=1) > 600)
    assert banner_rows.size > 40 and banner_rows.min() < 200 and banner_rows.max() < 400
    # The figures rendered (the page's own CSS never uses the fp32 line's colour) and lie below it.
    fp32 = near(pixels, tuple(int(FP32_COLOUR[i:i + 2], 16) for i in (1, 3, 5)), tolerance=24)
    assert fp32.sum() > 300
    assert np.flatnonzero(fp32.any(axis=1)).min() > banner_rows.max()


def test_per_tensor_figure_names_the_tensors_at_risk(planted, tmp_path):
    """Over fp16's largest finite value in fp32 (overflow), or flushed to 0 (underflow): named, worst first;
    the origin is named apart, and a tensor fp16 holds comfortably never is."""
    largest, smallest_normal, _ = PRECISION_LIMITS["fp16"]
    engine = diff(*planted["cosine_norm"]).engines[0]
    named = offenders(engine)
    assert named and all(o.node.fp32_abs_max > largest for o in named)
    assert [o.node.fp32_abs_max for o in named] == sorted((o.node.fp32_abs_max for o in named), reverse=True)
    assert engine.origin.node not in [o.node.node for o in named]
    over = {n.node for n in engine.nodes.values() if n.fp32_abs_max > largest} - {engine.origin.node}
    assert {o.node.node for o in named} == over

    report = diff(*planted["zero_degree"], tmp_path=tmp_path)
    named = offenders(report.engines[0])
    assert named and all(0 < o.node.fp32_abs_max < smallest_normal and o.node.engine_abs_max == 0 for o in named)
    assert "unsqueeze" in {o.node.tensor for o in named}  # the degree the origin's Pow raises to -1/2
    assert (tmp_path / magnitudes_file(report.engines[0])).stat().st_size > 10_000



def test_clean_report_page_says_so_and_shows_how_close_each_tensor_came_to_the_limits(tmp_path):
    report = diff(*export_pair(CosineNet(scale=1.0)), tmp_path=tmp_path)
    page = parse((tmp_path / "report.html").read_text())
    (banner,) = [s for s in page.iter("section") if s.attrs.get("id") == "origin"]
    assert banner.classes() == {"banner", "ok"}
    assert " ".join(banner.text().split()) == "clean: every engine matches fp32 within its tolerance on every input."
    alts = [i.attrs["alt"] for i in page.iter("img")]
    assert alts[0] == "largest absolute error per stage and engine, log scale" and len(alts) == 2
    assert (tmp_path / PLOT_FILE).is_file() and not list(page.iter("pre"))
    assert report.verdict == "clean"
    # Every verdict has its banner and tone, and the schema knows them all, in order of severity.
    assert all(v.meaning and v.tone in {"ok", "neutral", "warn", "bad"} for v in Verdict)
    assert json.loads(SCHEMA_PATH.read_text())["$defs"]["verdict"]["enum"] == list(Verdict)
