"""Bias folding for the fuse pass's ``cpu`` target: linear-layer biases moved to where they cost
nothing, so that three of an encoder layer's six GEMMs run without one.

On onnxruntime CPU a ``Gemm`` with a bias is ~6 % slower than the same GEMM without (the bias is
first broadcast into the output, then accumulated into), and a bias-free linear layer needs no
``Gemm`` at all: a 3-D ``MatMul`` runs the same one GEMM with no reshapes around it. Three
rewrites, each exact in real arithmetic (fp32 results move by rounding only, ~1e-6):

- **key bias** — ``softmax(q·(k_j + b))`` = ``softmax(q·k_j + q·b)`` and ``q·b`` is the same for
  every key j of a query: the K projection's bias is dropped.
- **value bias** — every row of the attention probabilities sums to one, so
  ``P·(V + b_v)`` = ``P·V + b_v``; through the output projection that is ``b_v·W_o``, added to its
  bias.
- **residual bias** (post-LN blocks: BERT, RoBERTa, MiniLM) — for ``h = LN(s; γ, β)`` consumed only
  by a linear layer ``x·W1 + b1`` and by the residual ``h + (y·W2 + b2)``: ``β += b2`` makes every
  use of ``h`` see ``h + b2``; ``b1 -= b2·W1`` compensates the first, and the residual needs no
  ``b2`` any more.

Only where nothing else can observe the change: attention with no KV cache (a cached K or V would
be returned without its bias), no ``softcap`` (tanh is not shift-invariant), no Q·K output, equal
query and key/value head counts; each rewritten tensor with exactly the consumers named above;
weights with data (cost-only graphs keep their biases: the payoff is a few percent of GEMM time,
below what the cost model resolves).
"""
from __future__ import annotations

import numpy as np

from compiler.ir import Graph, OpNode
from compiler.ir.tensors import TensorType

STATS = ("bias_fold.key", "bias_fold.value", "bias_fold.residual")


def _data(g: Graph, name: str) -> np.ndarray | None:
    p = g.params.get(name)
    return None if p is None else p.data


def _plain_linear(g: Graph, node: OpNode | None, *, act_ok: bool = False) -> bool:
    """A MatMulEpilogue ``A·W + bias`` with weights and bias as parameters that hold data."""
    if node is None or node.op != "MatMulEpilogue" or len(node.inputs) < 3 or not node.inputs[2]:
        return False
    if node.attrs.get("activation") and not act_ok:
        return False
    if node.attrs.get("activation") == "swiglu":
        return False
    return all(_data(g, t) is not None and g.types[t].dtype == "float32" for t in node.inputs[1:3])


def _drop_bias(g: Graph, node: OpNode) -> np.ndarray:
    bias = node.inputs[2]
    data = g.params[bias].data
    g.set_input(node, 2, "")
    del node.inputs[2:]
    if not g.num_uses(bias):
        g.remove_param(bias)
    return data


def _set_bias(g: Graph, node: OpNode, index: int, values: np.ndarray, base: str) -> None:
    """Operand ``index`` of ``node`` (a bias or a norm's shift) takes ``values``: in place when
    only ``node`` reads the parameter (its name and annotations kept), else as a new parameter."""
    old = node.inputs[index] if len(node.inputs) > index else ""
    values = values.astype(np.float32)
    if old and g.num_uses(old) == 1:
        g.params[old].data = values
        return
    name = g.fresh(base)
    g.add_param(name, TensorType("float32", (values.shape[0],)), values)
    g.set_input(node, index, name)


def _foldable_attention(g: Graph, n: OpNode) -> bool:
    if n.op != "Attention" or g.types[n.inputs[0]].rank != 3:
        return False
    if n.attrs.get("is_causal") or g.meta.get("causal"):
        return False            # a decoder: its cache (lifted now or by a later pass) keeps K and V as computed
    if any(t for t in n.inputs[4:]) or any(t for t in n.outputs[1:]):
        return False            # a KV cache (in or out) or the Q·K output would see the change
    if float(n.attrs.get("softcap", 0.0) or 0.0) != 0.0:
        return False
    q, kv = n.attrs.get("q_num_heads"), n.attrs.get("kv_num_heads")
    return q is not None and q == kv


