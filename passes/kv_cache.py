"""Lift the KV cache out of attention.

A causal decoder imported without a cache has Attention nodes fed by full-sequence K and V
(often through a GQA ``repeat_kv``: Unsqueeze → Expand → Reshape that copies each KV head to the
query heads it serves). This pass makes the cache explicit, so one model does prefill and decode:

- the ``repeat_kv`` chain is removed: ONNX ``Attention`` does GQA natively, and the cache then
  stores ``kv_heads`` (not query heads) — the whole point of GQA;
- each Attention (layer ``i`` in graph order) gains inputs ``past_key.i`` / ``past_value.i``
  ``[B, kv_heads, P, head_dim]`` and outputs ``present_key.i`` / ``present_value.i``
  ``[B, kv_heads, P + S, head_dim]``;
- ``is_causal`` masks align bottom-right (query ``t`` sees keys ``≤ P + t``), which is ONNX
  Attention's semantics when a past is given (checked in onnxruntime by the tests).

- an ``attention_mask [B, P + S]`` input (Hugging Face's convention: ones for real tokens, zeros
  for padding, covering the past and the new tokens) becomes every Attention's boolean mask
  operand ``[B, 1, 1, P + S]`` beside its structure (``is_causal``, a ``window``, ALiBi slopes:
  the emitter combines them), so a batch of prompts of different lengths (left or right padded)
  runs through the cache; all ones is the unpadded case;
- an Attention whose mask is not such a structure (the importer kept it as an explicit operand:
  it reads something the cache would change) is refused with the reason (exit 2).

The callers feed ``position_ids = P + arange(S)`` (for a left-padded row: its own positions);
the decoder's rotary / learned position embeddings read them, so nothing else changes.

Multi-head latent attention (``LatentAttention``, compiler/frontends/mla.py) caches its latent:
``past_key.i`` [B, 1, P, kv_lora_rank] and ``past_value.i`` [B, 1, P, rope_dim] (what
transformers' own cache holds for it) become its operands 5 and 6, the ``attention_mask``
operand 7.
"""
from __future__ import annotations

from compiler.ir import annotations as ann
from compiler.ir.annotations import KVLayout
from compiler.ir import DTYPES, B, P, S, Graph, IRError, OpNode, TensorType
from compiler.ir.ops import UnsupportedOpError
from passes.base import Pass, PassResult
from passes.cleanup import eliminate_dead_code


def _strip_repeat_kv(g: Graph, t: str, kv_heads_hint: int | None = None) -> str:
    """If ``t`` is Reshape(Expand(Unsqueeze(x, axis=2)), [b, h, s, d]) with x [b, hkv, s, d],
    return x, else t."""
    r = g.producer_of(t)
    if r is None or r.op != "Reshape":
        return t
    e = g.producer_of(r.inputs[0])
    if e is None or e.op != "Expand":
        return t
    u = g.producer_of(e.inputs[0])
    if u is None or u.op != "Unsqueeze" or list(u.attrs.get("axes", [])) != [2]:
        return t
    x = u.inputs[0]
    xs, es, rs = g.type(x).shape, g.type(e.outputs[0]).shape, g.type(t).shape
    if len(xs) != 4 or len(es) != 5 or len(rs) != 4:
        return t
    if not (es[0] == xs[0] and es[1] == xs[1] and es[3] == xs[2] and es[4] == xs[3]):
        return t
    if not (rs[0] == xs[0] and rs[2] == xs[2] and rs[3] == xs[3] and rs[1] == xs[1] * es[2]):
        return t
    return x


def needs_kv_cache(g: Graph) -> bool:
    """A declared-causal decoder (``graph.meta["causal"]``, set by the torch importer) that has no
    KV-cache inputs yet. ONNX files bring their own cache (or none) and are left alone."""
    return bool(g.meta.get("causal")) and not g.meta.get("kv_tensors")


ATTENTION_OPS = ("Attention", "LatentAttention")


def _lift_latent(g: Graph, n: OpNode, i: int) -> list[str]:
    """Past/present latent and rope key of a ``LatentAttention`` (operands 5, 6; results 1, 2)."""
    lat, rope = g.type(n.inputs[2]), g.type(n.inputs[3])
    b = lat.shape[0]
    pk = g.add_input(f"past_key.{i}", TensorType(lat.dtype, (b, 1, P, lat.shape[3])))
    pv = g.add_input(f"past_value.{i}", TensorType(rope.dtype, (b, 1, P, rope.shape[3])))
    while len(n.inputs) < 5:
        g.set_input(n, len(n.inputs), "")
    g.set_input(n, 5, pk)
    g.set_input(n, 6, pv)
    _add_outputs(g, n, [f"present_key.{i}", f"present_value.{i}"],
                 [TensorType(lat.dtype, (b, 1, P + lat.shape[2], lat.shape[3])),
                  TensorType(rope.dtype, (b, 1, P + rope.shape[2], rope.shape[3]))])
    return [pk, pv, f"present_key.{i}", f"present_value.{i}"]


PADDING_INPUT = "attention_mask"


