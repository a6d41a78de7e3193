"""The command-line contract as a reusable check, and the small corpus of broken input
files the regression tests and the fuzzer feed to it.

:func:`cli_run` runs one rooftop command in this process (``compiler.driver.app.cli``: the
console entry point without ``sys.exit``) with stdout / stderr captured; :func:`assert_contract`
states what every outcome must look like: an exit code of the contract (0, 2, 3, 4), no
traceback, at most one ``rooftop…: error:`` paragraph (exactly one on a failure), stdout's summary
line on 0, nothing left on disk on 2, the report kept on 3 and 4.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compiler.driver.pipeline import OUTPUT_FILES

CONTRACT_CODES = (0, 2, 3, 4)


@dataclasses.dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def errors(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.startswith("rooftop") and ": error:" in ln]

    @property
    def error(self) -> str:
        assert len(self.errors) == 1, self.err[-3000:]
        return self.errors[0]


def cli_run(*args, cwd: str | os.PathLike | None = None) -> Result:
    """``rooftop ARGS`` in this process (cwd changed for the call when given)."""
    from compiler.driver.app import cli
    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli([str(a) for a in args])
    finally:
        os.chdir(here)
    return Result(code, out.getvalue(), err.getvalue())


def tree(root: Path) -> list[str]:
    """Every path under ``root`` (relative), sorted."""
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*")) if Path(root).exists() else []


def assert_contract(r: Result, run_dir: Path | None, *, before: list[str] | None = None, root: Path | None = None,
                    multirun: bool = False) -> None:
    """The contract for one outcome. ``run_dir``: the single run's directory when known; ``root``
    with ``before``: a folder whose contents must be unchanged after an exit 2."""
    assert r.code in CONTRACT_CODES, f"exit {r.code}\n{r.err[-3000:]}"
    assert "Traceback" not in r.err and "Traceback" not in r.out, r.err[-3000:]
    assert len(r.errors) <= 1, r.err[-3000:]
    if r.code == 0:
        assert not r.errors, r.err[-3000:]
        if run_dir is not None and not multirun:
            assert any(ln.startswith("rooftop: ") and "->" in ln for ln in r.out.splitlines()), r.out
            assert (run_dir / "report.json").is_file()
        return
    if not multirun:
        assert len(r.errors) == 1, r.err[-3000:]
    if r.code == 2:
        if run_dir is not None and not multirun:
            assert not run_dir.exists(), tree(run_dir)
        if root is not None and before is not None:
            assert tree(root) == before, sorted(set(tree(root)) - set(before))
    elif run_dir is not None and not multirun:       # 3, 4: the report is kept, nothing else partial
        assert (run_dir / "report.json").is_file(), tree(run_dir)
        assert not list(run_dir.glob(".staging-*"))
        assert {p.name for p in run_dir.iterdir()} <= set(OUTPUT_FILES) | {".hydra"}


# ---------------------------------------------------------------------------------------------
# the corpus of broken (and a few good) input files

OPSET = [helper.make_opsetid("", 23)]


def _save(graph, path: Path, **kw) -> Path:
    m = helper.make_model(graph, opset_imports=kw.pop("opsets", OPSET), ir_version=10,
                          producer_name=kw.pop("producer", "rooftop-tests"))
    onnx.save(m, str(path), **kw)
    return path


def token_model(path: Path) -> Path:
    """A tiny token encoder (embedding table + projection) that rooftop imports and verifies."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((10, 8)).astype(np.float32), "emb"),
             numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "proj")]
    nodes = [helper.make_node("Gather", ["emb", "input_ids"], ["e"]),
             helper.make_node("MatMul", ["e", "proj"], ["last_hidden_state"])]
    g = helper.make_graph(nodes, "tok", [helper.make_tensor_value_info("input_ids", TensorProto.INT64,
                                                                       ["batch", "sequence"])],
                          [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT,
                                                         ["batch", "sequence", 8])], inits)
    return _save(g, path)


