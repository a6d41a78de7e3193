"""The ``rooftop`` command (== ``python -m compiler``): a thin Hydra app over ``pipeline.run``.

Bad input exits 2 with a one-paragraph message, a violated gate exits 3 (the report is still
written). Hydra's own failures (malformed override, unknown config name) are checked before Hydra
starts, so they get the same exit code and a message that lists the valid choices.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from compiler.errors import EXIT_BAD_INPUT, RooftopError

log = logging.getLogger("rooftop")


def config_dir() -> Path:
    """conf/ inside an installed wheel (compiler/conf) or beside the package in a checkout."""
    here = Path(__file__).resolve().parent
    for cand in (here / "conf", here.parent / "conf"):
        if (cand / "config.yaml").is_file():
            return cand
    raise FileNotFoundError("rooftop's conf/ directory was not found next to the package")


def _fail(msg: str, code: int = EXIT_BAD_INPUT):
    print(f"rooftop: error: {msg}", file=sys.stderr)
    sys.exit(code)


def precheck_overrides(argv: list[str]) -> None:
    """Reject malformed overrides and unknown group options with exit code 2."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException
    args = [a for a in argv if not a.startswith("-")]
    try:
        overrides = OverridesParser.create().parse_overrides(args)
    except OverrideParseException as e:
        _fail(f"malformed override: {e}. Overrides look like key=value (e.g. workload.batch=8, "
              f"hardware=h100_sxm); quote values with spaces.")
    groups = {p.name: sorted(f.stem for f in p.glob("*.yaml")) for p in config_dir().iterdir() if p.is_dir()}
    for o in overrides:
        key = o.key_or_group
        if key in groups and o.value_type is not None and not o.is_delete():
            vals = o.sweep_string_iterator() if o.is_sweep_override() else [o.value()]
            for v in vals:
                if isinstance(v, str) and v not in groups[key]:
                    _fail(f"unknown {key} {v!r}. Valid {key} names: {', '.join(groups[key])}. "
                          f"Pick one of them, e.g. {key}={groups[key][0]}, or add conf/{key}/{v}.yaml.")


@hydra.main(config_path=str(config_dir()), config_name="config", version_base=None)
def _hydra_main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from compiler.pipeline import run
    out_dir = HydraConfig.get().runtime.output_dir
    if HydraConfig.get().mode == RunMode.MULTIRUN:  # a failed point is recorded, not fatal
        from compiler.sweep import run_point
        return run_point(cfg, out_dir)
    try:
        report = run(cfg, out_dir)
    except RooftopError as e:
        _fail(str(e), e.exit_code)
    lat = report["latency"]
    print(f"rooftop: {report['model']['name']} on {report['hardware']['name']}: "
          f"TTFT {lat['ttft_s'] * 1e3:.3f} ms, TPOT {lat['tpot_s'] * 1e3:.3f} ms, "
          f"max batch {report['capacity']['max_batch']} -> {out_dir}")


def main() -> None:
    argv = sys.argv[1:]
    if argv and argv[0] == "calibrate":
        from compiler.calibration.fit import main as calibrate_main
        sys.argv = [sys.argv[0] + " calibrate"] + argv[1:]
        calibrate_main()
        return
    if argv and argv[0] == "compare":
        from compiler.compare import main as compare_main
        sys.exit(compare_main(argv[1:]))
    precheck_overrides(argv)
    _hydra_main()
    if any(a in ("-m", "--multirun") for a in argv):
        from compiler.sweep import last_exit_code
        if last_exit_code():
            sys.exit(last_exit_code())


if __name__ == "__main__":
    main()