def lift_kv_cache(g: Graph, *, padding: bool = False) -> dict[str, int]:
    """Lift the cache in place (see the module doc); ``padding``: add the ``attention_mask``
    input (torch imports; an ONNX file's own mask input is handled by passes/kv_cache_onnx.py)."""
    attn = [n for n in g.topo_order() if n.op in ATTENTION_OPS]
    if not attn:
        raise UnsupportedOpError(
            "lift_kv_cache: the causal decoder has no Attention op to attach a KV cache to (its "
            "attention is still matmul/softmax). Run the fuse_eager_attention pass before "
            "lift_kv_cache in pipeline.passes, or import it with model.attn_implementation=sdpa.")
    stats = {"layers": 0, "repeat_kv_removed": 0}
    kv_tensors = set(g.meta.get("kv_tensors", ()))
    pad = None
    if padding and PADDING_INPUT not in g.inputs:
        for n in attn:
            if len(n.inputs) > 3 and n.inputs[3] and not (len(n.inputs) > 4 and n.inputs[4]):
                spec = ann.get(n, "attention")
                why = f"its mask is {spec.mask}" if spec is not None else "it takes an explicit mask"
                raise UnsupportedOpError(
                    f"lift_kv_cache: attention {n.name} cannot take a KV cache: {why} (computed from "
                    f"inputs a cache would change, not a causal / sliding-window / ALiBi structure). "
                    f"Import the model with model.attn_implementation=sdpa or eager, or cost it "
                    f"without a cache (pipeline without lift_kv_cache).")
        g.add_input(PADDING_INPUT, TensorType("int64", (B, P + S)))
        cast = g.add_op("Cast", [PADDING_INPUT], 1, {"to": DTYPES["bool"][2]})
        pad = g.add_op("Unsqueeze", [cast.outputs[0]], 1, {"axes": [1, 2]}).outputs[0]
    for i, n in enumerate(attn):
        if n.op == "LatentAttention":
            if len(n.inputs) > 5 and n.inputs[5]:
                continue
            kv_tensors |= set(_lift_latent(g, n, i))
            if pad is not None:   # the padding mask as operand 7 (compiler/backend/lowering.py)
                g.set_input(n, 7, pad)
            g.outputs += [f"present_key.{i}", f"present_value.{i}"]
            ann.set(n, "layer", i)
            ann.set(n, "kv_layout", ann.get(n, "kv_layout") or KVLayout("contiguous"))
            stats["layers"] += 1
            continue
        if len(n.inputs) > 4 and n.inputs[4]:
            continue  # already has a cache
        q, k, v = n.inputs[:3]
        k2, v2 = _strip_repeat_kv(g, k), _strip_repeat_kv(g, v)
        if k2 != k:
            g.set_input(n, 1, k2)
            stats["repeat_kv_removed"] += 1
        if v2 != v:
            g.set_input(n, 2, v2)
            stats["repeat_kv_removed"] += 1
        kt, vt = g.type(k2), g.type(v2)
        if kt.rank == 3 and n.attrs.get("kv_num_heads"):   # the 3-D form [B, S, Hkv·D]
            hkv = int(n.attrs["kv_num_heads"])
            kt = kt.with_shape((kt.shape[0], hkv, kt.shape[1], kt.shape[2] // hkv))
            vt = vt.with_shape((vt.shape[0], hkv, vt.shape[1], vt.shape[2] // hkv))
        if kt.rank != 4:
            raise IRError(f"{n.name}: KV lifting needs 4-D [B, H, S, D] key/value, got {kt}")
        b, hkv, _, d = kt.shape
        pk = g.add_input(f"past_key.{i}", TensorType(kt.dtype, (b, hkv, P, d)))
        pv = g.add_input(f"past_value.{i}", TensorType(vt.dtype, (b, vt.shape[1], P, vt.shape[3])))
        while len(n.inputs) < 4:
            g.set_input(n, len(n.inputs), "")
        if pad is not None:
            g.set_input(n, 3, pad)
        g.set_input(n, 4, pk)
        g.set_input(n, 5, pv)
        _add_outputs(g, n, [f"present_key.{i}", f"present_value.{i}"],
                     [TensorType(kt.dtype, (b, hkv, P + kt.shape[2], d)),
                      TensorType(vt.dtype, (b, vt.shape[1], P + vt.shape[2], vt.shape[3]))])
        g.outputs += [f"present_key.{i}", f"present_value.{i}"]
        kv_tensors |= {pk, pv, f"present_key.{i}", f"present_value.{i}"}
        ann.set(n, "layer", i)
        ann.set(n, "kv_layout", ann.get(n, "kv_layout") or KVLayout("contiguous"))
        stats["layers"] += 1
    g.meta["kv_tensors"] = sorted(kv_tensors)
    g.meta["kv_cache"] = {"lifted": True, **stats, **({"padding": PADDING_INPUT} if pad is not None else {})}
    if "input_ids" in g.inputs:
        g.meta.setdefault("dim_sources", {})["P"] = ("past_key.0", 2)
    # the expand/reshape chains are now dead; cleanup's dead-code elimination removes them
    eliminate_dead_code(g)
    return stats


def _add_outputs(g: Graph, n: OpNode, names: list[str], types: list[TensorType]):
    for t, ty in zip(names, types):
        g.add_op_output(n, t, ty)


class LiftKVCache(Pass):
    """Registered as ``lift_kv_cache``: past/present KV inputs and outputs on every Attention of a
    declared-causal decoder (a no-op elsewhere). Without it (``pipeline=none``) a causal LM has
    no cache: decode is then costed as one token attending to itself only."""

    name = "lift_kv_cache"

    def run(self, g):
        if not needs_kv_cache(g):
            return PassResult(g, False, {})
        s = lift_kv_cache(g, padding=True)
        return PassResult(g, bool(s["layers"]), s)
