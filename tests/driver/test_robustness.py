"""Every run ends well: a test per kind of bad input and per crafted model file,
through the CLI — exit code, one message line, no traceback, nothing partial, report kept where
it should be."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler.driver.pipeline import OUTPUT_FILES
from tests.conftest import ROOT, run_cli
from tests.driver.contract import cli_completed

OPSET = [helper.make_opsetid("", 23)]


def _artifacts(d: Path) -> list[str]:
    return sorted(f for f in OUTPUT_FILES if (d / f).exists())


def _one_error(r) -> str:
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("rooftop: error:")]
    assert len(lines) == 1, r.stderr[-3000:]
    return lines[0]


def _save(graph, path: Path, **kw) -> Path:
    m = helper.make_model(graph, opset_imports=kw.pop("opsets", OPSET), ir_version=10)
    onnx.save(m, str(path), **kw)
    return path


# ---------------------------------------------------------------------------------------------
# crafted files


def token_encoder(path: Path, vocab: int = 10, types: int = 2, hidden: int = 8) -> Path:
    """A BERT-like legacy export in miniature: input_ids + token_type_ids (+ attention_mask)
    through embedding tables of 10 and 2 rows — a vocabulary far under 64."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((vocab, hidden)).astype(np.float32), "word_emb"),
             numpy_helper.from_array(rng.standard_normal((types, hidden)).astype(np.float32), "type_emb"),
             numpy_helper.from_array(rng.standard_normal((hidden, hidden)).astype(np.float32), "proj")]
    nodes = [helper.make_node("Gather", ["word_emb", "input_ids"], ["we"]),
             helper.make_node("Gather", ["type_emb", "token_type_ids"], ["te"]),
             helper.make_node("Add", ["we", "te"], ["emb"]),
             helper.make_node("MatMul", ["emb", "proj"], ["last_hidden_state"])]
    ins = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
           for n in ("input_ids", "token_type_ids")]
    out = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", hidden])
    return _save(helper.make_graph(nodes, "tok", ins, [out], inits), path)


def _ids_graph(nodes, inits=(), extra_inputs=(), outputs=None, name="g"):
    ins = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]), *extra_inputs]
    outs = outputs or [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence"])]
    return helper.make_graph(nodes, name, ins, outs, list(inits))


def custom_domain_model(path: Path) -> Path:
    g = _ids_graph([helper.make_node("Cast", ["input_ids"], ["x"], to=TensorProto.FLOAT),
                    helper.make_node("FancyGelu", ["x"], ["y"], domain="com.example", name="fancy_0")])
    return _save(g, path, opsets=OPSET + [helper.make_opsetid("com.example", 1)])


def loop_model(path: Path) -> Path:
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["acc_in", "acc_in"], ["acc_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, ["batch", "sequence"])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, ["batch", "sequence"])])
    g = _ids_graph([helper.make_node("Cast", ["input_ids"], ["x"], to=TensorProto.FLOAT),
                    helper.make_node("Loop", ["trip", "cond", "x"], ["y"], body=body, name="loop_0")],
                   inits=[numpy_helper.from_array(np.array(3, np.int64), "trip"),
                          numpy_helper.from_array(np.array(True), "cond")],
                   outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence"])])
    return _save(g, path)


def bernoulli_model(path: Path) -> Path:
    g = helper.make_graph(
        [helper.make_node("Bernoulli", ["p"], ["y"], name="bernoulli_0")], "bernoulli",
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "n"])])
    return _save(g, path)


def external_model(folder: Path, location: str, *, dims=(8, 8), length: int | None = None) -> Path:
    t = TensorProto()
    t.name, t.data_type = "W", TensorProto.FLOAT
    t.dims.extend(dims)
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location),) + ((("length", str(length)),) if length is not None else ()):
        e = t.external_data.add()
        e.key, e.value = k, v
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "ext",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", dims[-1]])], [t])
    folder.mkdir(parents=True, exist_ok=True)
    return _save(g, folder / "model.onnx")


# ---------------------------------------------------------------------------------------------
# unsupported ops: exit 2 with the op and the node, not a traceback


