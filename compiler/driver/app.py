"""The ``rooftop`` command (== ``python -m compiler``): a thin Hydra app over ``pipeline.run``.

One error path for every verb (``rooftop``, ``rooftop -m`` and searches, ``rooftop calibrate``,
``rooftop compare``): :func:`cli` maps every outcome to the exit codes of compiler/errors.py and
prints one paragraph for a failure — never a traceback (an unexpected exception is reported as an
internal error, exit 1: a rooftop bug).

Before Hydra starts the job, the command line is checked (:func:`precheck`): Hydra's flags in
either spelling (``--cfg job`` / ``--cfg=job`` / ``-c job``, anywhere on the line), malformed
overrides, unknown config names, unknown or misspelled keys (with or without ``+``), values of the
wrong type or out of range, and then everything the run can check without the model's graph
(``compiler.driver.pipeline.preflight``: the workload against the model, the hardware, the
passes and their options, the gates against what the run can measure, a missing model file) —
for a multirun, every value of every swept key. An output directory that cannot be written is
refused there too. So bad input exits 2 before any directory exists; ``--help``, ``--version``,
``--cfg`` and ``--info`` never create one.

A single run's directory is then created (the default, timestamped one under a unique name even
for runs started in the same second) and locked (``compiler.driver.pipeline.RunDir``); what can
only fail later (a model file's contents, an import) removes what the run created, so a run that
exits 2 (or 130, or 1) leaves no directory behind. Ctrl-C exits 130 with one line
(``compiler.driver.signals``: an interrupt is never swallowed).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import re
import shutil
import sys
import traceback
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from compiler.driver.config import register, register_resolvers
from compiler.resources import conf_dir
from compiler.errors import (EXIT_BAD_INPUT, EXIT_EMIT, EXIT_GATE, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK,
                             ConfigError, OutputDirError, RooftopError)
from compiler.driver import config as schema
from compiler.driver import calibrate, compare, signals
from compiler.driver.pipeline import RunDir, check_output_dir, preflight, run, summary_line
from compiler.driver.provenance import version
from compiler.driver import sweep
from compiler.driver.sweep import last_exit_code, run_point, search_settings
from compiler.perf import structured

log = logging.getLogger("rooftop")
register()
register_resolvers()


config_dir = conf_dir

#: exit codes after which a single run keeps its directory (the report is written)
KEEP_CODES = (EXIT_OK, EXIT_GATE, EXIT_EMIT)


def error_line(msg: str, prog: str = "rooftop") -> str:
    """The one-paragraph error message (one line on stderr)."""
    return f"{prog}: error: {' '.join(str(msg).split())}"


def _print_error(msg: str, prog: str = "rooftop") -> None:
    print(error_line(msg, prog), file=sys.stderr, flush=True)


def internal_error_text(e: BaseException) -> str:
    """An unexpected exception as one paragraph: what, where (the innermost rooftop frame), and
    that it is a bug (exit 1), not a problem with the input."""
    tb = traceback.extract_tb(e.__traceback__)
    ours = [f for f in tb if "/compiler/" in f.filename or "/passes/" in f.filename or "/reports/" in f.filename]
    at = ours[-1] if ours else (tb[-1] if tb else None)
    where = f" (at {Path(at.filename).name}:{at.lineno} in {at.name})" if at else ""
    what = " ".join(str(e).split()) or "(no message)"
    return (f"internal error: {type(e).__name__}: {what}{where}. This is a rooftop bug, not a problem "
            f"with your input; please report it with the command line that caused it.")


# ------------------------------------------------------------------------------------------------
# the command line


#: Hydra's flags rooftop accepts (the rest of the command line is overrides)
FLAGS = ("--help/-h", "--hydra-help", "--version", "--cfg/-c job|hydra|all", "--resolve", "--package/-p",
         "--info/-i [all|config|defaults|defaults-tree|plugins|searchpath]", "--multirun/-m", "--run/-r",
         "--config-dir/-cd DIR", "--config-name/-cn NAME", "--shell-completion/-sc")


@dataclasses.dataclass
class Command:
    """A parsed command line: Hydra's flags (``args``) and the overrides, in Hydra's order."""
    args: argparse.Namespace
    overrides: list[str]

    @property
    def multirun(self) -> bool:
        return bool(self.args.multirun)

    @property
    def info(self) -> bool:
        """A command that shows something and runs no job (no output directory)."""
        a = self.args
        return bool(a.help or a.hydra_help or a.cfg or a.info or a.shell_completion)

    @property
    def extra(self) -> str | None:
        return os.path.abspath(self.args.config_dir) if self.args.config_dir else None

    def hydra_argv(self, overrides: list[str] | None = None) -> list[str]:
        """The command line for Hydra: flags first, then the overrides (Hydra's parser does not
        take flags between overrides)."""
        a, out = self.args, []
        for flag, on in (("--help", a.help), ("--hydra-help", a.hydra_help), ("--resolve", a.resolve),
                         ("--run", a.run), ("--multirun", a.multirun), ("--shell-completion", a.shell_completion)):
            if on:
                out.append(flag)
        for flag, val in (("--cfg", a.cfg), ("--package", a.package), ("--config-dir", a.config_dir),
                          ("--config-name", a.config_name), ("--info", a.info)):
            if val:
                out += [flag, str(val)]
        if a.hydra_help:       # Hydra's own help composes only its own config: app overrides do not apply
            return out
        return out + list(self.overrides if overrides is None else overrides)


def parse_command(argv: list[str]) -> Command:
    """Hydra's own argument parser, with flags allowed anywhere and its errors as ConfigError."""
    from hydra._internal.utils import get_args_parser
    parser = get_args_parser()

    def error(message: str):
        raise ConfigError(
            f"{message.rstrip('.')}. rooftop takes key=value overrides (e.g. workload.batch=8 "
            f"hardware=h100_sxm) and Hydra's flags: {', '.join(FLAGS)}. Run rooftop --help for the "
            f"config groups.")

    parser.error = error            # type: ignore[method-assign]
    args = parser.parse_intermixed_args(argv)
    if args.experimental_rerun:
        raise ConfigError("--experimental-rerun is not supported by rooftop (it loads a pickle); rerun the "
                          "command line recorded in the run directory's .hydra/overrides.yaml instead.")
    if args.config_path:
        raise ConfigError("--config-path is not supported: rooftop's primary config is its own conf/. Add "
                          "your own config groups with --config-dir DIR (e.g. DIR/model/my_model.yaml, then "
                          "model=my_model).")
    if args.config_dir and not os.path.isdir(args.config_dir):
        raise ConfigError(f"--config-dir {args.config_dir!r} is not a directory; give the folder that holds "
                          f"your config groups (e.g. DIR/model/my_model.yaml).")
    return Command(args, list(args.overrides or []))


