"""``quantize_kv``: the KV cache stored quantized in the emitted artifact (``kv.dtype=int8``).

The ``kv_layout`` annotation (passes/kv_layout.py, from ``kv.dtype``) already tells the cost model
and the analysis that the cache is stored in another format; this pass makes the *artifact* store
it so. For every cached ``Attention`` whose ``kv_layout.dtype`` is ``int8`` it

- calibrates static scales per KV head and channel: ``max |K|`` and ``max |V|`` over the
  calibration split of the evaluation text (the present K/V of a prefill of each paragraph, run in
  onnxruntime through the pass context's evaluator), divided by 127 — values beyond the calibrated
  range saturate at ±127 (measured: how far this moves the outputs is ``compression.kv_cache.check``);
- writes the ``kv_quant`` annotation (:class:`compiler.ir.annotations.KVQuant`) the emitter turns
  into onnxruntime's ``GroupQueryAttention`` with an int8 ``past_key`` / ``past_value`` and
  ``present_*`` (``k_quant_type = v_quant_type = PER_CHANNEL``): the cache crosses the model
  boundary as int8 codes, the kernel reads and appends int8, attention runs on the dequantized
  values (checked against numpy: the new codes are ``clip(round(x / scale), −128, 127)``).

The graph's past/present tensors keep the model's float type: the IR describes what the values
mean, the ``kv_layout`` / ``kv_quant`` annotations how they are stored (the cost model charges the
int8 bytes and the dequantization, compiler/perf/cost.py ``kv_format_cost``).

Not emitted (the cache stays in the model's dtype in the artifact; the cost model still prices
the configured format, and ``graph.meta["kv_quantization"]`` says why): ``kv.dtype=fp8`` —
onnxruntime 1.32 has a float8e4m3fn cache only in its CUDA ``GroupQueryAttention``, not on the CPU
the artifact is verified on; an Attention with a mask operand other than the key padding of a
2-D ``attention_mask`` (taken as right padding: ``seqlens_k = sum(mask) − 1``), without ``is_causal``, with a
windowed or paged cache, or whose heads are not static; meta weights (no values to calibrate).
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from compiler.errors import ConfigError
from compiler.ir import Graph, OpNode
from compiler.ir import annotations as ann
from compiler.ir.annotations import KVQuant
from compiler.ir.masks import padding_mask_input
from passes.base import Pass, PassResult, evaluator
from passes.kv_layout import cached_attention
from passes.quant.passes import calibration_of

#: kv_layout.dtype -> (the stored dtype the artifact uses, largest code)
EMITTED = {"int8": ("int8", 127.0)}
NOT_EMITTED = {
    "float8e4m3fn": "onnxruntime 1.32 has an fp8 (float8e4m3fn) KV cache only in its CUDA GroupQueryAttention kernel, "
                    "not on the CPU the artifact is verified on: the artifact keeps the model's cache dtype and the "
                    "cost model prices fp8",
}


def _heads(g: Graph, n: OpNode) -> tuple[int, int] | None:
    """(kv_heads, head_dim) of a cached attention's past K [B, Hkv, P, D], when static."""
    shp = g.type(n.inputs[4]).shape
    return (shp[1], shp[3]) if isinstance(shp[1], int) and isinstance(shp[3], int) else None


def refusal(g: Graph, n: OpNode) -> str:
    """Why ``n``'s cache cannot be emitted quantized ("" when it can)."""
    if len(n.inputs) > 3 and n.inputs[3] and padding_mask_input(g, n.inputs[3]) is None:
        return ("the attention has a mask operand other than the key padding of a 2-D attention_mask "
                "(GroupQueryAttention takes causal masking and per-sequence lengths only)")
    if not n.attrs.get("is_causal"):
        return "the attention is not causal (is_causal=0)"
    spec = n.annotations.get("attention")
    if spec is not None and (spec.window or spec.latent_rank or spec.sinks or spec.alibi):
        return "windowed / latent / sink / ALiBi attention is not emitted with a quantized cache"
    lay = n.annotations.get("kv_layout")
    if lay is not None and lay.layout != "contiguous":
        return "a paged cache (kv=paged) is not emitted quantized"
    if _heads(g, n) is None:
        return "the KV heads or head size are not static"
    q = g.type(n.inputs[0])
    if q.rank not in (3, 4):
        return f"query of rank {q.rank}"
    return ""


