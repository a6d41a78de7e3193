"""The ``rooftop`` command (== ``python -m compiler``): a thin Hydra app over ``pipeline.run``.

Before Hydra starts, the command line is checked so that every bad input gets exit 2 and one
paragraph (see compiler/errors.py for the exit codes): malformed overrides, unknown config names,
unknown or misspelled keys (with or without ``+``; ``compiler.driver.config`` holds the schema), values of
the wrong type or out of range, and an output directory that cannot be written. A single run's
output directory is then resolved once, created and locked (``compiler.driver.pipeline.dir_lock``), so
two runs into one directory cannot mix their files. Ctrl-C exits 130 with one line.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
import tempfile
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from compiler.driver.config import register, register_resolvers
from compiler.resources import conf_dir
from compiler.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, ConfigError, OutputDirError, RooftopError
from compiler.driver import config as schema
from compiler.driver.pipeline import run, summary_line, dir_lock
from compiler.driver.sweep import run_point, last_exit_code
from compiler.ir.ops import UnsupportedOpError
from compiler.perf.calibration.fit import main as calibrate_main
from compiler.driver.compare import main as compare_main
from compiler.perf import structured

log = logging.getLogger("rooftop")
register()
register_resolvers()


config_dir = conf_dir


def _fail(msg: str, code: int = EXIT_BAD_INPUT):
    print(f"rooftop: error: {' '.join(str(msg).split())}", file=sys.stderr)
    sys.exit(code)


def _extra_config_dir(argv: list[str]) -> str | None:
    """Hydra's ``--config-dir DIR`` / ``-cd DIR``: more config groups (e.g. your own model YAMLs)."""
    for i, a in enumerate(argv):
        if a in ("--config-dir", "-cd") and i + 1 < len(argv):
            return os.path.abspath(argv[i + 1])
        if a.startswith("--config-dir="):
            return os.path.abspath(a.split("=", 1)[1])
    return None


def _groups(extra: str | None = None) -> dict[str, list[str]]:
    out: dict[str, set[str]] = {}
    for root in [config_dir()] + ([Path(extra)] if extra else []):
        if not root.is_dir():
            continue
        for p in root.iterdir():
            if p.is_dir() and p.name != "hydra":
                out.setdefault(p.name, set()).update(f.stem for f in p.glob("*.yaml"))
    return {k: sorted(v) for k, v in out.items()}


