"""Wiring of kv=, kv.dtype, parallel.*, serve.*, memory.gpu_utilization through the
pipeline into report.json — against hand-derived figures (the A10 arithmetic, the ring
all-reduce formula, a 70B's weights on 80 GB parts).

Runs go through :func:`compiler.driver.pipeline.run` (the driver the CLI calls) with meta weights; the
torch import of each model is memoized for this module (the import is not what is tested here),
everything after it — passes, cost model, analysis, reports, schema check — runs for real.
"""
from __future__ import annotations

import json

import pytest

from compiler.errors import ConfigError
from tests.conftest import assert_valid_report, compose, run_cli

GiB = 2 ** 30
FAST = ["model.weights=meta", "pipeline=cache", "pipeline.record_cost=false", "report.html=false",
        "progress=false"]


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    """``run(overrides) -> report``: pipeline.run with a memoized (copied) model import."""
    from compiler.frontends import models
    from compiler.driver.pipeline import run
    orig = models.import_torch
    cache: dict = {}

    def cached(mcfg, *a, **kw):
        key = repr(sorted((k, repr(v)) for k, v in dict(mcfg).items()))
        if key not in cache:
            cache[key] = orig(mcfg, *a, **kw)
        return cache[key].copy()

    mp = pytest.MonkeyPatch()
    mp.setattr(models, "import_torch", cached)
    n = [0]

    def go(*overrides):
        n[0] += 1
        out = tmp_path_factory.mktemp(f"run{n[0]}")
        report = run(compose(list(overrides) + FAST), str(out), show_progress=False)
        assert_valid_report(json.loads((out / "report.json").read_text()))
        return report
    yield go
    mp.undo()


A10_7B = ["model=llama2_7b", "model.dtype=float16", "hardware=a10", "workload.prompt_len=512",
          "workload.gen_len=512", "kv.max_model_len=4096"]


@pytest.fixture(scope="module")
def paged_7b(runner):
    return runner(*A10_7B, "kv=paged")


@pytest.fixture(scope="module")
def fp8_7b(runner):
    return runner(*A10_7B, "kv=paged", "kv.dtype=fp8")


@pytest.fixture(scope="module")
def tp2_70b(runner):
    return runner("model=llama2_70b", "hardware=h100_sxm", "parallel.tp=2")