def _parse_overrides(lines: list[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException
    try:
        return OverridesParser.create().parse_overrides(lines)
    except OverrideParseException as e:
        raise ConfigError(f"malformed override: {e}. Overrides look like key=value (e.g. workload.batch=8, "
                          f"hardware=h100_sxm); quote values with spaces.") from None


def _groups(extra: str | None = None) -> dict[str, list[str]]:
    out: dict[str, set[str]] = {}
    for root in [config_dir()] + ([Path(extra)] if extra else []):
        if not root.is_dir():
            continue
        for p in root.iterdir():
            if p.is_dir() and p.name != "hydra":
                out.setdefault(p.name, set()).update(f.stem for f in p.glob("*.yaml"))
    return {k: sorted(v) for k, v in out.items()}


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


def _compose(overrides: list[str], extra: str | None = None, name: str | None = None):
    from hydra import compose, initialize_config_dir
    if extra:
        overrides = list(overrides) + [f"hydra.searchpath=[file://{extra}]"]
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        return compose(name or "config", overrides=overrides, return_hydra_config=True)


def _from_yaml(e: ConfigError, key: str, overrides, extra, where: str | None = None) -> ConfigError:
    """``e`` about a key no override names: say which YAML it comes from."""
    grp = key.split(".")[0]
    if where is None:
        choice = next((str(o.value()) for o in overrides if o.key_or_group == grp), None)
        where = f"{grp}/{choice}.yaml" if choice else f"the default {grp} YAML"
    return ConfigError(f"{e} (The key comes from a YAML file, {where} under conf/"
                       f"{' or ' + extra if extra else ''}, not from the command line.)")


def _validate(cfg, given: set, overrides, extra, *, accuracy_gates: bool = True) -> None:
    """Schema-check the composed config (range checks; the model block against its variant's
    schema, also for a user's model YAML that names no schema) and run every check that needs no
    model graph (``compiler.driver.pipeline.preflight``); a bad key from a YAML says which file it
    came from."""
    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra", None)
    try:
        preflight(OmegaConf.create(plain), accuracy_gates=accuracy_gates)
    except ConfigError as e:
        key = getattr(e, "key", None)
        if key and key not in given and not any(key.startswith(g + ".") for g in given):
            raise _from_yaml(e, key, overrides, extra) from None
        raise


def _yaml_cause(e: BaseException):
    import yaml
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, yaml.YAMLError):
            return e
        e = e.__cause__ or e.__context__
    return None


def _cause(e: BaseException) -> OmegaConfBaseException | None:
    while e is not None:
        if isinstance(e, OmegaConfBaseException):
            return e
        e = e.__cause__ or e.__context__
    return None


def _model_yaml(overrides, extra) -> dict:
    """The chosen model's YAML (``model=`` on the command line, else conf/config.yaml's default)."""
    choice = next((str(o.value()) for o in overrides if o.key_or_group == "model" and not o.is_sweep_override()), None)
    if choice is None:
        defaults = OmegaConf.load(config_dir() / "config.yaml").get("defaults") or []
        choice = next((str(d["model"]) for d in defaults if isinstance(d, dict) and "model" in d), "llama_tiny")
    for root in ([Path(extra)] if extra else []) + [config_dir()]:
        f = root / "model" / f"{choice}.yaml"
        if f.is_file():
            with contextlib.suppress(Exception):
                return OmegaConf.to_container(OmegaConf.load(f), resolve=False) or {}
    return {}


def _open_mapping_error(path: str, overrides, extra) -> ConfigError:
    """A key the composed config does not have under an open mapping (``model.config.*``, which
    Hydra refuses without ``+``): ``+`` adds a setting transformers' config declares; anything
    else is a misspelling, told with the nearest declared keys."""
    o = next((o for o in overrides if o.key_or_group == path), None)
    line = o.input_line.lstrip("+") if o is not None else f"{path}=<value>"
    if path.startswith("model.config.") and path.count(".") == 2:
        key = path.rsplit(".", 1)[1]
        mt = (_model_yaml(overrides, extra).get("config") or {}).get("model_type")
        if mt:
            try:
                known = schema.hf_config_keys(str(mt))
            except ConfigError:
                known = set()
            if known and key not in known:
                near = schema.nearest(key, known)
                err = ConfigError(f"model.config.{key} is not a setting of transformers' {mt} config, so it "
                                  f"cannot be set" + (f"; did you mean {', '.join('model.config.' + n for n in near)}"
                                                      f" (e.g. {'model.config.' + near[0]}={o.value() if o is not None else '<value>'})"
                                                      if near else "") +
                                  f". Fix the spelling on the command line.")
                err.key = path
                return err
            if known:
                return ConfigError(f"{path} is a setting of transformers' {mt} config that the model's YAML does "
                                   f"not set, so Hydra needs a + to add it: +{line}.")
    return ConfigError(f"{path} is not set in the composed config (conf/config.yaml and the "
                       f"chosen group files), so it cannot be changed; add it with +{line}.")


def composition_error(e: Exception, given: set, overrides, extra, groups) -> ConfigError:
    """Hydra's composition error as rooftop's one paragraph: the schema's own problems (an unknown
    key, a wrong type) in the words of :func:`compiler.driver.config.problem_error`, naming the
    command line or the YAML file the key came from."""
    cause = _cause(e)
    text = str(e).strip()
    yerr = _yaml_cause(e)
    if yerr is not None:                 # a YAML file of the config tree does not parse
        mark = getattr(yerr, "problem_mark", None) or getattr(yerr, "context_mark", None)
        where = (f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None
                 else "a YAML file of the config tree")
        what = " ".join(str(getattr(yerr, "problem", None) or yerr).split())
        ctx = getattr(yerr, "context", None)
        return ConfigError(f"{where} is not valid YAML ({(ctx + ': ') if ctx else ''}{what}). Fix the syntax there "
                           f"(indentation, a missing ':' or closing bracket or quote).")
    if cause is not None:
        p = structured.problem(cause, schema.RooftopConfig)
        obj = getattr(cause, "object_type", None)
        if p.kind == "unknown" and not dataclasses.is_dataclass(obj):     # an open mapping (model.config)
            return _open_mapping_error(p.path, overrides, extra)
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




# ------------------------------------------------------------------------------------------------
# before the job exists


@dataclasses.dataclass
class Plan:
    """What :func:`precheck` decided: the command, Hydra's command line (without the output
    directory), and the output directory to create (a single run's or a multirun's)."""
    command: Command
    hydra_argv: list[str]
    out_dir: RunDir | None = None

    def argv_with_dir(self) -> list[str]:
        if self.out_dir is None:
            return list(self.hydra_argv)
        key = "hydra.sweep.dir" if self.command.multirun else "hydra.run.dir"
        return self.hydra_argv + [f"{key}={_quote(self.out_dir.path)}"]


def _quote(value: str) -> str:
    """``value`` as a quoted string of Hydra's override grammar."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


#: at most this many sweep points are composed and checked before a multirun starts
MAX_CHECKED_POINTS = 64


def _sweep_points(overrides, firsts: list[str | None]) -> list[tuple[str, list[str]]]:
    """The command lines of a basic sweep to check before it starts: every value of every swept
    key, the other keys at their first value (``(label, overrides)``, the first point first)."""
    base = [f for f in firsts if f is not None]
    out = [("", base)]
    for i, o in enumerate(overrides):
        if o.is_delete() or not o.is_sweep_override():
            continue
        try:
            values = list(o.sweep_string_iterator())
        except Exception:  # noqa: BLE001 - an interval / a sweep Hydra's sweeper expands itself
            continue
        prefix = {"ADD": "+", "FORCE_ADD": "++"}.get(o.type.name if hasattr(o, "type") else "", "")
        for v in values[1:]:
            pt = [f"{prefix}{o.key_or_group}={v}" if j == i else f for j, f in enumerate(firsts)]
            out.append((f"{o.key_or_group}={v}", [f for f in pt if f is not None]))
            if len(out) >= MAX_CHECKED_POINTS:
                return out
    return out


def _check_sweeper(hydra_cfg) -> None:
    """The Optuna sweeper's counts (``hydra.sweeper.n_trials`` / ``n_jobs``)."""
    target = str(OmegaConf.select(hydra_cfg, "sweeper._target_", default="") or "")
    if "optuna" not in target.lower():
        return
    for key in ("n_trials", "n_jobs"):
        v = OmegaConf.select(hydra_cfg, f"sweeper.{key}", default=None)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ConfigError(f"hydra.sweeper.{key}={v!r} is out of range: a search runs at least one trial"
                              f"{'' if key == 'n_trials' else ' at a time'}; set hydra.sweeper.{key} to a whole "
                              f"number ≥ 1 (e.g. hydra.sweeper.{key}={60 if key == 'n_trials' else 1}).")


def precheck(argv: list[str]) -> Plan:
    """Check the command line before Hydra runs (see the module doc); returns the :class:`Plan`.
    Raises :class:`ConfigError` (or another RooftopError, exit 2). Keys and types are checked by
    Hydra itself while composing (the schema is first in conf/config.yaml's defaults list); this
    translates its errors and adds rooftop's own checks."""
    cmd = parse_command(argv)
    overrides = _parse_overrides(cmd.overrides)
    extra = cmd.extra
    groups = _groups(extra)
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

    def compose(lines: list[str]):
        try:
            return _compose(lines, extra, cmd.args.config_name)
        except Exception as e:  # noqa: BLE001 - Hydra's composition errors, as one paragraph
            raise composition_error(e, given, overrides, extra, groups) from None

    cfg = compose([f for f in firsts if f is not None])
    hydra_cfg = cfg.hydra
    if cmd.info:                                  # --help / --cfg / --info: nothing is run or written
        return Plan(cmd, cmd.hydra_argv())
    which = "hydra.sweep.dir" if cmd.multirun else "hydra.run.dir"
    rest = [line for line, o in zip(cmd.overrides, overrides) if o.key_or_group != which]
    explicit = len(rest) != len(cmd.overrides)
    try:
        out = str(OmegaConf.select(cfg, which))
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"{which} could not be resolved ({e}); set it explicitly, e.g. "
                          f"{which}=outputs/run1.") from None
    check_output_dir(out, which)
    if cmd.multirun:
        _check_sweeper(hydra_cfg)
        plain = OmegaConf.to_container(cfg, resolve=False)
        plain.pop("hydra", None)
        try:
            search = search_settings(plain)
        except ConfigError:
            search = None
        for label, lines in _sweep_points(overrides, firsts):
            point = cfg if not label else compose(lines)
            try:
                _validate(point, given, overrides, extra, accuracy_gates=search is None)
            except RooftopError as e:
                if not label:
                    raise
                raise ConfigError(f"sweep point {label}: {e}") from None
    else:
        _validate(cfg, given, overrides, extra)
    return Plan(cmd, cmd.hydra_argv(rest), RunDir(out, unique=not explicit))


