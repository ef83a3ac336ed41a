"""Assignment on a real engine: exactly once under a race, types, names and priority.

The race is checked from the log itself: every ``ProcessAssigned`` and ``ProcessClosed``
event of the colony, read from the COLONIES stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import msgspec
import pytest

from colonies_es import Colonies, ColoniesError, Workflow, crypto, func_spec
from colonies_es.engine.app import Outcome
from colonies_es.models import FuncSpec
from colonies_es.protocol import Claim
from colonies_es.states import ProcessState
from tests.eventlog import read_events
from tests.stack import ColonyHandle, Stack, engine_app

EXECUTOR_TYPE = "python-executor"


def spec(colony: ColonyHandle, name: str = "work", **options: object) -> FuncSpec:
    return func_spec(name, [], colony.name, options.pop("executortype", EXECUTOR_TYPE), **options)  # type: ignore[arg-type]


# --- the race --------------------------------------------------------------------------------

RACE_PROCESSES = 500
RACE_EXECUTORS = 8


class RaceExecutor(threading.Thread):
    """An executor with its own key and client: assign, close, until all work is done."""

    def __init__(self, stack: Stack, colony: ColonyHandle, name: str, done: Counter[str]) -> None:
        super().__init__(name=name)
        self.prvkey = stack.new_executor(colony, EXECUTOR_TYPE, name=name)
        self.colony = colony
        self.port = stack.nats.port
        self.done = done
        self.ran: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        deadline = time.monotonic() + 60
        try:
            with Colonies("127.0.0.1", self.port) as client:
                while time.monotonic() < deadline and self.done.total() < RACE_PROCESSES:
                    try:
                        process = client.assign(self.colony.name, 0.5, self.prvkey)
                    except ColoniesError as error:
                        if error.status == 404:
                            continue
                        raise
                    client.close(process.processid, [self.name], self.prvkey)
                    self.ran.append(process.processid)
                    with _counting:
                        self.done[process.processid] += 1
        except BaseException as error:
            self.error = error


_counting = threading.Lock()


def test_racing_executors_assign_each_process_exactly_once(stack: Stack) -> None:
    colony = stack.new_colony()
    # Half in one graph (the executors contend for one aggregate), half as single processes.
    in_graph = RACE_PROCESSES // 2
    workflow = Workflow(
        colonyname=colony.name,
        functionspecs=[spec(colony, f"node{i}") for i in range(in_graph)],
    )
    graph = stack.client.submit_workflow(workflow, colony.owner_prvkey)
    with ThreadPoolExecutor(8) as pool:
        singles = list(
            pool.map(
                lambda i: stack.client.submit_func_spec(
                    spec(colony, f"single{i}"), colony.owner_prvkey
                ),
                range(RACE_PROCESSES - in_graph),
            )
        )
    submitted = set(graph.processids) | {p.processid for p in singles}
    assert len(submitted) == RACE_PROCESSES

    done: Counter[str] = Counter()
    executors = [RaceExecutor(stack, colony, f"racer{i}", done) for i in range(RACE_EXECUTORS)]
    for executor in executors:
        executor.start()
    for executor in executors:
        executor.join(90)
    assert [e.error for e in executors if e.error] == []
    assert set(done) == submitted
    assert set(done.values()) == {1}
    assert sum(1 for e in executors if e.ran) > 1, "no race: one executor did everything"

    log = read_events(stack.nats.url)
    mine = [e for e in log if e.aggregate_id.startswith(f"{colony.name}.graph.")]
    assigned = Counter(e.processid for e in mine if e.kind == "ProcessAssigned")
    closed = Counter(e.processid for e in mine if e.kind == "ProcessClosed")
    assert set(assigned) == submitted
    assert set(assigned.values()) == {1}
    assert set(closed) == submitted
    assert set(closed.values()) == {1}
    log.assert_versions_contiguous()


# --- who gets what ---------------------------------------------------------------------------


def test_an_executor_of_another_type_never_gets_the_process(stack: Stack) -> None:
    colony = stack.new_colony()
    other_type = stack.new_executor(colony, "gpu-executor")
    processid = stack.client.submit_func_spec(spec(colony), colony.owner_prvkey).processid

    with pytest.raises(ColoniesError) as claim:
        stack.client.claim(colony.name, other_type)
    with pytest.raises(ColoniesError) as assign:
        stack.client.assign(colony.name, 1, other_type)
    assert claim.value.status == assign.value.status == 404
    assert stack.client.get_process(processid, colony.owner_prvkey).state == ProcessState.WAITING

    right_type = stack.new_executor(colony, EXECUTOR_TYPE)
    assert stack.client.assign(colony.name, 10, right_type).processid == processid


def test_work_submitted_before_any_executor_of_its_type_exists_is_assigned_later(
    stack: Stack,
) -> None:
    colony = stack.new_colony()
    processid = stack.client.submit_func_spec(
        spec(colony, executortype="late-type"), colony.owner_prvkey
    ).processid
    latecomer = stack.new_executor(colony, "late-type")
    assert stack.client.assign(colony.name, 10, latecomer).processid == processid


def test_executornames_hands_the_process_to_the_named_executor_only(stack: Stack) -> None:
    colony = stack.new_colony()
    bystander = stack.new_executor(colony, EXECUTOR_TYPE, name="bystander")
    chosen = stack.new_executor(colony, EXECUTOR_TYPE, name="chosen")
    targeted = stack.client.submit_func_spec(
        spec(colony, "targeted", executorname="chosen"), colony.owner_prvkey
    )
    assert targeted.spec.conditions.executornames == ["chosen"]

    with pytest.raises(ColoniesError) as claim:
        stack.client.claim(colony.name, bystander)
    with pytest.raises(ColoniesError) as assign:
        stack.client.assign(colony.name, 1, bystander)
    assert claim.value.status == assign.value.status == 404

    taken = stack.client.assign(colony.name, 10, chosen)
    assert taken.processid == targeted.processid
    assert taken.assignedexecutorid == stack.client.whoami(colony.name, chosen).executorid


def test_higher_priority_first_then_fifo_within_a_priority(stack: Stack) -> None:
    colony = stack.new_colony()
    executor = stack.new_executor(colony)  # registered, not taking work yet
    submitted = {}
    for name, priority in [("p1", 1), ("p2", 2), ("p5a", 5), ("p5b", 5)]:
        process = stack.client.submit_func_spec(
            spec(colony, name, priority=priority), colony.owner_prvkey
        )
        submitted[process.processid] = name

    order = []
    for _ in range(4):
        process = stack.client.assign(colony.name, 10, executor)
        order.append(submitted[process.processid])
        stack.client.close(process.processid, [], executor)

    assert order == ["p5a", "p5b", "p2", "p1"]


def test_high_priority_work_submitted_later_overtakes_queued_work(stack: Stack) -> None:
    colony = stack.new_colony()
    executor = stack.new_executor(colony)
    names = {}
    for name in ("low1", "low2", "low3"):
        names[stack.client.submit_func_spec(spec(colony, name), colony.owner_prvkey).processid] = (
            name
        )
    first = stack.client.assign(colony.name, 10, executor)
    stack.client.close(first.processid, [], executor)

    urgent = stack.client.submit_func_spec(spec(colony, "urgent", priority=9), colony.owner_prvkey)
    names[urgent.processid] = "urgent"
    order = [names[first.processid]]
    for _ in range(3):
        process = stack.client.assign(colony.name, 10, executor)
        order.append(names[process.processid])
        stack.client.close(process.processid, [], executor)

    assert order == ["low1", "urgent", "low2", "low3"]


# --- a replica that has not followed the log yet -----------------------------------------


def test_a_claim_naming_a_colony_this_replica_has_not_followed_yet_is_decided_again(
    stack: Stack,
) -> None:
    """A second engine (in this process, caught up once, not yet following) is asked for
    work in a colony the stack's engine made a moment ago. The claim's first decision
    finds no such colony there: the engine catches up with the log and decides it again,
    so the executor gets the process instead of "colony does not exist". (A claim that
    waited and found nothing is never decided again: that would wait twice.)"""
    replica = engine_app(stack)
    try:
        colony = stack.new_colony()
        executor_key = stack.new_executor(colony)
        submitted = stack.client.submit_func_spec(spec(colony), colony.owner_prvkey)
        claim = crypto.seal("claim", Claim(colonyname=colony.name, wait=5.0), executor_key)

        async def claim_while_following() -> Outcome:
            following = asyncio.create_task(replica.follow())
            try:  # decided once before the follower has read anything
                return await replica.handle("claim", claim, time.time())
            finally:
                following.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await following

        outcome = replica.aggregates.store.connection.run(claim_while_following())
        assert outcome.status == 200, outcome.message
        assert msgspec.json.decode(outcome.body)["processid"] == submitted.processid
        assert replica.counters.after_waits == 1  # it did catch up for this claim

        nothing = crypto.seal("claim", Claim(colonyname=colony.name, wait=0.2), executor_key)
        outcome = replica.aggregates.store.connection.run(
            replica.handle("claim", nothing, time.time())
        )
        assert (outcome.status, outcome.nothing_came) == (404, True), outcome.message
        assert replica.counters.after_waits == 1  # no catch-up for a claim that found nothing
    finally:
        replica.close()
