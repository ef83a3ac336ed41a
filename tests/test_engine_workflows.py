"""Workflows on a real engine: the seed's examples, data flow in a diamond, ``wait``.

Processes are run here as an executor would run them: ``assign`` (a work ticket, then a
signed claim), decode the function's source from ``spec.env["code"]``, call it as
SEMANTICS.md says (``f(*args, ctx=ctx)`` with ``args`` the input when there is one),
and ``close`` with its return value as the output.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg

from colonies_es import ColoniesError, Process, Workflow, func_spec
from colonies_es.client import AsyncColonies
from colonies_es.models import FuncSpec
from colonies_es.protocol import WORK_STREAM, work_subject
from colonies_es.states import ProcessState
from tests.eventlog import read_events
from tests.stack import ColonyHandle, Stack

EXECUTOR_TYPE = "python-executor"


# --- the seed's functions, with the seed's signatures -------------------------------------


def gen_nums(ctx={}):  # type: ignore[no-untyped-def]  # noqa: B006
    return 1, 2


def sum_nums(n1, n2, ctx={}):  # type: ignore[no-untyped-def]  # noqa: B006
    return n1 + n2


def fetch_a(ctx={}):  # type: ignore[no-untyped-def]  # noqa: B006
    return {"source": "A", "value": 10}


def fetch_b(ctx={}):  # type: ignore[no-untyped-def]  # noqa: B006
    return {"source": "B", "value": 20}


def merge(a, b, ctx={}):  # type: ignore[no-untyped-def]  # noqa: B006
    return a["value"] + b["value"]


# --- running processes as an executor does ----------------------------------------------


def as_output(value: object) -> list[Any]:
    """SEMANTICS.md: a tuple becomes a list, None becomes [], anything else [value]."""
    if isinstance(value, tuple):
        return list(value)
    if value is None:
        return []
    return [value]


def execute(process: Process) -> list[Any]:
    """Runs the process's function from the source it carries; returns its output."""
    source = process.spec.decoded_code()
    assert source is not None, f"{process.spec.funcname} carries no code"
    namespace: dict[str, Any] = {}
    exec(source, namespace)
    function = namespace[process.spec.funcname]
    args = process.input if process.input else process.spec.args
    return as_output(function(*args, ctx={"process": process}, **process.spec.kwargs))


def run_next(stack: Stack, colony: ColonyHandle, prvkey: str) -> Process:
    """Assigns the next process to the executor ``prvkey``, runs it and closes it."""
    process = stack.client.assign(colony.name, 10, prvkey)
    stack.client.close(process.processid, execute(process), prvkey)
    return process


def spec(func: Any, *dependencies: str, **options: Any) -> FuncSpec:
    """A seed-style spec of the python executor (limits as in the seed)."""
    made = func_spec(
        func=func,
        args=[],
        colonyname=options.pop("colonyname"),
        executortype=EXECUTOR_TYPE,
        maxexectime=100,
        maxwaittime=100,
        **options,
    )
    made.conditions.dependencies.extend(dependencies)
    return made


def named(nodename: str, *dependencies: str, colonyname: str) -> FuncSpec:
    """A spec with its own nodename (no code: the test plays the function)."""
    made = func_spec(func="step", args=[], colonyname=colonyname, executortype=EXECUTOR_TYPE)
    made.nodename = nodename
    made.conditions.dependencies.extend(dependencies)
    return made


def process_of(stack: Stack, colony: ColonyHandle, processids: list[str], nodename: str) -> Process:
    found = stack.client.find_process(nodename, processids, colony.owner_prvkey)
    assert found is not None, f"no process named {nodename}"
    return found


def test_find_process_answers_in_one_request_as_reading_each_in_turn_would(
    stack: Stack,
) -> None:
    """The first process with the nodename, or None; a process before the match that
    does not exist is refused (404), as its get_process would be, and a caller outside
    the colony is refused (403); a missing one after the match is never looked at."""
    colony = stack.new_colony()
    workflow = Workflow(colonyname=colony.name)
    for name, *parents in (["a"], ["b", "a"], ["c", "a"], ["d", "b", "c"]):
        workflow.functionspecs.append(named(name, *parents, colonyname=colony.name))
    graph = stack.client.submit_workflow(workflow, colony.owner_prvkey)
    ids = graph.processids
    by_name = {stack.client.get_process(pid, colony.owner_prvkey).spec.nodename: pid for pid in ids}
    assert process_of(stack, colony, ids, "d").processid == by_name["d"]
    assert process_of(stack, colony, ids[::-1], "c").processid == by_name["c"]
    assert stack.client.find_process("e", ids, colony.owner_prvkey) is None
    assert stack.client.find_process("a", [], colony.owner_prvkey) is None
    missing = "0" * len(ids[0])
    assert stack.client.find_process("a", [by_name["a"], missing], colony.owner_prvkey)
    with pytest.raises(ColoniesError) as refused:
        stack.client.find_process("a", [missing, by_name["a"]], colony.owner_prvkey)
    assert refused.value.status == 404, refused.value
    stranger = stack.new_colony()
    with pytest.raises(ColoniesError) as refused:
        stack.client.find_process("a", ids, stranger.owner_prvkey)
    assert refused.value.status == 403, refused.value


