"""Passes in Before / Expected form: the Before graph and the Expected graph are written as IR text
(compiler/ir/text.py), the pass runs on Before, and the test asserts structural equality
(compiler.ir.structural_diff) — beside the onnxruntime numerical checks elsewhere. "Should not
fire" cases state Expected == Before. A few graphs with annotations or generated weights still use
the builder (tests/graphs.py)."""
from __future__ import annotations

import numpy as np
import pytest

from compiler.ir import annotations as ann
from compiler.ir.annotations import ComputeDtype
from compiler.ir import B, S, Graph, structural_diff
from compiler.ir.ops import OpKind
from passes import run_passes
from compiler.ir.text import parse_graph
from tests.graphs import Builder

F32 = "float32"


G = Builder   # tests/graphs.py: the one graph builder


def run(g: Graph, *names: str) -> dict:
    stats = {r.name: r.stats for r in run_passes(g, list(names), debug=True).records}
    g.verify()
    return stats


def assert_same(after: Graph, expected: Graph, **kw):
    diff = structural_diff(after, expected, **kw)
    assert diff is None, diff


# ---- the helper itself ---------------------------------------------------------------------------

def test_structural_diff_ignores_names_and_names_the_first_difference():
    a, b = G(), G()
    xa, xb = a.input("x", B, 8), b.input("x", B, 8)
    ga = a.out(a.op("Relu", a.op("Exp", xa, name="e1")))
    gb = b.out(b.op("Relu", b.op("Exp", xb, name="other_name")))
    assert structural_diff(ga, gb) is None
    c = G()
    gc = c.out(c.op("Relu", c.op("Log", c.input("x", B, 8))))
    assert "computed by Exp" in structural_diff(ga, gc) and "expected Log" in structural_diff(ga, gc)
    d = G()
    gd = d.out(d.op("Softmax", d.input("x", B, 8), axis=0))
    e = G()
    ge = e.out(e.op("Softmax", e.input("x", B, 8), axis=-1))
    assert "attributes" in structural_diff(gd, ge)
    w1, w2 = G(), G()
    g1 = w1.out(w1.op("Add", w1.input("x", B, 2), w1.param([1.0, 2.0])))
    g2 = w2.out(w2.op("Add", w2.input("x", B, 2), w2.param([1.0, 3.0])))
    assert "parameter" in structural_diff(g1, g2)


# ---- remove_noops --------------------------------------------------------------------------------

def test_remove_noops():
    before = parse_graph("""
        input  x: float32[B, S, 8]
        const  one: float32[] = [1.0]
        const  zero: float32[] = [0.0]
        i = Identity(x)
        r = Relu(i)
        s = Reshape(r) {shape: [B, S, 8]}      # same shape: a no-op
        m = Mul(s, one)                        # x·1
        t = Transpose(m) {perm: [0, 1, 2]}     # identity permutation
        a = Add(zero, t)                       # 0 + x (Add is commutative)
        y = Exp(a)
        output y
    """)
    stats = run(before, "remove_noops")
    assert stats["remove_noops"] == {"Identity": 1, "Reshape": 1, "Mul": 1, "Transpose": 1, "Add": 1}
    assert_same(before, parse_graph("""
        input  x: float32[B, S, 8]
        r = Relu(x)
        y = Exp(r)
        output y
    """))


def test_remove_noops_should_not_fire():
    text = """
        input  x: float32[B, S, 8]
        const  two: float32[] = [2.0]
        const  zero: float32[] = [0.0]
        r = Reshape(x) {shape: [B, S, 2, 4]}   # changes the shape
        m = Mul(r, two)                        # x·2
        s = Sub(zero, m)                       # 0 − x is not x (Sub is not commutative)
        y = Transpose(s) {perm: [0, 1, 3, 2]}
        output y
    """
    before = parse_graph(text)
    assert run(before, "remove_noops")["remove_noops"] == {}
    assert_same(before, parse_graph(text))


def test_remove_noops_keeps_a_graph_outputs_name():
    before = parse_graph("""
        input  x: float32[B, 8]
        r = Relu(x)
        y_id = Identity(r)
        output y_id
    """)
    run(before, "remove_noops")
    assert_same(before, parse_graph("input x: float32[B, 8]\nr = Relu(x)\noutput r"))
    assert before.outputs == ["y_id"] and before.producer_of("y_id").op == "Relu"   # the public name stays


# ---- fold_constants ------------------------------------------------------------------------------

def test_fold_constants():
    before = parse_graph("""
        input  x: float32[B, 3, 2]
        const  c: float32[2, 3] = [0, 1, 2, 3, 4, 5]
        const  two: float32[] = [2.0]
        ct = Transpose(c) {perm: [1, 0]}       # constant → folded
        s = Mul(ct, two)                       # constant → folded
        y = Add(x, s)
        output y
    """)
    assert run(before, "fold_constants")["fold_constants"] == {"folded": 2}
    assert_same(before, parse_graph("""
        input  x: float32[B, 3, 2]
        const  folded: float32[3, 2] = [0, 6, 2, 8, 4, 10]
        y = Add(x, folded)
        output y
    """))


def test_fold_constants_should_not_fire_on_weights_or_shape():
    def build():
        b = G()
        w = b.param(np.ones((4, 4)))                # a weight, not a constant
        x = b.input("x", B, 4)
        return b.out(b.op("MatMul", x, b.op("Transpose", w, perm=[1, 0])), b.op("Shape", x))
    before = build()
    assert run(before, "fold_constants")["fold_constants"] == {"folded": 0}
    assert_same(before, build())


# ---- dce -----------------------------------------------------------------------------------------