@pytest.mark.parametrize("maker, op, node", [
    (custom_domain_model, "FancyGelu", "fancy_0"),
    (loop_model, "Loop", "loop_0"),
    (bernoulli_model, "Bernoulli", "bernoulli_0"),   # standard ops the registry lacks (NonMaxSuppression,
])                                                  # Conv and ConvTranspose joined it)
def test_unsupported_ops_exit_2_through_the_cli(maker, op, node, tmp_path):
    made = maker(tmp_path / "m.onnx")
    path, op = (made if isinstance(made, tuple) else (made, op))
    out = tmp_path / "out"
    r = cli_completed("model=onnx", f"model.path={path}", f"hydra.run.dir={out}")
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    line = _one_error(r)
    assert op in line and node in line
    assert not out.exists()
    if op == "FancyGelu":
        assert "com.example" in line
    assert _artifacts(out) == []


# ---------------------------------------------------------------------------------------------
# a BERT-like file with token_type_ids and a 10-row vocabulary: verified, honest encoder report


def test_token_type_model_with_tiny_vocab_is_verified_and_reported_as_an_encoder(tmp_path):
    path = token_encoder(tmp_path / "tiny-bert.onnx")
    out = tmp_path / "out"
    r = run_cli("model=onnx", f"model.path={path}", f"hydra.run.dir={out}", "workload.prompt_len=16")
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    # named after the file, with its dtype
    assert rep["model"]["name"] == "tiny-bert" and rep["model"]["dtype"] == "float32"
    assert "tiny-bert (float32)" in r.stdout
    # verified against the source file, ids within both tables
    ver = rep["emit"]["verification"]
    assert rep["emit"]["verified"]["passed"] is True and ver["reference"].startswith("the source ONNX")
    assert ver["inputs"][0]["shapes"] == {"input_ids": [2, 7], "token_type_ids": [2, 7]}
    assert ver["outputs"]["last_hidden_state"]["max_abs_err"] <= ver["outputs"]["last_hidden_state"]["tolerance"]
    # an encoder: latency per batch, sequences/s, no decode phase, no TPOT
    lat = rep["latency"]
    assert lat["kind"] == "encoder" and lat["tpot_s"] is None and "decode" not in rep["phases"]
    assert lat["throughput_seq_s"] == pytest.approx(1 / lat["batch_latency_s"])
    assert "sequences/s" in r.stdout and "TPOT" not in r.stdout
    md = (out / "report.md").read_text()
    assert "TPOT" not in md and "generate" not in md and "sequences/s" in md
    # the summary line names the device's calibration source
    assert "(literature efficiencies)" in r.stdout
    # only documented files, named by rooftop
    assert sorted(p.name for p in out.iterdir() if p.name != ".hydra") == ["model.onnx", "report.html", "report.json", "report.md"]


def test_draw_inputs_stay_within_each_tables_rows(tmp_path):
    from compiler.frontends.onnx_import import import_onnx
    from compiler.backend.verify import draw_inputs
    g = import_onnx(str(token_encoder(tmp_path / "t.onnx", vocab=5, types=3)))
    feeds = draw_inputs(g, 4, 50, 0)
    assert feeds["input_ids"].max() == 4 and feeds["input_ids"].min() == 0
    assert feeds["token_type_ids"].max() == 2


# ---------------------------------------------------------------------------------------------
# bf16: emitted in bf16, verified on a float32 copy, report kept


def test_bfloat16_model_is_emitted_and_verified_in_float32(tmp_path):
    r = run_cli("model.dtype=bfloat16", f"hydra.run.dir={tmp_path}", "workload.prompt_len=32",
                "workload.gen_len=4", "report.html=false")
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((tmp_path / "report.json").read_text())
    ver = rep["emit"]["verification"]
    assert rep["emit"]["verified"]["passed"] is True and ver["compute_dtype"] == "float32"
    assert "bfloat16" in ver["note"] and "float32" in ver["note"]
    m = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False)
    assert {t.data_type for t in m.graph.initializer if len(t.dims) >= 2} == {TensorProto.BFLOAT16}
    assert "llama_tiny (bfloat16)" in r.stdout


# ---------------------------------------------------------------------------------------------
# verification is a comparison: a wrong model exits 4 with the report written


