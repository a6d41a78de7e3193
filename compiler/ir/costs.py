"""Cost rules of the op registry: FLOPs at symbolic shapes and the bytes an op moves, split into
weights / activations / KV (:class:`Bytes`), with the :class:`Classifier` that tells them apart.

The cost model (compiler/perf/cost.py) turns these into time on a hardware description.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import sympy


from compiler.ir.tensors import Types
from compiler.ir.shapes import _attention_heads, _nbytes, _numel, latent_attention_dims

if TYPE_CHECKING:
    from compiler.ir.ops import Classifier
    from compiler.ir.graph import OpNode


@dataclasses.dataclass(frozen=True)
class Bytes:
    weights: Any = 0
    activations: Any = 0
    kv: Any = 0

    @property
    def total(self):
        return self.weights + self.activations + self.kv


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One kernel of an op that runs as several (``OpDef.kernels``): its ``label``, the cost
    class it is costed as (``gemm``, ``attention``…), FLOPs and bytes, and the ``phases``
    (``prefill``, ``decode``) that run it — an op whose form depends on the phase (multi-head
    latent attention: expanded at prefill, absorbed at decode) lists every form's kernels."""

    label: str
    cost_class: str
    flops: Any
    bytes: Bytes
    phases: tuple[str, ...] = ("prefill", "decode")
    kind: str = ""          # a measured kernel kind (hardware ``kernel_families``) it is costed as, if any


# ----------------------------------------------------------------------------------------------
# bytes classification

