"""IR → ONNX (opset 23, IR version 10).

Each op is emitted by its lowering in :mod:`compiler.backend.lowering` when it has one
(Reshape/Expand shapes, Range, ConstantOfShape, the fused ops as ONNX local functions in the
``rooftop`` domain, which onnxruntime inlines), else as the standard ONNX op of the same name.
Attributes that rooftop keeps as (possibly symbolic) values but ONNX wants as operands
(``OpDef.attr_operands``: Slice bounds, axes, TopK.k, …) become constant initializers, or for
sympy dims small shape computations from the graph inputs (``B``/``S`` from ``input_ids``, ``P``
from ``past_key.0``, or block_size × ``block_table``'s width in a paged artifact). Serialized
annotations (:func:`compiler.ir.annotations.serialized`) go into the nodes' and initializers'
``metadata_props``.

The model is checked with ``onnx.checker`` (full check) and ONNX shape inference before it is
written; it is written to a temporary file and renamed, so a failure leaves nothing behind.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import sympy
from onnx import TensorProto, helper, numpy_helper

from compiler.ir.annotations import serialized
from compiler.errors import EmitError, RooftopError  # noqa: F401 (EmitError re-exported)
from compiler.ir import DTYPES, Graph, OpNode, Param, TensorType
from compiler.ir.ops import FUSED_DOMAIN
from compiler.ir.ops import get as get_opdef
from compiler.backend.lowering import LOWERINGS
from compiler.backend.quantized import (CONTRIB_DOMAIN, emit_kv_attention, emit_quantized_op, emit_shared_head,
                                       emit_table_gather, is_table, kv_io_dtypes, param_initializers, reads_codes,
                                       table_initializers, table_of)

OPSET = 23
IR_VERSION = 10
TWO_GB = 2**31

class Emitter:
    """Emission state for one graph; :mod:`compiler.ir.ops` emit functions get this object."""

    def __init__(self, g: Graph):
        self.g = g
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.init_names: set[str] = set()
        self._dim_cache: dict[Any, str] = {}
        self._n = 0
        self.sources = dict(g.meta.get("dim_sources", {}))
        self.functions: dict[str, onnx.FunctionProto] = {}  # local functions of fused ops

    def name(self, base: str) -> str:
        self._n += 1
        return f"_rt_{base}_{self._n}"

    def const(self, arr: np.ndarray, base: str = "c") -> str:
        arr = np.asarray(arr)
        key = ("c", arr.dtype.str, arr.shape, arr.tobytes())
        if key in self._dim_cache:
            return self._dim_cache[key]
        nm = self.name(base)
        self.inits.append(numpy_helper.from_array(arr, nm))
        self._dim_cache[key] = nm
        return nm

    def node(self, op: str, inputs, attrs: dict | None = None, base: str | None = None) -> str:
        out = self.name(base or op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out, **(attrs or {})))
        return out

    # ---- symbolic dims -> runtime 1-D int64 tensors ---------------------------------------
    def dim_tensor(self, e) -> str:
        """A 1-element int64 tensor holding dim expression ``e`` at run time."""
        if isinstance(e, (int, np.integer)) or (isinstance(e, sympy.Expr) and e.is_Integer):
            return self.const(np.array([int(e)], np.int64), "dim")
        key = ("dim", e)
        if key in self._dim_cache:
            return self._dim_cache[key]
        if isinstance(e, sympy.Symbol):
            src = self.sources.get(e.name)
            if src is None:
                raise EmitError(f"cannot materialize dimension {e}: no graph input carries it")
            t, axis, *scale = src   # (input, axis) or (input, axis, factor): dim = factor · shape[axis]
            out = self.node("Shape", [t], {"start": axis, "end": axis + 1}, base=f"dim_{e.name}")
            if scale and int(scale[0]) != 1:
                out = self.node("Mul", [out, self.const(np.array([int(scale[0])], np.int64), "dim")])
        elif isinstance(e, sympy.Add):
            terms = [self.dim_tensor(a) for a in e.args]
            out = terms[0]
            for t in terms[1:]:
                out = self.node("Add", [out, t])
        elif isinstance(e, sympy.Mul):
            terms = [self.dim_tensor(a) for a in e.args]
            out = terms[0]
            for t in terms[1:]:
                out = self.node("Mul", [out, t])
        elif isinstance(e, sympy.floor) and isinstance(e.args[0], sympy.Mul):
            num, den = e.args[0].as_numer_denom()
            out = self.node("Div", [self.dim_tensor(num), self.dim_tensor(den)])
        elif type(e).__name__ in ("Max", "Min"):   # torch.sym_max / sym_min (sympy's or torch's class)
            out = self.node(type(e).__name__, [self.dim_tensor(a) for a in e.args])
        elif type(e).__name__ in ("Mod", "PythonMod"):   # non-negative sizes: Python's % = ONNX Mod
            out = self.node("Mod", [self.dim_tensor(e.args[0]), self.dim_tensor(e.args[1])])
        elif type(e).__name__ == "FloorDiv":
            out = self.node("Div", [self.dim_tensor(e.args[0]), self.dim_tensor(e.args[1])])
        else:
            raise EmitError(f"cannot materialize dimension expression {e}")
        self._dim_cache[key] = out
        return out

    def shape_tensor(self, dims) -> str:
        if all(isinstance(d, (int, np.integer)) for d in dims):
            return self.const(np.array([int(d) for d in dims], np.int64), "shape")
        key = ("shape", tuple(dims))
        if key not in self._dim_cache:
            self._dim_cache[key] = self.node("Concat", [self.dim_tensor(d) for d in dims],
                                             {"axis": 0}, base="shape")
        return self._dim_cache[key]

    # ---- ops ------------------------------------------------------------------------------
    def add(self, op: str, inputs, outputs, *, name: str, domain: str | None = None, **attrs) -> None:
        """Append one ONNX node (trailing omitted operands dropped)."""
        ins = list(inputs)
        while ins and ins[-1] == "":
            ins.pop()
        self.nodes.append(helper.make_node(op, ins, list(outputs), name=name, domain=domain or None, **attrs))

    @staticmethod
    def attrs(attrs: dict) -> dict:
        return {k: _attr(v) for k, v in attrs.items()}

    def standard(self, n: OpNode, inputs: list[str] | None = None) -> None:
        """``n`` as the ONNX op of the same name; its attribute operands become tensors (unless
        ``inputs`` are given already)."""
        spec = get_opdef(n.op).attr_operands
        names = spec[1] if spec else ()
        if inputs is None:
            inputs = self.attr_inputs(n) if spec else list(n.inputs)
        attrs = {k: v for k, v in n.attrs.items() if k not in names}
        self.add(n.op, inputs, n.outputs, name=n.name, domain=n.domain, **self.attrs(attrs))

    def emit(self, n: OpNode) -> None:
        if "activation_quant" in n.annotations:   # W8A8 / FP8 (passes/quant): compiler/backend/quantized.py
            emit_quantized_op(self, n)
            return
        if n.op in ("Gather", "MatMul", "Transpose") and self._table_op(n):
            return
        if n.op == "Attention" and "kv_quant" in n.annotations:   # an int8 KV cache (passes/quant/kv.py)
            emit_kv_attention(self, n)
            return
        get_opdef(n.op, where=n.name)   # an unknown op is an UnsupportedOpError
        custom = LOWERINGS.get(n.op)
        if custom is not None:
            custom(self, n)
        else:
            self.standard(n)

    def _table_op(self, n: OpNode) -> bool:
        """A quantized embedding table's readers (compiler/backend/quantized.py): the row gather,
        a tied head reading ``Transpose(P)``, and that Transpose (nothing reads the float table)."""
        if n.op == "Gather" and int(n.attrs.get("axis", 0)) == 0 and table_of(self.g, n.inputs[0]) == n.inputs[0]:
            emit_table_gather(self, n)
            return True
        if n.op == "MatMul" and len(n.inputs) > 1 and n.inputs[1] not in self.g.params \
                and table_of(self.g, n.inputs[1]) is not None:
            level = (self.g.meta.get("quantization") or {}).get("ort_accuracy_level", 4)
            emit_shared_head(self, n, level)
            return True
        if n.op == "Transpose" and n.inputs[0] in self.g.params and table_of(self.g, n.inputs[0]) is not None:
            return all(c.op == "MatMul" and i == 1 for c, i in self.g.consumers(n.outputs[0])) \
                and n.outputs[0] not in self.g.outputs
        return False

    def call_function(self, n: OpNode, fname: str, body: Callable, attrs: dict | None = None) -> None:
        """``n`` as a call of the local function ``fname`` in the rooftop domain
        (``body(opset_imports)`` builds the FunctionProto once per model)."""
        if fname not in self.functions:
            self.functions[fname] = body([helper.make_opsetid("", OPSET)])
        self.add(fname, [t for t in n.inputs if t], n.outputs, name=n.name, domain=FUSED_DOMAIN, **(attrs or {}))

    def attr_inputs(self, n: OpNode) -> list[str]:
        """The operand list with ``OpDef.attr_operands`` materialized as tensors."""
        k, extra = get_opdef(n.op).attr_operands
        ins = list(n.inputs)
        if any(a not in n.attrs for a in extra) and len(n.inputs) > k:
            return ins  # operands already given as tensors (e.g. an imported ONNX model)
        scalar = get_opdef(n.op).scalar_operands
        for a in extra:
            v = n.attrs.get(a)
            if v is None:
                ins.append("")
            elif scalar:
                if isinstance(v, float):
                    ins.append(self.const(np.array(v, np.float32)))
                elif isinstance(v, (int, np.integer)) or v.is_Integer:
                    dt = np.int64 if n.op == "CumSum" or self.g.type(n.outputs[0]).dtype == "int64" else np.int32
                    ins.append(self.const(np.array(int(v), dt)))
                else:
                    ins.append(self.node("Squeeze", [self.dim_tensor(v)]))
            elif isinstance(v, (list, tuple)):
                if all(isinstance(x, (int, np.integer)) for x in v):
                    ins.append(self.const(np.array([int(x) for x in v], np.int64)))
                else:
                    ins.append(self.shape_tensor(v))
            else:
                ins.append(self.const(np.array([int(v)], np.int64)))
        return ins


def _attr(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    if isinstance(v, np.ndarray):
        return numpy_helper.from_array(v)
    return v


def _set_metadata(proto, meta: dict[str, str]) -> None:
    """Serialized annotations (compiler.ir.annotations.serialized) as ``metadata_props`` entries."""
    for k, v in sorted(meta.items()):
        proto.metadata_props.add(key=k, value=v)


def _value_info(name: str, ty: TensorType, dim_names: dict | None = None,
                elem: int | None = None) -> onnx.ValueInfoProto:
    """``dim_names`` (``graph.meta["dim_names"]``): display names of symbolic dims, by their
    expression's text (passes/kv_paging: ``P/16`` → ``max_blocks``); ``elem`` overrides the
    element type (a KV cache stored quantized)."""
    names = dim_names or {}
    dims = [d if isinstance(d, int) else names.get(str(d), str(d)) for d in ty.shape]
    return helper.make_tensor_value_info(name, elem or DTYPES[ty.dtype][2], dims)


def _param_tensor(p) -> onnx.TensorProto:
    ty = p.type
    if ty.dtype == "bfloat16":
        from onnx import helper as h
        t = numpy_helper.from_array(np.asarray(p.data, np.float32), p.name)
        return h.make_tensor(p.name, TensorProto.BFLOAT16, t.dims,
                             _bf16_bits(np.asarray(p.data, np.float32)), raw=True)
    want = DTYPES[ty.dtype][1]
    return numpy_helper.from_array(np.asarray(p.data, dtype=want).reshape(
        [int(d) for d in ty.shape]), p.name)


def _bf16_bits(a: np.ndarray) -> bytes:
    u = a.astype(np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16).tobytes()


def to_model(g: Graph, functions: list[onnx.FunctionProto] | None = None) -> onnx.ModelProto:
    """Build the ModelProto (weights inline). Raises EmitError when weights are missing."""
    missing = [p.name for p in g.params.values() if p.data is None]
    if missing:
        raise EmitError(
            f"cannot emit ONNX: {len(missing)} parameters have no data (the model was built on the "
            f"meta device, e.g. {missing[0]!r}). Use model.weights=random to emit an ONNX model "
            f"with seeded random weights, or emit.enabled=false to cost the model only.")
    em = Emitter(g)
    for n in g.topo_order():
        k = len(em.nodes)
        em.emit(n)
        meta = serialized(n.annotations)
        if meta:
            for node in em.nodes[k:]:
                if node.name == n.name:
                    _set_metadata(node, meta)
    inits, dq_nodes = [], []
    for p in g.params.values():
        meta = serialized(p.annotations)
        qd = p.annotations.get("quant_data")
        fmt = p.annotations.get("weight_format")
        if qd is None and fmt is not None and not fmt.quantized and fmt.dtype in ("float16", "bfloat16") \
                and p.type.dtype == "float32":   # an fp32 model's weight stored in 16 bits (quant=auto): + Cast
            half = Param(f"{p.name}.{fmt.dtype}", TensorType(fmt.dtype, p.type.shape), p.data)
            q_inits = [_param_tensor(half)]
            dq_nodes.append(helper.make_node("Cast", [half.name], [p.name], name=f"{p.name}.cast",
                                             to=TensorProto.FLOAT))
        elif qd is None:
            t = _param_tensor(p)
            q_inits = [t]
        elif is_table(qd):   # a quantized embedding table: packed rows for its gathers and tied heads
            q_inits = table_initializers(p.name, qd)
        else:   # passes/quant: codes + scales (+ zero points), DequantizeLinear where a float use needs it
            float_use = any(not reads_codes(g, c) for c, _ in g.consumers(p.name)) or p.name in g.outputs
            q_inits, q_nodes = param_initializers(p.name, qd, dequantize=float_use)
            dq_nodes += q_nodes
        if meta:
            _set_metadata(q_inits[0], meta)
        inits += q_inits
    em.nodes[:0] = dq_nodes
    inits += em.inits
    io = kv_io_dtypes(g)
    graph = helper.make_graph(
        em.nodes, g.name, [_value_info(t, g.type(t), g.meta.get("dim_names"), io.get(t)) for t in g.inputs],
        [_value_info(t, g.type(t), g.meta.get("dim_names"), io.get(t)) for t in g.outputs], initializer=inits)
    domains = {n.domain for n in g if n.domain} | {nd.domain for nd in em.nodes if nd.domain == CONTRIB_DOMAIN}
    opsets = [helper.make_opsetid("", OPSET)] + [helper.make_opsetid(d, 1) for d in sorted(domains)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION,
                              producer_name="rooftop", producer_version="0.1.0",
                              functions=list(functions or []) + list(em.functions.values()))
    for k, v in sorted((g.meta.get("onnx_metadata") or {}).items()):   # e.g. passes/quant's session config
        model.metadata_props.add(key=k, value=str(v))
    return model


def subgraph_model(g: Graph, nodes, outputs, *, inputs=(), params=(), dim_sources=None,
                   name: str = "subgraph") -> onnx.ModelProto:
    """A standalone ONNX model of ``nodes`` (emitted in the given order) computing ``outputs``
    from the graph inputs ``inputs`` and the parameters ``params`` (initializers; data needed).
    Symbolic dims come from ``graph.meta["dim_sources"]`` (``dim_sources`` fills missing ones);
    graph inputs that carry them are added when the model reads them. Value infos carry dtypes
    only (onnx infers shapes). For passes that evaluate a piece of the graph (constant folding,
    mask analysis) — the public face of :class:`Emitter` for them."""
    em = Emitter(g)
    for k, v in (dim_sources or {}).items():
        em.sources.setdefault(k, v)
    for n in nodes:
        em.emit(n)
    ins = list(inputs)
    for src, *_axis in em.sources.values():
        if src in g.inputs and src not in ins and any(src in nd.input for nd in em.nodes):
            ins.append(src)
    inits = [numpy_helper.from_array(np.asarray(g.params[t].data, dtype=DTYPES[g.type(t).dtype][1]), t)
             for t in dict.fromkeys(params)] + em.inits
    vi = [helper.make_tensor_value_info(t, DTYPES[g.type(t).dtype][2], None) for t in ins]
    out = [helper.make_tensor_value_info(t, DTYPES[g.type(t).dtype][2], None) for t in outputs]
    opsets = [helper.make_opsetid("", OPSET)] + ([helper.make_opsetid(FUSED_DOMAIN, 1)] if em.functions else []) \
        + ([helper.make_opsetid(CONTRIB_DOMAIN, 1)] if any(nd.domain == CONTRIB_DOMAIN for nd in em.nodes) else [])
    return helper.make_model(helper.make_graph(em.nodes, name, vi, out, initializer=inits), opset_imports=opsets,
                             ir_version=IR_VERSION, functions=list(em.functions.values()))


def check(model: onnx.ModelProto, path: str | None = None) -> onnx.ModelProto:
    """onnx.checker full check + strict shape inference; raises EmitError with the reason."""
    try:
        if path is not None:
            onnx.checker.check_model(path, full_check=True)
            return model
        onnx.checker.check_model(model, full_check=True)
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as e:  # onnx raises several exception types
        raise EmitError(f"the emitted ONNX model failed validation: {e}. This is a rooftop bug; "
                        f"run with pipeline=none to see whether a pass caused it.") from e


def save(g: Graph, out_path: str, *, external_data: bool | None = None) -> dict[str, Any]:
    """Emit, check and write ``out_path`` (+ ``<out_path>.data`` when weights go external) via a
    temporary directory and rename. Returns facts for the report."""
    model = to_model(g)
    size = sum(p.data.nbytes for p in g.params.values() if p.data is not None)
    ext = size >= TWO_GB - 2**26 if external_data is None else bool(external_data)
    out_dir = os.path.dirname(os.path.abspath(out_path)) or "."
    base = os.path.basename(out_path)
    tmp = tempfile.mkdtemp(prefix=".emit-", dir=out_dir)
    try:
        tmp_path = os.path.join(tmp, base)
        if ext:
            onnx.save_model(model, tmp_path, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=base + ".data", size_threshold=1024)
            check(model, tmp_path)
        else:
            check(model)
            onnx.save_model(model, tmp_path)
        files = sorted(os.listdir(tmp))
        for f in files:
            os.replace(os.path.join(tmp, f), os.path.join(out_dir, f))
    finally:
        for f in os.listdir(tmp):
            os.unlink(os.path.join(tmp, f))
        os.rmdir(tmp)
    return {"path": base, "external_data": ext, "files": files, "weights_bytes": int(size),
            "nodes": len(model.graph.node), "opset": OPSET, "ir_version": IR_VERSION}


def set_model_metadata(model: onnx.ModelProto, props: dict[str, str]) -> onnx.ModelProto:
    """Set model-level ``metadata_props`` entries (replacing those with the same keys; the others
    stay), in key order so the same props give the same bytes. Returns ``model``."""
    keep = [(p.key, p.value) for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    for k, v in sorted(keep + [(str(k), str(v)) for k, v in props.items()]):
        model.metadata_props.add(key=k, value=v)
    return model
