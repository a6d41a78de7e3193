"""Import an existing ``.onnx`` file into rooftop's IR.

Steps (each failure is a :class:`~compiler.errors.ModelFileError` or
:class:`~compiler.ir.ops.UnsupportedOpError` with one paragraph: the file, what is wrong, how to fix):

1. ``onnx.load`` (external data beside the file is loaded too);
2. the weights are set aside: every initializer larger than a shape operand becomes a typed graph
   input of a light *skeleton* model, so the checker, the version converter and shape inference
   never serialize the weights (a 124M-parameter GPT-2 imports in 1-3 s, mostly protobuf
   decoding, and models over 2 GB work);
3. ops are screened (non-standard domains and ops outside :data:`compiler.ir.ops.REGISTRY` are
   refused), ``onnx.checker.check_model``, local functions inlined
   (``onnx.inliner.inline_local_functions``), opsets below 23 upgraded
   (``onnx.version_converter.convert_version``);
4. types: ``onnx.shape_inference.infer_shapes(data_prop=True)``; where it leaves a tensor untyped
   or with dims it cannot express (``unk__N``), onnxruntime's ``SymbolicShapeInference`` (sympy)
   is the second try, and rooftop's own shape rules (:mod:`compiler.ir.ops`, applied to the already
   typed operands) the third. Dim strings (``"batch"``, ``"s0 + 1"``, ``"2*s1"``, ``"batch*seq"``)
   are parsed with sympy onto rooftop's symbols: by default the dims of the first 2-D integer
   input (``input_ids``) are ``B`` and ``S``, a KV-cache input's past length is ``P``, and the
   same name always maps to the same symbol. A dim still not expressible becomes a fresh symbol
   named after the dim string and is listed in ``graph.meta["unknown_dims"]``;
5. initializers and ``Constant`` nodes become parameters (small ones annotated ``const=True``);
   nodes become :class:`~compiler.ir.OpNode` s with the same op type and attributes. Operands
   that rooftop keeps as attributes (``Reshape.shape``, ``Slice`` bounds, ``Unsqueeze`` axes, …,
   see ``OpDef.attr_operands`` in :mod:`compiler.ir.ops`) are turned into attributes when they are constants;
   runtime shape tensors stay operands (the emitter passes them through).

``compiler.backend.emit.save(graph, path)`` then writes a model that onnxruntime runs with the same
results as the original.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import sympy
from onnx import TensorProto, helper, numpy_helper
from sympy.parsing.sympy_parser import parse_expr

from compiler.errors import ModelFileError
from compiler.frontends.safety import check_onnx_file
from compiler.ir import B, DTYPES, ONNX_TO_DTYPE, P, S, SYMBOLS, Graph, OpNode, TensorType, as_dim
from compiler.ir.ops import MAX_SYM_ELEMENTS, REGISTRY, UnsupportedOpError, is_symbolic, sym_array, sym_entry, sym_value


def _attr_operands(op: str):
    """(data operand count, attribute names) of ``op``'s attribute operands (registry), or None."""
    d = REGISTRY.get(op)
    return None if d is None else d.attr_operands


def _shape_operands(op: str) -> frozenset:
    d = REGISTRY.get(op)
    return frozenset() if d is None else d.shape_operands

OPSET = 23
REEXPORT = ("re-export it with torch.onnx.export(model, ..., dynamo=True, opset_version=23) "
            "(or any exporter targeting the standard ai.onnx domain, opset 23)")
# initializers up to this many elements stay in the skeleton (shape operands, scalars)
_SKELETON_KEEP = 256
# params up to this many elements may be constants rather than weights
_CONST_MAX = 64
_STD_DOMAINS = ("", "ai.onnx")

_CONVENTIONAL = {B: {"batch", "batch_size"},
                 S: {"seq", "sequence", "seq_len", "sequence_length"},
                 P: {"past_seq", "past_len", "past_seq_len", "past_sequence_length"}}
_SAME_TOKENS = re.compile(r"^(attention_mask|token_type_ids|position_ids)$", re.I)
_KV_INPUT = re.compile(r"^(past_key_values|past_key|past_value|past)[._\[]", re.I)
_KV_OUTPUT = re.compile(r"^(present|present_key_values|present_key|present_value)[._\[]", re.I)


def _fail(path: str, what: str, fix: str) -> ModelFileError:
    return ModelFileError(f"cannot import ONNX model {path!r}: {what}. {fix}")


# ------------------------------------------------------------------------------------------------
# loading

def _load(path: str) -> onnx.ModelProto:
    if not os.path.exists(path):
        raise _fail(path, "the file does not exist",
                    "Check model.path (an absolute path is safest; Hydra changes the working "
                    "directory to the run directory).")
    if os.path.isdir(path):
        raise _fail(path, "it is a directory, not a file",
                    "Point model.path at the .onnx file inside it (e.g. model.onnx).")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(64)
    if size == 0:
        raise _fail(path, "the file is empty (0 bytes)", "Re-download it, or " + REEXPORT + ".")
    if head.startswith(b"version https://git-lfs"):
        raise _fail(path, f"the file is a Git LFS pointer ({size} bytes), not the model itself",
                    "Fetch the real file with `git lfs pull`.")
    check_onnx_file(path)  # untrusted input: paths, sizes, shapes (compiler/frontends/safety.py)
    try:
        model = onnx.load(path)
    except (FileNotFoundError, onnx.checker.ValidationError, OSError) as e:
        missing = _missing_external(path)
        what = (f"its external weight data file(s) {', '.join(repr(m) for m in missing)} are missing "
                f"from {os.path.dirname(os.path.abspath(path))!r}" if missing else
                f"its external weight data could not be read ({e})")
        raise _fail(path, what,
                    "Keep the external data file(s) that the model names next to the .onnx file "
                    "(copy them together), or re-save the model with weights inline "
                    "(onnx.save_model(m, path, save_as_external_data=False), for models under 2 GB).") from None
    except Exception as e:  # google.protobuf.message.DecodeError and friends
        looks_onnx = head[:1] == b"\x08"  # ModelProto starts with field 1 (ir_version, varint)
        if looks_onnx:
            what = (f"the file is truncated or corrupted: {size} bytes that start like an ONNX "
                    f"model but do not decode as a complete protobuf ({type(e).__name__}: {e})")
            fix = ("This usually means an interrupted download, copy or export: re-download it, "
                   "or " + REEXPORT + ".")
        else:
            what = (f"the file is not an ONNX model: its {size} bytes (starting {head[:8].hex()}) "
                    f"do not decode as an ONNX ModelProto ({type(e).__name__}: {e})")
            fix = "Point model.path at a .onnx file, or " + REEXPORT + "."
        raise _fail(path, what, fix) from None
    if not model.HasField("graph") or model.ir_version <= 0:
        raise _fail(path, f"the {size} bytes decode as protobuf but hold no ONNX graph "
                    f"(ir_version={model.ir_version}, {len(model.graph.node)} nodes); the file is "
                    f"truncated, corrupted or not an ONNX model", "Re-download it, or " + REEXPORT + ".")
    return model


