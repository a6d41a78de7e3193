"""The run context: everything an analysis may read about one run, built once by the driver.

An analysis section is a function ``section(ctx) -> dict | None`` (:class:`Section`) that reads a
:class:`RunContext` — the validated config, the workload, the hardware, the compiled graph with its
cost model and schedule, the pass records, the model's dimensions, the speculative draft and what
was measured on the source model — and returns its part of ``report.json`` (None when it does not
apply). Sections never import models, run torch or read files: the driver did that and put the
results here.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol

from compiler.ir import Graph
from compiler.ir.facts import ModelDims
from compiler.perf.cost import CostModel
from compiler.perf.hardware import Hardware
from compiler.perf.runtime import Runtime
from compiler.perf.schedule import Schedule


@dataclasses.dataclass(frozen=True)
class Draft:
    """A speculative draft model resolved by the driver: its ``name``, model ``config`` (the
    library YAML), its compiled cost-only ``graph`` (same pass recipe as the target) and its
    ``dims``."""

    name: str
    config: Mapping[str, Any]
    graph: Graph
    dims: ModelDims | None = None


@dataclasses.dataclass(frozen=True)
class RunContext:
    """One run, as the analyses see it (see the module doc)."""

    cfg: Mapping[str, Any]              # the validated config (plain dict, every default filled)
    workload: Mapping[str, int]         # batch, prompt_len, gen_len, context_len
    hardware: Hardware
    graph: Graph
    cost: CostModel
    schedule: Schedule
    records: tuple = ()                 # passes.base.PassRecord of every pass that ran
    dims: ModelDims | None = None       # the model's dimensions (None: not a transformer config)
    draft: Draft | None = None          # speculative.draft_model (a library model), else None
    measured: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # what the driver measured on the source model: "acceptance" (speculative.acceptance=measured)
    # and "early_exit" (early_exit.threshold calibration); compiler.frontends.measure
    runtime: Runtime | None = None      # the runtime profile the cost model prices with (runtime=)

    @property
    def model_cfg(self) -> Mapping[str, Any]:
        return self.cfg["model"]


class Section(Protocol):
    """An analysis section: its part of report.json from the run context (None: not applicable)."""

    def __call__(self, ctx: RunContext) -> dict[str, Any] | None: ...


__all__ = ["RunContext", "Draft", "Section"]
