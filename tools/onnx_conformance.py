"""ONNX conformance: the ONNX package's own backend node tests through rooftop.

Each node test (``onnx.backend.test.case.node``: a one-node model with its inputs and expected
outputs, the same cases the ``onnx/backend/test/data/node`` files are generated from) is written
to a file, imported with ``model=onnx``'s importer (``compiler.frontends.onnx_import``), emitted
again (``compiler.backend.emit``) and run in onnxruntime; the outputs are compared with the
expected ones (rtol 1e-3, atol 1e-5; 1e-2 / 1e-3 for 16-bit floats; integers, booleans and
strings exactly). With ``--opsets 17 23`` every test is also converted to each opset in the range
(``onnx.version_converter``) and run again, so an op is checked at every version exporters emit.

Outcomes per test: ``pass``; ``refused`` (rooftop's clean exit-2 message: an op or type it does
not import); ``fail`` (a wrong result or an error inside rooftop); ``skip`` (the test model itself
does not run in onnxruntime, or the conversion to that opset is impossible: nothing to compare).

    python tools/onnx_conformance.py                    # → docs/reference/onnx_conformance.md
    python tools/onnx_conformance.py --opsets 17 23     # every test at opsets 17..23 too
    python tools/onnx_conformance.py --ops Attention RotaryEmbedding --no-write
"""
from __future__ import annotations

import argparse
import collections
import datetime
import json
import logging
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RTOL, ATOL = 1e-3, 1e-5
RTOL_LOW, ATOL_LOW = 1e-2, 1e-3   # float16 / bfloat16 outputs


