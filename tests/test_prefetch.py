"""Executor prefetch on a real stack (protocol.py, "Prefetch"; DESIGN.md, "Executor
prefetch"):

- a prefetch claim leaves work to a claim the engine holds for an idle executor, and
  takes what no held claim may take, by a signed prefetch claim of its own;
- a process prefetched behind a function that runs long starts in a runner of its own;
- executors that prefetch assign every process once per attempt, and a stop leaves
  nothing they claimed ahead unrun.

Every "exactly once" is read from the raw log (tests/eventlog.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

import msgspec
import nats
import pytest
from nats.aio.msg import Msg

from colonies_es import Workflow, func_spec
from colonies_es.client import AsyncColonies
from colonies_es.models import FuncSpec, Process
from colonies_es.protocol import Claim
from colonies_es.states import ProcessState
from tests.eventlog import EventLog, command_payload, read_events
from tests.stack import ColonyHandle, Stack
from tests.test_executor import running_executor

WAIT = 20.0
"""Seconds any single step may take on a loaded machine."""


@pytest.fixture
def colony(stack: Stack) -> ColonyHandle:
    return stack.new_colony()


def spec(colony: ColonyHandle, funcname: str, code: str, *args: Any) -> FuncSpec:
    return func_spec(funcname, list(args), colony.name, "python-executor", code=code)


def assignments(log: EventLog, processids: set[str]) -> Counter[tuple[str, int]]:
    """(process, attempt) -> how many ProcessAssigned events the log holds for it."""
    return Counter(
        (event.processid or "", event.state["attempt"])
        for event in log.of_kind("ProcessAssigned")
        if event.processid in processids
    )


def claim_of(event_command: object) -> Claim:
    """The body of the signed claim command an assignment stores."""
    payload = command_payload(event_command)
    assert payload["op"] == "claim"
    return msgspec.convert(payload["body"], Claim)


async def test_a_prefetch_claim_leaves_work_to_a_held_claim_and_takes_what_is_left(
    stack: Stack, colony: ColonyHandle
) -> None:
    idle_key, busy_key = stack.new_executor(colony), stack.new_executor(colony)
    noop = spec(colony, "noop", "def noop(ctx={}):\n    return 1\n")
    url = stack.nats.url
    # The idle executor's claim names an `alive` subject the test answers, late: the
    # engine asks it before pushing the work, and meanwhile the process is the held
    # claim's, whatever a prefetch claim asks.
    asked, answer = asyncio.Event(), asyncio.Event()

    async def alive(msg: Msg) -> None:
        asked.set()
        await answer.wait()
        await msg.respond(b"1")

    watcher = await nats.connect(url)
    await watcher.subscribe("prefetch-test.alive.idle", cb=alive)
    await watcher.flush()
    async with (
        AsyncColonies(servers=[url], timeout=WAIT) as idle,
        AsyncColonies(servers=[url], timeout=WAIT) as busy,
        AsyncColonies(servers=[url], timeout=WAIT) as submitter,
    ):
        held = Claim(colonyname=colony.name, wait=WAIT / 2, alive="prefetch-test.alive.idle")
        claiming = asyncio.create_task(idle._call("claim", held, idle_key, Process, held=WAIT / 2))
        await asyncio.sleep(0.5)  # held by the engine, older than ALIVE_AFTER
        first = await submitter.submit_func_spec(noop, colony.owner_prvkey)
        async with asyncio.timeout(WAIT):
            await asked.wait()
        ahead = await busy.prefetch_claim(colony.name, busy_key)
        assert ahead.next is None, "a prefetch claim took work an idle executor's claim waits for"
        answer.set()
        assert (await asyncio.wait_for(claiming, WAIT)).processid == first.processid

        second = await submitter.submit_func_spec(noop, colony.owner_prvkey)
        ahead = await busy.prefetch_claim(colony.name, busy_key)
        assert ahead.next is not None
        assert ahead.next.processid == second.processid
        assert ahead.next.state == ProcessState.RUNNING
        assert ahead.more == 0
        nothing = await busy.prefetch_claim(colony.name, busy_key)
        assert nothing.next is None
    await watcher.close()
    log = await asyncio.to_thread(read_events, url)
    both = {first.processid, second.processid}
    assert assignments(log, both) == {(first.processid, 1): 1, (second.processid, 1): 1}
    claims = {e.processid: claim_of(e.state["command"]) for e in log.of_kind("ProcessAssigned")}
    assert not claims[first.processid].prefetch
    assert claims[second.processid].prefetch


NAP = "import time\ndef nap(seconds, ctx={}):\n    time.sleep(seconds)\n    return seconds\n"


def test_a_process_prefetched_behind_a_long_function_starts_in_a_runner_of_its_own(
    stack: Stack, colony: ColonyHandle, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.INFO, "colonies.executor"),
        running_executor(stack, colony, concurrency=1, prefetch=1, grace=0) as executor,
    ):
        warm_up = stack.client.submit_func_spec(spec(colony, "nap", NAP, 0), colony.owner_prvkey)
        stack.client.wait(warm_up, WAIT, colony.owner_prvkey)  # its function runner started
        # Ready at once, served in this order (priority): the quick first one's close is
        # answered with the long one and the hint that more is ready, so the worker
        # claims the last one ahead while the long one runs.
        workflow = Workflow(colonyname=colony.name)
        for nodename, seconds, priority in (("quick", 0, 3), ("long", 8, 2), ("behind", 0, 1)):
            node = spec(colony, "nap", NAP, seconds)
            node.nodename, node.priority = nodename, priority
            workflow.functionspecs.append(node)
        graph = stack.client.submit_workflow(workflow, colony.owner_prvkey)
        nodes = {
            p.spec.nodename: p
            for p in (stack.client.get_process(i, colony.owner_prvkey) for i in graph.processids)
        }
        done = stack.client.wait(nodes["behind"], WAIT, colony.owner_prvkey)
        assert done.state == ProcessState.SUCCESS
        # Ended while the long function still runs: it did not wait behind it.
        long = stack.client.get_process(nodes["long"].processid, colony.owner_prvkey)
        assert long.state == ProcessState.RUNNING
        assert long.assignedexecutorid == executor.executorid == done.assignedexecutorid
    assert any("runner of its own" in r.getMessage() for r in caplog.records), caplog.text


def test_prefetching_executors_run_each_process_once_and_a_stop_leaves_none_unrun(
    stack: Stack, colony: ColonyHandle
) -> None:
    many = [
        stack.client.submit_func_spec(spec(colony, "nap", NAP, 0.05), colony.owner_prvkey)
        for _ in range(60)
    ]

    def states() -> Counter[int]:
        return Counter(
            stack.client.get_process(p.processid, colony.owner_prvkey).state for p in many
        )

    # Two executors of two workers, each claiming up to two ahead: stopped mid-way, they
    # run what they claimed ahead before they return.
    with (
        running_executor(stack, colony, concurrency=2, prefetch=2),
        running_executor(stack, colony, concurrency=2, prefetch=2),
    ):
        stack.client.wait(many[10], WAIT, colony.owner_prvkey)
    midway = states()
    assert midway[ProcessState.RUNNING] == 0, midway
    assert midway[ProcessState.SUCCESS] < len(many), "stopped too late to prove anything"
    with running_executor(stack, colony, prefetch=2):
        for process in many:
            stack.client.wait(process, WAIT, colony.owner_prvkey)
    assert states() == {ProcessState.SUCCESS: len(many)}
    log = read_events(stack.nats.url)
    ids = {p.processid for p in many}
    assert assignments(log, ids) == {(p.processid, 1): 1 for p in many}
    prefetched = [
        e
        for e in log.of_kind("ProcessAssigned")
        if e.processid in ids and claim_of(e.state["command"]).prefetch
    ]
    assert prefetched, "no process was claimed ahead"
