"""Import a torch ``nn.Module`` through ``torch.export`` into rooftop's IR.

The exported program (training IR: ``aten.linear``, ``aten.scaled_dot_product_attention``, … kept
whole) is translated op by op onto the ONNX-semantics ops of :mod:`compiler.ir.ops`. Translation is
demand-driven: only nodes that the outputs need are translated, so mask-building code that the
importer replaces (a declared-causal decoder's attention mask becomes ``is_causal``) is never
looked at. Shapes come from torch's own symbolic shape analysis (each FX node's fake tensor),
with torch's size symbols mapped onto rooftop's ``B`` and ``S``; nothing here needs weights, so a
model built on the meta device imports at full size with no memory for its parameters.

Hand-written on purpose: ``torch.onnx.export`` (dynamo) translates a Llama-2-7B on the meta device
in ~22 s and then cannot serialize meta weights; this translator does the same model in a few
seconds and keeps the graph symbolic in B/S/P for the cost model.
"""
from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import sympy
import torch

from compiler.errors import RooftopError
from compiler.ir import Graph
from compiler.ir.masks import MaskClass, Sample, classify, probe_lengths
from compiler.ir.ops import UnsupportedOpError
from compiler.frontends.aten_context import HANDLERS, _Ctx, _target_name
from compiler.frontends.aten_data import REFUSED
from compiler.frontends import aten_core, aten_data, aten_ops  # noqa: F401  (their handlers register on import)


_SKIP = {"aten._assert_tensor_metadata.default", "aten._assert_scalar.default",
         "aten.sym_constrain_range_for_size.default", "aten._assert_async.msg",
         "aten.sym_constrain_range.default"}
_SYMBOLIC_FNS = {operator.mul, operator.add, operator.sub, operator.floordiv, operator.truediv,
                 operator.neg, operator.mod, torch.sym_max, torch.sym_min}


def _in_place(n: torch.fx.Node) -> bool:
    """An ATen op that mutates its first operand (``div_``, ``scatter_``…): non-strict export keeps
    it, and the Python code goes on using the operand's node for the mutated value."""
    t = n.target
    return isinstance(t, torch._ops.OpOverload) and t._schema.name.split("::")[-1].endswith("_") \
        and bool(t._schema.arguments) and t._schema.arguments[0].alias_info is not None \
        and t._schema.arguments[0].alias_info.is_write


def _needed(graph: torch.fx.Graph, masks: Mapping) -> set:
    """Nodes the outputs depend on, skipping the masks whose meaning replaced them."""
    out = next(n for n in graph.nodes if n.op == "output")
    need, stack = set(), [out]
    while stack:
        n = stack.pop()
        if n in need:
            continue
        need.add(n)
        args = list(n.all_input_nodes)
        mc = masks.get(n)
        if mc is not None and mc.structured:
            args = [a for a in n.args[:3] if isinstance(a, torch.fx.Node)]
        # an in-place op on a needed value changes what its later users read: needed too
        args += [u for u in n.users if _in_place(u) and u.args and u.args[0] is n]
        stack.extend(args)
    return need


# ------------------------------------------------------------------------------------------------
# attention masks: evaluated to find what they mean (compiler/ir/masks.py)

_SHAPE_ONLY = {"aten.sym_size.int", "aten.sym_numel.default", "aten.sym_stride.int"}


def _mask_arg(n: torch.fx.Node):
    m = n.args[3] if len(n.args) > 3 else n.kwargs.get("attn_mask")
    return m if isinstance(m, torch.fx.Node) else None


