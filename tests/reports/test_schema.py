"""The JSON Schema shipped for report.json / sweep.json: it accepts what rooftop writes, rejects
what breaks the output contract (missing keys, wrong types or units), and stays open to
extensions. Every report any test writes is also checked (tests/conftest.py autouse fixture)."""
from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path

import jsonschema
import pytest

from compiler import schema

ROOT = Path(__file__).resolve().parents[2]


def test_schemas_are_valid_draft_2020_12_and_shipped_as_package_data():
    for name in schema.SCHEMAS:
        s = schema.load(name)
        assert s["$schema"].endswith("2020-12/schema")
        jsonschema.Draft202012Validator.check_schema(s)
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())
    st = py["tool"]["setuptools"]
    assert "compiler.schema" in st["packages"]
    assert any(p.endswith(".schema.json") for p in st["package-data"]["compiler.schema"])
    assert any(d.startswith("jsonschema") for d in py["project"]["dependencies"])


def test_a_real_report_validates_and_the_file_on_disk_too(tiny_report):
    report, out = tiny_report
    assert schema.errors(report) == []
    assert schema.errors(json.loads((out / "report.json").read_text())) == []


CONTRACT = ["schema_version", "model", "hardware", "workload", "passes", "phases", "memory", "capacity",
            "latency", "workload.batch", "workload.prompt_len", "workload.gen_len", "workload.context_len",
            "phases.prefill", "phases.decode", "phases.prefill.time_s", "phases.decode.flops",
            "phases.decode.bytes", "phases.prefill.ops", "memory.weights_bytes", "memory.kv_cache_bytes",
            "memory.kv_bytes_per_token", "memory.activation_peak_bytes", "capacity.max_batch",
            "latency.ttft_s", "latency.tpot_s", "latency.e2e_s", "latency.throughput_tok_s"]


def _drop(doc, dotted):
    d = doc
    *head, last = dotted.split(".")
    for k in head:
        d = d[k]
    del d[last]


@pytest.mark.parametrize("key", CONTRACT)
def test_every_contract_key_is_required(tiny_report, key):
    doc = copy.deepcopy(tiny_report[0])
    _drop(doc, key)
    problems = schema.errors(doc)
    assert problems and any(key.split(".")[-1] in p for p in problems), problems


@pytest.mark.parametrize("key", ["name", "op", "flops", "bytes", "intensity", "attainable_flops", "bound", "time_s"])
def test_every_op_row_key_is_required(tiny_report, key):
    doc = copy.deepcopy(tiny_report[0])
    del doc["phases"]["decode"]["ops"][3][key]
    assert any(p.startswith("/phases/decode/ops/3") for p in schema.errors(doc))


@pytest.mark.parametrize("path,value", [
    ("latency.ttft_s", "1.2 ms"),          # a unit smuggled into a number
    ("latency.tpot_s", -1e-3),             # negative time
    ("memory.weights_bytes", "4 GB"),
    ("capacity.max_batch", 3.5),           # a batch is a whole number
    ("workload.batch", 0),
    ("phases.prefill.bound", "io"),
    ("passes", {"remove_noops": {}}),
    ("schema_version", 1.0),
    ("accuracy", {"metric": "top1_agreement", "value": "high"}),
])
def test_wrong_types_and_units_are_rejected(tiny_report, path, value):
    doc = copy.deepcopy(tiny_report[0])
    d = doc
    *head, last = path.split(".")
    for k in head:
        d = d[k]
    d[last] = value
    with pytest.raises(schema.SchemaError) as e:
        schema.validate(doc)
    assert "/" + path.replace(".", "/") in str(e.value)


def test_extensions_are_allowed_and_typed_when_named(tiny_report):
    doc = copy.deepcopy(tiny_report[0])
    doc["brand_new_section"] = {"anything": [1, 2]}
    doc["latency"]["p99_ttft_s"] = 0.1
    doc["phases"]["verify"] = copy.deepcopy(doc["phases"]["decode"])
    doc["accuracy"] = {"metric": "top1_agreement", "value": 0.98, "reference": 1.0, "drop": 0.02, "samples": 4}
    doc["speculative"] = {"expected_tokens_per_step": 2.5, "draft_s": 1e-3, "verify_s": 2e-3, "tpot_s": 1e-3, "speedup": 1.9}
    assert schema.errors(doc) == []
    doc["speculative"]["speedup"] = "2x"
    assert schema.errors(doc) == ["/speculative/speedup: '2x' is not of type 'number'"]


def test_encoders_may_lack_decode_but_generative_models_may_not(tiny_report):
    doc = copy.deepcopy(tiny_report[0])
    del doc["phases"]["decode"]
    doc["latency"]["tpot_s"] = None
    assert len(schema.errors(doc)) == 2          # decode required, tpot must be a number
    doc["latency"]["kind"] = "encoder"
    assert schema.errors(doc) == []


def test_not_a_report_at_all():
    assert schema.errors({"hello": "world"})
    assert schema.errors([1, 2, 3]) == ["/: [1, 2, 3] is not of type 'object'"]


def test_the_suite_wide_check_fails_on_a_broken_report(tiny_report):
    from tests.conftest import assert_valid_report
    doc = copy.deepcopy(tiny_report[0])
    doc["memory"]["kv_cache_bytes"] = "lots"
    with pytest.raises(AssertionError, match="/memory/kv_cache_bytes"):
        assert_valid_report(doc)