def _missing_external(path: str) -> list[str]:
    try:
        m = onnx.load(path, load_external_data=False)
    except Exception:  # noqa: BLE001
        return []
    base = os.path.dirname(os.path.abspath(path))
    locs = set()
    for t in m.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            locs |= {e.value for e in t.external_data if e.key == "location"}
    return sorted(x for x in locs if not os.path.isfile(os.path.join(base, x)))


def _skeleton(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, TensorProto]]:
    """A weight-free copy of ``model``: large initializers become typed graph inputs."""
    g = model.graph
    skel = onnx.ModelProto()
    skel.ir_version = max(model.ir_version, 4)
    skel.opset_import.extend(model.opset_import)
    skel.functions.extend(model.functions)
    skel.producer_name = model.producer_name
    skel.producer_version = model.producer_version
    sg = skel.graph
    sg.name = g.name or "graph"
    sg.node.extend(g.node)
    init_names = {t.name for t in g.initializer}
    sg.input.extend(i for i in g.input if i.name not in init_names)
    sg.output.extend(g.output)
    sg.value_info.extend(g.value_info)
    big: dict[str, TensorProto] = {}
    for t in g.initializer:
        n = int(np.prod(t.dims)) if len(t.dims) else 1
        if n > _SKELETON_KEEP:
            big[t.name] = t
            sg.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            sg.initializer.append(t)
    if len(g.sparse_initializer):
        sg.sparse_initializer.extend(g.sparse_initializer)
    return skel, big


def _screen_ops(model: onnx.ModelProto, path: str, *, final: bool):
    """Refuse nodes in non-standard domains and ops rooftop has no OpDef for (one message: the
    op, its domain, the first such node and how many there are, and what to do)."""
    local = {(f.domain, f.name) for f in model.functions}
    bad: dict[tuple[str, str], list[str]] = {}
    for i, n in enumerate(model.graph.node):
        if (n.domain, n.op_type) in local and not final:
            continue
        if n.domain in _STD_DOMAINS:
            if n.op_type in REGISTRY or (not final and onnx.defs.has(n.op_type)):
                continue  # (an older-opset op the version converter may turn into a supported one)
        bad.setdefault((n.domain, n.op_type), []).append(n.name or f"#{i}")
    if not bad:
        return
    (domain, op), nodes = next(iter(bad.items()))
    more = f" ({len(bad) - 1} other unsupported op type(s) too: " + ", ".join(
        sorted(f"{o}" + (f" [{d}]" if d else "") for d, o in list(bad)[1:])) + ")" if len(bad) > 1 else ""
    if domain not in _STD_DOMAINS:
        fix = (f"It is not a standard ONNX operator: rooftop imports only the standard ai.onnx domain (no onnxruntime contrib ops such as "
               f"com.microsoft fused attention, no custom ops){more}. Export the model without graph "
               f"optimizations / fusions (e.g. torch.onnx.export(..., dynamo=True, opset_version=23) "
               f"rather than an onnxruntime-optimized or quantized file), or replace the node with "
               f"standard ops.")
    elif not onnx.defs.has(op):
        fix = f"{op!r} is not an ONNX operator{more}; {REEXPORT}."
    else:   # any exporter emits a standard op as it is: re-exporting cannot remove it
        fix = (f"It is a standard ONNX operator that rooftop's op registry does not have yet{more}, so "
               f"re-exporting the model will not help.")
    raise UnsupportedOpError.for_op(op, domain=domain, node=nodes[0], count=len(nodes),
                                    model=f"ONNX model {path!r}", fix=fix)


def _prepare(model: onnx.ModelProto, path: str) -> tuple[onnx.ModelProto, int]:
    """Screen, check, inline local functions and upgrade to opset 23. Returns (model, old opset)."""
    if len(model.graph.sparse_initializer):
        raise _fail(path, "it has sparse initializers, which rooftop does not import",
                    "Re-save the model with dense initializers.")
    opset = next((o.version for o in model.opset_import if o.domain in _STD_DOMAINS), 0)
    _screen_ops(model, path, final=False)
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        raise _fail(path, f"the model fails onnx.checker.check_model: {str(e).strip().splitlines()[0]}",
                    "Fix the model (or its exporter) so that it passes the checker, or " + REEXPORT + ".") from None
    if len(model.functions):
        try:
            from onnx import inliner
            model = inliner.inline_local_functions(model)
        except Exception as e:
            raise _fail(path, f"its {len(model.functions)} local functions could not be inlined ({e})",
                        REEXPORT[0].upper() + REEXPORT[1:] + ".") from None
        del model.functions[:]
        _screen_ops(model, path, final=False)
    if opset != OPSET:
        try:
            from onnx import version_converter
            model = version_converter.convert_version(model, OPSET)
        except Exception as e:
            raise _fail(path, f"it uses opset {opset} and onnx.version_converter could not convert "
                        f"it to opset {OPSET} ({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})",
                        REEXPORT[0].upper() + REEXPORT[1:] + ".") from None
        model.ir_version = max(model.ir_version, 10)
    _screen_ops(model, path, final=True)
    return model, opset


