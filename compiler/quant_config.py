"""Structured-config schemas of the ``quant=``, ``sparsity=`` and ``accuracy`` groups (for
compiler/config.py's RooftopConfig: ``quant: QuantConfig``, ``sparsity: SparsityConfig``,
``accuracy: AccuracyConfig``, and ``gate.min_accuracy`` / ``gate.max_accuracy_drop`` as
``Optional[float]``). Defaults equal ``conf/quant/none.yaml``, ``conf/sparsity/none.yaml`` and
the ``accuracy:`` block of ``conf/config.yaml``; the passes (passes/quant/passes.py) check values."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional


@dataclass
class CalibrationConfig:
    samples: int = 8             # calibration paragraphs (GPTQ / AWQ / SmoothQuant / SparseGPT / static scales)
    seq_len: int = 128           # tokens per paragraph
    source: str = "default"      # default: the shipped text; or a UTF-8 text file


@dataclass
class QuantConfig:
    """``quant=`` none | w8a16 | w4a16 | w8a8 | fp8."""
    scheme: str = "none"
    group_size: int = 128        # int4 group along the reduction axis
    symmetric: bool = True
    method: str = "rtn"          # rtn | gptq | awq | smoothquant
    smooth_alpha: float = 0.5
    activations: str = "dynamic"  # dynamic | dynamic_per_token | static
    exclude: List[Any] = field(default_factory=lambda: ["embeddings", "lm_head"])
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    ort_accuracy_level: int = 4  # onnxruntime MatMulNBits: 0 exact .. 4 int8 activations


@dataclass
class SparsityConfig:
    """``sparsity=`` none | nm."""
    scheme: str = "none"
    n: int = 2
    m: int = 4
    method: str = "magnitude"    # magnitude | sparsegpt
    cost_aware: bool = True
    targets: List[Any] = field(default_factory=lambda: ["attention", "mlp"])   # block types pruned
    exclude: List[Any] = field(default_factory=lambda: ["embeddings", "lm_head"])
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)


@dataclass
class AccuracyConfig:
    """The accuracy stage after a lossy pass (compiler/accuracy.py)."""
    enabled: Any = "auto"        # auto | false
    text: Optional[str] = None   # null: shipped text; or a UTF-8 file, one paragraph per line
    samples: Optional[int] = None
    seq_len: int = 128
