"""Offline charts: the DVC HTML template loads nothing from the network, and the SVG figures draw
a mark for every model."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from sdd import plots

REPO = Path(__file__).resolve().parents[1]


def plots_page(tmp_path: Path) -> Path:
    """`dvc plots show` of the repository's committed plots, written with the offline template."""
    template = tmp_path / "offline.html"
    subprocess.run([sys.executable, "-m", "sdd.plots", "template", str(template)], check=True, cwd=REPO)
    out = tmp_path / "plots"
    subprocess.run(
        ["dvc", "plots", "show", "--html-template", str(template), "-o", str(out)],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    return out / "index.html"


def test_dvc_plots_show_writes_a_page_that_loads_nothing_from_the_network(tmp_path):
    page = plots_page(tmp_path).read_text(encoding="utf-8")
    assert plots.network_urls(page) == []
    assert "cdn.jsdelivr" not in page and not re.search(r"<script[^>]+src=", page)
    assert "window.vegaEmbed=" in page and page.count("vegaEmbed('#") >= 3  # the libraries, then each chart
    assert "BSD-3-Clause" in page  # the bundled libraries' licences travel with them
    # the project's config points DVC at the generated template (written by the `make` set-up)
    assert "html_template = plots/offline.html" in (REPO / ".dvc" / "config").read_text()


def test_a_page_with_a_cdn_script_is_caught():
    assert plots.network_urls('<script src="https://cdn.jsdelivr.net/npm/vega@5"></script>') == [
        "https://cdn.jsdelivr.net/npm/vega@5"
    ]
    assert plots.network_urls('ns="http://www.w3.org/2000/svg"') == []


def test_svg_draws_one_mark_per_model_offline():
    rows = [
        {"model": m, "recovery": r, "low": r - 2, "high": r + 2} for m, r in (("pruned", 80), ("sft", 88), ("sdd", 91))
    ]
    spec = {
        "data": {"values": rows},
        "layer": [
            {
                "mark": "bar",
                "encoding": {
                    "y": {"field": "model", "type": "nominal"},
                    "x": {"field": "recovery", "type": "quantitative"},
                },
            },
            {
                "mark": "rule",
                "encoding": {
                    "y": {"field": "model", "type": "nominal"},
                    "x": {"field": "low", "type": "quantitative"},
                    "x2": {"field": "high"},
                },
            },
        ],
    }
    svg = plots.to_svg(spec)
    assert svg.startswith("<svg")
    bars = re.findall(r'aria-roledescription="bar"', svg)
    assert len(bars) == 3 and all(f">{m}<" in svg for m in ("pruned", "sft", "sdd"))


def chromium() -> str:
    found = plots.browser()
    if found is None:  # `make` set-up installs it where it can (apt-get as root)
        pytest.skip("no Chromium on PATH: apt-get install chromium")
    return found


def test_every_default_chart_draws_in_a_headless_browser(tmp_path):
    page = plots_page(tmp_path)
    result = plots.check_page(page, chromium())
    divs = re.findall(r'<div id = "([^"]+)">', page.read_text(encoding="utf-8"))
    assert len(divs) >= 7 and sorted(c["chart"] for c in result["charts"]) == sorted(divs)
    assert result["errors"] == []
    for chart in result["charts"]:
        assert chart["error"] is None and chart["marks"] > 10 and chart["rows"] > 0, chart


def test_the_browser_check_catches_a_chart_that_fails(tmp_path):
    page = plots_page(tmp_path)
    html = page.read_text(encoding="utf-8")
    first = re.search(r'<div id = "([^"]+)">', html)
    assert first
    at = first.end()
    broken = html[:at] + html[at:].replace('"mark":', '"mark": "no_such_mark", "unused":', 1)
    page.write_text(broken, encoding="utf-8")
    charts = {c["chart"]: c for c in plots.check_page(page, chromium())["charts"]}
    assert charts[first.group(1)]["error"] and charts[first.group(1)]["marks"] == 0
    assert all(c["error"] is None for name, c in charts.items() if name != first.group(1))
