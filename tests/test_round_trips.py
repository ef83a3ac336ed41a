"""One round trip per process, on two real engine replicas (protocol.py, "Work").

- a claim the engine holds gets the work that becomes ready while it waits (pushed, after
  the engine asked the claimer whether it still waits), and a second held claim does not
  get the same process;
- a claim whose caller gave up (a cancelled ``assign``) is given nothing;
- a close that carries a claim assigns the next process once per attempt, each assignment
  caused by a signed ``claim`` command of its own;
- a close whose claim is held (an idle executor: one request per process) publishes its
  end notification and answers ``wait`` at once, and its claim gets the next process;
- a close carries the held claim sealed ahead while it is fresh (the engine's "still
  waiting?" is answered yes, the assignment is caused by that very claim), a stale one is
  sealed anew.

Every "exactly once" is read from the raw log (tests/eventlog.py). The replicas share one
queue group, so each command (a held claim included) goes to either of them.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg

from colonies_es.client import AsyncColonies
from colonies_es.client.async_client import SEALED_CLAIM_FRESH
from colonies_es.models import FuncSpec, Process, func_spec
from colonies_es.states import ProcessState
from tests.eventlog import EventLog, command_payload, read_events
from tests.stack import ColonyHandle, Replicas, start_replicas, stop_replicas

WAIT = 20.0
"""Seconds any single step may take on a loaded machine."""

NOOP = "def noop(ctx={}):\n    return 1\n"


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    started = start_replicas(Path(tmp_path_factory.mktemp("round-trips")), 2)
    try:
        yield started
    finally:
        stop_replicas(started)


def noop_spec(colony: ColonyHandle) -> FuncSpec:
    spec = func_spec("noop", [], colony.name, "python-executor")
    spec.env["code"] = base64.b64encode(NOOP.encode()).decode()
    return spec


def client(replicas: Replicas) -> AsyncColonies:
    """A client of its own (its own connection: an executor, or a submitter)."""
    return AsyncColonies("127.0.0.1", replicas.nats.port, timeout=WAIT)


class AliveQuestions:
    """Counts the engine's "does your claim still wait?" questions (core NATS: a second
    subscriber sees them without answering), each asked only before work is pushed to a
    claim the engine held."""

    def __init__(self) -> None:
        self.asked = 0
        self._changed = asyncio.Event()

    async def _seen(self, _: Msg) -> None:
        self.asked += 1
        self._changed.set()

    async def until(self, count: int) -> None:
        async with asyncio.timeout(WAIT):
            while self.asked < count:
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
async def questions(replicas: Replicas) -> AsyncIterator[AliveQuestions]:
    nc = await nats.connect(replicas.nats.url)
    watching = AliveQuestions()
    await nc.subscribe("_INBOX.*.alive.*", cb=watching._seen)
    await nc.flush()
    yield watching
    await nc.close()


def assignments(log: EventLog, processids: set[str]) -> Counter[tuple[str, int]]:
    """(process, attempt) -> how many ProcessAssigned events the log holds for it."""
    return Counter(
        (event.processid or "", event.state["attempt"])
        for event in log.of_kind("ProcessAssigned")
        if event.processid in processids
    )


def command_op(event_command: object) -> str:
    """The op of the signed command an event stores."""
    return str(command_payload(event_command)["op"])


async def test_work_goes_to_one_held_claim_and_the_other_keeps_waiting(
    replicas: Replicas, questions: AliveQuestions
) -> None:
    colony = replicas.new_colony()
    keys = [replicas.new_executor(colony), replicas.new_executor(colony)]
    async with client(replicas) as one, client(replicas) as two, client(replicas) as submitter:
        claims = [
            asyncio.create_task(one.assign(colony.name, WAIT, keys[0])),
            asyncio.create_task(two.assign(colony.name, WAIT, keys[1])),
        ]
        await asyncio.sleep(0.5)  # let both claims reach the engines before there is work
        first = await submitter.submit_func_spec(noop_spec(colony), colony.owner_prvkey)
        done, waiting = await asyncio.wait(claims, timeout=WAIT, return_when="FIRST_COMPLETED")
        [winner] = done
        assert winner.result().processid == first.processid
        assert winner.result().state == ProcessState.RUNNING
        await questions.until(1)  # pushed to a held claim, after asking its client
        second = await submitter.submit_func_spec(noop_spec(colony), colony.owner_prvkey)
        [other] = waiting
        assert (await asyncio.wait_for(other, WAIT)).processid == second.processid
    log = await asyncio.to_thread(read_events, replicas.nats.url)
    counted = assignments(log, {first.processid, second.processid})
    assert counted == {(first.processid, 1): 1, (second.processid, 1): 1}


async def test_a_claim_whose_assign_was_cancelled_is_given_nothing(
    replicas: Replicas, questions: AliveQuestions
) -> None:
    colony = replicas.new_colony()
    gone, staying = replicas.new_executor(colony), replicas.new_executor(colony)
    async with client(replicas) as leaving, client(replicas) as other:
        abandoned = asyncio.create_task(leaving.assign(colony.name, WAIT, gone))
        await asyncio.sleep(0.5)  # held by an engine by now
        abandoned.cancel()
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        process = await other.submit_func_spec(noop_spec(colony), colony.owner_prvkey)
        await questions.until(1)  # the engine woke the abandoned claim and asked: "0"
        taken = await other.assign(colony.name, WAIT, staying)
        assert taken.processid == process.processid
        assert taken.assignedexecutorid != ""
    log = await asyncio.to_thread(read_events, replicas.nats.url)
    assert assignments(log, {process.processid}) == {(process.processid, 1): 1}
    [assigned] = [e for e in log.of_kind("ProcessAssigned") if e.processid == process.processid]
    assert assigned.state["executorid"] == taken.assignedexecutorid


async def test_closes_claim_the_next_processes_once_each_by_their_own_claim_commands(
    replicas: Replicas,
) -> None:
    colony = replicas.new_colony()
    keys = [replicas.new_executor(colony) for _ in range(2)]
    count = 30
    async with client(replicas) as submitter:
        submitted = [
            await submitter.submit_func_spec(noop_spec(colony), colony.owner_prvkey)
            for _ in range(count)
        ]

    async def executor(key: str) -> tuple[int, int]:
        """Runs until no work is left; (processes closed, of which claimed by a close)."""
        closed = claimed_by_close = 0
        async with client(replicas) as me:
            try:
                process: Process | None = await me.assign(colony.name, 2, key)
            except Exception:
                return closed, claimed_by_close
            while process is not None:
                process = await me.close_and_claim(process.processid, [1], key, colony.name)
                closed += 1
                claimed_by_close += process is not None
        return closed, claimed_by_close

    results = await asyncio.gather(*(executor(key) for key in keys))
    assert sum(closed for closed, _ in results) == count
    assert sum(by_close for _, by_close in results) >= count - 2 * len(keys)  # few assigns
    ids = {process.processid for process in submitted}
    log = await asyncio.to_thread(read_events, replicas.nats.url)
    assert assignments(log, ids) == {(processid, 1): 1 for processid in ids}
    closes = log.count_per_process("ProcessClosed")
    assert {processid: closes[processid] for processid in ids} == dict.fromkeys(ids, 1)
    for event in log.of_kind("ProcessAssigned"):
        if event.processid in ids:  # each caused by a claim of its own, not by the close
            assert command_op(event.state["command"]) == "claim"


async def test_a_close_holds_its_claim_until_work_comes_after_answering_for_the_closed(
    replicas: Replicas,
) -> None:
    """An idle executor's close carries a held claim: one request per process. The close's
    effects (end notification, ``wait``) do not wait for the claim; the claim is given
    the next process submitted, by a claim command of its own."""
    colony = replicas.new_colony()
    key = replicas.new_executor(colony)
    nc = await nats.connect(replicas.nats.url)
    claims_sent: list[str] = []
    ended: asyncio.Queue[str] = asyncio.Queue()

    async def claim_seen(msg: Msg) -> None:
        if msg.subject.endswith(".claim"):
            claims_sent.append(msg.subject)

    async def end_seen(msg: Msg) -> None:
        await ended.put(msg.data.decode())

    async with client(replicas) as me, client(replicas) as submitter:
        first = await submitter.submit_func_spec(noop_spec(colony), colony.owner_prvkey)
        taken = await me.assign(colony.name, WAIT, key)
        assert taken.processid == first.processid
        await nc.subscribe("colonies.api.>", cb=claim_seen)
        await nc.subscribe(f"colonies.ended.{colony.name}.*", cb=end_seen)
        await nc.flush()
        closing = asyncio.create_task(
            me.close_and_claim(first.processid, [1], key, colony.name, wait=WAIT)
        )
        async with asyncio.timeout(WAIT):
            assert await ended.get() == first.processid
        done = await submitter.wait(first, WAIT, colony.owner_prvkey)
        assert done.state == ProcessState.SUCCESS
        assert not closing.done()  # its claim is held: nothing ready for it yet
        second = await submitter.submit_func_spec(noop_spec(colony), colony.owner_prvkey)
        following = await asyncio.wait_for(closing, WAIT)
        assert following is not None
        assert following.processid == second.processid
        assert following.state == ProcessState.RUNNING
    await nc.close()
    assert claims_sent == []  # no claim of its own: the close's was the only one
    log = await asyncio.to_thread(read_events, replicas.nats.url)
    assert assignments(log, {second.processid}) == {(second.processid, 1): 1}
    [assigned] = [e for e in log.of_kind("ProcessAssigned") if e.processid == second.processid]
    assert command_op(assigned.state["command"]) == "claim"


async def test_a_close_carries_the_claim_sealed_ahead_while_it_is_fresh(
    replicas: Replicas, questions: AliveQuestions
) -> None:
    """An idle executor seals its next held claim while it waits (``seal_held_claim``):
    the close carries it, the engine's "still waiting?" about it is answered yes (work
    that came later is assigned to it), and the assignment is caused by that claim. A
    claim sealed too long ago is not carried: the close seals a fresh one."""
    colony = replicas.new_colony()
    key = replicas.new_executor(colony)
    hold = 5.0
    async with client(replicas) as me, client(replicas) as submitter:
        first = await submitter.submit_func_spec(noop_spec(colony), colony.owner_prvkey)
        assert (await me.assign(colony.name, WAIT, key)).processid == first.processid
        sealed = await me.seal_held_claim(colony.name, hold, key)
        closing = asyncio.create_task(
            me.close_and_next(first.processid, [1], key, colony.name, wait=hold, sealed=sealed)
        )
        await asyncio.sleep(0.5)  # held past ALIVE_AFTER: the engine asks before assigning
        second = await submitter.submit_func_spec(noop_spec(colony), colony.owner_prvkey)
        following = await asyncio.wait_for(closing, WAIT)
        assert following.next is not None
        assert following.next.processid == second.processid
        await questions.until(1)

        stale = await me.seal_held_claim(colony.name, hold, key)
        stale = dataclasses.replace(stale, sealed_at=stale.sealed_at - SEALED_CLAIM_FRESH)
        third = await submitter.submit_func_spec(noop_spec(colony), colony.owner_prvkey)
        after = await me.close_and_next(
            second.processid, [1], key, colony.name, wait=hold, sealed=stale
        )
        assert after.next is not None
        assert after.next.processid == third.processid
    log = await asyncio.to_thread(read_events, replicas.nats.url)
    ids = {second.processid, third.processid}
    assert assignments(log, ids) == {(second.processid, 1): 1, (third.processid, 1): 1}
    causes = {
        event.processid: command_payload(event.state["command"])
        for event in log.of_kind("ProcessAssigned")
        if event.processid in ids
    }
    assert causes[second.processid]["nonce"] == command_payload(sealed.data)["nonce"]
    assert causes[third.processid]["op"] == "claim"
    assert causes[third.processid]["nonce"] != command_payload(stale.data)["nonce"]
