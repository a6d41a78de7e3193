"""The accuracy stage (compiler/backend/accuracy.py) and quant= / sparsity= through the command line:
metrics against hand-computed values, MiniLM with its real weights, report sections, gates."""
from __future__ import annotations

import json

import numpy as np
import pytest

from compiler.backend import accuracy
from compiler.errors import ConfigError
from tests.conftest import run_cli


def test_decoder_metrics_by_hand():
    ref = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3]]))
    art = np.log(np.array([[0.6, 0.3, 0.1], [0.5, 0.1, 0.4], [0.3, 0.4, 0.3]]))
    ids = np.array([0, 2, 1, 0])                       # targets of positions 0..2: 2, 1, 0
    m = accuracy.decoder_metrics(ref, art, ids)
    assert m["top1"] == pytest.approx(2 / 3)
    kl0 = 0.7 * np.log(0.7 / 0.6) + 0.2 * np.log(0.2 / 0.3)
    kl1 = 0.1 * np.log(0.1 / 0.5) + 0.8 * np.log(0.8 / 0.4)
    assert m["kl"] == pytest.approx((kl0 + kl1 + 0) / 3)
    assert m["nll_ref"] == pytest.approx(-(np.log(0.1) + np.log(0.1) + np.log(0.3)))
    assert m["nll_art"] == pytest.approx(-(np.log(0.1) + np.log(0.1) + np.log(0.3)))
    assert m["tokens"] == 3


def test_embedding_cosine_of_mean_pool():
    a = np.array([[1.0, 0.0], [1.0, 2.0]])
    assert accuracy.embedding_cosine(a, a * 3) == pytest.approx(1.0)
    assert accuracy.embedding_cosine(a, np.array([[0.0, 1.0], [0.0, 1.0]])) == pytest.approx(1 / np.sqrt(2))


def test_text_splits_are_disjoint_and_shipped_text_is_real(tmp_path):
    paras = accuracy.load_paragraphs()
    assert len(paras) >= 20 and sum(map(len, paras)) > 4000
    cal, ev = accuracy.split(paras, "calibration"), accuracy.split(paras, "evaluation")
    assert not set(cal) & set(ev) and len(cal) + len(ev) == len(paras)
    bad = tmp_path / "one.txt"
    bad.write_text("only one line\n")
    with pytest.raises(ConfigError, match="at least 2"):
        accuracy.load_paragraphs(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        accuracy.load_paragraphs(tmp_path / "missing.txt")


def test_gate_without_measurement_is_a_config_error():
    with pytest.raises(ConfigError, match="no accuracy was measured"):
        accuracy.gate_checks({"min_accuracy": 0.9}, None)
    assert accuracy.gate_checks({}, None) == []


def _report(path):
    return json.loads((path / "report.json").read_text())


def test_minilm_w8a8_real_weights_cosine(tmp_path):
    """All-MiniLM-L6-v2 (real weights, its tokenizer): W8A8 dynamic keeps embedding cosine ≥ 0.99
    on the evaluation text, and the artifact runs on onnxruntime's integer kernels."""
    r = run_cli("model=minilm", "quant=w8a8", "hardware=h200", "accuracy.samples=6", "report.html=false", f"hydra.run.dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-2000:]
    rep = _report(tmp_path)
    acc = rep["accuracy"]
    assert acc["measured"] and acc["metric"] == "embedding_cosine" and acc["tokenizer"] == "model"
    assert acc["samples"] == 6 and len(acc["distribution"]["per_sample"]) == 6
    assert 0.99 <= acc["value"] < 1.0 and acc["drop"] == pytest.approx(1.0 - acc["value"])
    q = rep["compression"]["quantization"]
    assert q["scheme"] == "w8a8" and q["activations"] == "dynamic"
    rows = [r for r in rep["weight_formats"] if r["format"]["dtype"] == "int8"]
    assert rows and all(r["stored_bytes"] < r["dense_bytes"] / 3.9 for r in rows)


def test_gate_on_accuracy_exits_3_with_report(tmp_path):
    r = run_cli("model=llama_tiny", "quant=w4a16", "hardware=h200", "accuracy.samples=2", "accuracy.seq_len=32",
                "gate.min_accuracy=0.9999", "report.html=false", f"hydra.run.dir={tmp_path}")
    assert r.returncode == 3, r.stderr[-2000:]
    assert "gate.min_accuracy" in r.stderr
    rep = _report(tmp_path)
    assert rep["accuracy"]["value"] < 0.9999 and (tmp_path / "model.onnx").exists()


def test_meta_model_is_cost_only(tmp_path):
    r = run_cli("model=llama2_7b", "pipeline=none", "quant=w4a16", "sparsity=nm", "hardware=h200",
                "report.html=false", f"hydra.run.dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-2000:]
    rep = _report(tmp_path)
    assert rep["accuracy"] == {"measured": False, "reason": rep["compression"]["note"]}
    assert rep["compression"]["cost_only"] and "no quantized artifact" in rep["compression"]["note"]
    assert not (tmp_path / "model.onnx").exists()
    # 4-bit weights: the memory follows the stored bytes
    q = [r for r in rep["weight_formats"] if r["format"].get("dtype") == "uint4"]     # w4a16 default: + zero point
    assert q and all(3.9 < r["bits_per_value"] < 4.6 for r in q)
    dec = rep["compression"]["sparsity"]["decisions"]
    assert dec and all("predicted_payoff_s" in d and "reason" in d for d in dec)


def test_bad_quant_group_exits_2(tmp_path):
    r = run_cli("model=llama_tiny", "quant=w4a16", "quant.method=smoothquant", "report.html=false", f"hydra.run.dir={tmp_path}")
    assert r.returncode == 2 and "smoothquant" in r.stderr
    assert not (tmp_path / "model.onnx").exists()
    r = run_cli("model=llama_tiny", "quant=w5a16", "report.html=false", f"hydra.run.dir={tmp_path}")
    assert r.returncode == 2 and "w4a16" in r.stderr
