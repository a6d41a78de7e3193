"""``quant=`` on MoE experts: the grouped expert GEMMs (``MoEMatMul(x, w [E, K, N], expert)``) of a
tiny Mixtral get per-expert scales (per output channel / per group along K), the stored bytes the
cost model charges equal the arithmetic from the config, and the emitted artifact (a blocked
``DequantizeLinear`` of the ``[E, K, N]`` codes feeding the MoEMatMul lowering) runs in
onnxruntime and matches the float model that holds the dequantized weights — prefill and decode
steps, every expert routed to."""
from __future__ import annotations

import types

import numpy as np
import onnx
import pytest

from compiler.backend.emit import to_model
from compiler.backend.quantized import make_session
from compiler.ir.ops import Classifier
from passes import make_pass
from passes.quant import QuantSpec, quantize_rtn
from passes.quant.passes import expert_sites, quantize_experts
from tests.conftest import assert_prefill_decode_match, imported, model_cfg

E, H, I = 4, 128, 256          # conf/model/mixtral_tiny.yaml: experts, hidden, intermediate (2 layers)


@pytest.fixture(scope="module")
def mixtral():
    return imported("mixtral_tiny")


def _quantized(g, **params):
    h = g.copy()
    res = make_pass({"name": "quantize", **params})(h)
    h.verify()
    return h, res


def _expert_weights(g):
    return sorted(s.weight for s in expert_sites(g, []))


def test_expert_sites_and_exclude(mixtral):
    ws = _expert_weights(mixtral)
    shapes = sorted(tuple(mixtral.params[w].type.shape) for w in ws)
    assert shapes == sorted([(E, H, 2 * I), (E, I, H)] * 2)
    assert all(s.reason == "experts" for s in expert_sites(mixtral, ["experts"]))
    down = {s.weight: s.reason for s in expert_sites(mixtral, ["*down_proj*"])}
    assert sum(bool(r) for r in down.values()) == 2 and all("down_proj" in w for w, r in down.items() if r)
    g, res = _quantized(mixtral, scheme="w8a16", exclude=["embeddings", "lm_head", "experts"])
    assert res.stats["expert_weights"] == 0
    assert all("weight_format" not in g.params[w].annotations for w in ws)


@pytest.mark.parametrize("scheme,dtype", [("w8a16", "int8"), ("w4a16", "uint4"), ("fp8", "float8e4m3fn")])
def test_expert_bytes_equal_the_config_arithmetic(mixtral, scheme, dtype):
    g, res = _quantized(mixtral, scheme=scheme)
    assert res.stats["expert_weights"] == 4
    cls = Classifier(g)
    total = sum(cls.weight_bytes(w) for w in _expert_weights(g))
    numel = 2 * (E * H * 2 * I + E * I * H)              # both layers, gate_up + down
    if scheme == "w4a16":      # uint4 values + fp16 scale + fp16 zero point per 128 along K, per expert
        want = numel // 2 + (numel // 128) * 2 * 2
    else:                      # 8-bit values + one fp16 scale per output channel of each expert
        channels = 2 * (E * 2 * I + E * H)
        want = numel + channels * 2
    assert total == want
    fmt = g.params[_expert_weights(g)[0]].annotations["weight_format"]
    assert fmt.dtype == dtype and fmt.axis == 1
    # the fp32 weights were 4 bytes each: the experts' bytes drop by the format's factor
    assert total / (numel * 4) == pytest.approx({"w8a16": 0.25, "fp8": 0.25, "w4a16": 4.25 / 32}[scheme], rel=0.02)


@pytest.mark.parametrize("spec", [QuantSpec("int8", "channel"), QuantSpec("uint4", "group", 64, False),
                                  QuantSpec("float8e4m3fn", "channel")])
