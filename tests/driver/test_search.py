"""Hardware-aware search (conf/search/*.yaml, compiler/driver/sweep.py) over the pipeline space, and the
N:M sparsity block targets it searches (passes/quant/blocks.py).

The sweeps run through the real ``rooftop -m`` command on a one-layer ONNX decoder with real
weights (tests/onnx_models.make_kv_model): a trial costs well under a second, and its accuracy can
be measured; the meta-weight case uses llama_tiny built on the meta device.
"""
from __future__ import annotations

import json
import shlex

import numpy as np
import pytest

from compiler import schema
from compiler.errors import ConfigError
from compiler.driver.sweep import constraint_violations, deployed, reproduce_command
from tests.conftest import compose, imported, run_cli
from tests.onnx_models import make_kv_model

# everything but quant × batch fixed; report.html off as in the recipes
FIXED = ["hardware=a100_80g", "pipeline=default", "sparsity=none", "quant.group_size=128", "kv.dtype=fp16",
         "parallel.tp=1", "report.html=false", "emit.enabled=false"]
SLO = "slo.ttft_ms=0.9"
SMALL = ["hydra.sweeper.sampler.n_startup_trials=5"]     # 12 points: 5 random trials, then TPE


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    return make_kv_model(str(tmp_path_factory.mktemp("m") / "kv.onnx"), vocab=512, heads=4, head_dim=32)


def _sweep(tmp, name, *args):
    out = tmp / name
    r = run_cli("-m", *args, f"hydra.sweep.dir={out}", timeout=600)
    assert (out / "sweep.json").is_file(), r.stdout[-3000:] + r.stderr[-3000:]
    doc = json.loads((out / "sweep.json").read_text())
    assert schema.errors(doc, "sweep") == []
    return r, out, doc


def _params(row, keys=("quant", "workload.batch")):
    return {k: v for k, _, v in (o.partition("=") for o in row["overrides"]) if k in keys}


def _row(doc, job):
    return next(r for r in doc["rows"] if r["job"] == job)


@pytest.fixture(scope="module")
def searches(onnx_model, tmp_path_factory):
    """quant scheme × batch under a TTFT SLO: exhaustively (basic sweeper), by the optuna recipe,
    and by the recipe again (same seed, fewer trials: the same first trials)."""
    tmp = tmp_path_factory.mktemp("search")
    model = ["model=onnx", f"model.path={onnx_model}", SLO, *FIXED]
    return {
        "grid": _sweep(tmp, "grid", "search.objective=throughput_tok_s", *model,
                       "quant=none,w8a16,w4a16,fp8", "workload.batch=4,16,64"),
        "tpe": _sweep(tmp, "tpe", "search=throughput", "hydra.sweeper.n_trials=16", *SMALL, *model,
                      "quant=choice(none,w8a16,w4a16,fp8)", "workload.batch=choice(4,16,64)"),
        "again": _sweep(tmp, "again", "search=throughput", "hydra.sweeper.n_trials=6", *SMALL, *model,
                        "quant=choice(none,w8a16,w4a16,fp8)", "workload.batch=choice(4,16,64)"),
    }


def test_recipe_finds_the_exhaustive_best_over_quant_and_batch(searches):
    (rg, _, grid), (rt, out, tpe) = searches["grid"], searches["tpe"]
    assert rg.returncode == 0 and rt.returncode == 0, (rg.stderr[-2000:], rt.stderr[-2000:])
    assert grid["sweeper"] == "BasicSweeper" and tpe["sweeper"] == "OptunaSweeper"
    assert grid["points"] == 12 and tpe["points"] == 16
    # the SLO binds: some points are infeasible, pruned on their cost report before any emission
    assert 0 < grid["counts"]["infeasible"] < 12 and grid["counts"]["failed"] == 0
    for row in grid["rows"] + tpe["rows"]:
        assert not row["emitted"]
        if row["status"] == "infeasible":
            assert row["pruned"] == "cost" and "slo.ttft_ms" in row["error"] and row["ttft_s"] * 1e3 > 0.9
        else:
            assert row["status"] == "ok" and row["ttft_s"] * 1e3 <= 0.9
    assert not list(out.rglob("model.onnx"))
    # four schemes really differ (the space is not flat)
    assert len({r["objective"] for r in grid["rows"] if r["status"] == "ok"}) >= 4
    best_grid, best_tpe = _row(grid, grid["best"]), _row(tpe, tpe["best"])
    assert best_grid["objective"] == max(r["objective"] for r in grid["rows"] if r["status"] == "ok")
    assert _params(best_tpe) == _params(best_grid) and best_tpe["objective"] == best_grid["objective"]


def test_search_is_deterministic_for_a_seed(searches):
    (_, _, a), (_, _, b) = searches["tpe"], searches["again"]
    trials = lambda doc: [(r["job"], _params(r), r["status"], r["objective"])      # noqa: E731
                          for r in sorted(doc["rows"], key=lambda r: r["job"])]
    assert trials(b) == trials(a)[:6]


