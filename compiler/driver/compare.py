"""``rooftop compare OLD NEW``: what changed between two report.json files, and is it a regression.

Prints, per phase and per op class, the predicted time and bytes of both reports, then latency,
memory, capacity and accuracy (when both reports measured the same metric), each with its relative
change. Exit codes (README): 0 no regression beyond ``--tolerance``; 3 at least one; 2 bad
input (a file missing, not JSON, or not a rooftop report).

What counts as a regression (``t`` = tolerance, a fraction; relative changes):

- gated totals, lower is better: phase ``time_s`` and ``bytes``, ``latency.ttft_s`` / ``tpot_s``
  / ``e2e_s``, ``memory.total_bytes`` — regress when ``new > old·(1 + t)``;
- higher is better: ``latency.throughput_tok_s``, ``capacity.max_batch`` (and ``max_batch_slo``
  when both have it), ``accuracy.value`` — regress when ``new < old·(1 − t)``;
- an op class regresses when its own increase of time (or bytes) exceeds ``t`` × the OLD phase's
  total time (bytes): a class may double without mattering if it is a sliver of the phase, and a
  class that grows by more than the tolerance of the whole phase is named even when another class
  shrank to compensate.

Everything else (FLOPs, byte splits, weights / KV / activation bytes) is shown, not gated.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from compiler.errors import EXIT_BAD_INPUT, EXIT_GATE, EXIT_OK, RooftopError
from compiler import schema


class CompareInputError(RooftopError):
    """A report given to ``rooftop compare`` is missing, unreadable or not a rooftop report."""


@dataclass
class Row:
    section: str          # "phase prefill", "class prefill/attention", "latency", ...
    metric: str           # "time_s", "ttft_s", ...
    unit: str             # "s", "B", "FLOP", "tok/s", "" (count), metric name for accuracy
    old: float | None
    new: float | None
    direction: str        # "lower" | "higher" (better) | "info"
    gated: bool
    rel: float | None = None          # (new - old) / old
    regression: bool = False
    why: str = ""

    @property
    def key(self) -> str:
        return f"{self.section}.{self.metric}"


@dataclass
class Comparison:
    old_path: str
    new_path: str
    tolerance: float
    notes: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)

    @property
    def regressions(self) -> list[Row]:
        return [r for r in self.rows if r.regression]

    @property
    def exit_code(self) -> int:
        return EXIT_GATE if self.regressions else EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        return {"old": self.old_path, "new": self.new_path, "tolerance": self.tolerance,
                "notes": self.notes, "exit_code": self.exit_code,
                "regressions": [r.key for r in self.regressions],
                "rows": [asdict(r) | {"key": r.key} for r in self.rows]}


# ------------------------------------------------------------------------------------------------
# loading

def load_report(path: str | Path) -> dict[str, Any]:
    """A rooftop report.json (or a run directory holding one), schema-checked."""
    p = Path(path)
    if p.is_dir():
        p = p / "report.json"
    if not p.is_file():
        raise CompareInputError(
            f"{str(path)!r} does not exist (or is a directory without report.json). Give rooftop compare "
            f"two report.json files (or run directories), e.g. rooftop compare baseline/report.json "
            f"outputs/llama_tiny/a100_80g/<run>/report.json.")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CompareInputError(f"{str(p)!r} is not a JSON file ({e}). rooftop compare reads the "
                                f"report.json a rooftop run writes; check the path.") from None
    problems = schema.errors(doc, "report")
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise CompareInputError(
            f"{str(p)!r} is not a rooftop report: it does not match the report schema "
            f"(compiler/schema/report.schema.json): {shown}. Compare two report.json files written "
            f"by rooftop (a report from an older, incompatible schema needs to be regenerated).")
    return doc


# ------------------------------------------------------------------------------------------------
# the diff

def _get(doc: Mapping, dotted: str):
    cur: Any = doc
    for k in dotted.split("."):
        if not isinstance(cur, Mapping) or k not in cur:
            return None
        cur = cur[k]
    return cur if isinstance(cur, (int, float)) and not isinstance(cur, bool) else None


def _rel(old, new) -> float | None:
    if old is None or new is None:
        return None
    if old == 0:
        return 0.0 if new == 0 else math.copysign(math.inf, new)
    return (new - old) / abs(old)


def _judge(row: Row, tol: float, budget: float | None = None) -> Row:
    row.rel = _rel(row.old, row.new)
    if not row.gated or row.old is None or row.new is None:
        return row
    if budget is not None:                                    # op class: increase vs the phase total
        inc = row.new - row.old
        if inc > tol * budget:
            row.regression = True
            row.why = f"+{_fmt(inc, row.unit)} is more than {tol:.1%} of the old phase total ({_fmt(budget, row.unit)})"
        return row
    if row.direction == "lower" and row.new > row.old * (1 + tol):
        row.regression, row.why = True, f"{_pct(row.rel)} > +{tol:.1%}"
    elif row.direction == "higher" and row.new < row.old * (1 - tol):
        row.regression, row.why = True, f"{_pct(row.rel)} < -{tol:.1%}"
    return row


def _by_class(phase: Mapping) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for o in phase.get("ops") or []:
        c = out.setdefault(str(o.get("class") or o.get("op")), {"time_s": 0.0, "bytes": 0.0})
        c["time_s"] += float(o["time_s"])
        c["bytes"] += float(o["bytes"])
    return out


def compare_reports(old: Mapping, new: Mapping, tolerance: float = 0.05,
                    old_path: str = "OLD", new_path: str = "NEW") -> Comparison:
    """The row-by-row diff of two (schema-valid) reports."""
    cmp = Comparison(old_path, new_path, tolerance)
    tol = tolerance
    add: Callable[..., Row] = lambda *a, budget=None: cmp.rows.append(_judge(Row(*a), tol, budget))  # noqa: E731

    for what in ("model", "hardware"):
        a, b = old[what].get("name"), new[what].get("name")
        if a != b:
            cmp.notes.append(f"different {what}: {a} → {b}")
    if dict(old["workload"]) != dict(new["workload"]):
        cmp.notes.append(f"different workload: {_wl(old)} → {_wl(new)}")

    phases = [p for p in ("prefill", "decode", "verify") if p in old["phases"] or p in new["phases"]]
    phases += sorted((set(old["phases"]) | set(new["phases"])) - set(phases))
    ko, kn = _kind(old), _kind(new)
    if ko != kn:
        cmp.notes.append(f"different kinds of model: the old report is {ko}, the new one {kn}")
    for ph in phases:
        po, pn = old["phases"].get(ph), new["phases"].get(ph)
        if pn is None and po is not None:      # what the baseline costs must not disappear
            cmp.rows.append(Row(f"phase {ph}", "time_s", "s", float(po["time_s"]), None, "lower", True,
                                rel=None, regression=True,
                                why=f"the phase {ph!r} is missing from the new report ({kn})"))
            continue
        if po is None:
            cmp.notes.append(f"phase {ph} is only in the new report; not compared")
            continue
        sec = f"phase {ph}"
        add(sec, "time_s", "s", po["time_s"], pn["time_s"], "lower", True)
        add(sec, "bytes", "B", po["bytes"], pn["bytes"], "lower", True)
        add(sec, "flops", "FLOP", po["flops"], pn["flops"], "lower", False)
        for part in ("weights", "activations", "kv"):
            add(sec, f"bytes.{part}", "B", _get(po, f"bytes_split.{part}"), _get(pn, f"bytes_split.{part}"), "lower", False)
        add(sec, "activation_peak_bytes", "B", _get(po, "activation_peak_bytes"), _get(pn, "activation_peak_bytes"), "lower", False)
        co, cn = _by_class(po), _by_class(pn)
        for cls in sorted(set(co) | set(cn)):
            a, b = co.get(cls, {"time_s": 0.0, "bytes": 0.0}), cn.get(cls, {"time_s": 0.0, "bytes": 0.0})
            csec = f"class {ph}/{cls}"
            add(csec, "time_s", "s", a["time_s"], b["time_s"], "lower", True, budget=float(po["time_s"]))
            add(csec, "bytes", "B", a["bytes"], b["bytes"], "lower", True, budget=float(po["bytes"]))

    for m, unit, d, gated in (("ttft_s", "s", "lower", True), ("tpot_s", "s", "lower", True),
                              ("e2e_s", "s", "lower", True), ("throughput_tok_s", "tok/s", "higher", True)):
        add("latency", m, unit, _get(old, f"latency.{m}"), _get(new, f"latency.{m}"), d, gated)
    for m, gated in (("weights_bytes", False), ("kv_cache_bytes", False), ("activation_peak_bytes", False),
                     ("total_bytes", True)):
        add("memory", m, "B", _get(old, f"memory.{m}"), _get(new, f"memory.{m}"), "lower", gated)
    add("capacity", "max_batch", "", _get(old, "capacity.max_batch"), _get(new, "capacity.max_batch"), "higher", True)
    if _get(old, "capacity.max_batch_slo") is not None and _get(new, "capacity.max_batch_slo") is not None:
        add("capacity", "max_batch_slo", "", _get(old, "capacity.max_batch_slo"), _get(new, "capacity.max_batch_slo"),
            "higher", True)

    ao, an = old.get("accuracy") or None, new.get("accuracy") or None
    if ao and an:
        if ao.get("metric") != an.get("metric"):
            cmp.notes.append(f"accuracy metrics differ ({ao.get('metric')} → {an.get('metric')}); not compared")
        else:
            add("accuracy", str(ao.get("metric", "value")), "", _get(ao, "value"), _get(an, "value"), "higher", True)
    elif ao or an:
        cmp.notes.append(f"accuracy is only measured in the {'new' if an else 'old'} report; not compared")
    # drop rows where neither side has a value (e.g. tpot_s of an encoder); a gated figure the old
    # report has and the new one lacks is a regression (it can no longer be checked)
    cmp.rows = [r for r in cmp.rows if not (r.old is None and r.new is None)]
    for r in cmp.rows:
        if r.gated and r.old is not None and r.new is None and not r.regression:
            r.regression, r.why = True, "missing from the new report"
    return cmp


def _kind(doc: Mapping) -> str:
    lat = doc.get("latency") or {}
    if lat.get("kind") == "encoder":
        return "an encoder (one forward pass per batch)"
    return "a generative model (prefill + decode)"


def _wl(doc: Mapping) -> str:
    w = doc["workload"]
    return f"B={w['batch']} prompt={w['prompt_len']} gen={w['gen_len']} ctx={w['context_len']}"


# ------------------------------------------------------------------------------------------------
# rendering

def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "—"
    if unit == "s":
        a = abs(v)
        return f"{v * 1e3:.4g} ms" if a >= 1e-4 or a == 0 else f"{v * 1e6:.4g} µs"
    if unit in ("B", "FLOP"):
        for scale, pre in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(v) >= scale:
                return f"{v / scale:.4g} {pre}{unit}"
        return f"{v:.4g} {unit}"
    if unit == "tok/s":
        return f"{v:.4g} tok/s"
    return f"{v:.4g}" if isinstance(v, float) and not float(v).is_integer() else f"{int(v)}"


def _pct(rel: float | None) -> str:
    if rel is None:
        return "—"
    if math.isinf(rel):
        return "new" if rel > 0 else "gone"
    return "0.0%" if abs(rel) < 5e-4 else f"{rel:+.1%}"


def render_text(cmp: Comparison, old: Mapping, new: Mapping) -> str:
    lines = [f"rooftop compare (tolerance {cmp.tolerance:.1%})",
             f"  old: {cmp.old_path}  [{old['model']['name']} on {old['hardware']['name']}, {_wl(old)}]",
             f"  new: {cmp.new_path}  [{new['model']['name']} on {new['hardware']['name']}, {_wl(new)}]"]
    lines += [f"  note: {n}" for n in cmp.notes]
    w = max((len(r.key) for r in cmp.rows), default=20)
    lines.append("")
    lines.append(f"  {'metric':<{w}}  {'old':>13}  {'new':>13}  {'change':>8}")
    last = None
    for r in cmp.rows:
        head = r.section.split()[0] + (r.section.split()[1].split("/")[0] if " " in r.section else "")
        if head != last and last is not None:
            lines.append("")
        last = head
        flag = "  REGRESSION" if r.regression else ("" if r.gated else "  (info)")
        lines.append(f"  {r.key:<{w}}  {_fmt(r.old, r.unit):>13}  {_fmt(r.new, r.unit):>13}  {_pct(r.rel):>8}{flag}")
    lines.append("")
    if cmp.regressions:
        lines.append(f"{len(cmp.regressions)} regression(s) beyond the tolerance of {cmp.tolerance:.1%}:")
        lines += [f"  - {r.key}: {_fmt(r.old, r.unit)} → {_fmt(r.new, r.unit)} ({r.why})" for r in cmp.regressions]
    else:
        lines.append(f"no regression beyond the tolerance of {cmp.tolerance:.1%}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# command line

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rooftop compare",
        description="Diff two rooftop report.json files (per phase, per op class, latency, memory, "
                    "capacity, accuracy). Exit 0: no regression beyond --tolerance; 3: a regression; "
                    "2: bad input.")
    p.add_argument("old", help="the accepted (baseline) report.json or its run directory")
    p.add_argument("new", help="the candidate report.json or its run directory")
    p.add_argument("--tolerance", default="0.05",
                   help="allowed relative worsening, a fraction (default 0.05 = 5%%)")
    p.add_argument("--json", dest="json_out", metavar="PATH", help="also write the diff as JSON to PATH")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; returns the exit code (never raises for bad input)."""
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)

    def error(message: str):
        raise CompareInputError(f"{message.rstrip('.')}. Usage: rooftop compare OLD NEW [--tolerance 0.05] "
                                f"[--json PATH] (OLD and NEW: report.json files or run directories).")

    parser.error = error              # type: ignore[method-assign]
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:           # --help
        return EXIT_OK if e.code in (None, 0) else EXIT_BAD_INPUT
    except CompareInputError as e:
        print(f"rooftop compare: error: {' '.join(str(e).split())}", file=sys.stderr)
        return e.exit_code
    try:
        try:
            tol = float(args.tolerance)
        except ValueError:
            tol = math.nan
        if not math.isfinite(tol) or tol < 0:
            raise CompareInputError(f"--tolerance={args.tolerance!r} is not a fraction ≥ 0; give the allowed "
                                    f"relative worsening, e.g. --tolerance 0.05 for 5 %.")
        old, new = load_report(args.old), load_report(args.new)
        if args.json_out:
            out = Path(args.json_out)
            if out.is_dir() or not out.parent.resolve().is_dir():
                raise CompareInputError(f"--json {args.json_out!r} cannot be written: "
                                        f"{'it is a directory' if out.is_dir() else 'its folder does not exist'}; "
                                        f"give a file path in an existing folder.")
    except CompareInputError as e:
        print(f"rooftop compare: error: {' '.join(str(e).split())}", file=sys.stderr)
        return e.exit_code
    cmp = compare_reports(old, new, tol, args.old, args.new)
    sys.stdout.write(render_text(cmp, old, new))
    if args.json_out:
        try:
            Path(args.json_out).write_text(json.dumps(cmp.to_dict(), indent=1) + "\n", encoding="utf-8")
        except OSError as e:
            print(f"rooftop compare: error: --json {args.json_out!r} cannot be written ({e.strerror or e}); the "
                  f"comparison above is complete. Give a file path you can write.", file=sys.stderr)
            return EXIT_BAD_INPUT
    return cmp.exit_code


__all__ = ["compare_reports", "load_report", "render_text", "main", "Comparison", "Row", "CompareInputError"]