def test_quantize_experts_is_per_expert(spec):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 128, 40)).astype(np.float32) * np.array([1.0, 30.0, 0.01])[:, None, None]
    qt = quantize_experts(w, spec)
    deq = qt.dequantize()
    for e in range(3):       # each expert equals its own 2-D quantization: scales never shared
        ref = quantize_rtn(w[e], spec).dequantize()
        np.testing.assert_array_equal(deq[e], ref)
    rel = np.abs(deq - w).max(axis=(1, 2)) / np.abs(w).max(axis=(1, 2))
    assert rel.max() < (0.2 if spec.bits == 4 else 0.07)
    assert qt.axis == 1 and qt.scale.shape[:2] == (3, 128 // qt.block_size)


class _Reference:
    """A ``module(ids, pos).numpy()`` stand-in: the float artifact of the dequantized weights run on
    the whole sequence at once (prefill of every token), the reference of prefill + decode."""

    def __init__(self, g, vocab):
        self.g, self.sess = g, make_session(to_model(g))
        self.model = types.SimpleNamespace(config=types.SimpleNamespace(vocab_size=vocab))

    def __call__(self, ids, pos):
        from tests.conftest import empty_cache
        ids, pos = ids.numpy(), pos.numpy()
        feed = {"input_ids": ids, "position_ids": pos, **empty_cache(self.g, ids.shape[0])}
        if "attention_mask" in self.g.inputs:
            feed["attention_mask"] = np.ones(ids.shape, np.int64)
        names = [o.name for o in self.sess.get_outputs()]
        return types.SimpleNamespace(numpy=lambda: dict(zip(names, self.sess.run(None, feed)))["logits"])


def _same_steps(a, b, g, vocab, nb=3, ns=11, nd=2):
    """Sessions ``a`` and ``b`` fed the same prefill and decode steps (each its own cache) give the
    same logits (FP8: both keep the dynamic FP8 QDQ of the activations, only the weights' form
    differs)."""
    from tests.conftest import empty_cache
    rng = np.random.default_rng(5)
    ids = rng.integers(0, vocab, (nb, ns + nd))
    names = [o.name for o in a.get_outputs()]
    feed = {"input_ids": ids[:, :ns], "position_ids": np.tile(np.arange(ns), (nb, 1)), **empty_cache(g, nb)}
    feeds = [dict(feed, attention_mask=np.ones((nb, ns), np.int64))]
    ra = dict(zip(names, a.run(None, feeds[0])))
    rb = dict(zip(names, b.run(None, feeds[0])))
    np.testing.assert_allclose(ra["logits"], rb["logits"], atol=2e-4)
    for t in range(ns, ns + nd):
        f = {"input_ids": ids[:, t:t + 1], "position_ids": np.full((nb, 1), t),
             "attention_mask": np.ones((nb, t + 1), np.int64)}
        fa = dict(f, **{k.replace("present", "past"): v for k, v in ra.items() if k.startswith("present")})
        fb = dict(f, **{k.replace("present", "past"): v for k, v in rb.items() if k.startswith("present")})
        ra, rb = dict(zip(names, a.run(None, fa))), dict(zip(names, b.run(None, fb)))
        np.testing.assert_allclose(ra["logits"], rb["logits"], atol=2e-4)


@pytest.mark.parametrize("scheme", ["w8a16", "w4a16", "fp8"])
def test_artifact_matches_the_dequantized_reference(mixtral, scheme):
    # accuracy level 0: onnxruntime's fused MatMulNBits of the linear layers keeps fp32 activations
    g, _ = _quantized(mixtral, scheme=scheme, ort_accuracy_level=0)
    model = to_model(g)
    inits = {i.name for i in model.graph.initializer}
    dq = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    for w in _expert_weights(g):
        assert w not in inits and f"{w}.q" in inits           # codes, not the float weight, are stored
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in dq[w].attribute}
        assert attrs["axis"] == 1 and attrs["block_size"] == (128 if scheme == "w4a16" else
                                                              g.params[w].type.shape[1])
    ref = g.copy()
    for p in ref.params.values():      # the same (dequantized) values as plain float initializers
        p.annotations.pop("quant_data", None)
        p.annotations.pop("weight_format", None)
    vocab = model_cfg("mixtral_tiny")["config"]["vocab_size"]
    sess = make_session(model)
    _same_steps(sess, _Reference(ref, vocab).sess, g, vocab)
    if scheme != "fp8":    # (FP8's dynamic per-tensor activation scale depends on the rows run together)
        assert_prefill_decode_match(_Reference(ref, vocab), g, sess, tol=2e-4)
    if scheme == "fp8":
        assert any(n.op == "MoEMatMul" and "activation_quant" in n.annotations for n in g)
    # and it really is quantized: the float model's logits differ
    fp = _Reference(mixtral, vocab)
    import torch
    ids = torch.randint(0, vocab, (2, 9), generator=torch.Generator().manual_seed(3))
    pos = torch.arange(9).expand(2, -1)
    assert np.abs(fp(ids, pos).numpy() - _Reference(ref, vocab)(ids, pos).numpy()).max() > 1e-4


