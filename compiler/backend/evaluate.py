"""The back end's :class:`compiler.ir.evaluate.Evaluator`: pieces of an IR graph emitted as ONNX
and run by onnxruntime (masks, calibration activations) or by ONNX's reference evaluator
(constant folding)."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnxruntime as ort
from onnx.reference import ReferenceEvaluator

from compiler.backend import accuracy
from compiler.backend.emit import subgraph_model
from compiler.errors import ConfigError


class OnnxEvaluator:
    """Evaluates IR subgraphs through ONNX (see :class:`compiler.ir.evaluate.Evaluator`)."""

    def constant(self, graph, node) -> list[np.ndarray] | None:
        srcs = [t for t in node.inputs if t]
        model = subgraph_model(graph, [node], node.outputs, params=srcs, name="fold")
        try:
            return [np.asarray(v) for v in ReferenceEvaluator(model).run(None, {})]
        except Exception:  # noqa: BLE001 - an op the reference evaluator cannot run is left unfolded
            return None

    def compile(self, graph, nodes: Sequence, outputs: Sequence[str], *, inputs: Sequence[str] = (),
                params: Sequence[str] = (), dim_sources: Mapping[str, tuple] | None = None
                ) -> tuple[list[str], Callable[[Mapping[str, np.ndarray]], list[np.ndarray]]]:
        model = subgraph_model(graph, list(nodes), list(outputs), inputs=list(inputs), params=list(params),
                               dim_sources=dim_sources, name="piece")
        names = [i.name for i in model.graph.input]
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = 1
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])

        def run(feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
            return [np.asarray(v) for v in sess.run(None, dict(feeds))]
        return names, run

    def activations(self, graph, tensors: Sequence[str], calibration: Any, tokenizer_source: Mapping | None,
                    consume: Callable[[str, np.ndarray], None]) -> int:
        src = getattr(calibration, "source", None)
        paras = accuracy.load_paragraphs(None if src in ("default", None, "") else src)
        tok = accuracy.make_tokenizer(tokenizer_source, accuracy.vocab_of(graph))
        seqs = accuracy.token_samples(accuracy.split(paras, "calibration"), tok, int(calibration.seq_len),
                                      int(calibration.samples))
        if not seqs:
            raise ConfigError("the calibration text produced no token sequence; use a longer "
                              "quant.calibration.source file.")
        accuracy.collect_activations(graph, tensors, seqs, consume)
        return len(seqs)

    def score(self, graph, variants: Sequence[Mapping[str, Any]], *, samples: int, seq_len: int,
              tokenizer_source: Mapping | None, reference=None, text: str | None = None) -> list[dict[str, float]]:
        tok = accuracy.make_tokenizer(tokenizer_source, accuracy.vocab_of(graph))
        return accuracy.score_variants(graph, variants, task=str(graph.meta.get("task", "causal_lm")), tokenizer=tok,
                                       paragraphs=accuracy.load_paragraphs(text), samples=samples, seq_len=seq_len,
                                       reference=reference)


__all__ = ["OnnxEvaluator"]
