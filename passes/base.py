"""Pass infrastructure: a pass is ``Graph -> PassResult(graph, changed, stats)``.

- Passes are in place (they mutate and return the graph they were given); the base ``__call__``
  checks that, like onnx-ir's ``InPlacePass``.
- The :class:`PassManager` is itself a pass: it runs a configured list, verifies the graph between
  passes in debug mode, names the failing pass and those before it, and records the cost before
  and after each pass through a callback (the cost model is not this module's business).
- Ordering constraints are data (:data:`ORDER_CONSTRAINTS`), checked before anything runs.
"""
from __future__ import annotations

import contextvars
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from compiler.errors import ConfigError, PassError
from compiler.ir import Graph, IRError
from compiler.ir.evaluate import Evaluator


@dataclasses.dataclass
class PassResult:
    """``notes``: why the pass left something undone — a rule that did not fire on an op it was
    meant for, a refused KV cache: ``{"rule", "where", "check"}`` each (report.json
    ``passes[].notes``)."""

    graph: Graph
    changed: bool
    stats: dict[str, int] = dataclasses.field(default_factory=dict)
    notes: list[dict[str, str]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class PassContext:
    """What a pass may know about the run besides the graph: the configured hardware, the
    workload points ``(B, S, P, phase)`` the pipeline costs at (prefill and decode), and an
    :class:`compiler.ir.evaluate.Evaluator` for passes that need values (constant folding, mask
    analysis, calibration). Cost-aware passes (fusion) compare predicted times there; others
    ignore it.

    Like TVM's ``PassContext``, a context is *current* while a pass runs under it (the pass
    manager enters each pass's context), so code deep inside a rewrite reads it with
    :meth:`current` instead of threading it through every call. Outside any context,
    :meth:`current` is the default context: no hardware, and the evaluator installed with
    :func:`install_default_evaluator` (the driver passes its own; tests and scripts install one)."""

    hardware: Any = None
    points: tuple = ()
    evaluator: Evaluator | None = None

    def __enter__(self) -> "PassContext":
        _TOKENS.append(_CURRENT.set(self))    # contexts nest (a manager inside a manager)
        return self

    def __exit__(self, *exc) -> None:
        _CURRENT.reset(_TOKENS.pop())

    @staticmethod
    def current() -> "PassContext":
        return _CURRENT.get() or _DEFAULT

    def require_evaluator(self, who: str) -> Evaluator:
        ev = self.evaluator or _DEFAULT_EVALUATOR[0]
        if ev is None:
            raise IRError(f"{who} evaluates part of the graph and needs an evaluator: run it under a "
                          f"PassContext(evaluator=compiler.backend.evaluate.OnnxEvaluator()) or call "
                          f"passes.base.install_default_evaluator(...) once.")
        return ev


_DEFAULT = PassContext()
_CURRENT: contextvars.ContextVar[PassContext | None] = contextvars.ContextVar("rooftop_pass_context", default=None)
_TOKENS: list = []
_DEFAULT_EVALUATOR: list[Evaluator | None] = [None]


def install_default_evaluator(evaluator: Evaluator | None) -> None:
    """The evaluator used where no current :class:`PassContext` names one (library use, tests)."""
    _DEFAULT_EVALUATOR[0] = evaluator


def evaluator(who: str = "this rewrite") -> Evaluator:
    """The current context's evaluator (see :class:`PassContext`)."""
    return PassContext.current().require_evaluator(who)


class Pass:
    """Subclasses set ``name`` and implement :meth:`run`. Parameters come from the pipeline
    config as keyword arguments; :meth:`check_params` rejects impossible ones. ``context``
    (a :class:`PassContext`) is set by ``make_pass`` when the pipeline knows it."""

    name: str = "pass"
    context: PassContext | None = None

    def __init__(self, **params: Any):
        self.params = params
        self.check_params()

    def check_params(self) -> None:
        if self.params:
            raise ConfigError(f"pass {self.name!r} takes no parameters, got {sorted(self.params)}; "
                              f"remove them from the pipeline config.")

    def run(self, graph: Graph) -> PassResult:
        raise NotImplementedError

    def requires(self, graph: Graph) -> None:
        """Preconditions on ``graph`` (raise :class:`compiler.ir.IRError` when unmet); checked by
        the pass manager before :meth:`run`. Default: none."""

    def ensures(self, graph: Graph) -> None:
        """Postconditions on the rewritten ``graph``; checked by the pass manager after
        :meth:`run`. Default: none."""

    def __call__(self, graph: Graph) -> PassResult:
        if self.context is not None:
            with self.context:
                res = self.run(graph)
        else:
            res = self.run(graph)
        if res.graph is not graph:
            raise IRError(f"in-place pass {self.name} returned a different graph object")
        return res


class FunctionPass(Pass):
    """Wrap ``fn(graph) -> stats`` (a dict of counts; an empty dict means no change)."""

    def __init__(self, name: str, fn: Callable[[Graph], Mapping[str, int]], **params):
        self.name = name
        self.fn = fn
        super().__init__(**params)

    def run(self, graph):
        stats = dict(self.fn(graph))
        return PassResult(graph, any(stats.values()), stats)


# (a, b): when both run, a must come before b.
ORDER_CONSTRAINTS: list[tuple[str, str]] = [
    ("fuse_eager_attention", "lift_kv_cache"),   # the cache attaches to Attention ops
    ("lift_kv_cache", "fuse"),                   # fusion rules see the cached attention
    ("lift_kv_cache", "fuse_attention"),
    # compression works on the final linear layers (merged Q/K/V, gate/up; GEMM epilogues), and
    # quantization keeps a pruned pattern (its zeros stay exact zeros)
    ("fuse", "prune_nm"), ("fuse_gemm", "prune_nm"), ("fuse", "quantize"), ("fuse_gemm", "quantize"),
    ("prune_nm", "quantize"), ("fuse", "quantize_auto"), ("fuse_gemm", "quantize_auto"), ("prune_nm", "quantize_auto"),
    ("quantize_kv", "quantize"), ("quantize_kv", "quantize_auto"),
    # paging replaces the lifted cache's past inputs, after fusion saw the contiguous attention
    ("lift_kv_cache", "kv_paging"), ("kv_cache", "kv_paging"), ("fuse", "kv_paging"),
    ("fuse_attention", "kv_paging"),
]


@dataclasses.dataclass
class PassRecord:
    name: str
    changed: bool
    stats: dict[str, int]
    seconds: float
    cost_before: Any = None
    cost_after: Any = None
    notes: tuple = ()


class PassManager(Pass):
    """Runs passes in order; itself a pass, so managers nest (a recipe inside the pipeline).

    - Ordering constraints (:data:`ORDER_CONSTRAINTS`) are checked over every leaf pass, nested
      managers included, before anything runs.
    - Each leaf pass's :meth:`Pass.requires` is checked before it runs and :meth:`Pass.ensures`
      after; in ``debug`` mode the graph is verified after every pass, and with ``verify`` after
      this manager's passes.
    - ``cost_fn(graph)`` (given by the driver: the cost model is not this module's business)
      records the predicted cost before and after each leaf pass; :attr:`records` holds one
      :class:`PassRecord` per leaf pass, nested managers' included, in the order they ran.
    - ``snapshot``: keep a copy of the graph as it was when this manager started
      (:attr:`input_graph`, only for graphs with weights) — the compression stage's accuracy
      reference.
    - A failure names the failing pass and every pass that ran before it.
    """

    name = "pipeline"

    def __init__(self, passes: Sequence[Pass], *, name: str = "pipeline", debug: bool = False,
                 cost_fn: Callable[[Graph], Any] | None = None,
                 progress: Callable[[str, int, int], None] | None = None,
                 verify: bool = False, snapshot: bool = False):
        self.passes = list(passes)
        self.name = name
        self.debug = debug
        self.cost_fn = cost_fn
        self.progress = progress
        self.verify = verify
        self.snapshot = snapshot
        self.input_graph: Graph | None = None
        self.records: list[PassRecord] = []
        self.params = {}
        names = self.leaf_names()
        for a, b in ORDER_CONSTRAINTS:
            if a in names and b in names and names.index(a) > names.index(b):
                raise ConfigError(f"pipeline runs {b!r} before {a!r}, but {a!r} must run first; "
                                  f"reorder pipeline.passes.")

    def leaf_names(self) -> list[str]:
        out: list[str] = []
        for p in self.passes:
            out += p.leaf_names() if isinstance(p, PassManager) else [p.name]
        return out

    def run(self, graph: Graph) -> PassResult:
        return self._run(graph, None, [], len(self.leaf_names()))

    def _run(self, graph: Graph, cost: Any, ran: list[str], total: int) -> PassResult:
        changed = False
        stats: dict[str, int] = {}
        self.records = []
        if self.snapshot:
            self.input_graph = graph.copy() if graph.has_weights() else None
        if cost is None and self.cost_fn:
            cost = self.cost_fn(graph)
        for p in self.passes:
            if isinstance(p, PassManager):
                p.cost_fn = p.cost_fn or self.cost_fn
                p.debug = p.debug or self.debug
                p.progress = p.progress or self.progress
                res = p._run(graph, cost, ran, total)
                self.records += p.records
                if p.records:
                    cost = p.records[-1].cost_after
            else:
                if self.progress:
                    self.progress(p.name, len(ran), total)
                t0 = time.perf_counter()
                try:
                    p.requires(graph)
                    res = p(graph)
                    p.ensures(graph)
                    if self.debug:
                        graph.verify()
                except (IRError, ValueError, KeyError, TypeError, AssertionError) as e:
                    raise PassError(
                        f"pass {p.name!r} failed: {e}. Passes that ran before it: "
                        f"{', '.join(ran) if ran else '(none)'}. Remove {p.name!r} from "
                        f"pipeline.passes to get a result without it, and report the model and "
                        f"config so the pass can be fixed.") from e
                # an unchanged graph costs what it cost before (passes report changes truthfully)
                after = self.cost_fn(graph) if self.cost_fn and res.changed else cost
                self.records.append(PassRecord(p.name, res.changed, dict(res.stats),
                                               time.perf_counter() - t0, cost, after,
                                               tuple(dict(n) for n in res.notes)))
                cost = after
                ran.append(p.name)
            changed |= res.changed
            for k, v in res.stats.items():
                stats[k if isinstance(p, PassManager) else f"{p.name}.{k}"] = v
        if self.verify:
            graph.verify()
        if self.progress and len(ran) == total:
            self.progress("done", total, total)
        return PassResult(graph, changed, stats)
