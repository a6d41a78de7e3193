"""ONNX import: tiny transformers exported by torch.onnx (dynamo, opset 23; legacy, opset 17/18)
are imported, re-emitted with compiler.backend.emit.save and run in onnxruntime against the original
on a batch/sequence different from the export's; plus external data, KV-cache inputs, local
functions, unknown dims and the error paths."""
from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import sympy

from passes import run_passes
from tests import onnx_models as om
from compiler.backend.emit import save, to_model
from compiler.errors import ModelFileError
from compiler.frontends.onnx_import import _Dims, import_onnx
from compiler.ir import B, P, S, subs
from compiler.ir.ops import UnsupportedOpError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
LEGACY_OPSET = {"llama_tiny": 17, "gpt2_tiny": 18, "minilm": 17}
TOL = 1e-4


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    cache: dict = {}

    def get(model: str, dynamo: bool) -> str:
        key = (model, dynamo)
        if key not in cache:
            d = tmp_path_factory.mktemp(f"{model}_{'dynamo' if dynamo else 'legacy'}")
            cache[key] = om.export_onnx(model, d, dynamo=dynamo,
                                        opset=None if dynamo else LEGACY_OPSET[model])
        return cache[key]
    return get


def _max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    assert [x.shape for x in a] == [y.shape for y in b]
    return max(float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max()) for x, y in zip(a, b))


def _check_runtime_shapes(g, feeds: dict[str, np.ndarray], point: dict):
    """Every op output's IR type, evaluated at ``point``, equals the shape onnxruntime computes."""
    m = to_model(g)
    names = [t for n in g for t in n.outputs if t and t not in g.outputs]
    for t in names:
        m.graph.output.append(onnx.ValueInfoProto(name=t))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    outs = sess.run(None, {k: v for k, v in feeds.items() if k in g.inputs})
    bad = []
    for o, arr in zip([x.name for x in sess.get_outputs()], outs):
        want = tuple(subs(d, point) for d in g.types[o].shape)
        if want != arr.shape:
            bad.append(f"{o}: IR {g.types[o]} -> {want}, onnxruntime {arr.shape}")
        if str(arr.dtype) != ("bool" if g.types[o].dtype == "bool" else g.types[o].dtype):
            bad.append(f"{o}: IR dtype {g.types[o].dtype}, onnxruntime {arr.dtype}")
    assert not bad, "\n".join(bad[:10])


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "legacy"])
@pytest.mark.parametrize("model", om.MODELS)
def test_import_reemit_matches_onnxruntime(model, dynamo, exported, tmp_path):
    path = exported(model, dynamo)
    g = import_onnx(path)
    g.verify()
    dead = run_passes(g, ["dce"]).records[0].stats
    g.verify()
    out_name = "logits" if model != "minilm" else "last_hidden_state"
    assert g.inputs == ["input_ids", "attention_mask"] and g.outputs == [out_name]
    assert g.types["input_ids"].shape == (B, S)
    assert g.types[out_name].shape[:2] == (B, S)
    assert g.meta["dim_sources"] == {"B": ("input_ids", 0), "S": ("input_ids", 1)}
    assert g.meta["task"] == ("embedding" if model == "minilm" else "causal_lm")
    assert g.meta["unknown_dims"] == {}, g.meta["unknown_dims"]
    assert "Constant" not in g.ops_by_kind()
    assert all(p.data is not None for p in g.params.values())
    # Shape → Gather → Unsqueeze → Concat chains (the TorchScript exporter computes every reshape
    # at run time) are evaluated on symbolic dims: every Reshape/Expand has its shape as an
    # attribute (expressions of B, S), and the chains are gone
    runtime = [n.name for n in g if n.op in ("Reshape", "Expand") and "shape" not in n.attrs]
    assert not runtime, runtime
    assert g.ops_by_kind().get("Shape", 0) <= 5, g.ops_by_kind()   # (legacy GPT-2 had 41; Range/mask inputs keep a few)
    if not dynamo:   # the evaluated chains are dead code, which the pipeline's dce pass removes
        # (chains with known values became constants at import: counted with the dead ones)
        assert g.meta["import_stats"]["symbolic_shapes"] >= 20 and \
            dead["ops"] + g.meta["import_stats"].get("shape_constants", 0) >= 150

    re_path = str(tmp_path / "re.onnx")
    save(g, re_path)
    feeds = om.example_inputs(om.vocab_of(model), batch=3, seq=11, seed=1, pad=True)
    assert feeds["input_ids"].shape != (om.EXPORT_BATCH, om.EXPORT_SEQ)
    diff = _max_diff(om.run_ort(path, feeds), om.run_ort(re_path, feeds))
    assert diff <= TOL, f"{model} ({'dynamo' if dynamo else 'legacy'}): max abs diff {diff}"
    _check_runtime_shapes(g, feeds, {B: 3, S: 11, P: 0})


