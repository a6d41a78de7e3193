"""Multiruns: one task per point that never takes the sweep down, and one summary per sweep.

``rooftop -m hardware=a100_80g,h100_sxm workload.batch=1,8,64`` runs one point per combination
(with any Hydra launcher: the basic one, joblib, Ray, submitit). Each point runs
:func:`run_point`, which records its outcome in ``point.json`` beside its report — ``ok``,
``gate`` (a ``gate.*`` budget was exceeded; the report is written), ``infeasible`` (a search
constraint was violated: pruned, see below) or ``failed`` (no report; the error says why) — and
returns the search objective when one is set. At the end of the multirun the Hydra callback
:class:`SweepSummary` (``hydra.callbacks.sweep_summary`` in conf/config.yaml) reads every point
directory and writes, in the sweep directory:

- ``sweep.json`` (schema: compiler/schema/sweep.schema.json): one row per point — its overrides,
  predicted TTFT / TPOT / throughput, memory, max batch, accuracy where measured, status and error
  — sorted (best first), with the Pareto front marked;
- ``sweep.md``: the same table;
- ``sweep.html``: self-contained (plots inlined as base64 PNG): the table, the Pareto front of
  latency vs memory (vs accuracy when measured), throughput vs batch per hardware, and for a
  search the objective per trial.

Search (``search.objective`` set, e.g. by ``search=throughput``, which also selects the Optuna
sweeper; conf/search/*.yaml): each trial runs in two stages, so that a trial that violates a
constraint is pruned *before* anything is emitted:

1. cost only (emission off): the roofline report at the point's batch. A violated constraint —
   ``slo.ttft_ms`` / ``slo.tpot_ms``, the hardware's memory, any ``gate.*`` budget on latency,
   memory or throughput — makes it *infeasible* (``pruned: cost``); no model.onnx is written.
2. only for a feasible point that needs an artifact: emission, and with ``gate.min_accuracy`` /
   ``gate.max_accuracy_drop`` set on a lossy point (``quant=`` / ``sparsity=``), the accuracy
   measured on that artifact against the fp32 reference (compiler/backend/accuracy.py). Below the bound →
   *infeasible* (``pruned: accuracy``) and the artifact is deleted.

Accuracy constraints: a point without a lossy pass *is* the fp32 reference and meets any accuracy
bound (its accuracy is shown as 1, ``accuracy_source: reference``); a lossy point whose accuracy
cannot be measured — meta weights (cost-only models) or ``accuracy.enabled=false`` — is infeasible
(it cannot be shown to meet the bound), pruned in stage 1. An infeasible trial's objective is the
worst value (−inf when maximizing, +inf when minimizing), so the sampler learns to avoid it; the
summary lists every trial with its reason.

The sweep command exits with the first failed point's code (2 or 4, 1 for an internal error),
else 3 if a point exceeded a gate, else 0 (infeasible search points are not failures).
"""
from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import os
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from compiler.errors import ConfigError, GateError, RooftopError
from compiler.driver import signals
from compiler.driver.pipeline import run
from compiler.driver.config import validate, check_config_plan
from compiler.perf.hardware import load_hardware

log = logging.getLogger("rooftop")

POINT_FILE = "point.json"
SCHEMA_VERSION = "1.0"
EXIT_INTERNAL = 1

# objective name -> (path in report.json, natural direction)
OBJECTIVES: dict[str, tuple[str, str]] = {
    "throughput_tok_s": ("latency.throughput_tok_s", "maximize"),
    "decode_throughput_tok_s": ("latency.decode_throughput_tok_s", "maximize"),
    "throughput_per_device_tok_s": ("latency.throughput_per_device_tok_s", "maximize"),
    "tpot_s": ("latency.tpot_s", "minimize"),
    "ttft_s": ("latency.ttft_s", "minimize"),
    "e2e_s": ("latency.e2e_s", "minimize"),
    "memory_bytes": ("memory.total_bytes", "minimize"),
    "max_batch": ("capacity.max_batch", "maximize"),
    "max_batch_slo": ("capacity.max_batch_slo", "maximize"),
    "accuracy": ("accuracy.value", "maximize"),
}

# the last summary written in this process (compiler.driver.app reads its exit code)
_LAST: dict[str, Any] = {}


def _get(doc: Mapping | None, dotted: str):
    cur: Any = doc
    for k in dotted.split("."):
        if not isinstance(cur, Mapping) or k not in cur:
            return None
        cur = cur[k]
    return cur


def search_settings(cfg: Mapping) -> dict[str, str] | None:
    """``{"metric", "direction"}`` when ``search.objective`` is set, else None (a plain sweep)."""
    s = _get(cfg, "search") or {}
    obj = s.get("objective") if isinstance(s, Mapping) else None
    if obj in (None, "", "none"):
        return None
    if obj not in OBJECTIVES:
        raise ConfigError(f"search.objective={obj!r} is not a known objective; use one of "
                          f"{', '.join(OBJECTIVES)} (e.g. search.objective=throughput_tok_s).")
    direction = s.get("direction") or OBJECTIVES[obj][1]
    if direction not in ("minimize", "maximize"):
        raise ConfigError(f"search.direction={direction!r} must be minimize or maximize.")
    return {"metric": str(obj), "direction": str(direction)}


