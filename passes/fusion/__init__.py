"""Operator fusion: rewrite rules (pattern + check + rewrite) applied by one engine.

Rules are named data (:data:`RULES`: name → builder), run in the order of :data:`ORDER`:

==================  ==========================================================================
qkv_heads           a QKV projection interleaved per head (GPT-NeoX) → one projection per chunk
attention           QKᵀ → scale → mask → softmax → ·V → ``Attention`` (eager / decomposed / exported forms)
attention_gqa       repeat_kv in front of an existing ``Attention`` dropped (native GQA)
rotary_cache        batch-1 cos/sin caches of an exported ``RotaryEmbedding`` expanded over the batch
rotary              x·cos + rotate_half(x)·sin (interleaved, partial) → ``RotaryEmbedding``
rotary_partial      Concat(RotaryEmbedding(x[..., :r]), x[..., r:]) → ``rotary_embedding_dim=r``
rotary_layout       head split sunk below ``RotaryEmbedding`` (its 3-D form [B, S, H·D])
attention_layout    head split/merge transposes folded into ``Attention``'s 3-D form [B, S, H·D]
layer_norm          LayerNorm from primitives → ``LayerNormalization``
rms_norm            RMSNorm from primitives (incl. the fp32 cast sandwich) → ``RMSNormalization``
residual_norm       norm(a + r) keeping the sum → ``ResidualNorm`` (rooftop function)
gelu                GELU (erf / tanh) from primitives → ``Gelu``
merge_gate_up       silu(x·Wg)·(x·Wu) → ``SwiGLU(x·[Wg|Wu])``
swiglu              silu(g)·u → ``SwiGLU``
merge_qkv           linear layers sharing an input → one MatMul + ``Split``
matmul_epilogue     MatMul/Gemm + bias + activation → ``MatMulEpilogue`` (rooftop function)
==================  ==========================================================================

Passes (``conf/pipeline/*.yaml``): ``fuse`` runs them all; ``fuse_attention``, ``fuse_norms``,
``fuse_gemm`` and ``annotate_rotary`` run subsets. Parameters: ``rules`` (names, to run a subset
in that order), ``explain: true`` (log, per rule, why it did not fire at its closest candidate),
``cost_gate: false`` (fire wherever the pattern fits), ``hardware: <name>`` (cost on that hardware
instead of the pipeline's), ``target`` (below). Stats: fires per rule, ``<rule>.rejected_by_cost``,
and a breakdown (``attention.causal``, ``matmul_epilogue.gelu_tanh``, …).

Targets (``target: auto | portable | cpu``; ``auto``, the default, is ``cpu`` when the hardware
the pass costs on is a CPU, else ``portable``). Both emit standard ONNX only; they differ where
the fastest form depends on the runtime's kernels (measured with onnxruntime 1.32 on CPU,
docs/measurements/cpu_fusion.md):

- ``portable``: every rule of :data:`ORDER`; linear epilogues as ``MatMul`` (+ ``Add``) (+ act).
- ``cpu``: no ``merge_qkv`` — on a CPU the merged GEMM is no faster than three (a GEMM there runs
  at the core's peak from a few hundred rows on) while the ``Split`` in front of a 3-D
  ``Attention`` is a real copy of Q, K and V; and linear epilogues with a bias are emitted as a
  2-D ``Gemm`` (bias applied inside the GEMM) followed by the activation, so no runtime re-fuses
  ``MatMul + Add + Gelu`` into its slower bias-GELU kernel (``MatMulEpilogue`` attribute
  ``gemm=1``; weight-quantized layers keep the ``MatMul`` form their runtime fusions expect).
  Before that, biases that can move for free do (:mod:`passes.fusion.bias_fold`: the key bias
  dropped, the value bias folded into the output projection's, a post-LN block's second bias
  folded into the norm's shift), so those GEMMs run as bias-free ``MatMul`` s; stats
  ``bias_fold.key`` / ``.value`` / ``.residual``; and a boolean attention mask is converted to
  the additive float form once instead of inside every ``Attention`` call (``attention.float_mask``).

Cost awareness: a rule fires only where :class:`~passes.fusion.gate.CostGate` predicts the fused
ops are not slower than the group on the pipeline's hardware at its prefill and decode workload
points (:class:`passes.base.PassContext`); outside a pipeline, on ``a100_80g`` at batch 1, prompt
512, context 512.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from compiler.errors import ConfigError
from compiler.ir import Graph
from compiler.ir.ops import UnsupportedOpError
from passes.base import Pass, PassResult
from passes.fusion.attention import attention_rule, gqa_rule, layout_rule
from passes.fusion.bias_fold import float_masks, fold_biases
from passes.fusion.gate import DEFAULT_POINTS, CostGate
from passes.fusion.gemm import epilogue_rule, gelu_rule, merge_gate_up_rule, swiglu_rule
from passes.fusion.merge import interleaved_qkv_rule, merge_qkv_rule
from passes.fusion.norm import layer_norm_rule, residual_norm_rule, rms_norm_rule
from passes.fusion.pattern import MatchResult
from passes.fusion.rotary import rotary_cache_rule, rotary_layout_rule, rotary_partial_rule, rotary_rule
from passes.fusion.rule import Match, Plan, Rule, RuleOutcome, apply_rule
from passes.cleanup import eliminate_dead_code
from compiler.perf.hardware import hardware_by_name

log = logging.getLogger("rooftop.fusion")

RULES: dict[str, Callable[[], Rule]] = {
    "qkv_heads": interleaved_qkv_rule,
    "attention": attention_rule,
    "attention_gqa": gqa_rule,
    "rotary_cache": rotary_cache_rule,
    "rotary": rotary_rule,
    "rotary_partial": rotary_partial_rule,
    "rotary_layout": rotary_layout_rule,
    "attention_layout": layout_rule,
    "layer_norm": layer_norm_rule,     # before rms_norm: a LayerNorm contains an RMSNorm of x − mean
    "rms_norm": rms_norm_rule,
    "residual_norm": residual_norm_rule,
    "gelu": gelu_rule,
    "merge_gate_up": merge_gate_up_rule,
    "swiglu": swiglu_rule,
    "merge_qkv": merge_qkv_rule,
    "matmul_epilogue": epilogue_rule,
}
ORDER: tuple[str, ...] = tuple(RULES)
DEFAULT_HARDWARE = "a100_80g"
TARGETS = ("auto", "portable", "cpu")
# rules the cpu target does not run, and why
CPU_SKIPS = {"merge_qkv": "on a CPU three GEMMs run as fast as the merged one, and the Split in "
                          "front of the 3-D Attention copies Q, K and V"}


#: a linear at least this many times wider than its input takes its bias as a weight row
BIAS_ROW_MIN_WIDENING = 2


def mark_gemm_epilogues(g: Graph) -> tuple[int, int]:
    """The cpu target's bias forms (emission in :mod:`compiler.ir.ops`), for a ``MatMulEpilogue`` with
    a bias (measured on onnxruntime's CPU kernels, docs/guide/fusion.md):

    - output at least ``BIAS_ROW_MIN_WIDENING`` times wider than the input: ``bias_row=1``,
      ``[A, 1] · [W; b]`` — the bias costs a copy of the narrow input instead of a pass over the
      wide output;
    - otherwise, with an activation: ``gemm=1``, a 2-D ``Gemm`` (bias inside) + the activation, so
      that no ``MatMul + Add + act`` chain is left for the runtime to turn into its slower
      bias-activation kernel;
    - otherwise: the portable ``MatMul`` + ``Add`` (a ``Gemm`` fills its output with the bias on
      one thread before the GEMM; a broadcast ``Add`` afterwards runs on all of them).

    Returns the (gemm, bias_row) counts."""
    n_gemm = n_row = 0
    for node in g:
        if node.op != "MatMulEpilogue" or len([t for t in node.inputs if t]) <= 2:
            continue
        if node.attrs.get("gemm") or node.attrs.get("bias_row"):
            continue
        act = node.attrs.get("activation", "")
        k, n = g.type(node.inputs[1]).shape[-2:]
        if isinstance(k, int) and isinstance(n, int) and n >= BIAS_ROW_MIN_WIDENING * k and act != "swiglu":
            node.attrs["bias_row"] = 1
            n_row += 1
        elif act:
            node.attrs["gemm"] = 1
            n_gemm += 1
    return n_gemm, n_row


def _substats(rule: str, new) -> list[str]:
    out = []
    for n in new:
        if n.op == "Attention":
            out.append("causal" if n.attrs.get("is_causal") else ("masked" if len(n.inputs) > 3 and n.inputs[3] else "unmasked"))
        elif n.op == "MatMulEpilogue":
            out.append(n.attrs.get("activation") or "bias")
    return out


def run_rules(g: Graph, names, *, gate: CostGate | None, explain: bool = False,
              rules: dict[str, Rule] | None = None) -> tuple[dict[str, int], dict[str, RuleOutcome]]:
    """Apply the named rules in order; returns (stats, outcome per rule)."""
    stats: dict[str, int] = {}
    outcomes: dict[str, RuleOutcome] = {}
    ctx: dict = {}
    for name in names:
        rule = (rules or {}).get(name) or RULES[name]()
        sub: dict[str, int] = {}

        def on_fire(match, new, sub=sub, name=name):
            for k in _substats(name, new):
                sub[k] = sub.get(k, 0) + 1

        out = apply_rule(g, rule, gate=gate, ctx=ctx, on_fire=on_fire)
        outcomes[name] = out
        stats[name] = out.fired
        for k, v in sorted(sub.items()):
            stats[f"{name}.{k}"] = v
        if out.rejected_by_cost:
            stats[f"{name}.rejected_by_cost"] = out.rejected_by_cost
        if explain:
            log.info("%s", explain_outcome(name, out))
    if any(o.fired for o in outcomes.values()):
        eliminate_dead_code(g)   # repeat_kv chains, Splits and shape code the fused ops left unused
    return stats, outcomes


_PROB_MOVES = frozenset({"Cast", "Where", "Identity", "Dropout", "IsNaN"})


def unfused_attention(g: Graph) -> list:
    """Softmax ops left where an attention's probabilities are: their result reaches a MatMul
    through casts / NaN guards only."""
    out = []
    for n in g:
        if n.op != "Softmax":
            continue
        todo, seen = [n.outputs[0]], set()
        while todo:
            t = todo.pop()
            if t in seen:
                continue
            seen.add(t)
            for c, _ in g.consumers(t):
                if c.op == "MatMul":
                    out.append(n)
                    todo = []
                    break
                if c.op in _PROB_MOVES:
                    todo.extend(c.outputs)
    return out


def attention_notes(g: Graph, outcomes: dict[str, RuleOutcome]) -> list[dict[str, str]]:
    """report.json ``passes[].notes`` of an attention left unfused: the rule, the closest candidate
    op and the first check that failed there (one note per rule, not per layer)."""
    left = unfused_attention(g)
    if not left:
        return []
    out = outcomes.get("attention")
    m = out.closest_miss if out is not None else None
    return [{"rule": "attention", "where": m.node if m else left[0].name,
             "check": (m.reason if m else "no QKᵀ → softmax → ·V chain around this Softmax") +
             f" ({len(left)} attention softmax(es) left unfused)"}]


def explain_outcome(name: str, out: RuleOutcome) -> str:
    m = out.closest_miss
    where = f"closest candidate {m.node} ({m.op}): {m.reason}" if m else "no candidate op in the graph"
    if out.fired:
        return f"fusion rule {name!r} fired {out.fired}x; {('missed elsewhere, ' + where) if m else 'no misses'}"
    return f"fusion rule {name!r} did not fire; {where}"


class FusionPass(Pass):
    """Apply fusion rules (all of :data:`ORDER` unless ``rules`` says which)."""

    name = "fuse"
    default_rules: tuple[str, ...] = ORDER
    PARAMS = ("rules", "explain", "cost_gate", "hardware", "target")

    def check_params(self) -> None:
        unknown = sorted(set(self.params) - set(self.PARAMS))
        if unknown:
            raise ConfigError(f"pass {self.name!r} does not take {unknown}; its parameters are "
                              f"{', '.join(self.PARAMS)}. Fix pipeline.passes.")
        rules = self.params.get("rules")
        if rules is not None:
            bad = [r for r in rules if r not in RULES]
            if bad or isinstance(rules, str):
                raise ConfigError(f"pass {self.name!r}: unknown fusion rule(s) {bad or rules}; rules are "
                                  f"{', '.join(RULES)}. Give rules as a list of these names.")
        target = self.params.get("target", "auto")
        if target not in TARGETS:
            raise ConfigError(f"pass {self.name!r}: target={target!r} is not one of {', '.join(TARGETS)}. "
                              f"Use auto (cpu forms when the hardware is a CPU), portable or cpu.")
        self.explanations: dict[str, str] = {}

    @property
    def target(self) -> str:
        """``portable`` or ``cpu`` (``auto`` resolved from the hardware the pass costs on)."""
        t = self.params.get("target", "auto")
        if t != "auto":
            return t
        hw = self._hardware()
        return "cpu" if getattr(hw, "kind", None) == "cpu" else "portable"

    @property
    def rule_names(self) -> tuple[str, ...]:
        names = tuple(self.params.get("rules") or self.default_rules)
        if self.target == "cpu":
            names = tuple(n for n in names if n not in CPU_SKIPS)
        return names

    def _hardware(self):
        ctx = getattr(self, "context", None)
        if self.params.get("hardware"):
            return hardware_by_name(str(self.params["hardware"]))
        if ctx is not None and ctx.hardware is not None:
            return ctx.hardware
        return hardware_by_name(DEFAULT_HARDWARE)

    def gate(self) -> CostGate | None:
        if not self.params.get("cost_gate", True):
            return None
        ctx = getattr(self, "context", None)
        points = tuple(ctx.points) if ctx is not None and ctx.points else DEFAULT_POINTS
        return CostGate(self._hardware(), points)

    def run(self, g: Graph) -> PassResult:
        explain = bool(self.params.get("explain", False))
        target = self.target
        stats, outcomes = run_rules(g, self.rule_names, gate=self.gate(), explain=explain)
        self.explanations = {k: explain_outcome(k, o) for k, o in outcomes.items()}
        if target == "cpu":
            for k in sorted(set(self.params.get("rules") or self.default_rules) & set(CPU_SKIPS)):
                self.explanations[k] = f"fusion rule {k!r} not run: target cpu ({CPU_SKIPS[k]})"
        changed = any(o.fired for o in outcomes.values())
        notes = attention_notes(g, outcomes) if "attention" in self.rule_names else []
        if target == "cpu":
            folds = fold_biases(g)
            masks = float_masks(g)
            if masks:
                folds["attention.float_mask"] = masks
            if folds:
                stats.update(folds)
                changed = True
            n_gemm, n_row = mark_gemm_epilogues(g)
            if n_gemm:
                stats["matmul_epilogue.gemm"] = n_gemm
            if n_row:
                stats["matmul_epilogue.bias_row"] = n_row
            changed = changed or bool(n_gemm or n_row)
        return PassResult(g, changed, stats, notes=notes)


class FuseAttention(FusionPass):
    name = "fuse_attention"
    default_rules = ("qkv_heads", "attention", "attention_gqa", "rotary_cache", "rotary", "rotary_partial",
                     "rotary_layout", "attention_layout")


class FuseNorms(FusionPass):
    name = "fuse_norms"
    default_rules = ("layer_norm", "rms_norm", "residual_norm")


class FuseGemm(FusionPass):
    name = "fuse_gemm"
    default_rules = ("gelu", "merge_gate_up", "swiglu", "merge_qkv", "matmul_epilogue")


class AnnotateRotary(FusionPass):
    name = "annotate_rotary"
    default_rules = ("rotary_cache", "rotary", "rotary_partial", "rotary_layout")


class FuseEagerAttention(Pass):
    """Registered as ``fuse_eager_attention``: a declared-causal decoder with eager attention
    (matmul/softmax instead of SDPA) gets ``Attention(is_causal=1)`` ops, which lift_kv_cache
    needs. Not cost gated; a no-op for models that already have Attention ops or are not causal."""

    name = "fuse_eager_attention"

    def run(self, g: Graph) -> PassResult:
        if not g.meta.get("causal") or g.meta.get("kv_tensors"):
            return PassResult(g, False, {})
        s = fuse_eager_attention(g)
        return PassResult(g, bool(s), s)


PASSES = {p.name: p for p in (FusionPass, FuseAttention, FuseNorms, FuseGemm, AnnotateRotary, FuseEagerAttention)}


def fuse_eager_attention(g: Graph) -> dict[str, int]:
    """At import of a causal decoder with eager attention (matmul/softmax instead of SDPA): fuse
    every attention into ``Attention(is_causal=1)`` so that the KV cache can be lifted. Not cost
    gated (the cache needs it). A graph that already has Attention ops is left alone. Raises
    :class:`compiler.ir.ops.UnsupportedOpError` when no attention could be fused, with the reason."""
    if any(n.op in ("Attention", "LatentAttention") for n in g):
        return {}
    rule = attention_rule("attention", require_causal=True, cost_gated=False)
    stats, outcomes = run_rules(g, ["attention"], gate=None, rules={"attention": rule})
    if not stats.get("attention"):
        raise UnsupportedOpError(
            f"the causal decoder has no scaled_dot_product_attention and its eager attention could "
            f"not be fused into an Attention op, which the KV cache needs: "
            f"{explain_outcome('attention', outcomes['attention'])}. Import it with "
            f"model.attn_implementation=sdpa where the family has an SDPA attention, or cost it "
            f"without a KV cache with pipeline=none.")
    return stats


__all__ = ["RULES", "ORDER", "PASSES", "FusionPass", "FuseAttention", "FuseNorms", "FuseGemm",
           "AnnotateRotary", "FuseEagerAttention", "fuse_eager_attention", "run_rules", "explain_outcome", "Rule", "Match",
           "Plan", "MatchResult", "CostGate"]
