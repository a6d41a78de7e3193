"""Symbolic values: exporters compute Reshape/Expand shapes at run time from Shape(x) → Gather →
Unsqueeze → Concat chains. Where x's dims are expressions of B/S/P the ONNX importer evaluates those
chains on sympy values with these rules (object arrays of int / sympy entries); compiler/ir/ops.py
binds them to ops (``OpDef.sym_value``).
"""
from __future__ import annotations


import numpy as np
import sympy




# ----------------------------------------------------------------------------------------------
# symbolic values: exporters compute Reshape/Expand shapes at run time from Shape(x) → Gather →
# Unsqueeze → Concat chains. Where x's dims are expressions of B/S/P the ONNX importer evaluates
# those chains on sympy values with these rules (object arrays of int / sympy entries).

MAX_SYM_ELEMENTS = 64


def sym_entry(x):
    """An int, or a sympy expression (integers as int)."""
    if isinstance(x, (int, np.integer, bool, np.bool_)):
        return int(x)
    x = sympy.sympify(x)
    return int(x) if x.is_Integer else x


def sym_array(vals, shape=None) -> np.ndarray:
    """Object array of int / sympy entries; an all-int result becomes a plain int64 array."""
    arr = np.empty(len(vals), dtype=object)
    for i, v in enumerate(vals):
        arr[i] = sym_entry(v)
    arr = arr.reshape(shape if shape is not None else (len(vals),))
    if all(isinstance(v, int) for v in arr.reshape(-1)):
        return arr.astype(np.int64)
    return arr


def is_symbolic(arr: np.ndarray) -> bool:
    return arr.dtype == object


def _sym_div(a, b):
    if isinstance(a, int) and isinstance(b, int):
        return a // b if b else None
    q = sympy.cancel(sympy.sympify(a) / b)
    return q if q.as_numer_denom()[1] == 1 else sympy.floor(sympy.sympify(a) / b)


def _sym_equal(a, b):
    d = sympy.sympify(a) - b
    z = d.is_zero
    if z is None:
        nz = d.is_positive or d.is_negative
        return False if nz else None
    return bool(z)


def _axis_of(a, r):
    return a + r if a < 0 else a


def _sym_shape(attrs, ins, types):
    shp = types[0].shape if types[0] is not None else None
    if shp is None:
        return None
    return sym_array(list(shp[attrs.get("start", 0):attrs.get("end")]))  # ONNX bounds = slice bounds


def _sym_size(attrs, ins, types):
    return None if types[0] is None else sym_array([sympy.Mul(*types[0].shape)], ())


def _sym_gather(attrs, ins, types):
    data, idx = ins
    return None if is_symbolic(idx) else np.take(data, idx.astype(np.int64), axis=attrs.get("axis", 0))


def _sym_unsqueeze(attrs, ins, types):
    if "axes" not in attrs:
        return None
    x = ins[0]
    r = x.ndim + len(attrs["axes"])
    for a in sorted(_axis_of(a, r) for a in attrs["axes"]):
        x = np.expand_dims(x, a)
    return x


def _sym_squeeze(attrs, ins, types):
    if "axes" not in attrs:
        return None
    return np.squeeze(ins[0], axis=tuple(_axis_of(a, ins[0].ndim) for a in attrs["axes"]))


def _sym_reshape(attrs, ins, types):
    if "shape" not in attrs or not all(isinstance(d, int) for d in attrs["shape"]):
        return None
    shape = [ins[0].shape[i] if d == 0 and not attrs.get("allowzero") else d for i, d in enumerate(attrs["shape"])]
    return ins[0].reshape(shape)


def _sym_slice(attrs, ins, types):
    if "starts" not in attrs or ins[0].ndim != 1:
        return None
    axes = attrs.get("axes") or [0]
    steps = attrs.get("steps") or [1]
    if axes != [0] or len(attrs["starts"]) != 1:
        return None
    return ins[0][slice(attrs["starts"][0], attrs["ends"][0], steps[0])]


def _sym_binary(fn, out_bool=False):
    def rule(attrs, ins, types):
        a, b = np.broadcast_arrays(*(np.asarray(v, dtype=object) for v in ins))
        out = [fn(x, y) for x, y in zip(a.reshape(-1), b.reshape(-1))]
        if any(v is None for v in out):
            return None
        return np.array(out, dtype=bool).reshape(a.shape) if out_bool else sym_array(out, a.shape)
    return rule


def _int_only(f):
    return lambda x, y: f(x, y) if isinstance(x, int) and isinstance(y, int) else None


def _sym_where(attrs, ins, types):
    c, x, y = ins
    if c.dtype != bool:
        return None
    c, x, y = np.broadcast_arrays(c, np.asarray(x, dtype=object), np.asarray(y, dtype=object))
    return sym_array(list(np.where(c, x, y).reshape(-1)), c.shape)


def _sym_constant_of_shape(attrs, ins, types):
    if "shape" not in attrs or not all(isinstance(d, int) for d in attrs["shape"]):
        return None
    n = int(np.prod(attrs["shape"])) if attrs["shape"] else 1
    val = attrs.get("value")
    fill = np.asarray(val).reshape(-1)[0] if val is not None else 0
    return None if n > MAX_SYM_ELEMENTS else np.full(attrs["shape"], int(fill), dtype=np.int64)
