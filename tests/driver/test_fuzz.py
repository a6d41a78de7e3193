"""A fuzzer for the command-line contract.

Hypothesis generates command lines over the real config tree — every key of the schema
(compiler/driver/config.py, the model's transformers config, the hardware description) with
values of the right type, the wrong type and out of range, misspelled keys, the ``+`` / ``++`` /
``~`` forms, unknown group choices, Hydra's flags — and over the other verbs (``-m``,
``calibrate``, ``compare``) and a small corpus of broken ONNX / JSON / YAML files
(tests/driver/contract.py). Every command runs through the console entry point in this process
(compiler.driver.app.cli, in a fresh working directory) and must keep the contract
(:func:`tests.driver.contract.assert_contract`): exit 0, 2, 3 or 4, no traceback, one error
paragraph, nothing left on exit 2, the report kept on 3 and 4, the summary line on 0.

Seeded (the seed is printed; ``ROOFTOP_FUZZ_SEED`` picks another, ``ROOFTOP_FUZZ_EXAMPLES`` more
cases), at least 300 cases per run, bounded in time: most cases fail in the checks before a
run starts (milliseconds to a few hundred), and the runs that do start use a cost-only model
whose import is cached per model config. A few generated cases also run as real subprocesses.
"""
from __future__ import annotations

import dataclasses
import os
import random
import shutil
import tempfile
import typing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from tests.conftest import ROOT
from tests.driver.contract import (Result, assert_contract, calibration_corpus, config_dir_corpus, onnx_corpus,
                                   run_subprocess, tree)

SEED = int(os.environ.get("ROOFTOP_FUZZ_SEED", "23"))
EXAMPLES = int(os.environ.get("ROOFTOP_FUZZ_EXAMPLES", "300"))
CHEAP = {"model.weights": "meta", "emit.enabled": "false", "report.html": "false", "progress": "false",
         "workload.prompt_len": "16", "workload.gen_len": "2"}
GROUPS = {"model": ["llama_tiny", "gpt2_tiny", "mixtral_tiny", "llama_tiny_draft", "minilm", "onnx", "llama2_7b"],
          "hardware": ["a100_80g", "h100_sxm", "a10", "cpu", "l4"],
          "pipeline": ["none", "default", "cache", "fuse"], "quant": ["none", "w8a16", "w4a16", "fp8"],
          "sparsity": ["none", "nm"], "kv": ["contiguous", "paged"], "early_exit": ["none", "layers"]}


# ---------------------------------------------------------------------------------------------
# the config tree, read from the schema


def _leaves(cls, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = args[0] if typing.get_origin(tp) is typing.Union and len(args) == 1 else tp
        if dataclasses.is_dataclass(inner):
            out += _leaves(inner, f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", inner))
    return out


def _tree() -> list[tuple[str, object]]:
    from compiler.driver.config import HFConfigModel, RooftopConfig
    from compiler.perf.hardware import HardwareYaml
    from tests.conftest import model_cfg
    keys = [(k, t) for k, t in _leaves(RooftopConfig) if not k.startswith(("model", "hardware", "search"))]
    keys += [(f"model.{k}", t) for k, t in _leaves(HFConfigModel) if k != "config"]
    keys += [(f"hardware.{k}", t) for k, t in _leaves(HardwareYaml)]
    keys += [(f"hardware.peak_tflops.{d}", float) for d in ("fp16", "bf16", "fp32", "int8")]
    keys += [(f"model.config.{k}", type(v)) for k, v in model_cfg("llama_tiny")["config"].items()]
    return keys


TREE = _tree()
GOOD = {int: ["1", "2", "4", "16"], float: ["0.5", "0.9", "1.0", "2.5"], bool: ["true", "false"],
        str: ["auto", "none", "uniform", "paged", "fp8", "self", "measured"]}
BAD = ["0", "-1", "-7", "1000000000000", "abc", "1.5", "nan", "inf", "-inf", "''", "null", "[1,2]", "{a: 1}",
       "true", "[]", "1e9", "'${oops}'", "999999"]


def _misspell(rnd: random.Random, key: str) -> str:
    parts = key.split(".")
    i = rnd.randrange(len(parts))
    w = parts[i]
    if len(w) > 2:
        j = rnd.randrange(len(w) - 1)
        w = rnd.choice([w[:j] + w[j + 1:], w[:j] + w[j + 1] + w[j] + w[j + 2:], w + "s", w[:j] + "x" + w[j + 1:]])
    parts[i] = w
    return ".".join(parts)


@st.composite
def overrides(draw) -> list[str]:
    """1-3 overrides over the config tree: right and wrong values, misspellings, +/++/~ forms,
    group choices (known and not)."""
    rnd = random.Random(draw(st.integers(0, 2**32)))
    out = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["value"] * 6 + ["group"] * 2 + ["misspelled", "plus", "tilde", "malformed"]))
        key, tp = TREE[rnd.randrange(len(TREE))]
        value = rnd.choice(GOOD.get(tp, GOOD[str]) if rnd.random() < 0.3 else BAD)
        if kind == "group":
            g = rnd.choice(list(GROUPS))
            out.append(f"{g}={rnd.choice(GROUPS[g]) if rnd.random() < 0.7 else _misspell(rnd, rnd.choice(GROUPS[g]))}")
        elif kind == "misspelled":
            out.append(f"{_misspell(rnd, key)}={value}")
        elif kind == "plus":
            out.append(f"{rnd.choice(['+', '++'])}{key if rnd.random() < 0.5 else _misspell(rnd, key)}={value}")
        elif kind == "tilde":
            out.append(f"~{key}")
        elif kind == "malformed":
            out.append(rnd.choice([f"{key}=={value}", f"{key}", f"={value}", f"{key}=[1,", f"{key}=(", "=", "a b=c"]))
        else:
            out.append(f"{key}={value}")
    return out


