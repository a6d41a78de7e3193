"""User-facing errors and the exit codes of the interface contract.

====  ==========================================================================================
code  meaning
====  ==========================================================================================
0     ok: report written (and ``model.onnx`` emitted and verified where the model has weights)
2     bad input: config (unknown key, bad value, out-of-range workload), model file (missing,
      corrupted, unsafe), unsupported op, unwritable output directory, output directory in use
      by another run. One paragraph says what is wrong and how to fix it; nothing is written.
3     a gate (``gate.*`` budget) was exceeded; the report is written
4     emission or verification failed (the emitted ONNX model could not be written, or it does
      not match the source model); the cost report is written and states the failure
1     internal error: an exception rooftop did not expect — a bug, reported as one paragraph
      (what, and the innermost rooftop frame) without a traceback; nothing is left on disk
130   interrupted (SIGINT / Ctrl-C); the staging directory is removed, nothing partial is left
====  ==========================================================================================

Every error the command reports is a :class:`RooftopError` subclass carrying its exit code; every
``raise`` in compiler/, passes/ and reports/ raises one, or an exception type listed in
:data:`INTERNAL_ERRORS` (tests/driver/test_errors.py walks them all).
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_GATE = 3
EXIT_EMIT = 4
EXIT_INTERRUPTED = 130
EXIT_INTERNAL = 1


class RooftopError(Exception):
    """Base of every error the command reports to the user (never a traceback)."""

    exit_code = EXIT_BAD_INPUT


class InternalError(Exception):
    """An invariant rooftop itself broke (a bug, never bad input): the command reports it as an
    internal error (exit 1) in one paragraph."""


class ConfigError(RooftopError):
    """A configuration value is missing, malformed or impossible."""


class InputValueError(ConfigError, ValueError):
    """A value rooftop's library functions cannot use (bad input, exit 2); a ValueError too, for
    callers of those functions."""


class OutputDirError(ConfigError):
    """The output directory cannot be created or written, or another run holds it."""


class ModelFileError(RooftopError):
    """A model file is missing, truncated, unsafe or not a valid ONNX model."""


class PassError(RooftopError):
    """A pass failed; names the pass and those that ran before it."""


class GateError(RooftopError):
    """A configured budget (gate) was exceeded; the report is still written."""

    exit_code = EXIT_GATE


class EmissionFailed(RooftopError):
    """Emission or verification failed after the cost report was written (exit 4)."""

    exit_code = EXIT_EMIT


class EmitError(RooftopError):
    """The IR could not be turned into a valid ONNX model (compiler/backend/emit.py; the driver
    records it in the report and exits 4)."""


class VerificationError(RooftopError):
    """The emitted model does not match the source model (raised by compiler.backend.verify; the driver
    records it in the report and exits 4)."""

    exit_code = EXIT_EMIT


#: Exception types a ``raise`` may use besides :class:`RooftopError` subclasses, and why each can
#: never reach the user as bad input: a broken invariant (a bug: exit 1, "internal error"), or
#: control flow caught and translated inside the module that raises it.
INTERNAL_ERRORS: dict[str, str] = {
    "InternalError": "compiler.errors.InternalError: an invariant rooftop broke (non-finite step times, a cycle "
                     "among fused ops)",
    "IRError": "compiler.ir.IRError: the graph broke an invariant — a bug in a pass or an importer, never "
               "bad input (bad files are refused by the importers with ModelFileError / UnsupportedOpError)",
    "NotImplementedError": "an abstract method (passes.base.Pass.run, fusion pattern nodes)",
    "TypeError": "a programming error: a caller passed the wrong kind of object (annotations, pattern builders)",
    "KeyError": "a lookup of a name rooftop itself wrote (a report schema, an onnxruntime output)",
    "FileNotFoundError": "the installed package lost its own conf/ directory (compiler/resources.py)",
    "ProblemError": "compiler.perf.structured.ProblemError: OmegaConf's finding, raised by structured.check and "
                    "translated by every caller (compiler.driver.config._typed, compiler.perf.hardware._checked)",
    "KeyboardInterrupt": "Ctrl-C, re-raised where a library may have swallowed it: the command exits 130 "
                         "(compiler.driver.signals)",
    "Refused": "passes.kv_cache_onnx.Refused: a mask pattern the KV lift does not take, caught in that module",
    "SchemaError": "compiler.schema.SchemaError: compiler.schema.validate for tests and tools; the driver reads "
                   "compiler.schema.errors() instead",
}
