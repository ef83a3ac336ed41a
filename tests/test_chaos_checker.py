"""The chaos checker's judgement, on histories made by the real domain (no server).

A clean run of the seed's ``gen_nums -> sum_nums`` passes; each way a log can break the
promise (an acknowledged close or claim missing, a second assignment of one attempt, a
second close, a gap in the versions, a wrong output, a graph left unfinished) is
reported with its kind, graph and process.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from colonies_es import crypto
from colonies_es.chaos.checker import CheckReport, LoggedEvent, check_log
from colonies_es.chaos.workload import make_workflow
from colonies_es.domain import AuditedEvent, ProcessGraph
from colonies_es.models import Executor

EXECUTOR_KEY = crypto.new_private_key()
EXECUTOR = Executor(
    executorid=crypto.id_from_private_key(EXECUTOR_KEY),
    executortype="chaos-executor",
    executorname="chaos-1",
    colonyname="c1",
    state=1,
)


class Clock:
    """Audit fields a millisecond apart (the domain never reads the clock itself)."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def audit(self) -> dict[str, Any]:
        self.now += timedelta(milliseconds=1)
        return {"now": self.now, "actor": EXECUTOR.executorid, "command": b""}


def run_sum_workflow(
    outputs: tuple[list[Any], list[Any]] = ([1, 2], [3]),
) -> tuple[list[LoggedEvent], list[dict[str, Any]], ProcessGraph]:
    """The seed's sum workflow run to its end by one executor: the log's events and the
    journal an executor would have written."""
    clock = Clock()
    graph = ProcessGraph.submit(
        "c1", make_workflow("sum", "c1"), initiatorid="u", initiatorname="user", **clock.audit()
    )
    records: list[dict[str, Any]] = [
        {"op": "submit", "graph": graph.processgraphid, "processes": graph.processids}
    ]
    for processid, output in zip(graph.processids, outputs, strict=True):
        graph.assign(processid, EXECUTOR, 1, **clock.audit())
        graph.close(processid, EXECUTOR.executorid, output, **clock.audit())
        who = {"process": processid, "attempt": 1, "executor": EXECUTOR.executorid}
        records += [{"op": "claim", **who}, {"op": "close", **who, "out": output}]
    events: list[AuditedEvent] = list(graph.collect_events())  # type: ignore[arg-type]
    logged = [LoggedEvent(sequence, event) for sequence, event in enumerate(events, 1)]
    return logged, records, graph


def check(events: list[LoggedEvent], records: list[dict[str, Any]]) -> CheckReport:
    report = CheckReport()
    check_log(events, records, report)
    return report


def kinds(report: CheckReport) -> list[str]:
    return [anomaly.kind for anomaly in report.anomalies]


def test_a_clean_history_has_no_anomaly() -> None:
    events, records, _ = run_sum_workflow()

    report = check(events, records)

    assert report.anomalies == []
    assert report.acknowledged == {"claim": 2, "close": 2, "submit": 1}
    assert (report.graphs, report.graphs_succeeded) == (1, 1)