# ---------------------------------------------------------------------------------------------
# whole command lines over every verb


@st.composite
def commands(draw, corpus) -> tuple[str, list[str]]:
    """(verb, argv without the program name)."""
    verb = draw(st.sampled_from(["run"] * 14 + ["onnx"] * 2 + ["config_dir", "calibrate", "calibrate", "compare",
                                                                "multirun", "flags"]))
    ov = draw(overrides())
    keys = {o.lstrip("+~").split("=")[0] for o in ov}
    cheap = [f"{k}={v}" for k, v in CHEAP.items() if k not in keys]
    if verb == "run":
        return verb, cheap + ov
    if verb == "onnx":
        f = draw(st.sampled_from(sorted(corpus["onnx"])))
        return verb, ["model=onnx", f"model.path={corpus['onnx'][f]}", "emit.enabled=false", "report.html=false",
                      "progress=false"] + draw(st.sampled_from([[], ov[:1]]))
    if verb == "config_dir":
        name = draw(st.sampled_from(["mini", "sorce_typo", "four_layers", "no_model_type", "syntax_error", "a_list",
                                     "empty", "not_there"]))
        return verb, ["--config-dir", str(corpus["conf"]), f"model={name}"] + cheap + draw(st.sampled_from([[], ov[:1]]))
    if verb == "flags":
        flags = draw(st.sampled_from([["--cfg", "job"], ["-c", "hydra"], ["--cfg=all"], ["--info", "defaults"],
                                      ["--help"], ["--version"], ["--cfg", "nope"], ["--frobnicate"], ["-cp", "x"],
                                      ["--config-dir", "/nonexistent/dir"], ["--package", "workload", "--cfg", "job"]]))
        return verb, flags + ov
    if verb == "multirun":
        sweep = draw(st.sampled_from(["workload.batch=1,2", "hardware=a100_80g,h100_sxm", "workload.batch=1,0",
                                      "quant=none,w9a9", "pipeline=none,default"]))
        return verb, ["-m", sweep] + cheap + ov[:1]
    if verb == "calibrate":
        data = corpus["calib"][draw(st.sampled_from(sorted(corpus["calib"])))]
        base = draw(st.sampled_from([str(ROOT / "conf/hardware/h100_sxm.yaml"), str(corpus["conf"] / "model/a_list.yaml"),
                                     "/nonexistent.yaml", None]))
        out = draw(st.sampled_from(["OUT/gpu.yaml", "OUT", "/proc/x/gpu.yaml", "OUT/gpu.txt", None]))
        extra = draw(st.sampled_from([[], ["--json"], ["--dtype", "fp16"], ["--dtype", "fp3"], ["--all-kernels"],
                                      ["--bogus"]]))
        return verb, (["calibrate", str(data)] + (["--base-yaml", base] if base else []) +
                      (["--out", out] if out else []) + extra)
    a = corpus["reports"][draw(st.sampled_from(sorted(corpus["reports"])))]
    b = corpus["reports"][draw(st.sampled_from(sorted(corpus["reports"])))]
    extra = draw(st.sampled_from([[], ["--tolerance", "0.1"], ["--tolerance", "-1"], ["--tolerance", "x"],
                                  ["--json", "OUT/cmp.json"], ["--json", "/proc/x/cmp.json"], ["--bogus"]]))
    return verb, ["compare", str(a), str(b)] + extra


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_report):
    root = tmp_path_factory.mktemp("fuzz_corpus")
    reports = {"decoder": tiny_report[1] / "report.json", "decoder_dir": tiny_report[1],
               "missing": root / "nope/report.json", "not_json": root / "broken.json", "not_a_report": root / "other.json"}
    reports["not_json"].write_text("{oops")
    reports["not_a_report"].write_text('{"model": 1}')
    return {"onnx": onnx_corpus(root / "onnx"), "conf": config_dir_corpus(root / "conf"),
            "calib": calibration_corpus(root / "calib", ROOT / "compiler/perf/calibration/data/h100_sxm.json"),
            "reports": reports}


