"""Attention whose meaning comes from the model's config: sliding windows, local/global layer
patterns, learned attention sinks and logit softcapping, imported as one ``Attention`` op with its
:class:`compiler.ir.annotations.AttentionSpec`.

**Why a registered implementation.** ``transformers`` passes every attention layer's facts to the
attention function it dispatches to (``config._attn_implementation``): the layer's
``sliding_window`` (``None`` on the global layers of a local/global pattern), ``softcap``, and
gpt-oss's sinks (``s_aux``). rooftop registers its own function, ``"rooftop"``
(:func:`ensure_registered`, the official ``AttentionInterface.register`` hook), that calls one
custom torch op, ``rooftop::attention(q, k, v, sinks, scale, softcap, window, mask)``: eager
execution runs the reference computation (causal, window, softcap, sinks and the padding of the
mask transformers built — the math of transformers' eager path, checked against it in tests), and
torch.export keeps the op whole, so the importer
(:func:`translate`) gets the window, softcap and sinks of each layer as facts instead of a
traced mask it would have to classify. The exported mask builder is then dead code and never
translated. Models use it when :func:`compiler.frontends.families.attention_facts` finds a window,
sinks or softcapping in their config (and gpt-oss, which transformers does not run through SDPA);
every other model keeps transformers' SDPA path.

**Window semantics** (transformers' ``sliding_window_overlay``): query position ``q`` sees keys
``q − W < k ≤ q`` — ``W`` keys including itself.

**Padding.** In eager runs (the reference a verification or a test compares against) the op also
applies the 4-D mask transformers built from the caller's ``attention_mask`` (bool, True = may
attend; or additive float), so a padded batch gives what transformers' own attention gives. Under
torch.export the mask is not passed: rooftop exports causal LMs from ``input_ids`` and
``position_ids`` only, so that mask would only repeat the causal/window structure the op's
attributes already carry; padding enters the artifact with the ``attention_mask`` input that the
``lift_kv_cache`` pass adds beside the cache.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from compiler.ir import annotations as ann
from compiler.ir.annotations import AttentionSpec
from compiler.ir.ops import UnsupportedOpError

OP_NAME = "rooftop::attention"
IMPL_NAME = "rooftop"


def reference(q, k, v, sinks, scale: float, softcap: float, window: int, mask=None):
    """Causal attention over ``q`` [B, H, S, D] against ``k``/``v`` [B, Hkv, T, D] (queries aligned
    with the last S keys), with an optional window (0: none), logit softcap (0: none), per-head
    sink logits ``sinks`` [H] (None: none) that join the softmax and are dropped after it, and an
    optional padding ``mask`` broadcastable to [B, 1, S, T] (bool, True = may attend, or additive
    float). A query that may see no key (a padded row) gets a uniform softmax instead of NaN, as
    transformers' SDPA path does; its output is meaningless and masked out downstream."""
    b, h, s, _ = q.shape
    hkv, t = k.shape[1], k.shape[2]
    if hkv != h:
        k = k.repeat_interleave(h // hkv, dim=1)
        v = v.repeat_interleave(h // hkv, dim=1)
    scores = torch.matmul(q, k.transpose(2, 3)) * scale
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    qi = torch.arange(t - s, t, device=q.device)[:, None]
    ki = torch.arange(t, device=q.device)[None, :]
    allowed = ki <= qi
    if window:
        allowed = allowed & (ki > qi - window)
    if mask is not None and mask.dtype != torch.bool:   # additive: 0 where allowed
        scores = scores + mask.to(scores.dtype)
        mask = None
    if mask is not None:
        allowed = allowed & mask
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    if sinks is not None:
        sink = sinks.reshape(1, -1, 1, 1).expand(b, -1, s, -1).to(scores.dtype)
        logits = torch.cat([scores, sink], dim=-1)
        logits = logits - logits.max(dim=-1, keepdim=True).values
        probs = torch.softmax(logits, dim=-1)[..., :-1]
    else:
        probs = torch.softmax(scores.float(), dim=-1).to(scores.dtype)
    return torch.matmul(probs.to(v.dtype), v)


@torch.library.custom_op(OP_NAME, mutates_args=())
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sinks: torch.Tensor | None, scale: float,
              softcap: float, window: int, mask: torch.Tensor | None) -> torch.Tensor:
    """One causal attention layer (see :func:`reference`); [B, H, S, Dv]."""
    return reference(q, k, v, sinks, scale, softcap, window, mask)


@attention.register_fake
def _(q, k, v, sinks, scale, softcap, window, mask):
    return q.new_empty((*q.shape[:-1], v.shape[-1]))


def _rooftop_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                       sliding_window=None, softcap=None, s_aux=None, **kwargs):
    """transformers' attention-function signature: returns ([B, S, H, Dv], no weights)."""
    scale = float(scaling) if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
    mask = None if torch.compiler.is_exporting() or not isinstance(attention_mask, torch.Tensor) \
        else attention_mask[..., :key.shape[2]]
    out = attention(query, key, value, s_aux, scale, float(softcap or 0.0), int(sliding_window or 0), mask)
    return out.transpose(1, 2).contiguous(), None


def ensure_registered() -> str:
    """Register the ``rooftop`` attention implementation with transformers; returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    if IMPL_NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(IMPL_NAME, _rooftop_attention)
        # the mask transformers builds for it carries only the padding the op does not know (it
        # knows its window): SDPA's builder, a boolean mask (None when there is no padding)
        ALL_MASK_ATTENTION_FUNCTIONS.register(IMPL_NAME, sdpa_mask)
    return IMPL_NAME


# ------------------------------------------------------------------------------------------------
# the importer side

def translate(c, q, k, v, sinks, scale, softcap, window, mask=None):
    """One ``rooftop::attention`` node → ``Attention(q, k, v)`` with ``is_causal``, ``scale``,
    ``softcap``, ``window`` attributes, the sinks as operand 6 (rooftop's extension of ONNX Attention's
    operands; the emitter lowers it) and the ``attention`` annotation (``c``: the torch
    importer's context). ``mask`` is never given under export (module doc: Padding)."""
    if mask is not None:
        raise UnsupportedOpError("rooftop::attention with a padding mask under torch.export: export causal "
                                 "LMs from input_ids and position_ids (padding comes with lift_kv_cache)")
    attrs = {"is_causal": 1, "scale": float(scale)}
    if softcap:
        attrs["softcap"] = float(softcap)
    if window:
        attrs["window"] = int(window)
    ins = [q, k, v]
    if sinks is not None:
        ins += ["", "", "", sinks]
    out = c.op("Attention", ins, attrs, final=True)
    spec = AttentionSpec(mask="window" if window else "causal", window=int(window) or None,
                         softcap=float(softcap) if softcap else None, sinks=sinks is not None)
    ann.set(c.g.producer_of(out), "attention", spec)
    return out


def mark_global_layers(g) -> int:
    """In a model with windowed layers, mark its unwindowed attentions ``global_layer`` (the
    global layers of a local/global pattern); returns how many."""
    specs = [(n, ann.get(n, "attention")) for n in g if n.op == "Attention"]
    if not any(s is not None and s.window for _, s in specs):
        return 0
    count = 0
    for n, s in specs:
        if s is not None and not s.window and not s.global_layer:
            ann.set(n, "attention", dataclasses.replace(s, global_layer=True))
            count += 1
    return count


__all__ = ["OP_NAME", "IMPL_NAME", "attention", "reference", "ensure_registered", "translate", "mark_global_layers"]