def test_summary_shows_the_best_configuration_and_every_pruned_trial(searches, onnx_model):
    from compiler.driver.pipeline import run
    _, out, doc = searches["tpe"]
    best = _row(doc, doc["best"])
    md = (out / "sweep.md").read_text()
    page = (out / "sweep.html").read_text()
    assert "## Best configuration" in md and doc["best_command"] in md and "Best configuration" in page
    pruned = [r for r in doc["rows"] if r["status"] == "infeasible"]
    assert pruned and md.count("\n| ") == 1 + doc["points"]
    for r in pruned:
        assert f"- #{r['job']} `" in md and r["error"] in md and "infeasible (cost)" in md
    assert page.count("<b>pruned before emission</b>") == len(pruned) and "Search trials" in page
    # the command runs the best point alone and reproduces its objective
    cmd = shlex.split(doc["best_command"])
    assert cmd[0] == "rooftop" and not any(a.startswith(("search", "hydra")) for a in cmd)
    assert set(_params(best).items()) <= {tuple(a.split("=", 1)) for a in cmd[1:]}
    rep = run(compose(cmd[1:]), str(out / "alone"))
    assert rep["latency"]["throughput_tok_s"] == pytest.approx(best["objective"], rel=1e-12)


def test_min_accuracy_prunes_a_lossy_scheme_on_a_real_model(onnx_model, tmp_path):
    from compiler.driver.pipeline import run
    r, out, doc = _sweep(tmp_path, "acc", "search.objective=throughput_tok_s", "model=onnx",
                         f"model.path={onnx_model}", *FIXED, "workload.batch=4", "gate.min_accuracy=0.9",
                         "accuracy.samples=6", "quant=none,w8a16,w4a16")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {_params(x)["quant"]: x for x in doc["rows"]}
    # w4a16 (RTN, groups of 128) measures below 0.9: infeasible, its artifact deleted
    w4 = rows["w4a16"]
    assert w4["status"] == "infeasible" and w4["pruned"] == "accuracy" and w4["objective"] is None
    assert w4["accuracy_source"] == "measured" and w4["accuracy"] < 0.9
    assert "gate.min_accuracy" in w4["error"] and not w4["emitted"]
    # w8a16 measures above: feasible, kept with its artifact (measured on it)
    w8 = rows["w8a16"]
    assert w8["status"] == "ok" and w8["accuracy"] >= 0.9 and w8["emitted"]
    rep = json.loads((out / w8["report"]).read_text())
    assert rep["accuracy"]["measured"] and rep["accuracy"]["value"] == w8["accuracy"]
    # the fp32 reference meets any accuracy bound; nothing needed emitting
    ref = rows["none"]
    assert ref["status"] == "ok" and ref["accuracy_source"] == "reference" and ref["accuracy"] == 1.0
    assert not ref["emitted"]
    assert doc["best"] in (ref["job"], w8["job"])
    # the measurement is the one a single run of the same point makes
    alone = run(compose(["model=onnx", f"model.path={onnx_model}", *FIXED[:-1], "workload.batch=4",
                         "accuracy.samples=6", "quant=w4a16"]), str(tmp_path / "alone"))
    assert alone["accuracy"]["value"] == w4["accuracy"]
    assert "Infeasible trials" in (out / "sweep.md").read_text()


def test_meta_weights_lossy_and_unshardable_points_are_infeasible(tmp_path):
    from compiler.driver.sweep import run_point
    common = ["model=llama_tiny", "model.weights=meta", "hardware=h100_sxm", "report.html=false",
              "emit.enabled=false", "gate.min_accuracy=0.5", "search.objective=tpot_s", "quant=w4a16"]
    recs = {}
    for tp in (1, 3):
        d = tmp_path / f"tp{tp}"
        assert run_point(compose(common + [f"parallel.tp={tp}"]), str(d)) == float("inf")   # the worst TPOT
        recs[tp] = (json.loads((d / "point.json").read_text()), d)
    (lossy, d1), (unshardable, d3) = recs[1], recs[3]
    # no accuracy can be measured without weights: a lossy point cannot meet gate.min_accuracy
    assert lossy["status"] == "infeasible" and lossy["pruned"] == "accuracy" and lossy["exit_code"] == 0
    assert "meta weights" in lossy["error"] and "gate.min_accuracy" in lossy["error"]
    assert json.loads((d1 / "report.json").read_text())["latency"]["tpot_s"] > 0   # its cost report
    # tp=3 does not divide llama_tiny's heads: pruned before the import
    assert unshardable["status"] == "infeasible" and unshardable["pruned"] == "cost"
    assert "parallel.tp=3" in unshardable["error"] and not (d3 / "report.json").exists()
    assert not list(tmp_path.rglob("model.onnx"))


