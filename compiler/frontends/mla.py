"""Multi-head latent attention (MLA: DeepSeek-V2/V3, Kimi-K2) — import into one ``LatentAttention``
op whose KV cache is the compressed latent.

**The construct.** Per token, ``kv_a_proj_with_mqa`` makes a latent ``c = RMSNorm(x·W_DKV)`` of
``kv_lora_rank`` values and one shared rotary key ``k_rope`` of ``qk_rope_head_dim`` values; every
head's key and value are up-projections of the latent (``kv_b_proj``: ``W_UK`` to the
``qk_nope_head_dim`` key part, ``W_UV`` to the ``v_head_dim`` value). The cache therefore holds
``kv_lora_rank + qk_rope_head_dim`` values per token and layer — transformers' own cache stores
the latent as its "key" and ``k_rope`` as its "value", and so does rooftop (``past_key.i`` [B, 1,
P, kv_lora_rank], ``past_value.i`` [B, 1, P, rope_dim]).

**Import.** rooftop gives every MLA attention module of a model it builds its own forward
(:func:`install`): the same projections, norms and rotary embedding as transformers' (DeepSeek-V2's
complex-number rotary written in real arithmetic — the same rotation), and the core as one custom
op, ``rooftop::mla_attention(q_nope, q_rope, latent, k_rope, kv_b_weight, scale, mask)``, whose
eager execution is the expanded form (up-project the latent, causal SDPA over ``nope + rope`` key
dims, and in eager runs the padding of the mask transformers built; under torch.export no mask is
passed — padding enters with ``lift_kv_cache``'s ``attention_mask``, as for
:mod:`compiler.frontends.attention`).
A test checks the patched model against transformers' unpatched eager model. torch.export keeps the
op whole and :func:`translate` makes it a ``LatentAttention`` op (compiler/ir/ops.py) annotated
``AttentionSpec(latent_rank, rope_dim)``; ``lift_kv_cache`` then caches its latent operands.

**Forms** (a recorded decision, :func:`compiler.ir.ops.latent_attention_kernels`): prefill runs
the *expanded* form (up-project the whole latent, SDPA with ``nope + rope`` query/key dims),
decode the *absorbed* form (``W_UK`` folded into the query, attention directly over the latent
cache shared by all heads, ``W_UV`` applied to the latent output) — what DeepSeek's inference
code, vLLM and SGLang run. Both are the same products re-associated; the emitted ONNX runs the
expanded form in both phases (onnxruntime has no latent-attention kernel) and a test checks the
absorbed form's arithmetic against it.
"""
from __future__ import annotations

import sys
import types

import torch

from compiler.ir import TensorType
from compiler.ir import annotations as ann
from compiler.ir.annotations import AttentionSpec
from compiler.ir.ops import UnsupportedOpError

OP_NAME = "rooftop::mla_attention"


# ------------------------------------------------------------------------------------------------
# the torch side

def reference(q_nope, q_rope, latent, k_rope, w_kv_b, scale: float, mask=None):
    """Expanded-form MLA: q [B, H, S, nope|rope], latent [B, 1, T, r], k_rope [B, 1, T, rope],
    ``w_kv_b`` [H·(nope + v), r] (kv_b_proj's weight) → [B, H, S, v]; causal, queries aligned
    with the last S keys; ``mask`` (optional, broadcastable to [B, 1, S, T]): padding, bool (True =
    may attend) or additive float. A row that may see no key gets a uniform softmax, not NaN."""
    b, h, s, dn = q_nope.shape
    t = latent.shape[2]
    dv = w_kv_b.shape[0] // h - dn
    kv = torch.matmul(latent[:, 0], w_kv_b.t()).view(b, t, h, dn + dv).transpose(1, 2)
    k_nope, v = kv[..., :dn], kv[..., dn:]
    k = torch.cat([k_nope, k_rope.expand(b, h, t, k_rope.shape[-1])], dim=-1)
    q = torch.cat([q_nope, q_rope], dim=-1)
    scores = torch.matmul(q, k.transpose(2, 3)) * scale
    qi = torch.arange(t - s, t, device=q.device)[:, None]
    ki = torch.arange(t, device=q.device)[None, :]
    allowed = ki <= qi
    if mask is not None and mask.dtype != torch.bool:
        scores = scores + mask.to(scores.dtype)
    elif mask is not None:
        allowed = allowed & mask
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores.float(), dim=-1).to(v.dtype)
    return torch.matmul(probs, v)


