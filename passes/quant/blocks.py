"""Which transformer block a linear layer belongs to: ``attention`` or ``mlp``.

``sparsity.targets`` (conf/sparsity/*.yaml) prunes only the linear layers of the named block
types. The type is read from the graph's structure, not from weight names (an ONNX file's names
are arbitrary, and fusion merges Q/K/V or gate/up weights):

- ``attention``: the layer's output reaches an attention core — an ``Attention``-family op, or a
  ``MatMul`` of two activations (QKᵀ, P·V of eager attention) — through layout-only ops
  (reshape/transpose/split/slice/concat/bias add, and the elementwise ops of a decomposed rotary
  embedding): the Q, K, V projections (merged or not); or its input comes from an attention core the same way: the output projection;
- ``mlp``: every other linear layer (up/gate/down projections, MoE experts and router).
"""
from __future__ import annotations

from compiler.ir import Graph, OpNode
from compiler.errors import ConfigError

BLOCK_TYPES = ("attention", "mlp")

_LAYOUT = {"Reshape", "Identity", "Squeeze", "Unsqueeze", "Flatten", "Cast", "Transpose", "Split",
           "Slice", "Concat", "RotaryEmbedding", "Expand"}
#: forward only: the elementwise ops of a decomposed rotary embedding (x·cos + rotate_half(x)·sin)
_ROTARY = {"Mul", "Neg", "Add", "Sub"}
_MAX_HOPS = 12


def _is_attention_core(g: Graph, n: OpNode) -> bool:
    if "Attention" in n.op:
        return True
    if n.op == "MatMul" and len(n.inputs) >= 2:
        return not any(t in g.params for t in n.inputs[:2])
    return False


def _passes_through(g: Graph, n: OpNode) -> bool:
    """A layout-only op, or an ``Add`` of a parameter (a bias)."""
    if n.op in _LAYOUT:
        return True
    return n.op == "Add" and any(t in g.params for t in n.inputs)


def _reaches_core_forward(g: Graph, tensor: str) -> bool:
    frontier, seen = [(tensor, 0)], set()
    while frontier:
        t, d = frontier.pop()
        if t in seen or d > _MAX_HOPS:
            continue
        seen.add(t)
        for c, _ in g.consumers(t):
            if _is_attention_core(g, c):
                return True
            if _passes_through(g, c) or c.op in _ROTARY:
                frontier.extend((o, d + 1) for o in c.outputs if o)
    return False


def _comes_from_core(g: Graph, tensor: str) -> bool:
    t, d = tensor, 0
    while d <= _MAX_HOPS:
        p = g.producer_of(t)
        if p is None:
            return False
        if _is_attention_core(g, p):
            return True
        if not _passes_through(g, p):
            return False
        t = next((i for i in p.inputs if i and i not in g.params), None)
        if t is None:
            return False
        d += 1
    return False


def block_type(g: Graph, n: OpNode) -> str:
    """``attention`` or ``mlp`` for the linear layer ``n`` (operand 0 the activation)."""
    if _reaches_core_forward(g, n.outputs[0]) or _comes_from_core(g, n.inputs[0]):
        return "attention"
    return "mlp"


def parse_targets(value) -> tuple[str, ...]:
    """``sparsity.targets``: a list of block types, one name, or ``all``."""
    if value is None or value == "all":
        return BLOCK_TYPES
    items = [value] if isinstance(value, str) else list(value)
    bad = [v for v in items if v not in BLOCK_TYPES]
    if bad or not items:
        raise ConfigError(f"sparsity.targets={value!r}: give a list of block types from {', '.join(BLOCK_TYPES)} "
                          f"(or all), e.g. sparsity.targets=[mlp] to prune only the feed-forward layers.")
    return tuple(t for t in BLOCK_TYPES if t in items)


__all__ = ["BLOCK_TYPES", "block_type", "parse_targets"]
