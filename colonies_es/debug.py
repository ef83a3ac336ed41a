"""Debugging a failed graph, from its history.

- :func:`debug_report`: each process that FAILED (and each that needed retries), with
  every attempt (executor, start and end, outcome, errors with the traceback the python
  executor recorded), its input, the paths from the graph's roots to it, and what its
  failure cancelled.
- :func:`run_locally`: runs a process's recorded function here, with its recorded input,
  as the python executor does (:func:`~colonies_es.function_runner.execute_function`).
- :func:`rerun_from_failed`: asks the engine for a new graph that re-runs the failed one
  from its failure (op ``rerun_processgraph``; succeeded nodes keep their outputs).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from colonies_es.client import Colonies
from colonies_es.client.connection import Connection
from colonies_es.crypto import Crypto
from colonies_es.domain import AttemptFailed, ProcessGraph, ProcessNode, WaitTimedOut
from colonies_es.function_runner import FunctionFailed, execute_function
from colonies_es.models import ProcessGraph as ProcessGraphModel
from colonies_es.models import decode, func_spec
from colonies_es.projections.history import HistoryEntry
from colonies_es.projections.timetravel import Nth, state_at
from colonies_es.protocol import GraphRef
from colonies_es.states import ProcessState

__all__ = [
    "AttemptReport",
    "DebugReport",
    "LocalRun",
    "ProcessReport",
    "debug_report",
    "rerun_from_failed",
    "run_locally",
]

MAX_PATHS = 10
"""Paths from the roots listed per process at most (a DAG may have very many)."""


@dataclass(frozen=True)
class AttemptReport:
    """One run of a process."""

    attempt: int
    executorid: str
    executorname: str
    starttime: datetime
    endtime: datetime | None
    outcome: str
    """``running``, ``success``, ``failed``, ``timed out`` or ``cancelled``."""
    errors: list[str]
    """This attempt's errors; the python executor records the exception's one line,
    then its traceback."""


@dataclass(frozen=True)
class ProcessReport:
    """A process that failed, or needed retries."""

    processid: str
    nodename: str
    funcname: str
    state: int
    input: list[Any]
    attempts: list[AttemptReport]
    errors: list[str]
    """All its errors, every attempt's, oldest first."""
    paths: list[list[str]]
    """Nodenames from a root to it, one list per path (at most :data:`MAX_PATHS`)."""
    failure: HistoryEntry | None
    """The event that made it FAIL for good (None if it did not)."""
    cancelled: list[str]
    """Nodenames of the processes that event cancelled."""


@dataclass(frozen=True)
class DebugReport:
    """What went wrong in a graph."""

    processgraphid: str
    colonyname: str
    state: int
    failed: list[ProcessReport]
    """Processes that FAILED, in the graph's order."""
    retried: list[ProcessReport]
    """Processes that did not fail for good but had failed attempts."""


def debug_report(entries: Sequence[HistoryEntry]) -> DebugReport:
    """What went wrong in the graph whose (non-empty) history is ``entries``."""
    graph = state_at(entries, Nth(len(entries)))
    names = {entry.actor: entry.actorname for entry in entries if entry.actorname}
    failures = {
        entry.event.processid: entry
        for entry in entries
        if isinstance(entry.event, WaitTimedOut)
        or (isinstance(entry.event, AttemptFailed) and not entry.event.retried)
    }
    failed, retried = [], []
    for node in graph.nodes.values():
        if node.state == ProcessState.FAILED:
            failed.append(_report(graph, node, names, failures.get(node.processid)))
        elif any(a.outcome in ("failed", "timed out") for a in node.attempts):
            retried.append(_report(graph, node, names, None))
    return DebugReport(
        processgraphid=graph.processgraphid,
        colonyname=graph.colonyname,
        state=graph.state,
        failed=failed,
        retried=retried,
    )


