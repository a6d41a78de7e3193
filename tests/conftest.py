"""Shared fixtures: Hydra-composed configs, imported graphs, CLI runner."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def compose(overrides=()):
    from hydra import compose as _compose, initialize_config_dir
    from omegaconf import OmegaConf
    from compiler.app import config_dir
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        cfg = _compose("config", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True) | {"hydra": None}


def model_cfg(name: str, **over) -> dict:
    from omegaconf import OmegaConf
    from compiler.app import config_dir
    cfg = OmegaConf.to_container(OmegaConf.load(config_dir() / "model" / f"{name}.yaml"))
    cfg.update(over)
    return cfg


def run_cli(*args, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "compiler", *args], cwd=cwd or ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


_GRAPHS: dict = {}


def imported(name: str, **over):
    """Import a configured model once per test session (cleanup passes applied)."""
    key = (name, repr(sorted(over.items())))
    if key not in _GRAPHS:
        from compiler.importers.models import import_torch
        from passes.cleanup import fold_constants, remove_noops
        g = import_torch(model_cfg(name, **over))
        remove_noops(g)
        fold_constants(g)
        _GRAPHS[key] = g
    return _GRAPHS[key]


@pytest.fixture(scope="session")
def llama2_7b():
    return imported("llama2_7b")
