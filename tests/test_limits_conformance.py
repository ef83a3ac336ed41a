"""Limits and removal at scale and as the history shows them (SEMANTICS.md, "Retries and
limits", "Graph state and failure", "Remove").

``tests/test_engine_limits.py`` and ``tests/test_engine_failures.py`` check one process
at a time and read the raw log; here many timers run at once, a real python executor
loses a process to its time limit, and what happened is read back as a debugger reads it:
``colonies_es.projections.history.history`` (every attempt, its executor and its errors),
including for graphs that were removed.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest

from colonies_es import ColoniesError, Process, Workflow, crypto, func_spec
from colonies_es.client import Colonies
from colonies_es.domain import ExecutionTimedOut, ProcessAssigned, WaitTimedOut
from colonies_es.executor import PythonExecutor
from colonies_es.models import FuncSpec
from colonies_es.projections.history import HistoryEntry, history
from colonies_es.states import ProcessState
from tests.eventlog import nothing_written
from tests.stack import ColonyHandle, Stack

EXECUTOR_TYPE = "python-executor"
EXEC_TIMEOUT = "maximum execution time exceeded"
WAIT_TIMEOUT = "maximum waiting time exceeded"
COUNT = 10


def spec(colony: ColonyHandle, funcname: str, **options: object) -> FuncSpec:
    executortype = str(options.pop("executortype", EXECUTOR_TYPE))
    return func_spec(funcname, [], colony.name, executortype, **options)  # type: ignore[arg-type]


def read_history(stack: Stack, processgraphid: str) -> list[HistoryEntry]:
    """The graph's history, read with the engine's seal key as an auditor would."""
    entries: list[HistoryEntry] = history(
        stack.nats.url, processgraphid, seal_key=stack.engine.seal_key
    )
    return entries


def kinds(entries: list[HistoryEntry]) -> list[str]:
    return [entry.kind for entry in entries]


@contextlib.contextmanager
def python_executor(
    stack: Stack, colony: ColonyHandle, executortype: str = EXECUTOR_TYPE, concurrency: int = 1
) -> Iterator[PythonExecutor]:
    """A python executor taking the colony's work in a thread until the block ends; when
    the block is left every function it started has ended and been reported."""
    executor = PythonExecutor(
        Colonies("127.0.0.1", stack.nats.port),
        colony.name,
        colony.owner_prvkey,
        executortype=executortype,
        concurrency=concurrency,
        poll_timeout=0.5,
    )
    executor.register()
    stop = threading.Event()
    thread = threading.Thread(target=executor.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield executor
    finally:
        stop.set()
        thread.join(20)
        executor.client.disconnect()
        assert not thread.is_alive(), "the executor did not stop"


@pytest.fixture
def colony(stack: Stack) -> ColonyHandle:
    return stack.new_colony()


# --- maxexectime -----------------------------------------------------------------------------


def test_ten_timed_out_processes_are_retried_once_then_fail_with_every_attempt_kept(
    stack: Stack, colony: ColonyHandle
) -> None:
    first = stack.new_executor(colony)
    second = stack.new_executor(colony)
    ids = {key: crypto.id_from_private_key(key) for key in (first, second)}
    submitted = [
        stack.client.submit_func_spec(
            spec(colony, "hangs", maxexectime=1, maxretries=1), colony.owner_prvkey
        )
        for _ in range(COUNT)
    ]
    # Neither executor ever closes: `first` takes every first attempt, `second` every retry.
    attempts1 = [stack.client.assign(colony.name, 10, first) for _ in range(COUNT)]
    attempts2 = [stack.client.assign(colony.name, 10, second) for _ in range(COUNT)]
    every = {p.processid for p in submitted}
    assert {p.processid for p in attempts1} == {p.processid for p in attempts2} == every
    assert all(p.retries == 1 and p.errors == [EXEC_TIMEOUT] for p in attempts2)

    for process in submitted:
        done = stack.client.wait(process, 10, colony.owner_prvkey)
        assert done.state == ProcessState.FAILED
        assert done.errors == [EXEC_TIMEOUT, EXEC_TIMEOUT]
        assert done.retries == 1
        assert done.assignedexecutorid == ids[second]
        assert done.endtime is not None
        assert done.starttime is not None
        assert done.endtime - done.starttime >= timedelta(seconds=1)
        graph = stack.client.get_processgraph(process.processgraphid, colony.owner_prvkey)
        assert graph.state == ProcessState.FAILED

        entries = read_history(stack, process.processgraphid)
        assert kinds(entries) == [
            "GraphSubmitted",
            "ProcessAssigned",
            "ExecutionTimedOut",
            "ProcessAssigned",
            "ExecutionTimedOut",
        ]
        assigned = [e.event for e in entries if isinstance(e.event, ProcessAssigned)]
        assert [(a.attempt, a.executorid) for a in assigned] == [(1, ids[first]), (2, ids[second])]
        timeouts = [e.event for e in entries if isinstance(e.event, ExecutionTimedOut)]
        assert [(t.attempt, t.executorid, t.errors, t.retried) for t in timeouts] == [
            (1, ids[first], [EXEC_TIMEOUT], True),
            (2, ids[second], [EXEC_TIMEOUT], False),
        ]
        assert [e.actorname for e in entries if e.kind == "ExecutionTimedOut"] == ["engine"] * 2
        assert entries[-1].summary.endswith("graph FAILED")


# A function that outlives its time limit on the first attempt, and is quick on the retry.
SLOW_FIRST = """
import time

