"""model.onnx carries its provenance in metadata_props: version, config hash, passes with stats,
hardware and predicted latencies — deterministic (same config, same bytes) and readable by
onnxruntime."""
from __future__ import annotations

import hashlib
import json

import onnx
import onnxruntime as ort
import pytest

from compiler.driver import provenance
from compiler.driver.pipeline import run
from tests.conftest import compose

BASE = ["model=gpt2_tiny", "pipeline=default", "report.html=false", "emit.verify=false"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for key, extra in (("a", []), ("b", []), ("c", ["workload.batch=2", "emit.external_data=true"])):
        d = tmp_path_factory.mktemp(key)
        cfg = compose(BASE + extra)
        out[key] = (cfg, run(cfg, str(d), show_progress=False), d)
    return out


def test_metadata_props_say_where_the_model_came_from(runs):
    cfg, report, d = runs["a"]
    meta = provenance.read(str(d / "model.onnx"))
    # the hash is sha256 of the resolved config the driver ran (stored beside it)
    assert meta["rooftop.config_hash"] == "sha256:" + hashlib.sha256(meta["rooftop.config"].encode()).hexdigest()
    stored = json.loads(meta["rooftop.config"])
    assert stored["model"]["name"] == "gpt2_tiny" and stored["workload"]["batch"] == cfg["workload"]["batch"]
    assert "hydra" not in stored and "progress" not in stored
    assert meta["rooftop.hardware"] == report["hardware"]["name"] == "a100_80g"
    assert meta["rooftop.model"] == "gpt2_tiny" and meta["rooftop.pipeline"] == "default"
    assert float(meta["rooftop.predicted.ttft_s"]) == report["latency"]["ttft_s"]
    assert float(meta["rooftop.predicted.tpot_s"]) == report["latency"]["tpot_s"]
    assert float(meta["rooftop.predicted.throughput_tok_s"]) == report["latency"]["throughput_tok_s"]
    passes = json.loads(meta["rooftop.passes"])
    assert [p["name"] for p in passes] == [p["name"] for p in report["passes"]]
    assert [p["stats"] for p in passes] == [p["stats"] for p in report["passes"]]
    assert any(p["changed"] and p["stats"] for p in passes)     # fusion did something on gpt2_tiny
    assert meta["rooftop.version"] and meta["rooftop.report_schema_version"] == report["schema_version"]
    # onnxruntime sees the same entries (what a user of the artifact reads)
    sess = ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_modelmeta().custom_metadata_map == meta


def test_same_config_same_bytes(runs):
    a, b = runs["a"][2] / "model.onnx", runs["b"][2] / "model.onnx"
    assert a.read_bytes() == b.read_bytes()


def test_other_config_other_hash_same_graph_and_external_data_untouched(runs):
    (_, _, da), (cfg_c, rep_c, dc) = runs["a"], runs["c"]
    ma, mc = provenance.read(str(da / "model.onnx")), provenance.read(str(dc / "model.onnx"))
    assert ma["rooftop.config_hash"] != mc["rooftop.config_hash"] == provenance.config_hash(json.loads(mc["rooftop.config"]))
    assert json.loads(mc["rooftop.workload"])["batch"] == 2
    assert rep_c["emit"]["external_data"] is True and (dc / "model.onnx.data").is_file()
    # the weights still resolve from model.onnx.data and the graph is the one of run a
    full_a = onnx.load_model(str(da / "model.onnx"))
    full_c = onnx.load_model(str(dc / "model.onnx"))
    for m in (full_a, full_c):
        del m.metadata_props[:]
    assert full_a.graph.node == full_c.graph.node
    assert [onnx.numpy_helper.to_array(t).tobytes() for t in full_a.graph.initializer] == \
           [onnx.numpy_helper.to_array(t).tobytes() for t in full_c.graph.initializer]
    sess = ort.InferenceSession(str(dc / "model.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_modelmeta().custom_metadata_map == mc


def test_no_model_no_stamp(tmp_path):
    assert provenance.stamp(str(tmp_path), {}, {"emit": {"emitted": False}}) is None
    assert not any(tmp_path.iterdir())