def cnn_model(path: Path, *, pool: bool = False) -> Path:
    """A small CNN as torch.onnx.export(..., dynamo=True) writes it (Conv, Relu, [MaxPool, Bernoulli
    (training-mode dropout's draw, a standard op rooftop's registry lacks),] Flatten, Gemm; producer
    pytorch): no token input."""
    rng = np.random.default_rng(1)
    c_out, hw = 4, (4 if pool else 8)
    inits = [numpy_helper.from_array(rng.standard_normal((c_out, 3, 3, 3)).astype(np.float32) * 0.1, "conv.weight"),
             numpy_helper.from_array(np.zeros(c_out, np.float32), "conv.bias"),
             numpy_helper.from_array(rng.standard_normal((10, c_out * hw * hw)).astype(np.float32) * 0.1, "fc.weight"),
             numpy_helper.from_array(np.zeros(10, np.float32), "fc.bias")]
    nodes = [helper.make_node("Conv", ["pixels", "conv.weight", "conv.bias"], ["c"], pads=[1, 1, 1, 1],
                              name="node_conv2d"),
             helper.make_node("Relu", ["c"], ["r"], name="node_relu")]
    last = "r"
    if pool:
        nodes.append(helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2],
                                      name="node_max_pool2d"))
        nodes.append(helper.make_node("Bernoulli", ["p"], ["d"], name="node_bernoulli"))   # a standard op
        last = "d"                                                                          # the registry lacks
    nodes += [helper.make_node("Flatten", [last], ["f"], axis=1, name="node_flatten"),
              helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["logits"], transB=1, name="node_linear")]
    g = helper.make_graph(nodes, "main_graph",
                          [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
    return _save(g, path, producer="pytorch")


def custom_op_model(path: Path) -> Path:
    g = helper.make_graph([helper.make_node("Cast", ["input_ids"], ["x"], to=TensorProto.FLOAT),
                           helper.make_node("FancyGelu", ["x"], ["y"], domain="com.example", name="fancy_0")],
                          "custom", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence"])])
    return _save(g, path, opsets=OPSET + [helper.make_opsetid("com.example", 1)])


def external_model(folder: Path, location: str, *, nbytes: int | None = None) -> Path:
    """A MatMul whose 8x8 weight lives in external data at ``location`` (``nbytes`` written there
    when given: fewer than the 256 the tensor claims is a short data file)."""
    t = TensorProto()
    t.name, t.data_type = "W", TensorProto.FLOAT
    t.dims.extend((8, 8))
    t.data_location = TensorProto.EXTERNAL
    e = t.external_data.add()
    e.key, e.value = "location", location
    folder.mkdir(parents=True, exist_ok=True)
    if nbytes is not None:
        (folder / location).write_bytes(b"\0" * nbytes)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "ext",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])], [t])
    return _save(g, folder / "model.onnx")


