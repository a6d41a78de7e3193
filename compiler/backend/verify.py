"""Verification: the emitted ONNX model against its source, on the same inputs.

The reference is the model rooftop imported: torch eager for a torch import, the source file in
onnxruntime for ``model=onnx``. Both run on the same seeded inputs, each drawn within its domain:

- integer inputs that index a table (``input_ids``, ``token_type_ids``, learned positions) are
  drawn below that table's row count (found by following the input to its ``Gather``);
- ``position_ids`` are ``P + arange(S)`` (within the model's positions);
- attention masks are ones with trailing padding in the second sequence;
- KV-cache inputs of a torch-imported decoder are not random: the emitted model's own prefill
  fills the cache, then two decode steps run on it, and every step is compared with torch eager
  on the whole sequence (so the cache path is checked, not only the prefill);
- other float inputs are standard normal.

Outputs are compared at a tolerance that fits the dtype the emitted model computes in:
``|emitted - reference| <= atol + rtol * max|reference|`` per output (fp32: 1e-4 + 1e-4·max;
fp16: 1e-2 + 1e-2·max). onnxruntime's CPU provider has no bfloat16 (and few float16) kernels: such
a model is verified on a float32 copy (weights upcast exactly; the reference is the source in
float32 with the same weight values), and the result says so (``compute_dtype``).

:func:`verify` returns the record stored in ``report.json`` ``emit.verification``; a mismatch
raises :class:`VerificationError` naming the worst output (its ``detail`` is the same record).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from compiler.errors import ModelFileError, VerificationError
from compiler.ir import SYMBOLS, Graph
from compiler.backend.paged_runtime import PagedKV, paging_info

TOLERANCE = {"float32": (1e-4, 1e-4), "float16": (1e-2, 1e-2), "bfloat16": (5e-2, 5e-2)}
_LOW = (TensorProto.FLOAT16, TensorProto.BFLOAT16)
_PASS_THROUGH = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Expand"}
_ORT_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
           "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_,
           "tensor(int8)": np.int8, "tensor(uint8)": np.uint8}


# ------------------------------------------------------------------------------------------------
# sessions


def _session(model_or_path):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    src = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else model_or_path
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def upcast_to_float32(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose float16/bfloat16 tensors, types and casts are float32 (values of
    the weights are kept exactly: every fp16/bf16 value is a float32 value)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)

    def fix_tensor(t: TensorProto):
        if t.data_type in _LOW:
            arr = numpy_helper.to_array(t).astype(np.float32)
            t.CopyFrom(numpy_helper.from_array(arr, t.name))

    def fix_type(vi):
        tt = vi.type.tensor_type
        if tt.elem_type in _LOW:
            tt.elem_type = TensorProto.FLOAT

    def fix_graph(g):
        for t in g.initializer:
            fix_tensor(t)
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            fix_type(vi)
        for n in g.node:
            for a in n.attribute:
                if a.name in ("to", "dtype") and a.type == onnx.AttributeProto.INT and a.i in _LOW:
                    a.i = TensorProto.FLOAT
                if a.type == onnx.AttributeProto.TENSOR:
                    fix_tensor(a.t)
                if a.type == onnx.AttributeProto.GRAPH:
                    fix_graph(a.g)
    fix_graph(m.graph)
    return m


def _has_low_precision(model: onnx.ModelProto) -> str | None:
    for t in model.graph.initializer:
        if t.data_type in _LOW:
            return "bfloat16" if t.data_type == TensorProto.BFLOAT16 else "float16"
    for vi in list(model.graph.input) + list(model.graph.output):
        et = vi.type.tensor_type.elem_type
        if et in _LOW:
            return "bfloat16" if et == TensorProto.BFLOAT16 else "float16"
    return None


class _Runner:
    """One ONNX model in onnxruntime, upcast to float32 where the CPU provider cannot run it."""

    def __init__(self, path: str, what: str, force_fp32: bool = False):
        self.path, self.what = path, what
        self.note = None
        model = onnx.load(path)
        low = _has_low_precision(model)
        self.compute_dtype = low or "float32"
        self.sess = None
        if low and not force_fp32:
            try:
                self.sess = _session(path)
            except Exception as e:  # noqa: BLE001 - onnxruntime: NOT_IMPLEMENTED for the type
                self.note = f"onnxruntime CPU cannot run {low} ({_first_line(e)})"
        elif not low:
            try:
                self.sess = _session(path)
            except Exception as e:  # noqa: BLE001
                raise VerificationError(f"onnxruntime cannot load {what}: {_first_line(e)}") from None
        if self.sess is None:
            self._upcast(model, low)

    def _upcast(self, model, low):
        try:
            self.sess = _session(upcast_to_float32(model))
        except Exception as e:  # noqa: BLE001
            raise VerificationError(f"onnxruntime cannot load {self.what}, even upcast to float32: "
                                    f"{_first_line(e)}") from None
        self.compute_dtype = "float32"
        self.note = (self.note or f"onnxruntime CPU lacks {low} kernels") + \
            f"; verified on a float32 copy (the {low} weights upcast exactly)"

    @property
    def input_names(self):
        return [i.name for i in self.sess.get_inputs()]

    def input_dtype(self, name):
        for i in self.sess.get_inputs():
            if i.name == name:
                return _ORT_NP.get(i.type, np.float32)
        raise KeyError(name)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        mine = {k: np.asarray(v).astype(self.input_dtype(k)) for k, v in feeds.items() if k in self.input_names}
        try:
            outs = self.sess.run(None, mine)
        except Exception as e:  # noqa: BLE001
            if self.compute_dtype != "float32":  # a missing kernel shows only at run time
                self._upcast(onnx.load(self.path), self.compute_dtype)
                return self.run(feeds)
            raise VerificationError(f"{self.what} failed in onnxruntime: {_first_line(e)}") from None
        return {o.name: v for o, v in zip(self.sess.get_outputs(), outs)}


def _first_line(e: Exception) -> str:
    s = str(e).strip()
    return (s.splitlines()[0] if s else type(e).__name__)[:400]


# ------------------------------------------------------------------------------------------------
# inputs within their domains


def table_rows(g: Graph, name: str) -> int | None:
    """Rows of the smallest table an integer input indexes (through casts/reshapes)."""
    best, seen, todo = None, set(), [name]
    while todo:
        t = todo.pop()
        if t in seen:
            continue
        seen.add(t)
        for n, idx in g.consumers(t):
            if n.op == "Gather" and idx == 1 and n.inputs[0] in g.params:
                rows = g.params[n.inputs[0]].type.shape[int(n.attrs.get("axis", 0))]
                if isinstance(rows, int):
                    best = rows if best is None else min(best, rows)
            elif n.op in _PASS_THROUGH and idx == 0:
                todo.extend(n.outputs)
    return best


def _shape(g: Graph, name: str, dims: Mapping) -> list[int]:
    bind = g.dim_bindings()
    out = []
    for d in g.type(name).shape:
        if not isinstance(d, int):
            d = d.xreplace(bind).subs(dims)   # a dim that is not B/S/P: as the cost model binds it
            d = d.subs({s: 3 for s in d.free_symbols})
        out.append(int(d))
    return out


def _grows_with_past(g: Graph, name: str) -> bool:
    """An input whose sequence axis covers the past and the new tokens (``attention_mask
    [B, P + S]`` of a decoder with a KV cache): a step feeds its prefix, not a window."""
    sh = g.type(name).shape
    return len(sh) >= 2 and not isinstance(sh[1], int) and SYMBOLS["P"] in sh[1].free_symbols


def structural_length(g: Graph, seq: int) -> tuple[int, list[str]]:
    """The sequence length verification needs so that its inputs cross every structural
    threshold of the model: each attention window W (a prefill of W + 2 tokens, then decode steps
    beyond it). Capped by the model's maximum positions. Returns (length, what it crosses)."""
    crossed, need = [], seq
    windows = sorted({a.window for n in g if n.op == "Attention" and (a := n.annotations.get("attention"))
                      is not None and a.window})
    for w in windows:
        crossed.append(f"attention window {w}")
        need = max(need, w + 2)
    max_pos = g.meta.get("max_positions")
    if max_pos:
        need = min(need, int(max_pos) - 4)
    return max(need, 1), crossed