def attention_q_tiles(l2_bytes: float, heads, head_dim, itemsize, q_len):
    """How many times a fused attention streams K/V from device memory: once per tile of query
    rows whose K/V working set the last-level on-chip memory (L2) can keep resident. Rows per
    tile = (L2/2) / (heads·head_dim·bytes); half the L2 is left for K/V blocks and other
    traffic. (FlashAttention's SRAM-only bound, Dao et al. 2022, assumes no L2 and overstates
    DRAM traffic many times on GPUs with tens of MB of L2.)"""
    rows = max(1, int(l2_bytes / 2 // (heads * head_dim * itemsize))) \
        if isinstance(heads, int) and isinstance(head_dim, int) else 1
    return sympy.ceiling(q_len / rows) if not isinstance(q_len, int) else -(-q_len // rows)


def default_bytes(node: OpNode, ins: Types, outs: Types, cls: Classifier) -> Bytes:
    acc = {"weights": 0, "activations": 0, "kv": 0}
    for t, ty in zip(node.inputs, ins):
        if t and ty is not None:
            c = cls.category(t)
            acc[c] += cls.weight_bytes(t) if c == "weights" else _nbytes(ty)
    for t, ty in zip(node.outputs, outs):
        if t and ty is not None:
            acc[cls.category(t)] += _nbytes(ty)
    return Bytes(**acc)


def zero_bytes(node, ins, outs, cls) -> Bytes:
    return Bytes()


def zero_flops(node, ins, outs):
    return 0


def per_output_element(k: int):
    def f(node, ins, outs):
        return k * _numel(outs[0])
    return f


def per_input_element(k: int):
    def f(node, ins, outs):
        return k * _numel(ins[0])
    return f


# ----------------------------------------------------------------------------------------------
# cost rules of the compute-heavy ops

def matmul_flops(node, ins, outs):
    a = ins[0]
    k = a.shape[-1]
    return 2 * _numel(outs[0]) * k


def conv_flops(node, ins, outs):
    w = ins[1]
    per_out = 1
    for d in w.shape[1:]:
        per_out *= d   # (C/group)·prod(kernel) MACs per output element
    bias = 1 if len(ins) > 2 and ins[2] is not None else 0
    return (2 * per_out + bias) * _numel(outs[0])


def gemm_flops(node, ins, outs):
    k = ins[0].shape[0 if node.attrs.get("transA") else 1]
    return 2 * _numel(outs[0]) * k + (_numel(outs[0]) if len(ins) > 2 and ins[2] is not None else 0)


def attention_dims(node: OpNode, ins: Types):
    """(batch, q_heads, kv_heads, q_len, kv_len_total, head_dim, v_head_dim) of an Attention node,
    4-D [B, H, S, D] or 3-D [B, S, H·D] operands."""
    b, h, hkv, s, kv_new, d, dv = _attention_heads(node, ins)
    past = ins[4] if len(ins) > 4 and ins[4] is not None else None
    kv_len = kv_new + (past.shape[2] if past is not None else 0)
    return b, h, hkv, s, kv_len, d, dv


def causal_scores(s, past):
    """Query-key pairs a causal attention computes per head: each of ``s`` new queries sees the
    ``past`` cached keys and the new ones up to itself."""
    return s * past + s * (s + 1) / sympy.Integer(2)


def window_scores(s, past, w: int):
    """Query-key pairs per head of a causal attention within a window of ``w`` positions (query
    at position q sees keys q − w < k ≤ q): Σ_{t=1..s} min(past + t, w) in closed form."""
    n1 = sympy.Max(0, sympy.Min(s, w - past))       # queries whose window still reaches key 0
    return n1 * past + n1 * (n1 + 1) / sympy.Integer(2) + (s - n1) * w


def _attention_spec(node):
    return node.annotations.get("attention")


def attention_scores(node, ins, cls: "Classifier | None" = None):
    """Visible query-key pairs (all heads) of an Attention: the causal triangle, the window's band
    (a windowed kernel; ``cls.window_kernel``) or every pair (non-causal, or a window applied by a
    masked dense kernel)."""
    b, h, _, s, kv, d, dv = attention_dims(node, ins)
    spec = _attention_spec(node)
    dense = cls is not None and cls.window_kernel == "masked_dense"
    if spec is not None and spec.window and not dense:
        return b * h * window_scores(s, kv - s, spec.window)
    if node.attrs.get("is_causal") and not (spec is not None and spec.window and dense):
        return b * h * causal_scores(s, kv - s)
    return b * h * s * kv


def attention_flops(node, ins, outs, cls: "Classifier | None" = None):
    """QKᵀ and PV matmuls (2 FLOPs per MAC each) plus softmax (≈5 per score: max, sub, exp, sum,
    div). Causal attention computes only the visible (lower-right) triangle: q_len·past +
    q_len(q_len+1)/2 scores per head instead of q_len·kv_len; a sliding window only its band
    (:func:`attention_scores`). Logit softcapping adds 3 per score (divide, tanh, multiply), ALiBi
    1 (the bias, computed in the kernel), sinks one more softmax column per query."""
    b, h, _, s, kv, d, dv = attention_dims(node, ins)
    scores = attention_scores(node, ins, cls)
    spec = _attention_spec(node)
    extra = 0
    if spec is not None:
        extra = (3 * scores if spec.softcap else 0) + (scores if spec.alibi else 0) + (5 * b * h * s if spec.sinks else 0)
    elif node.attrs.get("softcap"):
        extra = 3 * scores
    return 2 * scores * d + 2 * scores * dv + 5 * scores + extra


def attention_kv_tokens(node, ins, cls: "Classifier | None" = None, tiles=1):
    """Key/value positions (per sequence and KV head) a fused attention reads from device memory:
    all ``kv_len`` of them per query tile, or — a windowed kernel over a ring / paged cache — only
    the keys some query of the tile sees: Σ_tiles min(kv_len, W − 1 + rows) = min(tiles·kv_len,
    tiles·(W − 1) + q_len) (a decode step reads the last W)."""
    _, _, _, s, kv, _, _ = attention_dims(node, ins)
    spec = _attention_spec(node)
    if spec is not None and spec.window and not (cls is not None and cls.window_kernel == "masked_dense"):
        return sympy.Min(tiles * kv, tiles * (spec.window - 1) + s)
    return kv * tiles


def attention_bytes(node, ins, outs, cls: Classifier) -> Bytes:
    """Fused (FlashAttention-style) traffic: Q read, O written, the whole K/V (past + new) read
    once per query tile — within a sliding window only the window's keys
    (:func:`attention_kv_tokens`) — and the new K/V appended to the cache. The N×N score matrix
    never reaches device memory. The tile count comes from the cost context's hardware (on-chip
    memory, :meth:`Classifier.q_tiles`); 1 without one. Sink logits are read as weights."""
    b, h, hkv, s, kv, d, dv = attention_dims(node, ins)
    q, k, v = ins[0], ins[1], ins[2]
    e = sympy.Rational(q.itemsize).limit_denominator(2)
    tiles = cls.q_tiles(h, d, q.itemsize, s)
    q_bytes = b * h * s * d * e
    o_bytes = b * h * s * dv * e
    kv_read = b * hkv * attention_kv_tokens(node, ins, cls, tiles) * (d + dv) * e
    has_cache = len(ins) > 4 and ins[4] is not None
    kv_write = b * hkv * s * (d + dv) * e if has_cache else 0
    mask = _nbytes(ins[3]) if len(ins) > 3 and ins[3] is not None else 0
    sinks = cls.weight_bytes(node.inputs[6]) if len(ins) > 6 and ins[6] is not None else 0
    if has_cache:
        return Bytes(weights=sinks, activations=q_bytes + o_bytes + mask, kv=kv_read + kv_write)
    return Bytes(weights=sinks, activations=q_bytes + o_bytes + mask + kv_read)


def gather_bytes(node, ins, outs, cls: Classifier) -> Bytes:
    """An embedding lookup reads only the rows it gathers, not the whole table."""
    rows = _nbytes(outs[0])
    cat = cls.category(node.inputs[0])
    idx = _nbytes(ins[1])
    acc = {"weights": 0, "activations": idx + rows, "kv": 0}
    acc[cat] += rows
    return Bytes(**acc)


def norm_flops(node, ins, outs):
    return 8 * _numel(outs[0])


# ----------------------------------------------------------------------------------------------
# multi-head latent attention (compiler/frontends/mla.py): operands q_nope [B, H, S, dn], q_rope
# [B, H, S, dr], latent [B, 1, S, r], k_rope [B, 1, S, dr], kv_b weight [H·(dn + dv), r]
# (kv_b_proj's, out × in), past latent [B, 1, P, r] and past rope key [B, 1, P, dr] (operands
# 5, 6: lift_kv_cache); results: the attention output [B, H, S, dv] and the present latent and
# rope key. Emitted as standard ONNX ops (compiler/backend/lowering.py: the expanded form).

#: the MLA form each phase runs when the ``attention`` annotation does not force one (``form``):
#: prefill up-projects the latent and runs SDPA (expanded), decode attends over the latent cache
#: with W_UK / W_UV folded into the query / output (absorbed) — DeepSeek's inference code, vLLM
#: (MLACommonImpl: prefill "MHA" path, decode absorbed) and SGLang do the same
LATENT_FORMS = {"prefill": "expanded", "decode": "absorbed"}


def latent_attention_kernels(node, ins, outs, cls: Classifier) -> list[Kernel]:
    """The kernels of each MLA form (:data:`LATENT_FORMS`; the ``attention`` annotation's ``form``
    forces one for both phases). Per step, T keys per sequence, H heads, causal pairs
    V = B·H·(S·P + S(S+1)/2):

    - expanded: ``expand`` GEMM latent[T, r]·W_UKV[r, H(dn+dv)] (the weights and the cached latent
      read, K/V written) and ``attention``, SDPA with qk dim dn + dr and v dim dv over H KV heads
      (Q, O and K/V once per query tile);
    - absorbed: ``absorb_q`` q_nope·W_UK per head (H GEMMs dn×r), ``attention_latent`` over the
      latent — one KV head of dim r + dr shared by all H query heads, value dim r — reading the
      cache once per tile of H·S query rows, and ``absorb_out`` o_lat·W_UV per head (r×dv).

    Both write the new latent and rope key (S·(r + dr) per sequence) into the cache."""
    b, h, s, t, dn, dr, dv, r, e = latent_attention_dims(node, ins)
    past = t - s
    pairs = b * h * causal_scores(s, past)
    cached = len(ins) > 5 and ins[5] is not None
    w = cls.weight_bytes(node.inputs[4]) if cls.graph is not None else 0
    w_k = w * sympy.sympify(dn) / (dn + dv)                 # W_UK's share of kv_b_proj
    spec = node.annotations.get("attention")
    forced = getattr(spec, "form", None)
    phases = {f: tuple(p for p, pf in LATENT_FORMS.items() if (forced or pf) == f) for f in ("expanded", "absorbed")}
    lat_write = b * s * (r + dr) * e
    lat_read_past = b * past * (r + dr) * e

    def split(act, kv_read):
        """Bytes with the cache traffic as KV once a cache is lifted (else activations)."""
        if cached:
            return Bytes(activations=act, kv=kv_read + lat_write)
        return Bytes(activations=act + kv_read + lat_write)

    out: list[Kernel] = []
    if phases["expanded"]:
        ph, d_qk = phases["expanded"], dn + dr
        tiles = cls.q_tiles(h, d_qk, ins[0].itemsize, s)
        expand = Bytes(weights=w, activations=b * t * h * (d_qk + dv) * e + b * s * r * e,
                       kv=lat_read_past if cached else 0)
        if not cached:
            expand = Bytes(weights=w, activations=expand.activations + lat_read_past)
        out.append(Kernel("expand", "gemm", 2 * b * t * r * h * (dn + dv), expand, ph))
        out.append(Kernel("attention", "attention", pairs * (2 * d_qk + 2 * dv + 5),
                          split(b * h * s * (d_qk + dv) * e + b * h * t * (d_qk + dv) * e * tiles, 0), ph))
    if phases["absorbed"]:
        ph = phases["absorbed"]
        tiles = cls.q_tiles(1, r + dr, ins[0].itemsize, s * h)
        out.append(Kernel("absorb_q", "gemm", 2 * b * s * h * dn * r,
                          Bytes(weights=w_k, activations=b * s * h * (dn + r) * e), ph))
        out.append(Kernel("attention_latent", "attention", pairs * (2 * (r + dr) + 2 * r + 5),
                          split(b * h * s * (r + dr + r) * e, lat_read_past * tiles), ph, kind="mla_absorbed_core"))
        out.append(Kernel("absorb_out", "gemm", 2 * b * s * h * r * dv,
                          Bytes(weights=w - w_k, activations=b * s * h * (r + dv) * e), ph))
    return out


def moe_matmul_flops(node, ins, outs):
    x, w = ins[0], ins[1]
    return 2 * x.shape[0] * w.shape[1] * w.shape[2]


def _window_flops(node, ins, outs):
    """A pooling window: one FLOP per window element per output element."""
    k = 1
    for d in node.attrs.get("kernel_shape") or []:
        k *= int(d)
    if node.op.startswith("Global") and ins and ins[0] is not None:
        return _numel(ins[0])
    return k * _numel(outs[0]) if outs and outs[0] is not None else 0


def conv_transpose_flops(node, ins, outs):
    """Each input element scatters into C_out/group · prod(kernel) outputs (2 FLOPs per MAC)."""
    w = ins[1]
    per_in = 1
    for d in w.shape[1:]:
        per_in *= d
    return 2 * per_in * _numel(ins[0])


def rnn_flops(node, ins, outs):
    """LSTM/GRU/RNN: input and recurrent GEMMs per step (gates·hidden·(input + hidden)), ×2 FLOPs."""
    x, w, r = ins[0], ins[1], ins[2]
    seq, batch = x.shape[0], x.shape[1]
    gates_h, inp = w.shape[1], w.shape[2]
    dirs = w.shape[0]
    hid = r.shape[2]
    return 2 * dirs * seq * batch * gates_h * (inp + hid)


def einsum_flops(node, ins, outs):
    """2 · the product of every distinct index's size (what a contraction loop nest does)."""
    eq = str(node.attrs.get("equation", "")).replace(" ", "")
    lhs = eq.split("->")[0].split(",")
    sizes: dict[str, Any] = {}
    for term, t in zip(lhs, ins):
        if t is None or "..." in term:
            return 2 * sum(_numel(i) for i in ins if i is not None)
        for ch, d in zip(term, t.shape):
            sizes[ch] = d
    total = 1
    for d in sizes.values():
        total *= d
    return 2 * total
EPILOGUE_FLOPS = {"": 0, "gelu": 8, "gelu_tanh": 8, "relu": 1, "silu": 5}  # per GEMM output element


def matmul_epilogue_flops(node, ins, outs):
    a, w = ins[0], ins[1]
    m_n = _numel(a) / a.shape[-1] * w.shape[-1]   # GEMM output elements
    act = node.attrs.get("activation", "")
    per = 6 / sympy.Integer(2) if act == "swiglu" else EPILOGUE_FLOPS.get(act, 0)
    bias = 1 if len(ins) > 2 and ins[2] is not None else 0
    return 2 * m_n * a.shape[-1] + (per + bias) * m_n
