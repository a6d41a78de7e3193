"""The formats a checkpoint ships its weights in (``model.weight_formats``): stored bytes, memory,
capacity and the math each GEMM runs.

Some models are published quantized: gpt-oss's experts in MXFP4, DeepSeek-V3's linears in FP8
with one scale per 128×128 block. ``model.weight_formats`` maps a parameter group to a format and
this pass (a model-stage pass: the model's own facts, before the recipe) annotates the group's
weights with their :class:`compiler.ir.annotations.WeightFormat` (stored bytes: values + scales)
and the GEMMs reading them with the math they run (:class:`ComputeDtype`):

============  ============================================  ===========  ==========================
format        storage                                        bits/weight  math
============  ============================================  ===========  ==========================
``mxfp4``     E2M1 values, one E8M0 (power-of-two) scale     4.25         fp4 where the hardware has
              per 32 (OCP Microscaling spec v1.0)                         FP4 math (``b200``), else
``nvfp4``     E2M1 values, one E4M3 scale per 16 (+ one       4.5          the activations' 16-bit
              fp32 scale per tensor, not counted)                         math on the dequantized
                                                                          weight (a fused
                                                                          dequantize-GEMM)
``fp8_block128``  E4M3 values, one fp32 scale per 128×128    8.002        fp8 where the hardware has
              block (DeepSeek-V3's checkpoint)                            it (blockwise-scaled GEMM,
                                                                          DeepGEMM), else 16-bit
============  ============================================  ===========  ==========================

Groups: ``experts`` — the stacked expert weights (``MoEMatMul`` operand 1); ``linear`` — every
GEMM weight (MatMul / fused MatMul, grouped expert GEMMs, MLA's kv_b_proj) except the LM head
(the GEMM producing the logits) and MoE routers (a weight with one column per expert), as
checkpoints keep those in 16 bits; ``attention`` — the linears of the attention blocks;
``all`` — ``linear`` plus the LM head. A later group overrides an earlier one.

The emitted ONNX artifact keeps the weights in ``model.dtype`` (onnxruntime has no MXFP4 / block-FP8
MatMul): the formats are a statement about the checkpoint the cost and memory figures describe.
The math dtype of a format on hardware without native support is the activations' (the dequantize
happens in the GEMM's prologue) — its efficiency is the 16-bit GEMM's, which was never measured
for these kernels: "literature" (the report's ``weight_formats`` note says so).
"""
from __future__ import annotations

from collections.abc import Mapping

from compiler.errors import ConfigError
from compiler.ir import Graph, op_layers
from compiler.ir import annotations as ann
from compiler.ir.annotations import ComputeDtype, WeightFormat
from passes.base import Pass, PassContext, PassResult

#: format name -> (WeightFormat with the reduction axis set later, native math dtype class)
FORMATS: dict[str, tuple[dict, str]] = {
    "mxfp4": ({"dtype": "float4e2m1", "granularity": "group", "group_size": 32, "scale_dtype": "float8e8m0"}, "fp4"),
    "nvfp4": ({"dtype": "float4e2m1", "granularity": "group", "group_size": 16, "scale_dtype": "float8e4m3fn"}, "fp4"),
    "fp8_block128": ({"dtype": "float8e4m3fn", "granularity": "group", "group_size": 128 * 128,
                      "scale_dtype": "float32"}, "fp8"),
    "bf16": ({"dtype": "bfloat16"}, "bf16"),
}
GROUPS = ("linear", "attention", "experts", "all")
_GEMMS = {"MatMul": 1, "MatMulEpilogue": 1, "MoEMatMul": 1, "LatentAttention": 4}
_HW = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def _sites(g: Graph) -> list[tuple]:
    """(op, weight, reduction axis of the weight) for every GEMM reading a weight."""
    out = []
    for n in g.topo_order():
        i = _GEMMS.get(n.op)
        if i is None or len(n.inputs) <= i or n.inputs[i] not in g.params:
            continue
        rank = g.params[n.inputs[i]].type.rank
        axis = 1 if n.op == "LatentAttention" else rank - 2   # [out, in] for kv_b_proj, [.., in, out] else
        out.append((n, n.inputs[i], axis))
    return out


def _group_of(g: Graph, n, w: str, pos: dict, n_layers: int, experts: int) -> set[str]:
    groups = {"all"}
    head = pos.get(n.name, -1) >= n_layers
    router = experts and g.params[w].type.shape[-1] == experts and n.op != "MoEMatMul"
    if not head and not router:
        groups.add("linear")
        if n.annotations.get("block") == "attention" or n.op == "LatentAttention":
            groups.add("attention")
    if n.op == "MoEMatMul":
        groups.add("experts")
    return groups


def apply_weight_formats(g: Graph, formats: Mapping[str, str], hw=None) -> dict[str, int]:
    """Annotate the weights of each group of ``formats`` (group → format) and their GEMMs."""
    for grp, fmt in formats.items():
        if grp not in GROUPS:
            raise ConfigError(f"model.weight_formats.{grp}: {grp!r} is not a parameter group; use one of "
                              f"{', '.join(GROUPS)} (e.g. model.weight_formats.experts=mxfp4).")
        if fmt not in FORMATS:
            raise ConfigError(f"model.weight_formats.{grp}={fmt!r} is not a weight format rooftop knows; use one of "
                              f"{', '.join(FORMATS)}.")
    pos, n_layers = op_layers(g)
    experts = max((n.annotations["moe"].experts for n in g if n.annotations.get("moe") is not None), default=0)
    stats: dict[str, int] = {}
    order = [gr for gr in GROUPS if gr in formats]
    for n, w, axis in _sites(g):
        groups = _group_of(g, n, w, pos, n_layers, experts)
        chosen = [gr for gr in order if gr in groups]
        if not chosen:
            continue
        name = formats[chosen[-1]]
        spec, native = FORMATS[name]
        p = g.params[w]
        fmt = WeightFormat(axis=axis % p.type.rank, **spec) if spec.get("granularity") else WeightFormat(**spec)
        ann.set(p, "weight_format", fmt)
        act = _HW.get(g.type(n.inputs[0]).dtype, "bf16")
        math = native if hw is not None and native in getattr(hw, "peak_flops", {}) else act
        ann.set(n, "compute_dtype", ComputeDtype(math))
        stats[name] = stats.get(name, 0) + 1
    g.meta.setdefault("import_stats", {})["weight_formats"] = {
        "formats": dict(formats), "weights": dict(sorted(stats.items())),
        "math": "native" if hw is not None and any(FORMATS[f][1] in getattr(hw, "peak_flops", {}) for f in formats.values())
        else "dequantized to the activations' 16-bit math in the GEMM (no native math for the format on this hardware)"}
    return stats


class WeightFormatsPass(Pass):
    """Pipeline form ``{name: weight_formats, formats: {experts: mxfp4}}`` (the driver adds it for
    ``model.weight_formats``)."""

    name = "weight_formats"

    def check_params(self) -> None:
        bad = set(self.params) - {"formats"}
        if bad:
            raise ConfigError(f"pass 'weight_formats' takes formats, got {sorted(bad)}.")

    def run(self, graph: Graph) -> PassResult:
        stats = apply_weight_formats(graph, dict(self.params.get("formats") or {}), PassContext.current().hardware)
        return PassResult(graph, bool(stats), stats)
