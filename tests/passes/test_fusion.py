"""Fusion framework and rules on small hand-built graphs: Before / Expected / numbers.

Each rule is checked three ways: the ops it leaves (structure), that onnxruntime computes the same
values before and after (fp32, ≤ 1e-4), and "should not fire" cases (an interior value used
outside the group, a non-causal mask where a causal one is required, mismatched shapes, a fusion
the cost model predicts slower). Helpers here are shared by the other ``test_fusion_*`` files.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest

from compiler.ir import DTYPES, Graph, TensorType
from passes.fusion import RULES, run_rules
from tests.graphs import (RTOL_ATOL, Builder, assert_same_outputs, causal_mask, feeds_for, gelu_erf,  # noqa: F401
                          gelu_tanh, ops_of, ort_session, run_ort)



def fuse(g: Graph, rules, *, gate=None, explain=False):
    return run_rules(g, list(rules), gate=gate, explain=explain)[0]


# ------------------------------------------------------------------------------------------------
# attention

B_, H, HKV, S_, D = 2, 4, 2, 6, 8


def eager_attention(mask="causal", *, gqa=True, scale_on="scores", nan_guard=False, cast=False,
                    leak=False, softmax_axis=-1, b=B_, s=S_):
    """Q [b,H,s,D], K/V [b,Hkv,s,D] graph inputs → the eager/decomposed attention of one layer."""
    bd = Builder()
    hkv = HKV if gqa else H
    q = bd.input("q", (b, H, s, D))
    k = bd.input("k", (b, hkv, s, D))
    v = bd.input("v", (b, hkv, s, D))
    if gqa:
        rep = H // HKV

        def repeat(x):
            u = bd.op("Unsqueeze", x, axes=[2])
            e = bd.op("Expand", u, shape=[b, HKV, rep, s, D])
            return bd.op("Reshape", e, shape=[b, H, s, D])
        k, v = repeat(k), repeat(v)
    kt = bd.op("Transpose", k, perm=[0, 1, 3, 2])
    if scale_on == "qk":  # legacy exporter: q·√s and kᵀ·√s
        r = bd.const(D ** -0.25)
        scores = bd.op("MatMul", bd.op("Mul", q, r), bd.op("Mul", kt, r))
    else:
        scores = bd.op("Div", bd.op("MatMul", q, kt), bd.const(float(np.sqrt(D))))
    if mask == "causal":
        scores = bd.op("Add", bd.const(causal_mask(s)), scores)  # operands in the other order
    elif mask == "causal_min":
        scores = bd.op("Add", scores, bd.const(causal_mask(s, fill=np.finfo(np.float32).min)))
    elif mask == "window":   # sliding window of 2: causal and not too far back — not causal
        m = causal_mask(s)
        m[..., np.tril_indices(s, -2)[0], np.tril_indices(s, -2)[1]] = -np.inf
        scores = bd.op("Add", scores, bd.const(m))
    elif mask == "bidirectional":
        scores = bd.op("Add", scores, bd.const(np.zeros((1, 1, s, s), np.float32)))
    elif mask == "padding":
        am = bd.input("attention_mask", (b, s), "int64")
        keep = bd.op("Cast", bd.op("Unsqueeze", am, axes=[1, 2]), to=9)
        add = bd.op("Where", keep, bd.const(0.0), bd.const(-1e9))
        scores = bd.op("Add", scores, add)
    elif mask == "where":
        keep = bd.const(np.tril(np.ones((s, s), bool)).reshape(1, 1, s, s), "bool")
        scores = bd.op("Where", keep, scores, bd.const(-np.inf))
    if cast:
        scores = bd.op("Cast", scores, to=1)
    probs = bd.op("Softmax", scores, axis=softmax_axis)
    if nan_guard:
        probs = bd.op("Where", bd.op("IsNaN", probs), bd.const(0.0), probs)
    out = bd.op("MatMul", probs, v)
    return bd.out(out, probs) if leak else bd.out(out)


@pytest.mark.parametrize("mask,expect", [("causal", "causal"), ("causal_min", "causal"), ("where", "causal"),
                                         ("padding", "masked"), ("window", "masked"), ("none", "unmasked")])
@pytest.mark.parametrize("form", ["eager", "legacy"])
def test_attention_fuses_every_form(mask, expect, form):
    g = eager_attention(mask, scale_on="scores" if form == "eager" else "qk", nan_guard=form == "legacy",
                        cast=form == "eager")
    before = g.copy()
    stats = fuse(g, ["attention"])
    assert stats["attention"] == 1 and stats[f"attention.{expect}"] == 1
    ops = ops_of(g)
    assert ops.get("Attention") == 1 and "Softmax" not in ops and "MatMul" not in ops
    assert not any(n.op == "Expand" and g.type(n.outputs[0]).rank == 5 for n in g), \
        "repeat_kv dropped: Attention does GQA natively"
    att = next(n for n in g if n.op == "Attention")
    assert att.attrs["scale"] == pytest.approx(D ** -0.5)
    assert bool(att.attrs.get("is_causal")) == (expect == "causal")
    assert g.type(att.inputs[1]).shape[1] == HKV
    feeds = feeds_for(g, values={"attention_mask": np.array([[1] * S_, [1] * (S_ - 2) + [0, 0]], np.int64)})
    assert_same_outputs(before, g, feeds)


def test_attention_should_not_fire_when_probabilities_are_used_outside():
    g = eager_attention("causal", leak=True)
    stats, outcomes = run_rules(g, ["attention"], gate=None)
    assert stats["attention"] == 0 and "Attention" not in ops_of(g)
    assert "outside the group" in outcomes["attention"].closest_miss.reason or \
        "graph output" in outcomes["attention"].closest_miss.reason


def test_attention_should_not_fire_on_softmax_over_another_axis():
    g = eager_attention("none", softmax_axis=2)
    stats, outcomes = run_rules(g, ["attention"], gate=None)
    assert stats["attention"] == 0
    assert "softmax over axis" in outcomes["attention"].closest_miss.reason


@pytest.mark.parametrize("mask", ["window", "bidirectional", "padding"])
def test_causal_required_refuses_non_causal_mask(mask):
    """Importing an eager causal decoder needs a causal mask (the KV cache is lifted next)."""
    from compiler.ir.ops import UnsupportedOpError
    from passes.fusion import fuse_eager_attention
    g = eager_attention(mask)
    with pytest.raises(UnsupportedOpError, match="causal mask is required"):
        fuse_eager_attention(g)
    assert "Attention" not in ops_of(g)


def test_causal_required_accepts_causal_mask():
    from passes.fusion import fuse_eager_attention
    g = eager_attention("causal")
    assert fuse_eager_attention(g) == {"attention": 1, "attention.causal": 1}
    assert fuse_eager_attention(g) == {}, "a graph with Attention ops is left alone"


def test_gqa_repeat_in_front_of_attention_is_dropped():
    bd = Builder()
    q = bd.input("q", (B_, H, S_, D))
    k, v = bd.input("k", (B_, HKV, S_, D)), bd.input("v", (B_, HKV, S_, D))
    reps = []
    for x in (k, v):
        u = bd.op("Unsqueeze", x, axes=[2])
        reps.append(bd.op("Reshape", bd.op("Expand", u, shape=[B_, HKV, 2, S_, D]), shape=[B_, H, S_, D]))
    out = bd.op("Attention", q, reps[0], reps[1], is_causal=1, scale=0.3)
    g = bd.out(out)
    before = g.copy()
    assert fuse(g, ["attention_gqa"])["attention_gqa"] == 1
    assert ops_of(g) == {"Attention": 1}
    assert_same_outputs(before, g, feeds_for(g))


def layout_graph(*, merge="3d", leak=False, bad_split=False, past=True):
    """x [B, S, H·D] → Q/K/V linears → Reshape [B, S, h, D] → Transpose(0, 2, 1, 3) → Attention
    (GQA, causal, with a KV cache) → Transpose(0, 2, 1, 3) → Reshape (``merge``: [B, S, H·D] or
    GEMM rows [B·S, H·D])."""
    bd = Builder()
    x = bd.input("x", (B_, S_, H * D))
    heads = []
    for h in (H, HKV, HKV):
        y = bd.op("MatMul", x, bd.weight(H * D, h * D))
        shape = [B_, S_, h, D] if not (bad_split and h == H) else [B_, S_ * 2, h // 2, D]
        r = bd.op("Reshape", y, shape=shape)
        heads.append(bd.op("Transpose", r, perm=[0, 2, 1, 3] if not (bad_split and h == H) else [0, 2, 1, 3]))
    ins = list(heads)
    if past:
        ins += ["", bd.input("past_k", (B_, HKV, 3, D)), bd.input("past_v", (B_, HKV, 3, D))]
    outs = bd.op("Attention", *ins, n_out=3 if past else 1, is_causal=1, scale=0.25)
    y = outs[0] if past else outs
    yt = bd.op("Transpose", y, perm=[0, 2, 1, 3])
    shape = [B_, S_ * 2 if bad_split else S_, (H // 2 if bad_split else H) * D] if merge == "3d" else [-1, H * D]
    m = bd.op("Reshape", yt, shape=shape)
    o = bd.op("MatMul", m, bd.weight(H * D, 5))
    extra = [bd.op("Relu", heads[0])] if leak else []
    return bd.out(o, *(outs[1:] if past else []), *extra)


@pytest.mark.parametrize("merge", ["3d", "rows"])
@pytest.mark.parametrize("past", [True, False], ids=["kv_cache", "no_cache"])
def test_attention_layout_folds_head_transposes(merge, past):
    g = layout_graph(merge=merge, past=past)
    before = g.copy()
    assert fuse(g, ["attention_layout"])["attention_layout"] == 1
    ops = ops_of(g)
    assert "Transpose" not in ops and ops["Attention"] == 1, ops
    att = next(n for n in g if n.op == "Attention")
    assert att.attrs["q_num_heads"] == H and att.attrs["kv_num_heads"] == HKV and att.attrs["is_causal"] == 1
    assert g.type(att.inputs[0]).shape == (B_, S_, H * D) and g.type(att.outputs[0]).shape == (B_, S_, H * D)
    if past:
        assert g.type(att.outputs[1]).shape == (B_, HKV, S_ + 3, D)
    assert_same_outputs(before, g, feeds_for(g))


def test_attention_layout_should_not_fire_on_leak_or_non_head_reshape():
    g = layout_graph(leak=True)
    n, outcome = len(g), run_rules(g, ["attention_layout"], gate=None)[1]["attention_layout"]
    assert outcome.fired == 0 and len(g) == n and "outside the group" in outcome.closest_miss.reason
    g = layout_graph(bad_split=True)
    outcome = run_rules(g, ["attention_layout"], gate=None)[1]["attention_layout"]
    assert outcome.fired == 0 and "moves more than the last axis" in outcome.closest_miss.reason


# ------------------------------------------------------------------------------------------------
# norms

def rms_graph(*, cast=False, weight=True, form="reciprocal", axes=(-1,), w_shape=None, leak=False):
    bd = Builder()
    dt = "float16" if cast else "float32"
    h = bd.input("h", (2, 5, 16), dt)
    x = bd.op("Cast", h, to=1) if cast else h
    sq = bd.op("Pow", x, bd.const(2.0)) if form != "mul" else bd.op("Mul", x, x)
    ms = bd.op("ReduceMean", sq, axes=list(axes), keepdims=1)
    ve = bd.op("Add", ms, bd.const(1e-5))
    sd = bd.op("Sqrt", ve)
    if form == "div":
        y = bd.op("Div", x, sd)
    else:
        y = bd.op("Mul", x, bd.op("Reciprocal", sd))
    if cast:
        y = bd.op("Cast", y, to=10)
    if weight:
        y = bd.op("Mul", bd.weight(*(w_shape or (16,)), dtype=dt), y)
    return bd.out(y, ms) if leak else bd.out(y)


@pytest.mark.parametrize("form", ["reciprocal", "div", "mul"])
@pytest.mark.parametrize("weight", [True, False])
def test_rms_norm(form, weight):
    g = rms_graph(form=form, weight=weight)
    before = g.copy()
    assert fuse(g, ["rms_norm"])["rms_norm"] == 1
    assert ops_of(g) == {"RMSNormalization": 1}
    n = next(iter(g))
    assert n.attrs["epsilon"] == pytest.approx(1e-5) and n.attrs["axis"] == -1
    assert_same_outputs(before, g, feeds_for(g))


def test_rms_norm_fp32_cast_sandwich():
    g = rms_graph(cast=True)
    before = g.copy()
    assert fuse(g, ["rms_norm"])["rms_norm"] == 1
    n = next(iter(g))
    assert ops_of(g) == {"RMSNormalization": 1} and n.attrs["stash_type"] == 1
    assert g.type(n.inputs[0]).dtype == "float16"
    assert_same_outputs(before, g, feeds_for(g), atol=2e-3)   # fp16 output


def test_rms_norm_should_not_fire_on_other_axis_or_leak():
    g = rms_graph(axes=(-2,))
    stats, out = run_rules(g, ["rms_norm"], gate=None)
    assert stats["rms_norm"] == 0 and "not the last axis" in out["rms_norm"].closest_miss.reason
    g = rms_graph(leak=True)
    assert fuse(g, ["rms_norm"])["rms_norm"] == 0 and "RMSNormalization" not in ops_of(g)


def test_rms_norm_mismatched_weight_shape_leaves_the_multiply():
    g = rms_graph(w_shape=(5, 16))     # not per-feature: the Mul is not the norm's scale
    before = g.copy()
    assert fuse(g, ["rms_norm"])["rms_norm"] == 1
    assert ops_of(g) == {"Mul": 1, "RMSNormalization": 1}
    assert_same_outputs(before, g, feeds_for(g))


def layer_norm_graph(*, affine=True, form="div"):
    bd = Builder()
    x = bd.input("x", (2, 5, 16))
    mean = bd.op("ReduceMean", x, axes=[-1], keepdims=1)
    d = bd.op("Sub", x, mean)
    var = bd.op("ReduceMean", bd.op("Pow", d, bd.const(2.0)), axes=[-1], keepdims=1)
    sd = bd.op("Sqrt", bd.op("Add", var, bd.const(1e-12)))
    y = bd.op("Div", d, sd) if form == "div" else bd.op("Mul", d, bd.op("Reciprocal", sd))
    if affine:
        y = bd.op("Add", bd.op("Mul", y, bd.weight(16)), bd.weight(16))
    return bd.out(y)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("form", ["div", "reciprocal"])
def test_layer_norm(affine, form):
    g = layer_norm_graph(affine=affine, form=form)
    before = g.copy()
    assert fuse(g, ["layer_norm"])["layer_norm"] == 1
    assert ops_of(g) == {"LayerNormalization": 1}
    assert_same_outputs(before, g, feeds_for(g))


def residual_graph(norm="layer", broadcast=False):
    bd = Builder()
    a = bd.input("a", (2, 5, 16))
    r = bd.weight(16) if broadcast else bd.input("r", (2, 5, 16))
    s = bd.op("Add", a, r)
    if norm == "layer":
        y = bd.op("LayerNormalization", s, bd.weight(16), bd.weight(16), axis=-1, epsilon=1e-5)
    else:
        y = bd.op("RMSNormalization", s, bd.weight(16), axis=-1, epsilon=1e-6)
    nxt = bd.op("Add", s, bd.op("Relu", y))     # the sum is the residual stream
    return bd.out(nxt)


@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_residual_norm_is_one_rooftop_function(norm):
    import onnx

    from compiler.backend.emit import to_model
    g = residual_graph(norm)
    before = g.copy()
    assert fuse(g, ["residual_norm"])["residual_norm"] == 1
    assert ops_of(g) == {"Add": 1, "Relu": 1, "ResidualNorm": 1}
    m = to_model(g)
    onnx.checker.check_model(m, full_check=True)
    assert [f.name for f in m.functions] == ["ResidualLayerNormBias" if norm == "layer" else "ResidualRMSNorm"]
    assert any(n.domain == "rooftop" for n in m.graph.node)
    assert_same_outputs(before, g, feeds_for(g))


def test_residual_norm_should_not_fire_on_a_broadcast_bias_add():
    g = residual_graph(broadcast=True)
    stats, out = run_rules(g, ["residual_norm"], gate=None)
    assert stats["residual_norm"] == 0 and "a weight" in out["residual_norm"].closest_miss.reason


# ------------------------------------------------------------------------------------------------
# GELU, SwiGLU, merges, epilogues

@pytest.mark.parametrize("kind,order", [("tanh", 0), ("tanh", 1), ("erf", 0), ("erf", 1)])
def test_gelu(kind, order):
    bd = Builder()
    x = bd.input("x", (2, 3, 8))
    g = bd.out((gelu_tanh if kind == "tanh" else gelu_erf)(bd, x, order))
    before = g.copy()
    assert fuse(g, ["gelu"])["gelu"] == 1
    assert ops_of(g) == {"Gelu": 1}
    assert next(iter(g)).attrs["approximate"] == ("tanh" if kind == "tanh" else "none")
    assert_same_outputs(before, g, feeds_for(g))


def test_gelu_with_wrong_constant_does_not_fire():
    bd = Builder()
    x = bd.input("x", (2, 8))
    e = bd.op("Add", bd.op("Erf", bd.op("Div", x, bd.const(1.5))), bd.const(1.0))
    g = bd.out(bd.op("Mul", bd.op("Mul", x, e), bd.const(0.5)))
    stats, out = run_rules(g, ["gelu"], gate=None)
    assert stats["gelu"] == 0 and "expected 1.41421" in out["gelu"].closest_miss.reason


def mlp_graph(kind="swiglu", bias=False, reshape=False, n_in=8, n_hidden=12):
    bd = Builder()
    x = bd.input("x", (2, 3, n_in))
    if kind == "swiglu":
        gte = bd.op("MatMul", x, bd.weight(n_in, n_hidden))
        up = bd.op("MatMul", x, bd.weight(n_in, n_hidden))
        h = bd.op("Mul", bd.op("Mul", gte, bd.op("Sigmoid", gte)), up)
    else:
        x2 = bd.op("Reshape", x, shape=[6, n_in]) if reshape else x
        h = bd.op("MatMul", x2, bd.weight(n_in, n_hidden))
        if bias:
            h = bd.op("Add", h, bd.weight(n_hidden))
        if reshape:
            h = bd.op("Reshape", h, shape=[2, 3, n_hidden])
        h = {"gelu_tanh": lambda t: gelu_tanh(bd, t), "relu": lambda t: bd.op("Relu", t),
             "silu": lambda t: bd.op("Mul", t, bd.op("Sigmoid", t)), "none": lambda t: t}[kind](h)
    return bd.out(bd.op("MatMul", h, bd.weight(n_hidden, n_in)))


def test_merge_gate_up_then_epilogue():
    g = mlp_graph("swiglu")
    before = g.copy()
    stats = fuse(g, ["merge_gate_up", "swiglu", "matmul_epilogue"])
    assert stats["merge_gate_up"] == 1 and stats["matmul_epilogue.swiglu"] == 1
    assert ops_of(g) == {"MatMul": 1, "MatMulEpilogue": 1}
    ep = next(n for n in g if n.op == "MatMulEpilogue")
    assert g.type(ep.inputs[1]).shape == (8, 24) and g.type(ep.outputs[0]).shape == (2, 3, 12)
    assert_same_outputs(before, g, feeds_for(g))


def test_swiglu_of_separate_tensors():
    bd = Builder()
    a, b = bd.input("a", (2, 12)), bd.input("b", (2, 12))
    g = bd.out(bd.op("Mul", b, bd.op("Mul", a, bd.op("Sigmoid", a))))   # up · silu(gate)
    before = g.copy()
    assert fuse(g, ["swiglu"])["swiglu"] == 1
    assert ops_of(g) == {"SwiGLU": 1}
    assert_same_outputs(before, g, feeds_for(g))


@pytest.mark.parametrize("kind,bias,reshape", [("gelu_tanh", True, True), ("relu", False, False),
                                               ("silu", True, False), ("none", True, False)])
def test_matmul_epilogue(kind, bias, reshape):
    g = mlp_graph(kind, bias=bias, reshape=reshape)
    before = g.copy()
    stats = fuse(g, ["gelu", "matmul_epilogue"])
    act = {"none": "bias"}.get(kind, kind)
    assert stats[f"matmul_epilogue.{act}"] == 1
    ep = next(n for n in g if n.op == "MatMulEpilogue")
    assert ep.domain == "rooftop" and len(ep.inputs) == (3 if bias else 2)
    assert set(ops_of(g)) <= {"MatMulEpilogue", "MatMul", "Reshape"}
    assert_same_outputs(before, g, feeds_for(g))


def test_epilogue_should_not_fire_with_a_mismatched_bias():
    bd = Builder()
    x = bd.input("x", (2, 8))
    h = bd.op("Add", bd.op("MatMul", x, bd.weight(8, 12)), bd.weight(2, 12))   # not a 1-D bias
    g = bd.out(bd.op("Relu", h))
    stats, out = run_rules(g, ["matmul_epilogue"], gate=None)
    assert stats["matmul_epilogue"] == 0 and ops_of(g) == {"Add": 1, "MatMul": 1, "Relu": 1}
    assert "is not 1-D" in out["matmul_epilogue"].closest_miss.reason


def test_merge_qkv_with_bias():
    bd = Builder()
    x = bd.input("x", (2, 3, 8))
    outs = [bd.op("Add", bd.op("MatMul", x, bd.weight(8, n)), bd.weight(n)) for n in (8, 4, 4)]
    g = bd.out(*[bd.op("Relu", o) for o in outs])
    before = g.copy()
    assert fuse(g, ["merge_qkv"])["merge_qkv"] == 1
    assert ops_of(g) == {"Add": 1, "MatMul": 1, "Relu": 3, "Split": 1}
    assert_same_outputs(before, g, feeds_for(g))


def test_merge_qkv_should_not_fire_on_shared_weights():
    bd = Builder()
    x = bd.input("x", (2, 8))
    w = bd.weight(8, 8)
    g = bd.out(bd.op("MatMul", x, w), bd.op("MatMul", x, bd.weight(8, 8)), bd.op("MatMul", bd.input("y", (2, 8)), w))
    stats, out = run_rules(g, ["merge_qkv"], gate=None)
    assert stats["merge_qkv"] == 0 and "shared" in out["merge_qkv"].closest_miss.reason


def test_rotary_with_unprovable_halves_is_left_alone():
    """cos/sin from graph inputs: nothing proves their halves equal (tests/passes/test_rotary.py has the
    fusing forms)."""
    bd = Builder()
    x = bd.input("x", (1, 2, 4, 8))
    cos, sin = bd.input("cos", (1, 1, 4, 8)), bd.input("sin", (1, 1, 4, 8))
    lo = bd.op("Slice", x, starts=[0], ends=[4], axes=[3], steps=[1])
    hi = bd.op("Slice", x, starts=[4], ends=[2**63 - 1], axes=[3], steps=[1])
    rot = bd.op("Concat", bd.op("Neg", hi), lo, axis=-1)
    g = bd.out(bd.op("Add", bd.op("Mul", x, cos), bd.op("Mul", rot, sin)))
    before = ops_of(g)
    assert fuse(g, ["rotary"])["rotary"] == 0
    assert ops_of(g) == before


# ------------------------------------------------------------------------------------------------
# engine: cost gate, explain, pass parameters and context

def test_cost_gate_refuses_a_rewrite_predicted_slower():
    from compiler.perf.hardware import hardware_by_name
    from passes.fusion import CostGate, Rule
    from passes.fusion.pattern import Op, Var

    def slower(match, plan):   # Relu(x) "fused" into a needless GEMM: same values, more work
        w = plan.param("eye", TensorType("float32", (64, 64)), np.eye(64, dtype=np.float32))
        plan.output(match.root_tensor, plan.op("Relu", [plan.op("MatMul", [match["x"], w])]))

    rule = Rule("slower", Op("Relu", Var("x")), slower)
    bd = Builder()
    g = bd.out(bd.op("Relu", bd.input("x", (4096, 64))))
    gate = CostGate(hardware_by_name("a100_80g"))
    stats, out = run_rules(g, ["slower"], gate=gate, rules={"slower": rule})
    assert stats == {"slower": 0, "slower.rejected_by_cost": 1}
    assert ops_of(g) == {"Relu": 1}
    assert "cost model predicts" in out["slower"].closest_miss.reason
    stats, _ = run_rules(g, ["slower"], gate=None, rules={"slower": rule})
    assert stats["slower"] >= 1   # (this toy rule matches its own output again)


def test_explain_logs_why_a_rule_did_not_fire():
    from passes import make_pass
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    g = eager_attention("causal", leak=True)
    p = make_pass({"name": "fuse", "rules": ["attention", "rms_norm"], "explain": True})
    log = logging.getLogger("rooftop.fusion")
    handler, level = Keep(), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        res = p(g)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    assert res.stats["attention"] == 0 and not res.changed
    msg = " ".join(r.getMessage() for r in records)
    assert "'attention' did not fire" in msg and ("outside the group" in msg or "graph output" in msg)
    assert "'rms_norm' did not fire" in msg
    assert p.explanations["attention"].startswith("fusion rule 'attention' did not fire")


def test_pass_parameters_and_context():
    from compiler.errors import ConfigError
    from compiler.perf.hardware import hardware_by_name
    from passes import PASSES, PassContext, make_pass
    assert {"fuse", "fuse_attention", "fuse_norms", "fuse_gemm", "annotate_rotary"} <= set(PASSES)
    ctx = PassContext(hardware=hardware_by_name("cpu"), points=((8, 128, 0, "prefill"), (8, 1, 128, "decode")))
    p = make_pass("fuse", ctx)
    gate = p.gate()
    assert gate.hw.name == "cpu" and gate.points[0] == (8, 128, 0, "prefill")
    assert make_pass({"name": "fuse", "hardware": "h100_sxm"}, ctx).gate().hw.name == "h100_sxm"
    assert make_pass({"name": "fuse", "cost_gate": False}, ctx).gate() is None
    assert make_pass("fuse").gate().hw.name == "a100_80g"
    assert make_pass("fuse_norms").rule_names == ("layer_norm", "rms_norm", "residual_norm")
    with pytest.raises(ConfigError, match="unknown fusion rule"):
        make_pass({"name": "fuse", "rules": ["attention", "flash"]})
    with pytest.raises(ConfigError, match="does not take"):
        make_pass({"name": "fuse", "agressive": True})


def test_commutative_operands_are_declared_once_in_the_registry():
    """``mask + scores`` and ``scores + mask`` match the same pattern: Add is commutative in the
    op registry; Div is not, so ``c / x`` is not a scale of ``x``."""
    from compiler.ir.ops import is_commutative
    from passes.fusion.pattern import Const, Matcher, Op, Var
    assert is_commutative("Add") and is_commutative("Mul") and not is_commutative("Div")
    bd = Builder()
    x = bd.input("x", (4,))
    c = bd.const(2.0)
    a1, a2, d1 = bd.op("Add", x, c), bd.op("Add", c, x), bd.op("Div", c, x)
    g = bd.out(a1, a2, d1)
    pat = Op("Add", Var("x"), Const("c"))
    for t in (a1, a2):
        b = next(Matcher(g).match(pat, t))
        assert b.names["x"] == x and b.names["c"] == 2.0
    m = Matcher(g)
    assert next(m.match(Op("Div", Var("x"), Const("c")), d1), None) is None
    assert "not a scalar constant" in m.best[1]


# ------------------------------------------------------------------------------------------------
# targets: portable vs cpu (standard ONNX both; the cpu forms are what onnxruntime's CPU kernels
# run fastest — docs/guide/fusion.md)

def encoder_layer_graph(bias=True, hid=24, dtype="float32"):
    """x [B, S, E] → Q/K/V linears (+bias) → 3-D Attention (4 heads) → O linear → + x → GELU MLP
    (E → ``hid`` → E)."""
    bd = Builder(3)
    e = 16
    x = bd.input("x", (2, 5, e), dtype)

    def lin(t, n_in, n_out):
        y = bd.op("MatMul", t, bd.weight(n_in, n_out, dtype=dtype))
        return bd.op("Add", y, bd.weight(n_out, dtype=dtype)) if bias else y
    q, k, v = (lin(x, e, e) for _ in range(3))
    a = bd.op("Attention", q, k, v, q_num_heads=4, kv_num_heads=4, scale=0.5)
    h = bd.op("Add", lin(a, e, e), x)
    u = bd.op("Gelu", lin(h, e, hid))
    return bd.out(bd.op("Add", lin(u, hid, e), h))


def _fuse_target(g, target, hardware="cpu"):
    from compiler.perf.hardware import hardware_by_name
    from passes import PassContext, make_pass
    ctx = PassContext(hardware_by_name(hardware), ((2, 5, 0, "prefill"), (2, 1, 5, "decode")))
    p = make_pass({"name": "fuse", "target": target, "cost_gate": False}, ctx)
    return p, p(g)


@pytest.mark.parametrize("target,hardware", [("auto", "cpu"), ("cpu", "a100_80g")])
def test_cpu_target_keeps_qkv_apart_and_picks_the_bias_form_per_linear(target, hardware):
    """The MLP's GELU linear (16 → 24) is a ``Gemm`` + ``Gelu``; Q and O (no activation) stay
    ``MatMul`` + ``Add``; K's bias is dropped and V's folded into O's."""
    from compiler.backend.emit import check, to_model
    g = encoder_layer_graph()
    before = g.copy()
    p, res = _fuse_target(g, target, hardware)
    assert p.target == "cpu"
    assert "merge_qkv" not in res.stats and "not run: target cpu" in p.explanations["merge_qkv"]
    ops = ops_of(g)
    assert "Split" not in ops and ops["MatMulEpilogue"] == 6, ops
    assert res.stats["bias_fold.key"] == 1 and res.stats["bias_fold.value"] == 1
    assert res.stats["matmul_epilogue.gemm"] == 1 and "matmul_epilogue.bias_row" not in res.stats
    gemm = [n for n in g if n.op == "MatMulEpilogue" and n.attrs.get("gemm")]
    assert [n.attrs.get("activation") for n in gemm] == ["gelu"]
    m = to_model(g)
    check(m)
    bodies = {f.name: [n.op_type for n in f.node] for f in m.functions}
    assert set(bodies) == {"MatMulBias", "GemmBiasGelu", "MatMul"}, bodies
    assert "Gemm" in bodies["GemmBiasGelu"] and "MatMul" not in bodies["GemmBiasGelu"]
    assert bodies["MatMulBias"] == ["MatMul", "Add", "Identity"]
    assert_same_outputs(before, g, feeds_for(g))


