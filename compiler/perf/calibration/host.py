"""What the CPU a measurement ran on is: the fields a CPU hardware description and the stored
measurements record (``tools/measure_kernels_ort.py``, ``tests/bench/bench_quant.py``).

Linux only for the details: ``/proc/cpuinfo`` (model name, ISA flags) and sysfs (last-level cache
size). Elsewhere, or where a hypervisor hides them, the fields say ``unknown`` / are empty rather
than failing the measurement.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

#: the ISA extensions the CPU kernels' speed depends on (VNNI / AMX int8, BF16)
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


def _cpuinfo() -> dict[str, str]:
    """The first processor's ``key: value`` lines of /proc/cpuinfo ({} where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break                              # end of the first processor's block
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def last_level_cache_bytes() -> float | None:
    """Size of the largest cache of cpu0 (sysfs), or None where it is not exposed."""
    best = None
    for idx in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            size = (idx / "size").read_text().strip()
        except OSError:
            continue
        mult = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}.get(size[-1:], 1)
        val = float(size.rstrip("KMG")) * mult
        best = val if best is None else max(best, val)
    return best


def cpu_info() -> dict:
    """``{"name", "cores", "isa", "llc_bytes"}`` of this machine."""
    info = _cpuinfo()
    have = set(info.get("flags", "").split())
    return {"name": info.get("model name") or platform.processor() or platform.machine() or "unknown",
            "cores": os.cpu_count(), "isa": [f for f in ISA_FLAGS if f in have],
            "llc_bytes": last_level_cache_bytes()}
