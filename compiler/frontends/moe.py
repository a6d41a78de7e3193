"""Mixture of experts: import into a grouped-expert IR, routing statistics, and the cost rules.

**Import.** Hugging Face MoE layers (Mixtral, Qwen2/3-MoE, OLMoE, DeepSeek-V2/V3, gpt-oss, … — every
``transformers`` experts module decorated with ``@use_experts_implementation``) dispatch their
experts through ``config._experts_implementation``. rooftop registers its own implementation,
``"rooftop"``, that calls one custom torch op, ``rooftop::moe_experts(hidden, top_k_index,
top_k_weights, gate_up, down, gate_up_bias, down_bias, act, transposed, interleaved, alpha,
limit)``: eager execution runs the reference per-expert loop (the model computes exactly what
``transformers`` computes — biases and gpt-oss's clamped SwiGLU included), and torch.export keeps
the op whole, so the importer sees the routing (router GEMM, softmax or sigmoid, grouped top-k —
traced as ordinary ops) and one experts node.

The experts node becomes the grouped form fused MoE kernels run (:func:`translate`): the k routed
(token, slot) rows of every token, one grouped GEMM per projection over them, the gate, the
routing weights, and the sum over each token's slots::

    x_r  = Reshape(Expand(x[:, None], [T, k, H]), [T·k, H])             routed rows
    e_r  = Reshape(top_k_index, [T·k])                                  their experts
    gu   = MoEMatMul(x_r, W_gu [E, H, 2I], e_r) (+ b_gu[e_r])           one grouped GEMM
    h    = act(gu[:, :I]) ∘ gu[:, I:]                                   (gpt-oss: clamped SwiGLU)
    y    = MoEMatMul(h, W_d [E, I, H], e_r) (+ b_d[e_r]) ∘ w_r          one grouped GEMM
    out  = ReduceSum(Reshape(y, [T, k, H]), axis 1)

so the graph has a dozen ops per MoE layer whatever the expert count (256 experts × 58 layers
stay small). ``MoEMatMul`` is costed with the layer's routing (compiler/perf/moe.py: the distinct
experts' weights; one launch, or one per touched expert with ``moe.dispatch=loop``) and emitted
as one MatMul per expert over the rows routed to it (compiler/backend/lowering.py), so the
artifact computes only the routed rows, like a runtime.

**Annotation.** Every op of the layer carries ``moe`` (:class:`compiler.ir.annotations.MoERouting`,
``expert=None``). The routing distribution (uniform, Zipf with a skew, or an explicit histogram)
and the dispatch form are set by ``passes/moe.py`` from ``moe.*``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import sympy
import torch

from compiler.errors import ConfigError
from compiler.frontends import families
from compiler.ir import DTYPES, TensorType
from compiler.ir import annotations as ann

OP_NAME = "rooftop::moe_experts"
IMPL_NAME = "rooftop"
_ACTS = {"silu": torch.nn.functional.silu, "swish": torch.nn.functional.silu,
         "gelu": torch.nn.functional.gelu, "relu": torch.relu}
#: gpt-oss's gate (``GptOssExperts._apply_gate``): gate clamped above at ``limit``, up clamped to
#: ±limit, ``(up + 1) · gate · σ(alpha · gate)``
SWIGLU_OAI = "swiglu_oai"


def gate_activation(gate, up, act: str, alpha: float, limit: float):
    if act == SWIGLU_OAI:
        gate = gate.clamp(max=limit)
        up = up.clamp(min=-limit, max=limit)
        return (up + 1) * (gate * torch.sigmoid(gate * alpha))
    return _ACTS[act](gate) * up


def _experts_reference(hidden, top_k_index, top_k_weights, gate_up, down, gate_up_bias, down_bias, act: str,
                       transposed: bool, interleaved: bool, alpha: float, limit: float):
    out = torch.zeros_like(hidden)
    for e in range(gate_up.shape[0]):
        tok, slot = torch.where(top_k_index == e)
        if tok.numel() == 0:
            continue
        x = hidden[tok]
        gu = x @ (gate_up[e] if transposed else gate_up[e].T)
        if gate_up_bias is not None:
            gu = gu + gate_up_bias[e]
        g, u = (gu[..., ::2], gu[..., 1::2]) if interleaved else gu.chunk(2, dim=-1)
        y = gate_activation(g, u, act, alpha, limit) @ (down[e] if transposed else down[e].T)
        if down_bias is not None:
            y = y + down_bias[e]
        out.index_add_(0, tok, (y * top_k_weights[tok, slot, None]).to(out.dtype))
    return out


@torch.library.custom_op(OP_NAME, mutates_args=())
def moe_experts(hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor,
                gate_up: torch.Tensor, down: torch.Tensor, gate_up_bias: torch.Tensor | None,
                down_bias: torch.Tensor | None, act: str, transposed: bool, interleaved: bool,
                alpha: float, limit: float) -> torch.Tensor:
    """Routed experts of one MoE layer: Σ_slots w·FFN_{idx}(x) per token (gated FFN)."""
    return _experts_reference(hidden, top_k_index, top_k_weights, gate_up, down, gate_up_bias, down_bias, act,
                              transposed, interleaved, alpha, limit)


@moe_experts.register_fake
def _(hidden, top_k_index, top_k_weights, gate_up, down, gate_up_bias, down_bias, act, transposed, interleaved,
      alpha, limit):
    return torch.empty_like(hidden)


def _rooftop_experts_forward(self, hidden_states, top_k_index, top_k_weights):
    if not getattr(self, "has_gate", True) or getattr(self, "has_post_expert_norm", False):
        raise ConfigError(f"{type(self).__name__}: rooftop imports gated experts (Mixtral, Qwen-MoE, OLMoE, "
                          f"DeepSeek, gpt-oss); this layer has gate={getattr(self, 'has_gate', True)}, "
                          f"post-expert norm={getattr(self, 'has_post_expert_norm', False)}.")
    oai = hasattr(self, "alpha") and hasattr(self, "limit")   # gpt-oss's clamped SwiGLU gate
    act = SWIGLU_OAI if oai else str(getattr(self.config, "hidden_act", "silu"))
    if act not in _ACTS and act != SWIGLU_OAI:
        raise ConfigError(f"MoE experts with activation {act!r} are not supported (use one of {sorted(_ACTS)}).")
    bias = getattr(self, "has_bias", False)
    return moe_experts(hidden_states, top_k_index, top_k_weights, self.gate_up_proj, self.down_proj,
                       self.gate_up_proj_bias if bias else None, self.down_proj_bias if bias else None, act,
                       bool(getattr(self, "is_transposed", False)), not getattr(self, "is_concatenated", True),
                       float(getattr(self, "alpha", 0.0)) if oai else 0.0,
                       float(getattr(self, "limit", 0.0)) if oai else 0.0)


def ensure_registered() -> str:
    """Register the ``rooftop`` experts implementation with transformers; returns its name."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS
    if IMPL_NAME not in ALL_EXPERTS_FUNCTIONS:
        ALL_EXPERTS_FUNCTIONS.register(IMPL_NAME, _rooftop_experts_forward)
    return IMPL_NAME