class QuantizeKV(Pass):
    """Registered as ``quantize_kv`` (parameters ``calibration``, ``tokenizer_source``); the
    driver adds it to the compression stage when ``kv.dtype`` is int8 or fp8."""

    name = "quantize_kv"

    def check_params(self) -> None:
        bad = set(self.params) - {"calibration", "tokenizer_source"}
        if bad:
            raise ConfigError(f"quantize_kv: unknown option(s) {sorted(bad)}; it takes calibration (the quant.calibration "
                              f"block) and tokenizer_source.")
        self.calibration = calibration_of(self.params.get("calibration"))
        self.tokenizer_source = self.params.get("tokenizer_source")

    def run(self, g: Graph) -> PassResult:
        attn = [n for n in cached_attention(g) if (lay := n.annotations.get("kv_layout")) is not None
                and lay.dtype in (*EMITTED, *NOT_EMITTED)]
        if not attn:
            return PassResult(g, False, {})
        want = attn[0].annotations["kv_layout"].dtype
        rec: dict = {"dtype": want, "layers": len(attn), "emitted": False}
        if want in NOT_EMITTED:
            rec["reason"] = NOT_EMITTED[want]
        elif not g.has_weights():
            rec["reason"] = ("cost only: the model has meta weights, so there is no artifact; the cost model prices "
                             "the int8 cache")
        else:
            why = {n.name: r for n in attn if (r := refusal(g, n))}
            if why:
                name, r = next(iter(why.items()))
                rec["reason"] = f"{name}: {r}" + (f" (and {len(why) - 1} more)" if len(why) > 1 else "")
        if "reason" in rec:
            g.meta["kv_quantization"] = rec
            return PassResult(g, False, {"attention": len(attn), "emitted": 0})
        dtype, qmax = EMITTED[want]
        tensors = [t for n in attn for t in n.outputs[1:3]]
        amax: dict[str, np.ndarray] = {}
        heads = {t: _heads(g, n) for n in attn for t in n.outputs[1:3]}

        def consume(t, x):     # [rows, D] of a batch-1 present [1, Hkv, T, D]: rows ordered by head
            hkv, d = heads[t]
            m = np.abs(x.reshape(hkv, -1, d)).max(axis=1)
            amax[t] = m if t not in amax else np.maximum(amax[t], m)

        n_seqs = evaluator("quantize_kv (KV-cache calibration)").activations(
            g, tensors, self.calibration, self.tokenizer_source, consume)
        for n in attn:
            k, v = (np.maximum(amax[t], 1e-8) / qmax for t in n.outputs[1:3])
            ann.set(n, "kv_quant", KVQuant(dtype, k.astype(np.float32), v.astype(np.float32)))
        rec.update(emitted=True, stored_dtype=dtype, granularity="per KV head and channel (static)",
                   kernel="onnxruntime GroupQueryAttention (int8 cache, k/v_quant_type PER_CHANNEL)",
                   calibration={"samples": n_seqs, "seq_len": int(self.calibration.seq_len),
                                "source": self.calibration.source, "scale": "max |x| / 127"})
        g.meta["kv_quantization"] = rec
        return PassResult(g, True, {"attention": len(attn), "emitted": len(attn)})


def kv_quant_of(g: Graph) -> Mapping[str, KVQuant]:
    """Attention op name -> its KVQuant, for the emitter and the checks."""
    return {n.name: n.annotations["kv_quant"] for n in g if "kv_quant" in n.annotations}
