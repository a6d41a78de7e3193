"""User-facing errors and the exit codes of the interface contract.

0 ok; 2 bad input (config, model file, unsupported op) with a one-paragraph message that says
what is wrong and how to fix it; 3 a gate (budget in config) was exceeded.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_GATE = 3


class RooftopError(Exception):
    """Base of every error the command reports to the user (never a traceback)."""

    exit_code = EXIT_BAD_INPUT


class ConfigError(RooftopError):
    """A configuration value is missing, malformed or impossible."""


class ModelFileError(RooftopError):
    """A model file is missing, truncated or not a valid ONNX model."""


class PassError(RooftopError):
    """A pass failed; names the pass and those that ran before it."""


class GateError(RooftopError):
    """A configured budget (gate) was exceeded; the report is still written."""

    exit_code = EXIT_GATE
