"""Core ATen coverage: every op of torch's Core ATen opset through rooftop, checked on PyTorch's own
OpInfo samples.

For each Core ATen op (the overloads tagged ``torch.Tag.core``: what ``ExportedProgram.
run_decompositions()`` produces) the table says whether the torch importer (``compiler/frontends/aten_*.py``)
translates it or refuses it (and why). Then PyTorch's OpInfo sample inputs
(``torch.testing._internal.common_methods_invocations.op_db``; the OpInfo named like the op, or the
functional it comes from) are run: each sample becomes a one-op module, is exported
(``torch.export``), decomposed to Core ATen, imported, emitted, run in onnxruntime and compared
with torch eager (fp32: |Δ| ≤ 1e-4 + 1e-4·|ref|; integers and booleans exactly). A sample counts
for every Core ATen op its exported graph contains.

    python tools/aten_coverage.py                    # → docs/reference/core_aten.md
    python tools/aten_coverage.py --ops add cumsum --samples 8 --no-write
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
RTOL = ATOL = 1e-4

# Core ATen ops whose OpInfo is named after the functional they come from
FUNCTIONAL = {
    "_adaptive_avg_pool2d": ["nn.functional.adaptive_avg_pool2d"],
    "_adaptive_avg_pool3d": ["nn.functional.adaptive_avg_pool3d"],
    "adaptive_avg_pool1d": ["nn.functional.adaptive_avg_pool1d"],
    "_cdist_forward": ["cdist"], "_log_softmax": ["log_softmax"], "_softmax": ["softmax"],
    "_native_batch_norm_legit_no_training": ["nn.functional.batch_norm"],
    "col2im": ["nn.functional.fold"],
    "convolution": ["nn.functional.conv1d", "nn.functional.conv2d", "nn.functional.conv_transpose2d"],
    "elu": ["nn.functional.elu"], "embedding": ["nn.functional.embedding"],
    "max_pool2d_with_indices": ["nn.functional.max_pool2d"],
    "max_pool3d_with_indices": ["nn.functional.max_pool3d"],
    "reflection_pad1d": ["nn.functional.pad"], "reflection_pad2d": ["nn.functional.pad"],
    "reflection_pad3d": ["nn.functional.pad"], "replication_pad2d": ["nn.functional.pad"],
    "replication_pad3d": ["nn.functional.pad"],
    "upsample_bilinear2d": ["nn.functional.interpolate"], "upsample_nearest2d": ["nn.functional.interpolate"],
    "grid_sampler_2d": ["nn.functional.grid_sample"], "native_layer_norm": ["nn.functional.layer_norm"],
    "native_group_norm": ["nn.functional.group_norm"], "index": ["__getitem__"],
    "gelu": ["nn.functional.gelu"], "hardtanh": ["nn.functional.hardtanh"],
    "leaky_relu": ["nn.functional.leaky_relu"], "relu": ["nn.functional.relu"],
    "avg_pool2d": ["nn.functional.avg_pool2d"], "avg_pool3d": ["nn.functional.avg_pool3d"],
}


def core_overloads():
    """[(packet name, overload name, OpOverload)] of torch's Core ATen opset."""
    import torch
    out = []
    for name in sorted(dir(torch.ops.aten)):
        pkt = getattr(torch.ops.aten, name)
        if not isinstance(pkt, torch._ops.OpOverloadPacket):
            continue
        for ov in pkt.overloads():
            op = getattr(pkt, ov)
            if torch.Tag.core in op.tags:
                out.append((name, ov, op))
    return out


def status(name: str, ov: str) -> tuple[str, str]:
    from compiler.frontends import torch_export as te
    key = f"aten.{name}.{ov}"
    if key in te.HANDLERS:
        return "translated", ""
    if key in te.REFUSED:
        return "refused", te.REFUSED[key]
    if name.startswith("sym_"):
        return "translated", "a symbolic size (becomes a dim expression)"
    return "missing", ""


def opinfos_for(name: str):
    from torch.testing._internal.common_methods_invocations import op_db
    wanted = set(FUNCTIONAL.get(name, [])) | {name}
    out = []
    for o in op_db:
        names = {o.name, getattr(o, "aten_name", None)} | {a.name for a in getattr(o, "aliases", ())}
        if names & wanted:
            out.append(o)
    return out