def run_mapreduce_workflow() -> tuple[list[LoggedEvent], list[dict[str, Any]], ProcessGraph]:
    """The chaos workload's map-reduce run to its end: ``map`` adds its first child with
    ``add_child`` and the other four with one ``add_children``, as its code does."""
    clock = Clock()
    graph = ProcessGraph.submit(
        "c1",
        make_workflow("mapreduce", "c1"),
        initiatorid="u",
        initiatorname="user",
        **clock.audit(),
    )
    map_id, reduce_id = graph.processids
    records: list[dict[str, Any]] = [
        {"op": "submit", "graph": graph.processgraphid, "processes": graph.processids}
    ]
    spec = make_workflow("sum", "c1").functionspecs[0]  # gen_nums
    graph.assign(map_id, EXECUTOR, 1, **clock.audit())
    first = graph.add_child(
        map_id,
        EXECUTOR.executorid,
        spec,
        "gen_nums_0",
        insert=True,
        childprocessid=reduce_id,
        **clock.audit(),
    )
    others = graph.add_children(
        map_id,
        EXECUTOR.executorid,
        [(spec, f"gen_nums_{i}") for i in range(1, 5)],
        insert=False,
        childprocessid=reduce_id,
        **clock.audit(),
    )
    common = {"graph": graph.processgraphid, "parent": map_id, "executor": EXECUTOR.executorid}
    records += [
        {"op": "add_child", **common, "child": first},
        {"op": "add_children", **common, "children": others},
    ]
    for processid, output in [(map_id, []), *((c, [1, 2]) for c in [first, *others])]:
        if processid != map_id:
            graph.assign(processid, EXECUTOR, 1, **clock.audit())
        graph.close(processid, EXECUTOR.executorid, output, **clock.audit())
    graph.assign(reduce_id, EXECUTOR, 1, **clock.audit())
    graph.close(reduce_id, EXECUTOR.executorid, [15], **clock.audit())
    events: list[AuditedEvent] = list(graph.collect_events())  # type: ignore[arg-type]
    logged = [LoggedEvent(sequence, event) for sequence, event in enumerate(events, 1)]
    return logged, records, graph


def test_a_map_reduce_with_add_children_is_clean_and_its_lost_children_are_reported() -> None:
    events, records, graph = run_mapreduce_workflow()

    clean = check(events, records)
    assert clean.anomalies == [], clean.anomalies
    assert clean.acknowledged["add_children"] == 1
    assert (clean.graphs, clean.graphs_succeeded) == (1, 1)

    children_added = [e for e in events if type(e.event).__name__ == "ChildrenAdded"]
    assert len(children_added) == 1
    lost = check([e for e in events if e is not children_added[0]], records)
    lost_kinds = [a for a in lost.anomalies if a.kind == "lost acknowledged add_children"]
    assert len(lost_kinds) == 1
    assert lost_kinds[0].graph == graph.processgraphid[:16]


def test_an_acknowledged_close_missing_from_the_log_is_reported_with_its_process() -> None:
    events, records, graph = run_sum_workflow()
    gen_nums = graph.processids[0]
    closes = [e for e in events if type(e.event).__name__ == "ProcessClosed"]
    lost = closes[0]
    kept = [e for e in events if e is not lost]  # acknowledged, never written

    report = check(kept, records)

    lost_closes = [a for a in report.anomalies if a.kind == "lost acknowledged close"]
    assert [a.process for a in lost_closes] == [gen_nums]
    assert lost_closes[0].graph == graph.processgraphid[:16]


def test_a_second_assignment_of_one_attempt_and_a_second_close_are_reported() -> None:
    events, records, _ = run_sum_workflow()
    assigned = next(e for e in events if type(e.event).__name__ == "ProcessAssigned")
    closed = next(e for e in events if type(e.event).__name__ == "ProcessClosed")
    last = events[-1].sequence
    twice = [*events, replace(assigned, sequence=last + 1), replace(closed, sequence=last + 2)]

    found = kinds(check(twice, records))

    assert "double assignment" in found
    assert "double close" in found
    assert "version" in found  # the copies do not follow the aggregate's versions


def test_an_acknowledged_claim_the_log_gives_to_another_executor_is_lost() -> None:
    events, records, _ = run_sum_workflow()
    claim = next(r for r in records if r["op"] == "claim")
    stranger = {**claim, "executor": crypto.id_from_private_key(crypto.new_private_key())}

    report = check(events, [*records, stranger])

    assert kinds(report) == ["lost acknowledged claim"]


def test_a_wrong_output_and_a_wrong_result_are_reported() -> None:
    events, records, _ = run_sum_workflow(outputs=([1, 2], [4]))

    found = kinds(check(events, records))

    assert found == ["wrong output", "wrong result"]


def test_a_graph_that_did_not_end_is_reported_with_what_is_left() -> None:
    events, records, _ = run_sum_workflow()
    unfinished = events[:-2]  # sum_nums assigned and closed never happened

    report = check(unfinished, records[:-2])

    assert kinds(report) == ["unfinished"]
    assert "sum_nums WAITING" in report.anomalies[0].message
