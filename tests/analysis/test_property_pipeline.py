"""Property test: random valid workloads × models × hardware through the driver's own
steps (schema validation, position check, analysis, gates, report.json) — never an error, never a
NaN / negative / infinite figure, and the monotonicity a user relies on: more batch never needs
less memory, more context never makes a decode step faster.

Models are imported once per session (emission off: the driver's analysis half is what varies with
the workload); the hardware library is sampled whole.
"""
from __future__ import annotations

import copy
import math
from functools import lru_cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compiler.analysis.context import RunContext
from compiler.analysis.phases import analyze, gates, is_generative
from compiler.driver.config import model_dims
from compiler.driver.config import validate
from compiler.perf.cost import CostModel
from compiler.perf.hardware import available_hardware, hardware_by_name
from compiler.driver.pipeline import check_positions, model_max_positions, workload_of
from compiler.perf.schedule import schedule
from reports.report import build_report
from tests.conftest import compose, imported

MODELS = ("llama_tiny", "gpt2_tiny", "mixtral_tiny", "minilm")
HARDWARE = tuple(available_hardware())


@lru_cache(maxsize=None)
def _model(name: str):
    over = {} if name == "minilm" else {"weights": "meta"}
    g = imported(name, **over)
    return g, schedule(g)


@lru_cache(maxsize=None)
def _cost(name: str, hw_name: str):
    g, _ = _model(name)
    return CostModel(g, hardware_by_name(hw_name))


def _figures(x, path=""):
    """Every number in a report, with its path."""
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return
    if isinstance(x, (int, float)):
        yield path, x
    elif isinstance(x, dict):
        for k, v in x.items():
            if k in ("point",):
                continue
            yield from _figures(v, f"{path}.{k}")
    elif isinstance(x, (list, tuple)):
        for i, v in enumerate(x):
            yield from _figures(v, f"{path}[{i}]")


@lru_cache(maxsize=None)
def _base(name: str, hw_name: str) -> dict:
    return compose([f"model={name}", f"hardware={hw_name}", "emit.enabled=false"])


def _report(name, hw_name, batch, prompt, gen, ctx):
    g, sched = _model(name)
    raw = copy.deepcopy(_base(name, hw_name))
    raw["workload"].update(batch=batch, prompt_len=prompt, gen_len=gen, context_len=ctx)
    cfg = validate(raw)
    wl = workload_of(cfg)
    max_pos, where = model_max_positions(cfg["model"])
    check_positions(cfg, wl, max_pos, where, is_generative(g))
    hw = hardware_by_name(hw_name)
    result = analyze(RunContext(cfg=cfg, workload=wl, hardware=hw, graph=g, cost=_cost(name, hw_name),
                                schedule=sched, dims=model_dims(cfg["model"])))
    assert gates(cfg, result) == []
    return build_report(result, {"emitted": False, "reason": "emit.enabled=false"})


@st.composite
def points(draw):
    name = draw(st.sampled_from(MODELS))
    hw = draw(st.sampled_from(HARDWARE))
    limit = 512 if name == "minilm" else 1024
    prompt = draw(st.integers(1, limit // 2))
    gen = 0 if name == "minilm" else draw(st.integers(0, limit // 4))
    ctx = draw(st.one_of(st.none(), st.integers(prompt, prompt + limit // 4)))   # a cache holds the prompt
    batch = draw(st.integers(1, 256))
    return name, hw, batch, prompt, gen, ctx


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(points(), st.integers(1, 64), st.integers(1, 256))
def test_random_valid_points_give_finite_nonnegative_monotone_figures(pt, more_batch, more_ctx):
    name, hw, batch, prompt, gen, ctx = pt
    rep = _report(*pt)
    for path, v in _figures(rep):
        assert math.isfinite(v) and v >= 0, (path, v)
    lat = rep["latency"]
    assert lat["ttft_s"] > 0 and rep["memory"]["total_bytes"] > 0
    assert rep["capacity"]["max_batch"] >= 0
    if lat["kind"] == "generative":
        assert lat["tpot_s"] > 0
        assert lat["e2e_s"] >= lat["ttft_s"]
        assert lat["throughput_tok_s"] == pytest.approx(batch * gen / lat["e2e_s"])
    # more batch never needs less memory
    bigger = _report(name, hw, batch + more_batch, prompt, gen, ctx)
    assert bigger["memory"]["total_bytes"] >= rep["memory"]["total_bytes"]
    # more context never makes a decode step faster
    if lat["kind"] == "generative":
        c0 = rep["workload"]["context_len"]
        longer = _report(name, hw, batch, prompt, gen, c0 + more_ctx)
        assert longer["phases"]["decode"]["time_s"] >= rep["phases"]["decode"]["time_s"]
        assert longer["latency"]["tpot_s"] >= lat["tpot_s"]
