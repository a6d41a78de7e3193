"""Back end: the IR out to ONNX, and checks on what was emitted.

Owns: ONNX emission (``emit.py``, opset 23 / IR 10) with the lowering of non-standard and fused
ops (``lowering.py``) and the quantized linear forms (``quantized.py``); verification of the
emitted model against its source in onnxruntime (``verify.py``); the paged-KV numpy runtime
(``paged_runtime.py``); accuracy of a lossy artifact against its fp32 reference
(``accuracy.py``); and the :class:`compiler.ir.evaluate.Evaluator` implementation passes use to
evaluate subgraphs (``evaluate.py``).

May import: :mod:`compiler.ir`, :mod:`compiler.perf` and the base modules.
"""
