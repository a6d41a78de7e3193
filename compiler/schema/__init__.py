"""JSON Schemas of rooftop's machine-readable outputs, shipped with the package.

``report.schema.json`` describes ``report.json`` (the output contract: required keys, types and
units; objects stay open so the contract can be extended) and ``sweep.schema.json`` the
``sweep.json`` a multirun writes. ``validate(doc, "report")`` raises :class:`SchemaError` with
every violation listed (JSON pointer + message); ``errors(doc, "report")`` returns them.
"""
from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

SCHEMAS = ("report", "sweep")


class SchemaError(ValueError):
    """A document does not match its rooftop JSON Schema."""

    def __init__(self, name: str, problems: list[str]):
        self.problems = problems
        shown = "; ".join(problems[:8]) + (f"; … {len(problems) - 8} more" if len(problems) > 8 else "")
        super().__init__(f"not a valid rooftop {name}.json ({len(problems)} problem(s)): {shown}")


@functools.lru_cache(maxsize=None)
def load(name: str) -> dict[str, Any]:
    """The schema ``name`` (``report`` or ``sweep``) as a dict."""
    if name not in SCHEMAS:
        raise KeyError(f"unknown schema {name!r}; known: {', '.join(SCHEMAS)}")
    text = resources.files(__package__).joinpath(f"{name}.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


@functools.lru_cache(maxsize=None)
def _validator(name: str):
    import jsonschema
    schema = load(name)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def errors(doc: Any, name: str = "report") -> list[str]:
    """Every violation of schema ``name`` in ``doc``, as ``/json/pointer: message`` lines."""
    out = []
    for e in sorted(_validator(name).iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path]):
        where = "/" + "/".join(str(p) for p in e.absolute_path)
        out.append(f"{where}: {e.message}")
    return out


def validate(doc: Any, name: str = "report") -> None:
    """Raise :class:`SchemaError` unless ``doc`` matches schema ``name``."""
    problems = errors(doc, name)
    if problems:
        raise SchemaError(name, problems)


__all__ = ["SCHEMAS", "SchemaError", "load", "errors", "validate"]
