"""EngineState (colonies_es/engine/state.py): the engine's state derived from the log.

Pure code, driven here with real domain events (no NATS): events apply once whoever
wrote them, a gap is reported, and ended graphs leave memory once the follower has
applied their last event, their statistics moving into the colony's totals and back
when they are revived for a change.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from colonies_es.domain import AuditedEvent, ProcessGraph
from colonies_es.engine.state import EngineState, NotNext
from colonies_es.models import Executor, Workflow, func_spec
from colonies_es.states import ExecutorState

COLONY = "dev"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
WORKER = Executor(
    executorid="e" * 64,
    executorname="worker",
    executortype="python-executor",
    colonyname=COLONY,
    state=int(ExecutorState.APPROVED),
)


IDS: Iterator[str] = (f"{n:064x}" for n in itertools.count(1))
"""Distinct ids for every graph and process of this module."""


def submitted(name: str) -> tuple[ProcessGraph, list[AuditedEvent]]:
    spec = func_spec(name, [], COLONY, "python-executor")
    graph = ProcessGraph.submit(
        COLONY,
        Workflow(colonyname=COLONY, functionspecs=[spec]),
        initiatorid="u" * 64,
        initiatorname="alice",
        now=T0,
        actor="u" * 64,
        command=b"",
        ids=IDS,
    )
    return graph, list(graph.collect_events())  # type: ignore[arg-type]


def run_to_success(graph: ProcessGraph) -> list[AuditedEvent]:
    [processid] = graph.nodes
    audit = {"actor": WORKER.executorid, "command": b""}
    graph.assign(processid, WORKER, 1, now=T0 + timedelta(seconds=1), **audit)
    graph.close(processid, WORKER.executorid, [1], now=T0 + timedelta(seconds=2), **audit)
    return list(graph.collect_events())  # type: ignore[arg-type]


def never_busy(_: str) -> bool:
    return False


def test_an_event_applies_once_and_a_gap_is_reported() -> None:
    state = EngineState()
    graph, created = submitted("a")
    later = run_to_success(graph)
    assert state.apply(created[0], 1)
    assert not state.apply(created[0], 1)  # already in (e.g. this replica wrote it)
    with pytest.raises(NotNext):
        state.apply(later[1], 3)  # version 3 after 1
    assert state.apply(later[0], 2)
    assert state.get(graph.id) is not None
    assert state.get(graph.id).version == 2  # type: ignore[union-attr]


def test_an_ended_graph_leaves_memory_once_its_last_event_is_applied() -> None:
    state = EngineState()
    graph, created = submitted("a")
    state.apply(created[0], 1)
    for sequence, event in enumerate(run_to_success(graph), start=2):
        state.apply(event, sequence)
    assert state.sweep(never_busy) == []  # the follower is not at sequence 3 yet
    state.advance(3)
    assert state.sweep(never_busy) == [graph.id]
    assert not state.is_resident(graph.id)
    assert state.get(graph.id) is None
    [processid] = graph.nodes
    assert state.graph_of(processid) == graph.id  # a legacy (counted) id: mapped
    assert state.evicted_counts(COLONY)["successfulprocesses"] == 1
    assert state.evicted_counts(COLONY)["successfulworkflows"] == 1
    assert state.resident_graphs(COLONY) == []


def test_a_graph_being_changed_is_not_evicted() -> None:
    state = EngineState()
    graph, created = submitted("a")
    state.apply(created[0], 1)
    for sequence, event in enumerate(run_to_success(graph), start=2):
        state.apply(event, sequence)
    state.advance(3)
    assert state.sweep(lambda graph_id: graph_id == graph.id) == []
    assert state.is_resident(graph.id)


def test_a_live_graph_stays_and_a_revived_graph_leaves_the_totals() -> None:
    state = EngineState()
    live, live_events = submitted("b")
    state.apply(live_events[0], 1)
    ended, created = submitted("a")
    state.apply(created[0], 2)
    for sequence, event in enumerate(run_to_success(ended), start=3):
        state.apply(event, sequence)
    state.advance(4)
    assert state.sweep(never_busy) == [ended.id]
    assert state.is_resident(live.id)

    state.revive(ended)  # a command loaded it from the log to change it
    assert state.is_resident(ended.id)
    assert state.evicted_counts(COLONY)["successfulprocesses"] == 0
    assert {g.id for g in state.resident_graphs(COLONY)} == {live.id, ended.id}


def test_pending_processes_follow_each_change_and_leave_with_evicted_graphs() -> None:
    state = EngineState()
    first, first_events = submitted("a")
    _, second_events = submitted("b")
    state.apply(first_events[0], 1)
    assert state.pending_processes(COLONY) == 1
    state.apply(second_events[0], 2)
    assert state.pending_processes(COLONY) == 2
    assert state.pending_processes("another colony") == 0
    assign, close = run_to_success(first)
    state.apply(assign, 3)  # RUNNING still counts
    assert state.pending_processes(COLONY) == 2
    state.apply(close, 4)
    assert state.pending_processes(COLONY) == 1
    state.advance(4)
    assert state.sweep(never_busy) == [first.id]
    assert state.pending_processes(COLONY) == 1
    state.revive(first)  # ended: revived, it still counts nothing
    assert state.pending_processes(COLONY) == 1


def _derived_graph(number: int) -> tuple[ProcessGraph, list[AuditedEvent]]:
    """A single-process graph with ids as the engine makes them (derived, not legacy)."""
    spec = func_spec(f"job{number}", [], COLONY, "python-executor")
    graph = ProcessGraph.submit(
        COLONY,
        Workflow(colonyname=COLONY, functionspecs=[spec]),
        initiatorid="u" * 64,
        initiatorname="alice",
        now=T0,
        actor="u" * 64,
        command=b"",
    )
    return graph, list(graph.collect_events())  # type: ignore[arg-type]


def _sizes(state: EngineState) -> dict[str, int]:
    """The number of entries of every container the state holds (its memory's shape)."""
    sizes = {}
    for owner, fields in (("", vars(state)), ("ready.", vars(state.ready))):
        for name, value in fields.items():
            if isinstance(value, dict | list | set):
                nested = [v for v in (value.values() if isinstance(value, dict) else ()) if v]
                sizes[owner + name] = len(value) + sum(
                    len(v) for v in nested if isinstance(v, dict | list | set)
                )
    return sizes


def test_nothing_of_an_ended_graph_with_derived_ids_stays_in_memory() -> None:
    """Issue 14: after the sweep, no container of the state grows with ended graphs
    (a legacy id would stay in the legacy map: tests/test_engine_ids.py)."""
    state = EngineState()
    sequence = 0

    def run(graphs: int) -> None:
        nonlocal sequence
        for number in range(graphs):
            graph, events = _derived_graph(number)
            for event in events + run_to_success(graph):
                sequence += 1
                state.apply(event, sequence)
        state.advance(sequence)
        state.sweep(never_busy)

    run(1100)
    sizes = _sizes(state)
    assert max(sizes.values()) < 100, sizes  # what each holds is bounded, not per graph
    assert state.aggregates == {}
    assert state.evicted_counts(COLONY)["successfulprocesses"] == 1100
    capture = state.capture()()
    assert [(c.graphs, c.processes) for c in capture.colonies] == [(b"", b"")]
