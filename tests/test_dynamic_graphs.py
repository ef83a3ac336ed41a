"""Dynamic graphs (SEMANTICS.md, "Dynamic graphs: add_child") on a real stack.

- the examples ``mapreduce_example.py`` and ``error_handling_example.py``, run as a
  developer runs them (a subprocess configured by ``COLONIES_*`` variables) against a
  stack served by a real :class:`PythonExecutor`;
- a map adding 1,000 children, run by several python executors: reduce gets every
  child's output in the order the children were added;
- the ColonyOS shapes as behaviour: which processes become ready when, with what input
  (``tests/test_engine_add_child.py`` checks the links right after add_child);
- the refusals ``tests/test_engine_add_child.py`` does not cover (a parent that is not
  RUNNING, or no longer held by the caller; the colony owner; a ready child; ids from
  elsewhere), each writing nothing to the log.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from colonies_es import ColoniesError, Process, Workflow, func_spec
from colonies_es.client import Colonies
from colonies_es.executor import PythonExecutor
from colonies_es.models import FuncSpec
from colonies_es.states import ProcessState
from tests.eventlog import nothing_written
from tests.stack import ColonyHandle, Stack

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
EXECUTOR_TYPE = "python-executor"
WAIT = 120.0
"""Seconds a workflow may take before a test gives up."""

CHILDREN = 1000

PAIR = "def pair(i, ctx={}):\n    return i, i\n"

# Adds `count` children running PAIR(i), in order: the first inserted between map and
# reduce, the others beside it with reduce waiting for each (the seed's map, scaled up).
MAP = """
def map(count, ctx={}):
    process = ctx["process"]
    prvkey = ctx["executor_prvkey"]
    graph = colonies.get_processgraph(process.processgraphid, prvkey)
    reduce = colonies.find_process("reduce", graph.processids, prvkey)
    for i in range(count):
        child = func_spec(
            func="pair", args=[i], colonyname=ctx["colonyname"],
            executortype="python-executor", code=PAIR,
        )
        colonies.add_child(
            process.processgraphid, process.processid, reduce.processid, child,
            f"pair_{i}", i == 0, prvkey,
        )
""".replace("PAIR", repr(PAIR))

REDUCE = "def reduce(*numbers, ctx={}):\n    return sum(numbers)\n"


# --- helpers ---------------------------------------------------------------------------------


@contextlib.contextmanager
def python_executors(
    stack: Stack, colony: ColonyHandle, count: int = 1, concurrency: int = 1
) -> Iterator[list[PythonExecutor]]:
    """``count`` python executors (each with its own connection, in a thread) taking the
    colony's work until the block ends."""
    stop = threading.Event()
    running: list[tuple[PythonExecutor, threading.Thread]] = []
    try:
        for _ in range(count):
            executor = PythonExecutor(
                Colonies("127.0.0.1", stack.nats.port),
                colony.name,
                colony.owner_prvkey,
                concurrency=concurrency,
                poll_timeout=0.5,
            )
            executor.register()
            thread = threading.Thread(target=executor.run, args=(stop,), daemon=True)
            thread.start()
            running.append((executor, thread))
        yield [executor for executor, _ in running]
    finally:
        stop.set()
        for executor, thread in running:
            thread.join(15)
            executor.client.disconnect()
        assert not any(thread.is_alive() for _, thread in running), "an executor did not stop"


def member(stack: Stack, colony: ColonyHandle) -> str:
    """The key of a member of the colony that takes no work (an executor of no one's type)."""
    return stack.new_executor(colony, executortype="submitter")