# --- the seed ------------------------------------------------------------------------------


def test_seed_gen_nums_then_sum_nums_gives_three(stack: Stack) -> None:
    colony = stack.new_colony()
    executor = stack.new_executor(colony)
    workflow = Workflow(colonyname=colony.name)
    workflow.functionspecs.append(spec(gen_nums, colonyname=colony.name))
    workflow.functionspecs.append(spec(sum_nums, "gen_nums", colonyname=colony.name))
    graph = stack.client.submit_workflow(workflow, colony.owner_prvkey)

    first = run_next(stack, colony, executor)
    second = run_next(stack, colony, executor)

    assert (first.spec.funcname, second.spec.funcname) == ("gen_nums", "sum_nums")
    assert first.input == []
    assert second.input == [1, 2]
    done = stack.client.wait(second, 10, colony.owner_prvkey)
    assert done.state == ProcessState.SUCCESS
    assert done.output == [3]
    assert stack.client.get_processgraph(graph.processgraphid, colony.owner_prvkey).state == (
        ProcessState.SUCCESS
    )


def test_seed_fetch_a_and_fetch_b_merge_gives_thirty(stack: Stack) -> None:
    colony = stack.new_colony()
    executor = stack.new_executor(colony)
    workflow = Workflow(colonyname=colony.name)
    workflow.functionspecs.append(spec(fetch_a, colonyname=colony.name))
    workflow.functionspecs.append(spec(fetch_b, colonyname=colony.name))
    workflow.functionspecs.append(spec(merge, "fetch_a", "fetch_b", colonyname=colony.name))
    graph = stack.client.submit_workflow(workflow, colony.owner_prvkey)
    assert len(graph.rootprocessids) == 2

    ran = [run_next(stack, colony, executor) for _ in range(3)]

    assert sorted(p.spec.funcname for p in ran[:2]) == ["fetch_a", "fetch_b"]
    merged = ran[2]
    assert merged.spec.funcname == "merge"
    assert merged.input == [{"source": "A", "value": 10}, {"source": "B", "value": 20}]
    assert stack.client.wait(merged, 10, colony.owner_prvkey).output == [30]
    assert stack.client.get_processgraph(graph.processgraphid, colony.owner_prvkey).state == (
        ProcessState.SUCCESS
    )


def test_diamond_input_follows_dependencies_order_whichever_parent_closes_first(
    stack: Stack,
) -> None:
    colony = stack.new_colony()
    executor = stack.new_executor(colony)
    workflow = Workflow(colonyname=colony.name)
    workflow.functionspecs.extend(
        [
            named("n1", colonyname=colony.name),
            named("n2", "n1", colonyname=colony.name),
            named("n3", "n1", colonyname=colony.name),
            named("n4", "n2", "n3", colonyname=colony.name),
        ]
    )
    graph = stack.client.submit_workflow(workflow, colony.owner_prvkey)
    n4 = process_of(stack, colony, graph.processids, "n4")

    one = stack.client.assign(colony.name, 10, executor)
    assert one.spec.nodename == "n1"
    stack.client.close(one.processid, ["from n1"], executor)
    middle: dict[str, Process] = {}
    for _ in range(2):
        taken = stack.client.assign(colony.name, 10, executor)
        middle[taken.spec.nodename] = taken
    assert set(middle) == {"n2", "n3"}
    assert middle["n2"].input == middle["n3"].input == ["from n1"]

    stack.client.close(middle["n3"].processid, ["three"], executor)
    waiting = stack.client.get_process(n4.processid, colony.owner_prvkey)
    assert waiting.state == ProcessState.WAITING
    assert waiting.waitforparents
    stack.client.close(middle["n2"].processid, ["two", 2], executor)

    four = stack.client.assign(colony.name, 10, executor)
    assert four.processid == n4.processid
    assert four.parents == [middle["n2"].processid, middle["n3"].processid]
    assert four.input == ["two", 2, "three"]
    # The input is fixed when n4 becomes ready, and recorded: the event of n2's close says so.
    closes = [
        e
        for e in read_events(stack.nats.url).for_graph(colony.name, graph.processgraphid)
        if e.kind == "ProcessClosed"
    ]
    assert [e.processid for e in closes] == [
        one.processid,
        middle["n3"].processid,
        middle["n2"].processid,
    ]
    assert [r["processid"] for r in closes[1].state["ready"]] == []
    assert [(r["processid"], r["input"]) for r in closes[2].state["ready"]] == [
        (n4.processid, ["two", 2, "three"])
    ]


# --- wait ---------------------------------------------------------------------------------


def close_later(
    stack: Stack, process: Process, prvkey: str, fail: bool = False
) -> threading.Thread:
    """Closes (or fails) the process from another thread, once the test has started waiting."""

    def finish() -> None:
        time.sleep(0.3)  # let the waiter subscribe first; wait() must not depend on it
        if fail:
            stack.client.fail(process.processid, ["it broke"], prvkey)
        else:
            stack.client.close(process.processid, ["done"], prvkey)

    thread = threading.Thread(target=finish)
    thread.start()
    return thread


