"""ONNX emission forms of quantized linear layers (opset 23), chosen so onnxruntime CPU runs them
on its integer / n-bit kernels:

- weight-only (W8A16 / W4A16): ``DequantizeLinear`` of int4/uint4/int8/uint8 codes — per
  channel (``axis``) or blocked along the reduction axis (``axis`` + ``block_size``, opset 21+) —
  feeding ``MatMul``. onnxruntime's QDQ transformer rewrites DQ(blocked) → MatMul into its
  ``MatMulNBits`` kernel; its activation precision is the session option
  ``session.qdq_matmulnbits_accuracy_level`` (0 = as the model, exact; 4 = int8 activations,
  fast), which rooftop records in the model's ``metadata_props`` (:data:`ORT_SESSION_KEY`).
- W8A8 dynamic: ``DynamicQuantizeLinear`` (uint8, per tensor) → ``MatMulInteger`` (int8 weights)
  → ``Cast`` → ``Mul`` by ``x_scale · w_scale`` — the form onnxruntime fuses into
  ``DynamicQuantizeMatMul`` (what its own ``quantize_dynamic`` emits).
- W8A8 static: ``QuantizeLinear``/``DequantizeLinear`` of the activation with a calibrated scale
  (uint8 + zero point, or int8 symmetric) and DQ(int8 weights) → ``MatMul``; onnxruntime fuses it
  into an integer matmul.
- FP8 E4M3: DQ(float8e4m3fn weights) → ``MatMul``, optionally with Q/DQ of the activation in
  float8e4m3fn. onnxruntime CPU has no FP8 matmul kernel: this is an accuracy simulation.
- Embedding tables ``P[V, K]`` quantized in blocks along each row (int4/uint4/int8,
  ``quant_data.axis == 1``): one packed uint8 initializer ``[V, K/block, block·bits/8]`` read by
  onnxruntime's ``GatherBlockQuantized`` (the gather, then the dequantization of the gathered rows
  only) and, for a tied LM head ``x · Pᵀ``, by ``MatMulNBits`` — the same bytes: MatMulNBits' ``B``
  is exactly the table's rows (its ``N`` = the vocabulary) packed in blocks along ``K``. Both are
  onnxruntime contrib ops (``com.microsoft``): ONNX's ``Gather`` takes no 4-bit type, and a
  ``DequantizeLinear`` → ``Transpose`` → ``MatMul`` head would dequantize the whole table per run.
  Signed codes are stored offset by ``2^(bits−1)`` (both ops' default zero point).

These functions only build nodes and initializers from arrays; the numerics that produce the
codes live in ``passes/quant``.
"""
from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import onnx

from compiler.errors import EmitError
from onnx import TensorProto, helper, numpy_helper

from compiler.backend.lowering import _activation_nodes
from compiler.ir.annotations import (ACCURACY_LEVEL_KEY, NM_KEY_PREFIX, ORT_SESSION_KEY,  # noqa: F401 (re-exported)
                                      ActivationQuant, QuantizedData, nm_metadata)
from compiler.ir import B, DTYPES, P, S
from compiler.ir.masks import padding_mask_input



def tensor(arr: np.ndarray, name: str) -> onnx.TensorProto:
    """Initializer from a numpy array (ml_dtypes int4/uint4/float8 arrays included)."""
    return numpy_helper.from_array(np.asarray(arr), name)


def dequantize_weight(name: str, codes: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None,
                      axis: int | None, block_size: int | None
                      ) -> tuple[list[onnx.TensorProto], list[onnx.NodeProto]]:
    """Initializers ``<name>.q`` / ``.scale`` (/ ``.zp``) and a ``DequantizeLinear`` producing
    ``name`` (so consumers of the fp weight are unchanged)."""
    inits = [tensor(codes, f"{name}.q"), tensor(np.asarray(scale, np.float32), f"{name}.scale")]
    ins = [f"{name}.q", f"{name}.scale"]
    if zero_point is not None:
        inits.append(tensor(zero_point, f"{name}.zp"))
        ins.append(f"{name}.zp")
    attrs = {}
    if axis is not None:
        attrs["axis"] = int(axis)
    if block_size:
        attrs["block_size"] = int(block_size)
    node = helper.make_node("DequantizeLinear", ins, [name], name=f"{name}.dq", **attrs)
    return inits, [node]


