"""Pass registry: pipeline configs name passes by these keys (an explicit table, no import-time
side effects). Each entry is a ``Pass`` subclass; parameters come from the pipeline config."""
from __future__ import annotations

from passes.base import Pass, PassContext, PassManager, PassResult
from passes.cleanup import ConstantFolding, DeadCodeElimination, RemoveNoOps
from passes.early_exit import EarlyExitPass
from passes.moe import MoERoutingPass
from passes.fusion import AnnotateRotary, FuseAttention, FuseGemm, FuseNorms, FusionPass
from passes.kv_cache_onnx import LiftKVCache
from passes.quant.passes import PruneNM, Quantize

PASSES: dict[str, type[Pass]] = {
    "dce": DeadCodeElimination,
    "remove_noops": RemoveNoOps,
    "fold_constants": ConstantFolding,
    "fuse": FusionPass,
    "fuse_attention": FuseAttention,
    "fuse_norms": FuseNorms,
    "fuse_gemm": FuseGemm,
    "annotate_rotary": AnnotateRotary,
    "moe_routing": MoERoutingPass,
    "kv_cache": LiftKVCache,
    "early_exit": EarlyExitPass,
    "prune_nm": PruneNM,
    "quantize": Quantize,
}


def make_pass(spec, context: PassContext | None = None) -> Pass:
    """``spec`` is a pass name or a mapping ``{name: ..., <param>: ...}``; ``context`` (hardware,
    workload points) is handed to the pass for cost-aware decisions."""
    from compiler.errors import ConfigError
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


__all__ = ["PASSES", "make_pass", "Pass", "PassContext", "PassManager", "PassResult"]
