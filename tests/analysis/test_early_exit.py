"""Early exit: depth distributions (hand-derived and simulated), exit heads in the emitted model
(onnxruntime against torch), the batched cost (expected max depth), calibration on evaluation
text, and bad input."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from compiler.analysis import early_exit as ee
from compiler.frontends import measure
from compiler.errors import ConfigError
from compiler.frontends.models import build_torch_model, import_torch
from compiler.driver.pipeline import run
from passes import PassManager, make_pass
from passes.early_exit import insert_exit_heads
from tests.conftest import compose, model_cfg, prepare, run_cli


def test_depth_formulas_hand_derived():
    # 4 layers, exits after layers 0, 1, 2, each taken with probability 1/2 by the tokens reaching it
    pmf = ee.depth_distribution(4, [0, 1, 2], [0.5, 0.5, 0.5])
    assert pmf == pytest.approx([0.5, 0.25, 0.125, 0.125])
    assert ee.survival(pmf) == pytest.approx([1, 0.5, 0.25, 0.125])
    assert ee.expected_depth(pmf) == pytest.approx(1.875)          # 1·½ + 2·¼ + 3·⅛ + 4·⅛
    # max over 2 tokens: Σ_d 1 − P(D ≤ d)² = 1 + (1 − ¼) + (1 − 9/16) + (1 − 49/64)
    assert ee.expected_max_depth(pmf, 2) == pytest.approx(1 + 0.75 + 7 / 16 + 15 / 64)
    assert ee.expected_max_depth(pmf, 1) == pytest.approx(1.875)
    # simulated: batches of 16 tokens drawing depths independently
    rng = np.random.default_rng(0)
    d = rng.choice(np.arange(1, 5), size=(50_000, 16), p=pmf)
    assert ee.expected_max_depth(pmf, 16) == pytest.approx(d.max(1).mean(), rel=3e-3)
    assert ee.expected_depth(pmf) == pytest.approx(d.mean(), rel=3e-3)
    # a batch's expected max depth approaches the full depth
    assert ee.expected_max_depth(pmf, 64) > 3.9 > ee.expected_depth(pmf)


@pytest.fixture(scope="module")
def exit_model(tmp_path_factory):
    """llama_tiny (4 layers) with exits after layers 0 and 2, fused by the default passes, emitted."""
    from compiler.backend.emit import save
    cfg = model_cfg("llama_tiny")
    module, task = build_torch_model(cfg)
    g = import_torch(cfg, module, task)
    stats = insert_exit_heads(g, [0, 2], [0.4, 0.5])
    prepare(g)   # the import passes of the default recipe (KV cache), after the exit heads as in the pipeline
    PassManager([make_pass(p) for p in ["remove_noops", "fold_constants", "fuse", "dce"]])(g)
    g.verify()
    path = tmp_path_factory.mktemp("ee") / "m.onnx"
    save(g, str(path))
    return module, g, ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), stats


def test_exit_heads_match_torch_in_onnxruntime(exit_model):
    """Each exit's logits = the shared final norm + LM head on the hidden state after that layer,
    and the exposed hidden state is that layer's output — prefill and a decode step with the cache."""
    module, g, sess, stats = exit_model
    assert stats["exit_heads"] == 2
    assert {"exit_logits.0", "exit_hidden.0", "exit_logits.2", "exit_hidden.2"} <= set(g.outputs)
    hf = module.model
    ids = torch.randint(0, 1024, (2, 10), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = hf(input_ids=ids, output_hidden_states=True)
        ref = {f"exit_logits.{e}": hf.lm_head(hf.model.norm(out.hidden_states[e + 1])).numpy() for e in (0, 2)}
        ref.update({f"exit_hidden.{e}": out.hidden_states[e + 1].numpy() for e in (0, 2)})
        ref["logits"] = out.logits.numpy()
    layers, kvh, hd = 4, g.type("past_key.0").shape[1], g.type("past_key.0").shape[3]
    names = [o.name for o in sess.get_outputs()]
    pos = np.arange(10)[None].repeat(2, 0)
    feed = {"input_ids": ids[:, :9].numpy(), "position_ids": pos[:, :9], "attention_mask": np.ones((2, 9), np.int64)}
    for i in range(layers):
        feed[f"past_key.{i}"] = feed[f"past_value.{i}"] = np.zeros((2, kvh, 0, hd), np.float32)
    res = dict(zip(names, sess.run(None, feed)))
    for k, v in ref.items():
        assert np.abs(res[k] - v[:, :9]).max() <= 1e-4, k
    feed = {"input_ids": ids[:, 9:].numpy(), "position_ids": pos[:, 9:], "attention_mask": np.ones((2, 10), np.int64)}
    for i in range(layers):
        feed[f"past_key.{i}"], feed[f"past_value.{i}"] = res[f"present_key.{i}"], res[f"present_value.{i}"]
    res = dict(zip(names, sess.run(None, feed)))
    for k, v in ref.items():
        assert np.abs(res[k] - v[:, 9:]).max() <= 1e-4, k


def test_exit_heads_are_annotated_and_kv_projections_found(exit_model, tmp_path):
    _, g, _, _ = exit_model
    pts = {n.annotations["exit_point"].layer for n in g if "exit_point" in n.annotations}
    assert pts == {0, 2}
    from compiler.perf.cost import CostModel
    from compiler.perf.hardware import load_hardware
    cm = CostModel(g, load_hardware(compose(["hardware=h200"])["hardware"]))
    frac = ee._kv_projection_fraction(g, cm)
    # merged QKV GEMM [128 → 128 + 32 + 32]: K and V are 64 of its 192 output columns, per layer
    got = sorted(f for f in frac if f > 0)
    assert got == pytest.approx([1 / 3] * 4)


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    out = {}
    for key, over in {"b1": ["workload.batch=1"], "b16": ["workload.batch=16"],
                      "all_first": ["workload.batch=4", "early_exit.probabilities=[1.0,0.0]"]}.items():
        cfg = compose(["early_exit=layers", "early_exit.layers=[0,2]", "early_exit.probabilities=[0.4,0.5]",
                       "hardware=h200", "emit.enabled=false", "report.html=false"] + over)
        out[key] = run(cfg, str(tmp_path_factory.mktemp(key)), show_progress=False)
    return out


def test_expected_depth_and_batched_cost(reports):
    e1, e16 = reports["b1"]["early_exit"], reports["b16"]["early_exit"]
    pmf = ee.depth_distribution(4, [0, 2], [0.4, 0.5])
    assert e1["expected_depth"] == pytest.approx(ee.expected_depth(pmf))         # 1·.4 + 3·.3 + 4·.3
    assert e1["expected_depth"] == pytest.approx(0.4 + 0.9 + 1.2)
    assert e16["expected_max_depth"] == pytest.approx(ee.expected_max_depth(pmf, 16))
    assert e16["expected_max_depth"] > e1["expected_max_depth"] == pytest.approx(e1["expected_depth"])
    # a single stream skips layers; a batch of 16 almost always runs its deepest token to the end
    assert e1["speedup"] > 1.0
    assert e16["speedup"] < e1["speedup"]
    assert e1["tpot_s"] == pytest.approx(e1["single_stream_tpot_s"])
    # propagate: the skipped layers' K/V GEMMs are paid; none when nothing is skipped
    assert e1["kv_fill_s"] > 0 and e1["deferred_recompute_s"] == 0
    # every token leaving at the first exit: depth 1 whatever the batch
    a = reports["all_first"]["early_exit"]
    assert a["expected_depth"] == pytest.approx(1.0) and a["expected_max_depth"] == pytest.approx(1.0)
    assert a["speedup"] > e1["speedup"]


def test_recompute_policy_defers_the_skipped_layers(tmp_path):
    cfg = compose(["early_exit=layers", "early_exit.layers=[0,2]", "early_exit.probabilities=[0.4,0.5]",
                   "early_exit.kv=recompute", "hardware=h200", "emit.enabled=false", "report.html=false"])
    e = run(cfg, str(tmp_path), show_progress=False)["early_exit"]
    assert e["kv_fill_s"] == 0 and e["deferred_recompute_s"] > 0
    assert e["amortized_tpot_s"] == pytest.approx(e["tpot_s"] + e["deferred_recompute_s"])
    assert e["throughput_speedup"] < e["speedup"]


def test_threshold_calibration_on_evaluation_text():
    cfg = model_cfg("llama_tiny")
    none = measure.calibrate(cfg, [0, 2], 1.0, 64)          # a margin of 1 is never reached: nobody exits
    assert [r["exited"] for r in none["exits"]] == [0, 0] and none["agreement"] == 1.0
    all_ = measure.calibrate(cfg, [0, 2], 0.0, 64)          # every token leaves at the first exit
    assert all_["exits"][0]["probability"] == 1.0 and all_["exits"][1]["reached"] == 0
    # agreement = how often the first exit's argmax equals the full model's, recomputed in torch
    from compiler.frontends.models import build_hf
    m = build_hf(cfg)
    ids = torch.as_tensor(measure.eval_token_ids(1024, 64))[None]
    with torch.no_grad():
        out = m(input_ids=ids, output_hidden_states=True)
        first = m.lm_head(m.model.norm(out.hidden_states[1])).argmax(-1)
    assert all_["agreement"] == pytest.approx(float((first == out.logits.argmax(-1)).float().mean()))
    mid = measure.calibrate(cfg, [0, 2], float(np.median(_margins(m, ids))), 64)
    assert 0.3 <= mid["exits"][0]["probability"] <= 0.7


def _margins(m, ids):
    with torch.no_grad():
        out = m(input_ids=ids, output_hidden_states=True)
        p = torch.softmax(m.lm_head(m.model.norm(out.hidden_states[1]))[0].double(), -1).topk(2, -1).values
    return (p[:, 0] - p[:, 1]).numpy()


def test_bad_early_exit_config_exits_2(tmp_path):
    with pytest.raises(ConfigError, match="exactly one of"):
        ee.exit_config({"early_exit": {"mode": "layers", "layers": [1], "probabilities": [0.1], "threshold": 0.5}}, 4)
    with pytest.raises(ConfigError, match="one probability"):
        ee.exit_config({"early_exit": {"mode": "layers", "layers": [0, 1], "probabilities": [0.1]}}, 4)
    with pytest.raises(ConfigError, match="needs weights"):
        measure.calibrate(model_cfg("llama2_7b"), [3], 0.9, 8)
    r = run_cli("early_exit=layers", "early_exit.layers=[3]", "early_exit.probabilities=[0.5]",
                f"hydra.run.dir={tmp_path}")
    assert r.returncode == 2 and "after layers 0..2" in r.stderr, r.stderr
    assert not (tmp_path / "report.json").exists()
