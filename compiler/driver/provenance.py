"""Provenance of an emitted model.onnx, stored in its ``metadata_props`` (``rooftop.*`` keys).

An artifact found later says where it came from: the rooftop version, a stable hash of the
resolved config (and the config itself), the model, hardware, workload and pipeline, every pass
that ran with its stats, and the predicted TTFT / TPOT / throughput. Nothing in it depends on the
time, the machine or the output path, so the same config gives the same bytes.

``read(path)`` returns the ``rooftop.*`` entries of a model file; ``config_hash(cfg)`` is the same
hash a sweep or CI job can compute from a config to find the artifact it built.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any
from compiler.backend.emit import set_model_metadata

PREFIX = "rooftop."
# config keys that change how rooftop runs but not what it writes
NON_SEMANTIC = ("hydra", "progress")


def version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version as _v
        try:
            return _v("rooftop")
        except PackageNotFoundError:
            pass
    except ImportError:  # pragma: no cover
        pass
    return "0.1.0"


def canonical_config(cfg: Mapping) -> str:
    """The resolved config as compact JSON with sorted keys (``hydra`` and ``progress`` dropped)."""
    plain = {k: v for k, v in dict(cfg).items() if k not in NON_SEMANTIC}
    return json.dumps(plain, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)


def config_hash(cfg: Mapping) -> str:
    """``sha256:<hex>`` of :func:`canonical_config`."""
    return "sha256:" + hashlib.sha256(canonical_config(cfg).encode("utf-8")).hexdigest()


def _js(x: Any) -> str:
    return json.dumps(x, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)


def provenance(cfg: Mapping, report: Mapping) -> dict[str, str]:
    """The ``rooftop.*`` metadata entries for a model built from ``cfg`` whose report is ``report``."""
    lat = report.get("latency") or {}
    passes = [{"name": p["name"], "changed": p["changed"], "stats": p.get("stats") or {}}
              for p in report.get("passes") or []]
    props = {
        "version": version(),
        "report_schema_version": str(report.get("schema_version")),
        "config_hash": config_hash(cfg),
        "config": canonical_config(cfg),
        "model": str(report["model"]["name"]),
        "hardware": str(report["hardware"]["name"]),
        "pipeline": str((report.get("pipeline") or {}).get("name", "")),
        "workload": _js(report.get("workload")),
        "passes": _js(passes),
        "predicted.ttft_s": repr(float(lat["ttft_s"])) if lat.get("ttft_s") is not None else "",
        "predicted.tpot_s": repr(float(lat["tpot_s"])) if lat.get("tpot_s") is not None else "",
        "predicted.throughput_tok_s": (repr(float(lat["throughput_tok_s"]))
                                       if lat.get("throughput_tok_s") is not None else ""),
    }
    return {PREFIX + k: v for k, v in props.items()}


def stamp(out_dir: str, cfg: Mapping, report: Mapping) -> dict[str, str] | None:
    """Write the provenance into ``out_dir/model.onnx`` when the run emitted one (external weight
    data stays where it is); returns the entries, or None when nothing was emitted."""
    import onnx
    path = os.path.join(out_dir, "model.onnx")
    if not (report.get("emit") or {}).get("emitted") or not os.path.isfile(path):
        return None
    props = provenance(cfg, report)
    model = onnx.load_model(path, load_external_data=False)
    set_model_metadata(model, props)
    tmp = path + ".tmp"
    onnx.save_model(model, tmp)
    os.replace(tmp, path)
    return props


def read(path: str) -> dict[str, str]:
    """The ``rooftop.*`` metadata entries of a model file (weights are not loaded)."""
    import onnx
    model = onnx.load_model(path, load_external_data=False)
    return {p.key: p.value for p in model.metadata_props if p.key.startswith(PREFIX)}


__all__ = ["provenance", "config_hash", "canonical_config", "stamp", "read", "version", "PREFIX"]