def matmul_dynamic_int8(x: str, w_codes: str, w_scale: str, w_zero_point: str | None, y: str,
                        base: str) -> list[onnx.NodeProto]:
    """``y = x · W`` with x quantized at run time to uint8 (per tensor) and int8 weights, in the
    form onnxruntime fuses into ``DynamicQuantizeMatMul``."""
    mk = helper.make_node
    xq, xs, xz = f"{base}.xq", f"{base}.xscale", f"{base}.xzp"
    nodes = [mk("DynamicQuantizeLinear", [x], [xq, xs, xz], name=f"{base}.dql"),
             mk("Mul", [xs, w_scale], [f"{base}.scale"], name=f"{base}.scale_mul"),
             mk("MatMulInteger", [xq, w_codes, xz] + ([w_zero_point] if w_zero_point else []),
                [f"{base}.acc"], name=f"{base}.mmi"),
             mk("Cast", [f"{base}.acc"], [f"{base}.accf"], name=f"{base}.cast", to=TensorProto.FLOAT),
             mk("Mul", [f"{base}.accf", f"{base}.scale"], [y], name=f"{base}.rescale")]
    return nodes


def matmul_dynamic_int8_per_token(x: str, w_codes: str, w_scale: str, y: str, base: str
                                   ) -> tuple[list[onnx.TensorProto], list[onnx.NodeProto]]:
    """``y = x · W`` with each row (token) of x quantized at run time, symmetric
    (``s_row = max|x_row| / 127``, codes in [−127, 127]) and stored as uint8 with the fixed zero
    point 128, against int8 weights: ``MatMulInteger`` (U8S8) rescaled by ``s_row · w_scale``.
    DynamicQuantizeLinear is per tensor only and onnxruntime's MatMulInteger takes only a scalar
    activation zero point, hence symmetric rows shifted by 128; the int8×int8 (S8S8) form of the
    same computation ran ~9× slower than fp32 in onnxruntime 1.32 CPU. Even this form is not fused
    by onnxruntime: at [256, 768]·[768, 3072] on 2 threads it took 26 ms against 16 ms fp32 and
    7.7 ms for the per-tensor DynamicQuantizeMatMul — per-token is an accuracy option there."""
    mk = helper.make_node
    c127 = tensor(np.asarray(127.0, np.float32), f"{base}.c127")
    tiny = tensor(np.asarray(1e-30, np.float32), f"{base}.tiny")
    lo = tensor(np.asarray(-127.0, np.float32), f"{base}.lo")
    c128 = tensor(np.asarray(128.0, np.float32), f"{base}.c128")
    zp = tensor(np.asarray(128, np.uint8), f"{base}.zp")
    axes = tensor(np.asarray([-1], np.int64), f"{base}.axes")
    nodes = [mk("Abs", [x], [f"{base}.abs"], name=f"{base}.abs"),
             mk("ReduceMax", [f"{base}.abs", axes.name], [f"{base}.amax"], name=f"{base}.amax", keepdims=1),
             mk("Div", [f"{base}.amax", c127.name], [f"{base}.s0"], name=f"{base}.s0"),
             mk("Max", [f"{base}.s0", tiny.name], [f"{base}.xs"], name=f"{base}.xs"),
             mk("Div", [x, f"{base}.xs"], [f"{base}.xn"], name=f"{base}.xn"),
             mk("Round", [f"{base}.xn"], [f"{base}.xr"], name=f"{base}.xr"),
             mk("Clip", [f"{base}.xr", lo.name, c127.name], [f"{base}.xc"], name=f"{base}.xc"),
             mk("Add", [f"{base}.xc", c128.name], [f"{base}.xu"], name=f"{base}.xu"),
             mk("Cast", [f"{base}.xu"], [f"{base}.xq"], name=f"{base}.xq", to=TensorProto.UINT8),
             mk("MatMulInteger", [f"{base}.xq", w_codes, zp.name], [f"{base}.acc"], name=f"{base}.mmi"),
             mk("Cast", [f"{base}.acc"], [f"{base}.accf"], name=f"{base}.cast", to=TensorProto.FLOAT),
             mk("Mul", [f"{base}.accf", f"{base}.xs"], [f"{base}.rows"], name=f"{base}.rowscale"),
             mk("Mul", [f"{base}.rows", w_scale], [y], name=f"{base}.rescale")]
    return [c127, tiny, lo, c128, zp, axes], nodes


