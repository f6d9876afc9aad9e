"""Charts that render offline: a DVC HTML template with Vega, Vega-Lite and Vega-Embed inlined, and
static SVG from Vega-Lite specs, both from the vl-convert-python wheel (no network, no browser).

    python -m sdd.plots template .dvc/plots/offline.html   # `make` set-up does this; .dvc/config points at it
    python -m sdd.plots check plots/index.html             # every chart drawn in a headless Chromium
    svg = to_svg({"mark": "bar", "data": {"values": rows}, "encoding": {...}})

`dvc plots show` writes HTML whose <script> tags load the three libraries from a CDN, so every
chart is blank on an air-gapped machine. The template here replaces them: DVC fills `{plot_divs}`
and, as the template has no `{scripts}` placeholder, adds no CDN tag. The bundle is generated from
the installed vl-convert-python (not kept in git: it is other projects' code); their licences are
quoted in the generated file.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from sdd.errors import InputError

LICENCES = """Bundled by vl-convert-python {version} (BSD-3-Clause, Copyright (c) 2021-2024 Jon Mease):
Vega, Vega-Lite and Vega-Embed, BSD-3-Clause, Copyright (c) 2015-2024 University of Washington
Interactive Data Lab (https://github.com/vega), and their dependencies under their own licences
(d3: ISC, Copyright 2010-2023 Mike Bostock). The BSD-3-Clause terms: redistribution and use in
source and binary forms, with or without modification, are permitted provided that the copyright
notice, this list of conditions and the disclaimer are retained; the software is provided "as is",
without warranty of any kind."""

PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot (offline)</title>
    <!--
{licences}
    -->
    <script type="text/javascript">
{bundle}
    </script>
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""

# What a page may reference without a network: the XML namespaces and schema ids the libraries
# compare strings with, and links in their error messages. Nothing else is allowed by the tests.
NON_FETCHED_URLS = re.compile(
    r"https?://(www\.w3\.org/|vega\.github\.io/schema/|vega\.github\.io/editor|github\.com/vega)"
)


def offline_template() -> str:
    """The DVC HTML template: DVC's own page with the libraries inlined (window.vegaEmbed etc.)."""
    import vl_convert

    version = importlib.metadata.version("vl-convert-python")
    snippet = "window.vegaEmbed = vegaEmbed; window.vega = vega; window.vegaLite = vegaLite;"
    bundle = vl_convert.javascript_bundle(snippet).replace("</script", "<\\/script")
    return PAGE.format(licences=LICENCES.format(version=version), bundle=bundle)


def network_urls(html: str) -> list[str]:
    """URLs in a page that a browser would fetch or follow (everything but NON_FETCHED_URLS)."""
    found = re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+\.[a-z]{2,}[^\s\"'`)<>]*", html)
    return [u for u in found if u.startswith(("http", "//")) and not NON_FETCHED_URLS.match(u)]


def to_svg(spec: dict) -> str:
    """A Vega-Lite spec (data inline) as a static SVG, rendered offline."""
    import vl_convert

    return vl_convert.vegalite_to_svg(spec, allowed_base_urls=[])  # data inline: no URL may load


# Injected after the libraries: every vegaEmbed call renders to SVG and is recorded; once all have
# settled, one <pre id="sdd-check"> holds, per chart div, its error or how many marks and data rows
# it drew. Script errors anywhere on the page are recorded too.
PROBE = """
<script type="text/javascript">
window.sddErrors = [];
window.addEventListener('error', e => window.sddErrors.push(String(e.message)));
const sddEmbed = window.vegaEmbed, sddCharts = [];
window.vegaEmbed = (el, spec, opts) => {
  const p = sddEmbed(el, spec, Object.assign({}, opts, {renderer: 'svg', actions: false}));
  sddCharts.push(p.then(r => {
    const rows = (r.view.getState({data: v => true, signals: v => false}).data) || {};
    const n = Object.values(rows).reduce((a, v) => a + (Array.isArray(v) ? v.length : 0), 0);
    const svg = document.querySelector(el + ' svg');
    const marks = svg ? svg.querySelectorAll('path, rect, circle, line, text').length : 0;
    return {chart: el.slice(1), marks: marks, rows: n, error: null};
  }, e => ({chart: el.slice(1), marks: 0, rows: 0, error: String(e)})));
  return p;
};
window.addEventListener('load', () => Promise.all(sddCharts).then(charts => {
  const pre = document.createElement('pre');
  pre.id = 'sdd-check';
  pre.textContent = JSON.stringify({charts: charts, errors: window.sddErrors});
  document.body.appendChild(pre);
}));
</script>
"""


def browser() -> str | None:
    """A Chromium (or Chrome) on PATH, or None."""
    names = ("chromium", "chromium-browser", "google-chrome", "chrome")
    return next((found for name in names if (found := shutil.which(name))), None)


def check_page(page: Path, executable: str, timeout: float = 120) -> dict:
    """Load a `dvc plots show` page in headless Chromium with no network and report, per chart,
    its error or the SVG marks and data rows it drew, and any script error on the page."""
    html = page.read_text(encoding="utf-8")
    at = html.find("</script>", html.find("window.vegaEmbed"))
    if at < 0:
        raise InputError(
            f"{page}: no inlined vegaEmbed; write it with the offline template: "
            "dvc plots show --html-template .dvc/plots/offline.html"
        )
    at += len("</script>")
    with tempfile.TemporaryDirectory() as tmp:
        probed = Path(tmp) / "page.html"
        probed.write_text(html[:at] + PROBE + html[at:], encoding="utf-8")
        out = subprocess.run(
            [executable, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             f"--user-data-dir={tmp}/profile", "--proxy-server=127.0.0.1:9",  # nothing may load
             "--virtual-time-budget=60000", "--dump-dom", probed.as_uri()],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
    found = re.search(r'<pre id="sdd-check">(.*?)</pre>', out.stdout, re.S)
    if not found:
        raise RuntimeError(f"{page}: the page never finished drawing in {executable}: {out.stderr[-2000:]}")
    import html as entities

    return json.loads(entities.unescape(found.group(1)))


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[0] not in ("template", "check"):
        sys.exit("usage: python -m sdd.plots template <out.html> | check <dvc plots page.html>")
    out = Path(argv[1])
    if argv[0] == "check":
        executable = browser()
        if executable is None:
            sys.exit("no Chromium on PATH (apt-get install chromium)")
        result = check_page(out, executable)
        bad = [c for c in result["charts"] if c["error"] or not c["marks"]]
        for c in result["charts"]:
            print(f"{c['chart']}: " + (c["error"] or f"{c['marks']} marks, {c['rows']} data rows"))
        for error in result["errors"]:
            print(f"script error: {error}")
        sys.exit(1 if bad or result["errors"] else 0)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(offline_template(), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
