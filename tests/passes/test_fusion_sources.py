"""Fusion on real models from every source: torch.export imports (SDPA and eager attention) and
``torch.onnx.export`` files (dynamo and legacy; SDPA and eager) of llama_tiny, gpt2_tiny,
mixtral_tiny and all-MiniLM-L6-v2. Per source: every layer's attention is one Attention op, the
norms are fused, GELU primitives are gone — and onnxruntime computes the same outputs as the
unfused model (fp32, max abs diff ≤ 1e-4).
"""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import model_cfg, prepare
from tests.graphs import run_ort

ATOL = 1e-4
LAYERS = {"llama_tiny": 4, "gpt2_tiny": 4, "mixtral_tiny": 2, "minilm": 6}
NORMS = {"llama_tiny": 9, "gpt2_tiny": 9, "mixtral_tiny": 5, "minilm": 13}   # per torch config
NORM_OPS = ("RMSNormalization", "LayerNormalization", "ResidualNorm")
PRIMITIVE_LEFTOVERS = ("Softmax", "ReduceMean", "Sqrt", "Tanh", "Erf", "Pow")


def fuse_pass(g, hardware=None):
    from compiler.perf.hardware import hardware_by_name
    from passes import PassContext, make_pass
    ctx = PassContext(hardware_by_name(hardware or "a100_80g"), ((1, 128, 0, "prefill"), (1, 1, 128, "decode")))
    return make_pass("fuse", ctx)(g)


def fused_counts(g) -> dict[str, int]:
    ops = g.ops_by_kind()
    return {"attention": ops.get("Attention", 0), "norms": sum(ops.get(k, 0) for k in NORM_OPS),
            **{k: ops[k] for k in PRIMITIVE_LEFTOVERS if k in ops}}


def max_diff(a, b) -> float:
    return max(float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max()) for x, y in zip(a, b))


def lm_feeds(g, b=2, s=5, p=3, seed=0) -> dict[str, np.ndarray]:
    """input_ids, position_ids = P + arange(S), attention_mask (last row right-padded), past K/V."""
    from compiler.ir import DTYPES, SYMBOLS, subs
    rng = np.random.default_rng(seed)
    vals = {SYMBOLS["B"]: b, SYMBOLS["S"]: s, SYMBOLS["P"]: p}
    feeds = {}
    for t in g.inputs:
        ty = g.type(t)
        shape = [int(subs(d, vals)) for d in ty.shape]
        if t == "input_ids":
            feeds[t] = rng.integers(0, 256, shape).astype(np.int64)
        elif t == "position_ids":
            feeds[t] = np.broadcast_to(np.arange(p, p + s), shape).astype(np.int64)
        elif t == "attention_mask":
            m = np.ones(shape, np.int64)
            m[-1, -2:] = 0
            feeds[t] = m
        else:
            feeds[t] = (rng.standard_normal(shape) * 0.5).astype(DTYPES[ty.dtype][1])
    return feeds


# ------------------------------------------------------------------------------------------------
# torch.export imports

_TORCH: dict = {}


_IMPORT_PASSES: dict = {}   # (model, attn) -> the import passes' stats


def torch_graphs(model: str, attn: str):
    """(imported graph, unfused reference graph, reference runs at P=0 only)."""
    key = (model, attn)
    if key not in _TORCH:
        from compiler.frontends.models import build_torch_model, example_inputs, _vocab, import_torch
        from compiler.frontends.torch_export import export_module, import_exported
        from compiler.ir import B, S
        from passes.cleanup import fold_constants, remove_noops
        cfg = model_cfg(model, attn_implementation=attn)
        g = import_torch(cfg)
        _IMPORT_PASSES[key] = prepare(g)
        remove_noops(g)
        fold_constants(g)
        ref, p0 = g.copy(), False
        if attn == "eager" and g.meta.get("task") == "causal_lm":
            # the unfused eager model, as exported, without a KV cache
            module, task = build_torch_model(cfg)
            ex = example_inputs(task, _vocab(module))
            ep = export_module(module, ex, {k: [0, 1] for k in ex})
            ref = import_exported(ep, name="ref", dims={k: [B, S] for k in ex}, causal=True,
                                  output_names=["logits"])
            ref.meta["dim_sources"] = {"B": ("input_ids", 0), "S": ("input_ids", 1)}
            p0 = True
        _TORCH[key] = (g, ref, p0)
    return _TORCH[key]


