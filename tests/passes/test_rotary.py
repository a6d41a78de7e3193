"""Rotary embedding fusion (passes/fusion/rotary.py) → ONNX ``RotaryEmbedding``.

Hand-built graphs for every form (rotate-half, interleaved pairs, partial rotary, [B, H, S, D] and
[B, S, H, D] layouts, cos/sin built in the graph or a constant table), checked against the unfused
graph in onnxruntime (fp32, ≤ 1e-4), the "should not fire" cases (halves not provably equal, a leak)
and, on llama_tiny through torch.export, the per-layer op count of the decode step and prefill +
decode equivalence at batch 3 with a KV cache.
"""
from __future__ import annotations

import numpy as np
import pytest

from compiler.ir import TensorType
from passes.fusion import run_rules
from tests.graphs import Builder, assert_same_outputs, feeds_for, ops_of

B_, H, S_, D = 3, 4, 5, 16
ROTARY = ["rotary_cache", "rotary", "rotary_partial", "rotary_layout"]


def _freqs(bd, *, rot: int, interleaved: bool, layout: str, table: bool = False):
    """cos, sin broadcast onto the rotated tensor, built as the models do: position_ids ·
    inv_freq, duplicated (rotate-half: Concat(f, f); interleaved: repeat_interleave), Cos/Sin,
    a scale, unsqueezed on the head axis. ``table``: a constant cos/sin table gathered by
    position_ids instead."""
    pos = bd.input("position_ids", (B_, S_), "int64")
    if table:
        f = np.arange(32)[:, None] * (1.0 / 10000 ** (np.arange(0, rot, 2) / rot))[None]
        full = np.concatenate([f, f], -1) if not interleaved else np.repeat(f, 2, -1)
        cs = [bd.g.add_param(bd.g.fresh(n), TensorType("float32", full.shape), fn(full).astype(np.float32))
              for n, fn in (("cos_table", np.cos), ("sin_table", np.sin))]
        cos, sin = (bd.op("Gather", c, pos, axis=0) for c in cs)
    else:
        inv = bd.const((1.0 / 10000 ** (np.arange(0, rot, 2) / rot)).astype(np.float32).reshape(1, 1, -1))
        f = bd.op("Mul", bd.op("Cast", bd.op("Unsqueeze", pos, axes=[-1]), to=1), inv)   # [B, S, rot/2]
        if interleaved:
            e = bd.op("Expand", bd.op("Unsqueeze", f, axes=[-1]), shape=[B_, S_, rot // 2, 2])
            emb = bd.op("Reshape", e, shape=[B_, S_, rot])
        else:
            emb = bd.op("Concat", f, f, axis=-1)
        scale = bd.const(0.9)
        cos, sin = bd.op("Mul", bd.op("Cos", emb), scale), bd.op("Mul", bd.op("Sin", emb), scale)
    axis = 1 if layout == "bhsd" else 2
    return bd.op("Unsqueeze", cos, axes=[axis]), bd.op("Unsqueeze", sin, axes=[axis])


def _rope(bd, x, cos, sin, *, d: int, interleaved: bool):
    if interleaved:
        odd = bd.op("Slice", x, starts=[1], ends=[2**63 - 1], axes=[-1], steps=[2])
        even = bd.op("Slice", x, starts=[0], ends=[2**63 - 1], axes=[-1], steps=[2])
        st = bd.op("Concat", bd.op("Unsqueeze", bd.op("Neg", odd), axes=[-1]),
                   bd.op("Unsqueeze", even, axes=[-1]), axis=-1)
        shape = bd.g.type(x).shape
        rot = bd.op("Reshape", st, shape=list(shape))
    else:
        lo = bd.op("Slice", x, starts=[0], ends=[d // 2], axes=[3], steps=[1])
        hi = bd.op("Slice", x, starts=[d // 2], ends=[2**63 - 1], axes=[3], steps=[1])
        rot = bd.op("Concat", bd.op("Neg", hi), lo, axis=-1)
    return bd.op("Add", bd.op("Mul", x, cos), bd.op("Mul", rot, sin))


def rotary_graph(*, interleaved=False, partial=False, layout="bhsd", table=False, split=False,
                 leak=False, free_cos=False):
    """x [B, S, H·D] → (``split``: head split to [B, H, S, D]) rotary → output."""
    bd = Builder()
    rot = D // 2 if partial else D
    if split:
        x3 = bd.op("MatMul", bd.input("h", (B_, S_, 32)), bd.weight(32, H * D))
        x = bd.op("Transpose", bd.op("Reshape", x3, shape=[B_, S_, H, D]), perm=[0, 2, 1, 3])
    else:
        x = bd.input("x", (B_, H, S_, D) if layout == "bhsd" else (B_, S_, H, D))
    if free_cos:
        shape = (B_, 1, S_, rot) if layout == "bhsd" else (B_, S_, 1, rot)
        cos, sin = bd.input("cos", shape), bd.input("sin", shape)
    else:
        cos, sin = _freqs(bd, rot=rot, interleaved=interleaved, layout=layout, table=table)
    xr = bd.op("Slice", x, starts=[0], ends=[rot], axes=[3], steps=[1]) if partial else x
    y = _rope(bd, xr, cos, sin, d=rot, interleaved=interleaved)
    if partial:
        y = bd.op("Concat", y, bd.op("Slice", x, starts=[rot], ends=[2**63 - 1], axes=[3], steps=[1]), axis=-1)
    neg = next(n.outputs[0] for n in bd.g if n.op == "Neg")
    return bd.out(y, *([bd.op("Relu", neg)] if leak else []))


def _feeds(g):
    return feeds_for(g, values={"position_ids": np.tile(np.arange(7, 7 + S_), (B_, 1)).astype(np.int64)})


@pytest.mark.parametrize("interleaved", [False, True], ids=["rotate_half", "interleaved"])
@pytest.mark.parametrize("partial", [False, True], ids=["full", "partial"])
@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
def test_rotary_fuses_every_form(interleaved, partial, layout):
    g = rotary_graph(interleaved=interleaved, partial=partial, layout=layout)
    before = g.copy()
    stats = run_rules(g, ROTARY, gate=None)[0]
    assert stats["rotary"] == 1, stats
    ops = ops_of(g)
    assert ops["RotaryEmbedding"] == 1 and not {"Neg", "Add"} & set(ops), ops
    r = next(n for n in g if n.op == "RotaryEmbedding")
    assert r.attrs["interleaved"] == int(interleaved)
    assert r.attrs.get("rotary_embedding_dim", 0) == (D // 2 if partial else 0)
    assert g.type(r.inputs[1]).shape == (B_, S_, (D // 2 if partial else D) // 2)   # half caches
    assert g.type(r.inputs[0]).rank == (4 if layout == "bhsd" else 3)
    assert_same_outputs(before, g, _feeds(g))


def test_rotary_from_a_constant_table():
    g = rotary_graph(table=True)
    before = g.copy()
    assert run_rules(g, ROTARY, gate=None)[0]["rotary"] == 1
    assert_same_outputs(before, g, _feeds(g))


def test_rotary_should_not_fire_when_halves_are_not_provably_equal():
    g = rotary_graph(free_cos=True)   # cos/sin are graph inputs: any values, not a rotation
    n = len(g)
    stats, out = run_rules(g, ROTARY, gate=None)
    assert stats["rotary"] == 0 and len(g) == n
    assert "halves cannot be proven equal" in out["rotary"].closest_miss.reason


def test_rotary_table_with_unequal_halves_is_refused():
    g = rotary_graph(table=True)
    t = next(p for p in g.params if p.startswith("cos_table"))
    g.params[t].data[:, 0] += 1.0
    stats, out = run_rules(g, ROTARY, gate=None)
    assert stats["rotary"] == 0 and "halves differ" in out["rotary"].closest_miss.reason


def test_rotary_should_not_fire_on_leak():
    g = rotary_graph(partial=True, leak=True)
    stats, out = run_rules(g, ["rotary"], gate=None)
    assert stats["rotary"] == 0, stats
    assert "outside the group" in out["rotary"].closest_miss.reason


def test_rotary_layout_sinks_the_head_split():
    g = rotary_graph(split=True)
    before = g.copy()
    stats = run_rules(g, ROTARY, gate=None)[0]
    assert stats["rotary"] == 1 and stats["rotary_layout"] == 1
    r = next(n for n in g if n.op == "RotaryEmbedding")
    assert r.attrs["num_heads"] == H and g.type(r.inputs[0]).shape == (B_, S_, H * D)
    assert_same_outputs(before, g, _feeds(g))


def test_rotary_cache_expands_a_batch_one_cache():
    """dynamo exports without batch position_ids give RotaryEmbedding a [1, S, d/2] cache, which
    onnxruntime rejects at batch > 1; the rule expands it (the ONNX reference broadcasts)."""
    bd = Builder()
    x = bd.input("x", (B_, H, S_, D))
    c = bd.input("c", (1, S_, D // 2))
    s = bd.input("s", (1, S_, D // 2))
    g = bd.out(bd.op("RotaryEmbedding", x, c, s))
    feeds = feeds_for(g)
    from onnx.reference.ops.op_rotary_embedding import rotary_embedding
    want = rotary_embedding(feeds["x"], feeds["c"], feeds["s"])
    assert run_rules(g, ["rotary_cache"], gate=None)[0]["rotary_cache"] == 1
    from tests.graphs import run_ort
    got = run_ort(g, feeds)[0]
    assert np.abs(got - want).max() <= 1e-5


# ------------------------------------------------------------------------------------------------
# llama_tiny through torch.export: per-layer op count of a decode step, numbers with a KV cache

def _per_layer(g) -> tuple[int, int]:
    """(ops per layer, layers): the ops that depend on the first layer's activations (position
    code shared by all layers and the embedding are not), less the head (final norm, lm_head)."""
    import networkx as nx
    first = next(n for n in g.topo_order() if n.op in ("RMSNormalization", "ResidualNorm") or
                 (n.op == "ReduceMean"))
    body = nx.descendants(g.nx, first.name) | {first.name}
    layers = g.ops_by_kind()["Attention"]
    head = 2 if any(g.node(n).op in ("RMSNormalization", "ResidualNorm") for n in body) and \
        g.ops_by_kind().get("ResidualNorm") else None
    if head is None:   # unfused: the head is the final norm's primitives + lm_head
        head = 1 + 7   # Pow, ReduceMean, Add, Sqrt, Reciprocal, Mul, Mul (+ MatMul)
    return (len(body) - head) // layers, layers


@pytest.fixture(scope="module")
def llama():
    from compiler.frontends.models import import_torch
    from passes.cleanup import fold_constants, remove_noops
    from tests.conftest import model_cfg, prepare
    g = import_torch(model_cfg("llama_tiny"))
    prepare(g)
    remove_noops(g)
    fold_constants(g)
    return g


def test_llama_decode_ops_per_layer_drop_to_what_runtimes_launch(llama):
    from tests.passes.test_fusion_sources import fuse_pass
    g = llama.copy()
    before, layers = _per_layer(g)
    res = fuse_pass(g)
    after, _ = _per_layer(g)
    assert res.stats["rotary"] == 2 * layers and res.stats["attention_layout"] == layers
    # RMSNorm(+res), QKV GEMM, Split, 2× RotaryEmbedding, Attention, O GEMM, RMSNorm(+res),
    # gate/up GEMM + SwiGLU, down GEMM
    assert after == 10, (before, after, g.ops_by_kind())
    assert before >= 40, before
    ops = g.ops_by_kind()
    assert "Transpose" not in ops and "Neg" not in ops and ops["RotaryEmbedding"] == 2 * layers


@pytest.mark.parametrize("step", ["prefill", "decode"])
def test_llama_fused_matches_unfused_with_kv_cache(llama, step):
    from tests.passes.test_fusion_sources import fuse_pass, lm_feeds, max_diff
    from tests.graphs import run_ort
    g = llama.copy()
    fuse_pass(g)
    feeds = lm_feeds(llama, b=3, s=6 if step == "prefill" else 1, p=0 if step == "prefill" else 9, seed=2)
    feeds["attention_mask"] = np.ones_like(feeds.get("attention_mask", feeds["input_ids"]))
    assert max_diff(run_ort(llama, feeds), run_ort(g, feeds)) <= 1e-4


def test_rotary_partial_from_a_sliced_rotary_embedding():
    """dynamo's partial rotary (Phi-3, GPT-NeoX): Concat(RotaryEmbedding(x[..., :r]), x[..., r:])
    becomes one RotaryEmbedding with rotary_embedding_dim=r (then the head split can sink)."""
    bd = Builder()
    x3 = bd.op("MatMul", bd.input("h", (B_, S_, 32)), bd.weight(32, H * D))
    x = bd.op("Transpose", bd.op("Reshape", x3, shape=[B_, S_, H, D]), perm=[0, 2, 1, 3])
    c, s = bd.input("c", (B_, S_, D // 4)), bd.input("s", (B_, S_, D // 4))
    rot = bd.op("RotaryEmbedding", bd.op("Slice", x, starts=[0], ends=[D // 2], axes=[3], steps=[1]), c, s)
    g = bd.out(bd.op("Concat", rot, bd.op("Slice", x, starts=[D // 2], ends=[2**63 - 1], axes=[3], steps=[1]),
                     axis=-1))
    before = g.copy()
    stats = run_rules(g, ROTARY, gate=None)[0]
    assert stats["rotary_partial"] == 1 and stats["rotary_layout"] == 1, stats
    r = next(n for n in g if n.op == "RotaryEmbedding")
    assert r.attrs["rotary_embedding_dim"] == D // 2 and g.type(r.inputs[0]).shape == (B_, S_, H * D)
    assert "Concat" not in ops_of(g)
    assert_same_outputs(before, g, feeds_for(g))
