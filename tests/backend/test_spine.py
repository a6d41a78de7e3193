"""The compiler spine: torch import → IR → passes → ONNX, checked in onnxruntime against torch."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from compiler.backend.emit import save
from compiler.frontends.models import build_torch_model, import_torch
from compiler.ir import B, P, S, Graph, IRError, TensorType
from passes.cleanup import fold_constants, remove_noops
from tests.conftest import assert_prefill_decode_match, model_cfg, prepare

TOL = 1e-4


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _compile(name, tmp_path):
    cfg = model_cfg(name)
    module, task = build_torch_model(cfg)
    g = import_torch(cfg, module, task)
    prepare(g)
    remove_noops(g)
    fold_constants(g)
    g.verify()
    path = tmp_path / "model.onnx"
    save(g, str(path))
    return module, g, _session(path)


@pytest.mark.parametrize("name", ["llama_tiny", "gpt2_tiny", "mixtral_tiny"])
def test_decoder_prefill_and_decode_match_torch(name, tmp_path):
    """Prefill logits and two decode steps (cache from that prefill) at batch 3 / prompt 11 —
    not the 2 × 8 used to trace — match torch eager in fp32."""
    module, g, sess = _compile(name, tmp_path)
    assert_prefill_decode_match(module, g, sess, tol=TOL)


def test_gqa_cache_stores_kv_heads_not_query_heads(tmp_path):
    cfg = model_cfg("llama_tiny")
    g = import_torch(cfg)
    assert not any(t.startswith("past_key") for t in g.inputs)   # the importer lifts nothing
    stats = prepare(g)
    heads, kv = cfg["config"]["num_attention_heads"], cfg["config"]["num_key_value_heads"]
    assert kv < heads
    assert g.type("past_key.0").shape == (B, kv, P, cfg["config"]["hidden_size"] // heads)
    assert g.type("present_value.0").shape[2] == P + S
    assert stats["lift_kv_cache"]["repeat_kv_removed"] == 2 * cfg["config"]["num_hidden_layers"]
    assert not any(n.op == "Expand" for n in g)  # the repeat_kv copies are gone


def test_minilm_embeddings_match_torch(tmp_path):
    module, g, sess = _compile("minilm", tmp_path)
    ids = torch.randint(0, 30000, (3, 17), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(3, 17, dtype=torch.int64)
    mask[1, 12:] = 0  # padding: the mask path is real
    with torch.no_grad():
        ref = module(ids, mask).numpy()
    out = sess.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    assert out.shape == ref.shape == (3, 17, 384)
    assert np.abs(out - ref).max() <= TOL
    assert len(g.params) > 90  # real weights, not a toy


def test_meta_import_allocates_no_weights():
    g = import_torch(model_cfg("llama_tiny", weights="meta"))
    assert g.params and all(p.data is None for p in g.params.values() if not p.annotations.get("const"))
    assert g.type("input_ids").shape == (B, S)


def test_user_module_through_target():
    cfg = {"name": "mlp", "source": "module", "task": "custom", "weights": "random",
           "module": {"_target_": "torch.nn.Linear", "in_features": 16, "out_features": 8},
           "inputs": {"input": {"shape": ["B", "S", 16], "dtype": "float32"}}, "outputs": ["y"]}
    g = import_torch(cfg)
    assert g.type("y").shape == (B, S, 8)
    assert {n.op for n in g} >= {"MatMul", "Add"}


# ---- IR invariants ----------------------------------------------------------------------------

def test_parallel_edges_for_repeated_operand():
    g = Graph()
    x = g.add_input("x", TensorType("float32", (B, 4)))
    a = g.add_op("Relu", [x])
    sq = g.add_op("Mul", [a.outputs[0], a.outputs[0]])
    g.set_outputs([sq.outputs[0]])
    g.verify()
    assert g.nx.number_of_edges(a.name, sq.name) == 2
    assert g.num_uses(a.outputs[0]) == 2


def test_verify_catches_broken_graphs():
    g = Graph()
    x = g.add_input("x", TensorType("float32", (B, 4)))
    n = g.add_op("Relu", [x])
    g.set_outputs([n.outputs[0]])
    g.verify()
    n.inputs[0] = "nope"  # bypassing the API breaks the use index
    with pytest.raises(IRError):
        g.verify()
    with pytest.raises(IRError, match="undefined"):
        g.add_op("Relu", ["missing"])


def test_shape_rules_are_symbolic():
    g = Graph()
    q = g.add_input("q", TensorType("float16", (B, 8, S, 64)))
    k = g.add_input("k", TensorType("float16", (B, 2, S, 64)))
    pk = g.add_input("pk", TensorType("float16", (B, 2, P, 64)))
    att = g.add_op("Attention", [q, k, k, "", pk, pk], 3, {"is_causal": 1})
    assert g.type(att.outputs[1]).shape == (B, 2, P + S, 64)
    r = g.add_op("Reshape", [att.outputs[0]], attrs={"shape": [0, 0, -1]})
    assert g.type(r.outputs[0]).shape == (B, 8, 64 * S)


def test_topological_order_is_deterministic():
    g1 = import_torch(model_cfg("gpt2_tiny", weights="meta"))
    g2 = import_torch(model_cfg("gpt2_tiny", weights="meta"))
    assert [n.name for n in g1.topo_order()] == [n.name for n in g2.topo_order()]


def test_minilm_cpu_fusion_target_folds_biases_and_matches_torch(tmp_path):
    """The fuse pass's cpu target on the real MiniLM: every layer's key, value and second-MLP bias
    moved (passes/fusion/bias_fold.py) and the artifact still equals torch eager with padding."""
    from compiler.perf.hardware import hardware_by_name
    from passes import PassContext, make_pass
    cfg = model_cfg("minilm")
    module, task = build_torch_model(cfg)
    g = import_torch(cfg, module, task)
    prepare(g)
    remove_noops(g)
    fold_constants(g)
    ctx = PassContext(hardware_by_name("cpu"), ((1, 128, 0, "prefill"),))
    res = make_pass({"name": "fuse"}, ctx)(g)
    layers = 6   # all-MiniLM-L6-v2
    for k in ("bias_fold.key", "bias_fold.value", "bias_fold.residual", "attention.float_mask"):
        assert res.stats[k] == layers, res.stats
    # the first MLP linear (384 → 1536) takes its bias as a weight row; Q and O keep MatMul + Add
    assert res.stats["matmul_epilogue.bias_row"] == layers and "matmul_epilogue.gemm" not in res.stats
    g.verify()
    path = tmp_path / "model.onnx"
    save(g, str(path))
    ids = torch.randint(0, 30000, (3, 17), generator=torch.Generator().manual_seed(4))
    mask = torch.ones(3, 17, dtype=torch.int64)
    mask[2, 9:] = 0
    with torch.no_grad():
        ref = module(ids, mask).numpy()
    out = _session(path).run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    assert np.abs(out - ref).max() <= TOL
