"""The layering of the stage packages, read statically with ``ast`` (every ``import`` anywhere in a
module, function bodies included, so a lazy import is a dependency too):

    base       compiler, compiler.errors, compiler.resources, compiler.schema   (leaves)
    ir         compiler.ir.*           base                        (no onnx, torch, hydra …)
    perf       compiler.perf.*         base, ir
    frontends  compiler.frontends.*    base, ir, perf
    backend    compiler.backend.*      base, ir, perf
    passes     passes.*                base, ir, perf
    analysis   compiler.analysis.*     base, ir, perf
    reports    reports.*               base, ir, perf, analysis
    driver     compiler.driver.*, compiler.__main__                anything

No import cycle anywhere (between or inside packages), and no rooftop import hidden inside a
function: a project module is imported at the top of the module that uses it.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

from tests.conftest import ROOT

ALLOWED = {
    "base": {"base"},
    "ir": {"base", "ir"},
    "perf": {"base", "ir", "perf"},
    "frontends": {"base", "ir", "perf", "frontends"},
    "backend": {"base", "ir", "perf", "backend"},
    "passes": {"base", "ir", "perf", "passes"},
    "analysis": {"base", "ir", "perf", "analysis"},
    "reports": {"base", "ir", "perf", "analysis", "reports"},
    "driver": {"base", "ir", "perf", "frontends", "backend", "passes", "analysis", "reports", "driver"},
}
#: third-party packages a layer must not import (at module level or inside functions)
FORBIDDEN_EXTERNAL = {
    "ir": {"onnx", "onnxruntime", "torch", "transformers", "hydra", "omegaconf", "matplotlib", "onnx_ir",
           "onnxscript", "yaml", "ruamel", "rich", "scipy"},
    "perf": {"onnx", "onnxruntime", "torch", "transformers", "hydra", "matplotlib"},
    "analysis": {"onnx", "onnxruntime", "torch", "transformers", "hydra"},
    "passes": {"torch", "transformers", "hydra", "onnxruntime"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _layer(name: str) -> str:
    parts = name.split(".")
    if parts[0] in ("passes", "reports"):
        return parts[0]
    if name in ("compiler", "compiler.errors", "compiler.resources", "compiler.schema"):
        return "base"
    if name == "compiler.__main__":
        return "driver"
    return parts[1]


def _scan(path: Path):
    """(module imports at any depth, project imports inside functions, external top names)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    mod = _module_name(path)
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    typing_only = {id(n) for blk in ast.walk(tree) if isinstance(blk, ast.If)
                   and getattr(blk.test, "id", getattr(blk.test, "attr", None)) == "TYPE_CHECKING"
                   for stmt in blk.body for n in ast.walk(stmt)}
    in_function = {id(n) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for n in ast.walk(fn)}
    project, inner, external = set(), [], set()
    for node in ast.walk(tree):
        if id(node) in typing_only or not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif node.level:
            base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
            base_name = ".".join(base + ([node.module] if node.module else []))
            names = [base_name] + [f"{base_name}.{a.name}" for a in node.names]
        else:
            names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
        for n in names:
            if n.split(".")[0] in ("compiler", "passes", "reports"):
                real = _resolve(n)
                if real:
                    project.add(real)
                    if id(node) in in_function:
                        inner.append(real)
            else:
                external.add(n.split(".")[0])
    return project, sorted(set(inner)), external


def _files():
    for pkg in ("compiler", "passes", "reports"):
        yield from sorted((ROOT / pkg).rglob("*.py"))


_ALL = {_module_name(p) for p in _files()}


def _resolve(name: str) -> str | None:
    """The project module ``name`` refers to (``from compiler.ir import Graph`` → compiler.ir)."""
    while name and name not in _ALL:
        name = name.rpartition(".")[0]
    return name or None


SCAN = {_module_name(p): _scan(p) for p in _files()}


def test_every_module_belongs_to_a_layer():
    assert {_layer(m) for m in SCAN} <= set(ALLOWED), sorted({_layer(m) for m in SCAN} - set(ALLOWED))


def test_no_package_imports_above_its_layer():
    bad = [f"{m} ({_layer(m)}) imports {d} ({_layer(d)})" for m, (deps, _, _) in sorted(SCAN.items())
           for d in sorted(deps) if _layer(d) not in ALLOWED[_layer(m)]]
    assert bad == []


def test_no_forbidden_third_party_imports():
    bad = [f"{m} imports {e}" for m, (_, _, ext) in sorted(SCAN.items())
           for e in sorted(ext & FORBIDDEN_EXTERNAL.get(_layer(m), set()))]
    assert bad == []


def test_no_import_cycles():
    g = nx.DiGraph()
    for m, (deps, _, _) in SCAN.items():
        g.add_node(m)
        for d in deps:
            # importing a submodule runs its package's __init__ first: that is not a cycle edge
            if d != m and not m.startswith(d + "."):
                g.add_edge(m, d)
    cycles = [sorted(c) for c in nx.strongly_connected_components(g) if len(c) > 1]
    assert cycles == []


def test_no_project_import_inside_a_function():
    bad = {m: inner for m, (_, inner, _) in sorted(SCAN.items()) if inner}
    assert bad == {}


def test_the_scan_is_not_blind():
    deps = SCAN["compiler.driver.pipeline"][0]
    assert any(d.startswith("passes") for d in deps) and any(d.startswith("reports") for d in deps)
    assert "compiler.ir" in SCAN and _layer("compiler.ir.graph") == "ir"


def test_importing_the_ir_loads_neither_onnx_nor_torch():
    code = ("import sys, compiler.ir, compiler.ir.ops, compiler.ir.annotations; "
            "print(sorted(m for m in ('onnx', 'torch', 'onnxruntime', 'transformers', 'hydra') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_analysis_and_perf_load_no_onnx_or_torch():
    code = ("import sys, compiler.perf.cost, compiler.analysis.parallel, compiler.analysis.serving; "
            "print(sorted(m for m in ('onnx', 'torch', 'onnxruntime', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
