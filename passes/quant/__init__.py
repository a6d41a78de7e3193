"""Quantization and N:M sparsity: numpy reference numerics (formats, RTN, GPTQ, SparseGPT,
SmoothQuant, AWQ, N:M masks) and the ``quantize`` / ``prune_nm`` passes."""
from passes.quant.formats import (FP8_FORMATS, INT_FORMATS, QTensor, QuantError, QuantSpec,
                                  dynamic_quantize_linear, int_dtype, quantize_rtn)
from passes.quant.nm import nm_mask, nonzeros_per_group, prune_magnitude, satisfies_nm
from passes.quant.obs import Hessian, gptq, obs_compress, sparsegpt
from passes.quant.smooth import awq_scales, smoothquant_scales

__all__ = ["FP8_FORMATS", "INT_FORMATS", "QTensor", "QuantError", "QuantSpec", "dynamic_quantize_linear",
           "int_dtype", "quantize_rtn", "nm_mask", "nonzeros_per_group",
           "prune_magnitude", "satisfies_nm", "Hessian", "gptq", "obs_compress", "sparsegpt",
           "awq_scales", "smoothquant_scales"]
