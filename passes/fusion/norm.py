"""Normalizations from primitives, and a residual Add fused with the norm that follows it.

- ``rms_norm``: ``x·rsqrt(mean(x²) + eps)·w`` → ``RMSNormalization`` (ONNX opset 23), with the
  options exporters produce: ``x²`` as ``Pow(x, 2)`` or ``x·x``; ``rsqrt`` as
  ``Reciprocal(Sqrt)``, ``1/Sqrt`` or a division by ``Sqrt``; the fp32 cast sandwich of half-precision
  models (``Cast(h)`` in, ``Cast`` back before the weight: ``stash_type=1`` computes in fp32 the same
  way); the weight optional (ones).
- ``layer_norm``: ``(x − mean)/sqrt(var + eps)·w + b`` → ``LayerNormalization``, weight and bias
  optional.
- ``residual_norm``: ``norm(a + r)`` where the sum is also the residual stream → one
  ``ResidualNorm`` op (outputs: normalized, sum), emitted as a ``rooftop`` local function around
  ``Add`` + the standard norm op, so any runtime runs it (onnxruntime inlines it and may fuse it
  into its own SkipLayerNormalization).
"""
from __future__ import annotations

import numpy as np

from compiler.ir import DTYPES, TensorType
from passes.fusion.common import is_float, last_axis, same_shape
from passes.fusion.pattern import Alt, Const, MatchResult, Op, Opt, Var
from passes.fusion.rule import Match, Plan, Rule

_NON_NEG = {"where": lambda v: 0 <= v < 1, "why": "a small non-negative epsilon"}


def _rsqrt_forms(x, var_eps):
    """x·rsqrt(v) written the ways exporters write it; the final op is named ``normalize``."""
    std = Op("Sqrt", var_eps, name="sqrt")
    return Alt(Op("Mul", x, Op("Reciprocal", std, name="rsqrt"), name="normalize"),
               Op("Mul", x, Op("Div", Const(value=1.0), std, name="rsqrt"), name="normalize"),
               Op("Div", x, std, name="normalize"))


def _square(x):
    return Alt(Op("Pow", x, Const(value=2.0), name="square"), Op("Mul", x, x, name="square"))


def rms_pattern():
    h = Var("h")
    x = Opt(Op("Cast", h, name="cast_in"))
    ms = Op("ReduceMean", _square(x), name="mean_sq")
    normed = _rsqrt_forms(x, Op("Add", ms, Const("eps", **_NON_NEG), name="add_eps"))
    y = Opt(Op("Cast", normed, name="cast_out"))
    return Opt(Op("Mul", y, Var("w"), name="scale_mul"))


def layer_norm_pattern():
    x = Var("h")
    d = Op("Sub", x, Op("ReduceMean", x, name="mean"), name="center")
    var = Op("ReduceMean", _square(d), name="var")
    normed = _rsqrt_forms(d, Op("Add", var, Const("eps", **_NON_NEG), name="add_eps"))
    return Opt(Op("Add", Opt(Op("Mul", normed, Var("w"), name="scale_mul")), Var("b"), name="bias_add"))


def _check_reduce(match: Match, name: str) -> str | None:
    n = match.node(name)
    rank = match.graph.type(n.inputs[0]).rank
    if not last_axis(n.attrs.get("axes"), rank):
        return f"{name} reduces axes {n.attrs.get('axes')}, not the last axis"
    if not n.attrs.get("keepdims", 1):
        return f"{name} drops the reduced axis (keepdims=0)"
    return None


def _check_affine(match: Match, name: str, n_feat) -> str | None:
    if not match.has(name):
        return None
    t = match.type(name)
    out = match.graph.type(match.root_tensor)
    if not (t.shape and all(d == 1 for d in t.shape[:-1]) and t.shape[-1] == n_feat):
        return f"{name} {t} is not a per-feature vector of {n_feat}"
    if t.dtype != out.dtype:
        return f"{name} is {t.dtype}, the output {out.dtype}"
    return None


