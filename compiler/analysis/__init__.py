"""Analysis: sections of the report computed from one run context, never mutating the graph.

Owns: the run context (``context.py``: :class:`RunContext`, the ``Section`` protocol); phases,
latency, memory, capacity with the SLO search and throughput versus batch (``phases.py``);
KV-cache capacity planning (``capacity.py``); tensor / pipeline / expert parallelism
(``parallel.py``); the continuous-batching serving simulation (``serving.py``); speculative
decoding (``speculative.py``); early exit (``early_exit.py``); MoE routing (``moe.py``); and the
compression sections (``compression.py``). Sections read the context only: no model imports, no
torch, no files.

May import: :mod:`compiler.ir`, :mod:`compiler.perf` and the base modules — no onnx, onnxruntime,
torch, transformers or Hydra.
"""
