"""A running function's ``add_child`` calls, coalesced into ``add_children`` commands
(:mod:`colonies_es.deferred_children`; DESIGN.md, "Fan-out and the diamond", sixth
session), on a real stack with a real python executor (its functions in a child
process), the log read straight from JetStream:

- the seed's map: its calls reach the log as few commands, in order (the insert first,
  the siblings beside it), a call the function makes in between sees them, and the
  graph's history verifies against the signed commands;
- a call in a ``try`` is made at once, so the function catches its refusal where it
  made it;
- a deferred call that is refused ends the function there: the calls before it are in
  the log, the refused one and everything after it are not, and the process fails
  with the engine's message and the call's line;
- a function that raises after deferred calls fails with its own error, its calls
  made; one that works on (or waits) after a deferred call has the child in its graph
  within ``SEND_AFTER``;
- what a deferred call returns becomes the engine's process when it is used.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from colonies_es import Workflow, crypto, func_spec
from colonies_es.deferred_children import SEND_AFTER, guarded_lines
from colonies_es.executor import PythonExecutor
from colonies_es.models import Process
from colonies_es.projections.audit import Authorities, verify
from colonies_es.states import ProcessState
from tests.eventlog import read_events
from tests.stack import ColonyHandle, Stack
from tests.test_dynamic_graphs import EXECUTOR_TYPE, PAIR, REDUCE, python_executors

WAIT = 60.0

# The seed's map (first child inserted, the others beside it, feeding reduce), which
# also reads its graph halfway: the children it added so far must be there (it returns
# nothing: its output would be the pairs' input).
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
        if i == count // 2:
            seen = len(colonies.get_processgraph(process.processgraphid, prvkey).processids)
            if seen != i + 3:  # map, reduce, pair_0..pair_i
                raise RuntimeError(f"the graph has {seen} processes after pair_{i}")
""".replace("PAIR", repr(PAIR))

_ADD = """
def add(name, ctx={}):
    process = ctx["process"]
    spec = func_spec(
        func="pair", args=[0], colonyname=ctx["colonyname"],
        executortype="python-executor", code=PAIR,
    )
    return colonies.add_child(
        process.processgraphid, process.processid, None, spec, name, False,
        ctx["executor_prvkey"],
    )
""".replace("PAIR", repr(PAIR))

CAUGHT = (
    _ADD
    + """
def grow(ctx={}):
    add("twin", ctx)  # deferred
    try:
        add("twin", ctx)  # made at once: the first goes before it, and it clashes
    except Exception as error:
        return error.status
    return 0
"""
)

REFUSED = (
    _ADD
    + """
def grow(ctx={}):
    for name in ["a", "b", "b", "c"]:
        add(name, ctx)  # the second "b" clashes
    try:
        add("d", ctx)  # made at once, if the function still ran
    except Exception:
        pass
    return 1
"""
)

RAISES = (
    _ADD
    + """
def grow(ctx={}):
    add("kept", ctx)  # deferred: made all the same, as it was before the raise
    raise ValueError("after adding")
"""
)

WAITS = (
    _ADD
    + """
def grow(release, ctx={}):
    import os, time
    add("early", ctx)  # deferred, then the function waits: sent within SEND_AFTER
    while not os.path.exists(release):
        time.sleep(0.02)
    return 1
"""
)

ELSEWHERE = (
    _ADD.replace("process.processid, None", "process.processid, waiting").replace(
        "def add(name, ctx={}):", "def add(name, waiting, ctx={}):"
    )
    + """
def grow(ctx={}):
    graph = colonies.get_processgraph(ctx["process"].processgraphid, ctx["executor_prvkey"])
    waiting = colonies.find_process("elsewhere", graph.processids, ctx["executor_prvkey"])
    add("x0", waiting.processid, ctx)  # elsewhere is not grow's child: made at once
    add("x1", waiting.processid, ctx)
    return 1
"""
)

RETURNED = (
    _ADD
    + """
def grow(ctx={}):
    alone = add("alone", ctx)
    first, second = add("s0", ctx), add("s1", ctx)
    described = [
        alone.processid, alone.spec.nodename, alone.__class__.__name__,
        second.processid, second.spec.nodename, first.spec.nodename,
    ]
    return described, add("returned", ctx)  # returned as add_child's Process would be
"""
)


