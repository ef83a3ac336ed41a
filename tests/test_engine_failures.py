"""Failure, retries, cancel and remove on a real engine (SEMANTICS.md, "Retries and
limits", "Graph state and failure", "Remove")."""

from __future__ import annotations

import pytest

from colonies_es import ColoniesError, Process, Workflow, func_spec
from colonies_es.models import FuncSpec
from colonies_es.states import ProcessState
from tests.eventlog import nothing_written, read_events
from tests.stack import ColonyHandle, Stack

EXECUTOR_TYPE = "python-executor"


def node(colony: ColonyHandle, nodename: str, *dependencies: str, **options: object) -> FuncSpec:
    made = func_spec("step", [], colony.name, EXECUTOR_TYPE, **options)  # type: ignore[arg-type]
    made.nodename = nodename
    made.conditions.dependencies.extend(dependencies)
    return made


def take(stack: Stack, colony: ColonyHandle, prvkey: str, nodename: str) -> Process:
    process = stack.client.assign(colony.name, 10, prvkey)
    assert process.spec.nodename == nodename
    return process


def by_name(stack: Stack, colony: ColonyHandle, processids: list[str]) -> dict[str, Process]:
    processes = [stack.client.get_process(pid, colony.owner_prvkey) for pid in processids]
    return {p.spec.nodename: p for p in processes}


# --- failure -----------------------------------------------------------------------------


def test_a_failure_without_retries_fails_the_graph_and_cancels_the_waiting(stack: Stack) -> None:
    colony = stack.new_colony()
    executor = stack.new_executor(colony)
    workflow = Workflow(
        colonyname=colony.name,
        functionspecs=[
            node(colony, "good", priority=2),
            node(colony, "bad", maxretries=0),
            node(colony, "after_bad", "bad"),
            node(colony, "after_both", "good", "after_bad"),
        ],
    )
    graph = stack.client.submit_workflow(workflow, colony.owner_prvkey)
    good = take(stack, colony, executor, "good")
    stack.client.close(good.processid, ["kept"], executor)
    bad = take(stack, colony, executor, "bad")
    stack.client.fail(bad.processid, ["ValueError: no"], executor)

    processes = by_name(stack, colony, graph.processids)
    assert processes["bad"].state == ProcessState.FAILED
    assert processes["bad"].errors == ["ValueError: no"]
    assert processes["good"].state == ProcessState.SUCCESS
    assert processes["good"].output == ["kept"]
    for waiting in ("after_bad", "after_both"):
        assert processes[waiting].state == ProcessState.CANCELLED
        [reason] = processes[waiting].errors
        assert "'bad'" in reason
        assert bad.processid in reason
    assert stack.client.get_processgraph(graph.processgraphid, executor).state == (
        ProcessState.FAILED
    )
    with pytest.raises(ColoniesError) as nothing:
        stack.client.assign(colony.name, 0.5, executor)
    assert nothing.value.status == 404


def test_a_failure_with_retries_is_reassigned_and_keeps_every_error(stack: Stack) -> None:
    colony = stack.new_colony()
    first = stack.new_executor(colony)
    second = stack.new_executor(colony)
    process = stack.client.submit_func_spec(
        func_spec("flaky", [7], colony.name, EXECUTOR_TYPE, maxretries=2), colony.owner_prvkey
    )

    attempt1 = take(stack, colony, first, "flaky")
    stack.client.fail(attempt1.processid, ["attempt 1 broke"], first)
    again = stack.client.get_process(process.processid, colony.owner_prvkey)
    assert again.state == ProcessState.WAITING
    assert again.retries == 1
    assert not again.isassigned

    attempt2 = take(stack, colony, second, "flaky")
    assert attempt2.retries == 1
    assert attempt2.spec.args == [7]
    with nothing_written(stack.nats.url), pytest.raises(ColoniesError) as late:
        stack.client.close(attempt1.processid, ["too late"], first)
    assert late.value.status == 403
    stack.client.fail(attempt2.processid, ["attempt 2 broke"], second)

    attempt3 = take(stack, colony, first, "flaky")
    assert attempt3.retries == 2
    stack.client.close(attempt3.processid, ["at last"], first)

    done = stack.client.get_process(process.processid, colony.owner_prvkey)
    assert done.state == ProcessState.SUCCESS
    assert done.output == ["at last"]
    assert done.retries == 2
    assert done.errors == ["attempt 1 broke", "attempt 2 broke"]
    events = read_events(stack.nats.url).for_graph(colony.name, process.processgraphid)
    assert [(e.kind, e.state.get("attempt")) for e in events] == [
        ("GraphSubmitted", None),
        ("ProcessAssigned", 1),
        ("ProcessFailed", 1),
        ("ProcessAssigned", 2),
        ("ProcessFailed", 2),
        ("ProcessAssigned", 3),
        ("ProcessClosed", 3),
    ]


def test_retries_run_out_then_the_process_fails(stack: Stack) -> None:
    colony = stack.new_colony()
    executor = stack.new_executor(colony)
    process = stack.client.submit_func_spec(
        func_spec("doomed", [], colony.name, EXECUTOR_TYPE, maxretries=1), colony.owner_prvkey
    )
    for attempt in (1, 2):
        running = take(stack, colony, executor, "doomed")
        stack.client.fail(running.processid, [f"failure {attempt}"], executor)

    done = stack.client.wait(process, 5, colony.owner_prvkey)
    assert done.state == ProcessState.FAILED
    assert done.errors == ["failure 1", "failure 2"]
    assert stack.client.get_processgraph(process.processgraphid, executor).state == (
        ProcessState.FAILED
    )