def test_constants_and_attribute_form(exported):
    g = import_onnx(exported("gpt2_tiny", False))  # legacy: Constant nodes, runtime shape tensors
    consts = [p for p in g.params.values() if p.annotations.get("const")]
    assert consts and all(p.data.size <= 64 for p in consts)
    weights = [p for p in g.params.values() if not p.annotations.get("const")]
    assert all(p.data.dtype == np.float32 for p in weights)
    assert g.meta["import_stats"]["constants"] > 0
    assert g.meta["import_stats"]["attr_form"] > 0

    for dynamo in (True, False):
        g = import_onnx(exported("gpt2_tiny", dynamo))
        reshapes = [n for n in g if n.op == "Reshape" and "shape" in n.attrs]
        assert reshapes and all(len(n.inputs) == 1 for n in reshapes)
        for n in reshapes:  # 0 / -1 resolved to (symbolic) dims, as the torch importer writes them
            assert tuple(n.attrs["shape"]) == g.types[n.outputs[0]].shape, n.attrs
        assert any(not isinstance(d, int) for n in reshapes for d in n.attrs["shape"])
    g = import_onnx(exported("llama_tiny", True))
    assert any(n.op == "RotaryEmbedding" for n in g)


def test_kv_cache_inputs(tmp_path):
    path = om.make_kv_model(tmp_path / "kv.onnx")
    g = import_onnx(path)
    g.verify()
    assert g.meta["kv_tensors"] == ["past_key_values.0.key", "past_key_values.0.value",
                                    "present.0.key", "present.0.value"]
    assert g.types["past_key_values.0.key"].shape == (B, 2, P, 8)
    assert g.types["present.0.key"].shape == (B, 2, P + S, 8)
    assert g.meta["dim_sources"]["P"] == ("past_key_values.0.key", 2)
    assert g.meta["task"] == "causal_lm" and g.meta["unknown_dims"] == {}
    re_path = str(tmp_path / "re.onnx")
    save(g, re_path)
    for batch, seq, past in [(3, 5, 7), (2, 1, 9)]:  # prefill-with-past and decode
        feeds = om.kv_feeds(batch, seq, past, seed=seq)
        assert _max_diff(om.run_ort(path, feeds), om.run_ort(re_path, feeds)) <= TOL
    _check_runtime_shapes(g, om.kv_feeds(3, 5, 7), {B: 3, S: 5, P: 7})

    g2 = import_onnx(re_path)  # rooftop's own output (dims named B, S, P) imports back
    assert {t: g2.types[t] for t in g2.inputs + g2.outputs} == {t: g.types[t] for t in g.inputs + g.outputs}
    assert g2.meta["kv_tensors"] == g.meta["kv_tensors"] and g2.meta["unknown_dims"] == {}


@pytest.mark.parametrize("packed", [False, True], ids=["4d", "3d"])
def test_attention_forms_gqa_shapes_and_cost(packed, tmp_path):
    """ONNX Attention in its 4-D and 3-D ([B, S, heads·d] with q_num_heads/kv_num_heads) forms,
    with GQA (4 query heads, 2 KV heads): shapes, onnxruntime equivalence after re-emission, and a
    cost that follows the hand formula — scores over the whole past + new context, KV bytes from
    the kv_heads (not the query heads)."""
    from compiler.perf.cost import CostModel, attention_q_tiles
    from compiler.perf.hardware import hardware_by_name
    heads, kvh, d = 4, 2, 8
    path = om.make_kv_model(tmp_path / "kv.onnx", heads=heads, head_dim=d, kv_heads=kvh, packed=packed)
    g = import_onnx(path)
    g.verify()
    assert g.types["present.0.key"].shape == (B, kvh, P + S, d)
    att = next(n for n in g if n.op == "Attention")
    assert g.types[att.outputs[0]].shape == ((B, S, heads * d) if packed else (B, heads, S, d))
    re_path = str(tmp_path / "re.onnx")
    save(g, re_path)
    for batch, seq, past in [(3, 5, 7), (2, 1, 9)]:
        feeds = om.kv_feeds(batch, seq, past, heads=kvh, seed=seq)
        assert _max_diff(om.run_ort(path, feeds), om.run_ort(re_path, feeds)) <= TOL
    _check_runtime_shapes(g, om.kv_feeds(3, 5, 7, heads=kvh), {B: 3, S: 5, P: 7})

    cm = CostModel(g, hardware_by_name("h100_sxm"))
    i = next(k for k, it in enumerate(cm.items) if it.op == "Attention")
    assert cm.items[i].cost_class == "attention"
    for b, s, p in [(3, 5, 7), (8, 1, 4096), (2, 2048, 0)]:
        r = cm.evaluate(b, s, p, "decode" if s == 1 else "prefill")
        scores = b * heads * s * (p + s)
        assert r["flops"][i, 0] == pytest.approx(4 * scores * d + 5 * scores)
        tiles = attention_q_tiles(cm.hw, heads, d, 4, s)  # on-chip tiling from the hardware context
        kv_read = b * kvh * (p + s) * 2 * d * 4 * tiles
        kv_write = b * kvh * s * 2 * d * 4
        assert r["kv"][i, 0] == pytest.approx(kv_read + kv_write)
        assert r["activations"][i, 0] == pytest.approx(2 * b * heads * s * d * 4)