def _mask_module(ep, mask: torch.fx.Node, param_of: Mapping, state: Mapping, position_inputs=("position_ids",)):
    """A callable ``f(seq) -> np.ndarray`` evaluating the subgraph of ``mask`` on a batch-1
    sequence of ``seq`` tokens (positions ``0 … seq-1``), and the integer constants it reads; or
    (None, why) when the mask reads anything but shapes, positions and constant buffers."""
    anc, stack = set(), [mask]
    while stack:
        n = stack.pop()
        if n in anc:
            continue
        anc.add(n)
        stack.extend(n.all_input_nodes)
    consts = []
    for n in anc:
        if n.op == "placeholder":
            if n.name in param_of:
                t = state.get(param_of[n.name])
                if t is None or t.is_meta or t.numel() > 4096:
                    return None, f"the mask reads {param_of[n.name]}"
            elif n.name not in position_inputs and n.target not in position_inputs:
                if any(u in anc and _target_name(u) not in _SHAPE_ONLY for u in n.users):
                    return None, f"the mask reads the values of input {n.name}"
        elif n.op == "call_function":
            for a in list(n.args) + list(n.kwargs.values()):
                for x in (a if isinstance(a, (list, tuple)) else [a]):
                    if isinstance(x, int) and not isinstance(x, bool):
                        consts.append(x)
    new = torch.fx.Graph()
    env: dict = {}
    feeds: list = []
    for n in ep.graph.nodes:
        if n not in anc:
            continue
        if n.op == "placeholder":
            env[n] = new.placeholder(n.name)
            feeds.append(n)
        else:
            env[n] = new.node_copy(n, lambda a: env[a])
            dev = env[n].kwargs.get("device")
            if isinstance(dev, torch.device) and dev.type == "meta":   # traced on meta (model.weights=meta)
                env[n].kwargs = {**env[n].kwargs, "device": torch.device("cpu")}
    new.output(env[mask])
    gm = torch.fx.GraphModule(torch.nn.Module(), new)

    def run(seq: int) -> np.ndarray:
        args = []
        for n in feeds:
            if n.name in param_of:
                args.append(state[param_of[n.name]])
                continue
            fake = n.meta["val"]
            shape = [seq if isinstance(d, torch.SymInt) and i == fake.dim() - 1 else
                     (1 if isinstance(d, torch.SymInt) else int(d)) for i, d in enumerate(fake.shape)]
            if n.name in position_inputs or n.target in position_inputs:
                args.append(torch.arange(seq, dtype=fake.dtype).expand(shape).contiguous())
            else:
                args.append(torch.zeros(shape, dtype=fake.dtype))
        with torch.no_grad():
            out = gm(*args)
        return out.detach().cpu().numpy()
    return run, consts


def _classify_masks(ep, param_of: Mapping, state: Mapping, limit: int | None) -> dict:
    """What each SDPA's attn_mask means, evaluated on sequences crossing every window its subgraph
    could encode (a declared-causal decoder's masks only: an encoder's read its attention_mask)."""
    out: dict = {}
    cache: dict = {}
    for n in ep.graph.nodes:
        if n.op != "call_function" or _target_name(n) != "aten.scaled_dot_product_attention.default":
            continue
        m = _mask_arg(n)
        if m is None:
            continue
        if m not in cache:
            run, consts = _mask_module(ep, m, param_of, state)
            if run is None:
                cache[m] = MaskClass("general", reason=consts)
            else:
                try:
                    cache[m] = classify([Sample(L, run(L)) for L in probe_lengths(consts, limit)])
                except Exception as e:  # noqa: BLE001 - a mask torch cannot evaluate stays explicit
                    cache[m] = MaskClass("general", reason=f"the mask could not be evaluated ({type(e).__name__}: {e})")
        out[n] = cache[m]
    return out