def slow_first(ctx={}):
    attempt = ctx["process"].retries + 1
    if attempt == 1:
        time.sleep(3.5)
    return f"attempt {attempt}"
"""


def test_a_python_executor_loses_a_process_to_its_time_limit_and_its_late_result_is_refused(
    stack: Stack, colony: ColonyHandle
) -> None:
    with python_executor(stack, colony, concurrency=2) as executor:
        process = stack.client.submit_func_spec(
            spec(colony, "slow_first", code=SLOW_FIRST, maxexectime=1, maxretries=1),
            colony.owner_prvkey,
        )
        done = stack.client.wait(process, 10, colony.owner_prvkey)
        assert done.state == ProcessState.SUCCESS
        # leaving the block waits for attempt 1 to end and its close to be refused
    assert done.output == ["attempt 2"]
    assert done.retries == 1
    assert done.errors == [EXEC_TIMEOUT]

    after = stack.client.get_process(process.processid, colony.owner_prvkey)
    assert (after.state, after.output, after.errors) == (
        ProcessState.SUCCESS,
        ["attempt 2"],
        [EXEC_TIMEOUT],
    )
    entries = read_history(stack, process.processgraphid)
    assert kinds(entries) == [
        "GraphSubmitted",
        "ProcessAssigned",
        "ExecutionTimedOut",
        "ProcessAssigned",
        "ProcessClosed",
    ]
    assert {e.event.executorid for e in entries if isinstance(e.event, ProcessAssigned)} == {
        executor.executorid
    }


# --- maxwaittime -----------------------------------------------------------------------------


def test_processes_no_executor_of_their_type_takes_fail_after_their_wait_time(
    stack: Stack, colony: ColonyHandle
) -> None:
    with python_executor(stack, colony):  # idle: the work is for another type
        submitted = [
            stack.client.submit_func_spec(
                spec(colony, "gpu_job", executortype="gpu-executor", maxwaittime=1, maxretries=2),
                colony.owner_prvkey,
            )
            for _ in range(COUNT)
        ]
        ended = [stack.client.wait(p, 10, colony.owner_prvkey) for p in submitted]

    for process in ended:
        assert process.state == ProcessState.FAILED
        assert process.errors == [WAIT_TIMEOUT]
        assert not process.isassigned
        assert process.retries == 0  # nobody ran it: there is nothing to retry
        assert process.endtime is not None
        assert process.submissiontime is not None
        assert process.endtime - process.submissiontime >= timedelta(seconds=1)
        graph = stack.client.get_processgraph(process.processgraphid, colony.owner_prvkey)
        assert graph.state == ProcessState.FAILED
        entries = read_history(stack, process.processgraphid)
        assert kinds(entries) == ["GraphSubmitted", "WaitTimedOut"]
        timeout = entries[1].event
        assert isinstance(timeout, WaitTimedOut)
        assert timeout.errors == [WAIT_TIMEOUT]
        assert entries[1].actorname == "engine"
        assert entries[1].summary.endswith("graph FAILED")


# --- remove ----------------------------------------------------------------------------------


def run_to_success(stack: Stack, colony: ColonyHandle, executor: str, nodenames: list[str]) -> str:
    """A workflow of independent ``nodenames`` run to SUCCESS by ``executor``; its id."""
    specs = []
    for nodename in nodenames:
        made = spec(colony, "step")
        made.nodename = nodename
        specs.append(made)
    graph = stack.client.submit_workflow(
        Workflow(colonyname=colony.name, functionspecs=specs), colony.owner_prvkey
    )
    for _ in nodenames:
        process = stack.client.assign(colony.name, 10, executor)
        stack.client.close(process.processid, [process.spec.nodename], executor)
    return graph.processgraphid


def gone(stack: Stack, colony: ColonyHandle, processgraphid: str, processids: list[str]) -> None:
    """The graph and its processes are out of gets (404) and listings."""
    key = colony.owner_prvkey
    with pytest.raises(ColoniesError) as graph:
        stack.client.get_processgraph(processgraphid, key)
    assert graph.value.status == 404
    for processid in processids:
        with pytest.raises(ColoniesError) as process:
            stack.client.get_process(processid, key)
        assert process.value.status == 404
    listed = stack.client.get_processgraphs(colony.name, 100, key)
    assert processgraphid not in {g.processgraphid for g in listed}
    processes = stack.client.list_processes(colony.name, 100, -1, key)
    assert not set(processids) & {p.processid for p in processes}


def test_a_removed_graph_leaves_gets_and_listings_but_its_history_stays_readable(
    stack: Stack, colony: ColonyHandle
) -> None:
    executor = stack.new_executor(colony)
    succeeded = run_to_success(stack, colony, executor, ["a", "b"])
    failed: Process = stack.client.submit_func_spec(
        spec(colony, "never_taken", executortype="nobody", maxwaittime=1), colony.owner_prvkey
    )
    stack.client.wait(failed, 10, colony.owner_prvkey)
    before = {gid: read_history(stack, gid) for gid in (succeeded, failed.processgraphid)}
    processids = {
        succeeded: stack.client.get_processgraph(succeeded, colony.owner_prvkey).processids,
        failed.processgraphid: [failed.processid],
    }

    for gid in before:
        stack.client.remove_processgraph(gid, colony.owner_prvkey)

    for gid, entries in before.items():
        gone(stack, colony, gid, processids[gid])
        after = read_history(stack, gid)
        assert [e.summary for e in after[:-1]] == [e.summary for e in entries]
        assert after[-1].kind == "GraphRemoved"
        assert after[-1].summary == "graph removed"
        assert after[-1].actorname == "colony owner"
    with nothing_written(stack.nats.url), pytest.raises(ColoniesError) as again:
        stack.client.remove_processgraph(succeeded, colony.owner_prvkey)
    assert again.value.status == 404


def test_removeall_spares_running_graphs_and_refuses_to_remove_the_running_state(
    stack: Stack, colony: ColonyHandle
) -> None:
    executor = stack.new_executor(colony)
    key = colony.owner_prvkey
    succeeded = run_to_success(stack, colony, executor, ["done"])
    running = stack.client.submit_func_spec(spec(colony, "busy", priority=5), key)
    assert stack.client.assign(colony.name, 10, executor).processid == running.processid
    waiting = stack.client.submit_func_spec(spec(colony, "queued", executortype="nobody"), key)

    with nothing_written(stack.nats.url), pytest.raises(ColoniesError) as refused:
        stack.client.remove_all_processgraphs(colony.name, key, ProcessState.RUNNING)
    assert refused.value.status == 409
    with nothing_written(stack.nats.url), pytest.raises(ColoniesError) as refused_processes:
        stack.client.remove_all_processes(colony.name, key, ProcessState.RUNNING)
    assert refused_processes.value.status == 409

    stack.client.remove_all_processgraphs(colony.name, key)  # every state: RUNNING is spared

    gone(stack, colony, succeeded, [])
    gone(stack, colony, waiting.processgraphid, [waiting.processid])
    listed = stack.client.get_processgraphs(colony.name, 100, key)
    assert [g.processgraphid for g in listed] == [running.processgraphid]
    for gid in (succeeded, waiting.processgraphid):
        assert kinds(read_history(stack, gid))[-1] == "GraphRemoved"
    # the spared graph goes on, and can be removed once it has ended
    stack.client.close(running.processid, ["finished"], executor)
    assert stack.client.get_process(running.processid, key).output == ["finished"]
    stack.client.remove_all_processgraphs(colony.name, key, ProcessState.SUCCESS)
    assert stack.client.get_processgraphs(colony.name, 100, key) == []
    assert kinds(read_history(stack, running.processgraphid)) == [
        "GraphSubmitted",
        "ProcessAssigned",
        "ProcessClosed",
        "GraphRemoved",
    ]
