"""Evaluating pieces of a graph: the interface passes use, implemented by the back end.

Some rewrites need values, not only shapes: constant folding computes a constant op's result, the
attention-mask analysis evaluates a mask subgraph at a few sizes to learn what it means, the
quantization calibration collects activations on text. The IR cannot run anything (it imports no
runtime), so a pass asks its :class:`passes.base.PassContext` for an :class:`Evaluator`; the driver
hands it :class:`compiler.backend.evaluate.OnnxEvaluator` (ONNX + onnxruntime / the ONNX
reference evaluator). The protocol below is the whole contract.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

Feeds = Mapping[str, np.ndarray]


class Evaluator(Protocol):
    def constant(self, graph, node) -> list[np.ndarray] | None:
        """The outputs of ``node`` whose operands are all constant parameters (with data), or
        None when it cannot be evaluated."""

    def compile(self, graph, nodes: Sequence, outputs: Sequence[str], *, inputs: Sequence[str] = (),
                params: Sequence[str] = (), dim_sources: Mapping[str, tuple] | None = None
                ) -> tuple[list[str], Callable[[Feeds], list[np.ndarray]]]:
        """A runnable piece of ``graph``: ``nodes`` (in order) computing ``outputs`` from the graph
        inputs ``inputs`` and the parameters ``params``; returns the names of the inputs it reads
        (symbolic dims may need e.g. ``input_ids``) and ``run(feeds) -> [output arrays]``."""

    def activations(self, graph, tensors: Sequence[str], calibration: Any, tokenizer_source: Mapping | None,
                    consume: Callable[[str, np.ndarray], None]) -> int:
        """Run ``graph`` on the calibration split of the evaluation text (``calibration``:
        samples, seq_len, source) and hand each tensor's activation, flattened to
        ``[rows, last_dim]``, to ``consume(name, array)``; returns the number of sequences run."""

    def score(self, graph, variants: Sequence[Mapping[str, Any]], *, samples: int, seq_len: int,
              tokenizer_source: Mapping | None, reference=None, text: str | None = None) -> list[dict[str, float]]:
        """Accuracy of variants of ``graph`` against ``reference`` (default: ``graph``) on the
        evaluation split of the evaluation text (``samples`` paragraphs of ``seq_len`` tokens). A
        variant is ``{"weights": {param: array}, "activations": {(op name, operand index): dtype}}``:
        parameters replaced (e.g. a layer's weights quantized and dequantized) and operands
        fake-quantized at run time (``uint8``: per-tensor dynamic int8; ``float8e4m3fn``). Per
        variant: ``cos`` (embedding models) or ``kl`` and ``top1`` (causal LMs), means over the
        samples."""


__all__ = ["Evaluator", "Feeds"]