def _dtype_for(o):
    import torch
    for dt in (torch.float32, torch.int64, torch.bool):
        try:
            if dt in o.supported_dtypes("cpu"):
                return dt
        except Exception:  # noqa: BLE001
            return torch.float32
    return None


def samples(o, limit: int):
    """Up to ``limit`` sample inputs of OpInfo ``o`` whose input is a tensor (deterministic)."""
    import torch
    dt = _dtype_for(o)
    if dt is None:
        return []
    torch.manual_seed(0)
    out = []
    try:
        for s in o.sample_inputs("cpu", dt, requires_grad=False):
            if isinstance(s.input, torch.Tensor) and s.input.numel() > 0:
                out.append(s)
            if len(out) >= limit:
                break
    except Exception:  # noqa: BLE001 - an OpInfo whose sampler fails on this build
        return []
    return out


def _module(fn, sample):
    """A module whose tensor inputs are the sample's tensors (pytree leaves), the rest captured."""
    import torch
    from torch.utils import _pytree as pytree
    leaves, spec = pytree.tree_flatten((sample.input, sample.args, sample.kwargs))
    tidx = [i for i, x in enumerate(leaves) if isinstance(x, torch.Tensor)]

    class M(torch.nn.Module):
        def forward(self, *ts):
            vals = list(leaves)
            for i, t in zip(tidx, ts):
                vals[i] = t
            inp, args, kwargs = pytree.tree_unflatten(vals, spec)
            return fn(inp, *args, **kwargs)
    return M().eval(), tuple(leaves[i] for i in tidx)


def _close(got, want) -> bool:
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return False
    if want.dtype.kind in "biu":
        return bool(np.array_equal(got.astype(want.dtype), want))
    g, w = got.astype(np.float64), want.astype(np.float64)
    if not np.array_equal(np.isnan(g), np.isnan(w)):
        return False
    m = ~np.isnan(w)
    return bool(np.all(np.abs(g[m] - w[m]) <= ATOL + RTOL * np.abs(w[m])))


def run_sample(fn, sample, tmp: str) -> tuple[str, str, list[str]]:
    """(outcome, detail, Core ATen ops in the exported graph) of one sample."""
    import torch
    from compiler.backend.emit import save
    from compiler.errors import RooftopError
    from compiler.frontends.torch_export import _target_name, import_exported
    module, tensors = _module(fn, sample)
    try:
        with torch.no_grad():
            want = module(*tensors)
    except Exception as e:  # noqa: BLE001 - the sample does not run eagerly
        return "skip", f"eager: {type(e).__name__}", []
    wants = [want] if isinstance(want, torch.Tensor) else list(want) if isinstance(want, (list, tuple)) else None
    if wants is None or not all(isinstance(w, torch.Tensor) for w in wants) or any(w.is_complex() for w in wants):
        return "skip", "non-tensor or complex output", []
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ep = torch.export.export(module, tensors, strict=False).run_decompositions()
    except Exception as e:  # noqa: BLE001 - torch.export cannot export this sample
        return "skip", f"export: {type(e).__name__}", []
    ops = sorted({_target_name(n) for n in ep.graph.nodes if n.op == "call_function"})
    try:
        g = import_exported(ep, name="op", dims={})
        path = os.path.join(tmp, "op.onnx")
        save(g, path)
    except RooftopError as e:
        return ("refused" if getattr(e, "exit_code", 1) == 2 else "fail"), " ".join(str(e).split())[:240], ops
    except Exception as e:  # noqa: BLE001 - a crash inside rooftop
        return "fail", f"{type(e).__name__}: {' '.join(str(e).split())[:200]}", ops
    try:
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.log_severity_level = 4
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        feeds = dict(zip([n for n in g.inputs], [t.detach().numpy() for t in tensors]))
        got = sess.run(None, {k: v for k, v in feeds.items() if k in names})
    except Exception as e:  # noqa: BLE001
        return "fail", f"onnxruntime: {str(e).splitlines()[0][:200]}", ops
    for gv, wv in zip(got, wants):
        if not _close(gv, wv.detach().numpy()):
            return "fail", "differs from torch eager", ops
    return "pass", "", ops


