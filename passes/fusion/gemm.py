"""GEMM epilogues and gated activations.

- ``gelu``: GELU from primitives → ``Gelu`` (ONNX opset 20): exact
  ``0.5·x·(1 + erf(x/√2))`` and GPT-2's tanh form ``0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))``
  (``approximate="tanh"``), with the products in any association and order (:class:`Prod`).
- ``swiglu``: ``silu(g)·u`` → ``SwiGLU(g, u)``, or ``SwiGLU(t)`` when ``g`` and ``u`` are the two
  halves of one tensor ``t`` (a merged gate/up projection).
- ``merge_gate_up``: ``silu(x·Wg)·(x·Wu)`` → ``SwiGLU(x·[Wg|Wu])`` — the horizontal merge of the gate
  and up projections (one GEMM with concatenated weights).
- ``matmul_epilogue``: ``MatMul(a, W)`` (or ``Gemm``) → optional bias ``Add`` → reshapes that only
  move data → an activation (Gelu, Relu, SiLU = x·sigmoid(x), SwiGLU of a packed tensor) or, with a
  bias, none → one ``MatMulEpilogue`` op (a ``rooftop`` local function: MatMul, Add, activation),
  the reshapes re-applied to its output.
"""
from __future__ import annotations

import numpy as np

from compiler.ir import TensorType
from passes.fusion.common import is_float, same_dim, same_shape
from passes.fusion.pattern import Alt, Const, MatchResult, Moves, Op, Opt, Prod, Var
from passes.fusion.rule import Match, Plan, Rule

SQRT_2_OVER_PI = float(np.sqrt(2.0 / np.pi))


def gelu_erf(x):
    erf_arg = Alt(Op("Div", x, Const(value=float(np.sqrt(2.0)))), Op("Mul", x, Const(value=float(1 / np.sqrt(2.0)))))
    one_plus = Op("Add", Op("Erf", erf_arg, name="erf"), Const(value=1.0))
    return Alt(Prod(x, Const(value=0.5), one_plus, name="gelu"),
               Op("Div", Prod(x, one_plus), Const(value=2.0), name="gelu"))


def gelu_tanh(x):
    cube = Alt(Op("Pow", x, Const(value=3.0)), Prod(x, x, x))
    inner = Op("Add", x, Prod(Const(value=0.044715), cube))
    one_plus = Op("Add", Op("Tanh", Prod(Const(value=SQRT_2_OVER_PI), inner), name="tanh"), Const(value=1.0))
    return Alt(Prod(x, Const(value=0.5), one_plus, name="gelu"),
               Op("Div", Prod(x, one_plus), Const(value=2.0), name="gelu"))


def silu(x):
    return Prod(x, Op("Sigmoid", x, name="sigmoid"), name="silu")


# ------------------------------------------------------------------------------------------------

def gelu_pattern():
    x = Var("x")
    return Alt(gelu_tanh(x), gelu_erf(x))


def check_elementwise(match: Match) -> MatchResult:
    x = match.type("x")
    out = match.graph.type(match.root_tensor)
    if not is_float(x) or x.dtype != out.dtype or not same_shape(x.shape, out.shape):
        return MatchResult.fail(f"input {x} and output {out} differ (a broadcast, or not float)")
    return MatchResult.success()


def rewrite_gelu(match: Match, plan: Plan):
    approx = "tanh" if match.node("tanh") is not None else "none"
    out = plan.op("Gelu", [match["x"]], {"approximate": approx}, merged_from=sorted({n.op for n in match.nodes}))
    plan.output(match.root_tensor, out)


def gelu_rule() -> Rule:
    return Rule("gelu", gelu_pattern(), rewrite_gelu, check_elementwise,
                doc="GELU (erf or tanh form) from primitives → Gelu (opset 20)")


# ------------------------------------------------------------------------------------------------

def swiglu_pattern():
    return Op("Mul", silu(Var("g")), Var("u"), name="gate_mul")


