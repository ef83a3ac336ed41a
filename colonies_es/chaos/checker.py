"""The checker: what the raw event log must show after a run, whatever was killed.

It reads only the log (every message on ``colonies.ev.>``, straight from JetStream) and
the journals of acknowledged commands (:mod:`.journal`), and reports an
:class:`Anomaly` for each of:

- **lost or duplicated acknowledged writes:** every acknowledged command has exactly
  its event: a submission its ``GraphSubmitted``; a claim the ``ProcessAssigned`` of
  that process and attempt, to that executor; a close the ``ProcessClosed`` of that
  process by that executor in that attempt; a fail its ``ProcessFailed``; an
  ``add_child`` the ``ChildAdded`` of that child, an ``add_children`` one
  ``ChildrenAdded`` holding all its children;
- **a history that does not add up:** an aggregate whose versions are not 1..n in
  stream order; a message the engine did not seal; two assignments of one attempt; two
  closes of one process;
- **wrong results:** a graph that did not end in SUCCESS, a process whose output is not
  what its function computes from its input (:func:`~.workload.expected_output`), a
  workflow whose final node does not hold the workflow's result.

:func:`check_views` (the projector's view equals a fresh rebuild) and :func:`check_audit`
(``colonies audit verify`` passes) add theirs to the same :class:`CheckReport`.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import nats.errors
from eventsourcing.persistence import OperationalError

from colonies_es.chaos.stack import dump_view
from colonies_es.chaos.workload import expected_output, expected_result
from colonies_es.domain import (
    AuditedAggregate,
    ChildAdded,
    ChildrenAdded,
    GraphSubmitted,
    ProcessAssigned,
    ProcessClosed,
    ProcessFailed,
    ProcessGraph,
)
from colonies_es.domain.base import AuditedEvent
from colonies_es.projections.audit import Authorities, verify_log
from colonies_es.projections.history import Untrusted, decode_event, sealer_of
from colonies_es.states import ProcessState
from colonies_es.store.jetstream import JetStreamLog

__all__ = [
    "Anomaly",
    "CheckReport",
    "LoggedEvent",
    "check_audit",
    "check_log",
    "check_views",
    "read_and_check",
    "unfinished_graphs",
]

STREAM = "COLONIES"
READ_ATTEMPTS = 5
"""Reads of the whole log tried before giving up (a server may not answer for a moment)."""
_CHUNK = 1000

_READ_PATIENCE = 30.0
"""Seconds a read of the log waits out a cluster electing the stream's leader."""


@dataclass(frozen=True)
class Anomaly:
    """Something the log should not show: its ``kind``, the graph and stream sequence
    concerned (when there is one) and what exactly is wrong."""

    kind: str
    message: str
    graph: str = ""
    sequence: int = 0
    process: str = ""
    """The process concerned (its full id), when there is one."""

    def __str__(self) -> str:
        where = []
        if self.graph:
            where.append(f"graph {self.graph}")
        if self.sequence:
            where.append(f"seq {self.sequence}")
        place = f" ({', '.join(where)})" if where else ""
        return f"{self.kind}{place}: {self.message}"


@dataclass
class CheckReport:
    """What the checker read and found."""

    events: int = 0
    graphs: int = 0
    graphs_succeeded: int = 0
    acknowledged: dict[str, int] = field(default_factory=dict)
    """Acknowledged commands by op (``claim``, ``close``, ...)."""
    torn_journal_lines: int = 0
    audited: int = 0
    anomalies: list[Anomaly] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.anomalies

    def add(
        self, kind: str, message: str, graph: str = "", sequence: int = 0, process: str = ""
    ) -> None:
        self.anomalies.append(Anomaly(kind, message, graph, sequence, process))


@dataclass(frozen=True)
class LoggedEvent:
    """A decoded event with the stream sequence it is stored at."""

    sequence: int
    event: AuditedEvent