def check(names: list[str] | None = None, limit: int = 4) -> dict:
    """{core op name: {"status", "reason", "samples": Counter, "problem"}} (OpInfo samples run)."""
    over = core_overloads()
    res: dict = {}
    for name, ov, _ in over:
        if names and name not in names:
            continue
        st, why = status(name, ov)
        e = res.setdefault(name, {"overloads": {}, "samples": collections.Counter(), "problem": ""})
        e["overloads"][ov] = (st, why)
    done_opinfo: set[str] = set()
    with tempfile.TemporaryDirectory() as tmp, np.errstate(all="ignore"):
        for name in list(res):
            for o in opinfos_for(name):
                key = o.name + "." + (o.variant_test_name or "")
                for smp in samples(o, limit) if key not in done_opinfo else []:
                    outcome, detail, ops = run_sample(o.op, smp, tmp)
                    present = {x.split(".")[1] for x in ops if x.startswith("aten.")} & set(res)
                    # a pass counts for every op of the sample; a failure for the op under test
                    # when the sample has it, else for all of them
                    targets = present if outcome in ("pass", "skip") or name not in present else {name}
                    for op_name in targets or {name}:
                        res[op_name]["samples"][outcome] += 1
                        if outcome in ("fail", "refused") and not res[op_name]["problem"]:
                            res[op_name]["problem"] = f"{o.name} sample: {detail}"
                done_opinfo.add(key)
    return res


def render(res: dict, command: str, seconds: float) -> str:
    import torch
    rows = []
    tot = collections.Counter()
    for name in sorted(res):
        e = res[name]
        for ov, (st, why) in sorted(e["overloads"].items()):
            tot[st] += 1
            rows.append((f"aten.{name}.{ov}", st, why, e["samples"], e["problem"]))
    samp = collections.Counter()
    for e in res.values():
        samp.update(e["samples"])
    checked = sum(1 for e in res.values() if e["samples"]["pass"])
    lines = ["# Core ATen coverage", "", "Generated by `tools/aten_coverage.py` — do not edit by hand.", "",
             f"- date: {datetime.date.today().isoformat()}; machine: {platform.machine()} {os.cpu_count()} CPUs; "
             f"torch {torch.__version__}; wall time {seconds / 60:.1f} min", f"- command: `{command}`", "",
             "Every overload of torch's Core ATen opset (`torch.Tag.core`: what `run_decompositions()` "
             "produces) is **translated** by the torch importer's handlers (`compiler/frontends/aten_*.py`) onto the op registry, or "
             "**refused** at import with the reason shown (an exit-2 message naming the op). The torch "
             "importer keeps ops it translates whole (`aten.linear`, `aten.scaled_dot_product_attention`, "
             "…) and decomposes every other op to this set first. *Samples*: PyTorch's OpInfo sample "
             "inputs run as one-op modules — exported, decomposed to Core ATen, imported, emitted, run "
             "in onnxruntime and compared with torch eager; a sample counts for every Core ATen op its "
             "graph contains.", "",
             f"**{tot['translated']} of {sum(tot.values())} overloads translated, {tot['refused']} refused, "
             f"{tot['missing']} missing**; {checked} ops checked on samples; samples: {samp['pass']} pass, "
             f"{samp['fail']} fail, {samp['refused']} refused, {samp['skip']} skipped (not exportable / "
             f"not runnable eagerly).", "",
             "| op | status | samples pass / fail | note |", "|---|---|---|---|"]
    for op, st, why, s, prob in rows:
        note = why or prob
        lines.append(f"| `{op}` | {st} | {s['pass']} / {s['fail'] + s['refused']} | {note[:160].replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", nargs="*", help="only these Core ATen op names (e.g. add cumsum)")
    ap.add_argument("--samples", type=int, default=4, help="OpInfo samples per OpInfo")
    ap.add_argument("--json", help="also write the results as JSON here")
    ap.add_argument("--out", default=str(ROOT / "docs" / "reference" / "core_aten.md"))
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    logging.disable(logging.WARNING)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = check(a.ops, a.samples)
    if a.json:
        Path(a.json).write_text(json.dumps({k: {"overloads": v["overloads"], "samples": dict(v["samples"]),
                                                "problem": v["problem"]} for k, v in res.items()}, indent=1))
    md = render(res, "python tools/aten_coverage.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                time.perf_counter() - t0)
    if a.no_write:
        print(md)
    else:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(md)
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
