"""``quant=auto``: a format per layer, chosen by the cost model under an accuracy budget.

Mixed precision the way a deployment engineer would do it by hand, automated:

1. **Units.** Every linear layer (``passes.quant.passes.linear_sites``), every embedding table
   (``embedding_tables``; a tied LM head is one unit with its table: it shares the quantized
   bytes) and every MoE layer's experts (``expert_sites``: its grouped expert GEMM weights, one
   format for the layer — what a fused MoE kernel runs). ``quant.exclude`` patterns keep units out.
2. **Formats.** ``quant.formats`` (``auto``: the hardware's — int8 weight-only ``w8a16``, ``w8a8``
   (dynamic int8 activations), int4 in groups of 128 and 32 (uint4 + zero point); on a GPU also
   ``fp16`` / ``bf16`` for an fp32 model and ``fp8`` where it has FP8 math). Tables take the weight-only ones (blocks along each
   row). Every unit may also stay as it is (``keep``).
3. **Sensitivity** (measured, cached): each unit quantized *alone* in each format, the model run on
   the evaluation split of the evaluation text through the pass context's evaluator — one
   onnxruntime session per format whose weights are overridable inputs and whose W8A8 / FP8
   operands pass through switchable fake quantizers (``compiler/backend/accuracy.py``
   ``score_variants``). The accuracy stage's metrics: embedding cosine, or KL and top-1 agreement
   of the next-token distributions. Cached per model (a digest of the graph and its weights),
   evaluation text and format under ``quant.sensitivity.cache``.
4. **Cost** (predicted): the cost model (``compiler.perf.cost.CostModel``) on copies of the graph
   annotated with each format, per op: the request time of the unit's ops — prefill at the
   workload's batch × prompt, plus ``gen_len`` decode steps for a decoder — and its stored bytes.
   Op costs are independent, so a unit's gain in a format is exact under the model.
5. **Search.** Minimize the predicted request time (``quant.objective=time``; ties broken by stored
   bytes) or the stored bytes (``memory``; ties by time) subject to the sum of the units' drops ≤ the
   budget (``quant.max_accuracy_drop``, else ``gate.max_accuracy_drop``, else 0.01, in
   ``quant.metric``'s unit) — a multiple-choice knapsack solved exactly by dynamic programming on
   the drop discretized to 1/1000 of the budget (rounded up). Per-layer drops do not add exactly, so
   the solutions at several budgets (and each uniform format) are *measured* end to end, all units
   quantized at once; the chosen one is the best measured candidate within the budget.
6. **Apply**: the real quantization (``Quantize.apply``; GPTQ with ``quant.method=gptq``).

Everything lands in ``graph.meta["quantization"]["auto"]`` (report.json ``compression.auto``):
per unit its format, predicted gain (per phase) and stored bytes, the sensitivities, and every
candidate with predicted time / bytes and measured accuracy, the Pareto front marked.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from compiler.errors import ConfigError
from compiler.ir import Graph, op_layers
from compiler.ir.ops import Classifier
from compiler.perf.cost import CostModel
from compiler.perf.hardware import hardware_by_name
from passes.base import PassResult, evaluator
from passes.quant.blocks import block_type
from passes.quant.config import SensitivityConfig
from passes.quant.formats import quantize_rtn
from passes.quant.passes import (FLOAT16, SCHEMES, LayerScheme, Quantize, Site, TableSite, _ort_block,
                                 embedding_tables, expert_sites, linear_sites, quantize_experts, round_float16)

log = logging.getLogger("rooftop.quant")

KEEP = "keep"
#: format name -> LayerScheme fields (the configured activation mode / accuracy level fill the rest)
FORMATS: dict[str, dict[str, Any]] = {
    "fp16": {"scheme": "fp16", "symmetric": True},
    "bf16": {"scheme": "bf16", "symmetric": True},
    "w8a16": {"scheme": "w8a16", "symmetric": True},
    "w8a8": {"scheme": "w8a8", "symmetric": True},
    "w4a16_g128": {"scheme": "w4a16", "group_size": 128, "symmetric": False},
    "w4a16_g64": {"scheme": "w4a16", "group_size": 64, "symmetric": False},
    "w4a16_g32": {"scheme": "w4a16", "group_size": 32, "symmetric": False},
    "fp8": {"scheme": "fp8", "symmetric": True},
}
METRICS = {"cosine": ("cos", "embedding cosine"), "top1": ("top1", "top-1 agreement"), "kl": ("kl", "KL (nats)")}
DEFAULT_DROP = 0.01
BINS = 1000
BUDGET_STEPS = (0.125, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0)


def hardware_formats(hw, model_dtype: str = "float32") -> list[str]:
    """The candidate formats on ``hw``: int8 weight-only, W8A8, int4 in groups of 128 and 32; on a
    GPU also 16-bit floats for an fp32 model (fp16, and bf16 where it has bf16 math) and FP8 where it
    has FP8 math (not on a CPU: onnxruntime runs fp16 GEMMs slower than fp32 there and simulates FP8)."""
    gpu = hw is not None and getattr(hw, "kind", "") != "cpu"
    out = []
    if gpu and model_dtype == "float32":
        out += [f for f in ("fp16", "bf16") if hw.supports(f)]
    out += ["w8a16", "w8a8", "w4a16_g128", "w4a16_g32"]
    if gpu and hw.supports("fp8"):
        out.append("fp8")
    return out


def drop_of(metric: str, score: Mapping[str, float]) -> float:
    """The drop in the metric's unit: 1 − cosine, 1 − top-1, or the KL itself."""
    key = METRICS[metric][0]
    return float(score[key]) if key == "kl" else 1.0 - float(score[key])