def draw_inputs(g: Graph, b: int, s: int, p: int, seed: int = 0, max_positions: int | None = None) -> dict[str, np.ndarray]:
    """Seeded inputs for every graph input, each within its domain (see the module doc)."""
    rng = np.random.default_rng(seed)
    dims = {SYMBOLS["B"]: b, SYMBOLS["S"]: s, SYMBOLS["P"]: p}
    feeds = {}
    for name in g.inputs:
        ty = g.type(name)
        shape = _shape(g, name, dims)
        low = name.lower()
        if ty.dtype.startswith("int") or ty.dtype == "bool":
            rows = table_rows(g, name)
            if "position" in low:
                pos = np.arange(p, p + shape[-1]) if shape else np.arange(0)
                if max_positions:
                    pos = pos % max_positions
                feeds[name] = np.broadcast_to(pos, shape).astype(np.int64).copy()
            elif "mask" in low:
                m = np.ones(shape, np.int64)
                if len(shape) == 2 and shape[0] > 1 and shape[1] >= 4:
                    m[1, -max(1, shape[1] // 3):] = 0  # trailing padding in the second sequence
                feeds[name] = m
            else:
                high = rows or (2 if "type" in low else int(g.meta.get("vocab_size") or 2))
                feeds[name] = rng.integers(0, high, shape).astype(np.int64)
        else:
            feeds[name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


# ------------------------------------------------------------------------------------------------
# comparison


class _Compare:
    def __init__(self, dtype: str):
        self.atol, self.rtol = TOLERANCE.get(dtype, TOLERANCE["float32"])
        self.outputs: dict[str, dict[str, Any]] = {}

    def add(self, name: str, got: np.ndarray, ref: np.ndarray, step: str):
        got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
        key = name if step == "" else f"{name}@{step}"
        if got.shape != ref.shape:
            self.outputs[key] = {"shape": list(got.shape), "reference_shape": list(ref.shape),
                                 "max_abs_err": None, "max_rel_err": None, "tolerance": None,
                                 "passed": False}
            return
        if got.size == 0:
            return
        scale = float(np.nanmax(np.abs(ref))) if np.isfinite(ref).any() else 0.0
        finite_same = bool(np.array_equal(np.isfinite(got), np.isfinite(ref)))
        diff = np.abs(got - ref)
        err = float(np.nanmax(np.where(np.isfinite(diff), diff, 0.0))) if finite_same else float("inf")
        tol = self.atol + self.rtol * scale
        self.outputs[key] = {"shape": list(got.shape), "max_abs_err": err,
                             "max_rel_err": err / scale if scale else err, "tolerance": tol,
                             "passed": bool(finite_same and err <= tol)}

    def worst(self) -> tuple[str, dict] | None:
        bad = [(k, v) for k, v in self.outputs.items() if not v["passed"]]
        if not bad:
            return None
        return max(bad, key=lambda kv: (kv[1]["max_abs_err"] or float("inf")) / (kv[1]["tolerance"] or 1e-30))


def _torch_output_names(g: Graph, kv) -> list[str]:
    """The emitted outputs the torch module returns, in its order (the main output first; KV and
    any outputs a pass added — exit heads — are not the module's)."""
    names = [o for o in g.outputs if o not in set(kv) and not o.startswith("present")]
    main = [o for o in names if o in ("logits", "last_hidden_state")]
    return main or names


def _torch_outputs(module, feeds: Mapping[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    import torch
    args = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}
    with torch.no_grad():
        try:
            out = module(**args)
        except TypeError:
            out = module(*args.values())
    if isinstance(out, torch.Tensor):
        out = (out,)
    elif isinstance(out, Mapping):
        out = tuple(out.values())
    return {n: o.detach().float().numpy() for n, o in zip(names, out) if isinstance(o, torch.Tensor)}


def verify(emitted_path: str, g: Graph, source: Mapping, *, batch: int = 2, seq: int = 7, past: int = 5,
           decode_steps: int = 2, seed: int = 0) -> dict[str, Any]:
    """Compare the emitted model with ``source`` (``{"kind": "torch", "module", "task"}`` or
    ``{"kind": "onnx", "path"}``); returns the ``emit.verification`` record.

    Like is compared with like: a decoder whose KV cache rooftop lifted (every torch import, an
    ONNX file exported without a cache) runs a prefill and ``decode_steps`` steps through its own
    cache while the cache-less source runs once on the whole sequence, compared at the emitted
    model's positions; a source with its own cache gets the same inputs as the emitted model.
    The sequence crosses every attention window of the model (:func:`structural_length`)."""
    import onnxruntime as ort
    emitted = _Runner(emitted_path, "the emitted model")
    kind = source.get("kind")
    module = source.get("module")
    max_pos = g.meta.get("max_positions")
    kv = [t for t in g.inputs if t in set(g.meta.get("kv_tensors", ()))]
    record: dict[str, Any] = {"runtime": f"onnxruntime {ort.__version__} CPU"}
    seq, crossed = structural_length(g, seq)
    if crossed:
        record["crosses"] = crossed
    if kind == "torch" and module is not None:
        import torch
        module = module.float() if emitted.compute_dtype == "float32" else module.to(torch.float16)
        cmp = _Compare(emitted.compute_dtype)
        record["reference"] = "torch eager (the imported module)"
        names = _torch_output_names(g, kv)

        def reference(feeds):
            return _torch_outputs(module, feeds, names)
        source_inputs = None
        lifted = bool(kv)
    elif kind == "onnx":
        ref_runner = _Runner(source["path"], "the source model", force_fp32=emitted.compute_dtype == "float32"
                             and emitted.note is not None)
        cmp = _Compare(emitted.compute_dtype)
        record["reference"] = "the source ONNX file in onnxruntime"
        source_inputs = set(ref_runner.input_names)

        def reference(feeds):
            try:
                return ref_runner.run(feeds)
            except VerificationError as e:
                err = VerificationError(
                    f"the source model fails in onnxruntime on valid inputs ("
                    + ", ".join(f"{k} {list(np.shape(v))}" for k, v in feeds.items() if k in source_inputs)
                    + f"; token ids below the vocabulary, attention_mask ones with right padding): {e}. "
                    f"rooftop has nothing to compare the emitted model with; check the source with "
                    f"onnxruntime on such inputs (or set emit.verify=false).")
                err.detail = {**record, "passed": False, "source_failure": str(e), "inputs": {
                    k: list(np.shape(v)) for k, v in feeds.items() if k in source_inputs}}
                raise err from None
        lifted = bool(kv) and not (set(kv) & source_inputs)
    else:
        return {"skipped": "no reference model to compare with (weights not built)", "passed": False}
    if kv and g.meta.get("kv_paging"):   # passes/kv_paging: block pools through block tables
        if kind != "torch":
            feeds = draw_inputs(g, batch, seq, 0, seed, max_pos)
            feeds.update(_paged_runtime(emitted, seed, batch).feeds(range(batch)))
            _forward(emitted, reference, g, feeds, cmp, record)
        else:
            record["inputs"] = _torch_paged_decoder(emitted, module, g, kv, batch, seq, decode_steps, seed,
                                                    max_pos, cmp)
    elif kv and lifted:
        record["inputs"] = _decoder_steps(emitted, reference, g, kv, batch, seq, decode_steps, seed, max_pos,
                                          cmp, source_inputs)
    else:
        feeds = draw_inputs(g, batch, seq, past if kv else 0, seed, max_pos)
        _forward(emitted, reference, g, feeds, cmp, record)
    record["compute_dtype"] = emitted.compute_dtype
    if emitted.note:
        record["note"] = emitted.note
    record["tolerance"] = {"atol": cmp.atol, "rtol": cmp.rtol,
                           "rule": "max|emitted - reference| <= atol + rtol * max|reference|"}
    record["outputs"] = cmp.outputs
    worst = cmp.worst()
    record["passed"] = worst is None and bool(cmp.outputs)
    if worst is not None:
        name, v = worst
        what = (f"output {name!r} differs from the reference ({record['reference']}): max abs error "
                f"{v['max_abs_err']:.3g} > tolerance {v['tolerance']:.3g}" if v["tolerance"] is not None else
                f"output {name!r} has shape {v['shape']} but the reference has {v['reference_shape']}")
        err = VerificationError(f"{what} ({sum(not o['passed'] for o in cmp.outputs.values())} of "
                                f"{len(cmp.outputs)} outputs off). The emitted model computes something "
                                f"else than the source; run with pipeline=none to see whether a pass "
                                f"caused it.")
        err.detail = record
        raise err
    return record


def _forward(emitted: _Runner, reference, g: Graph, feeds: dict, cmp: _Compare, record: dict) -> None:
    """One run of both models on the same feeds, every common output compared."""
    got, ref = emitted.run(feeds), reference(feeds)
    for name in g.outputs:
        if name in ref and name in got:
            cmp.add(name, got[name], ref[name], "")
    record["inputs"] = [{"step": "forward", "shapes": {k: list(v.shape) for k, v in feeds.items()}}]


def _decoder_steps(emitted: _Runner, reference, g: Graph, kv: list[str], b: int, s: int, steps: int,
                   seed: int, max_pos, cmp: _Compare, source_inputs: set | None) -> list[dict]:
    """Prefill of ``s`` tokens then ``steps`` decode steps through the emitted model's own cache,
    each compared with the cache-less reference run once on the whole sequence."""
    total = s + steps
    base = draw_inputs(g, b, total, 0, seed, max_pos)
    non_kv = [n for n in g.inputs if n not in kv]
    ref = reference({n: base[n] for n in non_kv if source_inputs is None or n in source_inputs})
    names = [o for o in g.outputs if o in ref and o not in kv and not o.startswith("present")]

    def step_feeds(t0, n):
        return {k: (base[k][:, :t0 + n] if _grows_with_past(g, k) else base[k][:, t0:t0 + n]) for k in non_kv}
    feeds = step_feeds(0, s)
    for t in kv:
        feeds[t] = np.zeros(_shape(g, t, {SYMBOLS["B"]: b, SYMBOLS["S"]: s, SYMBOLS["P"]: 0}), np.float32)
    log = [{"step": "prefill", "shapes": {k: list(v.shape) for k, v in feeds.items()}}]
    res = emitted.run(feeds)
    for name in names:
        cmp.add(name, res[name], ref[name][:, :s], "prefill")
    for i in range(steps):
        t0 = s + i
        feeds = step_feeds(t0, 1)
        for t in kv:
            feeds[t] = res[t.replace("past_", "present_", 1)]
        log.append({"step": f"decode{i + 1}", "shapes": {k: list(v.shape) for k, v in feeds.items()}})
        try:
            res = emitted.run(feeds)
        except VerificationError as e:
            if source_inputs is not None:
                _source_fails_at(reference, {k: v for k, v in step_feeds(t0, 1).items() if k in source_inputs},
                                 b, e)
            raise
        for name in names:
            cmp.add(name, res[name], ref[name][:, t0:t0 + 1], f"decode{i + 1}")
    return log


def _source_fails_at(reference, feeds: dict, b: int, emitted_error: Exception) -> None:
    """The emitted model failed on a decode step's shapes: where the cache-less source fails on
    the same shapes too (one new token per sequence, the whole mask of ones), the source file is
    what cannot run them — exit 2 naming the inputs, not a verification failure of rooftop's."""
    probe = {k: (np.ones_like(v[:, -1:]) if k == "attention_mask" else v[:, -1:]) for k, v in feeds.items()}
    try:
        reference(probe)
    except VerificationError as e:
        shapes = ", ".join(f"{k} {list(np.shape(v))}" for k, v in probe.items())
        raise ModelFileError(
            f"the source ONNX model itself fails in onnxruntime on valid inputs with one token per "
            f"sequence ({shapes}), the shape of a decode step, so it cannot be served with the KV cache "
            f"rooftop lifted. Run with pipeline=none to cost it without a cache (the source is then "
            f"verified at its own sequence length), or re-export it with torch.onnx.export(..., "
            f"dynamo=True): the exporter fixed a size that depends on the data (the legacy TorchScript "
            f"exporter records, for example, how many tokens an MoE routes to each expert as "
            f"constants). onnxruntime said: "
            f"{str(getattr(e, 'detail', {}).get('source_failure', e)).rstrip('.')}.") from None



def _paged_runtime(emitted: _Runner, seed: int, batch: int, tokens: int = 0):
    info = paging_info(emitted.path)
    rt = PagedKV(info, num_blocks=batch * (-(-tokens // int(info["block_size"])) + 1) + 2, seed=seed)
    for q in range(batch):
        rt.add(q)
    return rt


def _torch_paged_decoder(emitted: _Runner, module, g: Graph, kv: list[str], b: int, s: int, steps: int,
                         seed: int, max_pos, cmp: _Compare) -> list[dict]:
    """A paged artifact (passes/kv_paging) run the way a serving runtime runs it
    (compiler/backend/paged_runtime.py: shuffled block pool, random block tables, new K/V scattered):
    sequences of unequal prompt lengths (every other one 2 tokens shorter) prefill in one
    right-padded batch, the shorter ones catch up in the first decode step (3 tokens against 1),
    then ``steps - 1`` single-token steps; each real token's outputs are compared with torch
    eager on the whole sequences."""
    paging = g.meta["kv_paging"]
    total = s + steps
    base = draw_inputs(g, b, total, 0, seed, max_pos)
    tokens = [n for n in g.inputs if n not in kv and n not in (paging["block_table"], paging["context_lens"])]
    ref = _torch_outputs(module, {n: base[n] for n in tokens}, _torch_output_names(g, kv))
    rt = _paged_runtime(emitted, seed, b, total)
    seqs = list(range(b))
    short = [min(2, s - 1) if q % 2 else 0 for q in seqs]
    plan = [[s - short[q] for q in seqs]]
    if steps:
        plan += [[1 + short[q] for q in seqs]] + [[1] * b for _ in range(steps - 1)]
    else:
        plan = [[s] * b]
    log = []
    for k, news in enumerate(plan):
        width = max(news)
        feeds = rt.feeds(seqs, extra_columns=1)
        for n in tokens:
            arr = np.zeros((b, width) + base[n].shape[2:], base[n].dtype)
            for q in seqs:
                arr[q, :news[q]] = base[n][q, rt.lens[q]:rt.lens[q] + news[q]]
            feeds[n] = arr
        if "position_ids" in tokens:
            pos = rt.positions(seqs, width)
            feeds["position_ids"] = pos % max_pos if max_pos else pos
        step = "prefill" if k == 0 else f"decode{k}"
        log.append({"step": step, "shapes": {n: list(v.shape) for n, v in feeds.items() if n not in rt.pools},
                    "new_tokens": list(news)})
        res = emitted.run(feeds)
        for name in ref:
            got = np.concatenate([res[name][q, :news[q]] for q in seqs])
            want = np.concatenate([ref[name][q, rt.lens[q]:rt.lens[q] + news[q]] for q in seqs])
            cmp.add(name, got, want, step)
        rt.scatter(seqs, news, res)
    return log
