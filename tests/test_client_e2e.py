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
    """An executor in a thread (its own sync client): runs ``count`` processes with
    ``functions``, feeding each its input (or its args), and closes them."""

    def work() -> None:
        with Colonies(servers=[stack.nats.url]) as client:
            for _ in range(count):
                process = client.assign(colony.name, 20, colony.executor_prvkey)
                args = process.input or process.spec.args
                result = functions[process.spec.funcname](*args)
                output = list(result) if isinstance(result, tuple) else [result]
                client.close(process.processid, output, colony.executor_prvkey)

    thread = threading.Thread(target=work, name="executor")
    thread.start()
    return thread


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

    executor = run_executor(
        stack, colony, {"gen_nums": lambda: (1, 2), "sum_nums": lambda a, b: a + b}, 2
    )
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