def test_cpu_target_puts_a_wide_linears_bias_into_its_weight(tmp_path):
    """16 → 48 (≥ 2× wider): ``[A, 1] · [W; b]`` — Pad with ones, the bias concatenated to the
    weight as a constant expression; in onnxruntime equal to the unfused graph, the padded input
    feeding a MatMul, no BiasGelu, and the concatenated weight folded at load (no Concat left)."""
    import onnx
    import onnxruntime as ort
    from compiler.backend.emit import to_model
    g = encoder_layer_graph(hid=48)
    before = g.copy()
    _, res = _fuse_target(g, "cpu")
    assert res.stats["matmul_epilogue.bias_row"] == 1 and "matmul_epilogue.gemm" not in res.stats
    m = to_model(g)
    bodies = {f.name: [n.op_type for n in f.node] for f in m.functions}
    row = bodies["MatMulBiasRowGelu"]
    assert {"Pad", "Concat", "MatMul", "Gelu"} <= set(row) and "Gemm" not in row and "Add" not in row
    assert_same_outputs(before, g, feeds_for(g))
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    nodes = onnx.load(so.optimized_model_filepath).graph.node
    opt = [n.op_type for n in nodes]
    assert opt.count("Pad") == 1 and "Concat" not in opt and "BiasGelu" not in opt, opt
    pad = next(n for n in nodes if n.op_type == "Pad")
    assert [n.op_type for n in nodes if pad.output[0] in n.input] == ["MatMul"]


