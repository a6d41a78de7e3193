"""The paged-KV artifact (passes/kv_paging.py).

The same tokens go through the contiguous artifact (one sequence at a time, its own growing
past_key/past_value), the paged artifact (one batch of sequences of different lengths, right
padded, their K/V scattered by a numpy runtime into a shuffled block pool through random block
tables; compiler/backend/paged_runtime.py) and torch eager (whole sequences): the logits agree.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from omegaconf import OmegaConf

from compiler.backend.emit import save
from compiler.errors import ConfigError
from compiler.frontends.models import build_torch_model, import_torch
from compiler.ir import B, P, S
from compiler.backend.paged_runtime import PagedKV, paging_info
from passes import run_passes
from tests.conftest import ROOT, compose, model_cfg

CONTIG_TOL = 1e-5   # paged vs contiguous artifact, fp32, same runtime
TORCH_TOL = 1e-4    # paged artifact vs torch eager (the spine's tolerance)
RECIPES = {r: OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "pipeline" / f"{r}.yaml"))["passes"]
           for r in ("default", "cache")}

_BUILT: dict = {}


def _session(path):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _built(name, tmp_path_factory, recipe="default"):
    """(torch module, raw import, contiguous graph after ``recipe``, its session). default: cache
    lifted, constants folded, fused (Attention in the 3-D form); cache: lifted only (4-D form)."""
    if name not in _BUILT:
        cfg = model_cfg(name)
        module, task = build_torch_model(cfg)
        _BUILT[name] = (module, import_torch(cfg, module, task))
    if (name, recipe) not in _BUILT:
        module, raw = _BUILT[name]
        g = raw.copy()
        run_passes(g, RECIPES[recipe])
        path = tmp_path_factory.mktemp(name) / f"contiguous_{recipe}.onnx"
        save(g, str(path))
        _BUILT[name, recipe] = (module, raw, g, _session(path))
    return _BUILT[name, recipe]


def _paged(g, tmp_path, **params):
    h = g.copy()
    run_passes(h, [{"name": "kv_paging", **params}])
    h.verify()
    path = tmp_path / "paged.onnx"
    save(h, str(path))
    return h, path


def _contiguous_steps(g, sess, ids, chunks):
    """Logits of each chunk of ``ids`` (one sequence) through the contiguous artifact, and its
    final present K/V."""
    layers = sum(1 for t in g.inputs if t.startswith("past_key."))
    kvh, hd = g.type("past_key.0").shape[1], g.type("past_key.0").shape[3]
    past = {f"past_{w}.{i}": np.zeros((1, kvh, 0, hd), np.float32) for i in range(layers) for w in ("key", "value")}
    names = [o.name for o in sess.get_outputs()]
    out, start = [], 0
    for n in chunks:
        feed = {"input_ids": ids[None, start:start + n], "position_ids": np.arange(start, start + n)[None],
                "attention_mask": np.ones((1, start + n), np.int64), **past}
        res = dict(zip(names, sess.run(None, feed)))
        out.append(res["logits"][0])
        past = {k: res[k.replace("past_", "present_")] for k in past}
        start += n
    return out, past


@pytest.mark.parametrize("name,block_size,recipe", [("llama_tiny", 4, "default"), ("llama_tiny", 16, "default"),
                                                    ("gpt2_tiny", 3, "default"), ("gpt2_tiny", 5, "cache")])
def test_paged_matches_contiguous_and_torch(name, block_size, recipe, tmp_path, tmp_path_factory):
    """Prefill of 3 sequences of 5, 11 and 8 tokens in one right-padded batch, then steps of
    1, (3, 1, 2) and 1 new tokens: every real token's logits match the contiguous artifact and
    torch eager; the pool ends up holding exactly the contiguous cache. llama_tiny is GQA
    (8 heads, 2 KV heads); block sizes 4, 3 and 5 divide none of the lengths, 16 exceeds them;
    the cache recipe (no fusion) pages the 4-D Attention form."""
    module, _, g, csess = _built(name, tmp_path_factory, recipe)
    h, path = _paged(g, tmp_path, block_size=block_size)
    sess = _session(path)
    names = [o.name for o in sess.get_outputs()]
    vocab = module.model.config.vocab_size if hasattr(module, "model") else 1024
    plan = [[5, 11, 8], [1, 1, 1], [3, 1, 2], [1, 1, 1]]
    total = [sum(step[b] for step in plan) for b in range(3)]
    rng = np.random.default_rng(7)
    ids = [rng.integers(0, vocab, n).astype(np.int64) for n in total]
    with torch.no_grad():
        ref = [module(torch.from_numpy(x)[None], torch.arange(len(x))[None]).numpy()[0] for x in ids]
    contiguous = [_contiguous_steps(g, csess, ids[b], [step[b] for step in plan]) for b in range(3)]

    rt = PagedKV(paging_info(str(path)), num_blocks=48, seed=block_size)
    seqs = [0, 1, 2]
    for s in seqs:
        rt.add(s)
    worst_c = worst_t = 0.0
    for k, news in enumerate(plan):
        width = max(news)
        inp = np.zeros((3, width), np.int64)   # right padding: token 0
        for b in seqs:
            inp[b, :news[b]] = ids[b][rt.lens[b]:rt.lens[b] + news[b]]
        feed = {**rt.feeds(seqs, extra_columns=1), "input_ids": inp, "position_ids": rt.positions(seqs, width)}
        res = dict(zip(names, sess.run(None, feed)))
        for b in seqs:
            got = res["logits"][b, :news[b]]
            start = rt.lens[b]
            worst_c = max(worst_c, float(np.abs(got - contiguous[b][0][k]).max()))
            worst_t = max(worst_t, float(np.abs(got - ref[b][start:start + news[b]]).max()))
        rt.scatter(seqs, news, res)
    assert worst_c <= CONTIG_TOL, worst_c
    assert worst_t <= TORCH_TOL, worst_t
    # the blocks, read back through the tables, are the contiguous cache
    assert all(len(set(rt.tables[s])) == len(rt.tables[s]) for s in seqs)
    used = [blk for s in seqs for blk in rt.tables[s]]
    assert used != sorted(used) and len(set(used)) == len(used)   # shuffled, never shared
    for b in seqs:
        for i in range(h.meta["kv_paging"]["layers"]):
            pool = rt.pools[f"key_cache.{i}"][rt.tables[b]]                  # [blocks, H, bs, D]
            flat = pool.transpose(1, 0, 2, 3).reshape(pool.shape[1], -1, pool.shape[3])[:, :total[b]]
            np.testing.assert_allclose(flat, contiguous[b][1][f"past_key.{i}"][0], atol=CONTIG_TOL)


def test_paged_graph_io_annotations_and_onnx_checks(tmp_path, tmp_path_factory):
    _, _, g, _ = _built("llama_tiny", tmp_path_factory)
    h, path = _paged(g, tmp_path, block_size=16, max_model_len=100)
    kvh, hd = g.type("past_key.0").shape[1], g.type("past_key.0").shape[3]
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    types = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    assert list(dims)[:4] == ["input_ids", "position_ids", "block_table", "context_lens"]
    assert dims["block_table"] == ["B", "max_blocks"] and types["block_table"] == onnx.TensorProto.INT64
    assert dims["context_lens"] == ["B"] and types["context_lens"] == onnx.TensorProto.INT64
    layers = 4
    for i in range(layers):
        for w in ("key", "value"):
            assert dims[f"{w}_cache.{i}"] == ["num_blocks", kvh, 16, hd]
    assert not any(n.startswith("past_") for n in dims)
    outs = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    assert list(outs)[0] == "logits"
    assert {o for o in outs if o != "logits"} == {f"new_{w}.{i}" for i in range(layers) for w in ("key", "value")}
    assert outs["new_key.0"] == ["B", kvh, "S", hd]
    # standard ONNX ops only (the paging adds Gather/Transpose/Reshape and the mask's Range/Less/…)
    assert {n.domain for n in model.graph.node if n.op_type in ("Gather", "Range", "Less")} == {""}
    gathers = [n for n in model.graph.node if n.op_type == "Gather" and "block_table" in n.input]
    assert len(gathers) == 2 * layers
    # the layout annotation, in the IR and serialized into the Attention nodes
    attn = [n for n in h if n.op == "Attention"]
    assert len(attn) == layers
    for n in attn:
        lay = n.annotations["kv_layout"]
        assert (lay.layout, lay.block_size) == ("paged", 16)
    meta = [dict((p.key, p.value) for p in n.metadata_props) for n in model.graph.node if n.op_type == "Attention"]
    assert all("paged" in m.get("rooftop.kv_layout", "") for m in meta) and len(meta) == layers
    info = paging_info(model)
    assert info["block_size"] == 16 and info["max_model_len"] == 100 and info["max_blocks_per_seq"] == 7
    # IR types: the gathered past is P tokens (max_blocks = P / block_size) for the cost model
    assert h.type("block_table").shape == (B, P / 16)
    assert h.type("new_value.3").shape == (B, kvh, S, hd)


def test_paged_costs_like_contiguous_attention(tmp_path_factory):
    """The gather is the paged kernel's block-table indirection (costed as a view): KV bytes per
    token and the decode step's KV traffic are the contiguous cache's at a block multiple."""
    from compiler.perf.memory import kv_bytes_per_token
    from compiler.perf.cost import CostModel
    from compiler.perf.hardware import load_hardware
    _, _, g, _ = _built("llama_tiny", tmp_path_factory)
    h = g.copy()
    run_passes(h, [{"name": "kv_paging", "block_size": 16}])
    assert kv_bytes_per_token(h) == kv_bytes_per_token(g) > 0
    hw = load_hardware(compose(["hardware=a100_80g"])["hardware"])
    kv = {}
    for name, graph in (("contiguous", g), ("paged", h)):
        ops = CostModel(graph, hw).op_table(4, 1, 512, "decode")
        kv[name] = sum(o["bytes_split"]["kv"] for o in ops)
        assert not any(o["op"] == "PagedKVGather" for o in ops)
    # the same KV reads and cache writes; only the new tokens' K/V outputs (a [B, H, 1, D] copy
    # per layer and tensor, for the runtime's scatter) come on top
    kvh, hd = g.type("past_key.0").shape[1], g.type("past_key.0").shape[3]
    assert kv["paged"] - kv["contiguous"] == pytest.approx(4 * 8 * kvh * 1 * hd * 4)
    assert kv["paged"] - kv["contiguous"] < 0.01 * kv["contiguous"]


@pytest.mark.parametrize("params,needle", [
    ({"block_size": 0}, "block_size=0"), ({"block_size": -16}, "block_size=-16"),
    ({"block_size": True}, "block_size=True"), ({"block_size": 2.5}, "block_size=2.5"),
    ({"max_model_len": 0}, "max_model_len=0"), ({"max_model_len": -1}, "max_model_len=-1"),
    ({"blocksize": 16}, "blocksize"),
])
def test_impossible_params_are_config_errors(params, needle):
    from passes import make_pass
    with pytest.raises(ConfigError, match=needle) as e:
        make_pass({"name": "kv_paging", **params})
    assert e.value.exit_code == 2 and "\n" not in str(e.value)


def test_model_without_cache_and_order_are_config_errors(tmp_path_factory):
    from passes import PassManager, make_pass
    _, raw, g, _ = _built("gpt2_tiny", tmp_path_factory)
    with pytest.raises(ConfigError, match="KV cache") as e:
        run_passes(raw.copy(), [{"name": "kv_paging"}])   # imported, cache not lifted
    assert e.value.exit_code == 2
    with pytest.raises(ConfigError, match="before"):
        PassManager([make_pass("kv_paging"), make_pass("lift_kv_cache")])
    h = g.copy()
    h.meta["max_positions"] = 64
    with pytest.raises(ConfigError, match="max_model_len=100"):
        run_passes(h, [{"name": "kv_paging", "max_model_len": 100}])
    sources = dict(g.meta["dim_sources"])
    h = g.copy()   # a second run is a no-op; the original keeps its meta
    run_passes(h, ["kv_paging"])
    before = (list(h.inputs), len(h))
    rec = run_passes(h, ["kv_paging"]).records[0]
    assert not rec.changed and (list(h.inputs), len(h)) == before
    assert g.meta["dim_sources"] == sources and "kv_paging" not in g.meta and "past_key.0" in g.inputs


def test_driver_refuses_bad_block_size_before_import(tmp_path):
    """Through the driver (what kv=paged appends): exit 2 before anything is imported or written."""
    from compiler.driver.pipeline import run
    cfg = compose(["model=llama_tiny", "report.html=false"])
    cfg["pipeline"]["passes"] = list(cfg["pipeline"]["passes"]) + [{"name": "kv_paging", "block_size": 0}]
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="block_size=0") as e:
        run(cfg, str(out), show_progress=False)
    assert e.value.exit_code == 2
    assert not (out / "report.json").exists() and not (out / "model.onnx").exists()


@pytest.mark.slow
def test_driver_emits_and_verifies_a_paged_artifact(tmp_path):
    """The pass appended to the default recipe (what kv=paged does): report.json validates, and
    the emitted paged model.onnx is verified against torch eager the way a runtime runs it
    (compiler/backend/verify.py: unequal prompts in one batch, shuffled pool, scattered new K/V)."""
    from compiler.driver.pipeline import run
    cfg = compose(["model=llama_tiny", "report.html=false"])
    cfg["pipeline"]["passes"] = list(cfg["pipeline"]["passes"]) + [{"name": "kv_paging", "block_size": 4}]
    report = run(cfg, str(tmp_path / "out"), show_progress=False)
    ver = report["emit"]["verification"]
    assert report["emit"]["emitted"] and ver["passed"]
    assert [s["step"] for s in ver["inputs"]] == ["prefill", "decode1", "decode2"]
    assert ver["inputs"][0]["new_tokens"] == [7, 5] and ver["inputs"][1]["new_tokens"] == [1, 3]
    assert max(o["max_abs_err"] for o in ver["outputs"].values()) <= TORCH_TOL
    assert "block_table" in report["model"]["inputs"] and "past_key.0" not in report["model"]["inputs"]
    assert paging_info(str(tmp_path / "out" / "model.onnx"))["block_size"] == 4


def test_accuracy_stage_feeds_a_paged_artifact(tmp_path, tmp_path_factory):
    """quant= measures accuracy on the artifact one sequence at a time without a cache
    (compiler/backend/accuracy.py feeds_for): a paged artifact gets an empty block table."""
    from compiler.backend.accuracy import run_first_output
    _, _, g, csess = _built("gpt2_tiny", tmp_path_factory)
    _, path = _paged(g, tmp_path, block_size=8)
    ids = np.random.default_rng(3).integers(0, 1024, 9)
    got, want = run_first_output(_session(path), ids), run_first_output(csess, ids)
    assert np.abs(got - want).max() <= CONTIG_TOL


def _toy_decoder(mask_kind: str, with_positions: bool = True):
    """A one-attention graph in the shape of an ONNX-file decoder after ``kv_cache``: GQA (2 query
    heads, 1 KV head, 4-D), is_causal, plus the padding mask from ``attention_mask [B, P + S]``
    (boolean, or additive float)."""
    from compiler.ir import Graph, TensorType
    g = Graph("toy")
    g.add_input("input_ids", TensorType("int64", (B, S)))
    if with_positions:
        g.add_input("position_ids", TensorType("int64", (B, S)))
    am = g.add_input("attention_mask", TensorType("int64", (B, P + S)))
    q = g.add_input("q", TensorType("float32", (B, 2, S, 8)))
    k = g.add_input("k", TensorType("float32", (B, 1, S, 8)))
    v = g.add_input("v", TensorType("float32", (B, 1, S, 8)))
    pk = g.add_input("past_key.0", TensorType("float32", (B, 1, P, 8)))
    pv = g.add_input("past_value.0", TensorType("float32", (B, 1, P, 8)))
    if mask_kind == "bool":
        m = g.add_op("Cast", [am], 1, {"to": onnx.TensorProto.BOOL}).outputs[0]
    else:
        f = g.add_op("Cast", [am], 1, {"to": onnx.TensorProto.FLOAT}).outputs[0]
        one = g.add_param("one", TensorType("float32", ()), np.array(1.0, np.float32), const=True)
        big = g.add_param("big", TensorType("float32", ()), np.array(-1e4, np.float32), const=True)
        m = g.add_op("Mul", [g.add_op("Sub", [one, f], 1).outputs[0], big], 1).outputs[0]
    m = g.add_op("Unsqueeze", [m], 1, {"axes": [1, 2]}).outputs[0]
    m = g.add_op("Expand", [m], 1, {"shape": [B, 1, S, P + S]}).outputs[0]
    g.add_op("Attention", [q, k, v, m, pk, pv], ["y", "present_key.0", "present_value.0"], {"is_causal": 1})
    g.set_outputs(["y", "present_key.0", "present_value.0"])
    g.meta.update(kv_tensors=sorted([pk, pv, "present_key.0", "present_value.0"]), causal=True,
                  dim_sources={"B": ("input_ids", 0), "S": ("input_ids", 1), "P": ("past_key.0", 2)})
    g.verify()
    return g


@pytest.mark.parametrize("mask_kind,block_size", [("bool", 3), ("float", 3), ("bool", 1)])
def test_own_padding_mask_is_kept(mask_kind, block_size, tmp_path):
    """An attention that has its own mask (an ONNX-file decoder's padding mask, boolean or
    additive) keeps it, restricted to each sequence's context: contexts 4 and 7 with a masked
    hole in the first one's history, 2 new tokens each, block size 3 (and 1: a block a token)."""
    g = _toy_decoder(mask_kind)
    save(g, str(tmp_path / "c.onnx"))
    h, path = _paged(g, tmp_path, block_size=block_size)
    assert [n.op for n in h if n.outputs[0] == "new_key.0"] == ["Identity"]
    csess, psess = _session(tmp_path / "c.onnx"), _session(path)
    rng = np.random.default_rng(5)
    ctx, s = [4, 7], 2
    hist = {b: (rng.standard_normal((1, ctx[b], 8)), rng.standard_normal((1, ctx[b], 8))) for b in range(2)}
    new = {n: rng.standard_normal((2, 2 if n == "q" else 1, s, 8)).astype(np.float32) for n in "qkv"}
    hole = [[1], []]
    want = []
    for b in range(2):
        am = np.ones((1, ctx[b] + s), np.int64)
        am[0, hole[b]] = 0
        feed = {"input_ids": np.zeros((1, s), np.int64), "position_ids": np.zeros((1, s), np.int64),
                "attention_mask": am, **{n: new[n][b:b + 1] for n in "qkv"},
                "past_key.0": hist[b][0].astype(np.float32).reshape(1, 1, ctx[b], 8),
                "past_value.0": hist[b][1].astype(np.float32).reshape(1, 1, ctx[b], 8)}
        want.append(csess.run(["y"], feed)[0][0])
    rt = PagedKV(paging_info(str(path)), num_blocks=12, seed=2)
    for b in range(2):
        rt.add(b)
        rt.scatter([b], [ctx[b]], {"new_key.0": hist[b][0].reshape(1, 1, ctx[b], 8),
                                   "new_value.0": hist[b][1].reshape(1, 1, ctx[b], 8)})
    feeds = rt.feeds([0, 1])
    width = feeds["block_table"].shape[1] * block_size
    am = np.ones((2, width + s), np.int64)   # the padded past: context_lens masks the tail
    am[0, 1] = 0
    got = psess.run(["y"], {**feeds, "input_ids": np.zeros((2, s), np.int64), "position_ids": rt.positions([0, 1], s),
                            "attention_mask": am, **new})[0]
    np.testing.assert_allclose(got, np.stack(want), atol=CONTIG_TOL)


def test_positions_from_the_cache_length_are_refused():
    """Without position_ids, positions come from P (ONNX-file decoders: Range(P, P + S)), which
    one paged batch does not share: a config error, not a silently wrong artifact."""
    g = _toy_decoder("bool", with_positions=False)
    with pytest.raises(ConfigError, match="position_ids") as e:
        run_passes(g, ["kv_paging"])
    assert e.value.exit_code == 2