@pytest.fixture(scope="module")
def colony(stack: Stack) -> ColonyHandle:
    return stack.new_colony()


@pytest.fixture(scope="module")
def executor(stack: Stack, colony: ColonyHandle) -> Iterator[PythonExecutor]:
    """One python executor running two functions at a time, for the whole module."""
    with python_executors(stack, colony, count=1, concurrency=2) as executors:
        yield executors[0]


def run_graph(stack: Stack, colony: ColonyHandle, *specs: Any) -> list[Process]:
    """Submit a workflow of ``specs``, wait until it ends; its processes, by nodename
    order of the graph's ids."""
    graph = stack.client.submit_workflow(
        Workflow(colonyname=colony.name, functionspecs=list(specs)), colony.owner_prvkey
    )
    first = stack.client.find_process(specs[-1].nodename, graph.processids, colony.owner_prvkey)
    assert first is not None
    stack.client.wait(first, WAIT, colony.owner_prvkey)
    final = stack.client.get_processgraph(graph.processgraphid, colony.owner_prvkey)
    return [stack.client.get_process(pid, colony.owner_prvkey) for pid in final.processids]


def graph_event_kinds(stack: Stack, colony: ColonyHandle, processgraphid: str) -> list[str]:
    events = read_events(stack.nats.url).for_graph(colony.name, processgraphid)
    return [event.kind for event in events]


def grow(colony: ColonyHandle, code: str) -> Any:
    return func_spec("grow", [], colony.name, EXECUTOR_TYPE, code=code)


def test_the_seeds_map_reaches_the_log_as_few_commands_in_order(
    stack: Stack, colony: ColonyHandle, executor: PythonExecutor
) -> None:
    count = 40
    mapper = func_spec("map", [count], colony.name, EXECUTOR_TYPE, code=MAP)
    reducer = func_spec("reduce", [], colony.name, EXECUTOR_TYPE, code=REDUCE)
    reducer.conditions.dependencies.append("map")

    processes = run_graph(stack, colony, mapper, reducer)

    by_name = {process.spec.nodename: process for process in processes}
    reduce = by_name["reduce"]
    assert reduce.state == ProcessState.SUCCESS, reduce.errors
    assert reduce.input == [n for i in range(count) for n in (i, i)]  # in the calls' order
    assert by_name["map"].state == ProcessState.SUCCESS, by_name["map"].errors
    assert len(processes) == count + 2
    kinds = graph_event_kinds(stack, colony, reduce.processgraphid)
    # the insert alone, then the siblings before the read, then the rest
    assert kinds.count("ChildAdded") == 1
    assert kinds.count("ChildrenAdded") == 2
    assert kinds.index("ChildAdded") < kinds.index("ChildrenAdded")
    # each event tied to its signed command: the graph's history verifies offline
    report = verify(
        stack.nats.url,
        Authorities(
            engine_id=crypto.id_from_private_key(stack.engine.engine_prvkey),
            server_id=stack.engine.server_id,
        ),
        reduce.processgraphid,
        seal_key=stack.engine.seal_key,
    )
    assert report.ok, report


def test_a_call_in_a_try_is_made_at_once_and_its_refusal_caught_there(
    stack: Stack, colony: ColonyHandle, executor: PythonExecutor
) -> None:
    processes = run_graph(stack, colony, grow(colony, CAUGHT))

    grown = next(process for process in processes if process.spec.nodename == "grow")
    assert grown.state == ProcessState.SUCCESS, grown.errors
    assert grown.output == [409]
    assert sorted(process.spec.nodename for process in processes) == ["grow", "twin"]


def test_a_refused_deferred_call_ends_the_function_there_and_what_follows_is_not_made(
    stack: Stack, colony: ColonyHandle, executor: PythonExecutor
) -> None:
    processes = run_graph(stack, colony, grow(colony, REFUSED))

    grown = next(process for process in processes if process.spec.nodename == "grow")
    assert grown.state == ProcessState.FAILED
    assert grown.errors[0].startswith("ColoniesError: "), grown.errors
    assert "'b'" in grown.errors[0] or '"b"' in grown.errors[0] or " b" in grown.errors[0]
    assert 'File "<colonies grow>", line ' in grown.errors[1]
    assert ", in add" in grown.errors[1]
    # as if it had raised at the second "b": a and b added, nothing after
    assert sorted(process.spec.nodename for process in processes) == ["a", "b", "grow"]
    kinds = graph_event_kinds(stack, colony, grown.processgraphid)
    assert kinds.count("ChildAdded") == 2  # the refused batch wrote nothing; then one by one
    assert "ChildrenAdded" not in kinds