# ------------------------------------------------------------------------------------------------
# the job


#: the outcome of the last single run in this process (set by the job function)
_OUTCOME: dict[str, int] = {}


@hydra.main(config_path=str(config_dir()), config_name="config", version_base=None)
def _hydra_main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    out_dir = HydraConfig.get().runtime.output_dir
    if HydraConfig.get().mode == RunMode.MULTIRUN:  # a failed point is recorded, not fatal
        signals.check()
        return run_point(cfg, out_dir)
    _OUTCOME["code"] = _single(cfg, out_dir)
    return None


def _error_exit(e: Exception) -> int:
    """Print the one-paragraph message of a failed command and return its exit code: a
    RooftopError's own code, else (a bug) EXIT_INTERNAL; an interrupt raised meanwhile wins."""
    if isinstance(e, RooftopError):
        _print_error(str(e))
        return e.exit_code
    if signals.interrupted():
        raise KeyboardInterrupt from None
    _print_error(internal_error_text(e))
    return EXIT_INTERNAL


def _single(cfg, out_dir: str) -> int:
    try:
        report = run(cfg, out_dir)
    except Exception as e:  # noqa: BLE001 - bad input: its exit code; a bug: one paragraph, exit 1
        return _error_exit(e)
    print(summary_line(report, out_dir), flush=True)
    return EXIT_OK


