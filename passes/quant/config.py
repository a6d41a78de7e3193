"""The parameter schemas of the compression passes: ``quant=`` (:class:`QuantConfig`) and
``sparsity=`` (:class:`SparsityConfig`) — the one place their defaults are written. The run
config (compiler/driver/config.py) types ``quant`` / ``sparsity`` with them, so Hydra checks the
``conf/quant/*.yaml`` and ``conf/sparsity/*.yaml`` files and command-line overrides against them;
the passes (passes/quant/passes.py) take a missing parameter's default from here."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional


@dataclass
class CalibrationConfig:
    """Calibration text of GPTQ / AWQ / SmoothQuant / SparseGPT / static scales."""
    samples: int = 8             # calibration paragraphs
    seq_len: int = 128           # tokens per paragraph
    source: str = "default"      # default: the shipped text; or a UTF-8 text file


@dataclass
class SensitivityConfig:
    """``quant=auto``'s per-layer sensitivity measurement: each layer quantized alone in each
    candidate format, the model run on the evaluation text (passes/quant/auto.py)."""
    samples: int = 8             # evaluation paragraphs per measurement
    seq_len: int = 128           # tokens per paragraph
    cache: Optional[str] = "~/.cache/rooftop/quant_sensitivity"   # per model and format; null: no cache


@dataclass
class QuantConfig:
    """``quant=`` none | auto | w8a16 | w4a16 | w8a8 | fp8 (conf/quant/*.yaml; passes/quant checks values)."""
    scheme: str = "none"
    group_size: int = 128        # int4 group along the reduction axis
    symmetric: Optional[bool] = None   # null: the scheme's (uint4 + zero point for w4a16; symmetric otherwise)
    method: str = "rtn"          # rtn | gptq | awq | smoothquant
    smooth_alpha: float = 0.5
    activations: str = "dynamic"  # dynamic | dynamic_per_token | static
    exclude: List[Any] = field(default_factory=lambda: ["embeddings", "lm_head"])
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    ort_accuracy_level: int = 4  # onnxruntime MatMulNBits: 0 exact .. 4 int8 activations
    # quant=auto (passes/quant/auto.py): a format per layer
    objective: str = "time"      # time (the cost model's request time) | memory (stored weight bytes)
    max_accuracy_drop: Optional[float] = None   # null: gate.max_accuracy_drop, else 0.01 (in metric's unit)
    metric: str = "auto"         # auto (the accuracy stage's: cosine for encoders, top-1 for decoders) | cosine | top1 | kl
    formats: List[Any] = field(default_factory=lambda: ["auto"])   # auto: the hardware's; or names (w4a16_g32, w8a8, ...)
    sensitivity: SensitivityConfig = field(default_factory=SensitivityConfig)


@dataclass
class SparsityConfig:
    """``sparsity=`` none | nm (conf/sparsity/*.yaml)."""
    scheme: str = "none"
    n: int = 2
    m: int = 4
    method: str = "magnitude"    # magnitude | sparsegpt
    cost_aware: bool = True
    targets: List[Any] = field(default_factory=lambda: ["attention", "mlp"])   # block types pruned
    exclude: List[Any] = field(default_factory=lambda: ["embeddings", "lm_head"])
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
