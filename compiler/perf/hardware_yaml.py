"""Writing hardware descriptions back (the calibration tools do): the YAML form of a
:class:`compiler.perf.hardware.Hardware` in the file's units, a whole new file, and updates of
single top-level blocks of an existing file that keep every other line and its comments (ruamel.yaml
locates the blocks). Every write is validated by the loader before the file is replaced atomically."""
from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML

from compiler.perf.collectives import collectives_to_yaml_dict
from compiler.perf.hardware import (_GBS, _GFLOP, _GIB, _KIB, _MB, _MIB, _TFLOPS, _US, DTYPES, OP_CLASSES, Calibration,
                                    Efficiency, Hardware, HardwareError, KernelFamilyEfficiency, _fail,
                                    _parse_yaml_text, load_hardware)

_RT = YAML()               # round-trip YAML (keeps comments, key order and quoting)
_RT.width = 100
_RT.indent(mapping=2, sequence=4, offset=2)


def _r(x: float) -> float | int:
    """Round to 15 significant digits so SI -> YAML unit -> SI round-trips exactly."""
    y = float(f"{x:.15g}")
    return int(y) if y.is_integer() and abs(y) < 1e15 else y


def efficiency_to_yaml_dict(eff: Efficiency) -> dict:
    """The ``efficiency:`` block of a hardware YAML (in the YAML units) for ``eff``."""
    return {
        "source": eff.source,
        "launch_overhead_us": _r(eff.launch_overhead_s / _US),
        "classes": {
            cls: {
                "compute": _r(ce.compute),
                "memory": _r(ce.memory),
                "flops_half_gflop": _r(ce.flops_half / _GFLOP),
                "bytes_half_mb": _r(ce.bytes_half / _MB),
            }
            for cls in OP_CLASSES
            if (ce := eff.classes.get(cls)) is not None
        },
    }


def calibration_to_yaml_dict(cal: Calibration) -> dict:
    out: dict[str, Any] = {"source": cal.source, "from": list(cal.from_devices), "method": cal.method}
    if cal.date:
        out["date"] = cal.date
    out["error_band"] = {"median": _r(cal.error_median), "p90": _r(cal.error_p90), "basis": cal.error_basis}
    if cal.note:
        out["note"] = cal.note
    return out


def kernel_families_to_yaml_dict(fams: Mapping[str, KernelFamilyEfficiency]) -> dict:
    out = {}
    for fam, k in fams.items():
        d: dict[str, Any] = {"kernel": k.kernel, "peak_dtype": k.peak_dtype}
        if k.sparse:
            d["sparse"] = True
        d.update({"compute": _r(k.compute), "memory": _r(k.memory),
                  "flops_half_gflop": _r(k.flops_half / _GFLOP), "bytes_half_mb": _r(k.bytes_half / _MB),
                  "n": int(k.n), "median_err": _r(k.median_err)})
        if k.source:
            d["source"] = k.source
        out[fam] = d
    return out


def hardware_to_yaml_dict(hw: Hardware) -> dict:
    """A mapping in the YAML convention that :func:`load_hardware` turns back into ``hw``."""
    out: dict[str, Any] = {"name": hw.name, "vendor": hw.vendor, "kind": hw.kind}
    if hw.description:
        out["description"] = hw.description
    if hw.architecture:
        out["architecture"] = hw.architecture
    out["peak_tflops"] = {d: _r(hw.peak_flops[d] / _TFLOPS) for d in DTYPES if d in hw.peak_flops}
    out["sparse_peak_tflops"] = {d: _r(hw.sparse_peak_flops[d] / _TFLOPS)
                                 for d in DTYPES if d in hw.sparse_peak_flops}
    out["memory_gib"] = _r(hw.memory_bytes / _GIB)
    out["memory_bandwidth_gbs"] = _r(hw.memory_bandwidth / _GBS)
    out["onchip"] = {"l2_mib": _r(hw.onchip.l2_bytes / _MIB),
                     "smem_per_sm_kib": _r(hw.onchip.smem_per_sm_bytes / _KIB),
                     "sm_count": int(hw.onchip.sm_count)}
    out["interconnect"] = {"name": hw.interconnect.name,
                           "bandwidth_gbs": _r(hw.interconnect.bandwidth / _GBS),
                           "num_devices_per_node": int(hw.interconnect.num_devices_per_node)}
    if hw.interconnect.latency_s is not None:
        out["interconnect"]["latency_us"] = _r(hw.interconnect.latency_s / _US)
    out["efficiency"] = efficiency_to_yaml_dict(hw.efficiency)
    if hw.calibration is not None:
        out["calibration"] = calibration_to_yaml_dict(hw.calibration)
    if hw.kernel_families:
        out["kernel_families"] = kernel_families_to_yaml_dict(hw.kernel_families)
    if hw.collectives is not None:
        out["collectives"] = collectives_to_yaml_dict(hw.collectives)
    return out


