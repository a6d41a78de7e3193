"""Layer stacking: import an L-layer decoder from a 2-layer export.

torch.export's cost grows with the number of layers (a 70B model has 80); for cost-only imports
(meta weights) rooftop exports the same architecture with two layers and replicates layer 1's
subgraph L − 2 times in the IR, threading the residual stream through the copies and renaming
each copy's parameters ``….layers.1.…`` → ``….layers.k.…``. Layers are found from each FX node's
``nn_module_stack`` (``model.layers.1``, ``transformer.h.1``, ``encoder.layer.1``). A test checks that
the stacked graph has the same op counts and costs as a full export.

Only homogeneous stacks are stacked (no per-layer ``layer_types``); anything else imports whole.
"""
from __future__ import annotations

import re

from compiler.ir import Graph, IRError

LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|layer|blocks)\.(\d+)(?:\.|$)")
PARAM_RE = re.compile(r"((?:^|\.)(?:layers|h|layer|blocks)\.)1(\.)")


def layer_of(module_path: str) -> int | None:
    m = LAYER_RE.search(module_path)
    return int(m.group(1)) if m else None


def layer_count_key(hf_config: dict) -> str | None:
    for k in ("num_hidden_layers", "n_layer", "num_layers"):
        if k in hf_config:
            return k
    return None


def can_stack(hf_config: dict) -> bool:
    key = layer_count_key(hf_config)
    if key is None or int(hf_config[key]) <= 2:
        return False
    types = hf_config.get("layer_types")
    return not types or len(set(types)) == 1


def unroll_layers(g: Graph, total: int) -> dict[str, int]:
    """Replicate the nodes annotated ``layer == 1`` so the graph has ``total`` layers."""
    template = [n for n in g.topo_order() if n.annotations.get("layer") == 1]
    if not template:
        raise IRError("layer stacking: no node belongs to layer 1")
    names = {n.name for n in template}
    produced = {t for n in template for t in n.outputs if t}
    ext_in = [t for n in template for t in n.inputs if t and t not in produced]
    layer0 = {n.name for n in g if n.annotations.get("layer") == 0}
    carry_in = sorted({t for t in ext_in if g.producer.get(t) in layer0})
    outside = [(c, i) for t in produced for c, i in g.consumers(t) if c.name not in names]
    carry_out = sorted({c.inputs[i] for c, i in outside} | {t for t in produced if t in g.outputs})
    if len(carry_in) != 1 or len(carry_out) != 1:
        raise IRError(f"layer stacking: layer 1 has {len(carry_in)} inputs from layer 0 and "
                      f"{len(carry_out)} outputs used later; expected one residual stream each")
    (cin,), (cout,) = carry_in, carry_out
    final_users = [(c, i) for c, i in outside]
    prev_out = cout
    for k in range(2, total):
        rename = {cin: prev_out}
        for t in dict.fromkeys(ext_in):
            if t in g.params and PARAM_RE.search(t):
                new = PARAM_RE.sub(lambda m: f"{m.group(1)}{k}{m.group(2)}", t, count=1)
                if new not in g.params:
                    p = g.params[t]
                    g.add_param(new, p.type, p.data, **p.annotations)
                rename[t] = new
        for n in template:
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
    g.set_outputs(prev_out if o == cout else o for o in g.outputs)
    return {"layers": total, "stacked_from": 2}