def test_bias_row_form_keeps_the_models_dtype():
    """The ones column has the activations' dtype (Pad's value must): an fp16 model gets its own
    function, and the emitted model passes the ONNX checker with full type inference."""
    import onnx
    from compiler.backend.emit import to_model
    g = encoder_layer_graph(hid=48, dtype="float16")
    _fuse_target(g, "cpu")
    m = to_model(g)
    names = {f.name for f in m.functions}
    assert "MatMulBiasRowGelu_float16" in names and "MatMulBiasRowGelu" not in names
    fn = next(f for f in m.functions if f.name == "MatMulBiasRowGelu_float16")
    one = next(n for n in fn.node if n.op_type == "Constant" and n.output[0] == "one")
    assert one.attribute[0].t.data_type == onnx.TensorProto.FLOAT16
    onnx.checker.check_model(onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True), full_check=True)


def test_portable_target_merges_qkv_and_emits_matmul_epilogues():
    from compiler.backend.emit import to_model
    g = encoder_layer_graph()
    before = g.copy()
    p, res = _fuse_target(g, "portable")
    assert p.target == "portable" and res.stats["merge_qkv"] == 1 and "matmul_epilogue.gemm" not in res.stats
    assert ops_of(g)["Split"] == 1 and not any(n.attrs.get("gemm") for n in g)
    assert {f.name for f in to_model(g).functions} == {"MatMulBias", "MatMulBiasGelu"}
    assert_same_outputs(before, g, feeds_for(g))
    g2 = encoder_layer_graph()   # auto on a GPU is portable
    p, res = _fuse_target(g2, "auto", "a100_80g")
    assert p.target == "portable" and res.stats["merge_qkv"] == 1