def test_a10_holds_five_4096_token_sequences_contiguous(paged_7b):
    """Llama-2-7B fp16: 0.5 MiB per token, 2 GiB per 4096-token sequence; beside 13.5 GB of weights a
    24 GB A10 holds about five."""
    cap, mem = paged_7b["capacity"], paged_7b["memory"]
    assert mem["kv_bytes_per_token"] == 2 * 32 * 32 * 128 * 2 == 0.5 * 2 ** 20
    budget = 24 * GiB - mem["weights_bytes"] - mem["activation_peak_bytes"] - 0.5e9
    assert cap["kv_budget_bytes"] == pytest.approx(budget)
    # the KV budget alone holds five; the report's one capacity formula also counts the prefill
    # activations of that many 512-token sequences (compiler/analysis/phases.fit_count): four
    assert int(budget // (4096 * 0.5 * 2 ** 20)) == 5 and cap["kv"]["contiguous"]["max_sequences"] == 4
    assert cap["kv"]["max_model_len"] == 4096


def test_paged_holds_about_four_times_contiguous_for_512_plus_512(paged_7b):
    cap = paged_7b["capacity"]
    assert cap["kv_layout"] == "paged" and cap["tokens_per_block"] == 16
    assert cap["kv_blocks"] == int(cap["kv_budget_bytes"] // (16 * 0.5 * 2 ** 20))
    paged, contiguous = cap["kv"]["paged"], cap["kv"]["contiguous"]
    assert paged["blocks_per_sequence"] == 1024 / 16
    # the block pool alone holds kv_blocks // 64 sequences; with the activations of that many
    # prefills (the one capacity formula) fewer, still about three times the contiguous layout
    assert paged["max_sequences"] == cap["max_sequences"] <= cap["kv_blocks"] // 64
    assert 3 <= paged["max_sequences"] / contiguous["max_sequences"] <= 4.5
    assert contiguous["reservation_waste_fraction"] == pytest.approx(0.75)   # 1024 of 4096 used
    assert paged["fragmentation_tokens"] == 0                                # 1024 = 64 blocks
    # kv=paged: the driver appends kv_paging (the paged artifact) and kv_layout after the lift
    names = [p["name"] for p in paged_7b["passes"]]
    assert names[-2:] == ["kv_paging", "kv_layout"] and names.index("lift_kv_cache") < names.index("kv_paging")
    assert paged_7b["passes"][-2]["stats"] == {"layers": 32, "block_size": 16}
    assert paged_7b["passes"][-1]["stats"]["attention"] == 32
    assert paged_7b["model"]["layers"] == 32            # the paged graph has key_cache.i, no past_key.i


def _decode_attention(report):
    return [o for o in report["phases"]["decode"]["ops"] if o["op"] == "Attention"]


def test_fp8_cache_doubles_blocks_and_halves_decode_attention_bytes(paged_7b, fp8_7b):
    assert fp8_7b["memory"]["kv_dtype"] == "fp8" and paged_7b["memory"]["kv_dtype"] == "fp16"
    assert fp8_7b["memory"]["kv_bytes_per_token"] == paged_7b["memory"]["kv_bytes_per_token"] / 2
    assert fp8_7b["capacity"]["kv_blocks"] == pytest.approx(2 * paged_7b["capacity"]["kv_blocks"], abs=1)
    a16, a8 = _decode_attention(paged_7b), _decode_attention(fp8_7b)
    assert len(a16) == len(a8) == 32
    kv16 = sum(o["bytes_split"]["kv"] for o in a16)
    kv8 = sum(o["bytes_split"]["kv"] for o in a8)
    assert kv8 == pytest.approx(kv16 / 2)
    # the dequantization is paid: more FLOPs, but decode attention is memory-bound, so less time
    assert sum(o["flops"] for o in a8) > sum(o["flops"] for o in a16)
    assert sum(o["time_s"] for o in a8) < sum(o["time_s"] for o in a16)
    # weights untouched
    assert fp8_7b["memory"]["weights_bytes"] == paged_7b["memory"]["weights_bytes"]


def test_tp2_70b_halves_weights_per_device_and_pays_ring_allreduces(tp2_70b):
    par = tp2_70b["parallel"]
    assert (par["tp"], par["devices"]) == (2, 2)
    w = tp2_70b["memory"]["weights_bytes"]
    assert par["memory_per_device"]["weights_bytes"] == pytest.approx(w / 2, rel=0.01)
    assert par["memory_per_device"]["fits"] and tp2_70b["capacity"]["fits"]
    # two all-reduces per layer (attention out, MLP down) + the vocabulary-parallel embedding
    assert par["allreduces_per_forward"] == 2 * 80 + 1
    wl = tp2_70b["workload"]
    for phase, tokens in (("prefill", wl["batch"] * wl["prompt_len"]), ("decode", wl["batch"])):
        ph = par["phases"][phase]
        assert ph["comm_time_s"] > 0
        msg = par["allreduces_per_forward"] * tokens * 8192 * 2          # hidden 8192, fp16
        assert ph["collective_bytes"]["all_reduce"] == pytest.approx(msg)
        n = 2
        assert ph["link_bytes_per_device"]["all_reduce"] == pytest.approx(2 * (n - 1) / n * msg)
        # the latency floor dominates decode-sized messages: ≥ 161 x the per-collective latency
        assert ph["comm_time_s"] >= par["allreduces_per_forward"] * 10e-6 * 0.99
    # the headline figures are the plan's, the single-device ones kept beside them
    lat = tp2_70b["latency"]
    assert lat["ttft_s"] == par["phases"]["prefill"]["time_s"]
    assert lat["tpot_s"] == par["phases"]["decode"]["time_s"] < lat["single_device"]["tpot_s"]
    assert "tp=2" in lat["basis"]


def test_70b_on_one_h100_says_it_does_not_fit_and_needs_tp2(runner):
    r = runner("model=llama2_70b", "hardware=h100_sxm")
    cap = r["capacity"]
    assert cap["fits"] is False and cap["fits_one_device"] is False and r["memory"]["fits_one_device"] is False
    assert cap["min_tp_that_fits"] == 2
    assert cap["max_batch"] == 0 and cap["kv_blocks"] == 0 and cap["kv_budget_bytes"] < 0
    assert "does not fit" in cap["note"] and "parallel.tp=2 fits" in cap["note"]
    opts = {o["tp"]: o for o in r["parallel"]["tp_options"]["options"]}
    assert not opts[1]["fits"] and opts[2]["fits"]
    assert opts[1]["weights_bytes"] > 80 * GiB > opts[2]["weights_bytes"]
    from compiler.driver.pipeline import summary_line
    assert "DOES NOT FIT (needs parallel.tp=2)" in summary_line(r, "out")
    # a serving simulation needs KV memory: refused (exit 2) with the tp that fits
    with pytest.raises(ConfigError, match=r"no KV-cache memory is left.*parallel.tp=2"):
        runner("model=llama2_70b", "hardware=h100_sxm", "serve.rate=1", "serve.requests=10")


def test_gates_under_a_plan_read_the_memory_per_device(tp2_70b):
    from compiler.analysis.phases import gates
    dev_gb = tp2_70b["parallel"]["memory_per_device"]["total_bytes"] / 1e9
    tpot_ms = tp2_70b["latency"]["tpot_s"] * 1e3
    assert dev_gb < 80 < tp2_70b["memory"]["total_bytes"] / 1e9
    assert gates({"gate": {"max_memory_gb": 80, "max_tpot_ms": tpot_ms * 1.01}}, tp2_70b) == []
    out = gates({"gate": {"max_memory_gb": dev_gb * 0.9, "max_tpot_ms": tpot_ms * 0.9}}, tp2_70b)
    assert out == [f"gate.max_tpot_ms: TPOT (ms) is {tpot_ms:.4g}, limit {tpot_ms * 0.9:.4g}",
                   f"gate.max_memory_gb: memory per device (GB) is {dev_gb:.4g}, limit {dev_gb * 0.9:.4g}"]


SERVE = ["model=llama_tiny", "serve.rate=20", "serve.requests=200", "slo.ttft_ms=50", "slo.tpot_ms=5",
         "serve.output_len={kind: uniform, low: 8, high: 120}", "serve.prompt_len=64",
         "serve.sweep=[50,500,5000,50000]"]


def test_serve_section_is_present_and_deterministic_for_a_seed(runner):
    a = runner(*SERVE)
    b = runner(*SERVE)
    c = runner(*SERVE, "serve.seed=1")
    s = a["serve"]
    assert s == b["serve"]
    assert s != c["serve"]
    for k in ("throughput_tok_s", "ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s"):
        assert s[k] > 0
    assert s["ttft_p50_s"] <= s["ttft_p99_s"] and s["tpot_p50_s"] <= s["tpot_p99_s"]
    assert 0 <= s["slo_attainment"] <= 1 and s["max_rate_meeting_slo"] > 0
    assert s["requests"] == 200 and [x["rate"] for x in s["sweep"]] == [50, 500, 5000, 50000]
    # varied output lengths: static batching waits for the longest — continuous answers sooner
    assert s["static"]["ttft_p99_s"] > s["ttft_p99_s"]
    # throughput rises with the offered load, and continuous batching serves at least static's
    sw = sorted(s["sweep"], key=lambda x: x["rate"])
    assert sw[-1]["throughput_tok_s"] > sw[0]["throughput_tok_s"]
    assert all(x["throughput_tok_s"] >= 0.99 * x["static_throughput_tok_s"] for x in sw)
    # serving off by default
    assert "serve" not in runner("model=llama_tiny")


def test_kv_paging_is_appended_after_the_lift_when_registered(monkeypatch):
    """kv=paged: the driver adds {name: kv_paging, block_size, max_model_len} when a pass of that
    name is registered, and the kv_layout annotation pass after it; nothing otherwise."""
    import passes
    from compiler.driver.config import validate
    from compiler.driver.pipeline import kv_specs, workload_of
    cfg = validate(compose(["kv=paged", "kv.block_size=32", "workload.prompt_len=100", "workload.gen_len=28"]))
    wl = workload_of(cfg)
    monkeypatch.delitem(passes.PASSES, "kv_paging", raising=False)
    assert [s["name"] for s in kv_specs(cfg, wl)] == ["kv_layout"]
    monkeypatch.setitem(passes.PASSES, "kv_paging", passes.PASSES["dce"])
    specs = kv_specs(cfg, wl)
    assert specs[0] == {"name": "kv_paging", "block_size": 32, "max_model_len": 128}
    assert specs[1] == {"name": "kv_layout", "layout": "paged", "block_size": 32, "dtype": None}
    assert kv_specs(cfg, wl, configured=["lift_kv_cache", "kv_paging", "kv_layout"]) == []
    assert kv_specs(validate(compose()), wl) == []                  # the default adds nothing
    cfg = validate(compose(["kv.dtype=int8", "kv.max_model_len=4096"]))
    assert kv_specs(cfg, wl) == [{"name": "kv_layout", "layout": "contiguous", "block_size": 16, "dtype": "int8"}]


@pytest.mark.parametrize("over, match", [
    (["model=llama2_7b", "parallel.tp=3"], r"parallel.tp=3 does not divide the model's 32 attention heads"),
    (["model=llama2_7b", "hardware=h100_sxm", "parallel.tp=16"], r"more than the 8 devices per node"),
    (["parallel.ep=2"], r"parallel.ep=2 needs a mixture-of-experts model"),
    (["kv.block_size=0"], r"kv.block_size=0 is out of range"),
    (["memory.gpu_utilization=1.5"], r"memory.gpu_utilization=1.5 is out of range"),
    (["kv.dtype=fp4"], r"kv.dtype='fp4'"),
])
def test_impossible_values_are_config_errors(over, match, tmp_path):
    from compiler.driver.pipeline import run
    with pytest.raises(ConfigError, match=match):
        run(compose(over + FAST), str(tmp_path / "out"), show_progress=False)
    assert not (tmp_path / "out").exists()


def test_bad_value_on_the_command_line_exits_2(tmp_path):
    r = run_cli("model=llama2_7b", "parallel.tp=3", f"hydra.run.dir={tmp_path / 'out'}")
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert "parallel.tp=3 does not divide the model's 32 attention heads" in r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("dtype, ratio", [("fp8", 1 / 4), ("int8", 1 / 4), ("fp16", 1 / 2), ("fp32", 1)])
def test_kv_layout_pass_scales_kv_bytes_by_the_stored_format(dtype, ratio):
    """llama_tiny (fp32): the kv_layout annotation alone changes the KV bytes every cached
    attention moves and the cache's bytes per token; a smaller format adds the dequantization."""
    from compiler.perf.memory import kv_bytes_per_token, kv_dtype
    from compiler.perf.cost import CostModel
    from compiler.perf.hardware import load_hardware
    from passes import make_pass
    from tests.conftest import imported
    base = imported("llama_tiny")
    g = base.copy()
    res = make_pass({"name": "kv_layout", "layout": "paged", "block_size": 8, "dtype": dtype})(g)
    attn = [n for n in g.topo_order() if n.op == "Attention"]
    assert res.stats["attention"] == res.stats["annotated"] == len(attn) > 0 and res.changed
    assert all(n.annotations["kv_layout"].layout == "paged" and n.annotations["kv_layout"].block_size == 8
               for n in attn)
    assert kv_dtype(g) == dtype and kv_dtype(base) == "fp32"
    assert kv_bytes_per_token(g) == pytest.approx(ratio * kv_bytes_per_token(base))
    hw = load_hardware(compose(["hardware=h100_sxm"])["hardware"])
    before, after = CostModel(base, hw), CostModel(g, hw)
    ia = [i for i, it in enumerate(before.items) if it.op == "Attention"]
    f0, _, _, kv0 = before.raw(4, 1, 1000)
    f1, _, _, kv1 = after.raw(4, 1, 1000)
    assert kv1[ia].sum() == pytest.approx(ratio * kv0[ia].sum())
    if ratio < 1:   # 2 vector ops per K/V element moved, at peak(fp16) / peak(fp32)
        extra = 2 * (kv0[ia].sum() / 4) * hw.peak("fp16") / hw.peak("fp32")
        assert f1[ia].sum() - f0[ia].sum() == pytest.approx(extra, rel=1e-3)
    else:
        assert f1[ia].sum() == pytest.approx(f0[ia].sum())


def test_report_md_and_html_render_the_planning_sections(runner, paged_7b, tp2_70b):
    from reports.html import render_html
    from reports.markdown import render_markdown
    from reports.plots import render_all
    md = render_markdown(paged_7b)
    assert "### Capacity planning (kv=paged)" in md and f"| paged (blocks on demand) | {paged_7b['capacity']['kv']['paged']['max_sequences']} |" in md
    assert f"| contiguous (reserve max_model_len) | {paged_7b['capacity']['kv']['contiguous']['max_sequences']} |" in md
    md = render_markdown(tp2_70b)
    assert "### Parallelism (tp=2, pp=1, ep=1: 2 devices)" in md and "Parallel plan" in md
    r = runner(*SERVE)
    plots = render_all(r)
    assert plots["serving"][:8] == b"\x89PNG\r\n\x1a\n"
    page = render_html(r, plots=plots)
    assert "Serving simulation" in page and 'id="plot-serving"' in page
    assert "serving" not in render_all(paged_7b)