def deployed(report: Mapping | None) -> dict[str, Any]:
    """The point's headline figures as deployed: ``latency.*`` and ``memory.*``, and with
    ``parallel.tp``/``pp`` > 1 (report.json ``parallel``, compiler/analysis/parallel.py) the sharded ones —
    TTFT and TPOT of the parallel plan (communication included), memory per device, the request's
    decode steps scaled by the plan's decode time over ``latency.tpot_s`` (1 where ``latency``
    already holds the plan's), and throughput of the device group (``devices`` of them;
    ``throughput_per_device_tok_s`` divides by that)."""
    lat = dict((report or {}).get("latency") or {})
    mem = dict((report or {}).get("memory") or {})
    out = {"ttft_s": lat.get("ttft_s"), "tpot_s": lat.get("tpot_s"), "e2e_s": lat.get("e2e_s"),
           "throughput_tok_s": lat.get("throughput_tok_s"),
           "decode_throughput_tok_s": lat.get("decode_throughput_tok_s"),
           "memory_bytes": mem.get("total_bytes"), "memory_capacity_bytes": mem.get("capacity_bytes"),
           "devices": 1}
    par = (report or {}).get("parallel")
    if isinstance(par, Mapping) and int(par.get("devices") or 1) > 1:
        ph = par.get("phases") or {}
        pre, dec = _get(ph, "prefill.time_s"), _get(ph, "decode.time_s")
        b = _get(report, "workload.batch") or 1
        out["devices"] = int(par["devices"])
        if pre is not None and out["ttft_s"]:
            decode_total = (out["e2e_s"] or out["ttft_s"]) - out["ttft_s"]
            if dec is not None and out["tpot_s"]:
                decode_total *= dec / out["tpot_s"]
                out["tpot_s"] = dec
                out["decode_throughput_tok_s"] = b / dec
            n_tok = (out["throughput_tok_s"] or 0.0) * (out["e2e_s"] or 0.0)   # tokens of the request
            out["ttft_s"], out["e2e_s"] = pre, pre + decode_total
            out["throughput_tok_s"] = n_tok / out["e2e_s"] if out["e2e_s"] else None
        md = par.get("memory_per_device") or {}
        if md.get("total_bytes") is not None:
            out["memory_bytes"] = md["total_bytes"]
            out["memory_capacity_bytes"] = md.get("usable_bytes") or md.get("capacity_bytes")
    t = out["throughput_tok_s"]
    out["throughput_per_device_tok_s"] = t / out["devices"] if t is not None else None
    return out


def objective_value(report: Mapping, metric: str) -> float | None:
    """The objective's value; latency and memory objectives as deployed (:func:`deployed`)."""
    path = OBJECTIVES[metric][0]
    if path.startswith("latency."):
        v = deployed(report).get(path.split(".", 1)[1])
    elif path == "memory.total_bytes":
        v = deployed(report)["memory_bytes"]
    else:
        v = _get(report, path)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def constraint_violations(cfg: Mapping, report: Mapping) -> list[str]:
    """Search constraints the point violates, on its deployed figures: SLOs at its own batch, the
    hardware's memory and the latency / memory / throughput ``gate.*`` budgets."""
    out = []
    slo = _get(cfg, "slo") or {}
    dep = deployed(report)
    for key, metric in (("ttft_ms", "ttft_s"), ("tpot_ms", "tpot_s")):
        lim, val = slo.get(key), dep.get(metric)
        if lim is not None and val is not None and val * 1e3 > float(lim):
            out.append(f"slo.{key}: {metric[:4].upper()} {val * 1e3:.4g} ms > {float(lim):.4g} ms")
    per = " per device" if dep["devices"] > 1 else ""
    if dep["memory_bytes"] is not None and dep["memory_capacity_bytes"] is not None \
            and dep["memory_bytes"] > dep["memory_capacity_bytes"]:
        out.append(f"memory: needs {dep['memory_bytes'] / 1e9:.4g} GB{per}, the hardware has "
                   f"{dep['memory_capacity_bytes'] / 1e9:.4g} GB")
    out += gate_violations(cfg, report, dep)
    return out


COST_GATES = ("max_ttft_ms", "max_tpot_ms", "max_memory_gb", "min_throughput")


def gate_violations(cfg: Mapping, report: Mapping, dep: Mapping | None = None) -> list[str]:
    """The violated latency / memory / throughput ``gate.*`` budgets of a search point, on its
    deployed figures (:func:`deployed`; compiler.analysis.phases.gates reads one device's), in the same
    words."""
    gate = _get(cfg, "gate") or {}
    dep = dep or deployed(report)
    lat = report.get("latency") or {}
    enc = lat.get("kind") == "encoder"
    per = " per device" if dep["devices"] > 1 else ""
    checks = [("max_ttft_ms", None if dep["ttft_s"] is None else dep["ttft_s"] * 1e3, "max",
               "batch latency (ms)" if enc else "TTFT (ms)"),
              ("max_tpot_ms", None if enc or dep["tpot_s"] is None else dep["tpot_s"] * 1e3, "max", "TPOT (ms)"),
              ("max_memory_gb", None if dep["memory_bytes"] is None else dep["memory_bytes"] / 1e9, "max",
               f"memory (GB{per})"),
              ("min_throughput", lat.get("throughput_seq_s") if enc else dep["throughput_tok_s"], "min",
               "throughput (sequences/s)" if enc else "throughput (tokens/s)")]
    out = []
    for key, value, kind, what in checks:
        limit = gate.get(key)
        if limit is None or value is None:
            continue
        if (kind == "max" and value > float(limit)) or (kind == "min" and value < float(limit)):
            out.append(f"gate.{key}: {what} is {value:.4g}, limit {float(limit):.4g}")
    return out


def _worst(direction: str) -> float:
    return -math.inf if direction == "maximize" else math.inf


