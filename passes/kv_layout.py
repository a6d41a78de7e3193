"""The KV-cache storage of every cached attention, from the ``kv=`` config group.

Registered as ``kv_layout`` (parameters ``layout``, ``block_size``, ``dtype``); the pipeline
driver appends it after the configured passes when ``kv=paged`` or ``kv.dtype`` is set
(:func:`compiler.driver.pipeline.kv_passes`). It writes the ``kv_layout`` annotation
(:class:`compiler.ir.annotations.KVLayout`) on each Attention op that has a past K/V input — the one
``lift_kv_cache`` sets to ``KVLayout("contiguous")`` when it lifts the cache:

- ``layout`` contiguous | paged, ``block_size`` tokens per block (paged only);
- ``dtype`` the stored format of the cache: fp32 | fp16 | bf16 | fp8 | int8 (None: the attention's
  own dtype). The cost model (:mod:`compiler.perf.cost`) reads it: a quantized cache moves
  ``itemsize(dtype) / itemsize(K)`` of the KV bytes and pays its (de)quantization; the analysis
  sizes the cache (memory, capacity) with it.

The graph's tensors keep their types (the artifact's past/present K/V stay in the model dtype: a
quantized cache is a runtime storage format, described by the annotation and the report).
"""
from __future__ import annotations

from compiler.ir import annotations as ann
from compiler.ir.annotations import KVLayout
from compiler.errors import ConfigError
from passes.base import Pass, PassResult

#: kv.dtype (hardware names) -> graph dtype of the stored cache
KV_GRAPH_DTYPE = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "fp8": "float8e4m3fn",
                  "int8": "int8"}


def cached_attention(g):
    """Attention ops with a past K/V input (a lifted or imported cache)."""
    return [n for n in g.topo_order() if n.op == "Attention" and len(n.inputs) > 4 and n.inputs[4]]


class KVLayoutPass(Pass):
    """Registered as ``kv_layout``: the ``kv_layout`` annotation on every cached Attention."""

    name = "kv_layout"

    def check_params(self) -> None:
        p = self.params
        unknown = sorted(set(p) - {"layout", "block_size", "dtype"})
        if unknown:
            raise ConfigError(f"pass 'kv_layout' has no parameter {unknown[0]!r}; it takes layout, "
                              f"block_size, dtype (set them through kv.layout, kv.block_size, kv.dtype).")
        layout = str(p.get("layout", "contiguous"))
        if layout not in ("contiguous", "paged"):
            raise ConfigError(f"kv_layout: layout={layout!r}; use contiguous or paged (kv=contiguous | kv=paged).")
        bs = p.get("block_size", 16)
        if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
            raise ConfigError(f"kv_layout: block_size={bs!r} must be a positive integer (kv.block_size=16).")
        d = p.get("dtype")
        if d is not None and d not in KV_GRAPH_DTYPE:
            raise ConfigError(f"kv_layout: dtype={d!r} is not one of {', '.join(KV_GRAPH_DTYPE)} (or null).")
        self.layout = KVLayout(layout, int(bs) if layout == "paged" else None,
                               KV_GRAPH_DTYPE[d] if d is not None else None)

    def run(self, g):
        changed = 0
        attn = cached_attention(g)
        for n in attn:
            want = self.layout
            if want.dtype is not None and want.dtype == g.type(n.inputs[4]).dtype:
                want = KVLayout(want.layout, want.block_size, None)   # the model's own format
            if ann.get(n, "kv_layout") != want:
                ann.set(n, "kv_layout", want)
                changed += 1
        stats = {"attention": len(attn), "annotated": changed}
        if self.layout.layout == "paged":
            stats["block_size"] = int(self.layout.block_size)
        return PassResult(g, bool(changed), stats)