def test_external_data(exported, tmp_path):
    src = onnx.load(exported("gpt2_tiny", False))
    ref = onnx.numpy_helper.to_array(next(t for t in src.graph.initializer if "wte" in t.name))
    d = tmp_path / "ext"
    d.mkdir()
    path = str(d / "model.onnx")
    onnx.save_model(src, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=0)
    assert os.path.getsize(d / "model.onnx.data") > os.path.getsize(path)
    g = import_onnx(path)
    wte = next(p for n, p in g.params.items() if "wte" in n)
    np.testing.assert_array_equal(wte.data, ref)
    re_path = str(tmp_path / "re.onnx")
    facts = save(g, re_path, external_data=True)
    assert facts["external_data"] and os.path.exists(re_path + ".data")
    feeds = om.example_inputs(256, batch=1, seq=5, seed=2)
    assert _max_diff(om.run_ort(path, feeds), om.run_ort(re_path, feeds)) <= TOL

    os.rename(d / "model.onnx.data", d / "elsewhere.data")
    with pytest.raises(ModelFileError, match=r"model\.onnx\.data.*missing"):
        import_onnx(path)


def test_local_functions_inlined_and_dims_override(tmp_path):
    path = om.make_function_model(tmp_path / "fn.onnx")
    g = import_onnx(path, dims={"x": [B, S, 8]})
    assert g.ops_by_kind() == {"MatMul": 1, "Mul": 1, "Sigmoid": 1}
    assert g.types["x"].shape == (B, S, 8) and g.types["y"].shape == (B, S, 4)
    assert g.meta["dim_sources"] == {"B": ("x", 0), "S": ("x", 1)}
    assert g.meta["unknown_dims"] == {}
    re_path = str(tmp_path / "re.onnx")
    save(g, re_path)
    x = {"x": np.random.default_rng(0).standard_normal((2, 3, 8)).astype(np.float32)}
    assert _max_diff(om.run_ort(path, x), om.run_ort(re_path, x)) <= TOL

    g = import_onnx(path)  # no override: 'n', 't' are not B/S names -> recorded
    assert set(g.meta["unknown_dims"]) == {"n", "t"}
    assert g.meta["dim_sources"] == {"n": ("x", 0), "t": ("x", 1)}


def test_unknown_dims_recorded(tmp_path):
    path = om.make_nonzero_model(tmp_path / "nz.onnx")
    g = import_onnx(path)
    g.verify()
    assert g.types["x"].shape == (B, S)  # conventional names without an integer input
    unk = g.meta["unknown_dims"]
    assert len(unk) == 1
    (name, info), = unk.items()
    assert isinstance(info["symbol"], sympy.Symbol) and info["symbol"].name == name
    assert g.types["y"].shape == (info["symbol"], 2)
    re_path = str(tmp_path / "re.onnx")
    save(g, re_path)
    x = {"x": (np.random.default_rng(0).standard_normal((3, 4)) > 0).astype(np.float32)}
    assert om.run_ort(path, x)[0].tolist() == om.run_ort(re_path, x)[0].tolist()