@dataclasses.dataclass
class Unit:
    """One decision of the search: a linear layer's weight, an embedding table (with its tied
    heads), or a MoE layer's experts (all its grouped expert GEMM weights, one format). ``ops``: the ops whose predicted time the format changes."""

    key: str
    kind: str                  # linear | embedding
    ops: list[str]
    formats: list[str]
    site: Site | None = None
    table: TableSite | None = None
    layer: int | None = None
    block: str = ""
    weights: tuple = ()        # experts: every stacked expert weight of the MoE layer (one decision)

    @property
    def params(self) -> tuple:
        return self.weights or (self.key,)


class QuantizeAuto(Quantize):
    """Registered as ``quantize_auto`` (``quant=auto``; module docstring)."""

    name = "quantize_auto"
    INTERNAL = Quantize.INTERNAL + ("accuracy_text",)

    def check_scheme(self) -> None:
        if self.scheme != "auto":
            raise ConfigError(f"quantize_auto: scheme={self.scheme!r}; it is quant=auto's pass.")

    def check_more(self, p: Mapping) -> None:
        self.objective = str(p["objective"])
        if self.objective not in ("time", "memory"):
            raise ConfigError(f"quant.objective={self.objective!r}: use time or memory.")
        self.metric_cfg = str(p["metric"])
        if self.metric_cfg not in ("auto", *METRICS):
            raise ConfigError(f"quant.metric={self.metric_cfg!r}: use auto, cosine, top1 or kl.")
        self.max_drop = p.get("max_accuracy_drop")
        self.gate_drop = p.get("gate_max_accuracy_drop")
        if self.max_drop is None and self.gate_drop is not None and self.metric_cfg == "kl":
            raise ConfigError("quant.metric=kl needs quant.max_accuracy_drop (in nats): gate.max_accuracy_drop is in "
                              "the accuracy stage's metric (top-1 agreement for a causal LM). Set "
                              "quant.max_accuracy_drop=0.01, or quant.metric=auto.")
        fmts = list(p.get("formats") or ["auto"])
        bad = [f for f in fmts if f != "auto" and f not in FORMATS]
        if bad:
            raise ConfigError(f"quant.formats: {bad} are not formats quant=auto knows; use auto or names from "
                              f"{', '.join(FORMATS)}.")
        self.formats_cfg = fmts
        if self.method not in ("rtn", "gptq"):
            raise ConfigError(f"quant=auto takes quant.method=rtn or gptq (got {self.method!r}): SmoothQuant / AWQ "
                              f"rescale layers jointly, which a per-layer choice cannot.")
        sens = p.get("sensitivity") or {}
        self.sensitivity = sens if isinstance(sens, SensitivityConfig) else SensitivityConfig(**dict(sens))
        self.workload = dict(p.get("workload") or {})
        self.accuracy_text = p.get("accuracy_text")

    # -- the pieces --------------------------------------------------------------------------
    def scheme_of(self, fmt: str) -> LayerScheme:
        """The LayerScheme of a format name; ``quant.symmetric`` (when set) picks int4's symmetry."""
        f = FORMATS[fmt]
        sym = f["symmetric"]
        if f["scheme"] == "w4a16" and self.p.get("symmetric") is not None:
            sym = bool(self.p["symmetric"])
        return LayerScheme(scheme=f["scheme"], group_size=f.get("group_size", self.group_size), symmetric=sym,
                           activations=self.activations, accuracy_level=self.accuracy_level)

    def formats(self) -> list[str]:
        hw = getattr(self.context, "hardware", None)
        out: list[str] = []
        for f in self.formats_cfg:
            for x in (hardware_formats(hw, self.model_dtype) if f == "auto" else [f]):
                if x not in out:
                    out.append(x)
        return out

    model_dtype = "float32"

    def units(self, g: Graph) -> tuple[list[Unit], list[Site], list[TableSite], dict[str, str]]:
        dts = [p.type.dtype for p in g.params.values() if p.type.rank == 2 and not p.annotations.get("const")]
        self.model_dtype = max(set(dts), key=dts.count) if dts else "float32"
        sites = linear_sites(g, self.exclude)
        tables = embedding_tables(g, self.exclude)
        fmts = self.formats()
        pos, n_layers = op_layers(g)
        units, kept = [], {}
        shared = {h.name: t for t in tables if not t.reason for h in t.heads}
        for t in tables:
            if t.reason:
                kept[t.param] = t.reason
                continue
            k = g.params[t.param].type.shape[1]
            ok = []
            for f in fmts:
                sch = self.scheme_of(f)
                spec = sch.table_spec(k) if SCHEMES[sch.scheme]["act"] is None else None
                if spec is not None and _ort_block(spec.group_size) and not k % spec.group_size:
                    ok.append(f)
            if not ok:
                kept[t.param] = "no weight-only format of quant.formats fits its rows"
                continue
            units.append(Unit(t.param, "embedding", [h.name for h in t.heads], ok, table=t,
                              layer=None, block="head" if t.heads else "embedding"))
        for s in sites:
            if s.reason:
                kept[s.weight] = s.reason
                continue
            if s.node.name in shared:
                continue            # the tied head goes with its table
            if s.transposed_from is not None:
                kept[s.transposed_from + ".T"] = ("a tied head that cannot share its table (quant=auto does not make "
                                                  "an own copy)")
                continue
            lay = pos.get(s.node.name)
            units.append(Unit(s.weight, "linear", [s.node.name], list(fmts), site=s,
                              layer=lay if lay is not None and 0 <= lay < n_layers else None,
                              block=block_type(g, s.node)))
        by_layer: dict = {}
        for s in self.experts(g):
            if s.reason:
                kept[s.weight] = s.reason
                continue
            lay = pos.get(s.node.name)
            by_layer.setdefault(lay, []).append(s)
        for lay, group in by_layer.items():
            ks = [g.params[s.weight].type.shape[1] for s in group]
            ok = [f for f in fmts if FORMATS[f]["scheme"] in FLOAT16 or "group_size" not in FORMATS[f]
                  or all(isinstance(k, int) and not k % FORMATS[f]["group_size"] for k in ks)]
            units.append(Unit(group[0].weight, "experts", [c.name for s in group for c, i in g.consumers(s.weight)
                                                           if c.op == "MoEMatMul" and i == 1],
                              ok, layer=lay if lay is not None and 0 <= lay < n_layers else None, block="mlp",
                              weights=tuple(s.weight for s in group)))
        return units, sites, tables, kept

    def experts(self, g: Graph):
        return expert_sites(g, self.exclude)

    def assignment(self, units: Sequence[Unit], choice: Mapping[str, str]) -> dict[str, LayerScheme]:
        return {w: self.scheme_of(choice[u.key]) for u in units if choice.get(u.key, KEEP) != KEEP
                for w in u.params}

    def _dequantized(self, g: Graph, u: Unit, fmt: str, key: str | None = None):
        """A callable giving ``u``'s weight (``key``: one of an experts unit's) in ``fmt``,
        dequantized (RTN, as the sensitivity is measured)."""
        sch = self.scheme_of(fmt)

        def make():
            w = np.asarray(g.params[key or u.key].data, np.float32)
            if sch.scheme in FLOAT16:
                return round_float16(w, FLOAT16[sch.scheme])
            if u.kind == "experts":
                return quantize_experts(w, sch.spec()).dequantize()
            if u.kind == "embedding":
                return quantize_rtn(w, sch.table_spec(w.shape[1]), reduce_axis=1).dequantize()
            return quantize_rtn(w, sch.spec()).dequantize()
        return make

    def variant(self, g: Graph, choice: Mapping[str, str], units: Sequence[Unit]) -> dict[str, Any]:
        """What the evaluator runs for ``choice`` (unit → format): weights and fake-quantized operands."""
        w, act = {}, {}
        for u in units:
            f = choice.get(u.key, KEEP)
            if f == KEEP:
                continue
            for k in u.params:
                w[k] = self._dequantized(g, u, f, k)
            a = SCHEMES[FORMATS[f]["scheme"]]["act"]
            if a is not None and u.kind == "linear":
                act[(u.site.node.name, 0)] = "float8e4m3fn" if a == "fp8" else "uint8"
            elif a == "fp8" and u.kind == "experts":     # as the artifact runs it (W8A8 experts: float activations)
                act.update({(o, 0): "float8e4m3fn" for o in u.ops})
        return {"weights": w, "activations": act}

    # -- cost ----------------------------------------------------------------------------------
    def _points(self, g: Graph) -> tuple[list[tuple[int, int, int, str]], list[float]]:
        wl = {"batch": 1, "prompt_len": 128, "gen_len": 128, "context_len": None, **self.workload}
        b, s, gen = int(wl["batch"]), int(wl["prompt_len"]), int(wl["gen_len"])
        ctx = int(wl["context_len"] or s)
        if str(g.meta.get("task", "causal_lm")) == "causal_lm":
            return [(b, s, 0, "prefill"), (b, 1, ctx, "decode")], [1.0, float(gen)]
        return [(b, s, 0, "prefill")], [1.0]

    def _op_times(self, g: Graph, hw, ops: set[str]) -> dict[str, dict[str, float]]:
        cm = CostModel(g, hw)
        idx = [i for i, it in enumerate(cm.items) if it.name in ops]
        out: dict[str, dict[str, float]] = {cm.items[i].name: {} for i in idx}
        for b, s, p, ph in self._points(g)[0]:
            t = cm.evaluate(b, s, p, ph)["time"][:, 0]
            for i in idx:
                out[cm.items[i].name][ph] = float(t[i])
        return out

    def costs(self, g: Graph, units: Sequence[Unit], sites, tables) -> tuple[dict, dict, dict]:
        """Per unit and option: predicted time per phase of its ops, stored bytes; and the whole
        graph's totals as it is (keep)."""
        hw = getattr(self.context, "hardware", None) or hardware_by_name("a100_80g")
        ops = {o for u in units for o in u.ops}
        weights = {u.key for u in units}
        times: dict[str, dict[str, dict[str, float]]] = {u.key: {} for u in units}
        nbytes: dict[str, dict[str, float]] = {u.key: {} for u in units}

        def read(h: Graph, fmt: str, only: set[str]):
            t = self._op_times(h, hw, ops)
            cls = Classifier(h)
            for u in units:
                if u.key not in only:
                    continue
                times[u.key][fmt] = {ph: sum(t.get(o, {}).get(ph, 0.0) for o in u.ops) for ph in self._phases(h)}
                nbytes[u.key][fmt] = float(sum(cls.weight_bytes(k) for k in u.params))
        read(g, KEEP, weights)
        for f in self.formats():
            todo = [u for u in units if f in u.formats]
            if not todo:
                continue
            h = g.copy()
            self.apply(h, [s for s in linear_sites(h, self.exclude)], embedding_tables(h, self.exclude),
                       self.assignment(todo, {u.key: f for u in todo}), annotate_only=True,
                       experts=self.experts(h))
            read(h, f, {u.key for u in todo})
        cm = CostModel(g, hw)
        totals = {ph: cm.totals(b, s, p, ph)["time"] for b, s, p, ph in self._points(g)[0]}
        return times, nbytes, {"time": totals, "bytes": float(sum(Classifier(g).weight_bytes(p) for p in g.params
                                                                  if not g.params[p].annotations.get("const")))}

    def _phases(self, g: Graph) -> list[str]:
        return [ph for *_, ph in self._points(g)[0]]

    def request_time(self, g: Graph, per_phase: Mapping[str, float]) -> float:
        pts, mult = self._points(g)
        return float(sum(m * per_phase.get(ph, 0.0) for (*_, ph), m in zip(pts, mult)))

    # -- sensitivity ---------------------------------------------------------------------------
    def digest(self, g: Graph, units: Sequence[Unit]) -> str:
        """The model as the sensitivities see it: every op (kind, operands), every weight (values),
        the evaluation text and sample counts — what the cached measurements depend on."""
        h = hashlib.blake2b(digest_size=20)
        for n in g.topo_order():
            h.update(f"{n.name}|{n.op}|{','.join(n.inputs)}|{sorted(n.attrs.items())!r}\n".encode())
            if "kv_quant" in n.annotations:
                kq = n.annotations["kv_quant"]
                h.update(np.asarray(kq.k_scale).tobytes() + np.asarray(kq.v_scale).tobytes())
        for name in sorted(g.params):
            p = g.params[name]
            h.update(f"{name}|{p.type}\n".encode())
            if p.data is not None:
                h.update(np.ascontiguousarray(p.data).tobytes())
        text = self.accuracy_text
        if text and os.path.isfile(str(text)):
            with open(str(text), "rb") as f:
                h.update(f.read())
        h.update(json.dumps({"samples": int(self.sensitivity.samples), "seq_len": int(self.sensitivity.seq_len),
                             "tokenizer": str((self.tokenizer_source or {}).get("source", "")),
                             "text": "default" if not text else "file", "activations": self.activations,
                             "level": self.accuracy_level, "symmetric": self.p.get("symmetric"),
                             "group_size": self.group_size}, sort_keys=True).encode())
        return h.hexdigest()

    def _cache_path(self, digest: str, name: str) -> str | None:
        c = self.sensitivity.cache
        if not c:
            return None
        return os.path.join(os.path.expanduser(str(c)), digest, f"{name}.json")

    def _score(self, g: Graph, variants: list, reference: Graph | None) -> list[dict[str, float]]:
        return evaluator("quant=auto (sensitivity)").score(
            g, variants, samples=int(self.sensitivity.samples), seq_len=int(self.sensitivity.seq_len),
            tokenizer_source=self.tokenizer_source, reference=reference, text=self.accuracy_text)

    def sensitivities(self, g: Graph, units: Sequence[Unit], reference: Graph | None
                      ) -> tuple[dict[str, float], dict[str, dict[str, dict[str, float]]]]:
        """The baseline score (nothing quantized) and per format per unit the score with that
        unit alone in that format — from the cache when it has them."""
        digest = self.digest(g, units)
        out: dict[str, dict[str, dict[str, float]]] = {}
        base = self._cached(digest, "baseline")
        if base is None:
            base = self._score(g, [{"weights": {}, "activations": {}}], reference)[0]
            self._store(digest, "baseline", base)
        for f in self.formats():
            todo = [u for u in units if f in u.formats]
            have = self._cached(digest, f) or {}
            missing = [u for u in todo if u.key not in have]
            if missing:
                log.info("quant=auto: measuring %d layers in %s", len(missing), f)
                got = self._score(g, [self.variant(g, {u.key: f}, units) for u in missing], reference)
                have.update({u.key: s for u, s in zip(missing, got)})
                self._store(digest, f, have)
            out[f] = {u.key: have[u.key] for u in todo}
        return base, out

    def _cached(self, digest: str, name: str):
        path = self._cache_path(digest, name)
        if path and os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    return json.load(f)
            except (OSError, ValueError):
                return None
        return None

    def _store(self, digest: str, name: str, data) -> None:
        path = self._cache_path(digest, name)
        if not path:
            return
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(data, f, sort_keys=True)
            os.replace(tmp, path)
        except OSError as e:     # a read-only cache slows the next run down, nothing else
            log.warning("quant=auto: cannot write the sensitivity cache %s (%s)", path, e)

    # -- search --------------------------------------------------------------------------------
    def solve(self, units: Sequence[Unit], cost: Mapping[str, Mapping[str, float]],
              second: Mapping[str, Mapping[str, float]], drop: Mapping[str, Mapping[str, float]],
              budget: float) -> dict[str, str]:
        """Minimize Σ cost (ties: Σ second) with Σ drop ≤ budget: multiple-choice knapsack by
        dynamic programming over the drop in :data:`BINS` steps of the budget (drops rounded up,
        so a solution never exceeds the budget under the additive model)."""
        if budget <= 0:
            return {u.key: KEEP for u in units}
        tot1 = sum(abs(cost[u.key][KEEP]) for u in units) or 1.0
        tot2 = sum(abs(second[u.key][KEEP]) for u in units) or 1.0
        eps = 1e-6 * tot1 / tot2
        inf = float("inf")
        best = np.full(BINS + 1, inf)
        best[0] = 0.0
        picks = []
        for u in units:
            opts = [KEEP] + list(u.formats)
            new = np.full(BINS + 1, inf)
            arg = np.zeros(BINS + 1, np.int16)
            for j, o in enumerate(opts):
                c = cost[u.key][o] + eps * second[u.key][o]
                d = 0 if o == KEEP else int(math.ceil(max(drop[u.key][o], 0.0) / budget * BINS - 1e-9))
                if d > BINS:
                    continue
                cand = np.full(BINS + 1, inf)
                cand[d:] = best[:BINS + 1 - d] + c
                better = cand < new
                new[better] = cand[better]
                arg[better] = j
            best = new
            picks.append((opts, arg))
        b = int(np.argmin(best))
        choice: dict[str, str] = {}
        for u, (opts, arg) in zip(reversed(units), reversed(picks)):
            j = int(arg[b])
            choice[u.key] = opts[j]
            if opts[j] != KEEP:
                b -= int(math.ceil(max(drop[u.key][opts[j]], 0.0) / budget * BINS - 1e-9))
        return choice

    # -- the pass ------------------------------------------------------------------------------
    def run(self, g: Graph) -> PassResult:
        if not g.has_weights():
            raise ConfigError("quant=auto measures each layer's accuracy on text, and this model has meta weights "
                              "(no values). Use model.weights=random (or a model with real weights), or a fixed "
                              "scheme (quant=w4a16, w8a8, …) to price formats without weights.")
        task = str(g.meta.get("task", "causal_lm"))
        metric = self.metric_cfg if self.metric_cfg != "auto" else ("top1" if task == "causal_lm" else "cosine")
        if metric == "cosine" and task == "causal_lm":
            raise ConfigError("quant.metric=cosine is the embedding models' metric; for a causal LM use top1 or kl.")
        if metric in ("top1", "kl") and task != "causal_lm":
            raise ConfigError(f"quant.metric={metric} needs a causal LM; this model's task is {task!r}: use cosine.")
        budget = float(self.max_drop if self.max_drop is not None else
                       self.gate_drop if self.gate_drop is not None else DEFAULT_DROP)
        budget_src = ("quant.max_accuracy_drop" if self.max_drop is not None else
                      "gate.max_accuracy_drop" if self.gate_drop is not None else f"default {DEFAULT_DROP}")
        units, sites, tables, kept = self.units(g)
        if not units:
            raise ConfigError("quant=auto found no layer to quantize (every linear layer and embedding is excluded by "
                              "quant.exclude); remove patterns from quant.exclude.")
        # the float-cache model is the reference when the KV cache is quantized already (its drop is the baseline)
        reference = None
        if any("kv_quant" in n.annotations for n in g):
            reference = g.copy()
            for n in reference:
                n.annotations.pop("kv_quant", None)
        base_score, sens = self.sensitivities(g, units, reference)
        d0 = drop_of(metric, base_score)
        drop = {u.key: {f: max(drop_of(metric, sens[f][u.key]) - d0, 0.0) for f in u.formats} for u in units}
        times, nbytes, totals = self.costs(g, units, sites, tables)
        req = {u.key: {o: self.request_time(g, times[u.key][o]) for o in [KEEP] + u.formats} for u in units}
        primary, second = (req, nbytes) if self.objective == "time" else (nbytes, req)
        avail = budget - d0
        # candidates: the knapsack at several budgets, and each format on every unit it fits
        cands: list[tuple[str, dict[str, str]]] = []
        for k in BUDGET_STEPS:
            cands.append((f"search @ {k:g}× budget", self.solve(units, primary, second, drop, avail * k)))
        for f in self.formats():
            cands.append((f"uniform {f}", {u.key: (f if f in u.formats else KEEP) for u in units}))
        seen, uniq = {}, []
        for label, ch in cands:
            key = tuple(sorted(ch.items()))
            if key in seen:
                seen[key]["labels"].append(label)
                continue
            seen[key] = {"labels": [label], "choice": ch}
            uniq.append(seen[key])
        scores = self._score(g, [self.variant(g, c["choice"], units) for c in uniq], reference)
        base_t = self.request_time(g, totals["time"])
        records = []
        for c, sc in zip(uniq, scores):
            ch = c["choice"]
            t = base_t - sum(req[u.key][KEEP] - req[u.key][ch[u.key]] for u in units)
            m = totals["bytes"] - sum(nbytes[u.key][KEEP] - nbytes[u.key][ch[u.key]] for u in units)
            pred = d0 + sum(drop[u.key][ch[u.key]] for u in units if ch[u.key] != KEEP)
            records.append({"name": c["labels"][0], "also": c["labels"][1:], "predicted_time_s": t,
                            "predicted_weight_bytes": int(round(m)), "predicted_drop": pred,
                            "measured_drop": drop_of(metric, sc), "measured": sc,
                            "formats": _summary(ch), "feasible": drop_of(metric, sc) <= budget + 1e-12,
                            "_choice": ch})
        obj = "predicted_time_s" if self.objective == "time" else "predicted_weight_bytes"
        alt = "predicted_weight_bytes" if self.objective == "time" else "predicted_time_s"
        feasible = [r for r in records if r["feasible"]]
        if not feasible:
            raise ConfigError(f"quant=auto: no candidate meets the accuracy budget {budget:g} ({METRICS[metric][1]} drop, "
                              f"{budget_src}) — even the smallest measured drop is "
                              f"{min(r['measured_drop'] for r in records):.4g}. Raise quant.max_accuracy_drop, or "
                              f"exclude sensitive layers with quant.exclude.")
        chosen = min(feasible, key=lambda r: (r[obj], r[alt], r["measured_drop"]))
        crit = (obj, alt, "measured_drop")      # Pareto in the objective, the tie-breaker and the drop
        for r in records:
            r["pareto"] = not any(o is not r and all(o[k] <= r[k] for k in crit) and any(o[k] < r[k] for k in crit)
                                  for o in records)
            r["chosen"] = r is chosen
        choice = chosen["_choice"]
        if all(f == KEEP for f in choice.values()):
            log.warning("quant=auto: no format fits a %s drop of %g (%s): every layer stays as it is",
                        METRICS[metric][1], budget, budget_src)
        for r in records:
            r.pop("_choice")
        layers = []
        for u in units:
            f = choice[u.key]
            keep_t, f_t = times[u.key][KEEP], times[u.key][f]
            shp = [int(d) for d in g.params[u.key].type.shape]
            layers.append({
                "weight": u.key, "kind": u.kind, "ops": list(u.ops), "layer": u.layer, "block": u.block, "format": f,
                "shape": shp if u.kind != "embedding" else shp[::-1],  # [K, N] ([E, K, N]) of the GEMM (a table's head: [K, V])
                **({"weights": list(u.params)} if u.kind == "experts" else {}),
                "predicted_time_s": {"keep": req[u.key][KEEP], "chosen": req[u.key][f]},
                "predicted_gain_s": req[u.key][KEEP] - req[u.key][f],
                "predicted_gain_by_phase_s": {ph: keep_t.get(ph, 0.0) - f_t.get(ph, 0.0) for ph in keep_t},
                # the cost model's time of the layer's ops in every option it had (the per-layer evidence
                # for a choice: tests/bench/bench_quant.py --per-layer sets it beside measured times)
                "predicted_time_by_format_s": {fmt: dict(times[u.key][fmt]) for fmt in (KEEP, *u.formats)
                                               if fmt in times[u.key]},
                "stored_bytes": {"keep": int(round(nbytes[u.key][KEEP])), "chosen": int(round(nbytes[u.key][f]))},
                "drop": {fmt: drop[u.key][fmt] for fmt in u.formats}})
        auto = {"objective": self.objective, "metric": metric, "metric_name": METRICS[metric][1],
                "max_accuracy_drop": budget, "budget_source": budget_src, "formats": self.formats(),
                "baseline_drop": d0, "chosen": chosen["name"], "predicted_time_s": chosen["predicted_time_s"],
                "predicted_time_keep_s": base_t, "predicted_weight_bytes": chosen["predicted_weight_bytes"],
                "weight_bytes_keep": int(round(totals["bytes"])), "measured_drop": chosen["measured_drop"],
                "formats_chosen": chosen["formats"], "layers": layers, "candidates": records, "kept": kept,
                "sensitivity": {"samples": int(self.sensitivity.samples), "seq_len": int(self.sensitivity.seq_len),
                                "how": "each layer alone in each format (RTN, dequantized), onnxruntime on the "
                                       "evaluation split; W8A8/FP8 activations fake-quantized per tensor at run time",
                                "baseline": base_score},
                "workload_points": [list(p) for p in self._points(g)[0]], "phase_weights": self._points(g)[1]}
        stats = self.apply(g, sites, tables, self.assignment(units, choice),
                           record={"auto": auto, "method": self.method}, experts=self.experts(g))
        stats.update({"units": len(units), "candidates": len(records),
                      "kept": sum(1 for u in units if choice[u.key] == KEEP)})
        return PassResult(g, True, stats)


def _summary(choice: Mapping[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for f in choice.values():
        out[f] = out.get(f, 0) + 1
    return dict(sorted(out.items()))


__all__ = ["QuantizeAuto", "FORMATS", "hardware_formats", "KEEP"]
