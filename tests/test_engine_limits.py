"""The engine's timers: ``maxexectime`` and ``maxwaittime`` (SEMANTICS.md, "Retries and
limits"). Deadlines fire as engine commands: their events' actor is the engine's id."""

from __future__ import annotations

import time

import pytest

from colonies_es import ColoniesError, Workflow, crypto, func_spec
from colonies_es.models import FuncSpec
from colonies_es.states import ProcessState
from tests.eventlog import read_events
from tests.processes import wait_until
from tests.stack import ColonyHandle, Stack

EXECUTOR_TYPE = "python-executor"
EXEC_TIMEOUT = "maximum execution time exceeded"
WAIT_TIMEOUT = "maximum waiting time exceeded"


def node(colony: ColonyHandle, nodename: str, *dependencies: str, **options: object) -> FuncSpec:
    executortype = str(options.pop("executortype", EXECUTOR_TYPE))
    made = func_spec("step", [], colony.name, executortype, **options)  # type: ignore[arg-type]
    made.nodename = nodename
    made.conditions.dependencies.extend(dependencies)
    return made


def engine_id(stack: Stack) -> str:
    return crypto.id_from_private_key(stack.engine.engine_prvkey)


def test_maxexectime_takes_the_process_back_for_a_retry_then_fails_it(stack: Stack) -> None:
    colony = stack.new_colony()
    slow = stack.new_executor(colony)
    slower = stack.new_executor(colony)
    process = stack.client.submit_func_spec(
        func_spec("sleepy", [], colony.name, EXECUTOR_TYPE, maxexectime=1, maxretries=1),
        colony.owner_prvkey,
    )

    attempt1 = stack.client.assign(colony.name, 10, slow)
    assert attempt1.execdeadline is not None
    attempt2 = stack.client.assign(colony.name, 10, slower)  # once attempt 1 has timed out
    assert attempt2.processid == process.processid
    assert attempt2.retries == 1
    assert attempt2.errors == [EXEC_TIMEOUT]
    with pytest.raises(ColoniesError) as late:
        stack.client.close(attempt1.processid, ["too late"], slow)
    assert late.value.status == 403

    done = stack.client.wait(process, 10, colony.owner_prvkey)
    assert done.state == ProcessState.FAILED
    assert done.errors == [EXEC_TIMEOUT, EXEC_TIMEOUT]
    assert stack.client.get_processgraph(process.processgraphid, slow).state == (
        ProcessState.FAILED
    )
    timeouts = [
        e
        for e in read_events(stack.nats.url).for_graph(colony.name, process.processgraphid)
        if e.kind == "ExecutionTimedOut"
    ]
    assert [(e.state["attempt"], e.state["retried"]) for e in timeouts] == [(1, True), (2, False)]
    assert {e.state["actor"] for e in timeouts} == {engine_id(stack)}


def test_maxwaittime_fails_a_process_nobody_takes_and_its_graph(stack: Stack) -> None:
    colony = stack.new_colony()
    workflow = Workflow(
        colonyname=colony.name,
        functionspecs=[
            node(colony, "orphan", executortype="nobody-has-this", maxwaittime=1),
            node(colony, "child", "orphan"),
        ],
    )
    graph = stack.client.submit_workflow(workflow, colony.owner_prvkey)
    orphan, child = graph.processids

    done = stack.client.wait(orphan, 10, colony.owner_prvkey)
    assert done.state == ProcessState.FAILED
    assert done.errors == [WAIT_TIMEOUT]
    assert not done.isassigned
    cancelled = stack.client.get_process(child, colony.owner_prvkey)
    assert cancelled.state == ProcessState.CANCELLED
    assert "'orphan'" in cancelled.errors[0]
    assert stack.client.get_processgraph(graph.processgraphid, colony.owner_prvkey).state == (
        ProcessState.FAILED
    )
    [timeout] = read_events(stack.nats.url).for_graph(colony.name, graph.processgraphid)[1:]
    assert timeout.kind == "WaitTimedOut"
    assert timeout.state["actor"] == engine_id(stack)


def test_maxwaittime_counts_from_readiness_not_from_submission(stack: Stack) -> None:
    colony = stack.new_colony()
    executor = stack.new_executor(colony)
    workflow = Workflow(
        colonyname=colony.name,
        functionspecs=[node(colony, "parent"), node(colony, "child", "parent", maxwaittime=1)],
    )
    submitted = time.monotonic()
    graph = stack.client.submit_workflow(workflow, colony.owner_prvkey)
    parent = stack.client.assign(colony.name, 10, executor)
    wait_until(lambda: time.monotonic() - submitted > 1.5, 5, "the child's wait time would be over")
    stack.client.close(parent.processid, ["in time"], executor)

    child = stack.client.assign(colony.name, 1, executor)
    assert child.spec.nodename == "child"
    assert child.input == ["in time"]
    stack.client.close(child.processid, [], executor)
    assert stack.client.get_processgraph(graph.processgraphid, executor).state == (
        ProcessState.SUCCESS
    )