def test_dim_strings_parse_onto_symbols():
    d = _Dims()
    d.names.update({"s0": B, "s1": S, "batch": B, "seq": S})
    assert d.parse("s0 + 1") == B + 1
    assert d.parse("2*s1") == 2 * S
    assert d.parse("batch*seq") == B * S
    assert d.parse("floor(s1/2)") == sympy.floor(S / 2)
    u = d.parse("unk__12")
    assert isinstance(u, sympy.Symbol) and u.name == "unk__12" and "unk__12" in d.unknown
    assert d.parse("unk__12") is u
    w = d.parse("/model/Reshape_output_0:dim1")  # not an expression: one opaque symbol
    assert isinstance(w, sympy.Symbol) and not d.is_known(w)
    assert d.parse("N") != sympy.N and isinstance(d.parse("N"), sympy.Symbol)  # no sympy builtins


def test_progress_callback(exported):
    seen = []
    import_onnx(exported("gpt2_tiny", True), progress=lambda i, n: seen.append((i, n)))
    assert seen and seen[-1][0] == seen[-1][1] > 0


# ---- errors ------------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist") as e:
        import_onnx(str(tmp_path / "nope.onnx"))
    assert "nope.onnx" in str(e.value)


def test_truncated_file(exported, tmp_path):
    data = open(exported("gpt2_tiny", True), "rb").read()
    path = tmp_path / "half.onnx"
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(ModelFileError, match=r"truncated.*\d+ bytes") as e:
        import_onnx(str(path))
    assert "half.onnx" in str(e.value) and "re-export" in str(e.value)


@pytest.mark.parametrize("content", [np.random.default_rng(7).bytes(4096), b"",
                                     b"version https://git-lfs.github.com/spec/v1\noid sha256:0\n"],
                         ids=["garbage", "empty", "lfs-pointer"])
def test_not_an_onnx_file(content, tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelFileError) as e:
        import_onnx(str(path))
    msg = str(e.value)
    assert "bad.onnx" in msg and any(w in msg for w in ("not an ONNX model", "empty", "Git LFS"))


@pytest.mark.parametrize("op,domain,pattern", [
    ("FastGelu", "com.microsoft", r"'the_node'.*FastGelu.*com\.microsoft.*not a standard ONNX"),
    ("Frobnicate", "", r"'the_node'.*Frobnicate.*not an ONNX operator"),
    ("Bernoulli", "", r"'the_node'.*Bernoulli.*not supported by rooftop"),
])
def test_unsupported_op(op, domain, pattern, tmp_path):
    path = om.make_single_op_model(tmp_path / "one.onnx", op, domain=domain)
    with pytest.raises(UnsupportedOpError, match=pattern) as e:
        import_onnx(path)
    assert "one.onnx" in str(e.value)


def test_model_failing_checker(tmp_path):
    from onnx import TensorProto, helper
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "not_defined"], ["y"], name="bad_add")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    path = tmp_path / "bad_graph.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)]), str(path))
    with pytest.raises(ModelFileError, match=r"bad_graph\.onnx.*check_model"):
        import_onnx(str(path))


def test_type_incorrect_model(tmp_path):
    """Passes onnx.checker but adds a bool to a float: onnxruntime refuses it, so does import."""
    from onnx import TensorProto, helper
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["b"], to=TensorProto.BOOL),
         helper.make_node("Add", ["x", "b"], ["y"], name="float_plus_bool")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    path = tmp_path / "bad_types.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)]), str(path))
    with pytest.raises(ModelFileError, match=r"bad_types\.onnx.*not type-correct.*bool"):
        import_onnx(str(path))


def test_unsupported_op_exits_2_through_the_cli(tmp_path):
    """Through the command: exit code 2, one paragraph naming the op, its domain, the node and how
    many such nodes, and what to do — no traceback, not the whole registry, no partial artifact."""
    from tests.conftest import run_cli
    path = om.make_single_op_model(tmp_path / "one.onnx", "Bernoulli", domain="")
    out = tmp_path / "run"
    r = run_cli("model=onnx", f"model.path={path}", f"hydra.run.dir={out}", "progress=false")
    assert r.returncode == 2, r.stderr
    msg = r.stderr
    assert "Traceback" not in msg
    assert "'the_node'" in msg and "'Bernoulli'" in msg and "ai.onnx" in msg
    assert "re-export" in msg.lower() and "compiler/ir/ops.py" in msg
    assert "MatMulEpilogue" not in msg and "ReduceLogSumExp" not in msg   # not the registry list
    assert not (out / "report.json").exists() and not (out / "model.onnx").exists()
