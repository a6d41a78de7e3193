"""ONNX lowering of the ops that are not "the standard ONNX op with its attributes": rooftop's
fused ops (emitted as ONNX local functions in the ``rooftop`` domain), ops whose attributes hold
sympy dims where ONNX wants a runtime shape tensor, and the paged-KV gather.

:data:`LOWERINGS` maps an op name to ``lower(emitter, node)``; the emitter
(:mod:`compiler.backend.emit`) hands each an ``em`` with: ``g``, ``const(arr)``,
``node(op, ins, attrs)``, ``add(op, ins, outs, name=, domain=, **attrs)``, ``dim_tensor(expr)``,
``shape_tensor(dims)``, ``attr_inputs(node)``, ``standard(node, inputs)``,
``call_function(node, name, build)``. Every other op is emitted as the standard op of its name.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compiler.ir.ops import FUSED_DOMAIN
from compiler.ir.tensors import DTYPES, IRError

# compiler/backend/emit.py, hands each of these an ``em`` with: g, const(arr), node(op, ins, attrs),
# add(op, ins, outs, name=, domain=, **attrs), dim_tensor(expr), shape_tensor(dims),
# attr_inputs(node), standard(node, inputs), function(name, build)).

def _emit_reshape(em, n):
    if "shape" not in n.attrs:   # a runtime shape tensor (an imported model): pass it through
        return em.standard(n)
    shape = list(n.attrs["shape"])
    src = em.g.type(n.inputs[0]).shape
    # keep input dims with 0 (ONNX copies them), so fewer shape computations are needed
    if not n.attrs.get("allowzero"):   # (with allowzero=1 a 0 means an empty dim)
        shape = [0 if (not isinstance(d, int) and i < len(src) and src[i] == d) else d
                 for i, d in enumerate(shape)]
    sym = [i for i, d in enumerate(shape) if not isinstance(d, int)]
    if len(sym) == 1 and -1 not in shape:
        shape[sym[0]] = -1
    em.standard(n, [n.inputs[0], em.shape_tensor(shape)])


def _emit_expand(em, n):
    if "shape" not in n.attrs:
        return em.standard(n)
    src = em.g.type(n.inputs[0]).shape
    out = list(n.attrs["shape"])
    off = len(out) - len(src)
    out = [1 if (i >= off and src[i - off] == d) else d for i, d in enumerate(out)]
    em.standard(n, [n.inputs[0], em.shape_tensor(out)])


def _emit_constant_of_shape(em, n):
    npdt = DTYPES[em.g.type(n.outputs[0]).dtype][1]
    value = np.asarray(n.attrs.get("value", 0)).reshape(-1)[:1]
    value = numpy_helper.from_array(np.asarray(value if value.size else [0], dtype=npdt))
    shape = em.shape_tensor(n.attrs["shape"]) if "shape" in n.attrs else n.inputs[0]
    em.add("ConstantOfShape", [shape], list(n.outputs), name=n.name, value=value)


def _emit_range(em, n):
    ty = em.g.type(n.outputs[0])
    npdt = DTYPES[ty.dtype][1]
    if "start" not in n.attrs:  # bounds given as (scalar) tensors
        em.add("Range", list(n.inputs), list(n.outputs), name=n.name)
        return
    ins = []
    for a in ("start", "limit", "delta"):
        v = n.attrs[a]
        if isinstance(v, (int, float, np.integer, np.floating)) or v.is_Number:
            ins.append(em.const(np.array(v, npdt)))
        else:
            t = em.node("Squeeze", [em.dim_tensor(v)])
            ins.append(t if ty.dtype == "int64" else em.node("Cast", [t], {"to": DTYPES[ty.dtype][2]}))
    em.add("Range", ins, list(n.outputs), name=n.name)


def _emit_constant(em, n):
    em.add("Constant", [], list(n.outputs), name=n.name, **em.attrs(n.attrs))


_ACT_NAMES = {"": "", "gelu": "Gelu", "gelu_tanh": "GeluTanh", "relu": "Relu", "silu": "SiLU",
              "swiglu": "SwiGLU"}


def _activation_nodes(act: str, x: str, y: str) -> list:
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


def _n_operands(n) -> int:
    return len([t for t in n.inputs if t])


def _emit_matmul_epilogue(em, n):
    w = em.g.params.get(n.inputs[1])
    if _n_operands(n) > 2 and w is not None and "quant_data" not in w.annotations:   # biased, plain weight
        if n.attrs.get("bias_row"):
            return _emit_bias_row_epilogue(em, n)
        if n.attrs.get("gemm"):
            return _emit_gemm_epilogue(em, n)
    mk = helper.make_node
    bias = _n_operands(n) > 2
    act = n.attrs.get("activation", "")
    name = "MatMul" + ("Bias" if bias else "") + _ACT_NAMES[act]
    ins = ["A", "W"] + (["Bias"] if bias else [])

    def body(ops):
        nodes = [mk("MatMul", ["A", "W"], ["mm"])] + ([mk("Add", ["mm", "Bias"], ["z"])] if bias else [])
        nodes += _activation_nodes(act, "z" if bias else "mm", "Y")
        return helper.make_function(FUSED_DOMAIN, name, ins, ["Y"], nodes, ops)
    em.call_function(n, name, body)


def _emit_gemm_epilogue(em, n):
    """``gemm=1`` (the fusion pass's cpu target): A of any rank ≥ 2 flattened to rows, one 2-D
    ``Gemm`` with the bias inside, the activation, and the rows' shape restored — a runtime then
    has no ``MatMul + Add + act`` chain to re-fuse into a bias-activation kernel of its own."""
    mk = helper.make_node
    act = n.attrs.get("activation", "")
    name = "GemmBias" + _ACT_NAMES[act]

    def body(ops):
        nodes = [mk("Constant", [], ["minus1"], value_ints=[-1]),
                 mk("Shape", ["W"], ["k"], start=0, end=1), mk("Shape", ["W"], ["n"], start=1, end=2),
                 mk("Concat", ["minus1", "k"], ["rows_k"], axis=0), mk("Reshape", ["A", "rows_k"], ["A2"]),
                 mk("Gemm", ["A2", "W", "Bias"], ["z"])]
        nodes += _activation_nodes(act, "z", "y2")
        nodes += [mk("Shape", ["A"], ["lead"], start=0, end=-1), mk("Concat", ["lead", "n"], ["out_shape"], axis=0),
                  mk("Reshape", ["y2", "out_shape"], ["Y"])]
        return helper.make_function(FUSED_DOMAIN, name, ["A", "W", "Bias"], ["Y"], nodes, ops)
    em.call_function(n, name, body)


def _emit_bias_row_epilogue(em, n):
    """``bias_row=1`` (the fusion pass's cpu target, wide linears): the bias becomes one more row
    of the weight and A gets a column of ones, ``[A, 1] · [W; b] = A·W + b`` — the bias then costs
    a copy of A (``Pad``, M × K) instead of a pass over the output (M × N), which is what a
    ``Gemm``'s bias costs on onnxruntime's CPU (it fills the output with the bias before the GEMM).
    ``[W; b]`` is a constant expression of two initializers: runtimes fold it once at load."""
    mk = helper.make_node
    act = n.attrs.get("activation", "")
    dtype = em.g.type(n.inputs[0]).dtype
    # the 1 has A's type (Pad's value must): one function per dtype, fp32's under the plain name
    name = "MatMulBiasRow" + _ACT_NAMES[act] + ("" if dtype == "float32" else "_" + dtype)
    one = numpy_helper.from_array(np.array(1, DTYPES[dtype][1]))

    def body(ops):
        nodes = [mk("Constant", [], ["one"], value=one),
                 mk("Constant", [], ["pad_k"], value_ints=[0, 1]), mk("Constant", [], ["last"], value_ints=[-1]),
                 mk("Constant", [], ["zero"], value_ints=[0]),
                 mk("Pad", ["A", "pad_k", "one", "last"], ["A1"], mode="constant"),
                 mk("Unsqueeze", ["Bias", "zero"], ["bias_row"]),
                 mk("Concat", ["W", "bias_row"], ["Wb"], axis=0),
                 mk("MatMul", ["A1", "Wb"], ["z"])]
        nodes += _activation_nodes(act, "z", "Y")
        return helper.make_function(FUSED_DOMAIN, name, ["A", "W", "Bias"], ["Y"], nodes, ops)
    em.call_function(n, name, body)


def _emit_swiglu(em, n):
    mk = helper.make_node
    packed = _n_operands(n) == 1
    name = "SwiGLUPacked" if packed else "SwiGLU"

    def body(ops):
        nodes = ([mk("Split", ["X"], ["G", "U"], axis=-1, num_outputs=2)] if packed else []) + [
            mk("Sigmoid", ["G"], ["sig"]), mk("Mul", ["G", "sig"], ["silu"]), mk("Mul", ["silu", "U"], ["Y"])]
        return helper.make_function(FUSED_DOMAIN, name, ["X"] if packed else ["G", "U"], ["Y"], nodes, ops)
    em.call_function(n, name, body)


def _emit_residual_norm(em, n):
    mk = helper.make_node
    bias = _n_operands(n) > 3
    norm = {"rms": "RMSNormalization", "layer": "LayerNormalization"}[n.attrs["norm"]]
    name = "Residual" + ("RMSNorm" if n.attrs["norm"] == "rms" else "LayerNorm") + ("Bias" if bias else "")
    ins = ["A", "R", "Scale"] + (["Bias"] if bias else [])
    call = {"epsilon": float(n.attrs.get("epsilon", 1e-5)), "axis": int(n.attrs.get("axis", -1)),
            "stash_type": int(n.attrs.get("stash_type", 1))}

    def body(ops):
        norm_node = mk(norm, ["Sum"] + ins[2:], ["Y"])
        norm_node.attribute.extend([
            helper.make_attribute_ref("epsilon", onnx.AttributeProto.FLOAT),
            helper.make_attribute_ref("axis", onnx.AttributeProto.INT),
            helper.make_attribute_ref("stash_type", onnx.AttributeProto.INT)])
        return helper.make_function(FUSED_DOMAIN, name, ins, ["Y", "Sum"],
                                    [mk("Add", ["A", "R"], ["Sum"]), norm_node], ops, attributes=list(call))
    em.call_function(n, name, body, call)


def _emit_paged_kv_gather(em, n):
    pool, table = n.inputs[0], n.inputs[1]
    _, h, _, d = em.g.type(pool).shape
    if not (isinstance(h, int) and isinstance(d, int)):
        raise IRError(f"{n.name}: PagedKVGather needs static kv_heads and head_dim, got {em.g.type(pool)}")
    blocks = em.node("Gather", [pool, table], {"axis": 0}, base="paged_blocks")      # [B, M, H, bs, D]
    heads_first = em.node("Transpose", [blocks], {"perm": [0, 2, 1, 3, 4]}, base="paged_heads")
    em.add("Reshape", [heads_first, em.const(np.array([0, h, -1, d], np.int64), "paged_shape")],
           list(n.outputs), name=n.name)


# ------------------------------------------------------------------------------------------------
# Attention: rooftop's structure attributes (the ``attention`` annotation's window / ALiBi, and a
# padding mask beside is_causal) as the explicit mask standard ONNX Attention takes

STRUCTURE_ATTRS = ("window", "alibi_slopes")


def _seq_axis(rank: int) -> int:
    return 1 if rank == 3 else 2


def _emit_attention(em, n):
    """``Attention`` with ``window=W`` (keys ``q − W < k ≤ q``) or ``alibi_slopes`` (bias
    ``slope_h · k``): the structure becomes one explicit mask computed from the operands' own
    lengths — query i sees keys ≤ i + past length, ONNX Attention's own causal frontier
    (bottom-right with a KV cache) — combined with the mask operand (padding), so the artifact is
    right at any length and with any past. A padding mask broadcast over the queries is expanded
    (onnxruntime wants the query axis); other Attentions are emitted as they are."""
    if len(n.inputs) > 6 and n.inputs[6]:   # sinks
        return _emit_sink_attention(em, n)
    window = n.attrs.get("window")
    slopes = n.attrs.get("alibi_slopes")
    ins = list(n.inputs) + [""] * (6 - len(n.inputs))
    mask = ins[3]
    causal = bool(n.attrs.get("is_causal"))
    g = em.g
    if not window and slopes is None:
        if mask and g.type(mask).rank >= 2 and g.type(mask).shape[-2] == 1 and g.type(ins[0]).shape[-2 if g.type(ins[0]).rank == 4 else 1] != 1:
            # a padding mask broadcast over the queries: onnxruntime wants the query axis spelled out
            q, k, past = ins[0], ins[1], ins[4]
            qa, ka = _seq_axis(g.type(q).rank), _seq_axis(g.type(k).rank)
            s_q = em.node("Shape", [q], {"start": qa, "end": qa + 1})
            t = em.node("Shape", [k], {"start": ka, "end": ka + 1})
            if past:
                t = em.node("Add", [t, em.node("Shape", [past], {"start": 2, "end": 3})])
            lead = em.node("Shape", [mask], {"start": 0, "end": g.type(mask).rank - 2})
            shape = em.node("Concat", [lead, s_q, t], {"axis": 0})
            ins[3] = em.node("Expand", [mask, shape], base="attn_mask_rows")
            attrs = dict(n.attrs)
            return em.add("Attention", ins, list(n.outputs), name=n.name, **em.attrs(attrs))
        return em.standard(n)
    q, k, past = ins[0], ins[1], ins[4]
    qa, ka = _seq_axis(g.type(q).rank), _seq_axis(g.type(k).rank)
    s_q = em.node("Shape", [q], {"start": qa, "end": qa + 1}, base="attn_s")
    t = em.node("Shape", [k], {"start": ka, "end": ka + 1}, base="attn_t")
    zero, one = em.const(np.array(0, np.int64)), em.const(np.array(1, np.int64))
    offset = zero
    if past:   # ONNX Attention's causal frontier: query i sees keys ≤ i + past length
        p_len = em.node("Shape", [past], {"start": 2, "end": 3}, base="attn_p")
        t = em.node("Add", [t, p_len])
        offset = em.node("Squeeze", [p_len])
    t0 = em.node("Squeeze", [t])
    kpos = em.node("Range", [zero, t0, one], base="attn_kpos")
    qpos = em.node("Range", [offset, em.node("Add", [offset, em.node("Squeeze", [s_q])]), one], base="attn_qpos")
    qcol = em.node("Unsqueeze", [qpos, em.const(np.array([1], np.int64))])
    krow = em.node("Unsqueeze", [kpos, em.const(np.array([0], np.int64))])
    vis = em.node("LessOrEqual", [krow, qcol]) if causal else None
    if window:
        lo = em.node("Greater", [krow, em.node("Sub", [qcol, em.const(np.array(int(window), np.int64))])])
        vis = lo if vis is None else em.node("And", [vis, lo])
    if vis is not None:
        vis = em.node("Unsqueeze", [vis, em.const(np.array([0, 1], np.int64))], base="attn_structure")
    dtype = g.type(q).dtype
    npdt = DTYPES[dtype][1]
    float_mask = mask and g.type(mask).dtype != "bool"
    if mask and not float_mask:
        vis = mask if vis is None else em.node("And", [vis, mask])
    final = vis
    if slopes is not None or float_mask:
        bias = None
        if slopes is not None:
            sl = em.const(np.asarray(slopes, npdt).reshape(1, -1, 1, 1), "alibi_slopes")
            kf = em.node("Cast", [em.node("Unsqueeze", [krow, em.const(np.array([0, 1], np.int64))])],
                         {"to": DTYPES[dtype][2]})
            bias = em.node("Mul", [sl, kf], base="alibi")
        if float_mask:
            bias = mask if bias is None else em.node("Add", [bias, mask])
        final = bias if vis is None else em.node(
            "Where", [vis, bias, em.const(np.array(np.finfo(npdt).min, npdt))], base="attn_mask")
    attrs = {k2: v for k2, v in n.attrs.items() if k2 not in STRUCTURE_ATTRS and k2 != "is_causal"}
    em.add("Attention", [ins[0], ins[1], ins[2], final, ins[4], ins[5]], list(n.outputs), name=n.name,
           **em.attrs(attrs))


# attention beyond ONNX Attention's own attributes (compiler/ir/annotations.py AttentionSpec)

def _ints(*dims):
    if not all(isinstance(d, (int, np.integer)) for d in dims):
        raise IRError(f"static head counts and head dims are needed to emit this attention, got {dims}")
    return [int(d) for d in dims]


def _positions_mask(em, s_len: str, t_len: str, window: int | None) -> str:
    """Bool [S, T]: query i (position T − S + i) may see key j — causal, and within ``window``
    positions (q − W < k ≤ q) when given; ``s_len`` / ``t_len`` are 0-D int64 tensors."""
    one = em.const(np.array(1, np.int64), "one")
    zero = em.const(np.array(0, np.int64), "zero")
    qpos = em.node("Range", [em.node("Sub", [t_len, s_len]), t_len, one], base="q_pos")
    kpos = em.node("Range", [zero, t_len, one], base="k_pos")
    qi = em.node("Unsqueeze", [qpos, em.const(np.array([1], np.int64))])
    ki = em.node("Unsqueeze", [kpos, em.const(np.array([0], np.int64))])
    allowed = em.node("LessOrEqual", [ki, qi], base="causal")
    if window:
        lo = em.node("Sub", [qi, em.const(np.array(int(window), np.int64), "window")])
        allowed = em.node("And", [allowed, em.node("Greater", [ki, lo])], base="in_window")
    return allowed


def _dim(em, x: str, axis: int) -> str:
    """Dim ``axis`` of ``x`` as a 0-D int64 tensor."""
    return em.node("Squeeze", [em.node("Shape", [x], {"start": axis, "end": axis + 1}),
                               em.const(np.array([0], np.int64))], base="dim")


def _heads_first(em, x: str, heads: int) -> str:
    """[B, S, H·D] → [B, H, S, D]."""
    r = em.node("Reshape", [x, em.const(np.array([0, 0, heads, -1], np.int64))])
    return em.node("Transpose", [r], {"perm": [0, 2, 1, 3]})


def _emit_sink_attention(em, n):
    """An ``Attention`` with sinks (operand 6), which ONNX Attention has no operand for, within
    its window (attribute ``window`` or the ``attention`` annotation's) when it has one. Sinks: the cache concatenated
    explicitly (present = past ‖ new) and each head's sink logit as one more key column of zero
    key and value whose additive mask entry is the sink — softmax over [scores, sink], the sink's
    probability then multiplies a zero value (gpt-oss's sinks)."""
    spec = n.annotations.get("attention")
    sinks = n.inputs[6]
    window = n.attrs.get("window") or (spec.window if spec is not None else None)
    pad = n.inputs[3] if len(n.inputs) > 3 and n.inputs[3] else None
    if pad is not None and em.g.type(pad).dtype != "bool":
        raise IRError(f"{n.name}: a sink attention takes a boolean padding mask only, got {em.g.type(pad)}")
    q, k, v = n.inputs[:3]
    past_k = n.inputs[4] if len(n.inputs) > 4 and n.inputs[4] else None
    past_v = n.inputs[5] if len(n.inputs) > 5 and n.inputs[5] else None
    three_d = em.g.type(q).rank == 3
    attrs = {a: n.attrs[a] for a in ("scale", "softcap", "softmax_precision") if a in n.attrs}
    s_len = _dim(em, q, 1 if three_d else 2)
    t_len = em.node("Add", [_dim(em, past_k, 2), s_len]) if past_k is not None else s_len
    allowed = _positions_mask(em, s_len, t_len, window)
    if pad is not None:   # [S, T] and the padding mask [B, 1, 1, T] → [B, 1, S, T]
        allowed = em.node("And", [em.node("Unsqueeze", [allowed, em.const(np.array([0, 1], np.int64))]), pad])
    outs = list(n.outputs)
    if three_d:   # to [B, H, S, D]: the sink column is a key position
        h, hkv = _ints(n.attrs["q_num_heads"], n.attrs["kv_num_heads"])
        q, k, v = _heads_first(em, q, h), _heads_first(em, k, hkv), _heads_first(em, v, hkv)
    (h,) = _ints(em.g.type(n.inputs[0]).shape[1] if not three_d else n.attrs["q_num_heads"])
    keys, vals = k, v
    if past_k is not None:
        keys, vals = outs[1], outs[2]
        em.add("Concat", [past_k, k], [keys], name=f"{n.name}_present_key", axis=2)
        em.add("Concat", [past_v, v], [vals], name=f"{n.name}_present_value", axis=2)
    npdt = DTYPES[em.g.type(n.inputs[0]).dtype][1]
    bias = em.node("Where", [allowed, em.const(np.array(0, npdt)), em.const(np.array(-np.inf, npdt))], base="mask_bias")
    bias4 = bias if pad is not None else em.node("Unsqueeze", [bias, em.const(np.array([0, 1], np.int64))])  # [B|1, 1, S, T]
    bias_h = em.node("Expand", [bias4, em.const(np.array([1, h, 1, 1], np.int64))])                 # [B|1, H, S, T]
    sink = em.node("Reshape", [sinks, em.const(np.array([1, h, 1, 1], np.int64))], base="sink")
    if em.g.type(sinks).dtype != em.g.type(n.inputs[0]).dtype:
        sink = em.node("Cast", [sink], {"to": DTYPES[em.g.type(n.inputs[0]).dtype][2]})
    col_shape = em.node("Concat", [em.node("Shape", [bias_h], {"start": 0, "end": 3}),
                                   em.const(np.array([1], np.int64))], {"axis": 0})
    sink_col = em.node("Expand", [sink, col_shape], base="sink_col")                               # [B|1, H, S, 1]
    mask = em.node("Concat", [sink_col, bias_h], {"axis": 3}, base="sink_mask")                    # [B|1, H, S, 1+T]

    def zero_first(x):
        first = em.node("Slice", [x, em.const(np.array([0], np.int64)), em.const(np.array([1], np.int64)),
                                  em.const(np.array([2], np.int64))])
        z = em.node("Mul", [first, em.const(np.array(0, npdt))])
        return em.node("Concat", [z, x], {"axis": 2})
    if not three_d:
        em.add("Attention", [q, zero_first(keys), zero_first(vals), mask], outs[:1], name=n.name, **em.attrs(attrs))
        return
    y4 = em.node("Attention", [q, zero_first(keys), zero_first(vals), mask], em.attrs(attrs), base="attn")
    y = em.node("Transpose", [y4], {"perm": [0, 2, 1, 3]})
    em.add("Reshape", [y, em.const(np.array([0, 0, -1], np.int64))], outs[:1], name=n.name)


def _emit_latent_attention(em, n):
    """Multi-head latent attention in the expanded form (compiler/frontends/mla.py): the latent
    (past ‖ new) up-projected by kv_b_proj into per-head keys (‖ the shared rope key) and values,
    and a causal ONNX Attention with the expanded past — prefill and decode alike."""
    qn, qr, lat, kr, w = n.inputs[:5]
    past_l = n.inputs[5] if len(n.inputs) > 5 and n.inputs[5] else None
    past_r = n.inputs[6] if len(n.inputs) > 6 and n.inputs[6] else None
    h, dn = _ints(*em.g.type(qn).shape[1::2])
    (total,) = _ints(em.g.type(w).shape[0])
    dv = total // h - dn
    wt = em.node("Transpose", [w], {"perm": [1, 0]}, base="kv_b_t")

    def expand(latent, rope):
        kv = em.node("MatMul", [latent, wt], base="kv")                                            # [B, 1, t, H(dn+dv)]
        kv = em.node("Reshape", [kv, em.const(np.array([0, -1, h, dn + dv], np.int64))])           # [B, t, H, dn+dv]
        kv = em.node("Transpose", [kv], {"perm": [0, 2, 1, 3]})                                    # [B, H, t, dn+dv]
        k_nope, v = em.name("k_nope"), em.name("v")
        em.add("Split", [kv, em.const(np.array([dn, dv], np.int64))], [k_nope, v], name=em.name("split"), axis=3)
        rope_h = em.node("Expand", [rope, em.const(np.array([1, h, 1, 1], np.int64))], base="k_rope")
        return em.node("Concat", [k_nope, rope_h], {"axis": 3}, base="k"), v

    q = em.node("Concat", [qn, qr], {"axis": 3}, base="q")
    k_new, v_new = expand(lat, kr)
    attrs = {"is_causal": 1, **({"scale": float(n.attrs["scale"])} if "scale" in n.attrs else {})}
    mask = n.inputs[7] if len(n.inputs) > 7 and n.inputs[7] else ""
    if mask:   # the padding mask [B, 1, 1, T] with its query axis spelled out (onnxruntime wants it)
        t = _dim(em, lat, 2) if past_l is None else em.node("Add", [_dim(em, past_l, 2), _dim(em, lat, 2)])
        shape = em.node("Concat", [em.node("Shape", [mask], {"start": 0, "end": 2}),
                                   em.node("Shape", [qn], {"start": 2, "end": 3}),
                                   em.node("Unsqueeze", [t, em.const(np.array([0], np.int64))])], {"axis": 0})
        mask = em.node("Expand", [mask, shape], base="attn_mask_rows")
    if past_l is None:
        em.add("Attention", [q, k_new, v_new] + ([mask] if mask else []), n.outputs[:1], name=n.name, **attrs)
        return
    em.add("Concat", [past_l, lat], [n.outputs[1]], name=f"{n.name}_present_latent", axis=2)
    em.add("Concat", [past_r, kr], [n.outputs[2]], name=f"{n.name}_present_rope", axis=2)
    k_past, v_past = expand(past_l, past_r)
    em.add("Attention", [q, k_new, v_new, mask, k_past, v_past],   # (onnxruntime wants the present outputs)
           [n.outputs[0], em.name("expanded_key"), em.name("expanded_value")], name=n.name, **attrs)


def _emit_moe_matmul(em, n):
    """A grouped expert GEMM as one MatMul per expert over the rows routed to it (NonZero of
    ``expert == e``, Gather, MatMul with that expert's weight slice, ScatterND into the output):
    the artifact computes only the routed rows, like the per-expert kernels of a runtime."""
    x, w, ids = n.inputs[:3]
    e_count, _, n_out = _ints(*em.g.type(w).shape)
    npdt = DTYPES[em.g.type(n.outputs[0]).dtype][1]
    rows, parts = [], []
    for e in range(e_count):
        hit = em.node("Equal", [ids, em.const(np.array(e, np.int64))], base=f"expert{e}")
        idx = em.node("Reshape", [em.node("NonZero", [hit]), em.const(np.array([-1], np.int64))], base=f"rows{e}")
        xe = em.node("Gather", [x, idx], {"axis": 0})
        we = em.node("Gather", [w, em.const(np.array(e, np.int64))], {"axis": 0}, base=f"w{e}")
        parts.append(em.node("MatMul", [xe, we], base=f"y{e}"))
        rows.append(idx)
    y = em.node("Concat", parts, {"axis": 0})
    at = em.node("Unsqueeze", [em.node("Concat", rows, {"axis": 0}), em.const(np.array([1], np.int64))])
    shape = em.node("Concat", [em.node("Shape", [x], {"start": 0, "end": 1}), em.const(np.array([n_out], np.int64))],
                    {"axis": 0})
    zeros = em.node("ConstantOfShape", [shape], {"value": numpy_helper.from_array(np.zeros(1, npdt))})
    em.add("ScatterND", [zeros, at, y], list(n.outputs), name=n.name)


#: op name -> its lowering (ops not listed are emitted as the standard ONNX op of their name)
LOWERINGS = {"Reshape": _emit_reshape, "Expand": _emit_expand, "ConstantOfShape": _emit_constant_of_shape,
             "Range": _emit_range, "Constant": _emit_constant, "MatMulEpilogue": _emit_matmul_epilogue,
             "SwiGLU": _emit_swiglu, "ResidualNorm": _emit_residual_norm,
             "PagedKVGather": _emit_paged_kv_gather, "Attention": _emit_attention,
             "LatentAttention": _emit_latent_attention, "MoEMatMul": _emit_moe_matmul}