def test_cpu_target_leaves_bias_free_and_quantized_linears_as_matmul():
    """No bias: nothing for a Gemm to take in. A weight-quantized linear (``quant_data``, written
    by the quant passes after fusion) keeps ``MatMul`` over its DequantizeLinear, the form
    onnxruntime turns into its quantized GEMM kernels."""
    from compiler.backend.emit import to_model
    from compiler.backend.quantized import QuantizedData
    g = encoder_layer_graph(bias=False)
    _fuse_target(g, "cpu")
    assert not any(n.attrs.get("gemm") or n.attrs.get("bias_row") for n in g if n.op == "MatMulEpilogue")
    assert all("Gemm" not in [n.op_type for n in f.node] for f in to_model(g).functions)
    g = encoder_layer_graph()
    _fuse_target(g, "cpu")
    ep = next(n for n in g if n.op == "MatMulEpilogue" and n.attrs.get("activation") == "gelu")
    w = g.params[ep.inputs[1]]
    scale = (np.abs(w.data).max(axis=0) / 127).astype(np.float32)
    codes = np.round(w.data / scale).astype(np.int8)
    w.data = (codes * scale).astype(np.float32)
    w.annotations["quant_data"] = QuantizedData(codes, scale, None, 1, None)
    m = to_model(g)
    assert {f.name for f in m.functions} == {"MatMulBias", "MatMulBiasGelu", "MatMul"}
    dq = next(n for n in m.graph.node if n.op_type == "DequantizeLinear")
    call = next(n for n in m.graph.node if n.op_type == "MatMulBiasGelu")
    assert call.input[1] == dq.output[0] == ep.inputs[1]


