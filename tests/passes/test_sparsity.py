"""The prune_nm pass: exact N:M pattern in the emitted initializers, the pattern recorded per
initializer, cost-aware decisions from the measured 2:4 kernel, composition with quantize."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from compiler.backend import accuracy
from compiler.backend.emit import to_model
from compiler.errors import ConfigError
from compiler.perf.hardware import hardware_by_name
from compiler.backend.quantized import nm_patterns
from passes import PassContext, PassManager, make_pass
from passes.quant.cost_gate import measured_ratio, ratio_at
from passes.quant.passes import linear_sites
from tests.conftest import imported, model_cfg


@pytest.fixture(scope="module")
def gpt2_fused():
    g = imported("gpt2_tiny").copy()
    PassManager([make_pass({"name": "fuse"}), make_pass("dce")])(g)
    return g


def _ctx(batch, prompt, ctx, hw="h200"):
    return PassContext(hardware=hardware_by_name(hw), points=((batch, prompt, 0, "prefill"), (batch, 1, ctx, "decode")))


def _prune(g, ctx=None, **params):
    h = g.copy()
    p = make_pass({"name": "prune_nm", **params}, ctx)
    res = p(h)
    h.verify()
    return h, res


@pytest.mark.parametrize("method", ["magnitude", "sparsegpt"])
def test_every_group_of_every_emitted_weight_is_2_of_4(gpt2_fused, method):
    g, res = _prune(gpt2_fused, cost_aware=False, method=method, calibration={"samples": 2, "seq_len": 32})
    sites = [s for s in linear_sites(g) if not s.reason]
    assert res.stats["pruned"] == len(sites) == 16
    model = to_model(g)
    pats = nm_patterns(model)
    assert set(pats) == {s.weight for s in sites}
    inits = {i.name: i for i in model.graph.initializer}
    for name, pat in pats.items():
        assert pat == {"n": 2, "m": 4, "axis": 0, "method": method}
        w = numpy_helper.to_array(inits[name])
        groups = (w.reshape(w.shape[0] // 4, 4, w.shape[1]) != 0).sum(axis=1)
        assert (groups == 2).all(), name
        # the initializer carries the serialized weight_format too
        meta = {p.key: p.value for p in inits[name].metadata_props}
        assert "nm=[2,4]" in meta["rooftop.weight_format"]
        assert g.params[name].annotations["weight_format"].nm == (2, 4)


def test_sparsegpt_closer_to_dense_than_magnitude(gpt2_fused, tmp_path):
    vals = {}
    for method in ("magnitude", "sparsegpt"):
        g, _ = _prune(gpt2_fused, cost_aware=False, method=method, calibration={"samples": 4, "seq_len": 64})
        p = str(tmp_path / f"{method}.onnx")
        onnx.save(to_model(g), p)
        vals[method] = accuracy.evaluate(
            to_model(gpt2_fused), p, task="causal_lm",
            tokenizer=accuracy.make_tokenizer(model_cfg("gpt2_tiny"), accuracy.vocab_of(gpt2_fused)),
            paragraphs=accuracy.load_paragraphs(), samples=3, seq_len=48)["kl_nats"]["mean"]
    assert vals["sparsegpt"] < vals["magnitude"], vals


def test_measured_ratio_loses_small_m_wins_large_m():
    c = measured_ratio()
    assert "H200" in c["source"]
    assert ratio_at(c, 1) > 1.3 and ratio_at(c, 16384) < 0.8


def test_cost_aware_refuses_decode_heavy_and_accepts_prefill_heavy(gpt2_fused):
    # batch 1, long generation: decode (M = 1) dominates, where the 2:4 kernel loses
    g, res = _prune(gpt2_fused, _ctx(1, 128, 128), workload={"gen_len": 256})
    assert res.stats["pruned"] == 0 and res.stats["refused_by_cost"] == 16
    d = g.meta["sparsity"]["layers"][0]
    assert not d["pruned"] and d["predicted_payoff_s"] < 0 and d["decode"]["ratio"] > 1
    assert d["predicted_request_sparse_s"] == pytest.approx(d["prefill"]["sparse_s"] + 256 * d["decode"]["sparse_s"])
    # large batch x long prompt, one generated token: prefill (M = 65536) dominates, 2:4 wins
    g2, res2 = _prune(gpt2_fused, _ctx(64, 1024, 1024), workload={"gen_len": 1})
    assert res2.stats["pruned"] == 16
    d2 = g2.meta["sparsity"]["layers"][0]
    assert d2["pruned"] and d2["predicted_payoff_s"] > 0 and d2["prefill"]["M"] == 65536


def test_prune_then_quantize_keeps_pattern_in_codes(gpt2_fused):
    g, _ = _prune(gpt2_fused, cost_aware=False)
    make_pass({"name": "quantize", "scheme": "w8a8"})(g)
    g.verify()
    for s in [s for s in linear_sites(g) if not s.reason]:
        p = g.params[s.weight]
        fmt = p.annotations["weight_format"]
        assert fmt.nm == (2, 4) and fmt.dtype == "int8"
        codes = p.annotations["quant_data"].codes.astype(np.int32)
        assert ((codes.reshape(-1, 4, codes.shape[1]) != 0).sum(axis=1) <= 2).all()


def test_cost_only_sparsity_on_meta(llama2_7b):
    g = llama2_7b.copy()
    res = make_pass({"name": "prune_nm", "cost_aware": False})(g)
    assert res.stats["cost_only"] == 1 and res.stats["pruned"] > 0
    assert g.meta["sparsity"]["cost_only"]


@pytest.mark.parametrize("params,match", [({"n": 4, "m": 4}, "0 < n < m"), ({"method": "random"}, "magnitude"),
                                          ({"x": 1}, "unknown option")])
def test_bad_sparsity_config(params, match):
    with pytest.raises(ConfigError, match=match):
        make_pass({"name": "prune_nm", **params})