def test_dce():
    before = parse_graph("""
        input  x: float32[B, 8]
        param  w: float32[8] = [1, 1, 1, 1, 1, 1, 1, 1]   # unused weight
        n = Neg(x)                                        # dead chain
        e = Exp(n)
        y = Relu(x)
        output y
    """)
    assert run(before, "dce")["dce"] == {"ops": 2, "params": 1}
    assert_same(before, parse_graph("input x: float32[B, 8]\ny = Relu(x)\noutput y"))
    assert not before.params


# ---- a fusion rule: GELU (erf form) --------------------------------------------------------------

def test_fuse_gelu():
    b = G()
    x = b.input("x", B, S, 16)
    erf = b.op("Erf", b.op("Div", x, b.const(np.float32(np.sqrt(2.0)))))
    half = b.op("Mul", b.op("Mul", x, b.const(np.float32(0.5))), b.op("Add", erf, b.const(np.float32(1.0))))
    before = b.out(b.op("Relu", half))
    stats = run(before, {"name": "fuse", "rules": ["gelu"], "cost_gate": False})
    assert stats["fuse"]["gelu"] == 1

    assert_same(before, parse_graph("""
        input  x: float32[B, S, 16]
        g = Gelu(x) {approximate: 'none'}
        y = Relu(g)
        output y
    """))


def test_fused_matmul_keeps_compute_dtype_and_bias_epilogue():
    """MatMul + bias + Relu → MatMulEpilogue, carrying the MatMul's compute_dtype (declared
    policy: kept) — compared as an annotation of the expected graph."""
    rng = np.random.default_rng(0)
    w, bias = rng.standard_normal((16, 32)).astype(np.float32), rng.standard_normal(32).astype(np.float32)
    cd = ComputeDtype("fp16", "cublas")
    b = G()
    x = b.input("x", B, S, 16)
    wt, bt = b.param(w), b.param(bias)
    mm = b.op("MatMul", x, wt)
    ann.set(b.g.producer_of(mm), "compute_dtype", cd)
    before = b.out(b.op("Relu", b.op("Add", mm, bt)))
    stats = run(before, {"name": "fuse", "rules": ["matmul_epilogue"], "cost_gate": False})
    assert stats["fuse"]["matmul_epilogue"] == 1

    e = G()
    out = e.g.add_op("MatMulEpilogue", [e.input("x", B, S, 16), e.param(w), e.param(bias)], 1,
                     {"activation": "relu"}, domain="rooftop", compute_dtype=cd).outputs[0]
    expected = e.out(out)
    assert_same(before, expected, annotations=("compute_dtype",))


# ---- KV-cache lifting ----------------------------------------------------------------------------

def _attention_graph(repeat: bool) -> Graph:
    """q [B, 4, S, 8]; k/v [B, 2, S, 8], repeated to 4 heads when ``repeat`` (GQA repeat_kv)."""
    b = G()
    q, k, v = b.input("q", B, 4, S, 8), b.input("k", B, 2, S, 8), b.input("v", B, 2, S, 8)

    def rep(t):
        u = b.op("Unsqueeze", t, axes=[2])
        ex = b.op("Expand", u, shape=[B, 2, 2, S, 8])
        return b.op("Reshape", ex, shape=[B, 4, S, 8])
    if repeat:
        k, v = rep(k), rep(v)
    g = b.out(b.op("Attention", q, k, v, is_causal=1))
    g.meta["causal"] = True
    return g


@pytest.mark.parametrize("repeat", [True, False], ids=["gqa_repeat_kv", "plain"])
def test_lift_kv_cache(repeat):
    before = _attention_graph(repeat)
    stats = run(before, "lift_kv_cache")["lift_kv_cache"]
    assert stats == {"layers": 1, "repeat_kv_removed": 2 if repeat else 0}

    # the padding attention_mask [B, P + S] beside the cache (Hugging Face's convention)
    expected = parse_graph(f"""
        input  q: float32[B, 4, S, 8]
        input  k: float32[B, 2, S, 8]
        input  v: float32[B, 2, S, 8]
        input  attention_mask: int64[B, P + S]
        input  past_key.0: float32[B, 2, P, 8]
        input  past_value.0: float32[B, 2, P, 8]
        keep = Cast(attention_mask) {{to: 9}}
        pad = Unsqueeze(keep) {{axes: [1, 2]}}
        {before.outputs[0]}, present_key.0, present_value.0 = Attention(q, k, v, pad, past_key.0, past_value.0) {{is_causal: 1}}
        output {before.outputs[0]}, present_key.0, present_value.0
    """)
    assert_same(before, expected, output_names=True)
    assert sorted(before.meta["kv_tensors"]) == ["past_key.0", "past_value.0", "present_key.0", "present_value.0"]


def test_lift_kv_cache_should_not_fire_on_a_non_causal_graph():
    before = _attention_graph(True)
    before.meta["causal"] = False
    assert run(before, "lift_kv_cache")["lift_kv_cache"] == {}
    expected = _attention_graph(True)
    assert_same(before, expected)


# ---- patterns by fusion kind ---------------------------------------------------------------------

def test_patterns_match_by_op_kind():
    """``Op(OpKind.ELEMENTWISE, x)`` matches any registered elementwise op (the registry's kind),
    never a reduction."""
    from passes.fusion.pattern import Matcher, Op, Var
    b = G()
    x = b.input("x", B, 8)
    t1, t2, t3 = b.op("Tanh", x), b.op("Sigmoid", x), b.op("Softmax", x, axis=-1)
    g = b.out(t1, t2, t3)
    pat = Op(OpKind.ELEMENTWISE, Var("x"), name="act")
    assert pat.root_ops() is None
    for t in (t1, t2):
        assert next(Matcher(g).match(pat, t)).names["x"] == x
    m = Matcher(g)
    assert next(m.match(pat, t3), None) is None and "expected elementwise" in m.best[1]