def qdq_activation_dynamic_fp8(x: str, y: str, base: str
                               ) -> tuple[list[onnx.TensorProto], list[onnx.NodeProto]]:
    """``y = DQ(Q(x))`` in float8e4m3fn with the scale computed at run time (``max|x| / 448``,
    per tensor) — FP8 activation simulation."""
    mk = helper.make_node
    c = tensor(np.asarray(448.0, np.float32), f"{base}.c448")
    tiny = tensor(np.asarray(1e-30, np.float32), f"{base}.tiny")
    z = helper.make_tensor(f"{base}.zp", TensorProto.FLOAT8E4M3FN, [], [0.0])
    nodes = [mk("Abs", [x], [f"{base}.abs"], name=f"{base}.abs"),
             mk("ReduceMax", [f"{base}.abs"], [f"{base}.amax"], name=f"{base}.amax", keepdims=0),
             mk("Div", [f"{base}.amax", c.name], [f"{base}.s0"], name=f"{base}.s0"),
             mk("Max", [f"{base}.s0", tiny.name], [f"{base}.s"], name=f"{base}.s"),
             mk("QuantizeLinear", [x, f"{base}.s", z.name], [f"{base}.q"], name=f"{base}.ql"),
             mk("DequantizeLinear", [f"{base}.q", f"{base}.s", z.name], [y], name=f"{base}.dql")]
    return [c, tiny, z], nodes


def qdq_activation(x: str, y: str, scale: float, zero_point: int | None, dtype: str, base: str
                   ) -> tuple[list[onnx.TensorProto], list[onnx.NodeProto]]:
    """``y = DQ(Q(x))`` with a fixed per-tensor scale: uint8/int8 (static W8A8) or
    float8e4m3fn (FP8 activations)."""
    s = tensor(np.asarray(scale, np.float32), f"{base}.scale")
    if dtype == "uint8":
        z = tensor(np.asarray(zero_point or 0, np.uint8), f"{base}.zp")
    elif dtype == "int8":
        z = tensor(np.asarray(zero_point or 0, np.int8), f"{base}.zp")
    else:
        z = helper.make_tensor(f"{base}.zp", DTYPES[dtype][2], [], [0.0])
    mk = helper.make_node
    nodes = [mk("QuantizeLinear", [x, s.name, z.name], [f"{base}.q"], name=f"{base}.ql"),
             mk("DequantizeLinear", [f"{base}.q", s.name, z.name], [y], name=f"{base}.dql")]
    return [s, z], nodes


CONTRIB_DOMAIN = "com.microsoft"


def is_table(qd: QuantizedData | None) -> bool:
    """A quantized embedding table: blocks along axis 1 of a 2-D ``[V, K]`` weight."""
    return qd is not None and qd.axis == 1 and bool(qd.block_size) and np.asarray(qd.codes).ndim == 2


def _bits(codes: np.ndarray) -> tuple[int, bool]:
    """(bits, signed) of a code array (ml_dtypes int4/uint4, numpy int8/uint8)."""
    name = str(codes.dtype)
    return (4 if "4" in name else 8), not name.startswith("u")