def test_deployed_figures_follow_the_parallel_plan():
    rep = {"workload": {"batch": 8},
           "latency": {"ttft_s": 0.010, "tpot_s": 0.002, "e2e_s": 0.010 + 9 * 0.002,
                       "throughput_tok_s": 8 * 10 / (0.010 + 9 * 0.002)},
           "memory": {"total_bytes": 60e9, "capacity_bytes": 80e9}}
    one = deployed(rep)
    assert one["devices"] == 1 and one["tpot_s"] == 0.002 and one["memory_bytes"] == 60e9
    rep["parallel"] = {"devices": 2, "phases": {"prefill": {"time_s": 0.006}, "decode": {"time_s": 0.0015}},
                       "memory_per_device": {"total_bytes": 31e9, "usable_bytes": 80e9}}
    two = deployed(rep)
    e2e = 0.006 + 9 * 0.0015
    assert two["devices"] == 2 and two["ttft_s"] == 0.006 and two["tpot_s"] == 0.0015
    assert two["e2e_s"] == pytest.approx(e2e) and two["throughput_tok_s"] == pytest.approx(80 / e2e)
    assert two["throughput_per_device_tok_s"] == pytest.approx(40 / e2e) and two["memory_bytes"] == 31e9
    # a search gates the deployed figures: one device misses both budgets, the tp=2 plan meets them
    cfg = {"gate": {"max_tpot_ms": 1.8, "max_memory_gb": 40}}
    assert constraint_violations(cfg, rep) == []
    del rep["parallel"]
    assert constraint_violations(cfg, rep) == ["gate.max_tpot_ms: TPOT (ms) is 2, limit 1.8",
                                               "gate.max_memory_gb: memory (GB) is 60, limit 40"]
    assert reproduce_command(["search=tpot", "quant=w4a16", "hydra.sweeper.n_trials=3", "search.objective=x",
                              "workload.batch=8"]) == "rooftop quant=w4a16 workload.batch=8"


# ------------------------------------------------------------------------------------------------
# sparsity.targets: N:M pruning per block type

def _prune(g, **params):
    from passes import PassContext, make_pass
    from compiler.perf.hardware import hardware_by_name
    p = make_pass({"name": "prune_nm", "cost_aware": False, **params}, PassContext(hardware=hardware_by_name("a100_80g")))
    return p(g)


@pytest.mark.parametrize("targets, pruned", [(["mlp"], {"mlp"}), (["attention"], {"attention"}),
                                             ("all", {"attention", "mlp"})])
def test_sparsity_targets_prune_only_the_named_blocks(targets, pruned):
    from passes.quant import satisfies_nm
    from passes.quant.passes import linear_sites
    g0 = imported("llama_tiny")
    g = g0.copy()
    res = _prune(g, targets=targets)
    seen = set()
    for s in linear_sites(g):
        if s.reason:
            continue
        src = str(g.params[s.weight].annotations.get("source"))
        kind = "attention" if ".self_attn." in src else "mlp"          # the names say the truth here
        seen.add(kind)
        w, w0 = np.asarray(g.params[s.weight].data), np.asarray(g0.params[s.weight].data)
        if kind in pruned:
            assert satisfies_nm(w, 2, 4) and np.count_nonzero(w) <= w.size // 2
        else:
            np.testing.assert_array_equal(w, w0)
    assert seen == {"attention", "mlp"}
    layers = g.meta["sparsity"]["layers"]
    assert {d["block"] for d in layers if "block" in d} == {"attention", "mlp"} - pruned
    assert res.stats["pruned"] == sum(d["pruned"] for d in layers) > 0
    assert g.meta["sparsity"]["targets"] == sorted(pruned)


def test_block_types_of_fused_and_onnx_graphs(onnx_model):
    from compiler.frontends.onnx_import import import_onnx
    from passes.quant.blocks import block_type
    from passes.quant.passes import linear_sites
    g = import_onnx(onnx_model)
    kinds = {s.weight: block_type(g, s.node) for s in linear_sites(g, exclude=())}
    # wout reads the attention's merged heads: this toy decoder's output projection (and LM head)
    assert kinds == {"wk": "attention", "wv": "attention", "wout": "attention"}
    # after fusion (merged Q/K/V and gate/up weights, rotary and attention layouts folded)
    from compiler.perf.hardware import hardware_by_name
    from passes import PassContext, make_pass
    fused = imported("llama_tiny").copy()
    make_pass({"name": "fuse"}, PassContext(hardware=hardware_by_name("a100_80g")))(fused)
    sites = [s for s in linear_sites(fused) if not s.reason]
    assert any(c.op == "Split" for s in sites for c, _ in fused.consumers(s.node.outputs[0]))  # Q/K/V merged
    for s in sites:
        src = str(fused.params[s.weight].annotations.get("source"))
        assert block_type(fused, s.node) == ("attention" if ".self_attn." in src else "mlp"), src
    assert compose(["sparsity=nm_mlp"])["sparsity"]["targets"] == ["mlp"]
    assert compose(["sparsity=nm_attention"])["sparsity"]["targets"] == ["attention"]
    assert compose(["sparsity=nm"])["sparsity"]["targets"] == ["attention", "mlp"]


@pytest.mark.parametrize("bad", [["ffn"], [], "everything"])
def test_bad_sparsity_targets_are_refused(bad):
    with pytest.raises(ConfigError, match="sparsity.targets"):
        _prune(imported("llama_tiny").copy(), targets=bad)