# ------------------------------------------------------------------------------ the log


async def read_log(servers: Sequence[str], seal_key: str, report: CheckReport) -> list[LoggedEvent]:
    """Every event of the log in stream order; a message that is not one of the engine's
    sealed events is an anomaly (nobody else writes in a harness run)."""
    sealer = sealer_of(seal_key)
    nc = await nats.connect(list(servers))
    try:
        reader = JetStreamLog(nc, STREAM, lambda message: None)
        events: list[LoggedEvent] = []
        start = 1
        while True:
            messages = await reader.read_range(
                "colonies.ev.>", start, _CHUNK, patience=_READ_PATIENCE
            )
            for message in messages:
                try:
                    events.append(LoggedEvent(message.sequence, decode_event(message, sealer)))
                except Untrusted as untrusted:
                    report.add("untrusted", untrusted.reason, sequence=message.sequence)
            if len(messages) < _CHUNK:
                return events
            start = messages[-1].sequence + 1
    finally:
        await nc.close()


def _graph_name(aggregate_id: str) -> str:
    return aggregate_id.rsplit(".", 1)[-1][:16] if ".graph." in aggregate_id else aggregate_id


class _Index:
    """The events the journal's records are matched against."""

    def __init__(self) -> None:
        self.submitted: dict[str, list[int]] = defaultdict(list)
        self.assigned: dict[tuple[str, int], list[tuple[str, int]]] = defaultdict(list)
        self.closed: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
        self.failed: dict[tuple[str, int], list[tuple[str, int]]] = defaultdict(list)
        self.children: dict[str, list[int]] = defaultdict(list)
        self.graph_of: dict[str, str] = {}

    def add(self, logged: LoggedEvent) -> None:
        event, seq = logged.event, logged.sequence
        graph = _graph_name(event.originator_id)
        if isinstance(event, GraphSubmitted):
            self.submitted[event.processgraphid].append(seq)
            for process in event.processes:
                self.graph_of[process["processid"]] = graph
        elif isinstance(event, ProcessAssigned):
            self.assigned[(event.processid, event.attempt)].append((event.executorid, seq))
        elif isinstance(event, ProcessClosed):
            self.closed[event.processid].append((event.executorid, event.attempt, seq))
        elif isinstance(event, ProcessFailed):
            self.failed[(event.processid, event.attempt)].append((event.executorid, seq))
        elif isinstance(event, ChildAdded):
            self.children[event.child["processid"]].append(seq)
            self.graph_of[event.child["processid"]] = graph
        elif isinstance(event, ChildrenAdded):
            for child in event.children:
                self.children[child["processid"]].append(seq)
                self.graph_of[child["processid"]] = graph


def check_log(
    events: Sequence[LoggedEvent], records: Sequence[dict[str, Any]], report: CheckReport
) -> None:
    """Adds to ``report`` what is wrong with ``events`` (the whole log, in order) given
    the acknowledged ``records``."""
    report.events = len(events)
    aggregates = _replay(events, report)
    index = _Index()
    for logged in events:
        index.add(logged)
    _check_history(index, report)
    _check_acknowledged(index, records, report)
    _check_results(aggregates, report)


def _replay(events: Sequence[LoggedEvent], report: CheckReport) -> dict[str, AuditedAggregate]:
    """Every aggregate as its events leave it; versions must be 1..n in stream order."""
    aggregates: dict[str, AuditedAggregate] = {}
    versions: dict[str, int] = {}
    for logged in events:
        event = logged.event
        expected = versions.get(event.originator_id, 0) + 1
        if event.originator_version != expected:
            report.add(
                "version",
                f"{type(event).__name__} is version {event.originator_version} of "
                f"{event.originator_id}, expected {expected}",
                _graph_name(event.originator_id),
                logged.sequence,
            )
            continue
        try:
            mutated = event.mutate(aggregates.get(event.originator_id))
        except Exception as error:  # an event that does not apply is a broken history
            report.add(
                "replay",
                f"{type(event).__name__} does not apply: {error!r}",
                _graph_name(event.originator_id),
                logged.sequence,
            )
            continue
        if mutated is not None:
            aggregates[event.originator_id] = mutated
        versions[event.originator_id] = expected
    return aggregates


