"""Early exit: insert exit heads after chosen decoder layers (``early_exit=layers``).

For each exit layer ℓ (0-based; "after layer ℓ" = ℓ+1 layers run) the pass finds the residual
stream leaving layer ℓ — the one tensor a layer-ℓ op hands to layer ℓ+1 — and clones the model's
head (every op after the last layer: the final norm and the LM head, sharing their weights) onto
it. The graph gains two outputs per exit:

- ``exit_logits.ℓ``: the exit head's logits (a runtime compares its confidence with the threshold
  and stops there);
- ``exit_hidden.ℓ``: the hidden state at the exit — what the skipped layers' K/V are computed from
  under the ``propagate`` policy (CALM, Schuster et al. 2022).

Each cloned op carries ``exit_point`` (layer, conditional exit probability, head output). The
cost side (expected depth, expected max depth over a batch, skipped layers' K/V) is
compiler/analysis/early_exit.py.
"""
from __future__ import annotations

from collections.abc import Sequence

from compiler.ir.annotations import ExitPoint
from compiler.errors import ConfigError
from compiler.ir import Graph, IRError, op_layers
from passes.base import Pass, PassResult


def residual_after(g: Graph, layer: int, pos: dict[str, int]) -> str:
    """The tensor layer ``layer`` hands to the next layer (or to the head)."""
    nxt = layer + 1
    cross = []
    for n in g:
        if pos[n.name] != layer:
            continue
        for t in n.outputs:
            if t and any(pos[c.name] == nxt for c, _ in g.consumers(t)) and t not in cross:
                cross.append(t)
    floats = [t for t in cross if g.type(t).dtype.startswith(("float", "bfloat"))]
    if len(floats) != 1:
        raise IRError(f"early exit: expected one residual tensor between layers {layer} and {nxt}, found {floats}")
    return floats[0]


def insert_exit_heads(g: Graph, layers: Sequence[int], probabilities: Sequence[float] | None = None) -> dict[str, int]:
    pos, n_layers = op_layers(g)
    if n_layers < 2:
        raise ConfigError("early_exit=layers needs a decoder with at least 2 layers.")
    bad = [ell for ell in layers if not 0 <= int(ell) < n_layers - 1]
    if bad:
        raise ConfigError(f"early_exit.layers={list(layers)}: exits must be after layers 0..{n_layers - 2} "
                          f"(the model has {n_layers} layers; an exit after the last layer is the model's own head).")
    head = [n for n in g.topo_order() if pos[n.name] == n_layers]
    last = residual_after(g, n_layers - 1, pos)
    logits = g.outputs[0]
    probs = list(probabilities) if probabilities is not None else [0.0] * len(layers)
    srcs = {int(ell): residual_after(g, int(ell), pos) for ell in layers}
    for ell, prob in zip(sorted(int(x) for x in layers), probs):
        src = srcs[ell]
        rename = {last: src}
        out_name = f"exit_logits.{ell}"
        ann = ExitPoint(layer=ell, probability=float(prob), head=out_name)
        for n in head:
            outs = []
            for t in n.outputs:
                if not t:
                    outs.append(t)
                    continue
                new = out_name if t == logits else g.fresh(f"{t}.exit{ell}")
                rename[t] = new
                outs.append(new)
            ins = [rename.get(t, t) if t else t for t in n.inputs]
            extra = {k: v for k, v in n.annotations.items() if k in ("source",)}
            g.add_op(n.op, ins, outs, dict(n.attrs), types=[g.types[t] if t else None for t in n.outputs],
                     name=g.fresh(f"{n.name}.exit{ell}"), domain=n.domain, exit_point=ann, **extra)
        if out_name not in g.types:
            raise IRError(f"early exit: the model's head does not produce {logits!r}")
        hid = f"exit_hidden.{ell}"
        g.add_op("Identity", [src], [hid], types=[g.types[src]], name=g.fresh(f"exit_hidden_{ell}"),
                 exit_point=ann)
        g.set_outputs(list(g.outputs) + [out_name, hid])
    g.meta["exit_layers"] = sorted(int(x) for x in layers)
    return {"exit_heads": len(layers), "head_ops": len(head) * len(layers)}


class EarlyExitPass(Pass):
    """Pipeline form: ``{name: early_exit, layers: [3, 7], probabilities: [0.2, 0.3]}``."""

    name = "early_exit"

    def check_params(self) -> None:
        bad = set(self.params) - {"layers", "probabilities"}
        if bad or "layers" not in self.params:
            raise ConfigError(f"pass 'early_exit' takes layers (required) and probabilities, got {sorted(self.params)}.")

    def run(self, graph: Graph) -> PassResult:
        stats = insert_exit_heads(graph, self.params["layers"], self.params.get("probabilities"))
        return PassResult(graph, True, stats)
