"""Docs work offline: no page in docs/ loads a script or stylesheet from the network, and every chart script
draws a static PNG (matplotlib, no browser, no CDN).  Fast: fake inputs, nothing trained."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


class _External(HTMLParser):
    """Collects `<script src=…>`, `<link href=…>` (stylesheets, preloads, fonts) and `@import url(…)` that reach
    a host (http://, https:// or protocol-relative //)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"script": "src", "link": "href"}.get(tag)
        for name, value in attrs:
            if name == wanted and value and re.match(r"\s*(https?:)?//", value, re.I):
                self.found.append(f"<{tag} {name}={value}>")

    def handle_data(self, data: str) -> None:
        self.found += [f"@import {m}" for m in re.findall(r"@import\s+(?:url\()?\s*['\"]?((?:https?:)?//[^'\")\s]+)",
                                                          data, re.I)]


def external_refs(html: str) -> list[str]:
    parser = _External()
    parser.feed(html)
    parser.close()
    return parser.found


def test_the_checker_catches_a_cdn_script_and_passes_inline_ones():
    cdn = '<html><head><script charset="utf-8" src="https://cdn.plot.ly/plotly-3.0.1.min.js"></script></head></html>'
    assert external_refs(cdn) == ["<script src=https://cdn.plot.ly/plotly-3.0.1.min.js>"]
    assert external_refs('<link rel="stylesheet" href="//fonts.googleapis.com/css?family=X">')
    assert external_refs("<style>@import url('https://fonts.googleapis.com/css2?family=X');</style>")
    inline = ('<script>var s = "<script src=https://x>";</script><link rel="icon" href="favicon.png">'
              '<a href="https://example.org">a link, not a load</a><img src="chart.png">')
    assert external_refs(inline) == []


def test_docs_html_loads_nothing_from_the_network():
    pages = sorted((ROOT / "docs").rglob("*.htm*"))
    loads = {p.relative_to(ROOT).as_posix(): external_refs(p.read_text(errors="replace")) for p in pages}
    assert {page: refs for page, refs in loads.items() if refs} == {}


def test_no_chart_writer_asks_for_a_cdn():
    """Every HTML/plotly chart writer in scripts/ and core/ embeds plotly.js or writes a PNG instead."""
    offenders = []
    for path in sorted([*(ROOT / "scripts").rglob("*.py"), *(ROOT / "core").rglob("*.py")]):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"include_plotlyjs\s*=\s*['\"](cdn|directory|https?:)|cdn\.plot\.ly", line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


# -- every chart script draws a PNG --------------------------------------------------------------------
FAKE_CURVES = {"tiny-elt": ([0.0, 0.1, 0.2, 0.3], [0.3, 0.05, 0.03, 0.025]),
               "tiny-dense": ([0.0, 0.1, 0.2, 0.3], [0.3, 0.04, 0.028, 0.021])}


def test_compute_chart_draws_a_png(tmp_path):
    chart = load_script("compute_chart")
    chart.draw_png(FAKE_CURVES, tmp_path / "sub" / "c.png")
    data = (tmp_path / "sub" / "c.png").read_bytes()
    assert data[:8] == PNG and 5_000 < len(data) < 300_000
    chart.draw_png(FAKE_CURVES, tmp_path / "again.png")
    assert (tmp_path / "again.png").read_bytes() == data  # no timestamp or version in it: reruns don't churn git


def test_compute_chart_main_writes_a_png_by_default_and_only_offline_html(tmp_path, monkeypatch, capsys):
    chart = load_script("compute_chart")
    assert chart.build_parser().parse_args([]).out == "docs/dit-training-compute.png"  # docs/ gets the PNG
    monkeypatch.setattr(chart, "ROOT", tmp_path)
    monkeypatch.setattr(chart, "curve", lambda folder, window: FAKE_CURVES[folder.name])
    for name in FAKE_CURVES:
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
        (tmp_path / "checkpoints" / name / "train_log.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    assert chart.main([*FAKE_CURVES]) == 0
    assert "| tiny-dense |" in capsys.readouterr().out
    written = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "docs").iterdir())
    assert written == ["docs/dit-training-compute.png"]
    assert (tmp_path / written[0]).read_bytes()[:8] == PNG

    assert chart.main([*FAKE_CURVES, "--out", "out/c.html"]) == 0  # interactive page: plotly.js inline
    html = (tmp_path / "out" / "c.html").read_text()
    assert external_refs(html) == [] and "tiny-dense" in html and len(html) > 1_000_000
    assert (tmp_path / "out" / "c.png").read_bytes()[:8] == PNG
    with pytest.raises(SystemExit):
        chart.main([*FAKE_CURVES, "--out", "c.svg"])


def test_adaptive_study_draws_a_png(tmp_path):
    study = load_script("adaptive_study")
    report = {"checkpoint": "tiny", "samples": 4, "seed": 0,
              "rows": [{"loops": n, "loop_applications": 8 * n, "accuracy": 0.2 * n} for n in (1, 2, 3, 4)],
              "adaptive_rows": [{"schedule": [2, 3, 4], "loop_applications": 20, "accuracy": 0.7},
                                {"adaptive": "agree:0.95", "loop_applications": 18, "accuracy": 0.75}]}
    study.chart(report, {"l_max_accuracy": 0.8}, tmp_path / "a" / "adaptive-loops.png")
    assert (tmp_path / "a" / "adaptive-loops.png").read_bytes()[:8] == PNG
