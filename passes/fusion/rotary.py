"""Rotary position embedding: recognized and annotated (no rewrite).

``x·cos + rotate_half(x)·sin`` with ``rotate_half(x) = Concat(−x[..., d/2:], x[..., :d/2])`` (the
HF/Llama "non-interleaved" form). Every op of the group gets ``annotations["fused_group"] =
"rotary:<root>"`` and ``annotations["rotary"]`` (a :class:`compiler.annotations.Rotary`: the rotated
tensor, cos, sin, interleaved), which the emitter writes into the node's metadata. ONNX ``RotaryEmbedding`` ops (dynamo
exports) are counted as recognized too.
"""
from __future__ import annotations

from compiler import annotations as ann
from compiler.annotations import Rotary
from passes.fusion.common import same_dim, same_shape
from passes.fusion.pattern import Alt, MatchResult, Op, Var
from passes.fusion.rule import Match, Plan, Rule

BIG = 2**62


def rotary_pattern():
    x = Var("x")
    lo = Op("Slice", x, name="lo")
    hi = Op("Slice", x, name="hi")
    rot = Op("Concat", Op("Neg", hi, name="neg"), lo, name="rotate_half")
    hf = Op("Add", Op("Mul", x, Var("cos"), name="mul_cos"), Op("Mul", rot, Var("sin"), name="mul_sin"),
            name="rope")
    return Alt(hf, Op("RotaryEmbedding", name="rope_op"))


def _bounds(n, rank):
    at = n.attrs
    if not all(k in at for k in ("starts", "ends", "axes")) or len(at["axes"]) != 1:
        return None
    if (at["axes"][0] % rank) != rank - 1 or (at.get("steps") or [1])[0] != 1:
        return None
    return at["starts"][0], at["ends"][0]


def check_rotary(match: Match) -> MatchResult:
    if match.has("rope_op"):
        return MatchResult.success()
    g = match.graph
    x = match.type("x")
    d = x.shape[-1]
    if not isinstance(d, int) or d % 2:
        return MatchResult.fail(f"rotated size {d} is not an even integer")
    lo, hi = _bounds(match.node("lo"), x.rank), _bounds(match.node("hi"), x.rank)
    if lo is None or hi is None:
        return MatchResult.fail("the halves are not constant slices of the last axis")
    if lo[0] != 0 or lo[1] != d // 2 or hi[0] != d // 2 or not (hi[1] >= d or hi[1] >= BIG):
        return MatchResult.fail(f"slices {lo}, {hi} are not the two halves of {d}")
    if (match.node("rotate_half").attrs.get("axis", 0) % x.rank) != x.rank - 1:
        return MatchResult.fail("rotate_half concatenates another axis")
    out = g.type(match.root_tensor)
    if not same_shape(out.shape, x.shape):
        return MatchResult.fail("the output is not the rotated tensor's shape")
    for n in ("cos", "sin"):
        if not same_dim(match.type(n).shape[-1], d):
            return MatchResult.fail(f"{n} does not cover the rotated size {d}")
    return MatchResult.success()


def annotate_rotary(match: Match, plan: Plan):
    group = f"rotary:{match.root.name}"
    if match.has("rope_op"):
        r = match.root
        info = Rotary(r.inputs[0], r.inputs[1], r.inputs[2], int(r.attrs.get("interleaved", 0)))
    else:
        info = Rotary(match["x"], match["cos"], match["sin"], 0)
    for n in match.nodes:
        ann.set(n, "fused_group", group)
        ann.set(n, "rotary", info)
    ann.set(match.root, "fused_by", "rotary")


def rotary_rule() -> Rule:
    return Rule("rotary", rotary_pattern(), annotate_rotary, check_rotary, annotate_only=True, cost_gated=False,
                doc="x·cos + rotate_half(x)·sin recognized and annotated (no rewrite)")


__all__ = ["rotary_rule"]