def run_example(
    stack: Stack, colony: ColonyHandle, example: str
) -> subprocess.CompletedProcess[str]:
    """``python examples/<example>`` configured as ``colonies dev``'s dev.env does."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLONIES_")}
    env.update(
        COLONIES_SERVER_HOST="127.0.0.1",
        COLONIES_SERVER_PORT=str(stack.nats.port),
        COLONIES_SERVER_TLS="false",
        COLONIES_COLONY_NAME=colony.name,
        COLONIES_COLONY_PRVKEY=colony.owner_prvkey,
        COLONIES_PRVKEY=member(stack, colony),
    )
    return subprocess.run(
        [sys.executable, str(EXAMPLES / example)],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )


def node(colony: ColonyHandle, nodename: str, *dependencies: str, **options: object) -> FuncSpec:
    made = func_spec("step", [], colony.name, EXECUTOR_TYPE, **options)  # type: ignore[arg-type]
    made.nodename = nodename
    made.conditions.dependencies.extend(dependencies)
    return made


def take_all(stack: Stack, colony: ColonyHandle, prvkey: str) -> dict[str, Process]:
    """Every process the executor can be assigned now (none closed), by nodename."""
    taken: dict[str, Process] = {}
    while True:
        try:
            process = stack.client.assign(colony.name, 0.5, prvkey)
        except ColoniesError as error:
            if error.status != 404:
                raise
            return taken
        taken[process.spec.nodename] = process


def wait_graph_ended(stack: Stack, processgraphid: str, prvkey: str, timeout: float) -> int:
    """The graph's final state; fails after ``timeout`` seconds."""
    ended = (ProcessState.SUCCESS, ProcessState.FAILED, ProcessState.CANCELLED)
    deadline = time.monotonic() + timeout
    while True:
        state = stack.client.get_processgraph(processgraphid, prvkey).state
        if state in ended:
            return state
        assert time.monotonic() < deadline, f"graph {processgraphid} still {state}"
        time.sleep(0.1)


@pytest.fixture
def colony(stack: Stack) -> ColonyHandle:
    return stack.new_colony()


# --- the examples ----------------------------------------------------------------------------


def test_the_mapreduce_example_prints_fifteen(stack: Stack, colony: ColonyHandle) -> None:
    with python_executors(stack, colony):
        run = run_example(stack, colony, "mapreduce_example.py")

    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    lines = run.stdout.splitlines()
    assert lines[0].startswith("Workflow submitted: ")
    assert lines[-1] == "Result: 15"
    # map added its five children: each ran and returned (1, 2)
    assert sorted(lines[1:-1]) == sorted(
        ["  map: out=[]", "  reduce: out=[15]"] + [f"  gen_nums_{i}: out=[1, 2]" for i in range(5)]
    )


def test_the_error_handling_example_retries_then_fails_when_retries_run_out(
    stack: Stack, colony: ColonyHandle
) -> None:
    with python_executors(stack, colony):
        run = run_example(stack, colony, "error_handling_example.py")

    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    lines = run.stdout.splitlines()
    errors = [
        "  error: RuntimeError: the service is not ready (attempt 1)",
        "  error: RuntimeError: the service is not ready (attempt 2)",
    ]
    assert lines[0].startswith("Submitted my_function with maxretries=3: ")
    assert lines[1:5] == [
        "  SUCCESS retries=2 workflow=SUCCESS",
        *errors,
        "  output: ['done on attempt 3']",
    ]
    assert lines[5].startswith("Submitted my_function with maxretries=1: ")
    assert lines[6:] == ["  FAILED retries=1 workflow=FAILED", *errors]


# --- a thousand children ---------------------------------------------------------------------


def test_a_map_adding_a_thousand_children_feeds_reduce_every_number_in_order(
    stack: Stack, colony: ColonyHandle
) -> None:
    mapper = func_spec("map", [CHILDREN], colony.name, EXECUTOR_TYPE, code=MAP)
    reducer = func_spec("reduce", [], colony.name, EXECUTOR_TYPE, code=REDUCE)
    reducer.conditions.dependencies.append("map")
    workflow = Workflow(colonyname=colony.name, functionspecs=[mapper, reducer])

    with python_executors(stack, colony, count=3, concurrency=2):
        graph = stack.client.submit_workflow(workflow, colony.owner_prvkey)
        reduce = stack.client.find_process("reduce", graph.processids, colony.owner_prvkey)
        assert reduce is not None
        reduce = stack.client.wait(reduce, WAIT, colony.owner_prvkey)

    assert reduce.state == ProcessState.SUCCESS, reduce.errors
    assert reduce.input == [n for i in range(CHILDREN) for n in (i, i)]
    assert reduce.output == [CHILDREN * (CHILDREN - 1)]
    assert len(reduce.parents) == CHILDREN
    final = stack.client.get_processgraph(graph.processgraphid, colony.owner_prvkey)
    assert final.state == ProcessState.SUCCESS
    assert len(final.processids) == CHILDREN + 2
    stats = stack.client.stats(colony.name, colony.owner_prvkey)
    assert (stats.successfulprocesses, stats.failedprocesses) == (CHILDREN + 2, 0)