def check_norm(match: Match) -> MatchResult:
    g = match.graph
    h = match.type("h")
    if not is_float(h):
        return MatchResult.fail(f"input {h} is not floating point")
    for red in ("mean_sq", "mean", "var"):
        if match.node(red) is not None:
            why = _check_reduce(match, red)
            if why:
                return MatchResult.fail(why)
    n_feat = h.shape[-1]
    for name in ("w", "b"):
        why = _check_affine(match, name, n_feat)
        if why:
            return MatchResult.fail(why)
    out = g.type(match.root_tensor)
    if not same_shape(out.shape, h.shape):
        return MatchResult.fail(f"output {out} is not the input's shape {h}")
    if match.has("cast_in"):
        if not match.has("cast_out"):
            return MatchResult.fail("upcast to fp32 without the cast back")
        if g.type(match.node("cast_in").outputs[0]).dtype != "float32" or out.dtype != h.dtype:
            return MatchResult.fail("the cast sandwich is not input dtype → fp32 → input dtype")
    elif out.dtype != h.dtype:
        return MatchResult.fail(f"output dtype {out.dtype} differs from the input's {h.dtype}")
    return MatchResult.success()


def _ones(plan: Plan, n: int, dtype: str) -> str:
    npdt = DTYPES[dtype][1] or np.float32
    return plan.param("norm_ones", TensorType(dtype, (n,)), np.ones(n, npdt), const=True)


def rewrite_norm(op: str):
    def rewrite(match: Match, plan: Plan):
        h = match["h"]
        ty = match.type("h")
        if not isinstance(ty.shape[-1], int):
            return MatchResult.fail("the normalized axis has a symbolic size")
        out_dtype = match.graph.type(match.root_tensor).dtype
        w = match["w"] if match.has("w") else _ones(plan, ty.shape[-1], out_dtype)
        ins = [h, w] + ([match["b"]] if match.has("b") else [])
        attrs = {"axis": -1, "epsilon": float(match["eps"])}
        if match.has("cast_in"):
            attrs["stash_type"] = 1
        out = plan.op(op, ins, attrs, types=[match.graph.type(match.root_tensor)],
                      merged_from=sorted({n.op for n in match.nodes}))
        plan.output(match.root_tensor, out)
    return rewrite


def rms_norm_rule() -> Rule:
    return Rule("rms_norm", rms_pattern(), rewrite_norm("RMSNormalization"), check_norm,
                doc="x·rsqrt(mean(x²)+eps)·w → RMSNormalization")


def layer_norm_rule() -> Rule:
    return Rule("layer_norm", layer_norm_pattern(), rewrite_norm("LayerNormalization"), check_norm,
                doc="(x−mean)/sqrt(var+eps)·w+b → LayerNormalization")


# ------------------------------------------------------------------------------------------------

def residual_pattern():
    s = Op("Add", Var("a"), Var("r"), name="sum")
    return Op(("LayerNormalization", "RMSNormalization"), s, Var("w"), name="norm", extra=True)


def check_residual(match: Match) -> MatchResult:
    g = match.graph
    a, r = match.type("a"), match.type("r")
    s = g.type(match.node("sum").outputs[0])
    if g.is_param(match["a"]) or g.is_param(match["r"]):
        return MatchResult.fail("the Add adds a weight (a bias), not a residual")
    if not (same_shape(a.shape, s.shape) and same_shape(r.shape, s.shape)) or a.dtype != r.dtype:
        return MatchResult.fail(f"the Add broadcasts ({a} + {r}); a residual adds equal shapes")
    norm = match.node("norm")
    if (norm.attrs.get("axis", -1) % s.rank) != s.rank - 1:
        return MatchResult.fail(f"the norm is over axis {norm.attrs.get('axis')}, not the last")
    if any(t and g.num_uses(t) for t in norm.outputs[1:]):
        return MatchResult.fail("the norm's mean/inv-std outputs are used")
    return MatchResult.success()


def rewrite_residual(match: Match, plan: Plan):
    norm = match.node("norm")
    kind = "rms" if norm.op == "RMSNormalization" else "layer"
    attrs = {"norm": kind, "axis": -1, "epsilon": float(norm.attrs.get("epsilon", 1e-5))}
    if "stash_type" in norm.attrs:
        attrs["stash_type"] = int(norm.attrs["stash_type"])
    ins = [match["a"], match["r"]] + [t for t in norm.inputs[1:3] if t]
    y, s = plan.op("ResidualNorm", ins, attrs, n_out=2, domain="rooftop",
                   merged_from=["Add", norm.op])
    plan.output(norm.outputs[0], y)
    plan.output(match.node("sum").outputs[0], s)


def residual_norm_rule() -> Rule:
    return Rule("residual_norm", residual_pattern(), rewrite_residual, check_residual, exports=("sum",),
                doc="norm(a + r) with the sum kept → ResidualNorm (rooftop function: Add + norm)")


__all__ = ["rms_norm_rule", "layer_norm_rule", "residual_norm_rule"]