# ------------------------------------------------------------------------------------------------
# dims

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_EXPR_OK = re.compile(r"^[A-Za-z0-9_\s+\-*/(),.]+$")
# every identifier of a dim string is bound in local_dict, so the parser needs only these
_PARSE_GLOBALS = {"Integer": sympy.Integer, "Symbol": sympy.Symbol, "Rational": sympy.Rational,
                  "Float": sympy.Float}
_FUNCS = {"floor": sympy.floor, "ceiling": sympy.ceiling, "ceil": sympy.ceiling, "Max": sympy.Max,
          "Min": sympy.Min, "max": sympy.Max, "min": sympy.Min, "Mod": sympy.Mod,
          "FloorDiv": lambda a, b: sympy.floor(a / b), "CeilDiv": lambda a, b: sympy.ceiling(a / b)}


class _Dims:
    """dim strings -> sympy; known names (graph input dims) map onto B/S/P or input symbols."""

    def __init__(self):
        self.names: dict[str, Any] = {}      # input dim name -> symbol / int
        self.input_syms: dict[str, tuple[str, int]] = {}  # symbol name -> (input, axis)
        self.unknown: dict[str, dict] = {}    # symbol name -> info
        self._cache: dict[tuple[str, str], Any] = {}
        self._anon = 0
        self._known: tuple[int, set] | None = None

    def known_symbols(self) -> set:
        """B, S, P and the symbols of graph-input dims (names are fixed before typing starts)."""
        if self._known is None or self._known[0] != len(self.names):
            syms = {B, S, P} | {v for v in self.names.values() if isinstance(v, sympy.Symbol)}
            self._known = (len(self.names), syms)
        return self._known[1]

    def _unknown_sym(self, name: str, where: str):
        if name in SYMBOLS:  # never alias rooftop's own symbols by accident
            name = name + "_"
        info = self.unknown.get(name)
        if info is None:
            info = self.unknown[name] = {"symbol": sympy.Symbol(name, integer=True, positive=True),
                                         "tensors": [], "origin": where}
        return info["symbol"]

    def parse(self, s: str, source: str = "onnx"):
        key = (source, s)
        if key in self._cache:
            return self._cache[key]
        s2 = s.strip()
        if s2 in self.names:
            out = self.names[s2]
        else:
            out = None
            if _EXPR_OK.match(s2):
                loc: dict[str, Any] = {}
                for ident in set(_IDENT.findall(s2)):
                    if ident in _FUNCS:
                        loc[ident] = _FUNCS[ident]
                    elif ident in self.names:
                        loc[ident] = self.names[ident]
                    else:
                        nm = ident if source == "onnx" or not ident.startswith("unk__") else f"{source}_{ident}"
                        loc[ident] = self._unknown_sym(nm, f"{source} shape inference")
                try:
                    e = parse_expr(s2, local_dict=loc, global_dict=dict(_PARSE_GLOBALS))
                    if isinstance(e, sympy.Expr) and (e.is_Integer or e.free_symbols) and \
                            not e.has(sympy.zoo, sympy.nan, sympy.oo):
                        out = as_dim(e)
                except Exception:  # noqa: BLE001 - not an expression: an opaque symbol below
                    out = None
            if out is None:
                out = self._unknown_sym(s2, f"{source} shape inference (unparsed)")
        self._cache[key] = out
        return out

    def anonymous(self, tensor: str, axis: int):
        self._anon += 1
        return self._unknown_sym(f"unknown_{self._anon}", f"no dim for axis {axis} of {tensor!r}")

    def is_known(self, d) -> bool:
        if isinstance(d, int):
            return True
        return d.free_symbols <= self.known_symbols()

    def materializable(self, d, sources: Mapping[str, Any]) -> bool:
        """Whether the emitter can compute ``d`` at run time from the graph inputs."""
        if isinstance(d, int):
            return True
        if isinstance(d, sympy.Integer):
            return True
        if isinstance(d, sympy.Symbol):
            return d.name in sources
        if isinstance(d, (sympy.Add, sympy.Mul)):
            return all(self.materializable(a, sources) for a in d.args) and all(
                not (a.is_Rational and not a.is_Integer) for a in d.args)
        return False


def _type_dims(tp: onnx.TypeProto) -> tuple[int, list | None]:
    """(elem_type, [int | str | None per dim] or None when the rank is unknown)."""
    if tp.WhichOneof("value") != "tensor_type":
        return 0, None
    tt = tp.tensor_type
    if not tt.HasField("shape"):
        return tt.elem_type, None
    dims = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tt.elem_type, dims


def _symbolize(dims: _Dims, raw: Sequence, tensor: str, source: str) -> tuple:
    out = []
    for i, d in enumerate(raw):
        if isinstance(d, int):
            out.append(d)
        elif d is None:
            out.append(dims.anonymous(tensor, i))
        else:
            out.append(dims.parse(d, source))
    return tuple(out)


