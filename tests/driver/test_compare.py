"""``rooftop compare``: identical reports pass, injected regressions (time, bytes, throughput,
memory, accuracy, one op class) are flagged with exit 3, small or favourable changes pass, and bad
input exits 2 with one paragraph."""
from __future__ import annotations

import copy
import json

import pytest

from compiler.driver.compare import compare_reports, main
from tests.conftest import run_cli


def _write(tmp_path, name, doc):
    p = tmp_path / name
    p.mkdir(exist_ok=True)
    (p / "report.json").write_text(json.dumps(doc))
    return str(p / "report.json")


def _slow_class(doc, phase, cls, factor):
    """Scale one op class's time in a phase and carry it into the phase and latency totals."""
    ph = doc["phases"][phase]
    extra = 0.0
    for o in ph["ops"]:
        if o["class"] == cls:
            extra += o["time_s"] * (factor - 1)
            o["time_s"] *= factor
    ph["time_s"] += extra
    ph["time_by_class_s"][cls] *= factor
    if phase == "decode":
        doc["latency"]["tpot_s"] += extra
    return extra


def test_identical_pair_passes(tiny_report, tmp_path, capsys):
    rep, _ = tiny_report
    a, b = _write(tmp_path, "old", rep), _write(tmp_path, "new", rep)
    assert main([a, b]) == 0
    out = capsys.readouterr().out
    assert "no regression beyond the tolerance of 5.0%" in out
    assert "class decode/gemm.time_s" in out and "latency.tpot_s" in out


def test_injected_regression_is_flagged_by_class_and_phase(tiny_report, tmp_path, capsys):
    rep, _ = tiny_report
    new = copy.deepcopy(rep)
    extra = _slow_class(new, "decode", "gemm", 1.5)
    rel = extra / rep["phases"]["decode"]["time_s"]
    assert rel > 0.05                       # the injection is beyond the default tolerance
    a, b = _write(tmp_path, "old", rep), _write(tmp_path, "new", new)
    js = tmp_path / "diff.json"
    assert main([a, b, "--json", str(js)]) == 3
    out = capsys.readouterr().out
    assert "REGRESSION" in out
    d = json.loads(js.read_text())
    assert d["exit_code"] == 3
    assert set(d["regressions"]) == {"class decode/gemm.time_s", "phase decode.time_s", "latency.tpot_s"}
    row = next(r for r in d["rows"] if r["key"] == "phase decode.time_s")
    assert row["rel"] == pytest.approx(rel)
    # a looser tolerance accepts the same change
    assert main([a, b, "--tolerance", str(rel * 1.01)]) == 0


def test_small_and_favourable_changes_pass(tiny_report, tmp_path):
    rep, _ = tiny_report
    faster = copy.deepcopy(rep)
    _slow_class(faster, "prefill", "gemm", 0.5)        # an improvement is never a regression
    faster["latency"]["ttft_s"] = faster["phases"]["prefill"]["time_s"]
    assert compare_reports(rep, faster).regressions == []
    slower = copy.deepcopy(rep)
    for k in ("ttft_s", "tpot_s", "e2e_s"):
        slower["latency"][k] *= 1.03
    assert compare_reports(rep, slower, 0.05).regressions == []
    assert {r.key for r in compare_reports(rep, slower, 0.01).regressions} == {
        "latency.ttft_s", "latency.tpot_s", "latency.e2e_s"}


def test_a_sliver_class_may_double_but_a_big_shift_between_classes_is_named(tiny_report):
    rep, _ = tiny_report
    ph = rep["phases"]["decode"]
    by = ph["time_by_class_s"]
    small = min(by, key=by.get)
    factor = 1 + 0.04 * ph["time_s"] / by[small]        # the class grows by 4 % of the phase...
    assert factor > 1.05                                  # ...which is more than 5 % of the class
    new = copy.deepcopy(rep)
    _slow_class(new, "decode", small, factor)
    flagged = {r.key for r in compare_reports(rep, new, 0.05).regressions}
    assert f"class decode/{small}.time_s" not in flagged
    # one class +40 % of the phase, another -40 %: the total is unchanged, the class is named
    big = max(by, key=by.get)
    other = sorted(by, key=by.get)[-2]
    new = copy.deepcopy(rep)
    shift = 0.4 * ph["time_s"]
    _slow_class(new, "decode", big, 1 + shift / by[big])
    _slow_class(new, "decode", other, 1 - min(shift, 0.99 * by[other]) / by[other])
    flagged = {r.key for r in compare_reports(rep, new, 0.05).regressions}
    assert f"class decode/{big}.time_s" in flagged


@pytest.mark.parametrize("path,factor,key", [
    ("latency.throughput_tok_s", 0.9, "latency.throughput_tok_s"),     # higher is better
    ("memory.total_bytes", 1.2, "memory.total_bytes"),
    ("capacity.max_batch", 0.5, "capacity.max_batch"),
    ("phases.prefill.bytes", 1.1, "phase prefill.bytes"),
])
def test_each_gated_metric(tiny_report, path, factor, key):
    rep, _ = tiny_report
    new = copy.deepcopy(rep)
    d = new
    *head, last = path.split(".")
    for k in head:
        d = d[k]
    d[last] = type(d[last])(d[last] * factor)
    assert [r.key for r in compare_reports(rep, new).regressions] == [key]


def test_accuracy_is_compared_when_both_measured_it(tiny_report):
    rep, _ = tiny_report
    old, new = copy.deepcopy(rep), copy.deepcopy(rep)
    old["accuracy"] = {"metric": "top1_agreement", "value": 0.98, "reference": 1.0, "drop": 0.02}
    new["accuracy"] = {"metric": "top1_agreement", "value": 0.90, "reference": 1.0, "drop": 0.10}
    c = compare_reports(old, new)
    assert [r.key for r in c.regressions] == ["accuracy.top1_agreement"]
    new["accuracy"]["value"] = 0.97
    assert compare_reports(old, new).regressions == []
    del new["accuracy"]
    c = compare_reports(old, new)
    assert c.regressions == [] and any("accuracy is only measured in the old report" in n for n in c.notes)


def test_different_hardware_is_noted(tiny_report):
    rep, _ = tiny_report
    new = copy.deepcopy(rep)
    new["hardware"]["name"] = "h100_sxm"
    assert any("different hardware" in n for n in compare_reports(rep, new).notes)


def test_bad_input_exits_2_with_one_paragraph(tiny_report, tmp_path, capsys):
    rep, out = tiny_report
    good = str(out / "report.json")
    (tmp_path / "notjson.json").write_text("{ nope")
    (tmp_path / "other.json").write_text(json.dumps({"name": "something else"}))
    cases = [([good, str(tmp_path / "missing.json")], "does not exist"),
             ([str(tmp_path / "notjson.json"), good], "is not a JSON file"),
             ([good, str(tmp_path / "other.json")], "is not a rooftop report"),
             ([good, good, "--tolerance", "five"], "--tolerance"),
             ([good], "required")]
    for argv, msg in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert msg in err
    # through the console entry point (compiler/driver/app.py dispatch), directories accepted
    r = run_cli("compare", str(out), good, timeout=120)
    assert r.returncode == 0 and "no regression" in r.stdout, r.stderr
    r = run_cli("compare", str(out), str(tmp_path / "nowhere"), timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "does not exist" in r.stderr