def onnx_corpus(root: Path) -> dict[str, Path]:
    """name -> a model file (or a path that is not one): the ONNX inputs of the issue and more."""
    root.mkdir(parents=True, exist_ok=True)
    good = token_model(root / "good.onnx")
    data = good.read_bytes()
    out = {"good": good, "cnn": cnn_model(root / "cnn.onnx"), "cnn_pool": cnn_model(root / "cnn_pool.onnx", pool=True),
           "missing": root / "missing.onnx", "unsupported_op": custom_op_model(root / "custom.onnx"),
           "unsafe_external_data": external_model(root / "unsafe", "../outside.bin"),
           "short_data_file": external_model(root / "short", "w.bin", nbytes=64)}
    (root / "outside.bin").write_bytes(b"\0" * 256)
    (root / "a_directory.onnx").mkdir(exist_ok=True)
    out["directory"] = root / "a_directory.onnx"
    for name, blob in (("empty", b""), ("truncated", data[: len(data) // 2]), ("not_onnx", b"\x00\xffnot onnx" * 50),
                       ("json", json.dumps({"samples": []}).encode()), ("yaml", b"name: x\nconfig: [1, 2\n"),
                       ("lfs_pointer", b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n")):
        p = root / f"{name}.onnx"
        p.write_bytes(blob)
        out[name] = p
    return out


MODEL_YAMLS = {
    # a small valid model a --config-dir adds
    "mini": {"defaults": ["hf_config_schema", "_self_"], "name": "mini", "source": "hf_config", "task": "causal_lm",
             "weights": "meta", "config": {"model_type": "llama", "vocab_size": 128, "hidden_size": 32,
                                           "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
                                           "num_key_value_heads": 2, "max_position_embeddings": 256}},
    "sorce_typo": {"name": "sorce_typo", "sorce": "hf_config",
                   "config": {"model_type": "llama", "vocab_size": 128, "hidden_size": 32, "intermediate_size": 64,
                              "num_hidden_layers": 1, "num_attention_heads": 4}},
    "four_layers": {"defaults": ["hf_config_schema", "_self_"], "name": "four_layers", "source": "hf_config",
                    "weights": "meta", "config": {"model_type": "llama", "num_hidden_layers": "four"}},
    "no_model_type": {"defaults": ["hf_config_schema", "_self_"], "name": "no_model_type", "source": "hf_config",
                      "config": {"hidden_size": 32}},
}
BROKEN_YAML_TEXT = {"syntax_error": "name: syntax_error\nconfig: {model_type: llama\n  hidden_size: [1,\n",
                    "a_list": "- 1\n- 2\n", "empty": ""}


def config_dir_corpus(root: Path) -> Path:
    """A --config-dir with model YAMLs: good, misspelled, wrongly typed, not YAML at all."""
    import yaml
    d = root / "model"
    d.mkdir(parents=True, exist_ok=True)
    for name, doc in MODEL_YAMLS.items():
        (d / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    for name, text in BROKEN_YAML_TEXT.items():
        (d / f"{name}.yaml").write_text(text)
    return root


def calibration_corpus(root: Path, real: Path) -> dict[str, Path]:
    """Measurement files for ``rooftop calibrate``: the real one and broken ones."""
    root.mkdir(parents=True, exist_ok=True)
    doc = json.loads(real.read_text())
    out = {"real": real}

    def put(name, content):
        p = root / f"{name}.json"
        p.write_text(content if isinstance(content, str) else json.dumps(content))
        out[name] = p

    put("not_json", "{samples: [1, 2,")
    put("no_samples", {**doc, "samples": []})
    put("a_list", [1, 2, 3])
    bad = json.loads(json.dumps(doc))
    bad["samples"][3]["time_s"] = -1e-6
    put("negative_time", bad)
    nan = json.loads(json.dumps(doc))
    nan["samples"][5]["time_s"] = float("nan")
    put("nan_time", json.dumps(nan))       # json writes NaN, which Python's json reads back
    put("no_gemm", {**doc, "samples": [s for s in doc["samples"] if s.get("class") != "gemm"]})
    out["missing"] = root / "missing.json"
    return out


def cli_completed(*args, cwd: str | os.PathLike | None = None):
    """:func:`cli_run` as a ``subprocess.CompletedProcess`` (``returncode``, ``stdout``,
    ``stderr``): a drop-in for ``tests.conftest.run_cli`` where a real process adds nothing."""
    import subprocess
    r = cli_run(*args, cwd=cwd)
    return subprocess.CompletedProcess(["rooftop", *map(str, args)], r.code, r.out, r.err)


def subprocess_env() -> dict:
    """The environment of a real ``python -m compiler`` started from another working directory: this
    checkout first on the path (not whichever rooftop is installed)."""
    from tests.conftest import ROOT
    return dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1",
                PYTHONPATH=os.pathsep.join([str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))


def run_subprocess(*args, cwd: str | os.PathLike, timeout: int = 600):
    """``python -m compiler ARGS`` in ``cwd`` as a real process (this checkout's code)."""
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "compiler", *map(str, args)], cwd=cwd, env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)