def has_experts(hf_cfg) -> bool:
    """Whether a transformers config has routed experts (every family's spelling, nested DBRX
    ``ffn_config.moe_num_experts`` included: compiler/frontends/families.py)."""
    return families.has_experts(hf_cfg)


# ------------------------------------------------------------------------------------------------
# the importer side

def _grouped_weight(g, name: str, transposed: bool, perm=None) -> str:
    """The stacked expert weight ``name`` as ``[E, in, out]`` (MoEMatMul's layout): transformers
    stores ``[E, out, in]`` unless ``transposed``; ``perm`` reorders the output columns (gpt-oss's
    interleaved gate/up → gate first). Replaces the parameter in place (same name)."""
    p = g.params[name]
    e, a, b = p.type.shape
    shape = (e, a, b) if transposed else (e, b, a)
    data = p.data
    if data is not None:
        data = data if transposed else np.transpose(data, (0, 2, 1))
        if perm is not None:
            data = data[:, :, perm]
        data = np.ascontiguousarray(data)
    if transposed and perm is None:
        return name
    annotations = dict(p.annotations)
    new = name + ".grouped" if name + ".grouped" not in g.types else g.fresh(name + ".grouped")
    g.add_param(new, p.type.with_shape(shape), data, **annotations)
    return new


def _deinterleave(n: int) -> np.ndarray:
    """Column order putting the even (gate) columns of an interleaved gate/up projection first."""
    return np.concatenate([np.arange(0, n, 2), np.arange(1, n, 2)])


