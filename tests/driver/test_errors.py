"""One error path: every ``raise`` in compiler/, passes/ and reports/ raises a
:class:`compiler.errors.RooftopError` subclass (exit 2, 3 or 4 with one paragraph) or a type that
compiler.errors.INTERNAL_ERRORS documents as a bug or as control flow caught where it is raised —
read statically with ``ast`` and resolved against the imported modules (a helper that builds the
error is resolved through its return annotation, a name through its assignment or ``except``)."""
from __future__ import annotations

import ast
import importlib
import typing

import pytest

from compiler.errors import INTERNAL_ERRORS, RooftopError
from tests.conftest import ROOT

PACKAGES = ("compiler", "passes", "reports")


def _modules():
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if parts[-1] == "__main__":     # runs the command when imported; holds no raise
                continue
            yield f, ".".join(parts)


def _lookup(mod, expr: ast.expr):
    """The object a Name / dotted Attribute names in ``mod``'s namespace (None if unknown)."""
    import builtins
    if isinstance(expr, ast.Name):
        return getattr(mod, expr.id, None) or getattr(builtins, expr.id, None)
    if isinstance(expr, ast.Attribute):
        base = _lookup(mod, expr.value)
        return getattr(base, expr.attr, None) if base is not None else None
    return None


def _as_class(mod, obj):
    """An exception class, or what a function / classmethod that builds one is annotated to return."""
    if isinstance(obj, type):
        return obj
    if callable(obj):
        try:
            hints = typing.get_type_hints(obj, vars(importlib.import_module(obj.__module__)))
        except Exception:  # noqa: BLE001
            return None
        ret = hints.get("return")
        return ret if isinstance(ret, type) else None
    return None


def _enclosing(tree: ast.AST):
    """node -> the innermost function containing it."""
    out = {}

    def visit(node, fn):
        for child in ast.iter_child_nodes(node):
            f = child if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else fn
            out[child] = fn
            visit(child, f)
    visit(tree, None)
    return out


def _resolve(mod, fn, exc: ast.expr) -> list:
    target = exc.func if isinstance(exc, ast.Call) else exc
    if isinstance(target, ast.Name) and fn is not None:
        for node in ast.walk(fn):        # a local: `err = SomeError(...)`, `except X as err`
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == target.id for t in node.targets) \
                    and isinstance(node.value, ast.Call):
                return _resolve(mod, fn, node.value)
            if isinstance(node, ast.ExceptHandler) and node.name == target.id and node.type is not None:
                types = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
                return [_as_class(mod, _lookup(mod, t)) for t in types]
    return [_as_class(mod, _lookup(mod, target))]


def _raise_sites():
    for f, name in _modules():
        mod = importlib.import_module(name)
        tree = ast.parse(f.read_text(encoding="utf-8"))
        parent_fn = _enclosing(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and node.exc is not None:
                yield f"{f.relative_to(ROOT)}:{node.lineno}", ast.unparse(node.exc)[:80], \
                    _resolve(mod, parent_fn.get(node), node.exc)


@pytest.fixture(scope="module")
def sites():
    return list(_raise_sites())


def test_the_scan_sees_every_package(sites):
    assert {name.split(".")[0] for _, name in _modules()} == set(PACKAGES)
    assert {s[0].split("/")[0] for s in sites} >= {"compiler", "passes"} and len(sites) > 300


def test_every_raise_is_a_rooftop_error_or_a_documented_internal_one(sites):
    bad = []
    for where, text, classes in sites:
        for cls in classes:
            if cls is None:
                bad.append(f"{where}: `raise {text}`: cannot tell what it raises (name a class, or annotate the "
                           f"helper's return type)")
            elif not (issubclass(cls, RooftopError) or cls.__name__ in INTERNAL_ERRORS):
                bad.append(f"{where}: `raise {text}` raises {cls.__name__}, neither a RooftopError nor listed in "
                           f"compiler.errors.INTERNAL_ERRORS")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("name", sorted(INTERNAL_ERRORS))
def test_internal_error_types_are_not_rooftop_errors_and_are_used(name, sites):
    """Each documented internal type is raised somewhere (no stale entry) and is not a RooftopError
    (those need no entry)."""
    used = [w for w, _, classes in sites if any(c is not None and c.__name__ == name for c in classes)]
    assert used, f"{name} is listed in INTERNAL_ERRORS but never raised"
