"""Charts that render offline: a DVC HTML template with Vega, Vega-Lite and Vega-Embed inlined, and
static SVG from Vega-Lite specs, both from the vl-convert-python wheel (no network, no browser).

    python -m sdd.plots template .dvc/plots/offline.html   # `make` set-up does this; .dvc/config points at it
    svg = to_svg({"mark": "bar", "data": {"values": rows}, "encoding": {...}})

`dvc plots show` writes HTML whose <script> tags load the three libraries from a CDN, so every
chart is blank on an air-gapped machine. The template here replaces them: DVC fills `{plot_divs}`
and, as the template has no `{scripts}` placeholder, adds no CDN tag. The bundle is generated from
the installed vl-convert-python (not kept in git: it is other projects' code); their licences are
quoted in the generated file.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

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


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[0] != "template":
        sys.exit("usage: python -m sdd.plots template <out.html>")
    out = Path(argv[1])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(offline_template(), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