def _map_input_dims(graph: onnx.GraphProto, inputs: list[onnx.ValueInfoProto], dims: _Dims,
                    override: Mapping[str, Sequence] | None, path: str) -> list[str]:
    """Assign symbols to the named dims of the graph inputs; returns the KV-cache input names."""
    raw = {i.name: _type_dims(i.type) for i in inputs}
    for name, (et, ds) in raw.items():
        if ds is None:
            raise _fail(path, f"graph input {name!r} has no shape (unknown rank)",
                        "Give every graph input a shape, e.g. " + REEXPORT + " with dynamic_shapes / "
                        "dynamic_axes naming the batch and sequence dims.")
    # explicit mapping first
    for name, want in (override or {}).items():
        if name not in raw:
            raise _fail(path, f"dims names input {name!r}, but the model's inputs are "
                        f"{[i.name for i in inputs]}", "Fix the dims mapping (model.dims).")
        for d, w in zip(raw[name][1], want):
            if isinstance(d, str):
                if isinstance(w, str):
                    w = SYMBOLS.get(w, sympy.Symbol(w, integer=True, positive=True))
                dims.names.setdefault(d, as_dim(w) if not isinstance(w, sympy.Symbol) else w)
    # default: the first 2-D integer input is (B, S)
    ints = {TensorProto.INT64, TensorProto.INT32}
    first = next((n for n, (et, ds) in raw.items() if et in ints and len(ds) == 2), None)
    if first is not None:
        for d, sym in zip(raw[first][1], (B, S)):
            if isinstance(d, str) and d not in dims.names and sym not in dims.names.values():
                dims.names[d] = sym
    # the other token-shaped inputs (attention_mask, token_type_ids, position_ids,
    # decoder_input_ids): their batch axis is the same batch, whatever the exporter named it
    # (torch.export.Dim.DYNAMIC gives every input its own symbol)
    # and the inputs that describe input_ids' own tokens (attention_mask, token_type_ids,
    # position_ids — not a decoder's) have its sequence axis too
    if first is not None:
        for n, (et, ds) in raw.items():
            if n == first or et not in ints or len(ds) != 2:
                continue
            if isinstance(ds[0], str) and ds[0] not in dims.names:
                dims.names[ds[0]] = B
            if isinstance(ds[1], str) and ds[1] not in dims.names and _SAME_TOKENS.match(n) and \
                    dims.names.get(raw[first][1][1]) is S:
                dims.names[ds[1]] = S
    # no integer input to go by: conventional dim names (B/S/P themselves: a rooftop-emitted model)
    for d in (d for _, ds in raw.values() for d in ds if isinstance(d, str)):
        sym = SYMBOLS.get(d) or next((sy for sy, names in _CONVENTIONAL.items() if d.lower() in names), None)
        if sym is not None and d not in dims.names and sym not in dims.names.values():
            dims.names[d] = sym
    # KV-cache inputs: their remaining named dim is the past length P
    kv = [n for n, (et, ds) in raw.items() if _KV_INPUT.match(n) and len(ds) >= 3]
    for n in kv:
        for d in raw[n][1]:
            if isinstance(d, str) and d not in dims.names:
                dims.names[d] = P
                break
    # any other named input dim: a symbol of that name (the emitter can still read it)
    for name, (et, ds) in raw.items():
        for axis, d in enumerate(ds):
            if isinstance(d, str) and d not in dims.names:
                sym = sympy.Symbol(d if _IDENT.fullmatch(d) and d not in SYMBOLS else f"dim_{len(dims.names)}",
                                   integer=True, positive=True)
                dims.names[d] = sym
                dims.unknown[sym.name] = {"symbol": sym, "tensors": [name],
                                          "origin": f"graph input {name!r} axis {axis} ({d!r}): not "
                                                    f"one of rooftop's B/S/P"}
    for name, (et, ds) in raw.items():
        for axis, d in enumerate(ds):
            if isinstance(d, str):
                v = dims.names[d]
                if isinstance(v, sympy.Symbol):
                    dims.input_syms.setdefault(v.name, (name, axis))
    return kv


# ------------------------------------------------------------------------------------------------
# shape inference

_TYPE_ERROR = re.compile(r"typestr|has unsupported type|Type Error", re.I)


def _onnx_infer(skel: onnx.ModelProto, path: str) -> tuple[dict[str, onnx.TypeProto], str]:
    """ONNX shape inference (data propagation on). Strict mode first: an operand of a type its op
    does not accept makes the model invalid (onnxruntime refuses to load it too) — reported here
    rather than as an emitter failure later; other strict-mode failures (inference limits,
    declared shapes that disagree) fall back to the lenient mode."""
    try:
        m = onnx.shape_inference.infer_shapes(skel, check_type=True, strict_mode=True, data_prop=True)
        note = "onnx"
    except Exception as e:  # noqa: BLE001 - onnx raises several exception types
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if _TYPE_ERROR.search(msg):
            raise _fail(path, f"the model is not type-correct: {msg} (onnxruntime refuses to load "
                        f"it too)", "Fix the exporter or the model, or " + REEXPORT + ".") from None
        try:
            m = onnx.shape_inference.infer_shapes(skel, data_prop=True)
            note = "onnx (lenient)"
        except Exception as e2:  # noqa: BLE001
            return {}, f"onnx failed ({type(e2).__name__})"
    out = {}
    for v in list(m.graph.value_info) + list(m.graph.output):
        out[v.name] = v.type
    return out, note