def test_mixtral_8x7b_meta_expert_bytes_halve_under_fp8():
    """The real model (meta weights, cost only): FP8 per-channel experts store 1 byte per value +
    one fp16 scale per output channel of each expert — half of bf16, to the byte."""
    g = imported("mixtral_8x7b")
    e, h, i, layers = 8, 4096, 14336, 32
    ws = _expert_weights(g)
    before = sum(Classifier(g).weight_bytes(w) for w in ws)
    numel = layers * e * 3 * h * i
    assert before == 2 * numel
    q, res = _quantized(g, scheme="fp8")
    assert res.stats["cost_only"] == 1 and res.stats["expert_weights"] == 2 * layers
    after = sum(Classifier(q).weight_bytes(w) for w in ws)
    assert after == numel + layers * e * (2 * i + h) * 2
    assert after / before == pytest.approx(0.5, abs=1e-3)
    ops = [n for n in q if n.op == "MoEMatMul"]
    assert ops and all(n.annotations["compute_dtype"].dtype == "fp8" for n in ops)


def test_engine_moe_kernel_of_the_expert_format():
    """A runtime profile may name its MoE kernel per expert-weight format (``moe.<format>``);
    without one the format-blind ``moe`` kernel prices the quantized experts."""
    import dataclasses as dc
    from compiler.perf.cost import CostModel
    from compiler.perf.hardware import hardware_by_name
    from compiler.perf.runtime import FAMILIES, runtime_by_name
    g, _ = _quantized(imported("mixtral_tiny", weights="meta"), scheme="w4a16")
    rt = runtime_by_name("trtllm")
    cm = CostModel(g, hardware_by_name("h100_sxm"), rt)
    items = [it for it in cm.items if it.op == "MoEMatMul"]
    assert items and {it.moe_format for it in items} == {"w4a16"} and "moe.w4a16" in FAMILIES
    assert rt.family_kernel(items[0], "decode").family == "moe"
    k = dc.replace(rt.kernels["moe"], family="moe.w4a16", kernel="MoE plugin int4 weight-only")
    rt2 = dc.replace(rt, kernels={**rt.kernels, "moe.w4a16": k})
    assert rt2.family_kernel(items[0], "decode").kernel == "MoE plugin int4 weight-only"


def test_cli_w4a16_report_states_the_expert_bytes(tmp_path):
    """``rooftop model=mixtral_tiny quant=w4a16``: report.json's weight_formats give the experts'
    stored bytes from the config's arithmetic, the artifact check passes, exit 0."""
    import json
    from tests.conftest import run_cli
    r = run_cli("model=mixtral_tiny", "quant=w4a16", "progress=false", f"hydra.run.dir={tmp_path}")
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "report.json").read_text())
    groups = {w["group"]: w for w in rep["weight_formats"]}
    gu = groups["model.model.layers.*.mlp.experts.gate_up_proj.grouped"]
    dn = groups["model.model.layers.*.mlp.experts.down_proj.grouped"]
    for grp, numel in ((gu, 2 * E * H * 2 * I), (dn, 2 * E * I * H)):
        assert grp["values"] == numel and grp["stored_bytes"] == numel // 2 + numel // 128 * 4
        assert grp["format"]["dtype"] == "uint4" and grp["format"]["axis"] == 1
    q = rep["compression"]["quantization"]
    assert len(q["experts"]) == 4 and rep["compression"]["artifact_check"]["ok"] is True