def test_bad_target_is_a_config_error():
    from compiler.errors import ConfigError
    from passes import make_pass
    with pytest.raises(ConfigError, match="target='gpu' is not one of auto, portable, cpu"):
        make_pass({"name": "fuse", "target": "gpu"})


# ------------------------------------------------------------------------------------------------
# interleaved per-head QKV (GPT-NeoX): qkv_heads cuts it per chunk, so the layout rule gives 3-D

def interleaved_qkv_graph(form="split", bias=True, leak=False):
    """x → x·W (+b) → [B, S, H, q|k|v] → Transpose → Split / three Slices → Attention → merge."""
    bd = Builder(5)
    x = bd.input("x", (B_, S_, H * D))
    y = bd.op("MatMul", x, bd.weight(H * D, 3 * H * D))
    if bias:
        y = bd.op("Add", y, bd.weight(3 * H * D))
    t = bd.op("Transpose", bd.op("Reshape", y, shape=[B_, S_, H, 3 * D]), perm=[0, 2, 1, 3])
    if form == "split":
        q, k, v = bd.op("Split", t, n_out=3, axis=-1, num_outputs=3)
    else:
        q, k, v = (bd.op("Slice", t, starts=[i * D], ends=[(i + 1) * D if i < 2 else 2**63 - 1], axes=[-1])
                   for i in range(3))
    a = bd.op("Attention", q, k, v, is_causal=1, scale=0.3)
    o = bd.op("Reshape", bd.op("Transpose", a, perm=[0, 2, 1, 3]), shape=[B_, S_, H * D])
    return bd.out(bd.op("MatMul", o, bd.weight(H * D, 5)), *([bd.op("Relu", t)] if leak else []))