def import_exported(ep: torch.export.ExportedProgram, *, name: str, dims: Mapping[str, Sequence],
                    causal: bool = False, output_names: Sequence[str] | None = None,
                    progress: Callable[[int, int], None] | None = None,
                    max_positions: int | None = None) -> Graph:
    """Translate an ExportedProgram into a Graph.

    ``dims`` maps each user input name to its dims, each an int or one of rooftop's symbols
    (``compiler.ir.B``/``S``), e.g. ``{"input_ids": [B, S]}``; torch's size symbols of those
    positions are renamed accordingly.
    """
    ep = decompose_to_core(ep)
    g = Graph(name)
    g.meta["causal"] = causal
    sig = ep.graph_signature
    param_of = {**sig.inputs_to_parameters, **sig.inputs_to_buffers,
                **getattr(sig, "inputs_to_lifted_tensor_constants", {})}
    state = {**ep.state_dict, **getattr(ep, "constants", {})}
    placeholders = [n for n in ep.graph.nodes if n.op == "placeholder"]

    symmap: dict = {}
    for n in placeholders:
        if n.name in dims or n.target in dims:
            want = dims.get(n.name, dims.get(n.target))
            fake = n.meta["val"]
            for d, w in zip(fake.shape, want):
                if isinstance(d, torch.SymInt):
                    e = d.node.expr
                    if isinstance(e, sympy.Symbol) and not isinstance(w, int):
                        symmap[e] = w
    ctx = _Ctx(g, symmap)
    if causal:   # a decoder's masks are built from shapes and positions: evaluate what they mean
        ctx.masks = _classify_masks(ep, param_of, state, max_positions)
    need = _needed(ep.graph, ctx.masks)

    # Weights used only as aten.linear's weight are stored transposed ([in, out]) for MatMul.
    linear_only: dict[str, bool] = {}
    for n in ep.graph.nodes:
        if n.op == "call_function" and n in need:
            for i, a in enumerate(n.args):
                if isinstance(a, torch.fx.Node) and a.op == "placeholder" and a.name in param_of:
                    ok = _target_name(n) == "aten.linear.default" and i == 1
                    linear_only[a.name] = linear_only.get(a.name, True) and ok

    for n in placeholders:
        if n not in need:
            continue
        ctx.node = n
        ty = ctx.ttype(n.meta["val"])
        if n.name in param_of:
            fqn = param_of[n.name]
            t = state.get(fqn)
            data = None
            if t is not None and not t.is_meta:
                data = t.detach().to(torch.float32 if t.dtype == torch.bfloat16 else t.dtype).cpu().numpy()
            pname = fqn
            if linear_only.get(n.name):
                ty = ty.with_shape(ty.shape[::-1])
                data = None if data is None else np.ascontiguousarray(data.T)
                ctx.linear_weight_t[pname] = pname
            g.add_param(pname, ty, data, source=fqn)
            ctx.env[n] = pname
        else:
            g.add_input(n.name, ty)
            ctx.env[n] = n.name

    calls = [n for n in ep.graph.nodes if n.op == "call_function" and n in need]
    for i, n in enumerate(calls):
        ctx.node = n
        tname = _target_name(n)
        if progress and i % 64 == 0:
            progress(i, len(calls))
        if tname in _SKIP:
            continue
        v = n.meta.get("val")
        if isinstance(v, (torch.SymInt, int)) and not isinstance(v, bool) and (
                tname.startswith("aten.sym_") or n.target in _SYMBOLIC_FNS):
            ctx.env[n] = ctx.sym(v)
            continue
        h = HANDLERS.get(tname)
        if h is None and tname in REFUSED:
            raise UnsupportedOpError.for_op(
                tname, domain="aten (torch.export)", node=n.name, source=ctx._where() or "",
                count=sum(1 for c in calls if _target_name(c) == tname), model=f"model {name!r}",
                fix=f"rooftop does not import it: {REFUSED[tname]}.",
                support="See docs/reference/core_aten.md for the Core ATen ops rooftop translates.")
        if h is None:
            raise UnsupportedOpError.for_op(
                tname, domain="aten (torch.export)", node=n.name, source=ctx._where() or "",
                count=sum(1 for c in calls if _target_name(c) == tname), model=f"model {name!r}",
                fix="Export the model with a supported implementation (e.g. model.attn_implementation=sdpa).",
                support=f"To support it, add a handler for {tname} in compiler/frontends/aten_data.py (or the aten_* module of its kind) "
                        f"that lowers it onto ops of the registry (compiler/ir/ops.py).")
        args = ctx.val(list(n.args))
        kwargs = {k: ctx.val(a) for k, a in n.kwargs.items()}
        ctx.env[n] = h(ctx, *args, **kwargs)
        if _in_place(n) and n.args and isinstance(n.args[0], torch.fx.Node):
            ctx.env[n.args[0]] = ctx.env[n]   # x.div_(y): later uses of x see the result
    if progress:
        progress(len(calls), len(calls))

    out_node = next(n for n in ep.graph.nodes if n.op == "output")
    outs = [ctx.env[a] for a in out_node.args[0]] if isinstance(out_node.args[0], (list, tuple)) else [ctx.env[out_node.args[0]]]
    names = list(output_names or [f"output_{i}" for i in range(len(outs))])
    for t, want in zip(outs, names):
        _rename_output(g, t, want)
    g.set_outputs(names)
    return g