def absorbed(q_nope, q_rope, latent, k_rope, w_kv_b, scale: float):
    """The same attention in the absorbed form decode kernels run: ``q_lat = q_nope·W_UK`` per
    head, scores ``q_lat·cᵀ + q_rope·k_ropeᵀ`` against the latent cache itself, ``o_lat = P·c``,
    output ``o_lat·W_UV`` per head (used by tests to check that the costed form is the same math)."""
    b, h, s, dn = q_nope.shape
    t, r = latent.shape[2], latent.shape[3]
    dv = w_kv_b.shape[0] // h - dn
    w = w_kv_b.view(h, dn + dv, r)
    w_uk, w_uv = w[:, :dn], w[:, dn:]                           # [H, dn, r], [H, dv, r]
    q_lat = torch.einsum("bhsd,hdr->bhsr", q_nope, w_uk)
    c = latent[:, 0]                                            # [B, T, r] shared by every head
    scores = (torch.einsum("bhsr,btr->bhst", q_lat, c)
              + torch.einsum("bhse,bte->bhst", q_rope, k_rope[:, 0])) * scale
    qi = torch.arange(t - s, t)[:, None]
    ki = torch.arange(t)[None, :]
    probs = torch.softmax(scores.masked_fill(ki > qi, float("-inf")).float(), dim=-1).to(c.dtype)
    o_lat = torch.einsum("bhst,btr->bhsr", probs, c)
    return torch.einsum("bhsr,hvr->bhsv", o_lat, w_uv)


@torch.library.custom_op(OP_NAME, mutates_args=())
def mla_attention(q_nope: torch.Tensor, q_rope: torch.Tensor, latent: torch.Tensor, k_rope: torch.Tensor,
                  w_kv_b: torch.Tensor, scale: float, mask: torch.Tensor | None) -> torch.Tensor:
    """One MLA layer's attention core (see :func:`reference`)."""
    return reference(q_nope, q_rope, latent, k_rope, w_kv_b, scale, mask)


@mla_attention.register_fake
def _(q_nope, q_rope, latent, k_rope, w_kv_b, scale, mask):
    h, dn = q_nope.shape[1], q_nope.shape[3]
    return q_nope.new_empty((*q_nope.shape[:-1], w_kv_b.shape[0] // h - dn))


def _rotate_interleaved(x, cos2, sin2, swap):
    """Rotate consecutive pairs (x[2i], x[2i+1]) by the angles of ``cos2`` / ``sin2`` [B, S, d]
    (each angle repeated for both members of its pair, the sine signed −, +): what DeepSeek-V2's
    ``view_as_complex(x)·freqs_cis`` computes, in real arithmetic — x·cos + swap_pairs(x)·sin
    (``swap``: the index [1, 0, 3, 2, …])."""
    return x * cos2.unsqueeze(1).to(x.dtype) + x[..., swap] * sin2.unsqueeze(1).to(x.dtype)


class RealRotary(torch.nn.Module):
    """DeepSeek-V2's rotary embedding returning real (cos, sin) [B, S, d] — each angle repeated for
    the two members of its pair, the sine signed (−, +) — instead of complex ``freqs_cis`` (same
    frequencies and attention scaling: the module's own buffers). Computed once per step, shared
    by every layer."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner
        half = inner.inv_freq.shape[-1]
        self.register_buffer("sign", torch.tensor([-1.0, 1.0] * half, device=inner.inv_freq.device), persistent=False)

    def forward(self, x, position_ids):
        inner = self.inner
        freqs = position_ids[..., None].float() * inner.inv_freq.to(device=x.device, dtype=torch.float)
        scale = getattr(inner, "attention_scaling", 1.0)
        cos = torch.cos(freqs).repeat_interleave(2, dim=-1) * scale
        sin = torch.sin(freqs).repeat_interleave(2, dim=-1) * (self.sign * scale)
        return cos, sin


def _forward(self, hidden_states, position_embeddings=None, attention_mask=None, **kwargs):
    """rooftop's forward for a DeepSeek-V2/V3 attention module (module doc)."""
    b, s = hidden_states.shape[:-1]
    if self.q_lora_rank is None:
        q = self.q_proj(hidden_states)
    else:
        q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(hidden_states)))
    q = q.view(b, s, -1, self.qk_head_dim).transpose(1, 2)
    q_nope, q_rot = torch.split(q, [self.qk_nope_head_dim, self.qk_rope_head_dim], dim=-1)
    compressed = self.kv_a_proj_with_mqa(hidden_states)
    kv_nope, k_rot = torch.split(compressed, [self.kv_lora_rank, self.qk_rope_head_dim], dim=-1)
    latent = self.kv_a_layernorm(kv_nope).view(b, 1, s, self.kv_lora_rank)
    k_rot = k_rot.view(b, 1, s, self.qk_rope_head_dim)
    cos, sin = position_embeddings
    if self._rooftop_rope == "interleaved_pairs":            # DeepSeek-V2 (complex rotation)
        q_rot = _rotate_interleaved(q_rot, cos, sin, self._rooftop_swap)
        k_rot = _rotate_interleaved(k_rot, cos, sin, self._rooftop_swap)
    else:                                                   # DeepSeek-V3: transformers' own functions
        mod = sys.modules[type(self).__module__]
        fn = mod.apply_rotary_pos_emb_interleave if getattr(self.config, "rope_interleave", False) \
            else mod.apply_rotary_pos_emb
        q_rot, k_rot = fn(q_rot, k_rot, cos, sin)
    mask = None if torch.compiler.is_exporting() or not isinstance(attention_mask, torch.Tensor) \
        else attention_mask[..., :s]
    out = mla_attention(q_nope, q_rot, latent, k_rot, self.kv_b_proj.weight, float(self.scaling), mask)
    out = out.transpose(1, 2).reshape(b, s, -1)
    return self.o_proj(out), None