@pytest.fixture(scope="module")
def cached_imports():
    """Reuse an imported graph per model config (the import is real the first time; the runs
    the fuzzer starts differ in everything after it)."""
    import compiler.driver.pipeline as pipeline
    real = pipeline.import_with_source
    cache: dict = {}

    def cached(cfg, prog=None, *, keep_source=False):
        key = (repr(sorted(dict(cfg["model"]).items())), keep_source)
        if key not in cache:
            g, src = real(cfg, prog, keep_source=keep_source)
            cache[key] = (g, src)
        g, src = cache[key]
        return g.copy(), dict(src)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "import_with_source", cached)
        yield cache


def _substitute(argv: list[str], out: Path) -> list[str]:
    return [a.replace("OUT", str(out)) if a.startswith("OUT") else a for a in argv]


def _check(verb: str, argv: list[str], r: Result, cwd: Path) -> None:
    multirun = verb == "multirun"
    if r.code == 2:
        assert tree(cwd) == [] or (multirun and any(p.name == "sweep.json" for p in cwd.rglob("sweep.json"))), \
            (argv, tree(cwd))
    reports = sorted(cwd.rglob("report.json"))
    run_dir = reports[0].parent if (reports and verb in ("run", "onnx", "config_dir")) else None
    if verb in ("run", "onnx", "config_dir") and r.code in (0, 3, 4) and "--cfg" not in argv:
        assert run_dir is not None, (argv, r.code, tree(cwd), r.err[-2000:])
    assert_contract(r, run_dir, multirun=multirun or verb in ("calibrate", "compare", "flags"))
    if verb == "calibrate" and r.code == 0 and "--out" in argv:
        assert Path(argv[argv.index("--out") + 1]).is_file()


# ---------------------------------------------------------------------------------------------
# the fuzzer


def test_fuzz_the_command_line_contract(corpus, cached_imports, tmp_path_factory):
    from tests.driver.contract import cli_run
    print(f"\nrooftop fuzzer: seed {SEED}, {EXAMPLES} cases (ROOFTOP_FUZZ_SEED / ROOFTOP_FUZZ_EXAMPLES)")
    base = tmp_path_factory.mktemp("fuzz")
    seen = {"cases": 0, "codes": {}}

    @seed(SEED)
    @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(commands(corpus))
    def case(cmd):
        verb, argv = cmd
        cwd = Path(tempfile.mkdtemp(dir=base))
        argv = _substitute(argv, cwd)
        r = cli_run(*argv, cwd=cwd)
        try:
            _check(verb, argv, r, cwd)
        except AssertionError as e:
            raise AssertionError(f"rooftop {' '.join(argv)}\n-> exit {r.code}\nstderr: {r.err[-3000:]}\n{e}") from None
        seen["cases"] += 1
        seen["codes"][r.code] = seen["codes"].get(r.code, 0) + 1
        shutil.rmtree(cwd, ignore_errors=True)

    case()
    print(f"rooftop fuzzer: {seen['cases']} cases, exit codes {dict(sorted(seen['codes'].items()))}")
    assert seen["cases"] >= EXAMPLES >= (300 if "ROOFTOP_FUZZ_EXAMPLES" not in os.environ else 1)
    assert set(seen["codes"]) >= {0, 2}          # the generator reaches both sides of the checks


def test_fuzzed_commands_keep_the_contract_as_real_subprocesses(corpus, tmp_path):
    """A few generated command lines end to end (a real process: the entry point's exit status,
    its stderr as a user sees it — no library log lines)."""
    drawn = []

    @seed(SEED)
    @settings(max_examples=40, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(commands(corpus))
    def collect(cmd):
        drawn.append(cmd)

    collect()
    cases = [c for c in drawn if c[0] in ("run", "onnx")][:3] + [c for c in drawn if c[0] == "calibrate"][:1]
    assert len(cases) == 4
    for i, (verb, argv) in enumerate(cases):
        cwd = tmp_path / f"c{i}"
        cwd.mkdir()
        argv = _substitute(argv, cwd)
        p = run_subprocess(*argv, cwd=cwd)
        r = Result(p.returncode, p.stdout, p.stderr)
        _check(verb, argv, r, cwd)
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert all(ln.startswith(("rooftop", "[WARNING]", "warning:")) for ln in lines), p.stderr[-3000:]