def _hydra(argv: list[str]) -> int | None:
    """Run Hydra on ``argv`` in this process; None when it returned normally, else the exit code
    of what it raised (its own errors are bad input; anything else is an internal error)."""
    from hydra.errors import HydraException
    saved = sys.argv
    sys.argv = ["rooftop"] + list(argv)
    env = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"   # Hydra re-raises instead of printing a stack trace
    try:
        _hydra_main()
        return None
    except SystemExit as e:                # --help / --hydra-help / --shell-completion
        return EXIT_OK if e.code in (None, 0) else (e.code if isinstance(e.code, int) else EXIT_BAD_INPUT)
    except RooftopError as e:
        _print_error(str(e))
        return e.exit_code
    except (HydraException, OmegaConfBaseException) as e:
        if signals.interrupted():
            raise KeyboardInterrupt from None
        cause = _cause(e)
        msg = " ".join(str(cause if cause is not None else e).split()) or type(e).__name__
        _print_error(f"Hydra could not run the command: {msg}. Check the overrides and flags "
                     f"(rooftop --help lists the config groups).")
        return EXIT_BAD_INPUT
    except Exception as e:  # noqa: BLE001
        if signals.interrupted():
            raise KeyboardInterrupt from None
        _print_error(internal_error_text(e))
        return EXIT_INTERNAL
    finally:
        sys.argv = saved
        if env is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = env


