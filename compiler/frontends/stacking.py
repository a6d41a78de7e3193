"""Layer stacking: import an L-layer decoder from a short export.

torch.export's cost grows with the number of layers (a 70B model has 80, DeepSeek-V3 61); for
cost-only imports (meta weights) rooftop exports the same architecture with only the first few
layers and replicates them in the IR, threading the residual stream through the copies and
renaming each copy's parameters ``….layers.j.…`` → ``….layers.k.…``. Layers are found from each FX
node's ``nn_module_stack`` (``model.layers.1``, ``transformer.h.1``, ``encoder.layer.1``).

Layers differ by kind (:func:`compiler.frontends.families.layer_kinds`: the attention window and
whether the MLP is an MoE layer — Gemma-3's 5 local : 1 global, gpt-oss's alternating windows,
DeepSeek's first dense layers). The export keeps the shortest prefix in which every kind occurs at a
layer index ≥ 1 (:func:`stack_plan`); layer k ≥ prefix is a copy of the first layer ≥ 1 of its
kind. A homogeneous stack exports 2 layers. Tests check that the stacked graph has the same op
counts and costs as a full export.
"""
from __future__ import annotations

import re

from compiler.frontends import families
from compiler.ir import Graph, IRError

LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|layer|blocks)\.(\d+)(?:\.|$)")


def _param_re(j: int) -> re.Pattern:
    return re.compile(rf"((?:^|\.)(?:layers|h|layer|blocks)\.){j}(\.)")


def layer_of(module_path: str) -> int | None:
    m = LAYER_RE.search(module_path)
    return int(m.group(1)) if m else None


def _child_block(name: str, cls: str) -> str:
    """The block a decoder layer's direct child module is (``self_attn`` → attention, …)."""
    low = f"{name} {cls.rsplit('.', 1)[-1]}".lower()
    if "norm" in low or name.lower().startswith("ln"):
        return "norm"
    if "attn" in low or "attention" in low:
        return "attention"
    if "moe" in low or "sparse" in low or "expert" in low:
        return "moe"
    if any(w in low for w in ("mlp", "ffn", "feed_forward", "feedforward", "fc", "dense")):
        return "mlp"
    return "other"


def block_of(stack) -> str:
    """The block an op belongs to, from its FX node's ``nn_module_stack`` entries (path, class):
    inside a decoder layer, what the layer's direct child is (attention, mlp — moe when the layer's
    FFN is a mixture of experts —, norm; ops of the layer itself, residual adds: other); outside,
    embedding, the final norm, the LM head, or other (rotary tables)."""
    entries = [(str(p), str(c)) for p, c in stack]
    for i, (path, _) in enumerate(entries):
        m = LAYER_RE.search(path)
        if m and path.endswith(m.group(1)):                      # the decoder layer itself
            child = next((e for e in entries[i + 1:] if e[0].startswith(path + ".")), None)
            if child is None:
                return "other"
            return _child_block(child[0][len(path) + 1:].split(".")[0], child[1])
    if not entries:
        return "other"
    path, cls = entries[-1]
    low = f"{path.rsplit('.', 1)[-1]} {cls.rsplit('.', 1)[-1]}".lower()
    if "embed" in low or "wte" in low or "wpe" in low:
        return "embedding"
    if "head" in low:
        return "head"
    if "norm" in low or low.startswith("ln"):
        return "norm"
    return "other"


def layer_count_key(hf_config: dict) -> str | None:
    for k in families.ALIASES["layers"]:
        if k in hf_config:
            return k
    return None


def stack_plan(hf_config: dict) -> tuple[int, tuple[str, ...]] | None:
    """(layers to export, the kind of every layer) for a config worth stacking, else None."""
    key = layer_count_key(hf_config)
    if key is None or int(hf_config[key]) <= 2:
        return None
    n = int(hf_config[key])
    kinds = families.layer_kinds(hf_config)
    if len(kinds) != n:
        return None
    first: dict[str, int] = {}
    for i, k in enumerate(kinds[1:], 1):
        first.setdefault(k, i)
    m = max(max(first.values(), default=1) + 1, 2)
    return (m, kinds) if m < n else None