def test_listing_more_processes_than_one_message_holds_answers(
    stack: Stack, colony: ColonyHandle
) -> None:
    roots = 500  # a GraphSubmitted of 500 roots fits in one message
    for _ in range(3):
        specs = [node(colony, f"p{n}") for n in range(roots)]
        workflow = Workflow(colonyname=colony.name, functionspecs=specs)
        stack.client.submit_workflow(workflow, colony.owner_prvkey)

    refusal: ColoniesError | None = None
    with Colonies("127.0.0.1", stack.nats.port, timeout=3.0) as client:  # an answer is quick
        try:
            listed = client.list_processes(
                colony.name, 3 * roots, ProcessState.WAITING, colony.owner_prvkey
            )
        except ColoniesError as error:  # a clear refusal (too large: ask for fewer) would do
            refusal = error
    if refusal is None:
        assert len(listed) == 3 * roots
    else:
        assert refusal.status == 413, refusal


# --- the shapes, as behaviour ----------------------------------------------------------------


def tree(stack: Stack, colony: ColonyHandle) -> tuple[str, dict[str, str], str, Process]:
    """ColonyOS' test tree 1 -> {2, 3}, with 1 assigned: (graph id, nodename -> process
    id, the executor's key, process 1)."""
    executor = stack.new_executor(colony)
    workflow = Workflow(
        colonyname=colony.name,
        functionspecs=[node(colony, "n1"), node(colony, "n2", "n1"), node(colony, "n3", "n1")],
    )
    graph = stack.client.submit_workflow(workflow, colony.owner_prvkey)
    one = stack.client.assign(colony.name, 10, executor)
    assert one.spec.nodename == "n1"
    ids = {
        p.spec.nodename: p.processid
        for p in (stack.client.get_process(pid, executor) for pid in graph.processids)
    }
    return graph.processgraphid, ids, executor, one


def test_a_child_appended_to_1_is_ready_with_2_and_3_once_1_closes(
    stack: Stack, colony: ColonyHandle
) -> None:
    graphid, ids, executor, one = tree(stack, colony)
    five = stack.client.add_child(
        graphid, one.processid, "", node(colony, "n5"), "n5", False, executor
    )
    assert five.parents == [ids["n1"]]
    assert take_all(stack, colony, executor) == {}  # nothing is ready while 1 runs

    stack.client.close(one.processid, ["one"], executor)

    ready = take_all(stack, colony, executor)
    assert set(ready) == {"n2", "n3", "n5"}
    assert all(process.input == ["one"] for process in ready.values())
    for process in ready.values():
        stack.client.close(process.processid, [], executor)
    assert stack.client.get_processgraph(graphid, executor).state == ProcessState.SUCCESS


def test_a_child_inserted_under_1_runs_before_2_and_3_and_feeds_them(
    stack: Stack, colony: ColonyHandle
) -> None:
    graphid, ids, executor, one = tree(stack, colony)
    five = stack.client.add_child(
        graphid, one.processid, "", node(colony, "n5"), "n5", True, executor
    )
    assert five.parents == [ids["n1"]]
    assert set(five.children) == {ids["n2"], ids["n3"]}

    stack.client.close(one.processid, ["one"], executor)
    first = take_all(stack, colony, executor)
    assert list(first) == ["n5"]
    assert first["n5"].input == ["one"]

    stack.client.close(five.processid, ["five"], executor)
    then = take_all(stack, colony, executor)
    assert set(then) == {"n2", "n3"}
    assert all(process.input == ["five"] for process in then.values())
    assert [p.parents for p in then.values()] == [[five.processid], [five.processid]]


def test_a_child_that_3_waits_for_feeds_3_after_1(stack: Stack, colony: ColonyHandle) -> None:
    graphid, ids, executor, one = tree(stack, colony)
    five = stack.client.add_child(
        graphid, one.processid, ids["n3"], node(colony, "n5"), "n5", False, executor
    )
    assert five.children == [ids["n3"]]

    stack.client.close(one.processid, ["one"], executor)
    first = take_all(stack, colony, executor)
    assert set(first) == {"n2", "n5"}  # 3 still waits for 5

    stack.client.close(first["n2"].processid, [], executor)
    assert take_all(stack, colony, executor) == {}
    stack.client.close(five.processid, ["five"], executor)
    [(name, three)] = take_all(stack, colony, executor).items()
    assert name == "n3"
    assert three.parents == [ids["n1"], five.processid]
    assert three.input == ["one", "five"]  # parents' outputs, in parents order


# --- refusals --------------------------------------------------------------------------------