@pytest.mark.parametrize("form", ["split", "slices"])
@pytest.mark.parametrize("bias", [True, False])
def test_interleaved_qkv_is_cut_per_chunk_and_attention_takes_3d(form, bias):
    g = interleaved_qkv_graph(form, bias)
    before = g.copy()
    stats = fuse(g, ["qkv_heads", "attention_layout", "merge_qkv"])
    assert stats["qkv_heads"] == 1 and stats["attention_layout"] == 1 and stats["merge_qkv"] == 1, stats
    ops = ops_of(g)
    assert "Transpose" not in ops and "Slice" not in ops and ops["Split"] == 1, ops
    att = next(n for n in g if n.op == "Attention")
    assert g.type(att.inputs[0]).shape == (B_, S_, H * D) and att.attrs["q_num_heads"] == H
    assert_same_outputs(before, g, feeds_for(g))


def test_interleaved_qkv_should_not_fire_when_the_heads_are_used_whole():
    g = interleaved_qkv_graph(leak=True)
    stats, out = run_rules(g, ["qkv_heads"], gate=None)
    assert stats["qkv_heads"] == 0 and ops_of(g)["Split"] == 1


# ------------------------------------------------------------------------------------------------
# cpu target: biases moved to where they cost nothing (passes/fusion/bias_fold.py)

