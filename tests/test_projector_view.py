"""The view's own contracts, on a SQLite file alone (no NATS server)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
from eventsourcing.persistence import Mapper, Notification, StoredEvent
from eventsourcing.popo import POPOAggregateRecorder

from colonies_es.domain import ProcessGraph
from colonies_es.projections.projector import Projector, _iso
from colonies_es.projections.view import (
    CHECKPOINT_AFTER_ROWS,
    GraphRow,
    LogRow,
    ProcessRow,
    ViewChanges,
    open_view,
)
from colonies_es.store.codec import MsgspecTranscoder
from tests.processes import wait_until
from tests.test_domain_graph import COLONY, USER_ID, WORKER, assign, at, spec, submit, workflow
from tests.test_projector_support import dump_view


def as_notifications(stored: Iterable[StoredEvent]) -> list[Notification]:
    """``stored`` as the log would hand them to a projector, sequences from 1."""
    return [
        Notification(
            id=sequence,
            originator_id=event.originator_id,
            originator_version=event.originator_version,
            topic=event.topic,
            state=event.state,
        )
        for sequence, event in enumerate(stored, start=1)
    ]


def test_versions_of_many_aggregates_answer_as_version_of_each(tmp_path: Path) -> None:
    view = open_view(tmp_path / "view.sqlite")
    try:
        stored = [(f"c.graph.{n:064x}", n % 7 + 1) for n in range(1200)]  # > one IN (...)
        view.write(ViewChanges(versions=stored), position=1)
        absent = [f"c.graph.{n:064x}" for n in range(5000, 5300)]
        asked = [aggregate_id for aggregate_id, _ in stored] + absent

        found = view.versions_of(asked)

        assert found == dict(stored)
        assert all(
            view.version_of(aggregate_id) == found.get(aggregate_id) for aggregate_id in asked[::97]
        )
        assert view.versions_of([]) == {}
    finally:
        view.close()


def test_a_log_line_writes_its_row_and_the_graph_version_not_its_process_row(
    tmp_path: Path,
) -> None:
    """A ``LogAdded`` changes nothing a process row holds: a batch of only log lines
    writes the log rows, the graph's row and version, and no process row; the view
    then reads as one committed in a single batch."""
    graph = submit(spec("gen"), now=at(0))
    processid = assign(graph, "gen", now=at(1))
    for number in range(3):
        graph.add_log(
            processid,
            WORKER.executorid,
            WORKER.executorname,
            f"line {number}",
            now=at(2 + number),
            actor=WORKER.executorid,
            command=b"add_log",
        )
    mapper = Mapper(transcoder=MsgspecTranscoder())
    stored = [mapper.to_stored_event(event) for event in graph.collect_events()]
    notifications = as_notifications(stored)
    written: list[ViewChanges] = []

    def project(path: Path, cuts: set[int]) -> dict[str, list[tuple[Any, ...]]]:
        view = open_view(path)
        start_write = view.start_write

        def record(changes: ViewChanges, position: int) -> None:
            written.append(changes)
            start_write(changes, position)

        view.start_write = record  # type: ignore[method-assign]
        projector = Projector(view, view, mapper)  # no aggregate is read back here
        try:
            for notification in notifications:
                projector.process(notification)
                if notification.id in cuts:
                    projector.commit()
            projector.commit()
        finally:
            view.close()
        return dump_view(path)

    whole = project(tmp_path / "whole.sqlite", cuts=set())
    written.clear()
    cut = project(tmp_path / "cut.sqlite", cuts={2})  # submitted + assigned, then logs

    assert cut == whole
    logs_only = written[-1]
    assert [row.message for row in logs_only.logs] == ["line 0", "line 1", "line 2"]
    assert logs_only.processes == []
    assert [row.processgraphid for row in logs_only.graphs] == [graph.processgraphid]
    assert logs_only.versions == [(graph.id, graph.version)]


def test_row_times_read_as_isoformat_writes_them() -> None:
    """The rows' times are cut from msgspec's text for UTC times: the same text as
    ``isoformat`` (microseconds only when not zero), other offsets as ``isoformat``."""
    utc_times = [
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2026, 12, 6, 22, 1, 33, tzinfo=UTC),
        datetime(2026, 12, 6, 22, 1, 33, 1_000, tzinfo=UTC),
        datetime(2026, 12, 6, 22, 1, 33, 712_618, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 1, tzinfo=UTC),
    ]
    others = [
        datetime(2026, 12, 6, 23, 1, 33, 5, tzinfo=timezone(timedelta(hours=1))),
        datetime(2026, 12, 6, 22, 1, 33),
    ]

    for moment in utc_times + others:
        assert _iso(moment) == moment.isoformat()
    assert _iso(None) is None


def test_rows_read_back_as_written_whatever_their_text(tmp_path: Path) -> None:
    """Rows read back as given, byte for byte and type for type, with odd text (quotes,
    backslashes, NUL, non-ASCII)."""
    odd = 'a "quoted" \\ backslash, \u00e9t\u00e9 \U0001f600 \u2028'
    nul = "a NUL \x00 inside"

    def text(n: int, odd_one: int) -> str:
        return nul if n == odd_one else odd

    graphs = [
        GraphRow(
            f"{n:064x}",
            "c",
            n,
            2,
            "i",
            text(n, 7),
            "t1",
            None,
            "t3",
            n % 2 == 0,
            f'{{"n":{n},"odd":{msgspec.json.encode(odd).decode()}}}'.encode(),
        )
        for n in range(40)
    ]
    processes = [
        ProcessRow(
            f"{n:064x}",
            f"{n // 2:064x}",
            "c",
            n,
            n % 2,
            text(n, 11),
            "f",
            "t",
            1,
            -5,
            1,
            0,
            "e" if n % 3 else "",
            "t1",
            None,
            None,
            False,
            b'{"model":' + str(n).encode() + b"}" * 50,
            "name" if n % 3 == 1 else None,
        )
        for n in range(60)
    ]
    logs = [LogRow(n, "p", "g", "c", "e", text(n, 3) * (n + 1), 10**18 + n) for n in range(30)]
    view = open_view(tmp_path / "view.sqlite")
    try:
        view.write(ViewChanges(graphs=graphs, processes=processes, logs=logs), position=5)
    finally:
        view.close()

    dumped = dump_view(tmp_path / "view.sqlite", ["graphs", "processes", "logs"])
    assert dumped["graphs"] == [(*row[:9], int(row[9]), row[10]) for row in graphs]
    assert dumped["processes"] == [
        (*row[:13], row[18] or "", *row[13:16], int(row[16]), row[17]) for row in processes
    ]
    assert dumped["logs"] == [tuple(row) for row in logs]
    assert all(type(row[10]) is bytes for row in dumped["graphs"])


def test_the_wal_is_checkpointed_by_the_view_s_thread_after_the_write(tmp_path: Path) -> None:
    """Commits do not checkpoint the WAL; once enough rows were written, the view's
    thread does after the write, and a later checkpoint finds nothing left to copy."""
    view = open_view(tmp_path / "view.sqlite")
    try:
        view.write(ViewChanges(versions=[("c.graph.few", 1)]), position=1)
        rows = [(f"c.graph.{n:064x}", 1) for n in range(CHECKPOINT_AFTER_ROWS)]
        view.write(ViewChanges(versions=rows), position=2)
        wait_until(lambda: view.checkpoints > 0, 10, "the view's thread checkpoints")
        assert view.checkpoints == 1
        with sqlite3.connect(tmp_path / "view.sqlite") as reader:
            _busy, frames, copied = reader.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert frames > 0
        assert copied == frames
        assert view.versions_of([rows[0][0], "c.graph.few"]) == {rows[0][0]: 1, "c.graph.few": 1}
    finally:
        view.close()


def counting_reads(recorder: POPOAggregateRecorder) -> list[str]:
    """The ids of the aggregates ``recorder.select_events`` is asked for from now on,
    in order (the projector rebuilding one that is not in memory)."""
    read_back: list[str] = []
    select_events = recorder.select_events

    def counted(aggregate_id: Any, **kwargs: Any) -> Any:
        read_back.append(aggregate_id)
        return select_events(aggregate_id, **kwargs)

    recorder.select_events = counted  # type: ignore[method-assign]
    return read_back


def test_graphs_evicted_while_commits_are_in_flight_are_read_back_as_committed(
    tmp_path: Path,
) -> None:
    """With one graph kept in memory and each commit written while the next events are
    applied, graphs leave memory and come back (looked up in the view, rebuilt from
    their events) again and again: the view reads as one projected in a single batch
    with every graph in memory."""
    graphs = [
        ProcessGraph.submit(
            COLONY,
            workflow(spec(f"step{n}")),
            initiatorid=USER_ID,
            initiatorname="alice",
            now=at(n),
            actor=USER_ID,
            command=b"submit_workflow",
        )
        for n in range(3)
    ]
    for n, graph in enumerate(graphs):
        assign(graph, f"step{n}", now=at(10 + n))
    for n, graph in enumerate(graphs):
        graph.close(
            graph.processids[0],
            WORKER.executorid,
            [n],
            now=at(20 + n),
            actor=WORKER.executorid,
            command=b"close",
        )
    mapper = Mapper(transcoder=MsgspecTranscoder())
    per_graph = [[mapper.to_stored_event(e) for e in graph.collect_events()] for graph in graphs]
    recorder = POPOAggregateRecorder()
    for stored in per_graph:
        recorder.insert_events(stored)
    # the log: the three submitted, then the three assigned, then the three closed
    notifications = as_notifications(events[step] for step in range(3) for events in per_graph)
    read_back = counting_reads(recorder)

    def project(path: Path, cache_size: int, every: int) -> dict[str, list[tuple[Any, ...]]]:
        view = open_view(path)
        projector = Projector(view, recorder, mapper, cache_size=cache_size)
        try:
            for notification in notifications:
                projector.prefetch([notification])
                projector.process(notification)
                if notification.id % every == 0:
                    projector.finish_commit()
                    projector.commit_later()
            projector.commit()
        finally:
            view.close()
        return dump_view(path)

    whole = project(tmp_path / "whole.sqlite", cache_size=100, every=100)
    assert read_back == []
    evicted = project(tmp_path / "evicted.sqlite", cache_size=1, every=2)

    assert evicted == whole
    assert len(read_back) >= 3


def test_graphs_done_with_leave_memory_once_written_and_come_back_for_a_removal(
    tmp_path: Path,
) -> None:
    """A graph that ended with nothing running leaves memory at the commit after its
    rows are stored, and a later removal rebuilds it from its events; a FAILED graph
    whose other branch still runs stays in memory for that branch's close. The view
    reads as one projected in a single batch."""

    def submitted(*specs: Any, now: datetime) -> ProcessGraph:
        return ProcessGraph.submit(
            COLONY,
            workflow(*specs),
            initiatorid=USER_ID,
            initiatorname="alice",
            now=now,
            actor=USER_ID,
            command=b"submit_workflow",
        )

    done = submitted(spec("once"), now=at(0))
    assign(done, "once", now=at(1))
    done.close(done.processids[0], WORKER.executorid, [1], now=at(2), actor="w", command=b"c")
    failed = submitted(spec("x"), spec("y"), now=at(3))
    x, y = failed.processids
    assign(failed, "x", now=at(4))
    assign(failed, "y", now=at(5))
    failed.fail(x, WORKER.executorid, ["boom"], now=at(6), actor="w", command=b"f")
    later = submitted(spec("later"), now=at(7))
    mapper = Mapper(transcoder=MsgspecTranscoder())
    first = [mapper.to_stored_event(e) for g in (done, failed, later) for e in g.collect_events()]
    done.remove(now=at(8), actor=USER_ID, command=b"remove")
    failed.close(y, WORKER.executorid, [2], now=at(9), actor="w", command=b"c")
    second = [mapper.to_stored_event(e) for g in (done, failed) for e in g.collect_events()]
    recorder = POPOAggregateRecorder()
    recorder.insert_events(first + second)
    notifications = as_notifications(first + second)
    read_back = counting_reads(recorder)
    commits = {7, len(first), len(notifications)}  # after the FAILED, after `later`, at the end

    def project(path: Path, commit_at: set[int]) -> dict[str, list[tuple[Any, ...]]]:
        view = open_view(path)
        projector = Projector(view, recorder, mapper)
        try:
            for notification in notifications:
                projector.prefetch([notification])
                projector.process(notification)
                if notification.id in commit_at:
                    projector.commit()
                if commit_at and notification.id == len(first):  # after the second commit
                    assert done.id not in projector._graphs
                    assert failed.id in projector._graphs
            projector.commit()
        finally:
            view.close()
        return dump_view(path)

    whole = project(tmp_path / "whole.sqlite", set())
    assert read_back == []
    batched = project(tmp_path / "batched.sqlite", commits)

    assert batched == whole
    assert read_back == [done.id]