def translate(c, hidden, top_k_index, top_k_weights, gate_up, down, gate_up_bias=None, down_bias=None,
              act="silu", transposed=False, interleaved=False, alpha=0.0, limit=0.0):
    """Expand one ``rooftop::moe_experts`` node into the grouped form (module doc; ``c``:
    compiler.frontends.torch_export._Ctx)."""
    g = c.g
    if act not in ("silu", "swish", SWIGLU_OAI):
        raise ConfigError(f"MoE experts with activation {act!r}: rooftop's expert IR emits SiLU-gated and "
                          f"gpt-oss (clamped SwiGLU) experts only.")
    gu_t = g.type(gate_up)
    E = int(gu_t.shape[0])
    hid = g.type(hidden)
    T, H = hid.shape
    k = int(g.type(top_k_index).shape[1])
    two_i = int(gu_t.shape[2 if transposed else 1])
    inter = two_i // 2
    dt = hid.dtype
    rows = sympy.sympify(T) * k
    perm = _deinterleave(two_i) if interleaved else None
    route = ann.MoERouting(experts=E, top_k=k, expert_params=3 * int(H) * inter)

    def op(*a, **kw):
        t = c.op(*a, **kw)
        ann.set(g.producer_of(t if isinstance(t, str) else t[0]), "moe", route)
        return t

    w_gu = _grouped_weight(g, gate_up, transposed, perm)
    w_d = _grouped_weight(g, down, transposed)
    ids = op("Reshape", [top_k_index], {"shape": [rows]}, types=[TensorType("int64", (rows,))])
    x3 = op("Unsqueeze", [hidden], {"axes": [1]}, types=[TensorType(dt, (T, 1, H))])
    xk = op("Expand", [x3], {"shape": [T, k, H]}, types=[TensorType(dt, (T, k, H))])
    xr = op("Reshape", [xk], {"shape": [rows, H]}, types=[TensorType(dt, (rows, H))])
    gu = op("MoEMatMul", [xr, w_gu, ids], types=[TensorType(dt, (rows, two_i))])
    if gate_up_bias is not None:
        b = gate_up_bias
        if perm is not None:
            bp = g.params[b]
            data = None if bp.data is None else np.ascontiguousarray(bp.data[:, perm])
            b = g.add_param(b + ".grouped" if b + ".grouped" not in g.types else g.fresh(b + ".grouped"), bp.type,
                            data, **bp.annotations)
        gb = op("Gather", [b, ids], {"axis": 0}, types=[TensorType(dt, (rows, two_i))])
        gu = op("Add", [gu, gb], types=[TensorType(dt, (rows, two_i))])
    half = TensorType(dt, (rows, inter))
    gate, up = op("Split", [gu, c.const([inter, inter], "int64")], {"axis": 1}, types=[half, half], n_out=2)
    if act == SWIGLU_OAI:
        gate = op("Clip", [gate, "", c.const(limit, dt)], types=[half])
        up = op("Clip", [up, c.const(-limit, dt), c.const(limit, dt)], types=[half])
        z = op("Mul", [gate, c.const(alpha, dt)], types=[half])
        glu = op("Mul", [gate, op("Sigmoid", [z], types=[half])], types=[half])
        h = op("Mul", [op("Add", [up, c.const(1.0, dt)], types=[half]), glu], types=[half])
    else:
        silu = op("Mul", [gate, op("Sigmoid", [gate], types=[half])], types=[half])
        h = op("Mul", [silu, up], types=[half])
    y = op("MoEMatMul", [h, w_d, ids], types=[TensorType(dt, (rows, H))])
    if down_bias is not None:
        db = op("Gather", [down_bias, ids], {"axis": 0}, types=[TensorType(dt, (rows, H))])
        y = op("Add", [y, db], types=[TensorType(dt, (rows, H))])
    wdt = g.type(top_k_weights).dtype
    w = op("Reshape", [top_k_weights], {"shape": [rows, 1]}, types=[TensorType(wdt, (rows, 1))])
    if wdt != dt:
        w = op("Cast", [w], {"to": _onnx_dtype(dt)}, types=[TensorType(dt, (rows, 1))])
    yw = op("Mul", [y, w], types=[TensorType(dt, (rows, H))])
    y3 = op("Reshape", [yw], {"shape": [T, k, H]}, types=[TensorType(dt, (T, k, H))])
    for p in {gate_up, down, gate_up_bias} - {None, w_gu, w_d}:
        if p in g.params and not g.consumers(p):
            g.remove_param(p)
    out = c.op("ReduceSum", [y3], {"axes": [1], "keepdims": 0}, final=True)
    ann.set(g.producer_of(out), "moe", route)
    return out


def _onnx_dtype(dt: str) -> int:
    return DTYPES[dt][2]


def shared_experts(hf_config: Mapping) -> int:
    """Always-on experts per MoE layer from a Hugging Face config (Qwen-MoE: one shared expert of
    ``shared_expert_intermediate_size``; DeepSeek-MoE: ``n_shared_experts``)."""
    for key in ("n_shared_experts", "num_shared_experts"):
        if hf_config.get(key):
            return int(hf_config[key])
    return 1 if hf_config.get("shared_expert_intermediate_size") else 0