def fold_biases(g: Graph) -> dict[str, int]:
    """Apply the three folds wherever they are valid; returns the count of each (``STATS``)."""
    stats = dict.fromkeys(STATS, 0)
    for n in list(g):
        if not _foldable_attention(g, n):
            continue
        k = g.producer_of(n.inputs[1])
        if _plain_linear(g, k) and g.num_uses(n.inputs[1]) == 1 and n.inputs[1] != n.inputs[0]:
            _drop_bias(g, k)
            stats["bias_fold.key"] += 1
        v = g.producer_of(n.inputs[2])
        users = g.consumers(n.outputs[0])
        o = users[0][0] if len(users) == 1 and users[0][1] == 0 else None
        if (_plain_linear(g, v) and g.num_uses(n.inputs[2]) == 1 and n.inputs[2] not in (n.inputs[0], n.inputs[1])
                and o is not None and o.op == "MatMulEpilogue" and o.attrs.get("activation") != "swiglu"
                and _data(g, o.inputs[1]) is not None and n.outputs[0] not in g.outputs
                and (len(o.inputs) < 3 or not o.inputs[2] or _data(g, o.inputs[2]) is not None)):
            w_o = g.params[o.inputs[1]].data.astype(np.float64)
            b_v = _drop_bias(g, v).astype(np.float64)
            b_o = _data(g, o.inputs[2]) if len(o.inputs) > 2 and o.inputs[2] else np.zeros(w_o.shape[-1])
            _set_bias(g, o, 2, b_o.astype(np.float64) + b_v @ w_o, "bias_fold_value")
            stats["bias_fold.value"] += 1
    for n in list(g):
        if _fold_residual(g, n):
            stats["bias_fold.residual"] += 1
    return {k: v for k, v in stats.items() if v}


def _norm_beta_index(node: OpNode | None, out_index: int) -> int | None:
    """Operand index of the shift β of a LayerNorm whose normalized output is ``out_index``."""
    if node is None or out_index != 0:
        return None
    if node.op == "LayerNormalization":
        return 2
    if node.op == "ResidualNorm" and node.attrs.get("norm") == "layer":
        return 3
    return None


def _fold_residual(g: Graph, l2: OpNode) -> bool:
    """``l2`` = the second linear of a post-LN block (see the module docstring)."""
    if not _plain_linear(g, l2) or g.num_uses(l2.outputs[0]) != 1 or l2.outputs[0] in g.outputs:
        return False
    (res, i), = g.consumers(l2.outputs[0])
    if res.op == "Add" or (res.op == "ResidualNorm" and i in (0, 1)):
        if res.op == "Add" and (len(res.inputs) != 2 or i not in (0, 1)):
            return False
        h = res.inputs[1 - i]
    else:
        return False
    if h in g.outputs or h == l2.outputs[0] or g.types[h].shape != g.types[l2.outputs[0]].shape:
        return False
    norm = g.producer_of(h)
    beta_i = _norm_beta_index(norm, norm.outputs.index(h) if norm is not None else -1)
    if (beta_i is None or len(norm.inputs) <= beta_i or _data(g, norm.inputs[beta_i]) is None
            or g.types[norm.inputs[beta_i]].dtype != "float32"):
        return False
    users = g.consumers(h)
    others = [(u, j) for u, j in users if u is not res]
    if len(users) != 2 or len(others) != 1:
        return False
    l1, j = others[0]
    if j != 0 or not _plain_linear(g, l1, act_ok=True) or l1 is l2:
        return False
    b2 = _drop_bias(g, l2).astype(np.float64)
    w1 = g.params[l1.inputs[1]].data.astype(np.float64)
    _set_bias(g, l1, 2, g.params[l1.inputs[2]].data.astype(np.float64) - b2 @ w1, "bias_fold_in")
    _set_bias(g, norm, beta_i, g.params[norm.inputs[beta_i]].data.astype(np.float64) + b2, "bias_fold_beta")
    return True


def float_masks(g: Graph) -> int:
    """The cpu target: a boolean ``attn_mask`` shared by several ``Attention`` ops becomes one
    additive float mask (0 where attended, the lowest float elsewhere: the value onnxruntime's
    kernel substitutes itself), computed once. onnxruntime converts a boolean mask into that float
    form inside every Attention call (~7 % of the op's time at MiniLM's shape); results are
    bit-identical. Returns how many Attention ops now read a converted mask."""
    converted: dict[str, str] = {}
    n_ops = 0
    for n in list(g):
        if n.op != "Attention" or len(n.inputs) < 4 or not n.inputs[3]:
            continue
        mask = n.inputs[3]
        ty = g.types[mask]
        if ty.dtype != "bool" or g.types[n.inputs[0]].dtype != "float32":
            continue
        if mask not in converted:
            zero, low = g.fresh("mask_attended"), g.fresh("mask_blocked")
            g.add_param(zero, TensorType("float32", ()), np.array(0.0, np.float32), const=True)
            g.add_param(low, TensorType("float32", ()), np.array(np.finfo(np.float32).min, np.float32), const=True)
            converted[mask] = g.add_op("Where", [mask, zero, low], 1, name=g.fresh("float_mask")).outputs[0]
        g.set_input(n, 3, converted[mask])
        n_ops += 1
    return n_ops
