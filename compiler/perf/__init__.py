"""Performance: the hardware library and the roofline cost model.

Owns: the hardware schema and loader (``hardware.py``: ``conf/hardware/*.yaml`` validated by
OmegaConf structured configs, converted to SI), the per-op cost model (``cost.py``), the
per-class efficiency model and its fitter (``efficiency.py``), kernel families of quantized and
sparse GEMMs (``kernel_families.py``), collectives (``collectives.py``), MoE routing cost
(``moe.py``), memory totals (``memory.py``), the schedule and activation peak (``schedule.py``),
the translation of OmegaConf errors shared with the run config (``structured.py``), and the GPU
calibration tools and measurements (``calibration/``).

May import: :mod:`compiler.ir` and the base modules (``compiler.errors``, ``compiler.resources``)
— no onnx, onnxruntime, torch, transformers or Hydra (tests/test_layering.py checks it).
"""