def _job_info() -> tuple[int | None, list[str]]:
    try:
        from hydra.core.hydra_config import HydraConfig
        hc = HydraConfig.get()
        return int(hc.job.num), list(hc.overrides.task)
    except Exception:  # noqa: BLE001 - outside Hydra (tests call run_point directly)
        return None, []


ACCURACY_GATES = ("min_accuracy", "max_accuracy_drop")
ARTIFACTS = ("model.onnx", "model.onnx.data")


def is_lossy(cfg: Mapping) -> bool:
    """The point runs a lossy pass (``quant=`` or ``sparsity=`` other than none)."""
    return any(str((_get(cfg, g) or {}).get("scheme", "none")) != "none" for g in ("quant", "sparsity"))


def has_weights(cfg: Mapping) -> bool:
    """The model has weight values (an artifact, hence an accuracy, can exist)."""
    m = _get(cfg, "model") or {}
    return str(m.get("source")) == "onnx" or str(m.get("weights", "random")) != "meta"


def _with(plain: Mapping, **groups: Mapping) -> dict:
    """A copy of the plain config with keys of some groups replaced."""
    import copy
    out = copy.deepcopy(dict(plain))
    for g, kv in groups.items():
        out[g] = {**dict(out.get(g) or {}), **kv}
    return out


def _drop_artifacts(out_dir: str) -> None:
    for f in ARTIFACTS:
        Path(out_dir, f).unlink(missing_ok=True)


def _gate_reason(e: GateError) -> str:
    """The violated budgets of a gate error, without the advice meant for a single run."""
    msg = " ".join(str(e).split())
    msg = msg.split("gate exceeded — ", 1)[-1]
    return msg.split(". The report was written", 1)[0]


def _search_point(plain: Mapping, out_dir: str, rec: dict) -> dict | None:
    """One search trial in two stages (see the module docstring); returns its report."""
    gate = dict(_get(plain, "gate") or {})
    acc_gates = {k: gate[k] for k in ACCURACY_GATES if gate.get(k) is not None}
    lossy = is_lossy(plain)
    if not lossy:      # the fp32 reference itself: it meets any accuracy constraint
        rec["accuracy_source"] = "reference"
    # stage 0: a parallel plan the model or the node cannot run is a constraint of the target
    plan_error = _parallel_plan_error(plain)
    if plan_error:
        rec.update(status="infeasible", pruned="cost", error=plan_error + " (pruned before the import)")
        return None
    # stage 1, cost only: nothing is emitted; the accuracy gates wait for a measurement
    # (the cost gates are checked here on the deployed figures, the accuracy gates need an artifact)
    cost_cfg = _with(plain, emit={"enabled": False}, gate={k: None for k in COST_GATES + ACCURACY_GATES})
    try:
        report = run(cost_cfg, out_dir)
        bad = constraint_violations(plain, report)
    except GateError as e:
        report = _read_json(os.path.join(out_dir, "report.json"))
        bad = [_gate_reason(e)]
    if bad:
        rec.update(status="infeasible", pruned="cost", error="; ".join(bad) + " (pruned before emission)")
        return report
    emit = (_get(plain, "emit") or {}).get("enabled", "auto")
    emit = False if str(emit).lower() == "false" else emit
    measure = bool(acc_gates) and lossy
    if measure:
        acc_on = str((_get(plain, "accuracy") or {}).get("enabled", "auto")).lower() not in ("false", "0")
        why = None
        if not has_weights(plain):
            why = ("the model has meta weights (model.weights=meta), so no artifact exists to measure")
        elif not acc_on:
            why = "accuracy.enabled=false"
        if why:
            keys = ", ".join(f"gate.{k}" for k in acc_gates)
            rec.update(status="infeasible", pruned="accuracy", error=(
                f"{keys}: accuracy not measured — {why}; a lossy point ({_lossy_what(plain)}) cannot be "
                f"shown to meet the constraint, so it is pruned (before emission). Search a model with "
                f"weights (model.weights=random or pretrained) to measure it."))
            return report
    elif emit is False or not has_weights(plain):
        return report
    # stage 2: emit (the accuracy is measured on the artifact); only feasible points get here
    full = _with(plain, emit={"enabled": "auto" if emit is False else emit},
                 gate={k: None for k in COST_GATES + (() if lossy else ACCURACY_GATES)})
    try:
        report = run(full, out_dir)
    except GateError as e:
        _drop_artifacts(out_dir)
        report = _read_json(os.path.join(out_dir, "report.json"))
        rec.update(status="infeasible", pruned="accuracy",
                   error=_gate_reason(e) + " (measured on the artifact, which is not kept)")
    return report


def _parallel_plan_error(plain: Mapping) -> str | None:
    """Why the point's ``parallel.*`` plan cannot run on this model and node, or None."""
    par = _get(plain, "parallel")
    if not isinstance(par, Mapping) or all(int(par.get(k) or 1) == 1 for k in ("tp", "pp", "ep")):
        return None
    cfg = validate(_with(plain, parallel={"tp": 1, "pp": 1, "ep": 1}))   # bad input stays a failure
    cfg["parallel"] = {**dict(cfg.get("parallel") or {}), **dict(par)}
    try:
        check_config_plan(cfg, load_hardware(cfg["hardware"]))
    except ConfigError as e:
        return " ".join(str(e).split())
    return None


def _lossy_what(plain: Mapping) -> str:
    parts = []
    for g in ("quant", "sparsity"):
        sch = str((_get(plain, g) or {}).get("scheme", "none"))
        if sch != "none":
            parts.append(f"{g}={sch}")
    return " ".join(parts)