def can_stack(hf_config: dict) -> bool:
    return stack_plan(hf_config) is not None


def _template(g: Graph, j: int):
    """Layer ``j``'s nodes (topological order), external inputs, residual input (from layer
    j − 1) and residual output (used after the layer)."""
    nodes = [n for n in g.topo_order() if n.annotations.get("layer") == j]
    if not nodes:
        raise IRError(f"layer stacking: no node belongs to layer {j}")
    names = {n.name for n in nodes}
    produced = {t for n in nodes for t in n.outputs if t}
    ext_in = list(dict.fromkeys(t for n in nodes for t in n.inputs if t and t not in produced))
    prev = {n.name for n in g if n.annotations.get("layer") == j - 1}
    carry_in = sorted({t for t in ext_in if g.producer.get(t) in prev})
    outside = [(c, i) for t in produced for c, i in g.consumers(t) if c.name not in names]
    carry_out = sorted({c.inputs[i] for c, i in outside} | {t for t in produced if t in g.outputs})
    if len(carry_in) != 1 or len(carry_out) != 1:
        raise IRError(f"layer stacking: layer {j} has {len(carry_in)} inputs from layer {j - 1} and "
                      f"{len(carry_out)} outputs used later; expected one residual stream each")
    return nodes, ext_in, carry_in[0], carry_out[0], outside


def unroll_layers(g: Graph, total: int, kinds: tuple[str, ...] | None = None) -> dict:
    """Append copies of the exported layers so the graph has ``total`` layers: layer k is a copy
    of the first exported layer ≥ 1 of ``kinds[k]`` (all layers alike without ``kinds``)."""
    exported = 1 + max((n.annotations["layer"] for n in g if n.annotations.get("layer") is not None), default=0)
    kinds = tuple(kinds) if kinds else ("layer",) * total
    first: dict[str, int] = {}
    for i, k in enumerate(kinds[1:exported], 1):
        first.setdefault(k, i)
    templates = {j: _template(g, j) for j in sorted(set(first.values()))}
    _, _, _, last_out, final_users = _template(g, exported - 1)
    prev_out = last_out
    for k in range(exported, total):
        if kinds[k] not in first:
            raise IRError(f"layer stacking: layer {k} is of kind {kinds[k]!r}, which the export does not have")
        j = first[kinds[k]]
        nodes, ext_in, cin, cout, _ = templates[j]
        rename = {cin: prev_out}
        pat = _param_re(j)
        for t in ext_in:
            if t in g.params and pat.search(t):
                new = pat.sub(lambda m: f"{m.group(1)}{k}{m.group(2)}", t, count=1)
                if new not in g.params:
                    p = g.params[t]
                    g.add_param(new, p.type, p.data, **p.annotations)
                rename[t] = new
        for n in nodes:
            ins = [rename.get(t, t) for t in n.inputs]
            outs = [f"{t}__l{k}" if t else "" for t in n.outputs]
            for t, nt in zip(n.outputs, outs):
                if t:
                    rename[t] = nt
            g.add_op(n.op, ins, outs, n.attrs, types=[g.types[t] if t else None for t in n.outputs],
                     name=f"{n.name}__l{k}", domain=n.domain, **(n.annotations | {"layer": k}))
        prev_out = rename[cout]
    for c, i in final_users:
        g.set_input(c, i, prev_out)
    g.set_outputs(prev_out if o == last_out else o for o in g.outputs)
    return {"layers": total, "stacked_from": exported,
            **({"kinds": dict(sorted({k: kinds.count(k) for k in set(kinds)}.items()))} if len(set(kinds)) > 1 else {})}