def _single_run(plan: Plan) -> int:
    rd = plan.out_dir
    rd.open()
    code = EXIT_INTERNAL
    try:
        _OUTCOME.clear()
        ret = _hydra(plan.argv_with_dir())
        code = ret if ret is not None else _OUTCOME.get("code", EXIT_INTERNAL)
    finally:
        rd.close(keep=code in KEEP_CODES and not signals.interrupted())
    return code


def _finished_points(sweep_dir: Path) -> list[Path]:
    return [d for d in sorted(sweep_dir.iterdir()) if d.is_dir() and (d / "point.json").is_file()]


def _multirun(plan: Plan) -> int:
    _quiet_optuna()
    rd = plan.out_dir
    rd.open()
    sweep.reset_summary()
    code, ret = EXIT_INTERNAL, None
    try:
        ret = _hydra(plan.argv_with_dir())
        code = ret if ret is not None else last_exit_code()
    finally:
        root = Path(rd.path)
        # a point that never finished (Ctrl-C, a crash) left only Hydra's .hydra/: not an artifact
        # (dot folders are the launchers' own records: .hydra/, submitit's .submitit/ job logs)
        for d in root.iterdir() if root.is_dir() else ():
            if d.is_dir() and not d.name.startswith(".") and not (d / "point.json").is_file():
                shutil.rmtree(d, ignore_errors=True)
        reports = [d for d in _finished_points(root) if (d / "report.json").is_file()] if root.is_dir() else []
        rd.close(keep=code in KEEP_CODES or bool(reports))
        if code not in KEEP_CODES and not reports and not signals.interrupted() and ret is None:
            first = next((r.get("error") for r in (sweep.last_summary().get("rows") or [])
                          if r.get("status") == "failed"), None)
            _print_error(f"no point of the sweep produced a report, so nothing was kept; the first failure: "
                         f"{first or 'see the lines above'}")
        if reports:
            _INTERRUPT_NOTE["text"] = (f"rooftop: interrupted (Ctrl-C); the {len(reports)} point(s) that finished "
                                       f"are kept in {rd.path}, nothing partial was left.")
    return code