def _report(
    graph: ProcessGraph, node: ProcessNode, names: dict[str, str], failure: HistoryEntry | None
) -> ProcessReport:
    cancelled: list[str] = []
    if failure is not None and isinstance(failure.event, AttemptFailed | WaitTimedOut):
        cancelled = [graph.nodes[pid].nodename for pid in failure.event.cancelled]
    return ProcessReport(
        processid=node.processid,
        nodename=node.nodename,
        funcname=node.spec.funcname,
        state=node.state,
        input=list(node.input),
        attempts=[
            AttemptReport(
                attempt=attempt.attempt,
                executorid=attempt.executorid,
                executorname=names.get(attempt.executorid, ""),
                starttime=attempt.starttime,
                endtime=attempt.endtime,
                outcome=attempt.outcome,
                errors=list(attempt.errors),
            )
            for attempt in node.attempts
        ],
        errors=list(node.errors),
        paths=_paths(graph, node.processid),
        failure=failure,
        cancelled=cancelled,
    )


def _paths(graph: ProcessGraph, processid: str) -> list[list[str]]:
    """Nodenames from a root to ``processid``, following parents in their order."""
    node = graph.nodes[processid]
    if not node.parents:
        return [[node.nodename]]
    paths: list[list[str]] = []
    for parent in node.parents:
        for path in _paths(graph, parent):
            paths.append([*path, node.nodename])
            if len(paths) == MAX_PATHS:
                return paths
    return paths


@dataclass(frozen=True)
class LocalRun:
    """A recorded function run again here."""

    nodename: str
    processid: str
    input: list[Any]
    output: list[Any]
    errors: list[str]
    """Empty when it succeeded; else one line, then the traceback when it raised."""

    @property
    def succeeded(self) -> bool:
        return not self.errors


def run_locally(
    entries: Sequence[HistoryEntry],
    nodename: str,
    globals_: dict[str, Any] | None = None,
    code: str | None = None,
) -> LocalRun:
    """Runs the function of process ``nodename`` here, with the input it was given,
    as the python executor calls it, and returns what it gave or raised.

    The code sees ``globals_``; by default ``func_spec`` and ``Crypto`` and, so that a
    re-run never changes a live graph, ``colonies = None`` (a function that needs the
    client, such as one calling ``add_child``, fails here). ``ctx`` holds the process
    and the colony name, no executor identity. ``code``, when given, is run instead of
    the recorded source (a fix being tried). Raises LookupError when the graph has no
    such process, ValueError when the process never became ready (it has no input).
    """
    graph = state_at(entries, Nth(len(entries)))
    node = graph.find_by_nodename(nodename)
    if node is None:
        known = ", ".join(n.nodename for n in graph.nodes.values())
        raise LookupError(f"no process named {nodename!r} in the graph (it has: {known})")
    if node.readytime is None:
        raise ValueError(f"{nodename} never became ready: it has no recorded input to run with")
    process = graph.process_model(node.processid)
    if code is not None:
        encoded = base64.b64encode(code.encode("utf-8")).decode("ascii")
        process.spec.env = {**process.spec.env, "code": encoded}
    ctx = {
        "process": process,
        "colonyname": graph.colonyname,
        "executorid": "",
        "executor_prvkey": "",
    }
    if globals_ is None:
        globals_ = {"colonies": None, "func_spec": func_spec, "Crypto": Crypto}
    try:
        output, errors = execute_function(process, ctx, globals_), []
    except FunctionFailed as failure:
        output, errors = [], failure.errors
    return LocalRun(
        nodename=nodename,
        processid=node.processid,
        input=list(process.input),
        output=output,
        errors=errors,
    )


def rerun_from_failed(client: Colonies, processgraphid: str, prvkey: str) -> ProcessGraphModel:
    """A new graph re-running the FAILED graph ``processgraphid`` from its failure (the
    engine's ``rerun_processgraph``; the new graph records the old one as ``origin``).

    Uses the client's method when it has one, else sends the signed command itself.
    Raises ColoniesError as the engine refuses (409 unless the graph FAILED) and
    ColoniesConnectionError when no engine answers.
    """
    method = getattr(client, "rerun_processgraph", None)
    if method is not None:
        graph: ProcessGraphModel = method(processgraphid, prvkey)
        return graph

    async def send() -> bytes:
        connection = Connection([url.strip() for url in client.url.split(",")], timeout=10.0)
        try:
            body = GraphRef(processgraphid=processgraphid)
            return await connection.command("rerun_processgraph", body, prvkey)
        finally:
            await connection.close()

    return decode(asyncio.run(send()), ProcessGraphModel)