def is_mla_module(m: torch.nn.Module) -> bool:
    """An attention module of the MLA structure (found by its projections, whatever the class)."""
    return all(hasattr(m, a) for a in ("kv_a_proj_with_mqa", "kv_b_proj", "kv_a_layernorm", "kv_lora_rank",
                                        "qk_rope_head_dim", "qk_nope_head_dim", "o_proj"))


def install(model: torch.nn.Module) -> int:
    """Give every MLA attention module of ``model`` rooftop's forward (and a complex-free rotary
    embedding to DeepSeek-V2); returns how many modules."""
    count = 0
    complex_rope = False
    for m in model.modules():
        if is_mla_module(m):
            m._rooftop_rope = "interleaved_pairs" if "deepseek_v2" in type(m).__module__ else "transformers"
            complex_rope |= m._rooftop_rope == "interleaved_pairs"
            if m._rooftop_rope == "interleaved_pairs":
                dev = m.kv_b_proj.weight.device
                m.register_buffer("_rooftop_swap", torch.tensor([i ^ 1 for i in range(m.qk_rope_head_dim)], device=dev),
                                  persistent=False)
            m.forward = types.MethodType(_forward, m)
            count += 1
    if complex_rope:
        for parent in model.modules():
            rot = getattr(parent, "rotary_emb", None)
            if isinstance(rot, torch.nn.Module) and not isinstance(rot, RealRotary) and hasattr(rot, "inv_freq"):
                parent.rotary_emb = RealRotary(rot)
    return count


# ------------------------------------------------------------------------------------------------
# the importer side

def translate(c, q_nope, q_rope, latent, k_rope, w_kv_b, scale, mask=None):
    """One ``rooftop::mla_attention`` node → ``LatentAttention`` (operands: q_nope, q_rope, latent,
    k_rope, kv_b weight [H·(nope+v), r]; ``lift_kv_cache`` adds the past latent and rope key as
    operands 5 and 6) with the ``attention`` annotation (``c``: the torch importer's context).
    ``mask`` is never given under export (module doc)."""
    if mask is not None:
        raise UnsupportedOpError("rooftop::mla_attention with a padding mask under torch.export: export causal "
                                 "LMs from input_ids and position_ids (padding comes with lift_kv_cache)")
    g = c.g
    r, dr = int(g.type(latent).shape[3]), int(g.type(k_rope).shape[3])
    out = c.op("LatentAttention", [q_nope, q_rope, latent, k_rope, w_kv_b], {"scale": float(scale), "is_causal": 1},
               final=True)
    ann.set(g.producer_of(out), "attention", AttentionSpec(mask="causal", latent_rank=r, rope_dim=dr))
    return out


def latent_types(g, n) -> tuple[TensorType, TensorType]:
    """Types of the latent and rope-key operands of a ``LatentAttention`` (what its cache holds)."""
    return g.type(n.inputs[2]), g.type(n.inputs[3])


__all__ = ["OP_NAME", "mla_attention", "reference", "absorbed", "install", "is_mla_module", "translate",
           "RealRotary", "latent_types"]