def pack_table(qd: QuantizedData) -> dict[str, np.ndarray | int | None]:
    """The packed forms of a quantized table ``[V, K]`` (K a multiple of the block): ``packed``
    uint8 ``[V, K/bs, bs·bits/8]`` (4-bit: two codes per byte, the first in the low nibble),
    ``scale`` ``[V, K/bs]``, ``zp`` uint8 ``[V, K/bs]`` unpacked (None: symmetric, the ops' default
    zero point ``2^(bits−1)`` applies to the offset codes), ``zp_nbits`` MatMulNBits' packed zero
    points, ``bits``, ``block``."""
    codes = np.asarray(qd.codes)
    bits, signed = _bits(codes)
    v, k = codes.shape
    bs = int(qd.block_size)
    if k % bs:
        raise EmitError(f"quantized table row length {k} is not a multiple of its block {bs}: the table cannot be packed")
    u = codes.astype(np.int32) + (1 << (bits - 1) if signed else 0)
    u = u.astype(np.uint8).reshape(v, k // bs, bs)
    packed = (u[..., 0::2] | (u[..., 1::2] << 4)).astype(np.uint8) if bits == 4 else u
    zp = None
    zp_nbits = None
    if qd.zero_point is not None:
        zp = np.asarray(qd.zero_point).astype(np.int32).astype(np.uint8).reshape(v, k // bs)
        if bits == 4:
            z = zp if zp.shape[1] % 2 == 0 else np.concatenate([zp, np.zeros((v, 1), np.uint8)], 1)
            zp_nbits = (z[:, 0::2] | (z[:, 1::2] << 4)).astype(np.uint8)
        else:
            zp_nbits = zp
    return {"packed": np.ascontiguousarray(packed), "scale": np.asarray(qd.scale, np.float32).reshape(v, k // bs),
            "zp": zp, "zp_nbits": zp_nbits, "bits": bits, "block": bs}


def table_initializers(name: str, qd: QuantizedData) -> list[onnx.TensorProto]:
    """``<name>.qpacked`` (shared by the gather and a tied head), ``<name>.scale`` ``[V, K/bs]``
    (MatMulNBits), ``<name>.scale3`` ``[V, K/bs, 1]`` (GatherBlockQuantized) and their zero points."""
    t = pack_table(qd)
    v, kb = t["scale"].shape
    out = [tensor(t["packed"], f"{name}.qpacked"), tensor(t["scale"], f"{name}.scale"),
           tensor(t["scale"].reshape(v, kb, 1), f"{name}.scale3")]
    if t["zp"] is not None:
        out += [tensor(t["zp_nbits"], f"{name}.zpn"), tensor(t["zp"].reshape(v, kb, 1), f"{name}.zp3")]
    return out


def table_of(graph, tensor_name: str) -> str | None:
    """The quantized table parameter behind ``tensor_name`` (itself, or ``Transpose`` of it)."""
    p = graph.params.get(tensor_name)
    if p is not None:
        return tensor_name if is_table(p.annotations.get("quant_data")) else None
    prod = graph.producer_of(tensor_name)
    if prod is not None and prod.op == "Transpose" and prod.inputs and prod.inputs[0] in graph.params:
        return table_of(graph, prod.inputs[0])
    return None


def emit_table_gather(em, n) -> None:
    """``Gather(P, ids)`` of a quantized table: GatherBlockQuantized on the packed rows
    ``[.., K/bs, bs]``, reshaped to ``[.., K]``."""
    w = n.inputs[0]
    qd = em.g.params[w].annotations["quant_data"]
    bits, _ = _bits(np.asarray(qd.codes))
    ins = [f"{w}.qpacked", n.inputs[1], f"{w}.scale3"] + ([f"{w}.zp3"] if qd.zero_point is not None else [])
    rows = em.name(f"{n.name}.rows")
    em.add("GatherBlockQuantized", ins, [rows], name=f"{n.name}.gbq", domain=CONTRIB_DOMAIN, bits=bits,
           block_size=int(qd.block_size), gather_axis=0, quantize_axis=2)
    rank = len(em.g.type(n.inputs[1]).shape)
    k = int(np.asarray(qd.codes).shape[1])
    em.add("Reshape", [rows, em.const(np.array([0] * rank + [k], np.int64), "rows_shape")], list(n.outputs),
           name=n.name)


def emit_shared_head(em, n, accuracy_level: int) -> None:
    """``x · Transpose(P)`` of a quantized table (a tied LM head): MatMulNBits on the table's own
    packed bytes (``N`` = rows of the table, blocks along ``K``)."""
    w = table_of(em.g, n.inputs[1])
    qd = em.g.params[w].annotations["quant_data"]
    bits, _ = _bits(np.asarray(qd.codes))
    v, k = np.asarray(qd.codes).shape
    ins = [n.inputs[0], f"{w}.qpacked", f"{w}.scale"] + ([f"{w}.zpn"] if qd.zero_point is not None else [])
    em.add("MatMulNBits", ins, list(n.outputs), name=n.name, domain=CONTRIB_DOMAIN, K=int(k), N=int(v), bits=bits,
           block_size=int(qd.block_size), accuracy_level=int(accuracy_level))


def kv_io_dtypes(graph) -> dict[str, int]:
    """Graph inputs/outputs stored quantized (an Attention's past/present K/V with ``kv_quant``)
    -> their ONNX element type."""
    out = {}
    for n in graph:
        kq = n.annotations.get("kv_quant")
        if kq is None:
            continue
        for t in list(n.inputs[4:6]) + list(n.outputs[1:3]):
            if t and (t in graph.inputs or t in graph.outputs):
                out[t] = DTYPES[kq.dtype][2]
    return out


def emit_kv_attention(em, n) -> None:
    """An ``Attention`` with ``kv_quant`` (passes/quant/kv.py) as onnxruntime's
    ``GroupQueryAttention`` reading and appending an int8 cache: per-head/channel static scales
    (``k_quant_type = v_quant_type = PER_CHANNEL``), ``seqlens_k = P + S − 1`` per sequence (``sum(mask) − 1``
    when the mask operand is the key padding of a 2-D ``attention_mask``: right padding) and
    ``total_sequence_length = P + S`` from the runtime shapes. 4-D ``[B, H, S, D]`` operands are
    laid out as the op's 3-D ``[B, S, H·D]`` and back."""
    kq = n.annotations["kv_quant"]
    g = em.g
    q, k, v = n.inputs[:3]
    hkv, d = np.asarray(kq.k_scale).shape
    four = g.type(q).rank == 4
    heads = int(g.type(q).shape[1]) if four else int(n.attrs["q_num_heads"])

    def to3(t):
        tt = em.node("Transpose", [t], {"perm": [0, 2, 1, 3]}, base="gqa_bshd")
        return em.node("Reshape", [tt, em.const(np.array([0, 0, -1], np.int64), "gqa_3d")], base="gqa_3d")
    if four:
        q, k, v = to3(q), to3(k), to3(v)
    i32 = TensorProto.INT32
    total = em.node("Cast", [em.dim_tensor(P + S)], {"to": i32}, base="gqa_total1")
    pad = padding_mask_input(g, n.inputs[3]) if len(n.inputs) > 3 and n.inputs[3] else None
    if pad is None:
        seqlen = em.node("Sub", [total, em.const(np.array([1], np.int32), "one_i32")], base="gqa_seqlen1")
        seqlens = em.node("Expand", [seqlen, em.shape_tensor([B])], base="gqa_seqlens")
    else:       # key padding of a 2-D attention_mask [B, P+S]: valid tokens first (right padding)
        valid = em.node("ReduceSum", [em.node("Cast", [pad], {"to": i32}, base="gqa_mask_i32"),
                                      em.const(np.array([1], np.int64), "axis1")], {"keepdims": 0},
                        base="gqa_valid")
        seqlen = em.node("Sub", [valid, em.const(np.array([1], np.int32), "one_i32")], base="gqa_seqlen1")
        seqlens = em.node("Expand", [seqlen, em.shape_tensor([B])], base="gqa_seqlens")   # a [1, P+S] mask broadcasts
    total_s = em.node("Squeeze", [total], base="gqa_total")
    ks = em.const(np.asarray(kq.k_scale, np.float32).reshape(1, hkv, 1, d), "k_scale")
    vs = em.const(np.asarray(kq.v_scale, np.float32).reshape(1, hkv, 1, d), "v_scale")
    attrs = {"num_heads": heads, "kv_num_heads": int(hkv), "k_quant_type": "PER_CHANNEL",
             "v_quant_type": "PER_CHANNEL", "kv_cache_bit_width": 8}
    if n.attrs.get("scale") is not None:
        attrs["scale"] = float(n.attrs["scale"])
    if n.attrs.get("softcap"):
        attrs["softcap"] = float(n.attrs["softcap"])
    out = em.name(f"{n.name}.o3") if four else n.outputs[0]
    ins = [q, k, v, n.inputs[4], n.inputs[5], seqlens, total_s, "", "", "", "", "", ks, vs]
    em.add("GroupQueryAttention", ins, [out, n.outputs[1], n.outputs[2]], name=n.name, domain=CONTRIB_DOMAIN,
           **attrs)
    if four:
        dv = int(g.type(n.outputs[0]).shape[3])
        o4 = em.node("Reshape", [out, em.const(np.array([0, 0, heads, dv], np.int64), "gqa_4d")], base="gqa_4d")
        em.add("Transpose", [o4], [n.outputs[0]], name=f"{n.name}.bhsd", perm=[0, 2, 1, 3])


def session_config(model: onnx.ModelProto) -> dict[str, str]:
    """onnxruntime session config entries the artifact asks for (rooftop metadata)."""
    for p in model.metadata_props:
        if p.key == ORT_SESSION_KEY:
            return dict(json.loads(p.value))
    return {}


def set_metadata(model: onnx.ModelProto, entries: dict[str, str]) -> None:
    """Add or replace ``metadata_props`` entries."""
    keep = [p for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    for p in keep:
        model.metadata_props.append(p)
    for k in sorted(entries):
        model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=str(entries[k])))


def nm_patterns(model: onnx.ModelProto) -> dict[str, dict]:
    return {p.key[len(NM_KEY_PREFIX):]: json.loads(p.value) for p in model.metadata_props
            if p.key.startswith(NM_KEY_PREFIX)}


def make_session(model: onnx.ModelProto | str, *, threads: int | None = None,
                 optimized_path: str | None = None, extra: dict[str, str] | None = None,
                 providers: Sequence[str] = ("CPUExecutionProvider",)):
    """An onnxruntime session applying the artifact's recorded session config (accuracy level)."""
    import onnxruntime as ort
    m = onnx.load(model, load_external_data=False) if isinstance(model, str) else model
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    for k, v in {**session_config(m), **(extra or {})}.items():
        so.add_session_config_entry(k, str(v))
    src = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(src, so, providers=list(providers))


# ------------------------------------------------------------------------------------------------
# IR side: what the quantize pass leaves on parameters / ops, and how the emitter writes it

def param_initializers(name: str, qd: QuantizedData, *, dequantize: bool
                       ) -> tuple[list[onnx.TensorProto], list[onnx.NodeProto]]:
    """Initializers of a quantized weight; with ``dequantize`` also the DequantizeLinear that
    produces the fp weight under its own name."""
    if dequantize:
        return dequantize_weight(name, qd.codes, qd.scale, qd.zero_point, qd.axis, qd.block_size)
    inits = [tensor(qd.codes, f"{name}.q"), tensor(np.asarray(qd.scale, np.float32), f"{name}.scale")]
    if qd.zero_point is not None:
        inits.append(tensor(qd.zero_point, f"{name}.zp"))
    return inits, []


def reads_codes(graph, node) -> bool:
    """True when ``node`` consumes its weight's integer codes directly (dynamic int8 W8A8)."""
    aq = node.annotations.get("activation_quant")
    if aq is None or aq.dtype == "float8e4m3fn" or aq.mode == "static":
        return False
    w = node.inputs[1] if len(node.inputs) > 1 else ""
    return w in graph.params and "quant_data" in graph.params[w].annotations


def _renamed(nodes: list[onnx.NodeProto], keep: set[str], prefix: str) -> list[onnx.NodeProto]:
    out = []
    for nd in nodes:
        n2 = onnx.NodeProto()
        n2.CopyFrom(nd)
        for seq in (n2.input, n2.output):
            for i, t in enumerate(seq):
                if t and t not in keep:
                    seq[i] = f"{prefix}.{t}"
        n2.name = f"{prefix}.{nd.op_type}.{len(out)}"
        out.append(n2)
    return out


def emit_quantized_op(em, n) -> None:
    """Emit an op carrying ``activation_quant`` (MatMul / MatMulEpilogue) in the onnxruntime form
    of its scheme; ``em`` is the emitter (``nodes``, ``inits``, ``name()``, ``emit()``)."""
    aq = n.annotations["activation_quant"]
    x, w = n.inputs[0], n.inputs[1]
    if reads_codes(em.g, n):
        qd = em.g.params[w].annotations["quant_data"]
        epi = n.op == "MatMulEpilogue"
        mm = em.name(f"{n.name}.mm") if epi else n.outputs[0]
        zp = f"{w}.zp" if qd.zero_point is not None else None
        if aq.mode == "dynamic":
            em.nodes.extend(matmul_dynamic_int8(x, f"{w}.q", f"{w}.scale", zp, mm, n.name))
        else:
            inits, nodes = matmul_dynamic_int8_per_token(x, f"{w}.q", f"{w}.scale", mm, n.name)
            em.inits.extend(inits)
            em.nodes.extend(nodes)
        if epi:
            bias = n.inputs[2] if len(n.inputs) > 2 and n.inputs[2] else None
            z = mm
            if bias:
                z = em.name(f"{n.name}.bias")
                em.nodes.append(helper.make_node("Add", [mm, bias], [z], name=z))
            act = _activation_nodes(n.attrs.get("activation", ""), z, n.outputs[0])
            em.nodes.extend(_renamed(act, {z, n.outputs[0]}, n.name))
        return
    # QDQ on the activation, then the op itself on the fake-quantized input
    xd = em.name(f"{n.name}.xdq")
    if aq.mode == "static":
        inits, nodes = qdq_activation(x, xd, aq.scale, aq.zero_point, aq.dtype, f"{n.name}.act")
    elif aq.dtype == "float8e4m3fn":
        inits, nodes = qdq_activation_dynamic_fp8(x, xd, f"{n.name}.act")
    else:
        raise EmitError(f"{n.name}: no ONNX form for activation_quant {aq}; this is a rooftop bug — run without "
                        f"quant= to get an artifact")
    em.inits.extend(inits)
    em.nodes.extend(nodes)
    plain = n.copy()
    plain.inputs[0] = xd
    plain.annotations.pop("activation_quant")
    em.emit(plain)
