"""A model file is untrusted input: checks that run before anything is allocated or followed.

:func:`check_onnx_file` reads the file's protobuf without its external data and refuses
(:class:`~compiler.errors.ModelFileError`, exit 2):

- external-data locations that leave the model's folder: absolute paths, ``..`` components, a
  symbolic link anywhere on the way, or a location that is not a regular file;
- tensors that claim more bytes than their data holds (an external ``offset + length`` beyond the
  data file, a ``length`` that disagrees with the shape, inline ``raw_data`` shorter than the shape
  needs);
- shapes with a negative dimension or whose element count or byte size does not fit in 63 bits
  (or is beyond :data:`MAX_TENSOR_BYTES`).

Nothing is unpickled anywhere in rooftop (ONNX is protobuf; torch models are built from configs;
a test scans the sources for ``pickle`` and for ``torch.load`` without ``weights_only=True``).
"""
from __future__ import annotations

import os
from collections.abc import Iterator

import onnx
from onnx import TensorProto

from compiler.errors import ModelFileError

#: no single tensor rooftop imports is larger than this (1 TiB)
MAX_TENSOR_BYTES = 1 << 40
_INT63 = (1 << 63) - 1
_ITEMSIZE = {TensorProto.FLOAT: 4, TensorProto.FLOAT16: 2, TensorProto.BFLOAT16: 2, TensorProto.DOUBLE: 8,
             TensorProto.INT64: 8, TensorProto.INT32: 4, TensorProto.INT16: 2, TensorProto.INT8: 1,
             TensorProto.UINT64: 8, TensorProto.UINT32: 4, TensorProto.UINT16: 2, TensorProto.UINT8: 1,
             TensorProto.BOOL: 1, TensorProto.FLOAT8E4M3FN: 1, TensorProto.FLOAT8E5M2: 1,
             TensorProto.COMPLEX64: 8, TensorProto.COMPLEX128: 16}


def _fail(path: str, what: str, fix: str) -> ModelFileError:
    return ModelFileError(f"cannot import ONNX model {path!r}: {what}. {fix}")


def _tensors(model: onnx.ModelProto) -> Iterator[TensorProto]:
    def graph(g):
        yield from g.initializer
        for sp in g.sparse_initializer:
            yield sp.values
            yield sp.indices
        for n in g.node:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    yield a.t
                elif a.type == onnx.AttributeProto.TENSORS:
                    yield from a.tensors
                elif a.type == onnx.AttributeProto.GRAPH:
                    yield from graph(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for sg in a.graphs:
                        yield from graph(sg)
    yield from graph(model.graph)
    for f in model.functions:
        for n in f.node:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    yield a.t


def _size(path: str, t: TensorProto) -> tuple[int, int]:
    """(elements, bytes) the tensor's shape claims; refuses negative or overflowing shapes."""
    n = 1
    for d in t.dims:
        if d < 0:
            raise _fail(path, f"tensor {t.name!r} has a negative dimension in its shape {list(t.dims)}",
                        "The file is corrupted or crafted; re-export the model.")
        n *= int(d)
    nbytes = n * _ITEMSIZE.get(t.data_type, 1)
    if n > _INT63 or nbytes > _INT63 or nbytes > MAX_TENSOR_BYTES:
        raise _fail(path, f"tensor {t.name!r} claims shape {list(t.dims)} ({n} elements, {nbytes} bytes): the "
                          f"element count overflows or exceeds {MAX_TENSOR_BYTES} bytes, so it was refused "
                          f"before allocating anything", "The file is corrupted or crafted; re-export the model.")
    return n, nbytes


def _inside(base: str, loc: str, path: str, name: str) -> str:
    fix = ("Keep external data files in the model's folder and name them by relative paths "
           "(onnx.save_model(..., save_as_external_data=True, location='model.onnx.data')).")
    if os.path.isabs(loc) or loc.startswith(("/", "\\")) or (len(loc) > 1 and loc[1] == ":"):
        raise _fail(path, f"tensor {name!r} names its external data by the absolute path {loc!r}, outside "
                          f"the model's folder; rooftop reads only files beside the model", fix)
    parts = loc.replace("\\", "/").split("/")
    if ".." in parts:
        raise _fail(path, f"tensor {name!r} names its external data {loc!r}, which leaves the model's "
                          f"folder through '..'", fix)
    cur = base
    for part in parts:
        cur = os.path.join(cur, part)
        if os.path.islink(cur):
            raise _fail(path, f"tensor {name!r} names its external data {loc!r}, and {cur!r} is a symbolic "
                              f"link; rooftop does not follow links out of the model's folder", fix)
    real = os.path.realpath(cur)
    if os.path.commonpath([real, os.path.realpath(base)]) != os.path.realpath(base):
        raise _fail(path, f"tensor {name!r} names external data {loc!r} that resolves outside the model's folder", fix)
    if not os.path.isfile(real):
        what = "is missing from" if not os.path.exists(real) else "is not a regular file in"
        raise _fail(path, f"the external data file {loc!r} of tensor {name!r} {what} "
                          f"{os.path.realpath(base)!r}", "Copy the model's data file(s) next to the .onnx file.")
    return real


def check_onnx_file(path: str) -> None:
    """Refuse an unsafe or inconsistent ONNX file before it is loaded (see the module doc)."""
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception:  # noqa: BLE001 - a file that does not parse is diagnosed by the importer's loader
        return
    base = os.path.dirname(os.path.abspath(path))
    for t in _tensors(model):
        n, nbytes = _size(path, t)
        if t.data_location == TensorProto.EXTERNAL:
            info = {e.key: e.value for e in t.external_data}
            loc = info.get("location")
            if not loc:
                raise _fail(path, f"tensor {t.name!r} is stored externally but names no location",
                            "The file is corrupted; re-export the model.")
            real = _inside(base, loc, path, t.name)
            try:
                offset = int(info.get("offset", 0))
                length = int(info["length"]) if "length" in info else None
            except ValueError:
                raise _fail(path, f"tensor {t.name!r} has a non-numeric external offset/length {info}",
                            "The file is corrupted; re-export the model.") from None
            size = os.path.getsize(real)
            if offset < 0 or (length is not None and length < 0):
                raise _fail(path, f"tensor {t.name!r} has a negative external offset/length {info}",
                            "The file is corrupted; re-export the model.")
            if length is not None and length != nbytes:
                raise _fail(path, f"tensor {t.name!r} claims {length} bytes of external data but its shape "
                                  f"{list(t.dims)} needs {nbytes}", "The file is corrupted or crafted; re-export the model.")
            if offset + nbytes > size:
                raise _fail(path, f"tensor {t.name!r} claims {nbytes} bytes at offset {offset} of {loc!r}, "
                                  f"which holds only {size} bytes", "The data file is truncated or does not "
                                  f"belong to this model; copy the complete file next to the model.")
        elif t.HasField("raw_data") and len(t.raw_data) != nbytes and t.data_type in _ITEMSIZE:
            raise _fail(path, f"tensor {t.name!r} claims shape {list(t.dims)} ({nbytes} bytes) but holds "
                              f"{len(t.raw_data)} bytes of data", "The file is corrupted or crafted; re-export the model.")
