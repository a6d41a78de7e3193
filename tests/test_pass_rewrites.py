"""Passes in Before / Expected form: build a small Before graph, run the pass, build the Expected
graph, assert structural equality (compiler.ir.structural_diff) — beside the onnxruntime
numerical checks elsewhere. "Should not fire" cases state Expected == Before."""
from __future__ import annotations

import numpy as np
import pytest

from compiler.ir import annotations as ann
from compiler.ir.annotations import ComputeDtype
from compiler.ir import B, P, S, Graph, TensorType, structural_diff
from compiler.ir.ops import OpKind
from passes import run_passes

F32 = "float32"


class G:
    """A terse graph builder: ``G().input("x", B, S, 8)``, ``g.op("Relu", x)``, ``g.const(1.0)``."""

    def __init__(self):
        self.g = Graph("t")

    def input(self, name, *shape, dtype=F32):
        return self.g.add_input(name, TensorType(dtype, shape))

    def const(self, value, dtype=F32):
        arr = np.asarray(value, dtype=np.dtype(dtype))
        return self.g.add_param(self.g.fresh("c"), TensorType(dtype, arr.shape), arr, const=True)

    def param(self, arr):
        arr = np.asarray(arr, np.float32)
        return self.g.add_param(self.g.fresh("w"), TensorType(F32, arr.shape), arr)

    def op(self, op, *ins, n_out=1, types=None, name=None, **attrs):
        node = self.g.add_op(op, list(ins), n_out, attrs, types=types, name=name)
        return node.outputs[0] if n_out == 1 else list(node.outputs)

    def out(self, *ts):
        self.g.set_outputs(list(ts))
        self.g.verify()
        return self.g


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
    b = G()
    x = b.input("x", B, S, 8)
    t = b.op("Identity", x)
    t = b.op("Relu", t)
    t = b.op("Reshape", t, shape=[B, S, 8])           # same shape: a no-op
    t = b.op("Mul", t, b.const(1.0))                   # x·1
    t = b.op("Transpose", t, perm=[0, 1, 2])           # identity permutation
    t = b.op("Add", b.const(0.0), t)                   # 0 + x (Add is commutative)
    before = b.out(b.op("Exp", t))
    stats = run(before, "remove_noops")
    assert stats["remove_noops"] == {"Identity": 1, "Reshape": 1, "Mul": 1, "Transpose": 1, "Add": 1}

    e = G()
    expected = e.out(e.op("Exp", e.op("Relu", e.input("x", B, S, 8))))
    assert_same(before, expected)


def test_remove_noops_should_not_fire():
    def build():
        b = G()
        x = b.input("x", B, S, 8)
        r = b.op("Reshape", x, shape=[B, S, 2, 4])         # changes the shape
        m = b.op("Mul", r, b.const(2.0))                   # x·2
        s = b.op("Sub", b.const(0.0), m)                   # 0 − x is not x (Sub is not commutative)
        return b.out(b.op("Transpose", s, perm=[0, 1, 3, 2]))
    before = build()
    assert run(before, "remove_noops")["remove_noops"] == {}
    assert_same(before, build())


def test_remove_noops_keeps_a_graph_outputs_name():
    b = G()
    before = b.out(b.op("Identity", b.op("Relu", b.input("x", B, 8)), name="y_id"))
    out = before.outputs[0]
    run(before, "remove_noops")
    e = G()
    expected = e.out(e.op("Relu", e.input("x", B, 8)))
    assert_same(before, expected)
    assert before.outputs == [out] and before.producer_of(out).op == "Relu"   # the public name stays


# ---- fold_constants ------------------------------------------------------------------------------

def test_fold_constants():
    b = G()
    x = b.input("x", B, 3, 2)
    c = b.const(np.arange(6, dtype=np.float32).reshape(2, 3))
    ct = b.op("Transpose", c, perm=[1, 0])                              # constant → folded
    s = b.op("Mul", ct, b.const(np.float32(2.0)))                        # constant → folded
    before = b.out(b.op("Add", x, s))
    assert run(before, "fold_constants")["fold_constants"] == {"folded": 2}

    e = G()
    folded = e.const(np.arange(6, dtype=np.float32).reshape(2, 3).T * 2)
    expected = e.out(e.op("Add", e.input("x", B, 3, 2), folded))
    assert_same(before, expected)


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
    b = G()
    x = b.input("x", B, 8)
    b.op("Exp", b.op("Neg", x))                      # dead chain
    b.param(np.ones(8))                              # unused weight
    before = b.out(b.op("Relu", x))
    assert run(before, "dce")["dce"] == {"ops": 2, "params": 1}
    e = G()
    expected = e.out(e.op("Relu", e.input("x", B, 8)))
    assert_same(before, expected)
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

    e = G()
    expected = e.out(e.op("Relu", e.op("Gelu", e.input("x", B, S, 16), approximate="none")))
    assert_same(before, expected)


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

    e = Graph("t")
    q, k, v = (e.add_input(n, TensorType(F32, (B, h, S, 8))) for n, h in (("q", 4), ("k", 2), ("v", 2)))
    pk = e.add_input("past_key.0", TensorType(F32, (B, 2, P, 8)))
    pv = e.add_input("past_value.0", TensorType(F32, (B, 2, P, 8)))
    att = e.add_op("Attention", [q, k, v, "", pk, pv], [before.outputs[0], "present_key.0", "present_value.0"],
                   {"is_causal": 1})
    e.outputs = list(att.outputs)
    assert_same(before, e, output_names=True)
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