def _ssi_infer(skel: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """onnxruntime's SymbolicShapeInference (sympy-based), with its contrib-op handlers of the
    names that are also standard ONNX ops (Attention, RotaryEmbedding) replaced by the standard
    semantics. Partial results are kept; failures give an empty dict."""
    import logging

    from onnxruntime.tools import symbolic_shape_infer as ssi_mod

    class _SSI(ssi_mod.SymbolicShapeInference):
        def __init__(self):
            super().__init__(int_max=2**31 - 1, auto_merge=True, guess_output_rank=False, verbose=0)
            contrib_attn = self.dispatcher_.get("Attention")
            contrib_rope = self.dispatcher_.get("RotaryEmbedding")
            self.dispatcher_["Attention"] = lambda n: (self._std_attention(n) if n.domain in _STD_DOMAINS
                                                       else contrib_attn(n))
            self.dispatcher_["RotaryEmbedding"] = lambda n: (self._pass_on_shape_and_type(n)
                                                             if n.domain in _STD_DOMAINS else contrib_rope(n))

        def _std_attention(self, node):
            q, k, v = (self._get_sympy_shape(node, i) for i in range(3))
            et = ssi_mod.get_elem_type_from_type_proto(self.known_vi_[node.input[0]].type)
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if len(q) == 4:
                y = q[:3] + [v[3]]
                k4, v4 = k, v
            else:
                qh, kvh = attrs["q_num_heads"], attrs["kv_num_heads"]
                y = [q[0], q[1], qh * (v[2] // kvh)]
                k4 = [k[0], kvh, k[1], k[2] // kvh]
                v4 = [v[0], kvh, v[1], v[2] // kvh]
            shapes = [y]
            past = len(node.input) > 4 and node.input[4]
            for cur, idx in ((k4, 4), (v4, 5)):
                if past:
                    p = self._get_sympy_shape(node, idx)
                    shapes.append(p[:2] + [p[2] + cur[2]] + p[3:])
                else:
                    shapes.append(list(cur))
            for o, shp in zip(node.output, shapes):
                if o:
                    self._update_computed_dims(shp)
                    self.known_vi_[o].CopyFrom(helper.make_tensor_value_info(
                        o, et, ssi_mod.get_shape_from_sympy_shape(shp)))

    logging.getLogger("onnxruntime.tools.symbolic_shape_infer").setLevel(logging.CRITICAL)
    try:
        s = _SSI()
        s._preprocess(skel)
        for _ in range(16):
            if not s.run_:
                break
            s._infer_impl()
        return {k: v.type for k, v in s.known_vi_.items()}
    except Exception:  # noqa: BLE001 - a second opinion only
        known = getattr(locals().get("s"), "known_vi_", {}) or {}
        return {k: v.type for k, v in known.items()}


# ------------------------------------------------------------------------------------------------
# values

def _to_numpy(t: TensorProto, path: str) -> np.ndarray:
    try:
        arr = numpy_helper.to_array(t)
    except Exception as e:
        raise _fail(path, f"initializer {t.name!r} cannot be read ({e})",
                    "The file is corrupted; re-download it, or " + REEXPORT + ".") from None
    return arr


def _dtype_of(et: int, what: str, path: str) -> str:
    dt = ONNX_TO_DTYPE.get(et)
    if dt is None:
        name = TensorProto.DataType.Name(et) if et in TensorProto.DataType.values() else str(et)
        raise UnsupportedOpError(
            f"cannot import ONNX model {path!r}: {what} has element type {name}, which rooftop does "
            f"not support (supported: {', '.join(sorted(DTYPES))}). Convert the model to one of "
            f"these dtypes before importing it.")
    return dt


def _attr_value(a: onnx.AttributeProto):
    v = helper.get_attribute_value(a)
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, TensorProto):
        return numpy_helper.to_array(v)
    if isinstance(v, list):
        if v and isinstance(v[0], bytes):
            return [x.decode("utf-8", "replace") for x in v]
        if v and isinstance(v[0], TensorProto):
            return [numpy_helper.to_array(x) for x in v]
    return v


def _constant_value(n: onnx.NodeProto) -> np.ndarray | None:
    for a in n.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), np.float32)
        if a.name == "value_int":
            return np.array(a.i, np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), np.int64)
    return None


# ------------------------------------------------------------------------------------------------

# ------------------------------------------------------------------------------------------------
# symbolic shape values: exporters (the TorchScript one above all) compute Reshape/Expand shapes
# at run time from Shape(x) → Gather → Unsqueeze → Concat chains. Where x's dims are expressions
# of B/S/P, those chains are evaluated here on sympy values, and the consumer gets rooftop's
# attribute form; the chain becomes dead and is dropped after the import.

class _Importer:
    def __init__(self, path: str, skel: onnx.ModelProto, big: dict[str, TensorProto], name: str,
                 dims_override, progress):
        self.path = path
        self.skel = skel
        self.big = big
        self.g = Graph(name)
        self.dims = _Dims()
        self.override = dims_override
        self.progress = progress
        self.values: dict[str, np.ndarray] = {}  # constant param data by name
        self.stats = {"attr_form": 0, "rule_typed": 0, "ssi_typed": 0, "constants": 0, "symbolic_shapes": 0}
        self.onnx_types: dict[str, onnx.TypeProto] = {}
        self.ssi_types: dict[str, onnx.TypeProto] = {}
        self._cand_cache: dict[str, list] = {}
        self.shape_operands = {t for n in skel.graph.node for i, t in enumerate(n.input)
                               if i in _shape_operands(n.op_type)}

    # ---- typing --------------------------------------------------------------------------
    def _candidates(self, tensor: str):
        """Candidate TensorTypes of a node output from ONNX inference and SSI (best first)."""
        if tensor in self._cand_cache:
            return self._cand_cache[tensor]
        cands = []
        for src, table in (("onnx", self.onnx_types), ("ssi", self.ssi_types)):
            tp = table.get(tensor)
            if tp is None:
                continue
            et, raw = _type_dims(tp)
            if raw is None or et == 0 or et not in ONNX_TO_DTYPE:
                continue
            ty = TensorType(ONNX_TO_DTYPE[et], _symbolize(self.dims, raw, tensor, src))
            cands.append((sum(not self.dims.is_known(d) for d in ty.shape), src, ty))
        cands.sort(key=lambda c: (c[0], c[1] != "onnx"))
        self._cand_cache[tensor] = cands
        return cands

    def _rule_types(self, node: OpNode) -> list | None:
        d = REGISTRY.get(node.op)
        if d is None or d.infer is None:
            return None
        k, names = _attr_operands(node.op) or (None, ())
        if k is not None and len([t for t in node.inputs if t]) > k:
            return None  # value-dependent operands: the rule cannot see them
        try:
            ins = [self.g.types[t] if t else None for t in node.inputs]
            out = d.infer(node, ins)
        except Exception:  # noqa: BLE001 - rules are only a refinement here
            return None
        if len(out) != len(node.outputs):
            return None
        return out

    def _split_types(self, node: OpNode) -> list[TensorType] | None:
        """Split with a ``split`` operand whose value is known (a constant, or a shape computation
        such as the RotaryEmbedding function's ``Concat(rotary_dim, head − rotary_dim)``): the
        outputs' sizes are those values — inference may have guessed an equal split."""
        if len(node.inputs) < 2 or not node.inputs[1] or node.inputs[1] not in self.values:
            return None
        x = self.g.types.get(node.inputs[0])
        sizes = list(np.asarray(self.values[node.inputs[1]]).reshape(-1))
        if x is None or len(sizes) != len(node.outputs):
            return None
        axis = int(node.attrs.get("axis", 0)) % max(x.rank, 1)
        return [x.with_shape(x.shape[:axis] + (as_dim(sz),) + x.shape[axis + 1:]) for sz in sizes]

    def _types(self, node: OpNode) -> list[TensorType | None]:
        if node.op == "Split":
            st = self._split_types(node)
            if st is not None:
                return st
        need_rule = False
        picked: list = []
        for t in node.outputs:
            if not t:
                picked.append(None)
                continue
            c = self._candidates(t)
            picked.append(c[0] if c else None)
            if not c or c[0][0] > 0:
                need_rule = True
        rule = self._rule_types(node) if need_rule else None
        out: list[TensorType | None] = []
        for i, (t, p) in enumerate(zip(node.outputs, picked)):
            if not t:
                out.append(None)
                continue
            r = rule[i] if rule else None
            if p is None:
                if r is None:
                    raise _fail(self.path, f"the type of tensor {t!r} (output {i} of node "
                                f"{node.name!r}, op {node.op}) cannot be inferred: ONNX shape "
                                f"inference, onnxruntime's symbolic shape inference and rooftop's "
                                f"shape rules all failed",
                                "Re-export the model with shape information (value_info), or "
                                + REEXPORT + ".")
                self.stats["rule_typed"] += 1
                out.append(r)
                continue
            bad, src, ty = p
            if src == "ssi":
                self.stats["ssi_typed"] += 1
            if bad and r is not None and r.rank == ty.rank:
                # a known dim wins; between two unknown ones the rule's (derived from the
                # operands, so it reuses their symbols rather than adding a new one). Only the
                # shape is taken: the dtype stays inference's (a rule may not know it, e.g. IsNaN)
                shp = tuple(a if self.dims.is_known(a) else b for a, b in zip(ty.shape, r.shape))
                if shp != ty.shape:
                    self.stats["rule_typed"] += 1
                ty = ty.with_shape(shp)
            out.append(ty)
        return out

    # ---- params --------------------------------------------------------------------------
    def _is_const(self, name: str, arr: np.ndarray, from_constant: bool) -> bool:
        if arr.size > _CONST_MAX:
            return False
        if from_constant or arr.size <= 1 or arr.dtype.kind in "iub":
            return True
        return name in self.shape_operands  # float vectors: only as a shape-like operand

    def add_param(self, name: str, arr: np.ndarray, et: int, *, from_constant: bool, source: str):
        dt = _dtype_of(et, f"{'Constant' if from_constant else 'initializer'} {name!r}", self.path)
        if DTYPES[dt][1] is None and dt != "bfloat16":
            raise UnsupportedOpError(
                f"cannot import ONNX model {self.path!r}: weight {name!r} is {dt}, which rooftop "
                f"cannot hold as numpy data yet. Dequantize the model to float16/float32 first.")
        if dt == "bfloat16":
            arr = np.asarray(arr, dtype=np.float32)  # rooftop keeps bf16 weights as fp32 data
        const = self._is_const(name, arr, from_constant)
        ann = {"source": source}
        if const:
            ann["const"] = True
        self.g.add_param(name, TensorType(dt, arr.shape), arr, **ann)
        if arr.size <= _CONST_MAX:
            self.values[name] = arr

    # ---- nodes ---------------------------------------------------------------------------
    def _attr_form(self, op: str, inputs: list[str], attrs: dict) -> list[str]:
        """Turn constant shape/axes operands into rooftop's attribute form (in place on attrs)."""
        spec = _attr_operands(op)
        if spec is None:
            return inputs
        k, names = spec
        extra = inputs[k:]
        if not extra or len(extra) > len(names):
            return inputs
        if not all((t == "" or t in self.values) for t in extra):
            return inputs
        vals = {nm: self.values[t] for nm, t in zip(names, extra) if t}
        if any(is_symbolic(v) for v in vals.values()):
            # symbolic values (from Shape chains) only where rooftop keeps symbolic attributes
            # and the emitter can compute every dim again at run time
            sources = self.dims.input_syms
            if op not in ("Reshape", "Expand") or not all(
                    self.dims.materializable(d, sources) for v in vals.values() for d in v.reshape(-1)):
                return inputs
        data_ins = inputs[:k]
        new: dict[str, Any] = {}
        if op in ("Unsqueeze", "Squeeze") or op.startswith("Reduce"):
            if "axes" in vals:
                new["axes"] = [int(x) for x in vals["axes"].reshape(-1)]
                if op != "Unsqueeze" and not new["axes"]:
                    return inputs  # empty axes: "all" / noop_with_empty_axes semantics; keep as is
        elif op == "Slice":
            starts = [int(x) for x in vals["starts"].reshape(-1)]
            new["starts"] = starts
            new["ends"] = [int(x) for x in vals["ends"].reshape(-1)]
            new["axes"] = [int(x) for x in vals["axes"].reshape(-1)] if "axes" in vals else list(range(len(starts)))
            if "steps" in vals:
                new["steps"] = [int(x) for x in vals["steps"].reshape(-1)]
        elif op == "TopK":
            new["k"] = int(vals["k"].reshape(-1)[0])
        elif op == "CumSum":
            new["axis"] = int(vals["axis"].reshape(-1)[0])
        elif op == "Range":
            if set(vals) != {"start", "limit", "delta"}:
                return inputs
            for nm in ("start", "limit", "delta"):
                x = vals[nm].reshape(-1)[0]
                new[nm] = int(x) if vals[nm].dtype.kind in "iu" else float(x)
        elif op == "ConstantOfShape":
            if "shape" not in vals:
                return inputs
            new["shape"] = [int(x) for x in vals["shape"].reshape(-1)]
        elif op in ("Reshape", "Expand"):
            if "shape" not in vals:
                return inputs
            new["shape"] = [sym_entry(x) for x in vals["shape"].reshape(-1)]  # resolved once typed
            if is_symbolic(vals["shape"]):
                if op == "Reshape" and attrs.get("allowzero") and 0 in new["shape"]:
                    return inputs
                self.stats["symbolic_shapes"] += 1
        else:
            return inputs
        attrs.update(new)
        self.stats["attr_form"] += 1
        return data_ins

    def _resolve_shape(self, op: str, x: str, raw: list[int], attrs: dict, out: TensorType) -> list:
        """Reshape: 0 → the input dim, -1 → the output dim; Expand: the output shape — each only
        where the emitter can compute the dim at run time (else the ONNX value stays)."""
        out_shape = out.shape if out.rank == len(raw) else None
        src = self.g.types[x].shape
        sources = self.dims.input_syms
        res = list(raw)
        if op == "Reshape":
            for i, d in enumerate(raw):
                if not isinstance(d, int):
                    continue
                if d == 0 and not attrs.get("allowzero") and i < len(src) and self.dims.materializable(src[i], sources):
                    res[i] = src[i]
                elif d == -1 and out_shape is not None and self.dims.materializable(out_shape[i], sources):
                    res[i] = out_shape[i]
        elif out_shape is not None and all(self.dims.materializable(d, sources) for d in out_shape):
            res = list(out_shape)
        return res

    def add_node(self, n: onnx.NodeProto, idx: int):
        if n.op_type == "Constant":
            arr = _constant_value(n)
            if arr is None:
                raise UnsupportedOpError(
                    f"cannot import ONNX model {self.path!r}: Constant node {n.name!r} holds a "
                    f"sparse or string value, which rooftop does not support. Re-export the model.")
            et = helper.np_dtype_to_tensor_dtype(arr.dtype) if arr.dtype != object else 0
            self.add_param(n.output[0], arr, et, from_constant=True, source=f"Constant {n.name or n.output[0]}")
            self.stats["constants"] += 1
            return
        attrs = {}
        for a in n.attribute:
            v = _attr_value(a)
            if isinstance(v, list) and not v:
                continue  # an empty list attribute equals its default; make_node cannot type it
            if isinstance(v, onnx.GraphProto) or (isinstance(v, list) and v and isinstance(v[0], onnx.GraphProto)):
                raise UnsupportedOpError(
                    f"cannot import ONNX model {self.path!r}: node {n.name!r} ({n.op_type}) has a "
                    f"subgraph attribute {a.name!r}; control flow is not supported. Re-export without "
                    f"data-dependent control flow.")
            attrs[a.name] = v
        inputs = list(n.input)
        inputs = self._attr_form(n.op_type, inputs, attrs)
        name = n.name if n.name and n.name not in self.g.nx else self.g.fresh(n.op_type.lower())
        node = OpNode(name, n.op_type, inputs, list(n.output), attrs, {}, "")
        types = self._types(node)
        if n.op_type in ("Reshape", "Expand") and "shape" in attrs and len(inputs) == 1:
            attrs["shape"] = self._resolve_shape(n.op_type, inputs[0], attrs["shape"], attrs, types[0])
        self.g.add_op(n.op_type, inputs, list(n.output), attrs, types=types, name=name,
                      source=f"onnx node {n.name or idx}")
        if REGISTRY[n.op_type].sym_value is not None and len(n.output) == 1 and types[0] is not None and \
                types[0].dtype in ("int64", "int32", "bool") and types[0].rank <= 1:
            ins_v = [self.values.get(t) if t else None for t in inputs]
            in_types = [self.g.types.get(t) if t else None for t in inputs]
            v = sym_value(n.op_type, attrs, ins_v, in_types)
            if v is not None:   # a scalar entry or an object array: ints collapse to int64
                v = np.asarray(v, dtype=object)
                v = v.astype(bool) if types[0].dtype == "bool" else sym_array(list(v.reshape(-1)), v.shape)
                if v.size <= MAX_SYM_ELEMENTS and types[0].is_static() and \
                        tuple(v.shape) == tuple(int(d) for d in types[0].shape):
                    self.values[n.output[0]] = v
                    if not is_symbolic(v) and n.op_type != "Constant":
                        self._materialize(name, n.output[0], v, types[0])

    def _materialize(self, node: str, t: str, v: np.ndarray, ty: TensorType):
        """A shape computation whose value is known (static dims of a symbolic shape, e.g. the
        head size in ``1/sqrt(Shape(q)[-1])``) becomes a constant, so that float arithmetic on it
        folds (fold_constants) and the fusion rules see constant scales."""
        self.stats["shape_constants"] = self.stats.get("shape_constants", 0) + 1
        self.g.remove_op(node, drop_outputs=False)
        self.g.value_to_param(t, np.asarray(v).astype(DTYPES[ty.dtype][1]), const=True,
                              source=f"shape computation {node}")

    # ---- the whole model -------------------------------------------------------------------
    def run(self, kv_inputs: list[str]) -> Graph:
        g, sg = self.g, self.skel.graph
        init_names = {t.name for t in sg.initializer} | set(self.big)
        for i in sg.input:
            if i.name in init_names:
                continue
            et, raw = _type_dims(i.type)
            dt = _dtype_of(et, f"graph input {i.name!r}", self.path)
            g.add_input(i.name, TensorType(dt, _symbolize(self.dims, raw, i.name, "input")))
        for t in list(sg.initializer) + list(self.big.values()):
            self.add_param(t.name, _to_numpy(t, self.path), t.data_type, from_constant=False,
                           source=f"initializer {t.name}")
        nodes = list(sg.node)
        for i, n in enumerate(nodes):
            if self.progress and i % 64 == 0:
                self.progress(i, len(nodes))
            self.add_node(n, i)
        if self.progress:
            self.progress(len(nodes), len(nodes))
        for o in sg.output:
            if o.name not in g.types:
                raise _fail(self.path, f"graph output {o.name!r} is produced by no node",
                            "The model is malformed; " + REEXPORT + ".")
        g.set_outputs(o.name for o in sg.output)
        # the Shape chains evaluated above are dead now; the pipeline's dce pass removes them
        return g


def import_onnx(path: str, *, name: str | None = None, dims: dict[str, list] | None = None,
                progress: Callable[[int, int], None] | None = None) -> Graph:
    """Import the ONNX model at ``path`` into a :class:`Graph`.

    ``dims`` maps input names to their dims (symbols ``B``/``S``/``P``, names ``"B"``, or ints),
    overriding the default (first 2-D integer input → ``[B, S]``; KV-cache inputs' past length →
    ``P``). ``progress(done, total)`` is called every 64 nodes.

    ``graph.meta``: ``task`` (``causal_lm`` when there is a KV cache, or a ``logits`` output and an
    input with the sequence dimension; else ``embedding``), ``dim_sources`` (symbol → (input, axis), for the emitter), ``kv_tensors``,
    ``unknown_dims`` (symbol name → {symbol, tensors, origin}: dims that are not expressions of
    B/S/P, which the cost model must bind), ``source`` and ``import_stats``.
    """
    path = os.fspath(path)
    model = _load(path)
    producer = f"{model.producer_name} {model.producer_version}".strip()
    skel, big = _skeleton(model)
    del model
    skel, opset = _prepare(skel, path)

    imp = _Importer(path, skel, big, name or os.path.splitext(os.path.basename(path))[0] or "onnx",
                    dims, progress)
    init_names = {t.name for t in skel.graph.initializer} | set(big)
    inputs = [i for i in skel.graph.input if i.name not in init_names]
    kv_inputs = _map_input_dims(skel.graph, inputs, imp.dims, dims, path)

    imp.onnx_types, note = _onnx_infer(skel, path)
    imp.ssi_types = {}
    produced = [o for n in skel.graph.node if n.op_type != "Constant" for o in n.output if o]
    if any(not imp._candidates(t) or imp._candidates(t)[0][0] > 0 for t in produced):
        imp.ssi_types = _ssi_infer(skel)
        imp._cand_cache.clear()
        note += " + onnxruntime symbolic shape inference"
    g = imp.run(kv_inputs)

    # ---- meta ----------------------------------------------------------------------------
    sources: dict[str, tuple[str, int]] = {}
    for sym_name, (inp, axis) in imp.dims.input_syms.items():
        sources.setdefault(sym_name, (inp, axis))
    g.meta["dim_sources"] = sources
    kv_out = [o for o in g.outputs if _KV_OUTPUT.match(o) and g.types[o].rank >= 3]
    if kv_inputs or kv_out:
        g.meta["kv_tensors"] = sorted(set(kv_inputs) | set(kv_out))
    outs = [o.lower() for o in g.outputs]
    # a language model reads a token sequence: "logits" of a CNN or an MLP (no S input) are class scores
    reads_seq = any(S in getattr(d, "free_symbols", ()) for t in g.inputs for d in g.type(t).shape)
    g.meta["task"] = "causal_lm" if (kv_inputs or ("logits" in outs and reads_seq)) else "embedding"
    unknown = _collect_unknown(g, imp.dims)
    g.meta["unknown_dims"] = unknown
    g.meta["source"] = {"format": "onnx", "path": os.path.abspath(path), "opset": opset,
                        "producer": producer}
    g.meta["import_stats"] = {"nodes": len(g), "params": len(g.params), "shape_inference": note,
                              "unknown_dims": len(unknown), **imp.stats}
    if unknown:   # (costed as these; the artifact keeps computing them at run time)
        g.meta["import_stats"]["unknown_dims_costed_as"] = {k: v["bound_to"] for k, v in unknown.items()}
    return g


def _bound_to(g: Graph, info: dict) -> str:
    """What the cost model substitutes for an unknown dim: ``B`` for the leading axis of a graph
    input, else ``S`` (another length — a decoder's own sequence, a data-dependent count — costed
    as the prompt length; report.json model.import.unknown_dims says so)."""
    origin = str(info.get("origin", ""))
    return "B" if "axis 0 " in origin else "S"


def _collect_unknown(g: Graph, dims: _Dims) -> dict[str, dict]:
    """The unknown symbols that the graph's types actually use, with a few tensors each and the
    symbol the cost model binds each to (``bound_to``)."""
    by_name = {k: v for k, v in dims.unknown.items()}
    used: dict[str, dict] = {}
    for t, ty in g.types.items():
        for d in ty.shape:
            if isinstance(d, int):
                continue
            for s in d.free_symbols:
                info = by_name.get(s.name)
                if info is None:
                    continue
                u = used.setdefault(s.name, {"symbol": info["symbol"], "origin": info["origin"],
                                             "tensors": [], "bound_to": _bound_to(g, info)})
                if len(u["tensors"]) < 5 and t not in u["tensors"]:
                    u["tensors"].append(t)
    return dict(sorted(used.items()))
