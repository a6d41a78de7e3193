"""Pass infrastructure: a pass is ``Graph -> PassResult(graph, changed, stats)``.

- Passes are in place (they mutate and return the graph they were given); the base ``__call__``
  checks that, like onnx-ir's ``InPlacePass``.
- The :class:`PassManager` is itself a pass: it runs a configured list, verifies the graph between
  passes in debug mode, names the failing pass and those before it, and records the cost before
  and after each pass through a callback (the cost model is not this module's business).
- Ordering constraints are data (:data:`ORDER_CONSTRAINTS`), checked before anything runs.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from compiler.errors import ConfigError, PassError
from compiler.ir import Graph, IRError


@dataclasses.dataclass
class PassResult:
    graph: Graph
    changed: bool
    stats: dict[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class PassContext:
    """What a pass may know about the run besides the graph: the configured hardware and the
    workload points ``(B, S, P, phase)`` the pipeline costs at (prefill and decode). Cost-aware
    passes (fusion) compare predicted times there; others ignore it."""

    hardware: Any = None
    points: tuple = ()


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

    def __call__(self, graph: Graph) -> PassResult:
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
    ("prune_nm", "quantize"),
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


class PassManager(Pass):
    name = "pipeline"

    def __init__(self, passes: Sequence[Pass], *, debug: bool = False,
                 cost_fn: Callable[[Graph], Any] | None = None,
                 progress: Callable[[str, int, int], None] | None = None):
        self.passes = list(passes)
        self.debug = debug
        self.cost_fn = cost_fn
        self.progress = progress
        self.records: list[PassRecord] = []
        self.params = {}
        names = [p.name for p in self.passes]
        for a, b in ORDER_CONSTRAINTS:
            if a in names and b in names and names.index(a) > names.index(b):
                raise ConfigError(f"pipeline runs {b!r} before {a!r}, but {a!r} must run first; "
                                  f"reorder pipeline.passes.")

    def run(self, graph: Graph) -> PassResult:
        changed = False
        stats: dict[str, int] = {}
        cost = self.cost_fn(graph) if self.cost_fn else None
        for i, p in enumerate(self.passes):
            if self.progress:
                self.progress(p.name, i, len(self.passes))
            t0 = time.perf_counter()
            try:
                res = p(graph)
                if self.debug:
                    graph.verify()
            except (IRError, ValueError, KeyError, TypeError, AssertionError) as e:
                before = [q.name for q in self.passes[:i]]
                raise PassError(
                    f"pass {p.name!r} failed: {e}. Passes that ran before it: "
                    f"{', '.join(before) if before else '(none)'}. Remove {p.name!r} from "
                    f"pipeline.passes to get a result without it, and report the model and "
                    f"config so the pass can be fixed.") from e
            # an unchanged graph costs what it cost before (passes report changes truthfully)
            after = self.cost_fn(graph) if self.cost_fn and res.changed else cost
            self.records.append(PassRecord(p.name, res.changed, dict(res.stats),
                                           time.perf_counter() - t0, cost, after))
            cost = after
            changed |= res.changed
            for k, v in res.stats.items():
                stats[f"{p.name}.{k}"] = v
        if self.progress:
            self.progress("done", len(self.passes), len(self.passes))
        return PassResult(graph, changed, stats)
