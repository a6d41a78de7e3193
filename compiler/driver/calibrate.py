"""``rooftop calibrate DATA.json [--base-yaml HW.yaml] [--out OUT.yaml]``: fit the cost model's
per-class efficiencies to a measurement file and write a hardware YAML.

The fit itself is :mod:`compiler.perf.calibration.fit`; this is its command line, on the one error
path of every rooftop verb: bad input (a measurement file that is missing, not JSON, without
samples, or with a time that is not a positive number; a base YAML that does not load; an
``--out`` that cannot be written; an unknown flag) exits 2 with one paragraph, and nothing is
written. ``--out`` is written atomically with the usual file mode; its ``name:`` is the file's
stem, so ``hardware=<stem>`` loads it (a calibrated copy never keeps its base device's name).

    rooftop calibrate compiler/perf/calibration/data/h100_sxm.json \\
        --base-yaml conf/hardware/h100_sxm.yaml --out conf/hardware/h100_sxm.yaml
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from compiler.driver.pipeline import check_output_dir
from compiler.errors import EXIT_OK, ConfigError, RooftopError
from compiler.ir.tensors import hw_dtype
from compiler.perf.calibration import fit
from compiler.perf.hardware import OP_CLASSES

PROG = "rooftop calibrate"


class CalibrationInputError(ConfigError):
    """A measurement file, base YAML or output path ``rooftop calibrate`` cannot use (exit 2)."""


def load_measurements(path: str | os.PathLike) -> dict:
    """A measurement JSON (``tools/calibrate_gpu.py``'s ``rooftop-calibration/1``), checked: a
    mapping with a non-empty ``samples`` list whose entries name a ``class`` and carry a positive,
    finite ``time_s`` and finite, non-negative ``flops`` and ``bytes``."""
    p = Path(path)
    fix = "Pass the JSON file written by tools/calibrate_gpu.py (e.g. compiler/perf/calibration/data/h100_sxm.json)."
    if not p.exists():
        raise CalibrationInputError(f"the measurement file {str(path)!r} does not exist. {fix}")
    if p.is_dir():
        raise CalibrationInputError(f"the measurement file {str(path)!r} is a directory. {fix}")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CalibrationInputError(f"the measurement file {str(path)!r} is not JSON ({e}). {fix}") from None
    except OSError as e:
        raise CalibrationInputError(f"the measurement file {str(path)!r} cannot be read ({e.strerror or e}). {fix}") from None
    if not isinstance(doc, Mapping):
        raise CalibrationInputError(f"{str(path)!r} is JSON but not a measurement file: its top level is a "
                                    f"{type(doc).__name__}, not an object with a 'samples' list. {fix}")
    samples = doc.get("samples")
    if not isinstance(samples, list) or not samples:
        raise CalibrationInputError(f"{str(path)!r} holds no samples (its 'samples' list is missing or empty), "
                                    f"so there is nothing to fit. {fix}")
    for i, s in enumerate(samples):
        where = f"{str(path)!r} samples[{i}]"
        if not isinstance(s, Mapping):
            raise CalibrationInputError(f"{where} is a {type(s).__name__}, not an object with class, time_s, flops "
                                        f"and bytes. {fix}")
        missing = [k for k in ("class", "time_s", "flops", "bytes") if k not in s]
        if missing:
            raise CalibrationInputError(f"{where} lacks {', '.join(missing)}; every sample names its op class and "
                                        f"gives time_s, flops and bytes. {fix}")
        for k, positive in (("time_s", True), ("flops", False), ("bytes", False)):
            v = s[k]
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and \
                (v > 0 if positive else v >= 0)
            if not ok:
                need = "a positive number of seconds" if positive else "a finite number ≥ 0"
                raise CalibrationInputError(f"{where} ({s.get('name', s.get('class'))}) has {k}={v!r}, which is not "
                                            f"{need}; fix or remove that sample (a failed measurement is marked "
                                            f"\"exclude_from_fit\": true with its real time).")
    return dict(doc)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's usage + exit 2 → rooftop's one paragraph
        raise CalibrationInputError(f"{message.rstrip('.')}. Usage: {PROG} DATA.json [--base-yaml HW.yaml] "
                                    f"[--out OUT.yaml] [--dtype fp16|bf16|…] [--json] [--all-kernels]; "
                                    f"{PROG} --help explains them.")


def parser() -> argparse.ArgumentParser:
    ap = _Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="measurement JSON written by tools/calibrate_gpu.py")
    ap.add_argument("--base-yaml", help="hardware YAML holding the datasheet peaks (and the rest of the file)")
    ap.add_argument("--out", help="hardware YAML to write with the fitted efficiency block (needs --base-yaml); "
                                  "its name: becomes the file's stem")
    ap.add_argument("--dtype", default=None, help="dtype whose peak is used (default: the data's dtype, fp16)")
    ap.add_argument("--json", action="store_true", help="print the fit as JSON too")
    ap.add_argument("--all-kernels", action="store_true",
                    help="fit every sample not marked exclude_from_fit (ignore the default kernel selection)")
    return ap


def calibrate(args: argparse.Namespace) -> int:
    if args.out and not args.base_yaml:
        raise CalibrationInputError("--out needs --base-yaml: the written YAML is the base device's description "
                                    "with the fitted efficiency block. Add --base-yaml conf/hardware/<device>.yaml.")
    if args.out:
        out = Path(args.out)
        if out.is_dir():
            raise CalibrationInputError(f"--out {args.out!r} is a directory; give the YAML file to write, e.g. "
                                        f"--out {os.path.join(args.out, 'my_gpu.yaml')}.")
        if out.suffix != ".yaml":
            raise CalibrationInputError(f"--out {args.out!r} does not end in .yaml; Hydra selects hardware files by "
                                        f"their stem in conf/hardware/<name>.yaml, e.g. --out my_gpu.yaml.")
        check_output_dir(str(out.parent.resolve()), "--out's folder")
    meas = load_measurements(args.data)
    dtype = args.dtype or hw_dtype(str(meas.get("dtype", "float16"))) or "fp16"
    P = W = priors = None
    if args.base_yaml:
        P, W = fit.datasheet_from_yaml(args.base_yaml, dtype)
        priors = fit.priors_from_yaml(args.base_yaml, dtype)
        ds = meas.get("datasheet") or {}
        if isinstance(ds, Mapping) and ds and all(isinstance(ds.get(k), (int, float)) for k in ("peak_flops", "bandwidth")) \
                and (abs(ds["peak_flops"] / P - 1) > 0.01 or abs(ds["bandwidth"] / W - 1) > 0.01):
            print(f"warning: the YAML's datasheet numbers ({P:.4g} FLOP/s, {W:.4g} B/s) differ from the "
                  f"measurement file's ({ds.get('peak_flops')}, {ds.get('bandwidth')}); using the YAML's",
                  file=sys.stderr)
    else:
        ds = meas.get("datasheet") or {}
        if not (isinstance(ds, Mapping) and all(isinstance(ds.get(k), (int, float)) and ds.get(k) > 0
                                                for k in ("peak_flops", "bandwidth"))):
            raise CalibrationInputError(f"{args.data!r} has no datasheet peak_flops / bandwidth to fit against; pass "
                                        f"--base-yaml conf/hardware/<device>.yaml (its datasheet numbers are used).")
    select = None if args.all_kernels else fit.FIT_SELECTION
    if args.out:
        have = {str(s["class"]) for s in meas["samples"] if not s.get("exclude_from_fit")}
        missing = [c for c in OP_CLASSES if c not in have]
        if missing:
            raise CalibrationInputError(f"{args.data!r} holds no samples of the op class(es) {', '.join(missing)}, so "
                                        f"a complete efficiency block cannot be written to --out; measure every "
                                        f"class ({', '.join(OP_CLASSES)}), or drop --out to print the fit only.")
    res = fit.fit_measurements(meas, P, W, data_file=fit._display_path(args.data), select=select, priors=priors)
    print(fit.format_table(res))
    if args.json:
        print(json.dumps({"source": res.source, "launch_overhead_s": res.launch_s,
                          "classes": {c: p.to_dict() for c, p in res.params.items()},
                          "errors": res.table, "by_name": res.breakdown, "select": res.select},
                         indent=1, sort_keys=True))
    if args.out:
        out = fit.write_yaml(res, args.base_yaml, args.out)
        print(f"wrote {out}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """``rooftop calibrate``; returns the exit code, prints at most one error paragraph."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser().parse_args(argv)
    except SystemExit as e:               # --help
        return EXIT_OK if e.code in (None, 0) else 2
    except RooftopError as e:
        print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return e.exit_code
    try:
        return calibrate(args)
    except RooftopError as e:
        print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return e.exit_code


__all__ = ["main", "load_measurements", "CalibrationInputError", "parser"]