@pytest.mark.parametrize("model", ["llama_tiny", "gpt2_tiny", "mixtral_tiny", "minilm"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_torch_import_fuses_and_matches(model, attn):
    g0, ref, p0 = torch_graphs(model, attn)
    g = g0.copy()
    causal = g.meta.get("task") == "causal_lm"
    if attn == "eager" and causal:   # fused at import, so that the KV cache could be lifted
        assert _IMPORT_PASSES[(model, attn)]["fuse_eager_attention"] == {"attention": LAYERS[model],
                                                               "attention.causal": LAYERS[model]}
    res = fuse_pass(g)
    g.verify()
    counts = fused_counts(g)
    assert counts["attention"] == LAYERS[model], counts
    assert counts["norms"] == NORMS[model], counts    # every norm is one op (alone or with its residual)
    leftovers = {k for k in PRIMITIVE_LEFTOVERS if k in counts} - ({"Softmax"} if model == "mixtral_tiny" else set())
    assert not leftovers, counts                       # (mixtral's MoE router keeps its softmax)
    assert res.stats.get("residual_norm", 0) >= LAYERS[model] * 2 - 1
    if model in ("llama_tiny", "mixtral_tiny"):
        assert res.stats["rotary"] == 2 * LAYERS[model] and res.stats["merge_qkv"] == LAYERS[model]
    if model == "llama_tiny":
        assert res.stats["merge_gate_up"] == LAYERS[model] and res.stats["matmul_epilogue.swiglu"] == LAYERS[model]
    if model == "mixtral_tiny":
        # the routed experts are grouped expert GEMMs over the routed rows (compiler/frontends/moe.py):
        # one for the stacked gate/up projection and one for down per layer, nothing per expert to merge
        assert sum(1 for n in g if n.op == "MoEMatMul") == 2 * LAYERS[model]
        assert res.stats.get("merge_gate_up", 0) == 0, res.stats
    # heads split/merged by Reshape+Transpose around the attention: folded into its 3-D form
    # (llama/mixtral: the rotary embeddings between the split and the attention are fused into
    # RotaryEmbedding ops and the head split is sunk below them first)
    assert res.stats.get("attention_layout", 0) == LAYERS[model]
    if model in ("llama_tiny", "mixtral_tiny"):
        assert res.stats["rotary_layout"] == 2 * LAYERS[model]
        # no rotate_half left; no head transposes (mixtral's MoE experts keep their own)
        assert not ({"Neg"} | ({"Transpose"} if model == "llama_tiny" else set())) & set(g.ops_by_kind()), \
            g.ops_by_kind()
    if model == "gpt2_tiny":
        assert res.stats["gelu"] == LAYERS[model] and res.stats["matmul_epilogue.gelu_tanh"] == LAYERS[model]
    if model == "minilm":
        assert res.stats["merge_qkv"] == LAYERS[model] and res.stats["matmul_epilogue.gelu"] == LAYERS[model]
        if attn == "eager":
            assert res.stats["attention.masked"] == LAYERS[model]
    # numbers: the fused model against the unfused one in onnxruntime
    if p0:   # the exported reference has no padding input: compare without padding
        feeds = lm_feeds(g, p=0)
        if "attention_mask" in feeds:
            feeds["attention_mask"] = np.ones_like(feeds["attention_mask"])
        assert max_diff(run_ort(ref, feeds)[:1], run_ort(g, feeds)[:1]) <= ATOL
    feeds = lm_feeds(g0, p=3 if causal else 0)
    assert max_diff(run_ort(g0, feeds), run_ort(g, feeds)) <= ATOL


@pytest.mark.parametrize("model", ["llama_tiny", "gpt2_tiny", "mixtral_tiny"])
def test_eager_and_sdpa_imports_agree_with_a_kv_cache(model):
    """The eager attention fused at import (is_causal, lifted KV cache) computes what SDPA does,
    with a non-empty past (decode-like step)."""
    e, _, _ = torch_graphs(model, "eager")
    s, _, _ = torch_graphs(model, "sdpa")
    feeds = lm_feeds(s, b=2, s=3, p=4, seed=1)
    assert max_diff(run_ort(s, feeds), run_ort(e, feeds)) <= ATOL


# ------------------------------------------------------------------------------------------------
# torch.onnx.export files

ONNX_LAYERS = {"llama_tiny": 2, "gpt2_tiny": 2, "minilm": 6, "mixtral_tiny": 2}
ONNX_NORMS = {"llama_tiny": 5, "gpt2_tiny": 5, "minilm": 13, "mixtral_tiny": 5}


def _export(name, path, dynamo, attn):
    """tests/onnx_models.export_onnx's recipe, with a choice of attention implementation and
    mixtral_tiny (from conf/model) added."""
    import torch

    from tests import onnx_models as om
    if name == "mixtral_tiny":
        from compiler.frontends.models import build_hf
        inner = build_hf(model_cfg(name))
        inner.set_experts_implementation("batched_mm")   # the exporters' form (no rooftop custom op)
        module, vocab = om._CausalLM(inner).eval(), 1024
    else:
        module, _, vocab = om.build_model(name)
    module.model.config._attn_implementation = attn
    ex = {k: torch.from_numpy(v) for k, v in om.example_inputs(vocab).items()}
    out = "last_hidden_state" if name == "minilm" else "logits"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if dynamo:
            bd, sd = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("seq", min=2, max=64)
            torch.onnx.export(module, (), kwargs=ex, dynamo=True, opset_version=23, input_names=list(ex),
                              output_names=[out], dynamic_shapes={k: {0: bd, 1: sd} for k in ex},
                              verbose=False).save(path)
        else:
            torch.onnx.export(module, (ex["input_ids"], ex["attention_mask"]), path, dynamo=False,
                              opset_version=17, input_names=list(ex), output_names=[out],
                              dynamic_axes={**{k: {0: "batch", 1: "sequence"} for k in ex},
                                            out: {0: "batch", 1: "sequence"}})
    return path


ONNX_CASES = [(m, k, "sdpa") for m in ("llama_tiny", "gpt2_tiny", "minilm") for k in ("dynamo", "legacy")] + \
    [("gpt2_tiny", "dynamo", "eager"), ("llama_tiny", "dynamo", "eager"), ("minilm", "legacy", "eager"),
     ("mixtral_tiny", "dynamo", "sdpa"), ("mixtral_tiny", "legacy", "sdpa")]


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fusion_onnx")


@pytest.mark.parametrize("model,kind,attn", ONNX_CASES)
def test_onnx_file_fuses_and_matches(model, kind, attn, onnx_dir):
    from compiler.frontends.onnx_import import import_onnx
    from passes.cleanup import fold_constants, remove_noops
    path = _export(model, os.path.join(onnx_dir, f"{model}_{kind}_{attn}.onnx"), kind == "dynamo", attn)
    g = import_onnx(path)
    prepare(g)
    remove_noops(g)
    fold_constants(g)
    res = fuse_pass(g)
    g.verify()
    counts = fused_counts(g)
    n = ONNX_LAYERS[model]
    assert counts["attention"] == n, (counts, res.stats)
    assert counts.get("Softmax", 0) == (n if model == "mixtral_tiny" else 0), counts   # MoE router softmax
    assert counts["norms"] == ONNX_NORMS[model], (counts, res.stats)
    assert res.stats.get("residual_norm", 0) >= 2 * n - 1, res.stats
    assert not {"ReduceMean", "Sqrt", "Tanh", "Erf", "Pow"} & set(counts), counts
    # (legacy exports compute the head merge's shape from Shape(transpose): the importer evaluates
    # those chains symbolically, so nothing outside the group reads the transposed tensor; rotary
    # embeddings — primitives or dynamo's RotaryEmbedding — take the 3-D form first)
    assert res.stats.get("attention_layout", 0) == n, res.stats
    if model == "gpt2_tiny":
        assert res.stats["matmul_epilogue.gelu_tanh"] == n
    if model == "minilm":
        assert res.stats["merge_qkv"] == n and res.stats["matmul_epilogue.gelu"] == n
    if model == "llama_tiny":
        assert res.stats["merge_qkv"] == n and res.stats["matmul_epilogue.swiglu"] == n
    # numbers: the original file against rooftop's fused model, right padding included
    # (the dynamo export's RotaryEmbedding runs only at batch 1 in onnxruntime)
    batch = 1 if kind == "dynamo" and model in ("llama_tiny", "mixtral_tiny") else 2
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(0, 250, (batch, 7)).astype(np.int64),
             "attention_mask": np.ones((batch, 7), np.int64)}
    feeds["attention_mask"][-1, -2:] = 0
    assert max_diff(run_ort(path, feeds), run_ort(g, feeds)) <= ATOL
