"""Imports run one way (issue 8): core → passes → driver, core → reports → driver.

Read statically with ``ast`` (every ``import``/``from … import`` anywhere in a module, including
inside functions), so a lazy import is a dependency too.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

DRIVER = {"compiler.driver.pipeline", "compiler.driver.app", "compiler.__main__", "compiler.driver.sweep"}  # sweep runs the pipeline per point


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    mod = _module_name(path)
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = set()
    # imports under `if TYPE_CHECKING:` are for annotations only and never run: not an edge
    typing_only = {id(n) for blk in ast.walk(tree) if isinstance(blk, ast.If)
                   and getattr(blk.test, "id", getattr(blk.test, "attr", None)) == "TYPE_CHECKING"
                   for stmt in blk.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.add(name)
            out |= {f"{name}.{a.name}" for a in node.names}
    return {n for n in out if n.split(".")[0] in ("compiler", "passes", "reports")}


def _modules(pkg: str) -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in sorted((ROOT / pkg).rglob("*.py"))}


MODULES = {**_modules("compiler"), **_modules("passes"), **_modules("reports")}


def _layer(name: str) -> str:
    top = name.split(".")[0]
    if top == "compiler":
        return "driver" if name in DRIVER else "core"
    return top


def _edges(layer: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for mod, deps in MODULES.items():
        if _layer(mod) != layer:
            continue
        for d in sorted(deps):
            if _layer(d) in forbidden:
                bad.append(f"{mod} imports {d}")
    return bad


def test_the_scan_sees_the_driver_edges():
    """The scanner is not blind: the driver's own (allowed) imports of passes/ and reports/ show."""
    deps = MODULES["compiler.driver.pipeline"]
    assert any(d.startswith("passes") for d in deps) and any(d.startswith("reports") for d in deps)
    assert "compiler.analysis.phases" in MODULES and "compiler.driver.config" in MODULES


def test_core_never_imports_passes_reports_or_the_driver():
    bad = _edges("core", ("passes", "reports", "driver"))
    # the importers' implicit passes are the one known backward edge (next test)
    assert bad == []


def test_importers_run_no_passes():
    assert [e for e in _edges("core", ("passes",)) if e.startswith("compiler.frontends.")] == []


def test_passes_import_only_the_core():
    assert _edges("passes", ("reports", "driver")) == []


def test_reports_import_only_the_core():
    assert _edges("reports", ("passes", "driver")) == []


def _cycle(a: str, b: str) -> bool:
    return any(d == b or d.startswith(b + ".") for d in MODULES[a]) and \
        any(d == a or d.startswith(a + ".") for d in MODULES[b])


def test_ir_and_ops_do_not_import_each_other():
    assert not _cycle("compiler.ir", "compiler.ir.ops")