def _check_history(index: _Index, report: CheckReport) -> None:
    for (processid, attempt), assignments in index.assigned.items():
        if len(assignments) > 1:
            report.add(
                "double assignment",
                f"process {processid[:16]} attempt {attempt} assigned {len(assignments)} times "
                f"(seqs {[seq for _, seq in assignments]})",
                index.graph_of.get(processid, ""),
                assignments[1][1],
                processid,
            )
    for processid, closes in index.closed.items():
        if len(closes) > 1:
            report.add(
                "double close",
                f"process {processid[:16]} closed {len(closes)} times "
                f"(seqs {[seq for *_, seq in closes]})",
                index.graph_of.get(processid, ""),
                closes[1][2],
                processid,
            )


def _check_acknowledged(
    index: _Index, records: Sequence[dict[str, Any]], report: CheckReport
) -> None:
    counts: dict[str, int] = defaultdict(int)
    for record in records:
        op = record["op"]
        counts[op] += 1
        problem = _missing(index, record)
        if problem:
            processid = record.get("process") or record.get("child") or record.get("parent", "")
            graph = record.get("graph", "")[:16] or index.graph_of.get(processid, "")
            report.add(f"lost acknowledged {op}", problem, graph, process=processid)
    report.acknowledged = dict(sorted(counts.items()))


def _missing(index: _Index, record: dict[str, Any]) -> str:
    """Why the log does not hold exactly the event of an acknowledged command ('' if it
    does)."""
    op = record["op"]
    if op == "submit":
        found = index.submitted.get(record["graph"], [])
        return "" if len(found) == 1 else f"{len(found)} GraphSubmitted events, expected 1"
    process, attempt = record.get("process", ""), record.get("attempt", 0)
    executor = record.get("executor", "")
    who = f"process {process[:16]} attempt {attempt} by executor {executor[:16]}"
    if op == "claim":
        assignments = index.assigned.get((process, attempt), [])
        if [e for e, _ in assignments] != [executor]:
            return f"{who}: the log assigns it to {[e[:16] for e, _ in assignments]}"
        return ""
    if op == "close":
        closes = index.closed.get(process, [])
        if [(e, a) for e, a, _ in closes] != [(executor, attempt)]:
            shown = [(e[:16], a) for e, a, _ in closes]
            return f"{who}: the log's closes of it (executor, attempt) are {shown}"
        return ""
    if op == "fail":
        fails = index.failed.get((process, attempt), [])
        if [e for e, _ in fails] != [executor]:
            return f"{who}: the log has {len(fails)} ProcessFailed events for that attempt"
        return ""
    if op == "add_child":
        found = index.children.get(record["child"], [])
        if len(found) != 1:
            return f"child {record['child'][:16]}: {len(found)} ChildAdded events, expected 1"
        return ""
    if op == "add_children":
        found_in = {child: index.children.get(child, []) for child in record["children"]}
        wrong = {child: seqs for child, seqs in found_in.items() if len(seqs) != 1}
        if wrong:
            counts = ", ".join(f"{child[:16]} in {len(seqs)}" for child, seqs in wrong.items())
            return f"add_children of {len(found_in)}: children not in exactly one event: {counts}"
        if len({seqs[0] for seqs in found_in.values()}) != 1:
            return f"add_children of {len(found_in)}: its children are in several events"
        return ""
    return f"unknown record {op!r}"