def post_ln_layer_graph(*, causal=False, softcap=0.0, leak=None, mask=True):
    """BERT's post-LN layer: x [B, S, E] (+ bool key mask) → Q/K/V → Attention → O → LN(· + x) = h
    → GELU MLP → LN(· + h). ``leak``: ``"attn"`` also returns the attention output, ``"h"`` h."""
    bd = Builder(5)
    e, hid = 16, 24
    x = bd.input("x", (2, 5, e))
    m = bd.input("mask", (2, 1, 5, 5), "bool") if mask else ""

    def lin(t, n_in, n_out):
        return bd.op("Add", bd.op("MatMul", t, bd.weight(n_in, n_out)), bd.weight(n_out, scale=1.0))

    def ln(t):
        return bd.op("LayerNormalization", t, bd.weight(e, scale=1.0), bd.weight(e, scale=1.0), axis=-1, epsilon=1e-5)
    q, k, v = (lin(x, e, e) for _ in range(3))
    attrs = dict(q_num_heads=4, kv_num_heads=4, scale=0.5, is_causal=int(causal))
    if softcap:
        attrs["softcap"] = softcap
    a = bd.op("Attention", q, k, v, *([m] if m else []), **attrs)
    h = ln(bd.op("Add", lin(a, e, e), x))
    y = ln(bd.op("Add", lin(bd.op("Gelu", lin(h, e, hid)), hid, e), h))
    return bd.out(y, *({"attn": [a], "h": [h]}.get(leak, [])))