def _dump(data: Mapping) -> str:
    return yaml.safe_dump(dict(data), sort_keys=False, default_flow_style=False, width=100)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())   # as open() would create it (mkstemp makes 0600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_hardware_yaml(hw: Hardware, path: str | os.PathLike) -> Path:
    """Write ``hw`` as a complete hardware YAML that :func:`load_hardware_file` reads back equal.
    The file name should be ``<hw.name>.yaml`` for the library; comments are not preserved (use
    :func:`update_efficiency_yaml` to change only the efficiency block of a commented file)."""
    path = Path(path)
    header = (f"# {hw.name}: written by compiler.perf.hardware.write_hardware_yaml.\n"
              "# Units: see the docstring of compiler/perf/hardware.py (peak_tflops are DENSE).\n")
    _atomic_write(path, header + _dump(hardware_to_yaml_dict(hw)))
    return path


def _block_spans(lines: list[str]) -> dict[str, tuple[int, int]]:
    """Line span ``[start, end)`` of each top-level key's block, from ruamel.yaml's positions of
    the keys (no pattern matching on YAML text). Column-0 comments and blank lines just above a
    key belong to that key, so a replaced block never takes them away."""
    doc = _RT.load("".join(lines)) or {}
    keys = list(doc.keys())
    starts = [doc.lc.key(k)[0] for k in keys]
    spans = {}
    for i, k in enumerate(keys):
        end = starts[i + 1] if i + 1 < len(keys) else len(lines)
        while end > starts[i] + 1 and end <= len(lines) and (
                not lines[end - 1].strip() or lines[end - 1].startswith("#")):
            end -= 1
        spans[str(k)] = (starts[i], end)
    return spans


def _dump_block(key: str, value: Any) -> str:
    buf = io.StringIO()
    _RT.dump({key: value}, buf)
    return buf.getvalue()


def update_yaml_blocks(path: str | os.PathLike, blocks: Mapping[str, Any], note: str = "") -> Hardware:
    """Replace (or append) top-level blocks of an existing hardware YAML — ``blocks`` maps a top
    key (``efficiency``, ``calibration``, ``kernel_families``, ``architecture``, ``collectives``)
    to its new value in YAML units — keeping every other line and its comments (ruamel.yaml
    locates the blocks). A value of None removes the key. The result is validated before the
    file is replaced (atomically); returns the reloaded :class:`Hardware`."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    for key, value in blocks.items():
        lines = text.splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        span = _block_spans(lines).get(key)
        block = "" if value is None else _dump_block(key, _plain(value))
        head = f"# {key}: {note}\n" if note and value is not None and key != "architecture" else ""
        if span is None:
            if value is not None:
                text = "".join(lines) + head + block
            continue
        start, end = span
        s0 = start
        while s0 > 0 and lines[s0 - 1].startswith(f"# {key}: "):  # previous auto-written notes
            s0 -= 1
        tail = lines[end:]
        text = "".join(lines[:s0]) + head + block + ("\n" if tail and block else "") + "".join(tail)
    try:
        data = _parse_yaml_text(text)
    except Exception as exc:  # pragma: no cover - the blocks are generated YAML
        raise HardwareError(f"{path}: updated text does not parse ({exc}).") from None
    hw = load_hardware(data, source=path)
    if hw.name != path.stem:
        _fail("name", f"is {hw.name!r} but the file is {path.name}",
              f"Set name: {path.stem}.", where=str(path))
    _atomic_write(path, text)
    return hw


def _plain(value: Any) -> Any:
    """Mappings/sequences as plain dicts/lists with int keys kept (ruamel dumps them as written)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def update_efficiency_yaml(path: str | os.PathLike, eff: Efficiency) -> Hardware:
    """Replace only the top-level ``efficiency:`` block of an existing hardware YAML with ``eff``,
    keeping every other line (and its source comments) as is. The result is validated before
    the file is replaced (atomically); returns the reloaded :class:`Hardware`."""
    return update_yaml_blocks(path, {"efficiency": efficiency_to_yaml_dict(eff)},
                              note=f"written by compiler.perf.hardware.update_efficiency_yaml ({eff.source})")