@pytest.mark.parametrize(
    ("fail", "ended"), [(False, ProcessState.SUCCESS), (True, ProcessState.FAILED)]
)
def test_wait_returns_when_the_process_ends(stack: Stack, fail: bool, ended: int) -> None:
    colony = stack.new_colony()
    executor = stack.new_executor(colony)
    submitted = stack.client.submit_func_spec(
        func_spec("work", [], colony.name, EXECUTOR_TYPE), colony.owner_prvkey
    )
    running = stack.client.assign(colony.name, 10, executor)
    assert running.processid == submitted.processid

    closer = close_later(stack, running, executor, fail=fail)
    started = time.monotonic()
    done = stack.client.wait(submitted, 10, colony.owner_prvkey)
    elapsed = time.monotonic() - started
    closer.join()

    assert done.state == ended
    assert elapsed < 5, f"wait took {elapsed:.1f} s to see the end"
    if fail:
        assert done.errors == ["it broke"]
    else:
        assert done.output == ["done"]


def test_wait_times_out_cleanly_while_the_process_is_not_done(stack: Stack) -> None:
    colony = stack.new_colony()
    submitted = stack.client.submit_func_spec(
        func_spec("nobody-runs-this", [], colony.name, "no-such-type"), colony.owner_prvkey
    )

    started = time.monotonic()
    with pytest.raises(ColoniesError) as refused:
        stack.client.wait(submitted, 1, colony.owner_prvkey)
    elapsed = time.monotonic() - started

    assert refused.value.status == 408
    assert submitted.processid in refused.value.message
    assert 0.9 <= elapsed < 4
    # The client is still usable afterwards.
    assert stack.client.get_process(submitted.processid, colony.owner_prvkey).state == (
        ProcessState.WAITING
    )


async def test_work_a_held_claim_takes_gets_no_ticket_work_nobody_waits_for_does(
    stack: Stack,
) -> None:
    """Tickets are for clients that pull (protocol.py, "Work"): a process made ready
    while a claim waits in the engine goes to that claim with no ticket; one made ready
    while no claim waits still gets its ticket. Both tickets would be published by the
    one engine on one connection, in order: the second arriving alone proves the first
    was never sent."""
    colony = stack.new_colony()
    executor = stack.new_executor(colony)
    tickets: list[str] = []
    got_ticket = asyncio.Event()

    async def seen(message: Msg) -> None:
        tickets.append(message.subject)
        got_ticket.set()

    nc = await nats.connect(stack.nats.url)
    async with AsyncColonies("127.0.0.1", stack.nats.port, timeout=20) as client:
        try:
            await nc.subscribe(work_subject(colony.name, EXECUTOR_TYPE), cb=seen)
            await nc.flush()
            held = asyncio.create_task(client.assign(colony.name, 20, executor))
            await asyncio.sleep(0.5)  # the claim reaches the engine before there is work
            first = await client.submit_func_spec(
                func_spec("one", [], colony.name, EXECUTOR_TYPE), colony.owner_prvkey
            )
            assert (await asyncio.wait_for(held, 20)).processid == first.processid
            second = await client.submit_func_spec(
                func_spec("two", [], colony.name, EXECUTOR_TYPE), colony.owner_prvkey
            )
            await asyncio.wait_for(got_ticket.wait(), 20)
            assert tickets == [work_subject(colony.name, EXECUTOR_TYPE)]
            taken = await client.assign(colony.name, 5, executor)
            assert taken.processid == second.processid
        finally:
            await nc.close()


async def test_tickets_stay_while_their_work_is_ready_and_go_once_it_was_taken(
    stack: Stack,
) -> None:
    """The reconciler (every second) keeps one ticket per ready process, also for work
    made ready less than its grace ago, and removes the tickets of work executors took
    without one (a claim needs no ticket)."""
    colony = stack.new_colony()
    executor = stack.new_executor(colony)
    subject = work_subject(colony.name, EXECUTOR_TYPE)
    nc = await nats.connect(stack.nats.url)
    js = nc.jetstream()

    async def tickets() -> int:
        info = await js.stream_info(WORK_STREAM, subjects_filter=subject)
        return (info.state.subjects or {}).get(subject, 0)

    async with AsyncColonies("127.0.0.1", stack.nats.port, timeout=20) as client:
        try:
            for name in ("one", "two", "three"):
                await client.submit_func_spec(
                    func_spec(name, [], colony.name, EXECUTOR_TYPE), colony.owner_prvkey
                )
            watched_until = time.monotonic() + 2.5  # two reconciler rounds at least
            while time.monotonic() < watched_until:
                assert await tickets() == 3
                await asyncio.sleep(0.1)
            for _ in range(3):
                await client.assign(colony.name, 5, executor)
            deadline = time.monotonic() + 20
            while (left := await tickets()) > 0:
                assert time.monotonic() < deadline, f"{left} tickets of work already taken"
                await asyncio.sleep(0.1)
        finally:
            await nc.close()
