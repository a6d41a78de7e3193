"""report.html — self-contained page."""
from __future__ import annotations

import html


def render_html(r) -> str:
    from reports.markdown import render_markdown
    return ("<!doctype html><html><head><meta charset='utf-8'><title>rooftop report</title></head><body><pre>"
            + html.escape(render_markdown(r)) + "</pre></body></html>\n")