def test_the_calls_a_function_made_before_it_raised_are_made(
    stack: Stack, colony: ColonyHandle, executor: PythonExecutor
) -> None:
    processes = run_graph(stack, colony, grow(colony, RAISES))

    grown = next(process for process in processes if process.spec.nodename == "grow")
    assert grown.state == ProcessState.FAILED
    assert grown.errors[0] == "ValueError: after adding"
    assert sorted(process.spec.nodename for process in processes) == ["grow", "kept"]


def test_a_deferred_call_is_in_the_graph_soon_while_the_function_works_on(
    stack: Stack, colony: ColonyHandle, executor: PythonExecutor, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    spec = func_spec("grow", [str(release)], colony.name, EXECUTOR_TYPE, code=WAITS)
    graph = stack.client.submit_workflow(
        Workflow(colonyname=colony.name, functionspecs=[spec]), colony.owner_prvkey
    )
    try:
        deadline = time.monotonic() + 10 * SEND_AFTER + WAIT / 6
        while (
            len(stack.client.get_processgraph(graph.processgraphid, colony.owner_prvkey).processids)
            < 2
        ):
            assert time.monotonic() < deadline, "the deferred child never reached the graph"
            time.sleep(0.02)
        [grown] = graph.processids
        assert stack.client.get_process(grown, colony.owner_prvkey).state == ProcessState.RUNNING
    finally:
        release.touch()
    assert stack.client.wait(grown, WAIT, colony.owner_prvkey).state == ProcessState.SUCCESS


def test_a_call_that_makes_a_process_outside_the_functions_children_wait_is_made_at_once(
    stack: Stack, colony: ColonyHandle, executor: PythonExecutor
) -> None:
    """``elsewhere`` does not wait for ``grow``: were the calls deferred, it could become
    ready before they are sent. (Its parent is of a type nobody runs, so it waits.)"""
    blocker = func_spec("blocker", [], colony.name, "nobody-runs-this-type")
    elsewhere = func_spec("step", [], colony.name, EXECUTOR_TYPE)
    elsewhere.nodename = "elsewhere"
    elsewhere.conditions.dependencies.append("blocker")
    graph = stack.client.submit_workflow(
        Workflow(
            colonyname=colony.name, functionspecs=[blocker, elsewhere, grow(colony, ELSEWHERE)]
        ),
        colony.owner_prvkey,
    )
    grown = stack.client.find_process("grow", graph.processids, colony.owner_prvkey)
    assert grown is not None
    ended = stack.client.wait(grown, WAIT, colony.owner_prvkey)
    assert ended.state == ProcessState.SUCCESS, ended.errors

    kinds = graph_event_kinds(stack, colony, graph.processgraphid)
    assert kinds.count("ChildAdded") == 2  # one command each, as made
    assert "ChildrenAdded" not in kinds


def test_what_a_deferred_call_returns_becomes_the_process_it_added(
    stack: Stack, colony: ColonyHandle, executor: PythonExecutor
) -> None:
    processes = run_graph(stack, colony, grow(colony, RETURNED))

    grown = next(process for process in processes if process.spec.nodename == "grow")
    assert grown.state == ProcessState.SUCCESS, grown.errors
    ids = {process.spec.nodename: process.processid for process in processes}
    assert grown.output[0] == [ids["alone"], "alone", "Process", ids["s1"], "s1", "s0"]
    assert grown.output[1]["processid"] == ids["returned"]


def test_guarded_lines_are_the_bodies_of_try_and_with() -> None:
    source = (
        "def f():\n"  # 1
        "    a()\n"  # 2
        "    try:\n"  # 3
        "        b()\n"  # 4
        "        c(\n"  # 5
        "        )\n"  # 6
        "    except E:\n"  # 7
        "        d()\n"  # 8
        "    with m():\n"  # 9
        "        e()\n"  # 10
        "    g()\n"  # 11
    )
    assert guarded_lines(source) == {4, 5, 6, 10}
    assert guarded_lines("def (") == frozenset()
