"""Frontends: models into the IR.

Owns: the torch importer (``torch_export.py``: ``torch.export`` → aten → IR, demand-driven; its
translation context and handler registry in ``aten_context.py``, the handlers by kind in
``aten_ops.py``, ``aten_core.py`` and ``aten_data.py``), the
ONNX-file importer (``onnx_import.py``) and its safety checks on untrusted files (``safety.py``),
building models from ``conf/model/*.yaml`` (``models.py``: transformers configs on the meta device
or with seeded weights, MiniLM, any ``nn.Module``), layer stacking for cost-only imports
(``stacking.py``), the MoE experts torch op (``moe.py``), measurements on the source model
(``measure.py``) and the one module that spells model-family config keys (``families.py``).

May import: :mod:`compiler.ir`, :mod:`compiler.perf` and the base modules.
"""