def run_point(cfg: Any, out_dir: str) -> float | None:
    """One multirun point: run the pipeline and record the outcome in ``out_dir/point.json``.

    Never raises for a failed point (the sweep goes on and the summary lists it). Returns the
    search objective (the worst value for an infeasible or failed point), or None in a plain sweep.
    """
    from omegaconf import DictConfig, OmegaConf
    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    job, overrides = _job_info()
    rec: dict[str, Any] = {"job": job, "overrides": overrides, "status": "ok", "exit_code": 0,
                           "error": None, "objective": None, "pruned": None, "accuracy_source": None}
    search = None
    report = None
    try:
        search = search_settings(plain)
        if search:
            report = _search_point(plain, out_dir, rec)
        else:
            report = run(cfg, out_dir)
    except GateError as e:
        rec.update(status="gate", exit_code=e.exit_code, error=" ".join(str(e).split()))
        report = _read_json(os.path.join(out_dir, "report.json"))
    except RooftopError as e:
        signals.check()         # an interrupt some library turned into another error stops the sweep
        rec.update(status="failed", exit_code=e.exit_code, error=" ".join(str(e).split()))
        report = None
    except Exception as e:  # noqa: BLE001 - a bug; still recorded, the sweep goes on
        signals.check()
        tb = traceback.format_exception_only(type(e), e)[-1].strip()
        rec.update(status="failed", exit_code=EXIT_INTERNAL,
                   error=f"internal error (a rooftop bug, please report it): {tb}")
        report = None
        log.error("point %s failed:\n%s", job, traceback.format_exc())
    if search:
        val = objective_value(report, search["metric"]) if report and rec["status"] == "ok" else None
        rec["objective"] = val
        ret = val if val is not None else _worst(search["direction"])
    else:
        ret = None
    os.makedirs(out_dir, exist_ok=True)
    _write(os.path.join(out_dir, POINT_FILE), json.dumps(rec, indent=1, sort_keys=True) + "\n")
    _print_point(rec, report, out_dir)
    return ret


def _print_point(rec, report, out_dir):
    tag = f"#{rec['job']}" if rec["job"] is not None else ""
    ov = " ".join(rec["overrides"])
    if report and rec["status"] in ("ok", "gate", "infeasible"):
        dep = deployed(report)
        tpot = f", TPOT {dep['tpot_s'] * 1e3:.3f} ms" if dep.get("tpot_s") is not None else ""
        per = f" on {dep['devices']} devices" if dep["devices"] > 1 else ""
        msg = f"TTFT {dep['ttft_s'] * 1e3:.3f} ms{tpot}{per}, max batch {report['capacity']['max_batch']}"
        if rec["status"] != "ok":
            msg += f" [{rec['status']}: {rec['error']}]"
    else:
        msg = f"[{rec['status']} (exit {rec['exit_code']}): {rec['error']}]"
    print(f"rooftop {tag} {ov}: {msg}", flush=True)


def _read_json(path: str | os.PathLike) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------
# the summary

