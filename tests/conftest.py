"""Shared fixtures: Hydra-composed configs, imported graphs, CLI runner."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# passes that evaluate part of a graph (constant folding, mask analysis, calibration) get the
# back end's evaluator where a test runs them outside the driver's PassContext
from compiler.backend.evaluate import OnnxEvaluator  # noqa: E402
from passes.base import install_default_evaluator  # noqa: E402

install_default_evaluator(OnnxEvaluator())

# generated inputs are the same on every run (CI and a developer see the same cases; a failure
# reproduces), without a per-example deadline (these machines are shared and noisy)
from hypothesis import settings  # noqa: E402

settings.register_profile("rooftop", derandomize=True, database=None, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "rooftop"))


def compose(overrides=()):
    from hydra import compose as _compose, initialize_config_dir
    from omegaconf import OmegaConf
    from compiler.driver.app import config_dir
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        cfg = _compose("config", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True) | {"hydra": None}


def model_cfg(name: str, **over) -> dict:
    from omegaconf import OmegaConf
    from compiler.driver.app import config_dir
    cfg = OmegaConf.to_container(OmegaConf.load(config_dir() / "model" / f"{name}.yaml"))
    cfg.update(over)
    return cfg


def run_cli(*args, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "compiler", *args], cwd=cwd or ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


_GRAPHS: dict = {}


def prepare(g):
    """Run the import part of the default recipe on ``g`` in place — conf/pipeline/cache.yaml:
    dce, remove_noops, fuse_eager_attention, lift_kv_cache (what importers once did implicitly).
    Returns {pass name: stats}."""
    from omegaconf import OmegaConf
    from passes import run_passes
    specs = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "pipeline" / "cache.yaml"))["passes"]
    return {r.name: r.stats for r in run_passes(g, specs).records}


def imported(name: str, **over):
    """Import a configured model once per test session (import passes and cleanup applied)."""
    key = (name, repr(sorted(over.items())))
    if key not in _GRAPHS:
        from compiler.frontends.models import import_torch
        from passes.cleanup import fold_constants, remove_noops
        g = import_torch(model_cfg(name, **over))
        prepare(g)
        remove_noops(g)
        fold_constants(g)
        _GRAPHS[key] = g
    return _GRAPHS[key]



def empty_cache(g, batch: int) -> dict:
    """Zero-length past KV inputs of ``g`` at ``batch`` (each input's own shape: a latent
    attention's cache is [B, 1, P, rank] and [B, 1, P, rope], ordinary K/V [B, kv_heads, P, d])."""
    import numpy as np
    out = {}
    for t in g.inputs:
        if t.startswith(("past_key.", "past_value.")):
            ty = g.type(t)
            out[t] = np.zeros((batch, *[int(d) for d in ty.shape[1:2]], 0, int(ty.shape[3])), np.float32)
    return out


def assert_prefill_decode_match(module, g, sess, *, tol: float = 1e-4, nb: int = 3, ns: int = 11,
                                nd: int = 2) -> None:
    """Run ``sess`` (onnxruntime, the emitted ``g``) on a prefill of ``nb`` x ``ns`` random tokens
    from an empty KV cache, then ``nd`` one-token decode steps each fed the previous step's present
    cache, and assert the logits match torch eager ``module`` on the whole sequence within ``tol``
    (and the cache grows by one position a step)."""
    import numpy as np
    import torch
    vocab = module.model.config.vocab_size
    layers = sum(1 for t in g.inputs if t.startswith("past_key."))
    ids = torch.randint(0, vocab, (nb, ns + nd), generator=torch.Generator().manual_seed(1))
    pos = torch.arange(ns + nd).expand(nb, -1)
    with torch.no_grad():
        ref = module(ids, pos).numpy()
    names = [o.name for o in sess.get_outputs()]
    mask = "attention_mask" in g.inputs   # lift_kv_cache's padding input: all ones here (no padding)
    feed = {"input_ids": ids[:, :ns].numpy(), "position_ids": pos[:, :ns].numpy(), **empty_cache(g, nb)}
    if mask:
        feed["attention_mask"] = np.ones((nb, ns), np.int64)
    res = dict(zip(names, sess.run(None, feed)))
    assert np.abs(res["logits"] - ref[:, :ns]).max() <= tol
    for t in range(ns, ns + nd):
        feed = {"input_ids": ids[:, t:t + 1].numpy(), "position_ids": pos[:, t:t + 1].numpy()}
        if mask:
            feed["attention_mask"] = np.ones((nb, t + 1), np.int64)
        for i in range(layers):
            feed[f"past_key.{i}"] = res[f"present_key.{i}"]
            feed[f"past_value.{i}"] = res[f"present_value.{i}"]
        res = dict(zip(names, sess.run(None, feed)))
        assert res["present_key.0"].shape[2] == t + 1
        assert np.abs(res["logits"][:, 0] - ref[:, t]).max() <= tol

@pytest.fixture(scope="session")
def llama2_7b():
    return imported("llama2_7b")


# --- every report a test emits matches the shipped JSON Schema (compiler/schema/) ---------------

def assert_valid_report(report) -> None:
    """Fail the test unless ``report`` (a dict, or a path to report.json) matches
    compiler/schema/report.schema.json."""
    import json
    from compiler import schema
    if not isinstance(report, dict):
        with open(report, encoding="utf-8") as f:
            report = json.load(f)
    problems = schema.errors(report, "report")
    assert not problems, "report.json violates compiler/schema/report.schema.json:\n" + "\n".join(problems[:20])


@pytest.fixture(autouse=True)
def _validate_emitted_reports(request, monkeypatch):
    """In-process runs: validate each report before it is written. Subprocess runs: validate every
    report.json left under the test's tmp_path. Opt out with @pytest.mark.no_report_check (tests
    that write broken reports on purpose)."""
    if request.node.get_closest_marker("no_report_check"):
        yield
        return
    import compiler.driver.pipeline as pipeline
    orig = pipeline.write_reports

    def checked(report, out_dir, *a, **kw):
        assert_valid_report(report)
        return orig(report, out_dir, *a, **kw)

    monkeypatch.setattr(pipeline, "write_reports", checked)   # the driver's reference to the writer
    tmp = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    for p in sorted(tmp.rglob("report.json")) if tmp is not None else ():
        assert_valid_report(p)


@pytest.fixture(scope="session")
def tiny_report(tmp_path_factory):
    """One in-process run of gpt2_tiny (default pipeline, no emission): (report dict, out dir)."""
    from compiler.driver.pipeline import run
    out = tmp_path_factory.mktemp("tiny_report")
    report = run(compose(["model=gpt2_tiny", "emit.enabled=false", "report.html=false"]), str(out),
                 show_progress=False)
    assert_valid_report(report)
    return report, out


# the longest test files first: with ``-n 2 --dist loadfile`` a worker takes whole files in
# collection order, so a long file collected late runs alone at the end while the other worker
# idles (the command-line fuzzer: about 3½ minutes of its own)
FIRST = ("tests/driver/test_fuzz.py",)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda it: 0 if it.nodeid.split("::")[0] in FIRST else 1)   # stable: order kept otherwise