def decompose_to_core(ep: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """Decompose the ops this importer has no direct translation for into the Core ATen opset
    (``ep.run_decompositions`` with torch's own table, restricted to those ops), and
    functionalize in-place ops. Ops with a translation stay whole (``aten.linear``,
    ``aten.scaled_dot_product_attention``, … fuse and cost better than their decompositions), so
    a model the importer already covers is translated exactly as before. Repeated while a
    decomposition leaves ops without a translation (at most a few rounds)."""
    table = None
    for _ in range(4):
        todo, mutating = {}, False
        for n in ep.graph.nodes:
            if n.op != "call_function" or not isinstance(n.target, torch._ops.OpOverload):
                continue
            name = _target_name(n)
            if name in _SKIP or name.startswith("aten.sym_"):
                continue
            if n.target._schema.is_mutable and name not in _FUNCTIONAL_INPLACE:
                mutating = True
            if name in HANDLERS:
                continue
            if table is None:
                table = torch.export.default_decompositions()
            if n.target in table:
                todo[n.target] = table[n.target]
        if not todo and not mutating:
            return ep
        ep = ep.run_decompositions(todo)
    return ep


# in-place ops whose translation is their functional form (the exported graph uses their result)
_FUNCTIONAL_INPLACE = {"aten.add_.Tensor", "aten.sub_.Tensor", "aten.mul_.Tensor", "aten.div_.Tensor"}


def _rename_output(g: Graph, t: str, want: str):
    """Give a graph output its public name with an Identity (removed later by cleanup when safe)."""
    if t == want:
        return
    g.add_op("Identity", [t], [want], types=[g.types[t]], name=f"output_{want}")


def export_module(module: torch.nn.Module, example: Mapping[str, torch.Tensor],
                  dynamic: Mapping[str, Sequence[int]]) -> torch.export.ExportedProgram:
    """torch.export with the named input dims dynamic (``torch.export.Dim.DYNAMIC``)."""
    ds = {k: {d: torch.export.Dim.DYNAMIC for d in dims} for k, dims in dynamic.items()}
    for k in example:
        ds.setdefault(k, None)
    with torch.no_grad():
        try:
            return torch.export.export(module, (), dict(example), dynamic_shapes=ds, strict=False)
        except RooftopError:
            raise   # rooftop's own refusal raised while tracing (e.g. an experts layout it does not import)
        except Exception as e:  # noqa: BLE001 - torch.export's many error types: one exit-2 paragraph
            first = " ".join(str(e).strip().split())[:500] or type(e).__name__
            data_dep = "data-dependent" in first or "GuardOnDataDependent" in type(e).__name__
            why = ("its forward branches or loops on tensor values (data-dependent control flow), "
                   "which a graph with symbolic batch and sequence cannot express" if data_dep else
                   "torch.export cannot trace its forward")
            raise UnsupportedOpError(
                f"cannot import {type(module).__name__}: {why} ({type(e).__name__}: {first}). Make the "
                f"forward traceable (no Python control flow on tensor values; for Hugging Face models a "
                f"supported attn_implementation and experts implementation), or export it to ONNX "
                f"yourself and use model=onnx.") from None