def _check_results(aggregates: dict[str, AuditedAggregate], report: CheckReport) -> None:
    for aggregate in aggregates.values():
        if not isinstance(aggregate, ProcessGraph):
            continue
        report.graphs += 1
        graph = aggregate.processgraphid[:16]
        if aggregate.state != ProcessState.SUCCESS:
            failed = [
                f"{node.nodename} {ProcessState(node.state).name} after {node.attempt} "
                f"attempt(s): {node.errors[-3:]}"
                for node in aggregate.nodes.values()
                if node.state != ProcessState.SUCCESS
            ]
            report.add(
                "unfinished",
                f"the graph ended {ProcessState(aggregate.state).name}, not SUCCESS; "
                + "; ".join(failed),
                graph,
            )
            continue
        report.graphs_succeeded += 1
        outputs: dict[str, list[Any]] = {}
        for node in aggregate.nodes.values():
            outputs[node.nodename] = node.output
            expected = expected_output(node.spec.funcname, node.input)
            if node.output != expected:
                report.add(
                    "wrong output",
                    f"{node.nodename} returned {node.output!r} for input {node.input!r}, "
                    f"expected {expected!r}",
                    graph,
                )
        result = expected_result(set(outputs))
        if result is None:
            report.add("unknown workflow", f"nodes {sorted(outputs)}", graph)
        elif outputs[result[0]] != result[1]:
            report.add(
                "wrong result",
                f"{result[0]} holds {outputs[result[0]]!r}, the workflow computes {result[1]!r}",
                graph,
            )


# ------------------------------------------------------------------------------ the rest


def check_views(victim: Path, fresh: Path, report: CheckReport) -> None:
    """The view of the projector that was killed during the run equals a fresh
    rebuild's, table by table, row by row."""
    mine, rebuilt = dump_view(victim), dump_view(fresh)
    for table in sorted(set(mine) | set(rebuilt)):
        ours, theirs = mine.get(table, []), rebuilt.get(table, [])
        if ours != theirs:
            only_ours = len(set(ours) - set(theirs))
            only_theirs = len(set(theirs) - set(ours))
            report.add(
                "view",
                f"table {table}: {len(ours)} rows against {len(theirs)} in a fresh rebuild "
                f"({only_ours} only in the view, {only_theirs} only in the rebuild)",
            )


def check_audit(
    servers: Sequence[str], authorities: Authorities, seal_key: str, report: CheckReport
) -> None:
    """``colonies audit verify`` over the whole log: every finding is an anomaly."""

    async def audit() -> None:
        nc = await nats.connect(list(servers))
        try:
            result = await verify_log(nc, authorities, seal_key)
        finally:
            await nc.close()
        report.audited = result.checked
        for finding in result.findings:
            report.add("audit", "; ".join(finding.reasons), sequence=finding.sequence)

    asyncio.run(audit())


def read_and_check(
    servers: Sequence[str], seal_key: str, records: Sequence[dict[str, Any]]
) -> CheckReport:
    """:func:`read_log` then :func:`check_log`, in a new report."""
    for attempt in range(1, READ_ATTEMPTS + 1):
        report = CheckReport()
        try:
            events = asyncio.run(read_log(servers, seal_key, report))
        except (OperationalError, nats.errors.Error, OSError):
            if attempt == READ_ATTEMPTS:
                raise
            time.sleep(1.0)  # a cluster node coming back: read again
            continue
        check_log(events, records, report)
        return report
    raise AssertionError("unreachable")


def unfinished_graphs(servers: Sequence[str], seal_key: str) -> list[str]:
    """The ids of the graphs the log shows neither SUCCESS, FAILED nor CANCELLED."""
    report = CheckReport()
    aggregates = _replay(asyncio.run(read_log(servers, seal_key, report)), report)
    ended = (ProcessState.SUCCESS, ProcessState.FAILED, ProcessState.CANCELLED)
    return [
        graph.processgraphid
        for graph in aggregates.values()
        if isinstance(graph, ProcessGraph) and graph.state not in ended
    ]