# --- cancel ----------------------------------------------------------------------------------


def test_cancel_cancels_waiting_and_running_processes_and_refuses_a_late_close(
    stack: Stack,
) -> None:
    colony = stack.new_colony()
    executor = stack.new_executor(colony)
    workflow = Workflow(
        colonyname=colony.name,
        functionspecs=[
            node(colony, "done", priority=2),
            node(colony, "running"),
            node(colony, "waiting", "running"),
        ],
    )
    graph = stack.client.submit_workflow(workflow, colony.owner_prvkey)
    done = take(stack, colony, executor, "done")
    stack.client.close(done.processid, ["fine"], executor)
    running = take(stack, colony, executor, "running")

    stack.client.cancel_processgraph(graph.processgraphid, colony.owner_prvkey)

    processes = by_name(stack, colony, graph.processids)
    assert processes["done"].state == ProcessState.SUCCESS
    assert processes["done"].output == ["fine"]
    assert processes["running"].state == ProcessState.CANCELLED
    assert processes["waiting"].state == ProcessState.CANCELLED
    assert stack.client.get_processgraph(graph.processgraphid, executor).state == (
        ProcessState.CANCELLED
    )
    with nothing_written(stack.nats.url), pytest.raises(ColoniesError) as late:
        stack.client.close(running.processid, ["too late"], executor)
    assert late.value.status == 403
    with pytest.raises(ColoniesError) as twice:
        stack.client.cancel_processgraph(graph.processgraphid, colony.owner_prvkey)
    assert twice.value.status == 409


# --- remove ----------------------------------------------------------------------------------


def test_a_running_graph_cannot_be_removed(stack: Stack) -> None:
    colony = stack.new_colony()
    executor = stack.new_executor(colony)
    process = stack.client.submit_func_spec(
        func_spec("busy", [], colony.name, EXECUTOR_TYPE), colony.owner_prvkey
    )
    take(stack, colony, executor, "busy")

    with nothing_written(stack.nats.url):
        with pytest.raises(ColoniesError) as graph:
            stack.client.remove_processgraph(process.processgraphid, colony.owner_prvkey)
        with pytest.raises(ColoniesError) as single:
            stack.client.remove_process(process.processid, colony.owner_prvkey)
    assert graph.value.status == single.value.status == 409
    assert "RUNNING" in graph.value.message


def test_a_removed_graph_is_gone_from_gets_and_listings(stack: Stack) -> None:
    colony = stack.new_colony()
    kept = stack.client.submit_func_spec(
        func_spec("kept", [], colony.name, EXECUTOR_TYPE), colony.owner_prvkey
    )
    removed = stack.client.submit_func_spec(
        func_spec("removed", [], colony.name, EXECUTOR_TYPE), colony.owner_prvkey
    )

    stack.client.remove_processgraph(removed.processgraphid, colony.owner_prvkey)

    key = colony.owner_prvkey
    with pytest.raises(ColoniesError) as graph:
        stack.client.get_processgraph(removed.processgraphid, key)
    with pytest.raises(ColoniesError) as process:
        stack.client.get_process(removed.processid, key)
    assert graph.value.status == process.value.status == 404
    assert [g.processgraphid for g in stack.client.get_processgraphs(colony.name, 10, key)] == [
        kept.processgraphid
    ]
    assert [p.processid for p in stack.client.list_processes(colony.name, 10, -1, key)] == [
        kept.processid
    ]
    executor = stack.new_executor(colony)
    assert stack.client.assign(colony.name, 10, executor).processid == kept.processid
    with pytest.raises(ColoniesError) as no_work:
        stack.client.assign(colony.name, 0.5, executor)
    assert no_work.value.status == 404
    # The log keeps the history: the removal is an event, the submission is still there.
    kinds = [
        e.kind for e in read_events(stack.nats.url).for_graph(colony.name, removed.processgraphid)
    ]
    assert kinds == ["GraphSubmitted", "GraphRemoved"]


def test_remove_all_processgraphs_removes_only_the_given_state(stack: Stack) -> None:
    colony = stack.new_colony()
    executor = stack.new_executor(colony)
    key = colony.owner_prvkey
    graphs = {}
    for name in ("succeeds", "fails", "waits"):
        spec = func_spec(name, [], colony.name, EXECUTOR_TYPE, priority=5 if name != "waits" else 0)
        graphs[name] = stack.client.submit_func_spec(spec, key).processgraphid
    for _ in range(2):
        process = stack.client.assign(colony.name, 10, executor)
        if process.spec.funcname == "succeeds":
            stack.client.close(process.processid, [], executor)
        else:
            stack.client.fail(process.processid, ["no"], executor)

    stack.client.remove_all_processgraphs(colony.name, key, ProcessState.SUCCESS)
    left = {g.processgraphid for g in stack.client.get_processgraphs(colony.name, 10, key)}
    assert left == {graphs["fails"], graphs["waits"]}

    with nothing_written(stack.nats.url), pytest.raises(ColoniesError) as running:
        stack.client.remove_all_processgraphs(colony.name, key, ProcessState.RUNNING)
    assert running.value.status == 409

    stack.client.remove_all_processgraphs(colony.name, key)
    assert stack.client.get_processgraphs(colony.name, 10, key) == []