def _point_dirs(sweep_dir: Path) -> list[Path]:
    """Every directory under the sweep directory that Hydra set up for a job."""
    return sorted({p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")})


def _job_num(d: Path, rec: Mapping | None) -> int:
    if rec and rec.get("job") is not None:
        return int(rec["job"])
    import yaml
    try:
        with open(d / ".hydra" / "hydra.yaml", encoding="utf-8") as f:
            return int(yaml.safe_load(f)["hydra"]["job"]["num"])
    except Exception:  # noqa: BLE001
        return -1


def collect_rows(sweep_dir: str | os.PathLike, search: Mapping | None = None) -> list[dict[str, Any]]:
    """One row per point directory of the sweep (unsorted)."""
    import yaml
    sweep_dir = Path(sweep_dir)
    rows = []
    for d in _point_dirs(sweep_dir):
        rec = _read_json(d / POINT_FILE)
        try:
            with open(d / ".hydra" / "overrides.yaml", encoding="utf-8") as f:
                overrides = [str(o) for o in (yaml.safe_load(f) or [])]
        except OSError:
            overrides = list((rec or {}).get("overrides") or [])
        report = _read_json(d / "report.json") if (d / "report.json").is_file() else None
        if rec is None:
            rec = {"status": "failed", "exit_code": EXIT_INTERNAL, "objective": None,
                   "error": "no outcome was recorded: the job died before it finished (killed, out of "
                            "memory, or the launcher lost it); see its log in " + str(d.relative_to(sweep_dir))}
        dep = deployed(report)
        acc = (report or {}).get("accuracy") or {}
        row = {
            "job": _job_num(d, rec), "dir": str(d.relative_to(sweep_dir)), "overrides": overrides,
            "status": rec["status"], "exit_code": int(rec["exit_code"]), "error": rec.get("error"),
            "model": _get(report, "model.name"), "hardware": _get(report, "hardware.name"),
            "batch": _get(report, "workload.batch"),
            "ttft_s": dep["ttft_s"], "tpot_s": dep["tpot_s"], "e2e_s": dep["e2e_s"],
            "throughput_tok_s": dep["throughput_tok_s"], "devices": dep["devices"],
            "memory_bytes": dep["memory_bytes"], "memory_capacity_bytes": dep["memory_capacity_bytes"],
            "max_batch": _get(report, "capacity.max_batch"),
            "max_batch_slo": _get(report, "capacity.max_batch_slo"),
            "accuracy": acc.get("value") if isinstance(acc, Mapping) else None,
            "accuracy_metric": acc.get("metric") if isinstance(acc, Mapping) else None,
            "objective": rec.get("objective"),
            "pruned": rec.get("pruned"),
            "accuracy_source": "measured" if isinstance(acc, Mapping) and acc.get("value") is not None
            else rec.get("accuracy_source"),
            "emitted": (d / "model.onnx").is_file(),
            "pareto": False,
            "report": str((d / "report.json").relative_to(sweep_dir)) if report is not None else None,
        }
        rows.append(row)
    metrics = sorted({r["accuracy_metric"] for r in rows if r["accuracy_source"] == "measured"})
    for r in rows:      # the fp32 reference scores 1 on the metric that compares with it
        if r["accuracy_source"] == "reference" and len(metrics) == 1:
            r["accuracy"], r["accuracy_metric"] = 1.0, metrics[0]
    return rows


def pareto_axes(rows: Sequence[Mapping]) -> list[dict[str, str]]:
    """Latency (TPOT, or TTFT for encoders) and memory minimized, throughput maximized (a bigger
    batch trades latency for throughput), and accuracy maximized when every ok point measured it."""
    ok = [r for r in rows if r["status"] == "ok"]
    lat = "tpot_s" if ok and all(r["tpot_s"] is not None for r in ok) else "ttft_s"
    axes = [{"metric": lat, "direction": "minimize"}, {"metric": "memory_bytes", "direction": "minimize"},
            {"metric": "throughput_tok_s", "direction": "maximize"}]
    if ok and all(r["accuracy"] is not None for r in ok):
        axes.append({"metric": "accuracy", "direction": "maximize"})
    return axes


def pareto_front(rows: Sequence[Mapping], axes: Sequence[Mapping]) -> list[int]:
    """Job numbers of the ok points no other ok point dominates (≤ on every axis, < on one)."""
    pts = []
    for r in rows:
        if r["status"] != "ok" or any(r[a["metric"]] is None for a in axes):
            continue
        pts.append((r["job"], [r[a["metric"]] * (1 if a["direction"] == "minimize" else -1) for a in axes]))
    front = []
    for j, v in pts:
        dominated = any(all(x <= y for x, y in zip(w, v)) and any(x < y for x, y in zip(w, v))
                        for k, w in pts if k != j)
        if not dominated:
            front.append(j)
    return sorted(front)


_STATUS_RANK = {"ok": 0, "gate": 1, "infeasible": 2, "failed": 3}


def sort_rows(rows: list[dict], search: Mapping | None) -> list[dict]:
    def key(r):
        if search and r["objective"] is not None:
            v = r["objective"] * (-1 if search["direction"] == "maximize" else 1)
        elif r["throughput_tok_s"] is not None:
            v = -r["throughput_tok_s"]
        else:
            v = math.inf
        return (_STATUS_RANK[r["status"]], v, r["job"])
    return sorted(rows, key=key)


def sweep_exit_code(rows: Sequence[Mapping]) -> int:
    failed = sorted((r["job"], r["exit_code"]) for r in rows if r["status"] == "failed")
    if failed:
        return failed[0][1] or EXIT_INTERNAL
    return 3 if any(r["status"] == "gate" for r in rows) else 0


def summarize(sweep_dir: str | os.PathLike, search: Mapping | None = None, *, sweeper: str = "",
              launcher: str = "") -> dict[str, Any]:
    """The sweep.json document for ``sweep_dir``."""
    rows = collect_rows(sweep_dir, search)
    axes = pareto_axes(rows)
    front = pareto_front(rows, axes)
    for r in rows:
        r["pareto"] = r["job"] in front
    rows = sort_rows(rows, search)
    best = None
    if search:
        cand = [r for r in rows if r["status"] == "ok" and r["objective"] is not None]
        best = cand[0]["job"] if cand else None
    counts = {s: sum(1 for r in rows if r["status"] == s) for s in ("ok", "gate", "infeasible", "failed")}
    best_cmd = reproduce_command(next(r for r in rows if r["job"] == best)["overrides"]) if best is not None else None
    return {"schema_version": SCHEMA_VERSION, "kind": "search" if search else "sweep",
            "sweeper": sweeper, "launcher": launcher, "points": len(rows), "counts": counts,
            "exit_code": sweep_exit_code(rows), "objective": dict(search) if search else None,
            "best": best, "best_command": best_cmd, "pareto": {"axes": axes, "jobs": front}, "rows": rows}


def write_summary(sweep_dir: str | os.PathLike, doc: Mapping) -> list[str]:
    sweep_dir = Path(sweep_dir)
    _write(str(sweep_dir / "sweep.json"), json.dumps(doc, indent=1) + "\n")
    _write(str(sweep_dir / "sweep.md"), render_markdown(doc))
    _write(str(sweep_dir / "sweep.html"), render_html(doc, sweep_dir))
    return ["sweep.json", "sweep.md", "sweep.html"]


class SweepSummary(Callback):
    """Hydra callback: writes sweep.json / sweep.md / sweep.html when a multirun ends."""

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        from omegaconf import OmegaConf
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        plain = OmegaConf.to_container(config, resolve=False)
        try:
            search = search_settings(plain)
        except ConfigError:
            search = None       # every point already recorded the error
        sweeper = str(OmegaConf.select(config, "hydra.sweeper._target_", default="")).rsplit(".", 1)[-1]
        launcher = str(OmegaConf.select(config, "hydra.launcher._target_", default="")).rsplit(".", 1)[-1]
        doc = summarize(sweep_dir, search, sweeper=sweeper, launcher=launcher)
        write_summary(sweep_dir, doc)
        _LAST.clear()
        _LAST.update(doc)
        c = doc["counts"]
        best = ""
        if doc["best"] is not None:
            b = next(r for r in doc["rows"] if r["job"] == doc["best"])
            best = (f"; best #{b['job']} {_shown(b, _varying(doc)[0])} "
                    f"({doc['objective']['metric']} = {b['objective']:.6g}; alone: {doc['best_command']})")
        print(f"rooftop: sweep of {doc['points']} points (ok {c['ok']}, gate {c['gate']}, "
              f"infeasible {c['infeasible']}, failed {c['failed']}){best} -> {sweep_dir / 'sweep.html'}",
              flush=True)


def reset_summary() -> None:
    """Forget the last summary (a new multirun starts in this process)."""
    _LAST.clear()


def last_summary() -> dict[str, Any]:
    """The sweep.json document of the last summary this process wrote (empty when none)."""
    return dict(_LAST)


def last_exit_code() -> int:
    """Exit code of the last summary this process wrote (0 when none)."""
    return int(_LAST.get("exit_code", 0))


# ------------------------------------------------------------------------------------------------
# rendering

def _ms(v):
    return "—" if v is None else f"{v * 1e3:.4g}"


def _gb(v):
    return "—" if v is None else f"{v / 1e9:.4g}"


def _num(v, fmt="{:.4g}"):
    return "—" if v is None else fmt.format(v)


def _varying(doc) -> tuple[set[str], list[str]]:
    """Override keys whose value differs between points, and the overrides all points share."""
    vals: dict[str, set[str]] = {}
    for r in doc["rows"]:
        for o in r["overrides"]:
            k, _, v = o.partition("=")
            vals.setdefault(k, set()).add(v)
    n = len(doc["rows"])
    common = sorted({o for r in doc["rows"] for o in r["overrides"]
                     if len(vals[o.partition("=")[0]]) == 1
                     and sum(o in q["overrides"] for q in doc["rows"]) == n})
    return {k for k in vals} - {o.partition("=")[0] for o in common}, common


def _shown(r, varying) -> str:
    return " ".join(o for o in r["overrides"] if o.partition("=")[0] in varying) or "(common only)"


COLUMNS = [("#", lambda r: str(r["job"])), ("overrides", None),
           ("status", lambda r: _status(r)), ("TTFT ms", lambda r: _ms(r["ttft_s"])),
           ("TPOT ms", lambda r: _ms(r["tpot_s"])), ("throughput tok/s", lambda r: _num(r["throughput_tok_s"])),
           ("memory GB", lambda r: _gb(r["memory_bytes"])), ("max batch", lambda r: _num(r["max_batch"], "{}")),
           ("accuracy", lambda r: _num(r["accuracy"])), ("Pareto", lambda r: "★" if r["pareto"] else "")]


def _columns(doc):
    varying, _ = _varying(doc)
    cols = [(h, f if f is not None else (lambda r: _shown(r, varying))) for h, f in COLUMNS]
    if doc["objective"]:
        cols.insert(3, (doc["objective"]["metric"], lambda r: _num(r["objective"], "{:.6g}")))
    if all(r.get("accuracy") is None for r in doc["rows"]):
        cols = [c for c in cols if c[0] != "accuracy"]
    if any((r.get("devices") or 1) > 1 for r in doc["rows"]):      # memory is then per device
        at = next(i for i, c in enumerate(cols) if c[0] == "memory GB")
        cols[at] = ("memory GB / device", cols[at][1])
        cols.insert(at, ("devices", lambda r: _num(r.get("devices"), "{}")))
    return cols


def _headline(doc) -> list[str]:
    c = doc["counts"]
    lines = [f"{doc['points']} points: {c['ok']} ok, {c['gate']} over a gate, {c['infeasible']} infeasible, "
             f"{c['failed']} failed. Exit code {doc['exit_code']}."]
    if doc["objective"]:
        o = doc["objective"]
        if doc["best"] is not None:
            b = next(r for r in doc["rows"] if r["job"] == doc["best"])
            lines.append(f"Search: {o['direction']} {o['metric']}. Best: #{b['job']} "
                         f"`{_shown(b, _varying(doc)[0])}` = {b['objective']:.6g}.")
        else:
            lines.append(f"Search: {o['direction']} {o['metric']}. No feasible point.")
    _, common = _varying(doc)
    if common:
        lines.append(f"Common to every point: `{' '.join(common)}`.")
    axes = ", ".join(f"{a['metric']} ({'min' if a['direction'] == 'minimize' else 'max'})" for a in doc["pareto"]["axes"])
    lines.append(f"Pareto front over {axes}: " + (", ".join(f"#{j}" for j in doc["pareto"]["jobs"]) or "none") + ".")
    return lines


def _status(r) -> str:
    return f"{r['status']} ({r['pruned']})" if r.get("pruned") else r["status"]


def reproduce_command(overrides: Sequence[str]) -> str:
    """The single-run command of a point: its overrides without the search recipe and Hydra's."""
    keep = [o for o in overrides if not o.lstrip("+~").startswith(("search=", "search.", "hydra.", "hydra/"))]
    return "rooftop " + " ".join(keep)


def _best_lines(doc) -> list[tuple[str, str]]:
    """(text, code) lines of the best configuration (a search with a feasible point)."""
    if doc.get("best") is None:
        return []
    b = next(r for r in doc["rows"] if r["job"] == doc["best"])
    o = doc["objective"]
    figs = [f"TTFT {_ms(b['ttft_s'])} ms", f"TPOT {_ms(b['tpot_s'])} ms",
            f"throughput {_num(b['throughput_tok_s'])} tok/s", f"memory {_gb(b['memory_bytes'])} GB"]
    if b["accuracy"] is not None:
        figs.append(f"accuracy {b['accuracy']:.4g} ({b['accuracy_metric']}"
                    + (", the fp32 reference" if b["accuracy_source"] == "reference" else "") + ")")
    return [(f"#{b['job']}, {o['metric']} = {b['objective']:.6g} ({o['direction']}d): ", _shown(b, _varying(doc)[0])),
            ("Predicted: " + ", ".join(figs) + ".", ""),
            ("Run it alone (emits model.onnx where the model has weights): ", doc["best_command"])]


_PRUNED_WHEN = {"cost": "pruned before emission", "accuracy": "pruned on accuracy"}


def render_markdown(doc: Mapping) -> str:
    cols = _columns(doc)
    out = ["# rooftop sweep", "", *_headline(doc), ""]
    best = _best_lines(doc)
    if best:
        out += ["## Best configuration", ""] + [f"- {t}" + (f"`{c}`" if c else "") for t, c in best] + \
               ["", "## Trials", ""]
    out += ["| " + " | ".join(h for h, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in doc["rows"]:
        out.append("| " + " | ".join(f(r).replace("|", "\\|") for _, f in cols) + " |")
    pruned = [r for r in doc["rows"] if r["status"] == "infeasible"]
    if pruned:
        out += ["", "## Infeasible trials (a constraint violated)", ""]
        out += [f"- #{r['job']} `{_shown(r, _varying(doc)[0])}` — {r['error']}"
                for r in sorted(pruned, key=lambda r: r["job"])]
    bad = [r for r in doc["rows"] if r["error"] and r["status"] != "infeasible"]
    if bad:
        out += ["", "## Points not ok", ""]
        out += [f"- #{r['job']} ({r['status']}, exit {r['exit_code']}) `{' '.join(r['overrides'])}`: {r['error']}"
                for r in bad]
    out += ["", "Units: ms, GB (10⁹ bytes), tokens/s. Each point's full report: `<dir>/report.json`.", ""]
    return "\n".join(out)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _series_key(r: Mapping, varying: set[str]) -> str:
    rest = [o for o in r["overrides"] if o.partition("=")[0] in varying
            and o.partition("=")[0].lstrip("+~") not in ("workload.batch", "hardware")]
    return f"{r['hardware']}" + (f" · {' '.join(rest)}" if rest else "")


MAX_CURVES = 8      # throughput-vs-batch curves drawn (rows are best first)


def plots(doc: Mapping, sweep_dir: str | os.PathLike | None = None) -> list[tuple[str, str]]:
    """(title, base64 PNG) for the HTML page."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out = []
    varying, _ = _varying(doc)
    ok = [r for r in doc["rows"] if r["status"] in ("ok", "gate", "infeasible") and r["memory_bytes"] is not None]
    axes = doc["pareto"]["axes"]
    lat = axes[0]["metric"]
    pts = [r for r in ok if r[lat] is not None]
    if pts:
        fig, ax = plt.subplots(figsize=(7.2, 4.6))
        has_acc = any(a["metric"] == "accuracy" for a in axes)
        colors = {"ok": "#4c72b0", "gate": "#dd8452", "infeasible": "#999999"}
        for st in ("ok", "gate", "infeasible"):
            sel = [r for r in pts if r["status"] == st]
            if not sel:
                continue
            kw = {}
            if has_acc and st == "ok":
                kw = {"c": [r["accuracy"] for r in sel], "cmap": "viridis"}
            else:
                kw = {"color": colors[st]}
            sc = ax.scatter([r[lat] * 1e3 for r in sel], [r["memory_bytes"] / 1e9 for r in sel], s=36,
                            label=st if st != "ok" else "points", zorder=2, **kw)
            if has_acc and st == "ok":
                fig.colorbar(sc, ax=ax, label=f"accuracy ({sel[0]['accuracy_metric']})")
        front = sorted((r for r in pts if r["pareto"]), key=lambda r: r[lat])
        if front:
            ax.scatter([r[lat] * 1e3 for r in front], [r["memory_bytes"] / 1e9 for r in front], s=140,
                       facecolors="none", edgecolors="#c44e52", lw=1.6, label="Pareto front", zorder=3)
        for r in pts:
            ax.annotate(f"#{r['job']}", (r[lat] * 1e3, r["memory_bytes"] / 1e9), textcoords="offset points",
                        xytext=(5, 4), fontsize=7, color="#333333")
        ax.set_xlabel(f"{'TPOT' if lat == 'tpot_s' else 'TTFT'} (ms, predicted)")
        ax.set_ylabel("memory (GB: weights + KV + activations + reserve)")
        ax.set_title("Latency vs memory" + (" vs accuracy" if has_acc else "")
                     + " — Pareto front (also over throughput)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        out.append(("Latency vs memory" + (" vs accuracy" if has_acc else ""), _png(fig)))
        plt.close(fig)

    # throughput vs batch, one curve per hardware (and per other override set)
    curves: dict[str, tuple[list, list, list]] = {}
    single = [r for r in ok if r.get("devices", 1) == 1]     # the report's curve is one device's
    series = list(dict.fromkeys(_series_key(r, varying) for r in single if r["report"]))   # best first
    shown = set(series[:MAX_CURVES])
    if sweep_dir is not None:
        for r in single:
            key = _series_key(r, varying)
            if key in curves or not r["report"] or key not in shown:
                continue
            rep = _read_json(Path(sweep_dir) / r["report"]) or {}
            tvb = [t for t in rep.get("throughput_vs_batch") or [] if t.get("fits", True)]
            curves[key] = ([t["batch"] for t in tvb], [t["throughput_tok_s"] for t in tvb], [])
        for r in single:
            if r["tpot_s"] and r["batch"] and _series_key(r, varying) in curves:
                curves[_series_key(r, varying)][2].append((r["batch"], r["batch"] / r["tpot_s"], r["job"]))
    if any(c[0] for c in curves.values()):
        fig, ax = plt.subplots(figsize=(7.2, 4.6))
        for key, (bx, ty, marks) in sorted(curves.items()):
            if not bx:
                continue
            line, = ax.plot(bx, ty, "-o", ms=3, lw=1.4, label=key)
            for b, t, j in marks:
                ax.scatter([b], [t], s=60, color=line.get_color(), edgecolors="black", zorder=3)
                ax.annotate(f"#{j}", (b, t), textcoords="offset points", xytext=(5, -10), fontsize=7)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch (sequences)")
        ax.set_ylabel("decode throughput (tokens/s, predicted)")
        more = f"; the {MAX_CURVES} best of {len(series)} configurations" if len(series) > MAX_CURVES else ""
        ax.set_title(f"Throughput vs batch per hardware (batches that fit in memory; ● = swept points{more})",
                     fontsize=10 if more else None)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        out.append(("Throughput vs batch", _png(fig)))
        plt.close(fig)

    if doc["objective"]:
        trials = sorted((r for r in doc["rows"]), key=lambda r: r["job"])
        o = doc["objective"]
        fig, ax = plt.subplots(figsize=(7.2, 3.6))
        best, xs, ys = None, [], []
        for r in trials:
            v = r["objective"] if r["status"] == "ok" else None
            if v is not None:
                ax.scatter([r["job"]], [v], color="#4c72b0", s=28, zorder=2)
                best = v if best is None else (max(best, v) if o["direction"] == "maximize" else min(best, v))
            else:
                ax.axvline(r["job"], color="#cccccc", lw=0.8, zorder=0)
            xs.append(r["job"])
            ys.append(best)
        ax.step(xs, [y if y is not None else math.nan for y in ys], where="post", color="#c44e52",
                label="best so far")
        ax.set_xlabel("trial (job number); grey lines: infeasible or failed")
        ax.set_ylabel(o["metric"])
        ax.set_title(f"Search: {o['direction']} {o['metric']}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        out.append(("Search trials", _png(fig)))
        plt.close(fig)
    return out


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ddd;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td.l{text-align:left;font-family:ui-monospace,monospace}
th.l{text-align:left}tr.pareto td{background:#eef8ee}tr.failed td{background:#fdecea}tr.gate td,tr.infeasible td{color:#777}
tr.best td{font-weight:bold}.err{font-family:ui-monospace,monospace;font-size:12px;white-space:pre-wrap}
img{max-width:100%;border:1px solid #eee;margin:8px 0}ul.best code{background:#f3f3f3;padding:1px 4px}"""


def render_html(doc: Mapping, sweep_dir: str | os.PathLike | None = None) -> str:
    cols = _columns(doc)
    e = html.escape
    head = "".join(f"<p>{e(line).replace('`', '')}</p>" for line in _headline(doc))
    th = "".join(f"<th class=\"{'l' if h in ('overrides', 'status') else ''}\">{e(h)}</th>" for h, _ in cols)
    trs = []
    for r in doc["rows"]:
        cls = [r["status"]] + (["pareto"] if r["pareto"] else []) + (["best"] if r["job"] == doc["best"] else [])
        tds = "".join(f"<td class=\"{'l' if h in ('overrides', 'status') else ''}\">{e(f(r))}</td>" for h, f in cols)
        trs.append(f"<tr class=\"{' '.join(cls)}\">{tds}</tr>")
    varying = _varying(doc)[0]
    best = _best_lines(doc)
    best_html = ""
    if best:
        best_html = "<h2>Best configuration</h2><ul class=\"best\">" + "".join(
            f"<li>{e(t)}" + (f"<code>{e(c)}</code>" if c else "") + "</li>" for t, c in best) + "</ul><h2>Trials</h2>"
    pruned = sorted((r for r in doc["rows"] if r["status"] == "infeasible"), key=lambda r: r["job"])
    errs = ""
    if pruned:
        errs += "<h2>Infeasible trials (a constraint violated)</h2><ul>" + "".join(
            f"<li>#{r['job']} <code>{e(_shown(r, varying))}</code> "
            f"<b>{e(_PRUNED_WHEN.get(r.get('pruned'), 'infeasible'))}</b>"
            f"<div class=\"err\">{e(r['error'])}</div></li>" for r in pruned) + "</ul>"
    bad = [r for r in doc["rows"] if r["error"] and r["status"] != "infeasible"]
    if bad:
        errs += "<h2>Points not ok</h2><ul>" + "".join(
            f"<li>#{r['job']} <b>{e(r['status'])}</b> (exit {r['exit_code']}) <code>{e(' '.join(r['overrides']))}</code>"
            f"<div class=\"err\">{e(r['error'])}</div></li>" for r in bad) + "</ul>"
    imgs = "".join(f"<h2>{e(t)}</h2><img alt=\"{e(t)}\" src=\"data:image/png;base64,{b}\">"
                   for t, b in plots(doc, sweep_dir))
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>rooftop sweep</title>"
            f"<style>{_CSS}</style></head><body><h1>rooftop sweep</h1>{head}{best_html}"
            f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(trs)}</tbody></table>"
            f"<p>Units: ms, GB (10⁹ bytes), tokens/s. ★ = on the Pareto front. Rows: best first; "
            f"each point's report is in its directory.</p>{errs}{imgs}</body></html>\n")


__all__ = ["run_point", "SweepSummary", "reproduce_command", "is_lossy", "has_weights", "summarize", "write_summary", "collect_rows", "pareto_front",
           "pareto_axes", "search_settings", "constraint_violations", "last_exit_code", "OBJECTIVES"]
