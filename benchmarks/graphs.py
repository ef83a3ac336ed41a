"""What one decision costs on a big graph (no server): the engine's domain work only.

A map running under a reduce grows its graph one child at a time (``add_child``), then
the children are assigned and closed one by one; each decision is taken as the engine
takes it: on a copy of the graph (``ProcessGraph.copy``), then installed in an
:class:`~colonies_es.engine.state.EngineState` (its indices, the ready index, the
pending count the quota reads), with the engine's garbage-collector thresholds. Measured
at 100, 1,000 and 5,000 children (``--quick``:
100 and 1,000): the median CPU time of each kind of decision (``time.process_time``, so
a busy machine slows it less than a wall clock), and one ``add_children`` of all the
children at once.

Target: a decision on the largest graph costs at most 2x the same decision on a graph of
100 (a decision costs what it changes, not the graph; what remains is a C-level copy of
the graph's map of processes, about 3 us per 1,000 processes).
"""

from __future__ import annotations

import gc
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from benchmarks.engine import Check
from benchmarks.harness import Options, Report, Sample, environment
from colonies_es.domain import ProcessGraph
from colonies_es.engine import GC_THRESHOLDS
from colonies_es.engine.state import EngineState
from colonies_es.models import Executor, FuncSpec, Workflow, func_spec

SIZES = (100, 1000, 5000)
QUICK_SIZES = (100, 1000)
TARGET_GROWTH = 2.0
"""Largest graph's median decision cost / the 100-child graph's, at most."""
OPS = ("add_child", "assign", "close")

_NOW = datetime.now(UTC)
_AUDIT = {"now": _NOW, "actor": "e" * 64, "command": b"{}"}
_EXECUTOR = Executor(
    executorname="bench", executorid="e" * 64, executortype="t", colonyname="c", state=1
)


def _spec(name: str, *dependencies: str) -> FuncSpec:
    made = func_spec(name, [], "c", "t")
    made.conditions.dependencies.extend(dependencies)
    return made


def _map_running() -> tuple[ProcessGraph, str, str]:
    """A map -> reduce graph with the map RUNNING; its map's and reduce's ids."""
    workflow = Workflow(colonyname="c", functionspecs=[_spec("map"), _spec("reduce", "map")])
    graph = ProcessGraph.submit("c", workflow, initiatorid="u" * 64, initiatorname="u", **_AUDIT)
    mapper, reduce = graph.processids
    graph.assign(mapper, _EXECUTOR, 1, **_AUDIT)
    graph.collect_events()
    return graph, mapper, reduce


def measure(children: int) -> tuple[dict[str, float], float]:
    """Median CPU seconds per decision of each of :data:`OPS` on a map of ``children``
    (the decisions of its second half, when the graph is big), and the CPU seconds of
    one ``add_children`` of them all."""
    graph, mapper, reduce = _map_running()
    state = EngineState()
    spent: dict[str, list[float]] = defaultdict(list)

    def decide(op: str, change: Callable[[ProcessGraph], object]) -> None:
        nonlocal graph
        started = time.process_time()
        draft = graph.copy()
        change(draft)
        state.install(draft, list(draft.collect_events()), 0)
        state.pending_processes("c")
        spent[op].append(time.process_time() - started)
        graph = draft

    for i in range(children):
        decide(
            "add_child",
            lambda g, i=i: g.add_child(
                mapper,
                _EXECUTOR.executorid,
                _spec("pair"),
                f"pair_{i}",
                insert=i == 0,
                childprocessid=reduce,
                **_AUDIT,
            ),
        )
    decide("map closed", lambda g: g.close(mapper, _EXECUTOR.executorid, [], **_AUDIT))
    for processid in graph.processids[2:]:
        decide("assign", lambda g, p=processid: g.assign(p, _EXECUTOR, 1, **_AUDIT))
        decide("close", lambda g, p=processid: g.close(p, _EXECUTOR.executorid, [1], **_AUDIT))
    if not graph.process(reduce).is_ready:
        raise RuntimeError("benchmark went wrong: the reduce is not ready")
    medians = {op: statistics.median(spent[op][children // 2 :]) for op in OPS}

    batch, mapper, reduce = _map_running()
    started = time.process_time()
    draft = batch.copy()
    draft.add_children(
        mapper,
        _EXECUTOR.executorid,
        [(_spec("pair"), f"pair_{i}") for i in range(children)],
        insert=True,
        **_AUDIT,
    )
    EngineState().install(draft, list(draft.collect_events()), 0)
    return medians, time.process_time() - started


@dataclass
class GraphsReport(Report):
    """:class:`Report` with the growth checks."""

    checks: list[Check] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        document = super().to_json()
        document["checks"] = [check.to_json() for check in self.checks]
        return document


def run(options: Options) -> Report:
    sizes = QUICK_SIZES if options.quick else SIZES
    gc.set_threshold(*GC_THRESHOLDS)  # as the engine runs (its collections walk the heap)
    report = GraphsReport(
        group="graphs",
        runs=options.runs,
        parameters={"children": list(sizes), "clock": "time.process_time"},
        environment=environment(),
    )
    for children in sizes:
        for _ in range(options.runs):
            medians, batch = measure(children)
            for op, seconds in medians.items():
                report.add(f"{op}_{children}", f"{op} on a map of {children:,}", "op/s",
                           Sample(1, seconds))  # fmt: skip
            report.add(f"add_children_{children}", f"add_children of {children:,}",
                       "child/s", Sample(children, batch))  # fmt: skip
    smallest, largest = sizes[0], sizes[-1]
    report.checks += [
        Check(
            f"{op}: cost on {largest:,} / on {smallest:,}",
            report.value(f"{op}_{smallest}") / report.value(f"{op}_{largest}"),
            TARGET_GROWTH,
            "x",
            at_least=False,
            applies=not options.quick,
        )
        for op in OPS
    ]
    print()
    for check in report.checks:
        limit = f"<= {check.limit:g}x"
        print(f"{check.what:<40} {check.value:>6.2f}x  (target {limit})  {check.result}")
    return report