def _quiet_optuna() -> None:
    with contextlib.suppress(ImportError):
        import optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        optuna.logging.disable_default_handler()
        optuna.logging.enable_propagation()


def _quiet_libraries() -> None:
    """No library's own logging on stderr: onnxruntime's (coloured) error log — its errors reach
    rooftop as exceptions and are reported once — and transformers' / huggingface_hub's progress
    bars and warnings."""
    with contextlib.suppress(ImportError):
        import onnxruntime
        onnxruntime.set_default_logger_severity(4)
    with contextlib.suppress(ImportError):
        import transformers
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    with contextlib.suppress(ImportError):
        import huggingface_hub.utils
        huggingface_hub.utils.disable_progress_bars()


# ------------------------------------------------------------------------------------------------
# the entry point


_INTERRUPT_NOTE: dict[str, str] = {}
INTERRUPTED_LINE = "rooftop: interrupted (Ctrl-C); nothing partial was left in the output directory."


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] == "calibrate":
        return calibrate.main(argv[1:])
    if argv and argv[0] == "compare":
        return compare.main(argv[1:])
    if "--version" in argv or "-V" in argv:
        print(f"rooftop {version()}")
        return EXIT_OK
    try:
        plan = precheck(argv)
        if plan.command.info:
            ret = _hydra(plan.hydra_argv)
            return EXIT_OK if ret is None else ret
        return _multirun(plan) if plan.command.multirun else _single_run(plan)
    except Exception as e:  # noqa: BLE001 - bad input: its exit code; a bug: one paragraph, exit 1
        return _error_exit(e)


def cli(argv: list[str] | None = None) -> int:
    """Run one rooftop command (``argv`` without the program name) in this process and return its
    exit code (compiler/errors.py); prints its output and at most one error paragraph, never
    raises, never calls ``sys.exit``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _INTERRUPT_NOTE.clear()
    with signals.installed():
        try:
            _quiet_libraries()
            code = _dispatch(argv)
        except KeyboardInterrupt:
            signals.note()
            code = EXIT_INTERRUPTED
        if signals.interrupted():
            code = EXIT_INTERRUPTED
    if code == EXIT_INTERRUPTED:
        print(_INTERRUPT_NOTE.get("text", INTERRUPTED_LINE), file=sys.stderr)
    return code


def main() -> None:
    code = cli(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    if code == EXIT_INTERRUPTED:
        # A second Ctrl-C, or one still pending in the interpreter, must not turn exit 130 into a
        # death by SIGINT during interpreter shutdown (atexit handlers, thread joins): ignore it
        # and leave at once.
        import signal
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        os._exit(EXIT_INTERRUPTED)
    sys.exit(code)


if __name__ == "__main__":
    main()