def _parse(argv: list[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException
    args, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--config-dir", "-cd", "--config-name", "-cn", "--config-path", "-cp"):
            skip = True
            continue
        if not a.startswith("-"):
            args.append(a)
    try:
        return OverridesParser.create().parse_overrides(args)
    except OverrideParseException as e:
        raise ConfigError(f"malformed override: {e}. Overrides look like key=value (e.g. workload.batch=8, "
                          f"hardware=h100_sxm); quote values with spaces.") from None


def _first_value(o) -> str | None:
    """The override as ``key=value`` with a sweep replaced by its first value."""
    if o.is_delete():
        return o.input_line
    if not o.is_sweep_override():
        return o.input_line
    try:
        first = next(iter(o.sweep_string_iterator()))
    except Exception:  # noqa: BLE001 - a sweep Hydra expands itself
        return None
    prefix = {"ADD": "+", "FORCE_ADD": "++"}.get(o.type.name if hasattr(o, "type") else "", "")
    return f"{prefix}{o.key_or_group}={first}"


def _compose(overrides: list[str], extra: str | None = None):
    from hydra import compose, initialize_config_dir
    if extra:
        overrides = list(overrides) + [f"hydra.searchpath=[file://{extra}]"]
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        return compose("config", overrides=overrides, return_hydra_config=True)


def check_output_dir(path: str, what: str = "hydra.run.dir") -> None:
    """Raise :class:`OutputDirError` unless ``path`` is (or can be made) a writable directory."""
    p = Path(os.path.abspath(path))
    if p.exists() and not p.is_dir():
        raise OutputDirError(f"{what}={str(p)!r} is an existing file, not a directory, so the outputs "
                             f"cannot be written there. Point {what} at a new or existing directory.")
    anc = p
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise OutputDirError(f"{what}={str(p)!r} cannot be created: {str(anc)!r} is a file, not a "
                             f"directory. Point {what} somewhere writable, e.g. outputs/run1.")
    try:
        probe = tempfile.mkdtemp(prefix=".rooftop-probe-", dir=str(p if p.exists() else anc))
        os.rmdir(probe)
    except OSError as e:
        raise OutputDirError(f"{what}={str(p)!r} cannot be written: creating a directory in "
                             f"{str(p if p.exists() else anc)!r} failed ({e.strerror or e}). Point {what} at "
                             f"a directory you can write, e.g. outputs/run1.") from None


def _from_yaml(e: ConfigError, key: str, overrides, extra, where: str | None = None) -> ConfigError:
    """``e`` about a key no override names: say which YAML it comes from."""
    grp = key.split(".")[0]
    if where is None:
        choice = next((str(o.value()) for o in overrides if o.key_or_group == grp), None)
        where = f"{grp}/{choice}.yaml" if choice else f"the default {grp} YAML"
    return ConfigError(f"{e} (The key comes from a YAML file, {where} under conf/"
                       f"{' or ' + extra if extra else ''}, not from the command line.)")


def _validate(cfg, given: set, overrides, extra) -> None:
    """Schema-check the composed config (range checks; the model block against its variant's
    schema, also for a user's model YAML that names no schema); a bad key from a YAML says which
    file it came from."""
    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra", None)
    try:
        schema.validate(OmegaConf.create(plain))
    except ConfigError as e:
        key = getattr(e, "key", None)
        if key and key not in given:
            raise _from_yaml(e, key, overrides, extra) from None
        raise


def _cause(e: BaseException) -> OmegaConfBaseException | None:
    while e is not None:
        if isinstance(e, OmegaConfBaseException):
            return e
        e = e.__cause__ or e.__context__
    return None


def composition_error(e: Exception, given: set, overrides, extra, groups) -> ConfigError:
    """Hydra's composition error as rooftop's one paragraph: the schema's own problems (an unknown
    key, a wrong type) in the words of :func:`compiler.driver.config.problem_error`, naming the
    command line or the YAML file the key came from."""
    cause = _cause(e)
    text = str(e).strip()
    if cause is not None:
        p = structured.problem(cause, schema.RooftopConfig)
        obj = getattr(cause, "object_type", None)
        if p.kind == "unknown" and not dataclasses.is_dataclass(obj):     # an open mapping (model.config)
            o = next((o for o in overrides if o.key_or_group == p.path), None)
            line = o.input_line.lstrip("+") if o is not None else f"{p.path}=<value>"
            return ConfigError(f"{p.path} is not set in the composed config (conf/config.yaml and the "
                               f"chosen group files), so it cannot be changed; add it with +{line}.")
        if p.kind == "unknown" and p.path.startswith("model.") and not p.valid:
            p = dataclasses.replace(p, valid=structured.fields_of(obj))
        err = schema.problem_error(p)
        if p.path in given or p.path.split(".")[0] in given:
            return ConfigError(str(err).replace(f"{p.path!r}:", f"{p.path!r} on the command line:", 1))
        m = re.match(r"In '([^']+)'", text)
        return _from_yaml(err, p.path, overrides, extra, f"{m.group(1)}.yaml" if m else None)
    msg = text.splitlines()[0] if text else type(e).__name__
    return ConfigError(f"the config could not be composed: {msg}. Check the overrides "
                       f"(a new key needs a declared setting; groups: {', '.join(sorted(groups))}).")


def precheck(argv: list[str]) -> list[str]:
    """Check the command line before Hydra runs; returns the argv to hand to Hydra (with the run
    directory made explicit for a single run). Raises :class:`ConfigError`. Keys and types are
    checked by Hydra itself while composing (the schema is first in conf/config.yaml's defaults
    list); this only translates its errors."""
    overrides = _parse(argv)
    extra = _extra_config_dir(argv)
    groups = _groups(extra)
    multirun = any(a in ("-m", "--multirun") for a in argv)
    for o in overrides:
        key = o.key_or_group
        if key in groups and o.value_type is not None and not o.is_delete():
            vals = o.sweep_string_iterator() if o.is_sweep_override() else [o.value()]
            for v in vals:
                if isinstance(v, str) and v not in groups[key]:
                    raise ConfigError(f"unknown {key} {v!r}. Valid {key} names: {', '.join(groups[key])}. "
                                      f"Pick one of them, e.g. {key}={groups[key][0]}, or add conf/{key}/{v}.yaml.")
    given = {o.key_or_group for o in overrides if o.key_or_group not in groups
             and not o.key_or_group.startswith(("hydra.", "hydra/")) and o.key_or_group != "hydra"}
    firsts = [_first_value(o) for o in overrides]
    try:
        cfg = _compose([f for f in firsts if f is not None], extra)
    except Exception as e:  # noqa: BLE001 - Hydra's composition errors, as one paragraph
        raise composition_error(e, given, overrides, extra, groups) from None
    hydra_cfg = cfg.hydra
    if multirun:
        sweep = OmegaConf.select(hydra_cfg, "sweep.dir", throw_on_resolution_failure=False)
        if sweep is not None and "${" not in str(sweep):
            check_output_dir(str(sweep), "hydra.sweep.dir")
        _validate(cfg, given, overrides, extra)
        return argv
    try:
        run_dir = str(OmegaConf.select(cfg, "hydra.run.dir"))
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"hydra.run.dir could not be resolved ({e}); set it explicitly, e.g. "
                          f"hydra.run.dir=outputs/run1.") from None
    check_output_dir(run_dir)
    _validate(cfg, given, overrides, extra)
    explicit = [a for a in argv if not a.startswith("hydra.run.dir=")]
    return explicit + [f"hydra.run.dir={run_dir}"]


@hydra.main(config_path=str(config_dir()), config_name="config", version_base=None)
def _hydra_main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    out_dir = HydraConfig.get().runtime.output_dir
    if HydraConfig.get().mode == RunMode.MULTIRUN:  # a failed point is recorded, not fatal
        return run_point(cfg, out_dir)
    try:
        report = run(cfg, out_dir)
    except RooftopError as e:
        _fail(str(e), e.exit_code)
    except _unsupported_types() as e:  # an importer error that is not (yet) a RooftopError
        _fail(str(e), EXIT_BAD_INPUT)
    print(summary_line(report, out_dir))


def _unsupported_types() -> tuple[type, ...]:
    """Importer errors that are bad input even where they are not (yet) RooftopErrors."""
    try:
        return (UnsupportedOpError,)
    except ImportError:  # pragma: no cover
        return ()


def main() -> None:
    argv = sys.argv[1:]
    if argv and argv[0] == "calibrate":
        sys.argv = [sys.argv[0] + " calibrate"] + argv[1:]
        calibrate_main()
        return
    if argv and argv[0] == "compare":
        sys.exit(compare_main(argv[1:]))
    try:
        try:
            hydra_argv = precheck(argv)
        except RooftopError as e:
            _fail(str(e), e.exit_code)
        single = not any(a in ("-m", "--multirun") for a in argv)
        if single:
            run_dir = next(a.split("=", 1)[1] for a in hydra_argv if a.startswith("hydra.run.dir="))
            try:
                lock = dir_lock(run_dir)
            except RooftopError as e:
                _fail(str(e), e.exit_code)
        sys.argv = [sys.argv[0]] + hydra_argv
        try:
            _hydra_main()
        finally:
            if single:
                lock.release()
        if not single:
            if last_exit_code():
                sys.exit(last_exit_code())
    except KeyboardInterrupt:
        # The staging directory and the lock are gone (their finally blocks ran on the way here).
        # A second Ctrl-C, or one still pending in the interpreter, must not turn exit 130 into a
        # death by SIGINT during interpreter shutdown (atexit handlers, thread joins): ignore it
        # and leave at once.
        import signal
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("rooftop: interrupted (Ctrl-C); nothing partial was left in the output directory.",
              file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