def refused(stack: Stack, status: int, *args: object) -> str:
    """add_child(*args) is refused with ``status`` and writes nothing; returns the message."""
    colonyname = args[3].conditions.colonyname  # type: ignore[attr-defined]
    with nothing_written(stack.nats.url, colony=colonyname), pytest.raises(ColoniesError) as error:
        stack.client.add_child(*args)  # type: ignore[arg-type]
    assert error.value.status == status, error.value
    return error.value.message


def test_add_child_under_a_parent_that_is_not_running_is_refused(
    stack: Stack, colony: ColonyHandle
) -> None:
    executor = stack.new_executor(colony)
    workflow = Workflow(
        colonyname=colony.name,
        functionspecs=[node(colony, "first"), node(colony, "second", "first")],
    )
    graph = stack.client.submit_workflow(workflow, colony.owner_prvkey)
    gid = graph.processgraphid
    first, second = graph.processids

    # WAITING: nobody holds it yet
    message = refused(stack, 403, gid, first, "", node(colony, "x"), "x", False, executor)
    assert "WAITING" in message
    taken = stack.client.assign(colony.name, 10, executor)
    assert taken.processid == first
    stack.client.close(first, ["done"], executor)
    # SUCCESS: its executor no longer holds it, even with the child it feeds still waiting
    message = refused(stack, 403, gid, first, second, node(colony, "x"), "x", False, executor)
    assert "SUCCESS" in message
    assert stack.client.get_process(second, executor).parents == [first]


def test_add_child_by_an_executor_whose_attempt_timed_out_is_refused(
    stack: Stack, colony: ColonyHandle
) -> None:
    late = stack.new_executor(colony)
    now = stack.new_executor(colony)
    process = stack.client.submit_func_spec(
        node(colony, "slow", maxexectime=1, maxretries=1), colony.owner_prvkey
    )
    stack.client.assign(colony.name, 10, late)
    retried = stack.client.assign(colony.name, 10, now)  # once the first attempt timed out
    assert retried.processid == process.processid
    assert retried.retries == 1
    gid = process.processgraphid

    refused(stack, 403, gid, process.processid, "", node(colony, "x"), "x", False, late)
    added = stack.client.add_child(gid, process.processid, "", node(colony, "x"), "x", False, now)
    assert added.parents == [process.processid]


def test_add_child_is_the_executors_not_the_colony_owners(
    stack: Stack, colony: ColonyHandle
) -> None:
    executor = stack.new_executor(colony)
    process = stack.client.submit_func_spec(node(colony, "parent"), colony.owner_prvkey)
    stack.client.assign(colony.name, 10, executor)
    args = (process.processgraphid, process.processid, "", node(colony, "x"), "x", False)

    refused(stack, 403, *args, colony.owner_prvkey)
    stack.client.add_child(*args, executor)


def test_add_child_refuses_a_taken_name_a_ready_child_and_ids_from_elsewhere(
    stack: Stack, colony: ColonyHandle
) -> None:
    executor = stack.new_executor(colony)
    workflow = Workflow(
        colonyname=colony.name,
        functionspecs=[node(colony, "parent", priority=5), node(colony, "ready")],
    )
    graph = stack.client.submit_workflow(workflow, colony.owner_prvkey)
    gid = graph.processgraphid
    parent = stack.client.assign(colony.name, 10, executor)
    assert parent.spec.nodename == "parent"
    ready = stack.client.find_process("ready", graph.processids, executor)
    assert ready is not None
    added = stack.client.add_child(
        gid, parent.processid, "", node(colony, "c"), "c", False, executor
    )
    other = stack.client.submit_func_spec(node(colony, "elsewhere"), colony.owner_prvkey)

    def spec() -> FuncSpec:
        return node(colony, "new")

    # nodenames stay unique: the added child's, the parent's own
    refused(stack, 409, gid, parent.processid, "", spec(), "c", False, executor)
    refused(stack, 409, gid, parent.processid, "", spec(), "parent", True, executor)
    # a process that is already ready cannot start waiting for a new one
    message = refused(
        stack, 409, gid, parent.processid, ready.processid, spec(), "n", False, executor
    )
    assert "ready" in message
    # ids of another graph, or of nothing
    refused(stack, 404, other.processgraphid, parent.processid, "", spec(), "n", False, executor)
    refused(stack, 404, gid, other.processid, "", spec(), "n", False, executor)
    refused(stack, 404, gid, parent.processid, other.processid, spec(), "n", False, executor)
    refused(stack, 404, gid, parent.processid, "0" * 64, spec(), "n", False, executor)

    current = stack.client.get_process(parent.processid, executor)
    assert current.children == [added.processid]
