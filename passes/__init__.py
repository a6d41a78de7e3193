"""Passes: every graph rewrite, run by the pass manager.

Owns: the pass infrastructure (``base.py``: ``Pass``, ``PassResult``, ``PassContext``, the nesting
``PassManager``, ordering constraints), cleanup (``cleanup.py``), the fusion rules and their
engine (``fusion/``), the KV-cache passes (``kv_cache.py``, ``kv_cache_onnx.py``, ``kv_layout.py``,
``kv_paging.py``), quantization and N:M sparsity (``quant/``), MoE routing (``moe.py``) and early
exit heads (``early_exit.py``) — and this registry: pipeline configs name passes by the keys of
:data:`PASSES` (an explicit table, no import-time side effects). Each entry is a ``Pass``
subclass; parameters come from the pipeline config.

May import: :mod:`compiler.ir`, :mod:`compiler.perf` and the base modules — never the back end or
the frontends (a pass that needs values asks ``passes.base.evaluator()``).
"""
from __future__ import annotations

from compiler.errors import ConfigError
from passes.base import Pass, PassContext, PassManager, PassResult, install_default_evaluator
from passes.cleanup import ConstantFolding, DeadCodeElimination, RemoveNoOps
from passes.early_exit import EarlyExitPass
from passes.fusion import AnnotateRotary, FuseAttention, FuseEagerAttention, FuseGemm, FuseNorms, FusionPass
from passes.kv_cache import LiftKVCache
from passes.kv_layout import KVLayoutPass
from passes.moe import MoERoutingPass
from passes.kv_cache_onnx import LiftKVCache as LiftOnnxKVCache
from passes.kv_paging import KVPaging
from passes.quant.auto import QuantizeAuto
from passes.quant.kv import QuantizeKV
from passes.quant.passes import PruneNM, Quantize
from passes.weight_formats import WeightFormatsPass

PASSES: dict[str, type[Pass]] = {
    "dce": DeadCodeElimination,
    "remove_noops": RemoveNoOps,
    "fold_constants": ConstantFolding,
    "fuse": FusionPass,
    "fuse_attention": FuseAttention,
    "fuse_norms": FuseNorms,
    "fuse_gemm": FuseGemm,
    "annotate_rotary": AnnotateRotary,
    "fuse_eager_attention": FuseEagerAttention,
    "lift_kv_cache": LiftKVCache,
    "moe_routing": MoERoutingPass,
    "kv_cache": LiftOnnxKVCache,
    "kv_paging": KVPaging,
    "kv_layout": KVLayoutPass,
    "early_exit": EarlyExitPass,
    "prune_nm": PruneNM,
    "quantize": Quantize,
    "weight_formats": WeightFormatsPass,
    "quantize_kv": QuantizeKV,
    "quantize_auto": QuantizeAuto,
}


def make_pass(spec, context: PassContext | None = None) -> Pass:
    """``spec`` is a pass name or a mapping ``{name: ..., <param>: ...}``; ``context`` (hardware,
    workload points) is handed to the pass for cost-aware decisions."""
    if isinstance(spec, str):
        name, params = spec, {}
    else:
        params = dict(spec)
        name = params.pop("name", None)
        if name is None:
            raise ConfigError(f"pipeline entry {dict(spec)} has no 'name'; write it as "
                              f"{{name: <pass>, <param>: <value>}} or just the pass name.")
    cls = PASSES.get(str(name))
    if cls is None:
        raise ConfigError(f"pass {name!r} does not exist. Available passes: "
                          f"{', '.join(sorted(PASSES))}. Fix the name in pipeline.passes.")
    p = cls(**params)
    p.context = context
    return p


def run_passes(graph, specs, context: PassContext | None = None, **manager_kw) -> PassManager:
    """Run the passes ``specs`` (names or ``{name: …}`` mappings, as in conf/pipeline) on
    ``graph`` in place through a :class:`PassManager`; returns it (``.records``)."""
    pm = PassManager([make_pass(s, context) for s in specs], **manager_kw)
    pm.context = context
    pm(graph)
    return pm


__all__ = ["PASSES", "make_pass", "run_passes", "Pass", "PassContext", "PassManager", "PassResult",
           "install_default_evaluator"]
