"""Replay published engine measurements through rooftop (draft)."""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from compiler.analysis.context import RunContext
from compiler.analysis.phases import analyze
from compiler.driver.config import model_dims, validate
from compiler.driver.pipeline import compression_passes, kv_passes, model_passes, workload_of
from compiler.frontends.models import import_torch
from compiler.perf.cost import CostModel
from compiler.perf.hardware import load_hardware
from compiler.perf.schedule import schedule
from compiler.resources import CALIBRATION_DATA
from passes import PassContext, PassManager, make_pass

DATA = CALIBRATION_DATA / "published_engines.json"


def points() -> list[dict]:
    return json.loads(DATA.read_text())["points"]


def compose(overrides):
    from hydra import compose as _compose, initialize_config_dir
    from omegaconf import OmegaConf
    from compiler.driver.app import config_dir
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        cfg = _compose("config", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)


QUANT = {"fp8": "fp8", "int8": "w8a16", "int4": "w4a16"}


def overrides_of(p: Mapping) -> tuple[list[str] | None, str]:
    """The rooftop command-line overrides that replay point ``p`` (None + why when it cannot)."""
    w = p["workload"]
    prec = p["precision"]
    o = [f"model={p['model']}", f"hardware={p['hardware']}", "emit.enabled=false", "progress=false"]
    if p["model"] == "qwen2_5_7b":
        return None, "no conf/model entry for Qwen2.5-7B"
    wq = prec["weights"]
    if wq in QUANT:
        if wq == "fp8" and prec["activations"] not in ("fp8",):
            return None, "FP8 weight-only (activations bf16): quant= has no such scheme"
        o.append(f"quant={QUANT[wq]}")
        if wq == "int4" and "64" in (prec.get("method") or ""):
            o.append("quant.group_size=64")
    if prec.get("kv_cache") == "fp8":
        o.append("kv.dtype=fp8")
    if p["tp"] > 1:
        o.append(f"parallel.tp={p['tp']}")
    mode, metric = w["mode"], p["metric"]
    if w["input_len"] is None:
        return None, "ShareGPT lengths: the dataset's length distribution is not available"
    inp, out = int(w["input_len"]), int(w["output_len"])
    b = int(w["batch"] or 1)
    if mode in ("static_batch", "single_stream"):
        o += [f"workload.batch={b}", f"workload.prompt_len={inp}", f"workload.gen_len={out}"]
        if metric == "tpot_s":
            o.append(f"workload.context_len={inp + out // 2}")
        return o, ""
    if mode == "online" and b and metric in ("ttft_s", "tpot_s") and b == 1:
        o += [f"workload.batch=1", f"workload.prompt_len={inp}", f"workload.gen_len={out}",
              f"workload.context_len={inp + out // 2}"]
        return o, ""
    return None, f"mode {mode} not yet replayed"


def metric_of(p: Mapping, rep: Mapping) -> float:
    m = p["metric"]
    lat = rep["latency"]
    if m == "output_throughput_tok_s" or m == "tokens_per_s_per_user":
        return lat["throughput_tok_s"]
    if m == "ttft_s":
        return lat["ttft_s"]
    if m == "tpot_s":
        return lat["tpot_s"]
    if m == "e2e_s":
        return lat["e2e_s"]
    raise ValueError(m)


class Replayer:
    def __init__(self):
        self.imports: dict[str, Any] = {}
        self.compiled: dict[tuple, Any] = {}

    def graph(self, cfg):
        key = cfg["model"]["name"]
        if key not in self.imports:
            self.imports[key] = import_torch(cfg["model"])
        return copy.deepcopy(self.imports[key])

    def analyze(self, overrides):
        cfg = validate(compose(overrides))
        wl = workload_of(cfg)
        hw = load_hardware(cfg["hardware"])
        key = (cfg["model"]["name"], hw.name, json.dumps(cfg["quant"], sort_keys=True),
               json.dumps(cfg["kv"], sort_keys=True))
        ctx = PassContext(hardware=hw, points=((wl["batch"], wl["prompt_len"], 0, "prefill"),
                                                 (wl["batch"], 1, wl["context_len"], "decode")))
        if key not in self.compiled:
            g = self.graph(cfg)
            recipe = [make_pass(p, ctx) for p in (cfg["pipeline"].get("passes") or [])]
            recipe += kv_passes(cfg, wl, ctx, [p.name for p in recipe])
            lossy = compression_passes(cfg, ctx, wl)
            pm = PassManager([PassManager(model_passes(cfg, g, ctx), name="model"),
                              PassManager(recipe, name="recipe"), PassManager(lossy, name="compression")])
            pm(g)
            self.compiled[key] = g
        g = self.compiled[key]
        rc = RunContext(cfg=cfg, workload=wl, hardware=hw, graph=g, cost=CostModel(g, hw),
                        schedule=schedule(g), dims=model_dims(cfg["model"]))
        return analyze(rc)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--only")
    a = ap.parse_args(argv)
    r = Replayer()
    rows = []
    for p in points():
        if a.only and a.only not in p["id"]:
            continue
        o, why = overrides_of(p)
        if o is None:
            rows.append({"id": p["id"], "skip": why})
            print(f"{p['id']:60s} SKIP {why}", flush=True)
            continue
        t0 = time.time()
        rep = r.analyze(o)
        pred = metric_of(p, rep)
        err = pred / p["value"] - 1
        rows.append({"id": p["id"], "engine": p["engine"], "hardware": p["hardware"], "metric": p["metric"],
                     "precision": p["precision"]["weights"], "value": p["value"], "pred": pred, "err": err})
        print(f"{p['id']:60s} {p['value']:10.4g} {pred:10.4g} {err:+7.1%}  ({time.time() - t0:.1f}s)", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
