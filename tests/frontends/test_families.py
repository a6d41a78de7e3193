"""Family × exporter matrix: every common Hugging Face decoder and encoder family, through
rooftop's own torch.export importer (a ``model.source=hf_config`` / ``_target_`` model config) and
both ``torch.onnx.export`` exporters (dynamo, opset 23; legacy TorchScript, opset 17) imported with
``model=onnx``. Tiny random configs (2 layers, hidden 64: tests/onnx_models.FAMILIES).

Per cell, after ``pipeline=default``'s fusion: every layer's attention is one ``Attention`` op, no
``Softmax`` is left, rotary embeddings are ``RotaryEmbedding`` ops, and onnxruntime computes what
the source computes (torch eager, fp32, ≤ 1e-4) — at batch 2 with a right-padded attention mask
for the ONNX files, and for torch imports of decoders a prefill and a decode step on the lifted KV
cache at batch 2. Exports are made once per module (``tmp_path_factory``).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests import onnx_models as om

ATOL = 1e-4
LAYERS = 2
EXPORTERS = ("torch", "dynamo", "legacy")
ROTARY = {"llama", "mistral", "qwen2", "phi3", "gemma", "gpt_neox", "falcon"}
# cells that need something other than the family's defaults, and why (docs/guide/models.md says so)
EXPORT_ATTN = {("falcon", "dynamo"): "eager"}   # torch.onnx lowers SDPA only with q heads = kv heads
XFAIL: dict[tuple[str, str], str] = {}

CELLS = [(f, e) for f in om.FAMILIES for e in EXPORTERS]


# the slowest cells (torch.onnx's dynamo exporter on the rotary decoders: ~10-70 s each on a
# loaded 2-core machine; the whole file takes several minutes there)
SLOW = {(f, "dynamo") for f in ROTARY}


def _param(f, e):
    marks = [pytest.mark.slow] if (f, e) in SLOW else []
    why = XFAIL.get((f, e))
    if why:
        marks.append(pytest.mark.xfail(reason=why, strict=True))
    return pytest.param(f, e, marks=marks)


def fuse(g):
    from compiler.perf.hardware import hardware_by_name
    from passes import PassContext, make_pass
    from tests.conftest import prepare
    from passes.cleanup import fold_constants, remove_noops
    prepare(g)   # the import passes of the default recipe (KV cache of causal decoders)
    remove_noops(g)
    fold_constants(g)
    ctx = PassContext(hardware_by_name("a100_80g"), ((1, 128, 0, "prefill"), (1, 1, 128, "decode")))
    return make_pass("fuse", ctx)(g)


def run_ort(g, feeds):
    from tests.graphs import run_ort as _run
    return _run(g, feeds)


def diff(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def model_config(family: str) -> dict:
    """The model config a user writes for rooftop's own importer: ``source: hf_config`` for the
    ``AutoModel`` families, ``source: module`` (Hydra ``_target_``) for the T5 encoder and ViT."""
    cfg_cls, _, kw, task = om.FAMILIES[family]
    if family in ("t5", "vit"):
        cfg = {"name": family, "source": "module", "weights": "random", "seed": 0,
               "task": "embedding",
               "module": {"_target_": "tests.onnx_models.family_module", "family": family}}
        if task == "vision":
            cfg["inputs"] = {"pixel_values": {"shape": ["B", *om.IMAGE], "dtype": "float32"}}
            cfg["outputs"] = ["last_hidden_state"]
        return cfg
    import transformers
    model_type = getattr(transformers, cfg_cls).model_type
    return {"name": family, "source": "hf_config", "weights": "random", "seed": 0, "dtype": "float32",
            "attn_implementation": "sdpa", "task": "causal_lm" if task == "causal_lm" else "embedding",
            "config": {"model_type": model_type, **kw}}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(family, exporter) → (fused graph, fusion stats, reference callable); built once."""
    cache: dict = {}
    root = tmp_path_factory.mktemp("families")

    def get(family, exporter):
        key = (family, exporter)
        if key not in cache:
            if exporter == "torch":
                from compiler.frontends.models import build_torch_model, import_torch
                cfg = model_config(family)
                g = import_torch(cfg)
                module = build_torch_model(cfg)[0] if family not in ("t5", "vit") else \
                    om.family_module(family)
                ref = module.eval()
            else:
                from compiler.frontends.onnx_import import import_onnx
                attn = EXPORT_ATTN.get(key, "sdpa")
                path = str(root / f"{family}_{exporter}.onnx")
                om.export_family(family, path, exporter == "dynamo", attn=attn)
                g = import_onnx(path)
                ref = om.family_module(family)
            res = fuse(g)
            g.verify()
            cache[key] = (g, res.stats, ref)
        return cache[key]
    return get


# cells whose attention keeps the 4-D [B, H, S, D] form, and why (every other cell takes 3-D)
FOUR_D = {**{("falcon", e): "multi-query fused QKV split on the head axis of [B, S, H + 2, D]"
             for e in EXPORTERS},
          ("t5", "legacy"): "the first layer's position bias keeps its head split"}


