"""IR → ONNX (opset 23, IR version 10).

Standard ops are emitted as the ONNX op of the same name. Attributes that rooftop keeps as
(possibly symbolic) values but ONNX wants as inputs — ``Reshape.shape``, ``Expand.shape``,
``Slice`` bounds, ``Range`` bounds, ``ConstantOfShape.shape``, ``Unsqueeze/Squeeze/Reduce*``
axes, ``TopK.k``, ``CumSum.axis`` — become constant initializers, or for sympy dims, small
shape computations from the graph inputs (``B``/``S`` from ``input_ids``, ``P`` from
``past_key.0``). Fused groups marked by passes are emitted as ONNX local functions in the
``rooftop`` domain (onnxruntime inlines them).

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

from compiler.annotations import serialized
from compiler.errors import RooftopError
from compiler.ir import DTYPES, Graph, OpNode, TensorType

OPSET = 23
IR_VERSION = 10
TWO_GB = 2**31

# op -> names of attributes that become inputs, in input order after the data operands
_ATTR_INPUTS: dict[str, list[str]] = {
    "Unsqueeze": ["axes"], "Squeeze": ["axes"], "ReduceMean": ["axes"], "ReduceSum": ["axes"],
    "ReduceMax": ["axes"], "ReduceMin": ["axes"], "ReduceProd": ["axes"], "ReduceL2": ["axes"],
    "ReduceSumSquare": ["axes"], "ReduceLogSumExp": ["axes"], "Reshape": ["shape"],
    "Expand": ["shape"], "Slice": ["starts", "ends", "axes", "steps"], "TopK": ["k"],
    "CumSum": ["axis"], "ConstantOfShape": ["shape"], "Range": ["start", "limit", "delta"],
}
_SCALAR_ATTR_INPUTS = {"Range", "CumSum"}
# data operands before the attribute inputs (1 for the other ops of _ATTR_INPUTS)
_DATA_OPERANDS = {"ConstantOfShape": 0, "Range": 0}


class EmitError(RooftopError):
    """The IR could not be turned into a valid ONNX model."""


class _Emitter:
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
            t, axis = src
            out = self.node("Shape", [t], {"start": axis, "end": axis + 1}, base=f"dim_{e.name}")
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
    def emit(self, n: OpNode):
        if "activation_quant" in n.annotations:   # W8A8 / FP8 (passes/quant): compiler/quant_onnx.py
            from compiler.quant_onnx import emit_quantized_op
            emit_quantized_op(self, n)
            return
        custom = EMITTERS.get(n.op)
        if custom is not None:
            custom(self, n)
            return
        attrs = {k: _attr(v) for k, v in n.attrs.items() if k not in _ATTR_INPUTS.get(n.op, [])}
        ins = list(n.inputs)
        extra = _ATTR_INPUTS.get(n.op, [])
        if extra:
            ins = self._attr_inputs(n, ins, extra)
        while ins and ins[-1] == "":
            ins.pop()
        self.nodes.append(helper.make_node(n.op, ins, list(n.outputs), name=n.name,
                                           domain=n.domain or None, **attrs))

    def _attr_inputs(self, n: OpNode, ins: list[str], extra: list[str]) -> list[str]:
        ins = list(ins)
        if any(a not in n.attrs for a in extra) and len(n.inputs) > _DATA_OPERANDS.get(n.op, 1):
            return ins  # operands already given as tensors (e.g. an imported ONNX model)
        if n.op == "Reshape":
            shape = list(n.attrs["shape"])
            src = self.g.type(n.inputs[0]).shape
            # keep input dims with 0 (ONNX copies them), so fewer shape computations are needed
            if not n.attrs.get("allowzero"):   # (with allowzero=1 a 0 means an empty dim)
                shape = [0 if (not isinstance(d, int) and i < len(src) and src[i] == d) else d
                         for i, d in enumerate(shape)]
            sym = [i for i, d in enumerate(shape) if not isinstance(d, int)]
            if len(sym) == 1 and -1 not in shape:
                shape[sym[0]] = -1
            return ins + [self.shape_tensor(shape)]
        if n.op == "Expand":
            src = self.g.type(n.inputs[0]).shape
            out = list(n.attrs["shape"])
            off = len(out) - len(src)
            out = [1 if (i >= off and src[i - off] == d) else d for i, d in enumerate(out)]
            return ins + [self.shape_tensor(out)]
        if n.op == "ConstantOfShape":
            return ins + [self.shape_tensor(n.attrs["shape"])]
        for a in extra:
            v = n.attrs.get(a)
            if v is None:
                ins.append("")
            elif n.op in _SCALAR_ATTR_INPUTS:
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


def _emit_constant_of_shape(em: _Emitter, n: OpNode):
    ty = em.g.type(n.outputs[0])
    npdt = DTYPES[ty.dtype][1]
    value = np.asarray(n.attrs.get("value", 0)).reshape(-1)[:1]
    value = numpy_helper.from_array(np.asarray(value if value.size else [0], dtype=npdt))
    shape = em.shape_tensor(n.attrs["shape"]) if "shape" in n.attrs else n.inputs[0]
    em.nodes.append(helper.make_node("ConstantOfShape", [shape],
                                     list(n.outputs), name=n.name, value=value))


def _emit_range(em: _Emitter, n: OpNode):
    ty = em.g.type(n.outputs[0])
    npdt = DTYPES[ty.dtype][1]
    if "start" not in n.attrs:  # bounds given as (scalar) tensors
        em.nodes.append(helper.make_node("Range", list(n.inputs), list(n.outputs), name=n.name))
        return
    ins = []
    for a in ("start", "limit", "delta"):
        v = n.attrs[a]
        if isinstance(v, (int, float, np.integer, np.floating)) or v.is_Number:
            ins.append(em.const(np.array(v, npdt)))
        else:
            t = em.node("Squeeze", [em.dim_tensor(v)])
            ins.append(t if ty.dtype == "int64" else em.node("Cast", [t], {"to": DTYPES[ty.dtype][2]}))
    em.nodes.append(helper.make_node("Range", ins, list(n.outputs), name=n.name))


def _emit_constant(em: _Emitter, n: OpNode):
    em.nodes.append(helper.make_node("Constant", [], list(n.outputs), name=n.name,
                                     **{k: _attr(v) for k, v in n.attrs.items()}))


# ---- fused ops (passes/fusion) as local functions in the "rooftop" domain ----------------------
FUSED_DOMAIN = "rooftop"
_ACT_NAMES = {"": "", "gelu": "Gelu", "gelu_tanh": "GeluTanh", "relu": "Relu", "silu": "SiLU",
              "swiglu": "SwiGLU"}


def _activation_nodes(act: str, x: str, y: str) -> list[onnx.NodeProto]:
    mk = helper.make_node
    if act in ("gelu", "gelu_tanh"):
        return [mk("Gelu", [x], [y], approximate="tanh" if act == "gelu_tanh" else "none")]
    if act == "relu":
        return [mk("Relu", [x], [y])]
    if act == "silu":
        return [mk("Sigmoid", [x], ["sig"]), mk("Mul", [x, "sig"], [y])]
    if act == "swiglu":
        return [mk("Split", [x], ["gate", "up"], axis=-1, num_outputs=2), mk("Sigmoid", ["gate"], ["sig"]),
                mk("Mul", ["gate", "sig"], ["silu"]), mk("Mul", ["silu", "up"], [y])]
    return [mk("Identity", [x], [y])]


def _fused_function(n: OpNode) -> tuple[str, Callable[[], onnx.FunctionProto], dict]:
    """(function name, body builder, call attributes) of a fused op."""
    mk = helper.make_node
    ops = [helper.make_opsetid("", OPSET)]
    bias = len([t for t in n.inputs if t]) > (3 if n.op == "ResidualNorm" else 2)
    if n.op == "MatMulEpilogue":
        act = n.attrs.get("activation", "")
        name = "MatMul" + ("Bias" if bias else "") + _ACT_NAMES[act]
        ins = ["A", "W"] + (["Bias"] if bias else [])

        def body():
            nodes = [mk("MatMul", ["A", "W"], ["mm"])] + ([mk("Add", ["mm", "Bias"], ["z"])] if bias else [])
            nodes += _activation_nodes(act, "z" if bias else "mm", "Y")
            return helper.make_function(FUSED_DOMAIN, name, ins, ["Y"], nodes, ops)
        return name, body, {}
    if n.op == "SwiGLU":
        packed = len([t for t in n.inputs if t]) == 1
        name = "SwiGLUPacked" if packed else "SwiGLU"

        def body():
            nodes = ([mk("Split", ["X"], ["G", "U"], axis=-1, num_outputs=2)] if packed else []) + [
                mk("Sigmoid", ["G"], ["sig"]), mk("Mul", ["G", "sig"], ["silu"]), mk("Mul", ["silu", "U"], ["Y"])]
            return helper.make_function(FUSED_DOMAIN, name, ["X"] if packed else ["G", "U"], ["Y"], nodes, ops)
        return name, body, {}
    if n.op == "ResidualNorm":
        norm = {"rms": "RMSNormalization", "layer": "LayerNormalization"}[n.attrs["norm"]]
        name = "Residual" + ("RMSNorm" if n.attrs["norm"] == "rms" else "LayerNorm") + ("Bias" if bias else "")
        ins = ["A", "R", "Scale"] + (["Bias"] if bias else [])
        call = {"epsilon": float(n.attrs.get("epsilon", 1e-5)), "axis": int(n.attrs.get("axis", -1)),
                "stash_type": int(n.attrs.get("stash_type", 1))}

        def body():
            norm_node = mk(norm, ["Sum"] + ins[2:], ["Y"])
            norm_node.attribute.extend([
                helper.make_attribute_ref("epsilon", onnx.AttributeProto.FLOAT),
                helper.make_attribute_ref("axis", onnx.AttributeProto.INT),
                helper.make_attribute_ref("stash_type", onnx.AttributeProto.INT)])
            return helper.make_function(FUSED_DOMAIN, name, ins, ["Y", "Sum"],
                                        [mk("Add", ["A", "R"], ["Sum"]), norm_node], ops,
                                        attributes=list(call))
        return name, body, call
    raise EmitError(f"no ONNX function for fused op {n.op} ({n.name})")


def _emit_fused(em: _Emitter, n: OpNode):
    name, body, attrs = _fused_function(n)
    if name not in em.functions:
        em.functions[name] = body()
    em.nodes.append(helper.make_node(name, [t for t in n.inputs if t], list(n.outputs), name=n.name,
                                     domain=FUSED_DOMAIN, **attrs))


EMITTERS: dict[str, Callable[[_Emitter, OpNode], None]] = {
    "ConstantOfShape": _emit_constant_of_shape,
    "Range": _emit_range,
    "Constant": _emit_constant,
    "MatMulEpilogue": _emit_fused,
    "SwiGLU": _emit_fused,
    "ResidualNorm": _emit_fused,
}


def _set_metadata(proto, meta: dict[str, str]) -> None:
    """Serialized annotations (compiler.annotations.serialized) as ``metadata_props`` entries."""
    for k, v in sorted(meta.items()):
        proto.metadata_props.add(key=k, value=v)


def _value_info(name: str, ty: TensorType) -> onnx.ValueInfoProto:
    dims = [d if isinstance(d, int) else str(d) for d in ty.shape]
    return helper.make_tensor_value_info(name, DTYPES[ty.dtype][2], dims)


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
    em = _Emitter(g)
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
        if qd is None:
            t = _param_tensor(p)
            q_inits = [t]
        else:   # passes/quant: codes + scales (+ zero points), DequantizeLinear where a float use needs it
            from compiler.quant_onnx import param_initializers, reads_codes
            float_use = any(not reads_codes(g, c) for c, _ in g.consumers(p.name)) or p.name in g.outputs
            q_inits, q_nodes = param_initializers(p.name, qd, dequantize=float_use)
            dq_nodes += q_nodes
        if meta:
            _set_metadata(q_inits[0], meta)
        inits += q_inits
    em.nodes[:0] = dq_nodes
    inits += em.inits
    graph = helper.make_graph(
        em.nodes, g.name, [_value_info(t, g.type(t)) for t in g.inputs],
        [_value_info(t, g.type(t)) for t in g.outputs], initializer=inits)
    domains = {n.domain for n in g if n.domain}
    opsets = [helper.make_opsetid("", OPSET)] + [helper.make_opsetid(d, 1) for d in sorted(domains)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION,
                              producer_name="rooftop", producer_version="0.1.0",
                              functions=list(functions or []) + list(em.functions.values()))
    for k, v in sorted((g.meta.get("onnx_metadata") or {}).items()):   # e.g. passes/quant's session config
        model.metadata_props.add(key=k, value=str(v))
    return model


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
