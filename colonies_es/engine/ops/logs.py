"""Ops on a process's log: add a line, read lines (from the graph's events in the log)."""

from __future__ import annotations

from datetime import datetime

from colonies_es import crypto
from colonies_es.domain import LogAdded, NotFound, ProcessGraph
from colonies_es.engine.aggregates import Aggregates, audit
from colonies_es.engine.ops.base import Reply
from colonies_es.models import Log, encode
from colonies_es.protocol import AddLog, GetLogs


async def add_log(
    aggregates: Aggregates, cmd: crypto.VerifiedCommand, body: AddLog, now: datetime
) -> Reply:
    """Appends a log line to a process, named after the caller's executor."""
    graph_id = await aggregates.graph_id_of(body.processid)
    graph = await aggregates.load(graph_id)
    if not isinstance(graph, ProcessGraph):
        raise NotFound(f"process {body.processid} does not exist")
    executor = aggregates.colony(graph.colonyname).executor_by_id(cmd.caller_id)
    name = executor.executorname if executor is not None else ""
    await aggregates.change_graph(
        graph_id,
        lambda g: g.add_log(body.processid, cmd.caller_id, name, body.message, **audit(cmd, now)),
    )
    return Reply()


async def get_process_log(
    aggregates: Aggregates, cmd: crypto.VerifiedCommand, body: GetLogs, now: datetime
) -> Reply:
    """The process's log lines after ``since`` (unix ns), the last ``count`` if positive."""
    graph_id = await aggregates.graph_id_of(body.processid)
    graph = await aggregates.readable(cmd, graph_id)
    logs = [
        Log(
            processid=event.processid,
            colonyname=graph.colonyname,
            executorname=event.executorname,
            message=event.message,
            timestamp=_unix_ns(event.timestamp),
        )
        for event, _ in await aggregates.events_of(graph_id)
        if isinstance(event, LogAdded) and event.processid == body.processid
    ]
    logs = [line for line in logs if line.timestamp > body.since]
    return Reply(encode(logs[-body.count :] if body.count > 0 else logs))


def _unix_ns(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000) * 1000


__all__ = ["add_log", "get_process_log"]
