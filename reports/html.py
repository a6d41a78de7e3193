"""report.html — one self-contained page: the content of report.md plus the figures.

The text comes from :func:`reports.markdown.document` (the same blocks report.md is written
from); the figures from :mod:`reports.plots`, embedded as base64 PNG. Inline CSS, no scripts,
no external assets: the file can be mailed, attached to a CI run or opened offline. The output
is a function of the report alone (no timestamps), so the same report gives the same bytes.
"""
from __future__ import annotations

import base64
import html
import re
import struct
from collections.abc import Mapping
from reports.markdown import document
from reports.plots import render_all

CSS = """
body{font:14px/1.45 -apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:#1b1b1b;margin:0;background:#fafafa}
main{max-width:1240px;margin:0 auto;padding:16px 24px 48px;background:#fff}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:3px}
h3{font-size:15px;margin:18px 0 6px}
p{margin:6px 0}
code{font:12px/1.3 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#f2f2f2;padding:0 3px;border-radius:3px}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:3px 14px;margin:8px 0}
dl.kv dt{font-weight:600}dl.kv dd{margin:0}
.scroll{overflow-x:auto}
table{border-collapse:collapse;margin:6px 0 10px;font-size:12.5px}
th,td{border:1px solid #ddd;padding:3px 7px;vertical-align:top}
th{background:#f3f3f3;text-align:left}
td.r,th.r{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr:nth-child(even) td{background:#fcfcfc}
figure{margin:12px 0 18px}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:12.5px;color:#555;margin-top:3px}
footer{margin-top:28px;font-size:12px;color:#777}
"""


def _inline(text: str) -> str:
    """Escape, then turn `code` spans into <code>."""
    out = html.escape(text, quote=False)
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", out)


def _png_size(png: bytes) -> tuple[int, int]:
    w, h = struct.unpack(">II", png[16:24])
    return w, h


def _figure(name: str, caption: str, png: bytes) -> str:
    w, h = _png_size(png)
    b64 = base64.b64encode(png).decode("ascii")
    return (f'<figure id="plot-{name}"><img alt="{html.escape(caption)}" width="{w}" height="{h}" '
            f'src="data:image/png;base64,{b64}"><figcaption>{_inline(caption)}</figcaption></figure>')


def _table(headers, rows, aligns) -> str:
    def cls(i):
        return ' class="r"' if i < len(aligns) and aligns[i] == "r" else ""
    head = "".join(f"<th{cls(i)}>{_inline(h)}</th>" for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f"<td{cls(i)}>{_inline(c)}</td>" for i, c in enumerate(row)) + "</tr>"
                   for row in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def render_html(r: Mapping, *, plots: Mapping[str, bytes] | None = None) -> str:
    """The page for report ``r``. ``plots`` (name → PNG bytes) defaults to rendering them all."""
    if plots is None:
        plots = render_all(r)
    blocks = document(r)
    title = blocks[0][1] if blocks and blocks[0][0] == "h1" else "rooftop report"
    parts = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{html.escape(title)}</title><style>{CSS.strip()}</style></head><body><main>"]
    for blk in blocks:
        kind = blk[0]
        if kind in ("h1", "h2", "h3"):
            parts.append(f"<{kind}>{_inline(blk[1])}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{_inline(blk[1])}</p>")
        elif kind == "kv":
            parts.append('<dl class="kv">' + "".join(f"<dt>{_inline(k)}</dt><dd>{_inline(v)}</dd>" for k, v in blk[1])
                         + "</dl>")
        elif kind == "table":
            parts.append(_table(blk[1], blk[2], blk[3]))
        elif kind == "plot":
            name, caption = blk[1], blk[2]
            if name in plots:
                parts.append(_figure(name, caption, plots[name]))
    tool = r.get("tool") or {}
    parts.append(f"<footer>{html.escape(str(tool.get('name', 'rooftop')))} {html.escape(str(tool.get('version', '')))}"
                 f" · report schema {html.escape(str(r.get('schema_version', '')))}</footer>")
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"