def test_a_mismatching_emitted_model_exits_4_and_keeps_the_report(tmp_path, monkeypatch):
    """Break the emitter's output (one weight perturbed after emission) — the check must catch it,
    name the output, exit 4 and still write the cost report."""
    import compiler.backend.emit as emit_onnx
    from compiler.errors import EmissionFailed
    from compiler.driver.pipeline import run
    from tests.conftest import compose
    real_save = emit_onnx.save

    def corrupting_save(g, path, **kw):
        info = real_save(g, path, **kw)
        m = onnx.load(path)
        t = max(m.graph.initializer, key=lambda t: np.prod(t.dims))
        arr = numpy_helper.to_array(t).copy()
        arr.flat[0] += 10.0
        t.CopyFrom(numpy_helper.from_array(arr, t.name))
        onnx.save(m, path)
        return info

    import compiler.driver.pipeline as pipeline
    monkeypatch.setattr(pipeline, "save", corrupting_save)
    with pytest.raises(EmissionFailed, match="verification failed: output 'logits@") as e:
        run(compose(["model=gpt2_tiny", "workload.prompt_len=16", "workload.gen_len=2", "report.html=false"]),
            str(tmp_path), show_progress=False)
    assert e.value.exit_code == 4
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["emit"]["emitted"] is False and "verification failed" in rep["emit"]["error"]
    assert rep["emit"]["verification"]["passed"] is False
    assert rep["latency"]["ttft_s"] > 0  # the cost report is complete
    assert _artifacts(tmp_path) == ["report.json", "report.md"]  # the wrong model is not kept


# ---------------------------------------------------------------------------------------------
# input validated against the model


def test_prompt_beyond_max_positions_exits_2(tmp_path):
    r = cli_completed("workload.prompt_len=100000000", f"hydra.run.dir={tmp_path}", "emit.enabled=false")
    assert r.returncode == 2
    line = _one_error(r)
    assert "2048" in line and "workload.allow_beyond_max_positions=true" in line
    assert _artifacts(tmp_path) == []


def test_allow_beyond_max_positions_costs_it_anyway(tmp_path):
    from compiler.driver.pipeline import run
    from tests.conftest import compose
    rep = run(compose(["workload.prompt_len=4096", "workload.gen_len=1", "emit.enabled=false", "report.html=false",
                       "workload.allow_beyond_max_positions=true", "model.weights=meta"]), str(tmp_path), show_progress=False)
    assert rep["workload"]["prompt_len"] == 4096 and rep["model"]["max_positions"] == 2048


@pytest.mark.parametrize("args, words", [
    (["gate.max_tpot_ms=-1"], "not positive"),
    (["slo.ttft_ms=0"], "not positive"),
])
def test_gates_and_slos_must_be_positive(args, words, tmp_path):
    r = cli_completed(*args, f"hydra.run.dir={tmp_path}")
    assert r.returncode == 2 and words in _one_error(r)


