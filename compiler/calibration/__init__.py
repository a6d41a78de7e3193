"""Calibration of the cost model's per-op-class efficiencies from GPU measurements.

``tools/calibrate_gpu.py`` measures kernels on a GPU and writes a JSON; the measurements
of each device live in ``compiler/calibration/data/<device>.json``;
:mod:`compiler.calibration.fit` fits :mod:`compiler.efficiency`'s model to them and
writes the fitted ``efficiency:`` block into a hardware YAML.
"""
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"

__all__ = ["DATA_DIR"]