def _mask_feeds(g):
    f = feeds_for(g, 3)
    if "mask" in f:   # padded keys, one sequence fully padded at the end, never a row with no key
        f["mask"] = np.ones((2, 1, 5, 5), bool)
        f["mask"][1, :, :, 3:] = False
    return f


@pytest.mark.parametrize("residual_norm", [True, False])
def test_cpu_target_folds_key_value_and_residual_biases(residual_norm):
    from compiler.backend.emit import to_model
    from passes import PassContext, make_pass
    from compiler.perf.hardware import hardware_by_name
    g = post_ln_layer_graph()
    before = g.copy()
    rules = [r for r in RULES if r != "residual_norm" or residual_norm]
    ctx = PassContext(hardware_by_name("cpu"), ((2, 5, 0, "prefill"),))
    res = make_pass({"name": "fuse", "target": "cpu", "cost_gate": False, "rules": rules}, ctx)(g)
    assert res.stats["bias_fold.key"] == 1 and res.stats["bias_fold.value"] == 1
    assert res.stats["bias_fold.residual"] == 1 and res.stats["attention.float_mask"] == 1
    assert res.stats["matmul_epilogue.gemm"] == 1     # the first MLP linear (Q, O: MatMul + Add)
    eps = [n for n in g if n.op == "MatMulEpilogue"]
    assert sum(len([t for t in n.inputs if t]) == 2 for n in eps) == 3
    assert ("ResidualNorm" in ops_of(g)) == residual_norm
    funcs = {f.name for f in to_model(g).functions}
    assert {"MatMul", "MatMulBias", "GemmBiasGelu"} <= funcs
    assert_same_outputs(before, g, _mask_feeds(g), atol=2e-5)


@pytest.mark.parametrize("kind", ["causal", "softcap", "leak_attn", "leak_h", "meta"])
def test_bias_folds_refuse_where_the_change_is_observable(kind):
    from passes.fusion.bias_fold import fold_biases
    g = post_ln_layer_graph(causal=kind == "causal", softcap=30.0 if kind == "softcap" else 0.0,
                            leak={"leak_attn": "attn", "leak_h": "h"}.get(kind), mask=kind != "causal")
    fuse(g, ["residual_norm", "matmul_epilogue"])
    before = g.copy()
    if kind == "meta":
        for p in g.params.values():
            p.data = None
    stats = fold_biases(g)
    expect = {"causal": {"bias_fold.residual": 1}, "softcap": {"bias_fold.residual": 1}, "meta": {},
              "leak_attn": {"bias_fold.key": 1, "bias_fold.residual": 1},
              "leak_h": {"bias_fold.key": 1, "bias_fold.value": 1}}[kind]
    assert stats == expect
    if kind != "meta":
        assert_same_outputs(before, g, _mask_feeds(g), atol=2e-5)