def _structure(g, stats, family, exporter=None):
    ops = g.ops_by_kind()
    assert ops.get("Attention", 0) == LAYERS, (ops, stats)
    # the head split/merge folded in: Q as [B, S, H·D] (GPT-NeoX too, since its interleaved QKV
    # projection is cut per chunk by the qkv_heads rule)
    if (family, exporter) not in FOUR_D:
        assert all(g.type(n.inputs[0]).rank == 3 for n in g if n.op == "Attention"), \
            [(n.name, g.type(n.inputs[0])) for n in g if n.op == "Attention"]
    assert "Softmax" not in ops, ops
    if family in ROTARY:
        assert ops.get("RotaryEmbedding", 0) == 2 * LAYERS, (ops, stats)
        assert "Neg" not in ops, ops


@pytest.mark.parametrize("family,exporter", [_param(f, e) for f, e in CELLS])
def test_family_fuses_and_matches(family, exporter, built):
    g, stats, ref = built(family, exporter)
    _structure(g, stats, family, exporter)
    task = om.FAMILIES[family][3]
    if exporter != "torch" or task != "causal_lm":
        feeds = om.family_inputs(family, batch=2, seq=7, seed=3, pad=task != "vision")
        if exporter == "torch" and task == "vision":
            want = ref(torch.from_numpy(feeds["pixel_values"]))
        else:
            with torch.no_grad():
                want = ref(*[torch.from_numpy(v) for v in feeds.values()])
        want = want.detach().numpy()
        got = run_ort(g, feeds)[0]
        assert got.shape == want.shape
        assert diff(got, want) <= ATOL
        return
    # torch import of a decoder: prefill of 6 tokens, then one decode step on the lifted cache,
    # against torch eager on the whole 7 tokens
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 250, (2, 7)).astype(np.int64)
    pos = np.tile(np.arange(7), (2, 1)).astype(np.int64)
    with torch.no_grad():
        want = ref(torch.from_numpy(ids), torch.from_numpy(pos)).numpy()
    kv = [t for t in g.inputs if t.startswith("past_")]
    hd = {t: g.type(t).shape for t in kv}
    feeds = {"input_ids": ids[:, :6], "position_ids": pos[:, :6],
             **{t: np.zeros((2, hd[t][1], 0, hd[t][3]), np.float32) for t in kv}}
    out = dict(zip(g.outputs, run_ort(g, feeds)))
    assert diff(out["logits"], want[:, :6]) <= ATOL
    feeds = {"input_ids": ids[:, 6:], "position_ids": pos[:, 6:],
             **{t: out[t.replace("past_", "present_")] for t in kv}}
    step = dict(zip(g.outputs, run_ort(g, feeds)))
    assert diff(step["logits"], want[:, 6:]) <= ATOL


# ------------------------------------------------------------------------------------------------
# ONNX-file decoders: the KV cache lifted (passes/kv_cache_onnx.py) — one artifact for prefill and
# decode, equivalent to the source

DECODERS = [f for f, spec in om.FAMILIES.items() if spec[3] == "causal_lm"]
# why a decoder export keeps no cache (the pass refuses: lifting would change what it computes)
KV_REFUSED: dict[str, str] = {}


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
@pytest.mark.parametrize("family", DECODERS)
def test_onnx_decoder_gets_a_kv_cache(family, exporter, built):
    from passes.kv_cache_onnx import LiftKVCache
    g0, _, ref = built(family, exporter)
    g = g0.copy()
    res = LiftKVCache()(g)
    if family in KV_REFUSED:
        assert not res.changed and KV_REFUSED[family] in g.meta["kv_cache_refused"]
        return
    assert res.changed and res.stats["layers"] == LAYERS, (res.stats, g.meta.get("kv_cache_refused"))
    kv = [t for t in g.inputs if t.startswith("past_")]
    assert len(kv) == 2 * LAYERS and g.type("attention_mask").shape[1] == g.type(kv[0]).shape[2] + g.type("input_ids").shape[1]
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 250, (2, 7)).astype(np.int64)
    mask = np.ones((2, 7), np.int64)
    with torch.no_grad():
        want = ref(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    shapes = {t: g.type(t).shape for t in kv}
    feeds = {"input_ids": ids[:, :5], "attention_mask": mask[:, :5],
             **{t: np.zeros((2, shapes[t][1], 0, shapes[t][3]), np.float32) for t in kv}}
    out = dict(zip(g.outputs, run_ort(g, feeds)))
    assert diff(out["logits"], want[:, :5]) <= ATOL
    for step in (5, 6):   # two decode steps on the cache
        feeds = {"input_ids": ids[:, step:step + 1], "attention_mask": mask[:, :step + 1],
                 **{t: out[t.replace("past_", "present_")] for t in kv}}
        out = dict(zip(g.outputs, run_ort(g, feeds)))
        assert diff(out["logits"], want[:, step:step + 1]) <= ATOL


def test_meta_weights_keep_the_causal_mask_structure():
    """Under model.weights=meta the mask subgraph's own tensors (arange …) are built on the meta
    device; its evaluation runs them on the CPU, so the mask is still recognised as causal (and
    the KV cache can be lifted) exactly as with real weights."""
    from tests.conftest import imported
    for weights in ("meta", "random"):
        g = imported("llama_tiny", weights=weights)
        specs = [n.annotations.get("attention") for n in g.topo_order() if n.op == "Attention"]
        assert specs and all(s is not None and s.mask == "causal" for s in specs), (weights, specs)
