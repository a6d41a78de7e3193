"""Every run ends well: every example of the robustness issue as a named regression
test, through the command (compiler.driver.app.cli in this process — the console entry point
without sys.exit — and a few real subprocesses), each checked against the whole contract
(tests/driver/contract.py): exit code, one paragraph, no traceback, nothing left on exit 2, the
report kept on 3 and 4. Where a message suggests a value or a command, the test runs it."""
from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli
from tests.driver.contract import (assert_contract, calibration_corpus, cli_run, config_dir_corpus, onnx_corpus,
                                   subprocess_env, tree)

CHEAP = ("model.weights=meta", "emit.enabled=false", "report.html=false", "progress=false",
         "workload.prompt_len=16", "workload.gen_len=2")
H100 = ROOT / "compiler/perf/calibration/data/h100_sxm.json"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return {"onnx": onnx_corpus(root / "onnx"), "conf": config_dir_corpus(root / "conf"),
            "calib": calibration_corpus(root / "calib", H100)}


def _default_dir_run(tmp_path, *args) -> tuple:
    """Run with Hydra's default, timestamped run directory (outputs/… under a fresh cwd)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    before = tree(cwd)
    r = cli_run(*args, cwd=cwd)
    return r, cwd, before


# =============================================================================================
# 1. a run directory left behind on exit 2: nothing is, wherever the error is found


ONNX_ERRORS = ["missing", "directory", "empty", "truncated", "not_onnx", "unsupported_op", "unsafe_external_data",
               "short_data_file", "json", "yaml", "lfs_pointer"]


@pytest.mark.parametrize("name", ONNX_ERRORS)
def test_every_model_onnx_file_error_leaves_no_directory(name, corpus, tmp_path):
    r, cwd, before = _default_dir_run(tmp_path, "model=onnx", f"model.path={corpus['onnx'][name]}", "progress=false")
    assert r.code == 2, r.err[-2000:]
    assert_contract(r, None, before=before, root=cwd)
    assert tree(cwd) == []          # not even outputs/


@pytest.mark.parametrize("args, words", [
    (["workload.prompt_len=100000"], "positions"),
    (["sparsity=nm", "sparsity.n=5", "sparsity.m=4"], "sparsity.n=5"),
    (["quant=w4a16", "quant.group_size=0"], "quant.group_size=0"),
    (["workload.prefill_chunk=0"], "workload.prefill_chunk=0"),
    (["kv.max_model_len=8"], "kv.max_model_len=8"),
    (["speculative.draft_model=llama_tiny_draft", "speculative.gamma=0"], "speculative.gamma"),
    (["speculative.draft_model=self", "speculative.acceptance=1.5"], "speculative.acceptance"),
    (["speculative.draft_model=nope"], "speculative.draft_model='nope'"),
    (["early_exit=layers", "early_exit.layers=[99]", "early_exit.probabilities=[0.5]"], "early_exit.layers"),
    (["early_exit=layers", "early_exit.layers=[1]", "early_exit.probabilities=[2.0]"], "early_exit.probabilities"),
    (["moe.routing=zipf"], "moe.routing"),
    (["model=mixtral_tiny", "moe.routing=zipf", "moe.skew=-1"], "moe.skew"),
    (["hardware.memory_gib=-1"], "memory_gib"),
    (["hardware.peak_tflops.fp16=0"], "fp16"),
    (["model.config.num_hidden_layers=0"], "num_hidden_layers=0"),
    (["model.config.num_key_value_heads=3"], "num_key_value_heads=3"),
    (["model.config.vocab_size=-4"], "vocab_size"),
    (["model.attn_implementation=true"], "model.attn_implementation='True'"),   # found by the fuzzer
])
def test_value_errors_exit_2_before_the_run_directory_exists(args, words, tmp_path, monkeypatch):
    import compiler.driver.app as app
    monkeypatch.setattr(app, "RunDir", None)          # found in precheck: no directory is ever made
    r, cwd, before = _default_dir_run(tmp_path, *CHEAP, *args)
    assert r.code == 2, r.err[-2000:]
    assert words in r.error
    assert_contract(r, None, before=before, root=cwd)


def test_a_sweep_with_one_missing_model_file_is_refused_before_it_starts(corpus, tmp_path):
    good, missing = corpus["onnx"]["good"], corpus["onnx"]["missing"]
    r, cwd, _ = _default_dir_run(tmp_path, "-m", "model=onnx", f"model.path={good},{missing}", "emit.enabled=false")
    assert r.code == 2 and r.error.startswith("rooftop: error: sweep point model.path=") and "does not exist" in r.error
    assert tree(cwd) == []


def test_a_sweep_whose_every_point_fails_late_leaves_nothing(corpus, tmp_path):
    bad = ",".join(str(corpus["onnx"][n]) for n in ("truncated", "not_onnx"))
    r, cwd, _ = _default_dir_run(tmp_path, "-m", "model=onnx", f"model.path={bad}", "emit.enabled=false")
    assert r.code == 2 and "Traceback" not in r.err
    assert tree(cwd) == []


@pytest.mark.parametrize("flags", [["--help"], ["-h"], ["--version"], ["--cfg=job"], ["--cfg", "job"], ["-c", "job"],
                                   ["--info", "defaults"], ["--hydra-help"]])
def test_help_version_cfg_and_info_create_no_directory(flags, tmp_path):
    r, cwd, _ = _default_dir_run(tmp_path, *flags, "workload.batch=2")
    assert r.code == 0, r.err[-2000:]
    assert tree(cwd) == [] and "Traceback" not in r.err


def test_an_unknown_flag_is_one_paragraph_and_creates_no_directory(tmp_path):
    r, cwd, _ = _default_dir_run(tmp_path, "--bogus", "workload.batch=2")
    assert r.code == 2 and "--bogus" in r.error and "--cfg" in r.error
    assert tree(cwd) == [] and "usage:" not in r.err


def test_runs_started_in_the_same_second_get_their_own_directories(tmp_path):
    """The default folder is made atomically: the second of two runs that resolve the same
    timestamp takes <time>_1 (here both resolve it, as two runs in one second do)."""
    from compiler.driver.pipeline import RunDir
    path = tmp_path / "outputs" / "m" / "hw" / "2026-01-01_00-00-00"
    a, b = RunDir(str(path), unique=True).open(), RunDir(str(path), unique=True).open()
    assert a.path == str(path) and b.path == str(path) + "_1"
    b.close(keep=False)      # a failed run removes its own directory only
    a.close(keep=True)
    assert tree(tmp_path / "outputs") == ["m", "m/hw", "m/hw/2026-01-01_00-00-00"]


def test_two_concurrent_commands_both_succeed_in_distinct_directories(tmp_path):
    env = subprocess_env()
    cmd = [sys.executable, "-m", "compiler", *CHEAP]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    dirs = sorted(p.parent for p in (tmp_path / "outputs").rglob("report.json"))
    assert len(dirs) == 2
    for out, err in outs:            # no library noise: only rooftop's own lines on stderr
        assert all(ln.startswith(("rooftop", "[WARNING]")) for ln in err.splitlines() if ln.strip()), err


# =============================================================================================
# 2. tracebacks (exit 1) instead of exit 2


@pytest.mark.parametrize("name, words", [("not_json", "is not JSON"), ("no_samples", "holds no samples"),
                                          ("negative_time", "time_s=-1e-06"), ("nan_time", "time_s=nan"),
                                          ("a_list", "not a measurement file"), ("missing", "does not exist"),
                                          ("no_gemm", "gemm")])
def test_calibrate_bad_measurements_exit_2(name, words, corpus, tmp_path):
    out = tmp_path / "gpu.yaml"
    r = cli_run("calibrate", corpus["calib"][name], "--base-yaml", ROOT / "conf/hardware/h100_sxm.yaml", "--out", out)
    assert r.code == 2 and words in r.error and r.error.startswith("rooftop calibrate: error:")
    assert_contract(r, None)
    assert not out.exists()


@pytest.mark.parametrize("args, words", [
    (["--base-yaml", "BROKEN"], "cannot be read as YAML"),
    (["--base-yaml", "MISSING"], "file not found"),
    (["--base-yaml", "conf/hardware/h100_sxm.yaml", "--out", "/proc/rooftop/gpu.yaml"], "cannot be"),
    (["--base-yaml", "conf/hardware/h100_sxm.yaml", "--out", "DIR"], "is a directory"),
    (["--out", "x.yaml"], "--out needs --base-yaml"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
])
def test_calibrate_bad_flags_exit_2(args, words, tmp_path):
    (tmp_path / "broken.yaml").write_text("name: [x\n")
    subs = {"BROKEN": str(tmp_path / "broken.yaml"), "MISSING": str(tmp_path / "missing.yaml"), "DIR": str(tmp_path)}
    args = [subs.get(a, str(ROOT / a) if a.startswith("conf/") else a) for a in args]
    r = cli_run("calibrate", H100, *args)
    assert r.code == 2 and words in r.error, r.err
    assert_contract(r, None)


def test_yaml_syntax_error_in_a_config_dir_model_exits_2(corpus, tmp_path):
    r, cwd, before = _default_dir_run(tmp_path, "--config-dir", corpus["conf"], "model=syntax_error")
    assert r.code == 2 and "syntax_error.yaml, line" in r.error and "not valid YAML" in r.error
    assert_contract(r, None, before=before, root=cwd)


def test_num_hidden_layers_four_exits_2_and_its_example_value_runs(tmp_path):
    r = cli_run(*CHEAP, "model.config.num_hidden_layers=four", f"hydra.run.dir={tmp_path / 'a'}")
    assert r.code == 2 and "model.config.num_hidden_layers='four' is not a whole number" in r.error
    fix = re.search(r"e\.g\. (model\.config\.num_hidden_layers=\d+)", r.error).group(1)
    ok = cli_run(*CHEAP, fix, f"hydra.run.dir={tmp_path / 'b'}")
    assert ok.code == 0, ok.err[-2000:]


def test_heads_that_do_not_divide_the_hidden_size_exit_2_and_the_suggestion_runs(tmp_path):
    r = cli_run(*CHEAP, "model.config.num_attention_heads=3", f"hydra.run.dir={tmp_path / 'a'}")
    assert r.code == 2 and "not a multiple of the number of attention heads" in r.error
    fix = re.search(r"e\.g\. (model\.config\.num_attention_heads=\d+)", r.error).group(1)
    ok = cli_run(*CHEAP, fix, f"hydra.run.dir={tmp_path / 'b'}")
    assert ok.code == 0, ok.err[-2000:]


def test_a_search_with_zero_trials_exits_2_before_it_starts(tmp_path):
    r, cwd, before = _default_dir_run(tmp_path, "-m", "search=throughput", "hydra.sweeper.n_trials=0", *CHEAP)
    assert r.code == 2 and "hydra.sweeper.n_trials=0" in r.error
    assert_contract(r, None, before=before, root=cwd)


def test_an_internal_error_is_one_paragraph_exit_1_and_leaves_nothing(tmp_path, monkeypatch):
    import compiler.driver.pipeline as pipeline

    def broken(*a, **k):
        raise ZeroDivisionError("division by zero")
    monkeypatch.setattr(pipeline, "analyze", broken)
    r, cwd, _ = _default_dir_run(tmp_path, *CHEAP)
    assert r.code == 1 and "Traceback" not in r.err
    assert "internal error: ZeroDivisionError" in r.error and "rooftop bug" in r.error
    assert tree(cwd) == []


# =============================================================================================
# 3. advice that works: a test runs every suggestion


def test_draft_advice_is_computed_from_vocabularies_and_runs(tmp_path):
    r = cli_run(*CHEAP, "speculative.draft_model=gpt2", f"hydra.run.dir={tmp_path / 'a'}")
    assert r.code == 2 and "speculative.draft_model=gpt2 has a vocabulary of 50257" in r.error
    suggested = re.search(r"e\.g\. speculative\.draft_model=(\w+)", r.error).group(1)
    assert suggested == "llama_tiny_draft" and "tinyllama_1b" not in r.error and "llama3_1b" not in r.error
    ok = cli_run(*CHEAP, f"speculative.draft_model={suggested}", f"hydra.run.dir={tmp_path / 'b'}")
    assert ok.code == 0, ok.err[-2000:]
    assert json.loads((tmp_path / "b/report.json").read_text())["speculative"]["speedup"] > 0


def test_compatible_drafts_share_the_vocabulary_and_are_smaller():
    from compiler.driver.draft import _size, _vocab, compatible_drafts, load_model_config
    for target in ("llama2_7b", "llama3_8b", "llama_tiny", "gpt2"):
        t = load_model_config(target)
        for d in compatible_drafts(t):
            m = load_model_config(d)
            assert _vocab(m) == _vocab(t) and _size(m) < _size(t)
    assert compatible_drafts(load_model_config("llama2_7b"))[0] == "tinyllama_1b"
    assert compatible_drafts(load_model_config("llama3_8b")) == ["llama3_1b"]


def test_misspelled_model_config_key_is_not_told_to_add_itself(tmp_path):
    r = cli_run(*CHEAP, "model.config.hidden_sise=64", f"hydra.run.dir={tmp_path / 'a'}")
    assert r.code == 2 and "+model.config.hidden_sise" not in r.error
    fix = re.search(r"\(e\.g\. (model\.config\.\w+=\d+)\)", r.error).group(1)
    assert fix == "model.config.hidden_size=64"
    ok = cli_run(*CHEAP, fix, f"hydra.run.dir={tmp_path / 'b'}")
    assert ok.code == 0, ok.err[-2000:]


def test_a_declared_key_the_yaml_does_not_set_is_told_to_add_itself_and_that_runs(tmp_path):
    r = cli_run(*CHEAP, "model.config.attention_bias=true", f"hydra.run.dir={tmp_path / 'a'}")
    assert r.code == 2 and "+model.config.attention_bias=true" in r.error
    ok = cli_run(*CHEAP, "+model.config.attention_bias=true", f"hydra.run.dir={tmp_path / 'b'}")
    assert ok.code == 0, ok.err[-2000:]


def test_zero_layers_is_a_config_error_not_attention_fusion(tmp_path):
    r = cli_run(*CHEAP, "model.config.num_hidden_layers=0", f"hydra.run.dir={tmp_path / 'a'}")
    assert r.code == 2 and "at least one layer" in r.error
    assert "sdpa" not in r.error and "fusion" not in r.error and "attention" not in r.error
    fix = re.search(r"e\.g\. (model\.config\.num_hidden_layers=\d+)", r.error).group(1)
    assert cli_run(*CHEAP, fix, f"hydra.run.dir={tmp_path / 'b'}").code == 0


def test_a_sorce_typo_in_a_model_yaml_is_named_and_the_fix_runs(corpus, tmp_path):
    import yaml
    cheap = [a for a in CHEAP if not a.startswith("model.")]     # the YAML names no schema: no model.weights
    r = cli_run("--config-dir", corpus["conf"], "model=sorce_typo", *cheap, f"hydra.run.dir={tmp_path / 'a'}")
    assert r.code == 2 and "'model.sorce'" in r.error and "Did you mean model.source" in r.error
    assert "model.source=None" not in r.error and "sorce_typo.yaml" in r.error
    fixed = tmp_path / "conf/model"
    fixed.mkdir(parents=True)
    doc = yaml.safe_load((corpus["conf"] / "model/sorce_typo.yaml").read_text())
    doc["source"] = doc.pop("sorce")
    (fixed / "sorce_typo.yaml").write_text(yaml.safe_dump(doc))
    ok = cli_run("--config-dir", tmp_path / "conf", "model=sorce_typo", *cheap, f"hydra.run.dir={tmp_path / 'b'}")
    assert ok.code == 0, ok.err[-2000:]


def test_a_cnn_exported_with_dynamo_is_not_told_to_re_export_with_dynamo(corpus, tmp_path):
    r = cli_run("model=onnx", f"model.path={corpus['onnx']['cnn_pool']}", f"hydra.run.dir={tmp_path / 'a'}")
    assert r.code == 2 and "'Bernoulli'" in r.error and "node_bernoulli" in r.error
    assert "dynamo=True" not in r.error and "will not help" in r.error
    assert not (tmp_path / "a").exists()


def test_a_batch_that_does_not_fit_is_told_the_batch_that_does_and_that_fits(tmp_path):
    r = cli_run("model=llama2_7b", "hardware=a10", "emit.enabled=false", "report.html=false", "workload.batch=1000",
                f"hydra.run.dir={tmp_path / 'a'}")
    assert r.code == 0, r.err[-2000:]
    note = json.loads((tmp_path / "a/report.json").read_text())["capacity"]["note"]
    assert "quantize" not in note and "0.0 GB" not in note
    batch = int(re.search(r"workload\.batch=(\d+) \(capacity\.max_batch\)", note).group(1))
    ok = cli_run("model=llama2_7b", "hardware=a10", "emit.enabled=false", "report.html=false",
                 f"workload.batch={batch}", f"hydra.run.dir={tmp_path / 'b'}")
    rep = json.loads((tmp_path / "b/report.json").read_text())
    assert ok.code == 0 and rep["memory"]["fits_one_device"] and "note" not in rep["capacity"]
    assert rep["capacity"]["max_batch"] == batch


# =============================================================================================
# 4. late or missing checks


def test_an_accuracy_gate_above_1_exits_2_before_anything_runs(tmp_path, monkeypatch):
    import compiler.driver.app as app
    monkeypatch.setattr(app, "RunDir", None)
    t0 = time.perf_counter()
    r, cwd, before = _default_dir_run(tmp_path, "quant=w8a16", "gate.min_accuracy=1.5")
    assert r.code == 2 and "gate.min_accuracy=1.5" in r.error and time.perf_counter() - t0 < 30
    assert_contract(r, None, before=before, root=cwd)


def test_an_accuracy_gate_without_a_lossy_pass_exits_2_before_the_run(tmp_path, monkeypatch):
    import compiler.driver.app as app
    monkeypatch.setattr(app, "RunDir", None)
    r, _, _ = _default_dir_run(tmp_path, "gate.min_accuracy=0.9")
    assert r.code == 2 and "no lossy pass" in r.error


def test_context_shorter_than_the_prompt_is_refused(tmp_path):
    r, cwd, _ = _default_dir_run(tmp_path, *CHEAP, "workload.context_len=8")
    assert r.code == 2 and "workload.context_len=8 is shorter than workload.prompt_len=16" in r.error
    assert tree(cwd) == []


def test_compare_of_a_decoder_against_an_encoder_is_a_regression(tmp_path, tiny_report):
    from tests.driver.contract import cnn_model
    dec = tiny_report[1]
    enc = tmp_path / "enc"
    r = cli_run("model=onnx", f"model.path={cnn_model(tmp_path / 'cnn.onnx')}", "report.html=false",
                f"hydra.run.dir={enc}")
    assert r.code == 0, r.err[-2000:]
    c = cli_run("compare", dec, enc)
    assert c.code == 3, c.out
    assert "phase.decode" not in c.out or "REGRESSION" in c.out
    assert "missing from the new report" in c.out and "no regression" not in c.out
    assert "different kinds of model" in c.out
    assert cli_run("compare", dec, dec).code == 0


def test_ctrl_c_that_a_library_swallows_still_exits_130(tmp_path, monkeypatch):
    """An interrupt some code turns into another exception (or drops) is still an interrupt."""
    import compiler.driver.pipeline as pipeline
    real = pipeline.analyze

    def swallowing(*a, **k):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        except KeyboardInterrupt:
            pass                     # what a careless library does
        return real(*a, **k)
    monkeypatch.setattr(pipeline, "analyze", swallowing)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        pytest.skip("SIGINT is ignored in this process (a background job of a non-interactive shell)")
    r, cwd, _ = _default_dir_run(tmp_path, *CHEAP)
    assert r.code == 130 and "interrupted" in r.err
    assert tree(cwd) == []


def test_ctrl_c_during_a_multirun_exits_130_and_keeps_only_finished_points(tmp_path):
    env = subprocess_env()
    sweep = tmp_path / "sweep"
    p = subprocess.Popen([sys.executable, "-m", "compiler", "-m", "workload.batch=1,2,3,4,5,6", *CHEAP,
                          f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while not list(sweep.glob("*/point.json")) and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert p.poll() is None, "the sweep ended before it could be interrupted"
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "interrupted (Ctrl-C)" in err
    points = [d for d in sweep.iterdir() if d.is_dir() and d.name != ".hydra"]
    assert points and all((d / "point.json").is_file() and (d / "report.json").is_file() for d in points)
    assert len(points) < 6


# =============================================================================================
# 5. figures that agree with themselves and the model


def test_pipeline_none_costs_decode_as_recomputing_the_sequence(tmp_path):
    from compiler.analysis.phases import reserved_tokens  # noqa: F401  (the module under test)
    runs = {}
    for pl in ("none", "default"):
        r = cli_run("model=llama2_7b", "hardware=a6000", f"pipeline={pl}", "workload.prompt_len=2048",
                    "workload.gen_len=16", "report.html=false", f"hydra.run.dir={tmp_path / pl}")
        assert r.code == 0, r.err[-2000:]
        runs[pl] = json.loads((tmp_path / pl / "report.json").read_text())
    none, cached = runs["none"], runs["default"]
    assert none["latency"]["decode"] == "recompute" and none["phases"]["decode"]["point"] == {"B": 1, "S": 2049, "P": 0}
    # a recompute step costs about a prefill of the whole sequence, far more than a cached step
    assert none["latency"]["tpot_s"] > 10 * cached["latency"]["tpot_s"]
    assert none["latency"]["tpot_s"] >= none["latency"]["ttft_s"]
    assert none["memory"]["kv_bytes_per_token"] == 0 and "recomput" in none["model"]["import"]["kv_cache"]
    # its max batch fits with the activations of the longest recompute step
    cap, mem = none["capacity"], none["memory"]
    assert cap["max_batch"] < 221 and cap["max_batch"] > 0
    assert mem["activation_peak_bytes"] >= cached["memory"]["activation_peak_bytes"]


def test_contiguous_reservation_gives_one_capacity_answer(tmp_path):
    r = cli_run("model=llama2_7b", "hardware=a10", "kv=contiguous", "kv.max_model_len=4096", "emit.enabled=false",
                "report.html=false", f"hydra.run.dir={tmp_path}")
    assert r.code == 0, r.err[-2000:]
    rep = json.loads((tmp_path / "report.json").read_text())
    cap = rep["capacity"]
    assert cap["max_batch"] == cap["max_sequences"] == cap["kv"]["max_sequences"] == cap["kv"]["contiguous"]["max_sequences"]
    assert cap["max_batch"] == 5            # (24 GiB - 13.5 GB fp16 weights - reserve) / 2 GiB per 4096-token sequence = 5
    assert f"max batch {cap['max_batch']}" in r.out
    # the paged layout of the same report, by the same formula, holds more
    assert cap["kv"]["paged"]["max_sequences"] > cap["max_batch"]
    assert rep["memory"]["kv_tokens_reserved_per_sequence"] == 4096


def test_paged_capacity_is_the_same_answer_as_max_batch(tmp_path):
    r = cli_run("model=llama2_7b", "hardware=a10", "kv=paged", "emit.enabled=false", "report.html=false",
                "workload.prompt_len=500", "workload.gen_len=100", f"hydra.run.dir={tmp_path}")
    assert r.code == 0, r.err[-2000:]
    cap = json.loads((tmp_path / "report.json").read_text())["capacity"]
    assert cap["max_batch"] == cap["max_sequences"] == cap["kv"]["paged"]["max_sequences"]


def test_verified_report_md_states_what_was_verified(tmp_path):
    r = cli_run("workload.prompt_len=32", "workload.gen_len=4", "report.html=false", f"hydra.run.dir={tmp_path}")
    assert r.code == 0, r.err[-2000:]
    line = next(ln for ln in (tmp_path / "report.md").read_text().splitlines() if ln.startswith("- **ONNX**"))
    assert "None" not in line
    assert "against torch eager" in line and "prefill of 2 × 7 tokens, then 2 decode steps" in line


def test_a_cnn_is_reported_in_inputs_not_tokens(corpus, tmp_path):
    r = cli_run("model=onnx", f"model.path={corpus['onnx']['cnn']}", f"hydra.run.dir={tmp_path}")
    assert r.code == 0, r.err[-2000:]
    rep = json.loads((tmp_path / "report.json").read_text())
    lat = rep["latency"]
    assert lat["unit"] == "inputs" and lat["throughput_tok_s"] is None
    assert lat["throughput_inputs_s"] == pytest.approx(rep["workload"]["batch"] / lat["batch_latency_s"])
    assert "inputs/s" in r.out and "tok" not in r.out.split("->")[0]
    summary = (tmp_path / "report.md").read_text().split("## Roofline")[0]
    assert "tokens" not in summary and "tok/s" not in summary and "inputs/s" in summary
    assert rep["emit"]["verified"]["passed"] is True


def test_an_mlp_module_is_reported_in_inputs(tmp_path):
    import yaml
    (tmp_path / "conf/model").mkdir(parents=True)
    (tmp_path / "conf/model/mlp.yaml").write_text(yaml.safe_dump({
        "defaults": ["module_schema", "_self_"], "name": "mlp", "source": "module", "task": "custom",
        "weights": "random", "module": {"_target_": "torch.nn.Linear", "in_features": 16, "out_features": 8},
        "inputs": {"input": {"shape": ["B", 16], "dtype": "float32"}}, "outputs": ["y"]}))
    r = cli_run("--config-dir", tmp_path / "conf", "model=mlp", "report.html=false", f"hydra.run.dir={tmp_path / 'run'}")
    assert r.code == 0, r.err[-2000:]
    rep = json.loads((tmp_path / "run/report.json").read_text())
    lat = rep["latency"]
    assert lat["unit"] == "inputs" and lat["throughput_tok_s"] is None and "inputs/s" in r.out
    assert all(row["throughput_tok_s"] is None for row in rep["throughput_vs_batch"])


# =============================================================================================
# 6. rough edges


def test_version_is_rooftops():
    from compiler.driver.provenance import version
    r = cli_run("--version")
    assert r.code == 0 and r.out.strip() == f"rooftop {version()}" and "Hydra" not in r.out


@pytest.mark.parametrize("flags", [["--cfg", "job"], ["-c", "job"], ["--cfg=job"], ["workload.batch=3", "--cfg", "job"]])
def test_hydra_flags_work_in_both_spellings_and_anywhere(flags):
    r = cli_run(*flags, "workload.gen_len=7")
    assert r.code == 0, r.err
    assert "gen_len: 7" in r.out and "workload:" in r.out


def test_calibrate_out_is_world_readable_and_named_after_its_file(tmp_path):
    from compiler.perf.hardware import load_hardware_file
    out = tmp_path / "conf/hardware/my_h100.yaml"
    out.parent.mkdir(parents=True)
    r = cli_run("calibrate", H100, "--base-yaml", ROOT / "conf/hardware/h100_sxm.yaml", "--out", out)
    assert r.code == 0, r.err
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~mask
    assert load_hardware_file(out).name == "my_h100"
    ok = cli_run("--config-dir", tmp_path / "conf", "hardware=my_h100", *CHEAP, f"hydra.run.dir={tmp_path / 'run'}")
    assert ok.code == 0, ok.err
    assert json.loads((tmp_path / "run/report.json").read_text())["hardware"]["name"] == "my_h100"


def test_artifacts_get_the_usual_file_mode(tmp_path):
    r = cli_run("model=gpt2_tiny", "emit.external_data=true", "workload.prompt_len=16", "workload.gen_len=2",
                "report.html=false", f"hydra.run.dir={tmp_path}")
    assert r.code == 0, r.err[-2000:]
    mask = os.umask(0o022)
    os.umask(mask)
    for f in ("model.onnx", "model.onnx.data", "report.json", "report.md"):
        assert stat.S_IMODE((tmp_path / f).stat().st_mode) == 0o666 & ~mask, f


def test_stderr_holds_only_rooftops_own_lines(corpus, tmp_path):
    """No onnxruntime (coloured) log lines, no transformers progress bars or warnings: every
    stderr line is rooftop's, on a success and on an import failure (real subprocesses)."""
    for args in (["model=gpt2_tiny", "workload.prompt_len=16", "workload.gen_len=2", "report.html=false"],
                 ["model=onnx", f"model.path={corpus['onnx']['short_data_file']}"]):
        r = run_cli(*args, f"hydra.run.dir={tmp_path / str(len(args))}")
        assert r.returncode in (0, 2)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert all(ln.startswith(("rooftop", "[WARNING]")) for ln in lines), r.stderr[-3000:]
        assert "\x1b[" not in r.stderr
