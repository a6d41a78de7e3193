"""Mixture of experts: import into an expert-structured IR, routing statistics, and the cost rules.

**Import.** Hugging Face MoE layers (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, … — every ``transformers``
experts module decorated with ``@use_experts_implementation``) dispatch their experts through
``config._experts_implementation``. rooftop registers its own implementation, ``"rooftop"``, that
calls one custom torch op, ``rooftop::moe_experts(hidden, top_k_index, top_k_weights, gate_up,
down)``: eager execution runs the reference per-expert loop (the model computes exactly what
``transformers`` computes), and torch.export keeps the op whole, so the importer sees the routing
(router GEMM, softmax, top-k — traced as ordinary ops) and one experts node — instead of the
``batched_mm`` form that gathers every token's expert weights (a [T·k, 2I, H] copy per layer).

The experts node is expanded (:func:`translate`) into standard ONNX ops, per expert ``e``:

    hit   = NonZero(Equal(top_k_index, e))          [2, n_e]   (token, slot) pairs routed to e
    x_e   = Gather(hidden, hit[0])                  [n_e, H]
    w_e   = Gather(ReduceSum(Where(hit_mask, top_k_weights, 0)), hit[0])   [n_e]
    y_e   = (SiLU(x_e·Wg_e) ∘ (x_e·Wu_e))·Wd_e ∘ w_e  [n_e, H]
    out   = ScatterND(0, concat(hit[0]), concat(y_e), reduction=add)    [T, H]

so the emitted model computes only the routed tokens of each expert (gather/scatter by the top-k
indices), like a runtime. ``n_e`` is data-dependent; the IR gives it its expectation under the
layer's routing (``T·k/E`` uniform), which is what the cost rules need.

**Annotation.** Every op of expert ``e`` carries ``moe`` (:class:`compiler.ir.annotations.MoERouting`
with ``expert=e``); the router, top-k and combine ops carry it with ``expert=None``. The routing
distribution (uniform, Zipf with a skew, or an explicit histogram) is set by ``passes/moe.py``
from ``moe.routing``; the cost rules are in :mod:`compiler.perf.moe`.
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


# ------------------------------------------------------------------------------------------------
# the torch side: custom op + transformers experts implementation

def _experts_reference(hidden, top_k_index, top_k_weights, gate_up, down, act: str, transposed: bool):
    out = torch.zeros_like(hidden)
    fn = _ACTS[act]
    for e in range(gate_up.shape[0]):
        tok, slot = torch.where(top_k_index == e)
        if tok.numel() == 0:
            continue
        x = hidden[tok]
        gu = x @ (gate_up[e] if transposed else gate_up[e].T)
        g, u = gu.chunk(2, dim=-1)
        y = (fn(g) * u) @ (down[e] if transposed else down[e].T)
        out.index_add_(0, tok, (y * top_k_weights[tok, slot, None]).to(out.dtype))
    return out


@torch.library.custom_op(OP_NAME, mutates_args=())
def moe_experts(hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor,
                gate_up: torch.Tensor, down: torch.Tensor, act: str, transposed: bool) -> torch.Tensor:
    """Routed experts of one MoE layer: Σ_slots w·FFN_{idx}(x) per token (gated FFN)."""
    return _experts_reference(hidden, top_k_index, top_k_weights, gate_up, down, act, transposed)


@moe_experts.register_fake
def _(hidden, top_k_index, top_k_weights, gate_up, down, act, transposed):
    return torch.empty_like(hidden)


def _rooftop_experts_forward(self, hidden_states, top_k_index, top_k_weights):
    if getattr(self, "has_bias", False) or not getattr(self, "has_gate", True) \
            or getattr(self, "has_post_expert_norm", False):
        raise ConfigError(f"{type(self).__name__}: rooftop imports gated experts without biases or "
                          f"post-expert norms (Mixtral, Qwen-MoE, OLMoE, DeepSeek); this layer has "
                          f"bias={getattr(self, 'has_bias', False)}, gate={getattr(self, 'has_gate', True)}.")
    act = str(getattr(self.config, "hidden_act", "silu"))
    if act not in _ACTS:
        raise ConfigError(f"MoE experts with activation {act!r} are not supported (use one of {sorted(_ACTS)}).")
    return moe_experts(hidden_states, top_k_index, top_k_weights, self.gate_up_proj, self.down_proj,
                       act, bool(getattr(self, "is_transposed", False)))


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

def translate(c, hidden, top_k_index, top_k_weights, gate_up, down, act, transposed):
    """Expand one ``rooftop::moe_experts`` node into per-expert gather → FFN → scatter-add ops
    (``c``: compiler.frontends.torch_export._Ctx)."""
    g = c.g
    if act not in ("silu", "swish"):
        raise ConfigError(f"MoE experts with activation {act!r}: rooftop's expert IR emits SiLU-gated experts only.")
    gu_t, d_t = g.type(gate_up), g.type(down)
    E = int(gu_t.shape[0])
    hid = g.type(hidden)
    T, H = hid.shape
    k = int(g.type(top_k_index).shape[1])
    inter = int(gu_t.shape[2 if transposed else 1]) // 2
    dt = hid.dtype
    n_e = sympy.sympify(T) * sympy.Rational(k, E)
    cls = ann.MoERouting
    layer_ann = cls(experts=E, top_k=k, expert_params=3 * int(H) * inter)
    made: list[str] = []

    def op(*a, expert=None, dispatch=False, **kw):
        t = c.op(*a, **kw)
        name = g.producer_of(t if isinstance(t, str) else t[0]).name
        ann.set(g.node(name), "moe", dataclasses.replace(layer_ann, expert=expert, dispatch=dispatch))
        made.append(name)
        return t

    w_gu, w_d = g.params[gate_up], g.params[down]
    ys, toks = [], []
    for e in range(E):
        def wslice(data, rows):  # expert e's [in, out] weight for MatMul from the stacked tensor
            if data is None:
                return None
            w = data[e] if transposed else data[e].T
            return np.ascontiguousarray(w[:, rows] if rows is not None else w)
        src_gu, src_d = ann.get(w_gu, "source", gate_up), ann.get(w_d, "source", down)
        g_e = g.add_param(f"{gate_up}.{e}.gate", TensorType(gu_t.dtype, (H, inter)),
                          wslice(w_gu.data, slice(0, inter)), source=f"{src_gu}[{e}, :{inter}]")
        u_e = g.add_param(f"{gate_up}.{e}.up", TensorType(gu_t.dtype, (H, inter)),
                          wslice(w_gu.data, slice(inter, 2 * inter)), source=f"{src_gu}[{e}, {inter}:]")
        d_e = g.add_param(f"{down}.{e}", TensorType(d_t.dtype, (inter, H)), wslice(w_d.data, None),
                          source=f"{src_d}[{e}]")
        eq = op("Equal", [top_k_index, c.const(e, "int64")], types=[TensorType("bool", (T, k))], expert=e, dispatch=True)
        nz = op("NonZero", [eq], types=[TensorType("int64", (2, n_e))], expert=e, dispatch=True)
        tok = op("Gather", [nz, c.const(0, "int64")], {"axis": 0}, types=[TensorType("int64", (n_e,))], expert=e, dispatch=True)
        wdt = g.type(top_k_weights).dtype
        sel = op("Where", [eq, top_k_weights, c.const(0.0, wdt)], types=[TensorType(wdt, (T, k))], expert=e, dispatch=True)
        wtok = op("ReduceSum", [sel], {"axes": [1], "keepdims": 0}, types=[TensorType(wdt, (T,))], expert=e, dispatch=True)
        w = op("Gather", [wtok, tok], {"axis": 0}, types=[TensorType(wdt, (n_e,))], expert=e, dispatch=True)
        if g.type(w).dtype != dt:
            w = op("Cast", [w], {"to": _onnx_dtype(dt)}, types=[TensorType(dt, (n_e,))], expert=e, dispatch=True)
        x = op("Gather", [hidden, tok], {"axis": 0}, types=[TensorType(dt, (n_e, H))], expert=e)
        gate = op("MatMul", [x, g_e], types=[TensorType(dt, (n_e, inter))], expert=e)
        up = op("MatMul", [x, u_e], types=[TensorType(dt, (n_e, inter))], expert=e)
        sig = op("Sigmoid", [gate], types=[TensorType(dt, (n_e, inter))], expert=e)
        silu = op("Mul", [gate, sig], types=[TensorType(dt, (n_e, inter))], expert=e)
        h = op("Mul", [silu, up], types=[TensorType(dt, (n_e, inter))], expert=e)
        y = op("MatMul", [h, d_e], types=[TensorType(dt, (n_e, H))], expert=e)
        wu = op("Unsqueeze", [w], {"axes": [1]}, types=[TensorType(dt, (n_e, 1))], expert=e)
        ys.append(op("Mul", [y, wu], types=[TensorType(dt, (n_e, H))], expert=e))
        toks.append(tok)
    for p in (gate_up, down):
        if not g.consumers(p):
            g.remove_param(p)
    rows = sympy.sympify(T) * k
    y_all = op("Concat", ys, {"axis": 0}, types=[TensorType(dt, (rows, H))])
    t_all = op("Concat", toks, {"axis": 0}, types=[TensorType("int64", (rows,))])
    idx = op("Unsqueeze", [t_all], {"axes": [1]}, types=[TensorType("int64", (rows, 1))])
    zeros = op("ConstantOfShape", [], {"shape": [T, H], "value": 0}, types=[TensorType(dt, (T, H))])
    out = c.op("ScatterND", [zeros, idx, y_all], {"reduction": "add"}, final=True)
    ann.set(g.producer_of(out), "moe", layer_ann)
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


