"""Calibration of the cost model's per-op-class efficiencies from GPU measurements.

``tools/calibrate_gpu.py`` measures kernels on a GPU and writes a JSON; the measurements
of each device live in ``compiler/perf/calibration/data/<device>.json``;
:mod:`compiler.perf.calibration.fit` fits :mod:`compiler.perf.efficiency`'s model to them and
writes the fitted ``efficiency:`` block into a hardware YAML.
"""
from compiler.resources import CALIBRATION_DATA

DATA_DIR = CALIBRATION_DATA

__all__ = ["DATA_DIR"]
