"""Structured configs: the schema in compiler/driver/config.py is the one place for defaults,
and an unknown or misspelled key anywhere exits 2 naming it and the nearest valid keys."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from compiler.driver import config as schema
from compiler.errors import ConfigError
from tests.conftest import ROOT, compose, run_cli


def _one_error(r):
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("rooftop: error:")]
    assert len(lines) == 1, r.stderr[-2000:]
    return lines[0]


@pytest.mark.parametrize("args, key, near", [
    (["foo=1"], "'foo'", None),
    (["+foo=1"], "'foo'", None),
    (["+quantize=int8"], "'quantize'", None),
    (["+paralel.tp=2"], "'paralel'", None),
    (["model.weigths=random"], "'model.weigths'", "model.weights"),
    (["+workload.batchsize=4"], "'workload.batchsize'", "workload.batch"),
    (["model=minilm", "+model.dtpye=float16"], "'model.dtpye'", "model.dtype"),
    (["model=onnx", "+model.paht=x.onnx"], "'model.paht'", "model.path"),
])
def test_unknown_keys_on_the_command_line_exit_2(args, key, near, tmp_path):
    r = run_cli(*args, f"hydra.run.dir={tmp_path / 'out'}")
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    line = _one_error(r)
    assert f"unknown config key {key}" in line
    assert "Valid keys" in line
    if near:
        assert f"Did you mean {near}" in line
    assert not (tmp_path / "out").exists()  # refused before Hydra made the run directory


def test_an_unresolvable_interpolation_exits_2_and_its_advice_runs(tmp_path):
    """``parallel.microbatches='${oops}'`` names no setting: one paragraph naming the key (not an
    internal error), nothing on disk; the advised reference to an existing setting runs."""
    base = ("model.weights=meta", "emit.enabled=false", "report.html=false", "progress=false",
            "workload.prompt_len=16", "workload.gen_len=2")
    r = run_cli(*base, "parallel.microbatches='${oops}'", f"hydra.run.dir={tmp_path / 'bad'}")
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    line = _one_error(r)
    assert "parallel.microbatches" in line and "'oops' not found" in line and "internal" not in line
    assert not (tmp_path / "bad").exists()
    advice = line.split("e.g. ")[1].rstrip(".")
    r = run_cli(*base, advice, f"hydra.run.dir={tmp_path / 'good'}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "good" / "report.json").exists()


def test_weight_formats_can_be_set_on_the_command_line_as_advised(tmp_path):
    """``model.weight_formats`` (a checkpoint's weight formats) used to be null in the schema, so no
    override could set it; a bad format exits 2 and its advice runs."""
    import json
    base = ("model=mixtral_tiny", "emit.enabled=false", "report.html=false", "progress=false")
    r = run_cli(*base, "++model.weight_formats.experts=mxfp9", f"hydra.run.dir={tmp_path / 'bad'}")
    assert r.returncode == 2, r.stderr[-2000:]
    line = _one_error(r)
    assert "model.weight_formats.experts='mxfp9'" in line and not (tmp_path / "bad").exists()
    advice = line.split("e.g. ")[1].rstrip(").")
    r = run_cli(*base, advice, f"hydra.run.dir={tmp_path / 'good'}")
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "good" / "report.json").read_text())
    fmts = [w["format"] for w in report["weight_formats"]]
    assert {"dtype": "float4e2m1", "group_size": 32, "scale_dtype": "float8e8m0"}.items() <= \
        next(f for f in fmts if f["dtype"] != "float32").items()   # the experts, in MXFP4


def test_a_misspelled_key_inside_a_model_yaml_exits_2(tmp_path):
    """`weigths: random` in a model YAML (found through Hydra's --config-dir) used to build the
    default silently."""
    cfg = yaml.safe_load((ROOT / "conf/model/llama_tiny.yaml").read_text())
    cfg["name"] = "typo"
    cfg["weigths"] = cfg.pop("weights")
    (tmp_path / "conf/model").mkdir(parents=True)
    (tmp_path / "conf/model/typo.yaml").write_text(yaml.safe_dump(cfg))
    r = run_cli("--config-dir", str(tmp_path / "conf"), "model=typo", f"hydra.run.dir={tmp_path / 'out'}")
    assert r.returncode == 2, r.stderr[-2000:]
    line = _one_error(r)
    assert "'model.weigths'" in line and "Did you mean model.weights" in line
    assert "model/typo.yaml" in line
    assert not (tmp_path / "out").exists()


def test_changing_a_key_the_yaml_does_not_set_says_how_to_add_it():
    """A setting transformers' config declares but the model YAML does not set needs a +; a
    misspelled one is told the nearest declared keys, never to add itself (issue 23)."""
    from compiler.driver.app import precheck
    with pytest.raises(ConfigError, match=r"\+model\.config\.attention_bias=true"):
        precheck(["model.config.attention_bias=true"])
    with pytest.raises(ConfigError, match=r"did you mean model\.config\.hidden_size") as e:
        precheck(["model.config.hidden_sise=64"])
    assert "+model.config.hidden_sise" not in str(e.value)


def test_validate_names_the_key_and_nearest_in_process():
    cfg = compose(["model=gpt2_tiny"])
    cfg["model"]["weigths"] = "random"
    with pytest.raises(ConfigError, match=r"'model.weigths'.*Did you mean model.weights"):
        schema.validate(cfg)
    cfg = compose()
    cfg["emit"]["verfy"] = False
    with pytest.raises(ConfigError, match=r"'emit.verfy'.*Did you mean emit.verify"):
        schema.validate(cfg)


def test_hugging_face_config_kwargs_are_checked_against_transformers():
    """model.config stays an open mapping, but a key transformers would store and ignore is refused;
    keys it consumes under an older name (llama's rope_theta) pass."""
    with pytest.raises(ConfigError, match=r"model.config.hidden_sise.*Did you mean model.config.hidden_size"):
        schema.validate(compose(["+model.config.hidden_sise=64"]))
    with pytest.raises(ConfigError, match=r"model.config.n_embdd.*Did you mean model.config.n_embd"):
        schema.validate(compose(["model=gpt2_tiny", "+model.config.n_embdd=64"]))
    assert schema.validate(compose(["model=llama2_7b"]))["model"]["config"]["rope_theta"] == 10000.0


def test_config_yaml_repeats_the_schema_defaults():
    """One place for each default: conf/config.yaml says what the dataclasses say (and
    workload_of no longer has its own: prompt 512 / gen 128)."""
    conf = yaml.safe_load((ROOT / "conf/config.yaml").read_text())
    chosen = {next(iter(d)) for d in conf["defaults"] if isinstance(d, dict)}
    for group, values in schema.defaults().items():
        if group in chosen:  # a group with named choices (pipeline=, early_exit=): its none/default file
            continue
        assert conf[group] == values, group
    assert yaml.safe_load((ROOT / "conf/kv/contiguous.yaml").read_text()) == schema.defaults()["kv"]
    paged = yaml.safe_load((ROOT / "conf/kv/paged.yaml").read_text())
    assert paged == {**schema.defaults()["kv"], "layout": "paged"}
    assert yaml.safe_load((ROOT / "conf/early_exit/none.yaml").read_text())["mode"] == \
        schema.defaults()["early_exit"]["mode"] == "none"
    from compiler.driver.pipeline import workload_of
    assert workload_of({}) == {"batch": 1, "prompt_len": 512, "gen_len": 128, "context_len": 512}
    assert schema.validate(compose())["workload"]["prompt_len"] == 512


def test_every_shipped_model_and_pipeline_yaml_validates():
    for f in sorted((ROOT / "conf/model").glob("*.yaml")):
        out = schema.validate(compose([f"model={f.stem}"] + (["model.path=/x/m.onnx"] if f.stem == "onnx" else [])))
        assert out["model"]["source"] in schema.VARIANTS["model"][1]
    for f in sorted((ROOT / "conf/pipeline").glob("*.yaml")):
        schema.validate(compose([f"pipeline={f.stem}"]))


@pytest.mark.parametrize("over, match", [
    ({"workload": {"batch": 0}}, "out of range"),
    ({"workload": {"gen_len": -1}}, "out of range"),
    ({"workload": {"batch": "zero"}}, "not an integer"),
    ({"workload": {"batch": 2.5}}, "not an integer"),
    ({"gate": {"max_tpot_ms": -1}}, "not positive"),
    ({"gate": {"max_memory_gb": 0}}, "not positive"),
    ({"slo": {"ttft_ms": -5}}, "not positive"),
    ({"emit": {"enabled": "sometimes"}}, "auto, true, false"),
    ({"report": {"html": "maybe"}}, "true or false"),
    ({"memory": {"runtime_reserve_gb": -1}}, "negative"),
    ({"memory": {"gpu_utilization": 1.5}}, r"gpu_utilization=1.5 is out of range"),
    ({"memory": {"gpu_utilization": 0}}, r"gpu_utilization=0 is out of range"),
    ({"kv": {"block_size": 0}}, r"kv.block_size=0 is out of range"),
    ({"kv": {"layout": "ring"}}, r"kv.layout='ring' is not a KV-cache layout"),
    ({"kv": {"dtype": "fp4"}}, r"kv.dtype='fp4' is not a KV-cache format"),
    ({"kv": {"max_model_len": 0}}, r"kv.max_model_len=0 is out of range"),
    ({"parallel": {"tp": 0}}, r"parallel.tp=0 is out of range"),
    ({"parallel": {"pp": 0}}, r"parallel.pp=0 is out of range"),
    ({"serve": {"rate": -2}}, r"serve.rate=-2 is not positive"),
    ({"serve": {"enabled": "sometimes"}}, r"serve.enabled='sometimes'"),
    ({"serve": {"prompt_len": {"kind": "zipf"}}}, r"distribution 'zipf' is unknown"),
])
def test_values_are_typed_and_ranged(over, match):
    cfg = compose()
    for g, kv in over.items():
        cfg[g].update(kv)
    with pytest.raises(ConfigError, match=match):
        schema.validate(cfg)


def test_serving_keys_compose_and_validate():
    """kv=, parallel.*, serve.*, memory.gpu_utilization are settings, not unknown keys."""
    out = schema.validate(compose(["kv=paged", "kv.block_size=32", "kv.dtype=FP8", "parallel.tp=2",
                                   "serve.rate=3", "memory.gpu_utilization=0.9",
                                   "serve.prompt_len={kind: uniform, low: 16, high: 64}"]))
    assert out["kv"] == {"layout": "paged", "block_size": 32, "max_model_len": None, "dtype": "fp8"}
    assert out["parallel"]["tp"] == 2 and out["memory"]["gpu_utilization"] == 0.9
    assert out["serve"]["rate"] == 3.0 and out["serve"]["enabled"] == "auto"
    assert out["serve"]["prompt_len"]["kind"] == "uniform"
    assert schema.validate(compose())["kv"]["layout"] == "contiguous"


def test_types_are_converted():
    cfg = compose()
    cfg["workload"].update(batch="4", context_len="600")
    cfg["gate"]["max_ttft_ms"] = "12.5"
    cfg["emit"]["enabled"] = "false"
    out = schema.validate(cfg)
    assert out["workload"]["batch"] == 4 and out["workload"]["context_len"] == 600
    assert out["gate"]["max_ttft_ms"] == 12.5 and out["emit"]["enabled"] is False


def test_schemas_are_in_hydras_config_store_and_named_by_the_config_tree():
    """The schema is used, not only registered: conf/config.yaml's defaults list starts with it and
    every shipped model YAML names its variant's schema, so Hydra checks them while composing."""
    from hydra.core.config_store import ConfigStore
    schema.register()
    repo = ConfigStore.instance().repo
    assert "rooftop_schema.yaml" in repo
    assert {f"{s}_schema.yaml" for s in schema.VARIANTS["model"][1]} <= set(repo["model"])
    assert yaml.safe_load((ROOT / "conf/config.yaml").read_text())["defaults"][0] == "rooftop_schema"
    for f in sorted((ROOT / "conf/model").glob("*.yaml")):
        doc = yaml.safe_load(f.read_text())
        assert doc["defaults"][0] == f"{doc['source']}_schema", f.name


def test_a_new_group_is_one_dataclass_and_one_field():
    """The extension point other groups use: a dataclass field on RooftopConfig is validated by
    OmegaConf (types converted, unknown keys refused) with no other change."""
    import dataclasses

    @dataclasses.dataclass
    class Toy:
        tp: int = 1

    Root = dataclasses.make_dataclass("Root", [("toy", Toy, dataclasses.field(default_factory=Toy))],
                                      bases=(schema.RooftopConfig,))
    cfg = compose()
    cfg.pop("hydra", None)
    cfg["toy"] = {"tp": "2"}
    cfg["model"] = None
    assert schema._typed(Root, cfg).toy.tp == 2
    cfg["toy"] = {"tpp": 2}
    with pytest.raises(ConfigError, match=r"'toy.tpp'.*Did you mean toy.tp"):
        schema._typed(Root, cfg)


def test_onnx_runs_are_named_after_the_file():
    out = schema.validate(compose(["model=onnx", "model.path=/data/bert-base.onnx"]))
    assert out["model"]["name"] == "bert-base"


def test_exit_codes_are_documented_where_they_are_defined():
    from compiler import errors
    assert (errors.EXIT_OK, errors.EXIT_BAD_INPUT, errors.EXIT_GATE, errors.EXIT_EMIT, errors.EXIT_INTERRUPTED) == (0, 2, 3, 4, 130)
    assert errors.ConfigError.exit_code == errors.ModelFileError.exit_code == errors.OutputDirError.exit_code == 2
    assert errors.GateError.exit_code == 3 and errors.EmissionFailed.exit_code == errors.VerificationError.exit_code == 4
    readme = Path(ROOT / "README.md").read_text()
    for code in ("`0`", "`2`", "`3`", "`4`", "`130`"):
        assert code in readme
