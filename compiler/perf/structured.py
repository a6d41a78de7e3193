"""Structured configs: OmegaConf checks a mapping against a dataclass schema (types, unknown keys,
missing required keys); this module only translates its errors into rooftop's one-paragraph
wording (the field's dotted path, what is wrong, how to fix it, the nearest valid key).

Used for the run config (:mod:`compiler.driver.config`) and the hardware descriptions
(:mod:`compiler.perf.hardware`) alike: one mechanism, one wording.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException,
                              ValidationError)

__all__ = ["Problem", "check", "describe", "nearest", "fields_of"]


@dataclasses.dataclass(frozen=True)
class Problem:
    """What OmegaConf found wrong: ``path`` (dotted), ``kind`` (unknown | type | missing | other),
    the offending ``value``, the valid keys at that level, the expected type's name and its raw
    message."""

    path: str
    kind: str
    value: Any = None
    valid: tuple[str, ...] = ()
    expected: str = ""
    raw: str = ""

    @property
    def key(self) -> str:
        return self.path.rsplit(".", 1)[-1]

    @property
    def parent(self) -> str:
        return self.path.rsplit(".", 1)[0] if "." in self.path else ""


def fields_of(tp) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(tp)) if dataclasses.is_dataclass(tp) else ()


def nearest(key: str, valid) -> list[str]:
    """The valid names closest to ``key`` (difflib), best first; a shared prefix as a fallback."""
    valid = sorted(str(v) for v in valid)
    close = difflib.get_close_matches(str(key), valid, n=3, cutoff=0.6)
    if not close:
        close = [v for v in valid if v.startswith(str(key)[:3])][:3]
    return close


_TYPE_WORDS = {"Float": "a number", "Integer": "a whole number", "Boolean": "true or false",
               "String": "a string", "int": "a whole number", "float": "a number", "bool": "true or false",
               "str": "a string"}


def _expected(e: OmegaConfBaseException) -> str:
    msg = str(getattr(e, "msg", "") or "")
    if "valid bool" in msg:
        return "true or false"
    for word, say in _TYPE_WORDS.items():
        if f"converted to {word}" in msg or f"to {word}" in msg:
            return say
    ref = getattr(e, "ref_type_str", "") or ""
    return _TYPE_WORDS.get(ref.split("[")[0].replace("Optional", "").strip(), ref)


def problem(e: OmegaConfBaseException, schema=None) -> Problem:
    """The :class:`Problem` an OmegaConf exception describes."""
    path = str(getattr(e, "full_key", "") or getattr(e, "key", "") or "")
    raw = " ".join(str(getattr(e, "msg", e)).split("\n")[0].split())
    if isinstance(e, (ConfigKeyError, ConfigAttributeError)):
        obj = getattr(e, "object_type", None)
        valid = fields_of(obj) if dataclasses.is_dataclass(obj) else ()
        if not valid and schema is not None:
            valid = fields_of(_schema_at(schema, path.rsplit(".", 1)[0] if "." in path else ""))
        return Problem(path, "unknown", valid=valid, raw=raw)
    if isinstance(e, MissingMandatoryValue):
        return Problem(path, "missing", raw=raw)
    if isinstance(e, ValidationError):
        return Problem(path, "type", value=getattr(e, "value", None), expected=_expected(e), raw=raw)
    return Problem(path, "other", raw=raw)


def _schema_at(schema, dotted: str):
    """The dataclass at ``dotted`` inside ``schema`` (None for an open mapping)."""
    tp = schema
    for part in [p for p in dotted.split(".") if p]:
        if not dataclasses.is_dataclass(tp):
            return None
        hints = typing.get_type_hints(tp)
        tp = hints.get(part)
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if typing.get_origin(tp) is typing.Union and len(args) == 1:
            tp = args[0]
    return tp if dataclasses.is_dataclass(tp) else None


def describe(p: Problem, *, what: str = "config key", fix: str = "") -> str:
    """A one-paragraph message for ``p``."""
    if p.kind == "unknown":
        near = nearest(p.key, p.valid)
        parent = f"{p.parent}." if p.parent else ""
        hint = f"Did you mean {', '.join(repr(parent + n) for n in near)}? " if near else ""
        valid = f"Valid keys{' of ' + p.parent if p.parent else ''}: {', '.join(p.valid)}. " if p.valid else ""
        return (f"unknown {what} {p.path!r}: there is no such setting, so it would be silently ignored. "
                f"{hint}{valid}{fix}").strip()
    if p.kind == "missing":
        return f"{what} {p.path!r} is missing. {fix or 'Add it.'}".strip()
    if p.kind == "type":
        return (f"{p.path}={p.value!r} is not {p.expected or 'of the declared type'}. "
                f"{fix or f'Set {p.path} to ' + (p.expected or 'a valid value') + '.'}").strip()
    return f"{p.path or what}: {p.raw}. {fix}".strip()


def check(schema, data: Mapping | DictConfig, *, readonly: bool = False) -> DictConfig:
    """``data`` merged onto ``schema`` (a dataclass): OmegaConf converts values to the declared
    types and refuses unknown keys. Raises the first :class:`Problem` as ``ProblemError``; a
    required field left out (``MISSING``) is a ``missing`` problem."""
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(schema), data)
    except OmegaConfBaseException as e:
        raise ProblemError(problem(e, schema)) from None
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ProblemError(Problem(missing[0], "missing", valid=fields_of(schema)))
    if readonly:
        OmegaConf.set_readonly(cfg, True)
    return cfg


class ProblemError(ValueError):
    """Carries a :class:`Problem` (callers turn it into their own error class and wording)."""

    def __init__(self, p: Problem):
        super().__init__(p.raw or p.path)
        self.problem = p