def check_swiglu(match: Match) -> MatchResult:
    g, u = match.type("g"), match.type("u")
    out = match.graph.type(match.root_tensor)
    if not (is_float(g) and g.dtype == u.dtype == out.dtype and same_shape(g.shape, u.shape)
            and same_shape(g.shape, out.shape)):
        return MatchResult.fail(f"gate {g} and up {u} differ or broadcast")
    return MatchResult.success()


def _halves(match: Match) -> str | None:
    """g, u = the two equal halves (last axis, in that order) of one Split: that tensor."""
    g = match.graph
    pg, pu = g.producer_of(match["g"]), g.producer_of(match["u"])
    if pg is None or pg is not pu or pg.op != "Split" or len([o for o in pg.outputs if o]) != 2:
        return None
    if pg.outputs.index(match["g"]) != 0 or pg.outputs.index(match["u"]) != 1:
        return None
    src = g.type(pg.inputs[0])
    if (pg.attrs.get("axis", 0) % src.rank) != src.rank - 1:
        return None
    if any(g.num_uses(o) != 1 for o in pg.outputs):
        return None
    return pg.inputs[0]


def rewrite_swiglu(match: Match, plan: Plan):
    packed = _halves(match)
    ins = [packed] if packed else [match["g"], match["u"]]
    out = plan.op("SwiGLU", ins, domain="rooftop", merged_from=["Mul", "Sigmoid"] + (["Split"] if packed else []))
    plan.output(match.root_tensor, out)   # a Split left without uses is dropped by the pass's DCE


def swiglu_rule() -> Rule:
    return Rule("swiglu", swiglu_pattern(), rewrite_swiglu, check_swiglu,
                doc="silu(gate)·up → SwiGLU")


def _weight(name):
    return Var(name, where=lambda g, t: g.is_param(t) and g.type(t).rank == 2, why="a 2-D weight")


def merge_gate_up_pattern():
    x = Var("x")
    gate = Op("MatMul", x, _weight("wg"), name="gate_mm")
    up = Op("MatMul", x, _weight("wu"), name="up_mm")
    return Op("Mul", silu(gate), up, name="gate_mul")


def mergeable_weights(g, names) -> str | None:
    """Why weights cannot be concatenated into one (None when they can)."""
    ps = [g.params[n] for n in names]
    if len(set(names)) != len(names):
        return "a weight is used twice"
    if any(g.num_uses(n) != 1 for n in names):
        return "a weight is shared with another op"
    if len({p.type.dtype for p in ps}) != 1 or len({p.type.shape[0] for p in ps}) != 1:
        return "the weights differ in dtype or input size"
    if len({p.annotations.get("weight_format") for p in ps}) != 1:
        return "the weights are stored in different formats (weight_format)"
    if len({p.data is None for p in ps}) != 1:
        return "some weights have data and some do not"
    return None


def concat_weights(plan: Plan, names, base: str) -> str:
    g = plan.g
    ps = [g.params[n] for n in names]
    n_out = sum(p.type.shape[1] for p in ps)
    data = None if ps[0].data is None else np.concatenate([p.data for p in ps], axis=1)
    return plan.param(base, TensorType(ps[0].type.dtype, (ps[0].type.shape[0], n_out)), data,
                      like=names, merged_from=list(names))


def check_merge_gate_up(match: Match) -> MatchResult:
    g = match.graph
    why = mergeable_weights(g, [match["wg"], match["wu"]])
    if why:
        return MatchResult.fail(why)
    if not same_shape(match.type("wg").shape, match.type("wu").shape):
        return MatchResult.fail("gate and up weights have different shapes")
    return MatchResult.success()


def rewrite_merge_gate_up(match: Match, plan: Plan):
    w = concat_weights(plan, [match["wg"], match["wu"]], "gate_up_weight")
    mm = plan.op("MatMul", [match["x"], w])
    out = plan.op("SwiGLU", [mm], domain="rooftop", merged_from=["MatMul", "MatMul", "Sigmoid", "Mul", "Mul"])
    plan.output(match.root_tensor, out)


