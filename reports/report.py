"""Render the analysis result: ``report.json`` (contract: compiler/schema/report.schema.json), report.md, report.html.

The numbers come from :func:`compiler.analysis.phases.analyze`; this module only adds the schema version
and the emission facts, makes the dict JSON-safe and writes the files.

Everything in the JSON is a function of the config: no timestamps, wall times or absolute paths,
so the same config gives the same bytes.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import sympy
from reports.markdown import render_markdown
from reports.html import render_html


SCHEMA_VERSION = "1.0"
TOOL = {"name": "rooftop", "version": "0.1.0"}


def build_report(result: Mapping[str, Any], emit_info: Mapping[str, Any]) -> dict[str, Any]:
    """report.json: the analysis result (compiler/analysis/phases.py) with the schema version, the tool
    and what emission did, made JSON-safe."""
    emit = {k: v for k, v in emit_info.items() if k != "path"}
    if "path" in emit_info:
        emit["file"] = emit_info["path"]
    report = {"schema_version": SCHEMA_VERSION, "tool": dict(TOOL), **result, "emit": emit}
    return _clean(report)


def _clean(x):
    """JSON-safe: numpy scalars to Python, sympy numbers to float, NaN to None."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        f = float(x)
        return f if np.isfinite(f) else None
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, sympy.Basic):
        return float(x) if x.is_number else str(x)
    return x


def write_reports(report: Mapping, out_dir: str, *, html: bool = True) -> list[str]:
    files = []
    _write(os.path.join(out_dir, "report.json"), json.dumps(report, indent=1) + "\n")
    files.append("report.json")
    _write(os.path.join(out_dir, "report.md"), render_markdown(report))
    files.append("report.md")
    if html:
        _write(os.path.join(out_dir, "report.html"), render_html(report))
        files.append("report.html")
    return files


def _write(path: str, text: str):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