@pytest.mark.parametrize("target, words", [
    ("/proc/rooftop-out", "cannot be written"),
    ("/sys/rooftop-out", "cannot be written"),
    ("FILE", "is an existing file"),
    ("FILE/sub", "is a file, not a directory"),
])
def test_unwritable_output_dir_exits_2_with_the_path_and_why(target, words, tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    target = target.replace("FILE", str(f))
    r = cli_completed(f"hydra.run.dir={target}")
    assert r.returncode == 2
    line = _one_error(r)
    assert target in line and words in line


def test_a_second_run_into_a_locked_directory_is_refused(tmp_path):
    from compiler.driver.pipeline import dir_lock
    with dir_lock(str(tmp_path)):  # another run holds the directory
        r = run_cli(f"hydra.run.dir={tmp_path}", "emit.enabled=false")
    assert r.returncode == 2
    assert "in use by another rooftop run" in _one_error(r)
    assert not (tmp_path / ".hydra").exists() and _artifacts(tmp_path) == []


def test_sigint_exits_130_with_one_line_and_no_staging_left(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    p = subprocess.Popen([sys.executable, "-m", "compiler", f"hydra.run.dir={tmp_path}", "workload.prompt_len=32"],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         # a test run started in the background of a non-interactive shell inherits
                         # SIGINT ignored, and Python then installs no KeyboardInterrupt handler
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while not list(tmp_path.glob(".staging-*")) and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert p.poll() is None, "the run ended before it could be interrupted"
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert [ln for ln in err.splitlines() if ln.strip()] == [
        "rooftop: interrupted (Ctrl-C); nothing partial was left in the output directory."]
    assert not list(tmp_path.glob(".staging-*")) and _artifacts(tmp_path) == []


def test_gen_len_0_throughput_counts_generated_tokens(tmp_path):
    from compiler.driver.pipeline import run
    from tests.conftest import compose
    rep = run(compose(["workload.gen_len=0", "emit.enabled=false", "report.html=false", "model.weights=meta"]),
              str(tmp_path), show_progress=False)
    lat = rep["latency"]
    assert lat["throughput_tok_s"] == 0 and lat["throughput_counts"] == "generated tokens"
    assert lat["e2e_s"] == lat["ttft_s"]


# ---------------------------------------------------------------------------------------------
# untrusted model files


@pytest.fixture
def data_outside(tmp_path):
    (tmp_path / "outside").mkdir()
    np.arange(64, dtype=np.float32).tofile(tmp_path / "outside/w.bin")
    return tmp_path / "outside/w.bin"


def _refused_by_both(path: Path, tmp_path: Path, words: str, onnx_refuses: bool = True):
    if onnx_refuses:
        with pytest.raises(Exception):
            onnx.load(str(path))
    out = tmp_path / "out"
    r = cli_completed("model=onnx", f"model.path={path}", f"hydra.run.dir={out}")
    assert r.returncode == 2, r.stderr[-3000:]
    line = _one_error(r)
    assert words in line
    assert not out.exists()
    return line


def test_external_data_by_absolute_path_is_refused(tmp_path, data_outside):
    path = external_model(tmp_path / "m", str(data_outside))
    _refused_by_both(path, tmp_path, "absolute path")


def test_external_data_through_dotdot_is_refused(tmp_path, data_outside):
    path = external_model(tmp_path / "m", "../outside/w.bin")
    _refused_by_both(path, tmp_path, "through '..'")


def test_external_data_through_a_symlink_is_refused(tmp_path, data_outside):
    (tmp_path / "m").mkdir()
    os.symlink(data_outside, tmp_path / "m/w.bin")
    path = external_model(tmp_path / "m", "w.bin")
    _refused_by_both(path, tmp_path, "symbolic link")


def test_tensor_claiming_more_than_its_data_file_is_refused(tmp_path):
    (tmp_path / "m").mkdir()
    np.zeros(16, np.float32).tofile(tmp_path / "m/w.bin")  # 64 bytes; the tensor claims 8x8x4 = 256
    path = external_model(tmp_path / "m", "w.bin")
    _refused_by_both(path, tmp_path, "holds only 64 bytes", onnx_refuses=False)


def test_tensor_whose_shape_overflows_is_refused_before_allocation(tmp_path):
    (tmp_path / "m").mkdir()
    np.zeros(16, np.float32).tofile(tmp_path / "m/w.bin")
    path = external_model(tmp_path / "m", "w.bin", dims=(2**40, 2**40))
    _refused_by_both(path, tmp_path, "overflows", onnx_refuses=False)


def test_inline_tensor_shorter_than_its_shape_is_refused(tmp_path):
    t = numpy_helper.from_array(np.zeros((8, 8), np.float32), "W")
    t.raw_data = t.raw_data[:32]
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "short",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])], [t])
    path = _save(g, tmp_path / "short.onnx")
    _refused_by_both(path, tmp_path, "holds 32 bytes", onnx_refuses=False)


def test_nothing_is_unpickled():
    """No pickle, and torch.load only with weights_only=True, anywhere in rooftop's sources."""
    import ast
    for pkg in ("compiler", "passes", "reports"):
        for f in (ROOT / pkg).rglob("*.py"):
            tree = ast.parse(f.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                    assert not any(n.split(".")[0] in ("pickle", "cPickle", "dill", "joblib") for n in names), f
                if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "load" and \
                        getattr(node.func.value, "id", None) == "torch":
                    kw = {k.arg: k.value for k in node.keywords}
                    assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, f
