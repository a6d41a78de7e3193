"""Tensor types and dims: the base layer of rooftop's IR (no graph, no ops).

Shapes are tuples whose entries are ``int`` or sympy expressions of three symbols: ``B`` (batch),
``S`` (new tokens this step) and ``P`` (tokens already in the KV cache). :mod:`compiler.ir`,
:mod:`compiler.ir.ops` and :mod:`compiler.ir.annotations` all build on this module, so none of them
has to import another in a cycle.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import sympy

from compiler.errors import RooftopError

B = sympy.Symbol("B", integer=True, positive=True)
S = sympy.Symbol("S", integer=True, positive=True)
P = sympy.Symbol("P", integer=True, nonnegative=True)
SYMBOLS = {"B": B, "S": S, "P": P}

Dim = "int | sympy.Expr"

# dtype name -> (bytes per element, numpy dtype or None, onnx TensorProto enum)
DTYPES: dict[str, tuple[float, Any, int]] = {
    "float32": (4, np.float32, 1),
    "uint8": (1, np.uint8, 2),
    "int8": (1, np.int8, 3),
    "int32": (4, np.int32, 6),
    "int64": (8, np.int64, 7),
    "bool": (1, np.bool_, 9),
    "uint16": (2, np.uint16, 4),
    "int16": (2, np.int16, 5),
    "uint32": (4, np.uint32, 12),
    "uint64": (8, np.uint64, 13),
    "float16": (2, np.float16, 10),
    "float64": (8, np.float64, 11),
    "bfloat16": (2, None, 16),
    "float8e4m3fn": (1, None, 17),
    "float8e5m2": (1, None, 19),
    "uint4": (0.5, None, 21),
    "int4": (0.5, None, 22),
    "float4e2m1": (0.5, None, 23),    # FP4 (E2M1) values of MXFP4 / NVFP4
    "float8e8m0": (1, None, 24),      # MXFP4's power-of-two block scale
}
ONNX_TO_DTYPE = {v[2]: k for k, v in DTYPES.items()}

# Hardware dtype classes: the unit of a device's peak table (fp32 = the vector FMA rate; the others
# the matrix units' rates) and of a cache's stored format. One table each, used everywhere.
HW_DTYPES = ("fp32", "tf32", "fp16", "bf16", "fp8", "int8", "int4", "fp4")
#: bytes per element of each hardware dtype class
HW_DTYPE_BYTES = {"fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1, "int4": 0.5, "fp4": 0.5}
#: the class an op on (or a cache of) tensors of each IR dtype belongs to
HW_DTYPE = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float8e4m3fn": "fp8",
            "float8e5m2": "fp8", "int8": "int8", "uint8": "int8", "int4": "int4", "uint4": "int4",
            "float4e2m1": "fp4", "float64": "fp32", "int64": "fp32", "int32": "fp32", "bool": "fp32"}
#: other spellings of the classes (torch / numpy / ONNX / vendor names)
HW_DTYPE_ALIASES = {
    "float32": "fp32", "float": "fp32", "f32": "fp32",
    "tensorfloat32": "tf32",
    "float16": "fp16", "half": "fp16", "f16": "fp16",
    "bfloat16": "bf16",
    "float8": "fp8", "float8_e4m3fn": "fp8", "float8_e4m3fnuz": "fp8", "float8_e5m2": "fp8",
    "float8_e5m2fnuz": "fp8", "float8e4m3fn": "fp8", "float8e5m2": "fp8", "fp8_e4m3": "fp8", "fp8_e5m2": "fp8",
    "e4m3": "fp8", "e5m2": "fp8",
    "uint8": "int8", "i8": "int8", "u8": "int8",
    "uint4": "int4", "i4": "int4", "u4": "int4",
    "float4e2m1": "fp4", "float4_e2m1fn": "fp4", "e2m1": "fp4", "nvfp4": "fp4", "mxfp4": "fp4",
}


def hw_dtype(name: Any) -> str | None:
    """The hardware dtype class a spelling names (``fp16``, ``"float16"``, ``"torch.bfloat16"``,
    ``"e4m3"``…), or None."""
    if not isinstance(name, str):
        return None
    key = name.strip().lower()
    if key.startswith("torch."):
        key = key[len("torch."):]
    return key if key in HW_DTYPES else HW_DTYPE_ALIASES.get(key)


class IRError(ValueError):
    """The graph broke an invariant (a bug in a pass or an importer, never bad user input)."""


def as_dim(d: Any) -> int | sympy.Expr:
    if isinstance(d, (int, np.integer)):
        return int(d)
    if isinstance(d, sympy.Expr):
        return int(d) if d.is_Integer else d
    raise IRError(f"dimension {d!r} is neither an int nor a sympy expression")


@dataclasses.dataclass(frozen=True, slots=True)
class TensorType:
    """dtype and shape of one tensor; ``shape=None`` means unknown rank (only before typing)."""

    dtype: str
    shape: tuple

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise IRError(f"unknown dtype {self.dtype!r}; known: {sorted(DTYPES)}")
        object.__setattr__(self, "shape", tuple(as_dim(d) for d in self.shape))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def itemsize(self) -> float:
        return DTYPES[self.dtype][0]

    def numel(self) -> sympy.Expr | int:
        n: Any = sympy.Integer(1)
        for d in self.shape:
            n = n * d
        return as_dim(sympy.sympify(n))

    def nbytes(self) -> sympy.Expr | int:
        return as_dim(sympy.nsimplify(self.numel() * sympy.Rational(self.itemsize).limit_denominator(2)))

    def with_shape(self, shape) -> "TensorType":
        return TensorType(self.dtype, tuple(shape))

    def with_dtype(self, dtype: str) -> "TensorType":
        return TensorType(dtype, self.shape)

    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(str(d) for d in self.shape)}]"


def subs(expr, values: Mapping[sympy.Symbol, int]):
    """Evaluate a dim/size expression at a workload point (ints pass through)."""
    if isinstance(expr, (int, float)):
        return expr
    v = expr.subs(values)
    return int(v) if v.is_Integer else float(v)


class UnsupportedOpError(RooftopError):
    """An op the registry does not know (or cannot import / lift): bad input, exit code 2."""

    @classmethod
    def for_op(cls, op: str, *, domain: str = "", node: str = "", count: int = 1, model: str = "",
               source: str = "", fix: str = "", support: str = "") -> "UnsupportedOpError":
        """The one-paragraph message: which node and op, its domain, how many such nodes, and what
        to do — re-export the model, or add the op where ops live (compiler/ir/ops.py)."""
        dom = f"domain {domain!r}" if domain not in ("", "ai.onnx") else "the standard ai.onnx domain"
        where = f" in {model}" if model else ""
        others = f" (and {count - 1} more node(s) with that op)" if count > 1 else ""
        src = f" (from {source})" if source else ""
        support = support or (f"To support it, add an OpDef for {op!r} to the op registry in "
                              f"compiler/ir/ops.py (kind, shape rule, cost rule; emission if it is not a "
                              f"standard ONNX op).")
        return cls(f"node {node or '?'!r}{src} runs operator {op!r} of {dom}{others}{where}, which is "
                   f"not supported by rooftop. {fix or REEXPORT_HINT} {support}")


REEXPORT_HINT = ("Re-export the model with standard ONNX operators (e.g. torch.onnx.export(..., "
                 "dynamo=True, opset_version=23), without onnxruntime graph optimizations or contrib "
                 "ops), or rewrite that part of the model.")

Types = Sequence[TensorType | None]