def cases(ops: list[str] | None = None):
    """(name, op_type, model, data_sets) of every ONNX node test (ai.onnx domain)."""
    from onnx.backend.test.case import node
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        tcs = node.collect_testcases(None)
    out = []
    for tc in tcs:
        nodes = list(tc.model.graph.node)
        main = [n for n in nodes if n.op_type != "Constant"] or nodes
        op = main[0].op_type if main else "?"
        if main and main[0].domain not in ("", "ai.onnx"):
            continue
        if ops and op not in ops:
            continue
        out.append((tc.name, op, tc.model, tc.data_sets))
    return out


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _ort(path_or_bytes, feeds):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(path_or_bytes, so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return [o.name for o in sess.get_outputs()], sess.run(None, {k: v for k, v in feeds.items() if k in names})


def _close(got, want) -> bool:
    if isinstance(want, (list, tuple)):
        return isinstance(got, (list, tuple)) and len(got) == len(want) and all(_close(a, b) for a, b in zip(got, want))
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return False
    if want.dtype.kind in "OUS" or want.dtype == bool:
        return bool(np.array_equal(got, want))
    if want.dtype.kind in "iu":
        return bool(np.array_equal(got.astype(np.int64), want.astype(np.int64)))
    g64, w64 = got.astype(np.float64), want.astype(np.float64)
    same_nan = np.array_equal(np.isnan(g64), np.isnan(w64))
    rtol, atol = (RTOL_LOW, ATOL_LOW) if want.dtype.itemsize <= 2 else (RTOL, ATOL)
    ok = np.isclose(g64, w64, rtol=rtol, atol=atol, equal_nan=True)
    return bool(same_nan and ok.all())


def run_case(name: str, model, data_sets, tmp: str) -> tuple[str, str]:
    """(outcome, detail) of one node test through import → emit → onnxruntime."""
    import onnx
    from compiler.backend.emit import save
    from compiler.errors import RooftopError
    from compiler.frontends.onnx_import import import_onnx
    src = os.path.join(tmp, f"{name}.onnx")
    onnx.save_model(model, src)
    inputs = [i.name for i in model.graph.input]
    if not data_sets:
        return "skip", "no data"
    ins, outs = data_sets[0]
    feeds = {n: v for n, v in zip(inputs, ins)}
    if any(not isinstance(v, np.ndarray) for v in feeds.values()):
        return "skip", "sequence/optional inputs"
    try:
        src_names, src_out = _ort(src, feeds)
    except Exception as e:  # noqa: BLE001 - the test model itself does not run in onnxruntime
        return "skip", f"onnxruntime cannot run the source: {str(e).splitlines()[0][:160]}"
    src_out = dict(zip(src_names, src_out))
    try:
        g = import_onnx(src)
        emitted = os.path.join(tmp, f"{name}.rooftop.onnx")
        save(g, emitted)
    except RooftopError as e:
        code = getattr(e, "exit_code", 1)
        return ("refused" if code == 2 else "fail"), " ".join(str(e).split())[:300]
    except Exception as e:  # noqa: BLE001 - a crash inside rooftop
        return "fail", f"{type(e).__name__}: {' '.join(str(e).split())[:260]}"
    try:
        names, got = _ort(emitted, feeds)
    except Exception as e:  # noqa: BLE001
        return "fail", f"the emitted model fails in onnxruntime: {str(e).splitlines()[0][:220]}"
    expect = dict(zip([o.name for o in model.graph.output], outs))
    gotd = dict(zip(names, got))
    for k, want in expect.items():
        if k not in gotd:
            return "fail", f"output {k} missing from the emitted model"
        if not _close(gotd[k], want):
            if k in src_out and not _close(src_out[k], want) and _close(gotd[k], src_out[k]):
                return "skip", f"onnxruntime's own result for {k} differs from the test's (rooftop's matches onnxruntime's)"
            return "fail", f"output {k} differs from the expected values"
    return "pass", ""


def convert(model, opset: int):
    import onnx
    from onnx import version_converter
    if _opset(model) == opset:
        return model
    m = version_converter.convert_version(model, opset)
    onnx.checker.check_model(m)
    return m


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", nargs="*", help="only these op types")
    ap.add_argument("--opsets", nargs=2, type=int, metavar=("LO", "HI"),
                    help="also run every test converted to each opset LO..HI")
    ap.add_argument("--sample", type=int, help="at most this many tests per op (deterministic)")
    ap.add_argument("--json", help="also write the rows as JSON here")
    ap.add_argument("--out", default=str(ROOT / "docs" / "reference" / "onnx_conformance.md"))
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    logging.disable(logging.WARNING)
    t0 = time.perf_counter()
    rows = []
    todo = cases(a.ops)
    if a.sample:
        per: dict[str, int] = collections.Counter()
        keep = []
        for c in todo:
            if per[c[1]] < a.sample:
                keep.append(c)
                per[c[1]] += 1
        todo = keep
    with tempfile.TemporaryDirectory() as tmp, np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, (name, op, model, data) in enumerate(todo):
            variants = [("native", model)]
            if a.opsets:
                for v in range(a.opsets[0], a.opsets[1] + 1):
                    if v != _opset(model):
                        variants.append((v, model))
            for tag, m in variants:
                if tag != "native":
                    try:
                        m = convert(model, tag)
                    except Exception as e:  # noqa: BLE001
                        rows.append({"test": name, "op": op, "opset": tag, "outcome": "skip",
                                     "detail": f"no conversion to opset {tag}: {str(e).splitlines()[0][:120] if str(e) else type(e).__name__}"})
                        continue
                outcome, detail = run_case(f"{name}_{tag}", m, data, tmp)
                rows.append({"test": name, "op": op, "opset": _opset(m), "outcome": outcome, "detail": detail})
            if (i + 1) % 100 == 0:
                print(f"{i + 1}/{len(todo)} tests", file=sys.stderr, flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    md = render(rows, "python tools/onnx_conformance.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                time.perf_counter() - t0)
    if a.no_write:
        print(md)
    else:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(md)
        print(f"wrote {a.out}")
    tot = collections.Counter(r["outcome"] for r in rows)
    print(" ".join(f"{k}={v}" for k, v in sorted(tot.items())))
    return 0


def render(rows: list[dict], command: str, seconds: float) -> str:
    import onnx
    import onnxruntime
    tot = collections.Counter(r["outcome"] for r in rows)
    ran = tot["pass"] + tot["fail"] + tot["refused"]
    lines = ["# ONNX conformance (the ONNX backend node tests)", "",
             "Generated by `tools/onnx_conformance.py` — do not edit by hand.", "",
             f"- date: {datetime.date.today().isoformat()}; machine: {platform.machine()} {os.cpu_count()} CPUs; "
             f"onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}; wall time {seconds / 60:.1f} min",
             f"- command: `{command}`", "",
             "Each test model is imported by rooftop, emitted again and run in onnxruntime; its outputs are "
             f"compared with the test's expected outputs (rtol {RTOL}, atol {ATOL}). **refused**: rooftop's "
             "exit-2 message (an op, type or attribute it does not import); **skip**: the test does not run in "
             "onnxruntime itself (or has sequence/optional inputs), so there is nothing to compare.", "",
             f"**{tot['pass']} of {ran} runnable tests pass ({100 * tot['pass'] / max(ran, 1):.1f} %)**, "
             f"{tot['refused']} refused, {tot['fail']} fail, {tot['skip']} skipped.", "",
             "## Per opset", "", "| opset | pass | refused | fail | skip | pass rate |", "|---|---|---|---|---|---|"]
    by_opset: dict = collections.defaultdict(collections.Counter)
    for r in rows:
        by_opset[r["opset"]][r["outcome"]] += 1
    for v in sorted(by_opset, key=lambda x: (isinstance(x, str), x)):
        c = by_opset[v]
        n = c["pass"] + c["fail"] + c["refused"]
        lines.append(f"| {v} | {c['pass']} | {c['refused']} | {c['fail']} | {c['skip']} | "
                     f"{100 * c['pass'] / n:.0f} % |" if n else f"| {v} | 0 | 0 | 0 | {c['skip']} | – |")
    lines += ["", "## Per op", "", "| op | pass | refused | fail | skip | first problem |", "|---|---|---|---|---|---|"]
    by_op: dict = collections.defaultdict(list)
    for r in rows:
        by_op[r["op"]].append(r)
    for op in sorted(by_op):
        c = collections.Counter(r["outcome"] for r in by_op[op])
        prob = next((r for r in by_op[op] if r["outcome"] in ("fail", "refused")), None)
        det = "" if prob is None else f"{prob['test']} (opset {prob['opset']}): {prob['detail'][:140]}".replace("|", "\\|")
        lines.append(f"| {op} | {c['pass']} | {c['refused']} | {c['fail']} | {c['skip']} | {det} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