def merge_gate_up_rule() -> Rule:
    return Rule("merge_gate_up", merge_gate_up_pattern(), rewrite_merge_gate_up, check_merge_gate_up,
                doc="silu(x·Wg)·(x·Wu) → SwiGLU(x·[Wg|Wu]) (one GEMM)")


# ------------------------------------------------------------------------------------------------

ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu", "swiglu", "")


def epilogue_pattern():
    a, w = Var("a"), _weight("w")
    mm = Alt(Op("MatMul", a, w, name="mm"),
             Op("Gemm", a, w, Var("bias"), name="gemm"),
             Op("Gemm", a, w, name="gemm"))
    biased = Opt(Op("Add", mm, Var("bias"), name="bias_add"))
    x = Moves(biased, ops=("Reshape",), name="moves")
    return Alt(Op("Gelu", x, name="act"), Op("Relu", x, name="act"), Op("SwiGLU", x, name="act"),
               silu(x), Op("Add", mm, Var("bias"), name="bias_add"))


def check_epilogue(match: Match) -> MatchResult:
    gemm = match.node("gemm")
    if gemm is not None:
        at = gemm.attrs
        if at.get("transA", 0) or at.get("transB", 0) or at.get("alpha", 1.0) != 1.0 or at.get("beta", 1.0) != 1.0:
            return MatchResult.fail(f"Gemm with transA/transB/alpha/beta {at}")
    act = _activation(match)
    if act is None:
        return MatchResult.fail("unsupported activation")
    if not act and gemm is not None:
        return MatchResult.fail("a Gemm with a bias and no activation is already one op")
    if not act and not match.has("bias"):
        return MatchResult.fail("nothing to fuse: no bias and no activation")
    w = match.type("w")
    a = match.type("a")
    if not is_float(a) or a.dtype != w.dtype or a.rank < 2 or not same_dim(a.shape[-1], w.shape[0]):
        return MatchResult.fail(f"operands {a} · {w} are not a float linear layer")
    if match.has("bias"):
        b = match.type("bias")
        if b.rank != 1 or not same_dim(b.shape[0], w.shape[1]) or b.dtype != a.dtype:
            return MatchResult.fail(f"bias {b} is not 1-D of the output width {w.shape[1]}")
    if act == "swiglu" and match.get("moves"):
        return MatchResult.fail("a reshape between the GEMM and SwiGLU")
    if act == "swiglu" and len(match.node("act").inputs) != 1:
        return MatchResult.fail("SwiGLU of separate gate and up tensors")
    if act == "swiglu" and not (isinstance(w.shape[1], int) and w.shape[1] % 2 == 0):
        return MatchResult.fail("SwiGLU of an odd width")
    return MatchResult.success()


def _activation(match: Match) -> str | None:
    act = match.node("act")
    if act is None:
        return "silu" if match.node("silu") is not None else ""
    if act.op == "Gelu":
        return {"none": "gelu", "tanh": "gelu_tanh"}.get(act.attrs.get("approximate", "none"))
    return {"Relu": "relu", "SwiGLU": "swiglu"}.get(act.op)


def rewrite_epilogue(match: Match, plan: Plan):
    g = match.graph
    act = _activation(match)
    ins = [match["a"], match["w"]] + ([match["bias"]] if match.has("bias") else [])
    out = plan.op("MatMulEpilogue", ins, {"activation": act}, domain="rooftop",
                  merged_from=sorted({n.op for n in match.nodes}))
    for name in reversed(match.get("moves") or ()):   # innermost first
        r = g.node(name)
        out = plan.op("Reshape", [out] + list(r.inputs[1:]), dict(r.attrs), types=[g.type(r.outputs[0])])
    plan.output(match.root_tensor, out)


def epilogue_rule() -> Rule:
    return Rule("matmul_epilogue", epilogue_pattern(), rewrite_epilogue, check_epilogue,
                doc="MatMul/Gemm (+bias) (+data moves) (+Gelu/Relu/SiLU/SwiGLU) → MatMulEpilogue")


__all__ = ["gelu_rule", "swiglu_rule", "merge_gate_up_rule", "epilogue_rule", "mergeable_weights",
           "concat_weights", "ACTIVATIONS"]
