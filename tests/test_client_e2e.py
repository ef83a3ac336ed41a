"""The pycolonies surface end to end: the client against the real engine on a real NATS.

The module shares one stack (tests/stack.py: a nats-server and an engine process); every
test makes its own colony, so tests do not see each other's work.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from colonies_es import (
    AsyncColonies,
    Colonies,
    ColoniesError,
    Crypto,
    Process,
    Workflow,
    func_spec,
)
from tests.stack import ColonyHandle, Stack

crypto = Crypto()


@dataclass
class Colony:
    """A fresh colony with its owner, one approved executor and one member user."""

    handle: ColonyHandle
    executorname: str
    executor_prvkey: str
    user_prvkey: str
    executortype: str = "python"

    @property
    def name(self) -> str:
        return self.handle.name

    @property
    def owner_prvkey(self) -> str:
        return self.handle.owner_prvkey


@pytest.fixture
def colonies(stack: Stack) -> Colonies:
    return stack.client


@pytest.fixture
def colony(stack: Stack) -> Colony:
    handle = stack.new_colony()
    executor_prvkey = stack.new_executor(handle, "python", name="exec-1")
    user_prvkey = crypto.prvkey()
    stack.client.add_user(handle.name, crypto.id(user_prvkey), "user-1", handle.owner_prvkey)
    return Colony(handle, "exec-1", executor_prvkey, user_prvkey)


def spec(colony: Colony, funcname: str, **options: Any) -> Any:
    return func_spec(funcname, [], colony.name, colony.executortype, **options)


# ---------------------------------------------------------------------------- colonies


def test_a_colony_can_be_added_read_listed_and_deleted(stack: Stack, colonies: Colonies) -> None:
    owner = crypto.prvkey()
    name = f"life{uuid.uuid4().hex[:10]}"
    added = colonies.add_colony({"colonyid": crypto.id(owner), "name": name}, stack.server_prvkey)
    assert (added.name, added.colonyid) == (name, crypto.id(owner))
    assert colonies.get_colony(name, owner) == added
    assert added in colonies.list_colonies(stack.server_prvkey)
    colonies.del_colony(name, stack.server_prvkey)
    with pytest.raises(ColoniesError) as caught:
        colonies.get_colony(name, owner)
    assert caught.value.status == 404


def test_only_the_server_owner_adds_colonies(colonies: Colonies) -> None:
    intruder = crypto.prvkey()
    with pytest.raises(ColoniesError) as caught:
        colonies.add_colony({"colonyid": crypto.id(intruder), "name": "mine"}, intruder)
    assert caught.value.status == 403


# ---------------------------------------------------------------------------- executors


def test_executors_are_registered_approved_and_listed(colonies: Colonies, colony: Colony) -> None:
    key = crypto.prvkey()
    executor = {
        "executorid": crypto.id(key),
        "executortype": "gpu",
        "executorname": "gpu-1",
        "colonyname": colony.name,
    }
    added = colonies.add_executor(executor, colony.owner_prvkey)
    assert (added.executorname, added.state) == ("gpu-1", 0)
    colonies.approve_executor(colony.name, "gpu-1", colony.owner_prvkey)
    assert colonies.get_executor(colony.name, "gpu-1", colony.user_prvkey).state == 1
    assert colonies.whoami(colony.name, key).executorname == "gpu-1"
    names = {e.name for e in colonies.list_executors(colony.name, colony.user_prvkey)}
    assert names == {"gpu-1", colony.executorname}
    colonies.reject_executor(colony.name, "gpu-1", colony.owner_prvkey)
    assert colonies.get_executor(colony.name, "gpu-1", colony.user_prvkey).state == 2
    colonies.remove_executor(colony.name, "gpu-1", colony.owner_prvkey)
    with pytest.raises(ColoniesError):
        colonies.get_executor(colony.name, "gpu-1", colony.user_prvkey)


# ---------------------------------------------------------------------------- processes


def test_a_submitted_function_is_assigned_closed_and_waited_for(
    colonies: Colonies, colony: Colony
) -> None:
    submitted = colonies.submit_func_spec(spec(colony, "echo", priority=1), colony.user_prvkey)
    assert submitted.state == 0
    assigned = colonies.assign(colony.name, 10, colony.executor_prvkey)
    assert assigned.processid == submitted.processid
    assert assigned.state == 1
    assert assigned.assignedexecutorid == crypto.id(colony.executor_prvkey)
    colonies.close(assigned.processid, ["hello"], colony.executor_prvkey)
    ended = colonies.wait(submitted, 10, colony.user_prvkey)
    assert (ended.state, ended.output) == (2, ["hello"])


def test_a_failed_process_ends_failed_with_its_errors(colonies: Colonies, colony: Colony) -> None:
    submitted = colonies.submit_func_spec(spec(colony, "boom"), colony.user_prvkey)
    assigned = colonies.assign(colony.name, 10, colony.executor_prvkey)
    colonies.fail(assigned.processid, ["ValueError: boom"], colony.executor_prvkey)
    ended = colonies.wait(submitted.processid, 10, colony.user_prvkey)
    assert (ended.state, ended.errors) == (3, ["ValueError: boom"])


def test_assign_without_work_raises_404(colonies: Colonies, colony: Colony) -> None:
    with pytest.raises(ColoniesError, match="no process available") as caught:
        colonies.assign(colony.name, 0.5, colony.executor_prvkey)
    assert caught.value.status == 404


def test_wait_raises_408_for_a_process_still_waiting(colonies: Colonies, colony: Colony) -> None:
    submitted = colonies.submit_func_spec(spec(colony, "slow"), colony.user_prvkey)
    with pytest.raises(ColoniesError) as caught:
        colonies.wait(submitted, 0.3, colony.user_prvkey)
    assert caught.value.status == 408


def test_higher_priority_work_is_assigned_first(colonies: Colonies, colony: Colony) -> None:
    colonies.submit_func_spec(spec(colony, "low", priority=0), colony.user_prvkey)
    high = colonies.submit_func_spec(spec(colony, "high", priority=5), colony.user_prvkey)
    assert colonies.assign(colony.name, 10, colony.executor_prvkey).processid == high.processid


def test_work_for_a_named_executor_goes_only_to_it(
    stack: Stack, colonies: Colonies, colony: Colony
) -> None:
    other_key = stack.new_executor(colony.handle, colony.executortype, name="exec-2")
    named = colonies.submit_func_spec(
        spec(colony, "pinned", executorname="exec-2"), colony.user_prvkey
    )
    with pytest.raises(ColoniesError):
        colonies.assign(colony.name, 0.5, colony.executor_prvkey)
    assert colonies.assign(colony.name, 10, other_key).processid == named.processid


def test_listing_and_removing_processes(colonies: Colonies, colony: Colony) -> None:
    first = colonies.submit_func_spec(spec(colony, "a"), colony.user_prvkey)
    colonies.submit_func_spec(spec(colony, "b"), colony.user_prvkey)
    waiting = colonies.list_processes(colony.name, 10, 0, colony.user_prvkey)
    assert {p.spec.funcname for p in waiting} == {"a", "b"}
    assert colonies.stats(colony.name, colony.user_prvkey).waitingprocesses == 2
    colonies.remove_process(first.processid, colony.user_prvkey)
    assert len(colonies.list_processes(colony.name, 10, 0, colony.user_prvkey)) == 1
    colonies.remove_all_processes(colony.name, colony.owner_prvkey)
    assert colonies.list_processes(colony.name, 10, 0, colony.user_prvkey) == []


def test_a_non_member_cannot_read_the_colony(colonies: Colonies, colony: Colony) -> None:
    with pytest.raises(ColoniesError) as caught:
        colonies.list_processes(colony.name, 10, 0, crypto.prvkey())
    assert caught.value.status == 403


# ---------------------------------------------------------------------------- workflows


def run_executor(
    stack: Stack, colony: Colony, functions: dict[str, Callable[..., Any]], count: int
) -> threading.Thread:
    """An executor in a thread, with its own sync client, as the python executor runs
    functions: ``count`` times, take a process, call ``f(*args, ctx=ctx)`` (``args`` its
    input, or else its spec's args), close it with the result, or fail it with the error.
    """

    def work() -> None:
        with Colonies(servers=[stack.nats.url]) as client:
            for _ in range(count):
                process = client.assign(colony.name, 20, colony.executor_prvkey)
                ctx = {"process": process, "colonies": client, "key": colony.executor_prvkey}
                try:
                    result = functions[process.spec.funcname](
                        *(process.input or process.spec.args), ctx=ctx
                    )
                except Exception as error:
                    client.fail(process.processid, [repr(error)], colony.executor_prvkey)
                    continue
                client.close(process.processid, as_output(result), colony.executor_prvkey)

    thread = threading.Thread(target=work, name="executor")
    thread.start()
    return thread


def as_output(result: Any) -> list[Any]:
    """A function's return value as a process output (SEMANTICS.md)."""
    if result is None:
        return []
    return list(result) if isinstance(result, tuple) else [result]


def gen_nums(ctx: dict[str, Any]) -> tuple[int, int]:
    return 1, 2


def sum_nums(n1: int, n2: int, ctx: dict[str, Any]) -> int:
    return n1 + n2


def reduce(*nums: int, ctx: dict[str, Any]) -> int:
    return sum(nums)


def map(ctx: dict[str, Any]) -> None:  # the seed's name
    """The seed's map: five gen_nums children between map and reduce."""
    process: Process = ctx["process"]
    client: Colonies = ctx["colonies"]
    graph = client.get_processgraph(process.processgraphid, ctx["key"])
    reducer = client.find_process("reduce", graph.processids, ctx["key"])
    assert reducer is not None
    for i in range(5):
        child = func_spec("gen_nums", [], graph.colonyname, process.spec.conditions.executortype)
        client.add_child(
            graph.processgraphid,
            process.processid,
            reducer.processid,
            child,
            f"gen_nums_{i}",
            i == 0,
            ctx["key"],
        )


def test_the_tutorial_workflow_feeds_gen_nums_into_sum_nums(
    stack: Stack, colonies: Colonies, colony: Colony
) -> None:
    wf = Workflow(colonyname=colony.name)
    wf.functionspecs.append(spec(colony, "gen_nums", maxexectime=100, maxwaittime=100))
    f2 = spec(colony, "sum_nums", maxexectime=100, maxwaittime=100)
    f2.conditions.dependencies.append("gen_nums")
    wf.functionspecs.append(f2)
    graph = colonies.submit_workflow(wf, colony.user_prvkey)
    assert len(graph.processids) == 2

    executor = run_executor(stack, colony, {"gen_nums": gen_nums, "sum_nums": sum_nums}, 2)
    last = colonies.find_process("sum_nums", graph.processids, colony.user_prvkey)
    assert last is not None
    ended = colonies.wait(last, 20, colony.user_prvkey)
    executor.join(20)
    assert (ended.input, ended.output) == ([1, 2], [3])
    done = colonies.get_processgraph(graph.processgraphid, colony.user_prvkey)
    assert done.state == 2
    assert [
        g.processgraphid
        for g in colonies.get_processgraphs(colony.name, 10, colony.user_prvkey, state=2)
    ] == [graph.processgraphid]
    assert colonies.stats(colony.name, colony.user_prvkey).successfulworkflows == 1


def test_map_adds_children_that_reduce_sums(
    stack: Stack, colonies: Colonies, colony: Colony
) -> None:
    wf = Workflow(colonyname=colony.name, functionspecs=[spec(colony, "map")])
    reducer = spec(colony, "reduce")
    reducer.conditions.dependencies.append("map")
    wf.functionspecs.append(reducer)
    graph = colonies.submit_workflow(wf, colony.user_prvkey)
    functions: dict[str, Callable[..., Any]] = {"map": map, "gen_nums": gen_nums, "reduce": reduce}
    executor = run_executor(stack, colony, functions, 7)
    last = colonies.find_process("reduce", graph.processids, colony.user_prvkey)
    assert last is not None
    ended = colonies.wait(last, 20, colony.user_prvkey)
    executor.join(20)
    assert ended.input == [1, 2] * 5
    assert ended.output == [15]
    done = colonies.get_processgraph(graph.processgraphid, colony.user_prvkey)
    assert (done.state, len(done.processids)) == (2, 7)


def test_logs_and_attributes_of_a_running_process(colonies: Colonies, colony: Colony) -> None:
    colonies.submit_func_spec(spec(colony, "chatty"), colony.user_prvkey)
    process = colonies.assign(colony.name, 10, colony.executor_prvkey)
    colonies.add_log(process.processid, "starting", colony.executor_prvkey)
    colonies.add_log(process.processid, "done", colony.executor_prvkey)
    attribute = colonies.add_attribute(process.processid, "stage", "2", colony.executor_prvkey)
    assert (attribute.key, attribute.value, attribute.targetid) == ("stage", "2", process.processid)
    logs = colonies.get_process_log(colony.name, process.processid, 10, 0, colony.user_prvkey)
    assert [log.message for log in logs] == ["starting", "done"]
    assert all(log.executorname == colony.executorname for log in logs)
    since = colonies.get_process_log(
        colony.name, process.processid, 10, logs[0].timestamp, colony.user_prvkey
    )
    assert [log.message for log in since] == ["done"]
    read = colonies.get_process(process.processid, colony.user_prvkey)
    assert [(a.key, a.value) for a in read.attributes] == [("stage", "2")]


def test_a_failed_graph_reruns_from_its_failure(
    stack: Stack, colonies: Colonies, colony: Colony
) -> None:
    wf = Workflow(colonyname=colony.name, functionspecs=[spec(colony, "gen_nums")])
    second = spec(colony, "sum_nums")
    second.conditions.dependencies.append("gen_nums")
    wf.functionspecs.append(second)
    graph = colonies.submit_workflow(wf, colony.user_prvkey)

    def broken(n1: int, n2: int, ctx: dict[str, Any]) -> int:
        raise RuntimeError("disk full")

    run_executor(stack, colony, {"gen_nums": gen_nums, "sum_nums": broken}, 2).join(20)
    assert colonies.get_processgraph(graph.processgraphid, colony.user_prvkey).state == 3
    rerun = colonies.rerun_processgraph(graph.processgraphid, colony.user_prvkey)
    assert rerun.processgraphid != graph.processgraphid
    run_executor(stack, colony, {"sum_nums": sum_nums}, 1).join(20)
    last = colonies.find_process("sum_nums", rerun.processids, colony.user_prvkey)
    assert last is not None
    assert colonies.wait(last, 10, colony.user_prvkey).output == [3]


def test_a_cancelled_graph_cancels_its_processes(colonies: Colonies, colony: Colony) -> None:
    wf = Workflow(colonyname=colony.name, functionspecs=[spec(colony, "a"), spec(colony, "b")])
    graph = colonies.submit_workflow(wf, colony.user_prvkey)
    colonies.cancel_processgraph(graph.processgraphid, colony.user_prvkey)
    assert colonies.get_processgraph(graph.processgraphid, colony.user_prvkey).state == 4
    ended = colonies.wait(graph.processids[0], 5, colony.user_prvkey)
    assert ended.state == 4


def test_removed_graphs_disappear_from_listings(colonies: Colonies, colony: Colony) -> None:
    for name in ("one", "two", "three"):
        wf = Workflow(colonyname=colony.name, functionspecs=[spec(colony, name)])
        graph = colonies.submit_workflow(wf, colony.user_prvkey)
    colonies.remove_processgraph(graph.processgraphid, colony.user_prvkey)
    assert len(colonies.get_processgraphs(colony.name, 10, colony.user_prvkey)) == 2
    with pytest.raises(ColoniesError) as caught:
        colonies.get_processgraph(graph.processgraphid, colony.user_prvkey)
    assert caught.value.status == 404
    colonies.remove_all_processgraphs(colony.name, colony.owner_prvkey, state=0)
    assert colonies.get_processgraphs(colony.name, 10, colony.user_prvkey) == []


# ---------------------------------------------------------------------------- concurrency


async def test_racing_executors_each_get_distinct_processes(
    stack: Stack, colonies: Colonies, colony: Colony
) -> None:
    keys = [colony.executor_prvkey]
    for index in range(2, 5):
        name = f"exec-{index}"
        keys.append(await asyncio.to_thread(stack.new_executor, colony.handle, "python", name))
    async with AsyncColonies(servers=[stack.nats.url]) as client:
        submitted = await asyncio.gather(
            *(client.submit_func_spec(spec(colony, f"f{i}"), colony.user_prvkey) for i in range(12))
        )

        async def take_three(key: str) -> list[Process]:
            return [await client.assign(colony.name, 10, key) for _ in range(3)]

        taken = await asyncio.gather(*(take_three(key) for key in keys))
    assigned = [p.processid for batch in taken for p in batch]
    assert sorted(assigned) == sorted(p.processid for p in submitted)


def test_history_and_state_at_from_python(stack_with_projector: Stack) -> None:
    """The client reads a graph's history and its state at any of its events (a signed
    query: a projector answers it)."""
    stack = stack_with_projector
    colony = stack.new_colony()
    executor = stack.new_executor(colony)
    process = stack.client.submit_func_spec(
        func_spec("noop", [], colony.name, "python-executor"), colony.owner_prvkey
    )
    taken = stack.client.assign(colony.name, 10, executor)
    stack.client.close(taken.processid, [7], executor)

    entries = stack.client.history(
        process.processgraphid, colony.owner_prvkey, stack.engine.seal_key
    )
    assert [e.kind for e in entries] == ["GraphSubmitted", "ProcessAssigned", "ProcessClosed"]
    first = stack.client.state_at(process.processgraphid, "#1", colony.owner_prvkey)
    assert first.processes[0].state == 0
    last = stack.client.state_at(process.processgraphid, entries[-1].sequence, colony.owner_prvkey)
    assert (last.processes[0].state, last.processes[0].output) == (2, [7])
