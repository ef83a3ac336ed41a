"""Several engine replicas on one log (issue 8), on real processes.

Each replica is a ``colonies server`` process in the queue group ``colonies-engine``; they
share the nats-server, the event log and its seal key. The tests prove that:

- workflows of the seed's three shapes (map-reduce included) all succeed whichever
  replica answers each command, and the raw log shows each process assigned once per
  attempt and closed once;
- a client reads its own writes on any replica (submit, then get, 1,000 times);
- a replica SIGKILLed mid-load stops nothing: every workflow completes, and a submit
  retried with the same signed bytes makes one graph;
- a deadline fires once across three replicas, also when a replica is killed first;
- replica affinity: a client keeps to the replica that answered it, an executor claims
  from the replica that published its work ticket and closes there, and when that
  replica dies the client goes on through the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.errors
import pytest
from nats.micro.request import ERROR_CODE_HEADER

from colonies_es import Workflow, crypto, func_spec
from colonies_es.client import Colonies
from colonies_es.executor import PythonExecutor
from colonies_es.models import FuncSpec, ProcessGraph
from colonies_es.protocol import api_subject, replica_subject
from colonies_es.states import ProcessState
from tests.eventlog import read_events
from tests.processes import wait_until
from tests.stack import ColonyHandle, Replicas, start_replicas, stop_replicas

EXECUTOR_TYPE = "python-executor"
WAIT = 120.0
"""Seconds a batch of workflows may take before a test gives up."""

GEN_NUMS = "def gen_nums(ctx={}):\n    return 1, 2\n"
SUM_NUMS = "def sum_nums(n1, n2, ctx={}):\n    return n1 + n2\n"
FETCH_A = "def fetch_a(ctx={}):\n    return {'source': 'A', 'value': 10}\n"
FETCH_B = "def fetch_b(ctx={}):\n    return {'source': 'B', 'value': 20}\n"
MERGE = "def merge(a, b, ctx={}):\n    return a['value'] + b['value']\n"
PAIR = "def pair(i, ctx={}):\n    return i, i\n"
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
MAP_CHILDREN = 3


def _spec(
    funcname: str, code: str, colonyname: str, *dependencies: str, args: list[Any] | None = None
) -> FuncSpec:
    made = func_spec(funcname, args or [], colonyname, EXECUTOR_TYPE, code=code)
    made.conditions.dependencies.extend(dependencies)
    return made


def seed_workflows(colonyname: str) -> list[tuple[Workflow, str, list[Any]]]:
    """The seed's three shapes: (workflow, the last node's name, its expected output)."""
    return [
        (
            Workflow(
                colonyname=colonyname,
                functionspecs=[
                    _spec("gen_nums", GEN_NUMS, colonyname),
                    _spec("sum_nums", SUM_NUMS, colonyname, "gen_nums"),
                ],
            ),
            "sum_nums",
            [3],
        ),
        (
            Workflow(
                colonyname=colonyname,
                functionspecs=[
                    _spec("fetch_a", FETCH_A, colonyname),
                    _spec("fetch_b", FETCH_B, colonyname),
                    _spec("merge", MERGE, colonyname, "fetch_a", "fetch_b"),
                ],
            ),
            "merge",
            [30],
        ),
        (
            Workflow(
                colonyname=colonyname,
                functionspecs=[
                    _spec("map", MAP, colonyname, args=[MAP_CHILDREN]),
                    _spec("reduce", REDUCE, colonyname, "map"),
                ],
            ),
            "reduce",
            [MAP_CHILDREN * (MAP_CHILDREN - 1)],
        ),
    ]


@contextlib.contextmanager
def python_executors(
    replicas: Replicas, colony: ColonyHandle, count: int, concurrency: int
) -> Iterator[None]:
    """``count`` python executors (own connections, in threads) until the block ends."""
    stop = threading.Event()
    running: list[tuple[PythonExecutor, threading.Thread]] = []
    try:
        for _ in range(count):
            executor = PythonExecutor(
                Colonies("127.0.0.1", replicas.nats.port),
                colony.name,
                colony.owner_prvkey,
                concurrency=concurrency,
                poll_timeout=0.5,
            )
            executor.register()
            thread = threading.Thread(target=executor.run, args=(stop,), daemon=True)
            thread.start()
            running.append((executor, thread))
        yield
    finally:
        stop.set()
        for executor, thread in running:
            thread.join(15)
            executor.client.disconnect()


def new_replicas(tmp_path: Path, count: int) -> Iterator[Replicas]:
    replicas = start_replicas(tmp_path, count)
    try:
        yield replicas
    finally:
        stop_replicas(replicas)


@pytest.fixture
def two(tmp_path: Path) -> Iterator[Replicas]:
    yield from new_replicas(tmp_path, 2)


@pytest.fixture
def three(tmp_path: Path) -> Iterator[Replicas]:
    yield from new_replicas(tmp_path, 3)


def new_colony(replicas: Replicas) -> ColonyHandle:
    """A colony (its owner submits; python executors register themselves)."""
    return replicas.new_colony()


def submit_all(
    replicas: Replicas, colony: ColonyHandle, count: int
) -> list[tuple[ProcessGraph, str, list[Any]]]:
    shapes = seed_workflows(colony.name)
    submitted = []
    for number in range(count):
        workflow, last, expected = shapes[number % len(shapes)]
        graph = replicas.client.submit_workflow(workflow, colony.owner_prvkey)
        submitted.append((graph, last, expected))
    return submitted


def assert_all_succeed(
    replicas: Replicas, colony: ColonyHandle, submitted: list[tuple[ProcessGraph, str, list[Any]]]
) -> None:
    client = replicas.client
    for graph, last, expected in submitted:
        process = client.find_process(last, graph.processids, colony.owner_prvkey)
        assert process is not None
        done = client.wait(process, WAIT, colony.owner_prvkey)
        assert done.state == ProcessState.SUCCESS, done.errors
        assert done.output == expected
        final = client.get_processgraph(graph.processgraphid, colony.owner_prvkey)
        assert final.state == ProcessState.SUCCESS


def assert_each_process_assigned_once_per_attempt_and_closed_once(replicas: Replicas) -> None:
    log = read_events(replicas.nats.url)
    assigned = Counter((e.processid, e.state["attempt"]) for e in log.of_kind("ProcessAssigned"))
    closed = Counter(e.processid for e in log.of_kind("ProcessClosed"))
    assert assigned, "nothing was assigned"
    assert max(assigned.values()) == 1, [k for k, n in assigned.items() if n > 1]
    assert max(closed.values()) == 1, [k for k, n in closed.items() if n > 1]
    assert {p for p, _ in assigned} == set(closed)
    failures = [e for e in log.of_kind("ProcessFailed") if "does not exist" in str(e.state)]
    assert failures == []


async def requests_served(url: str) -> list[int]:
    """Commands each running replica has answered (from the nats.micro stats)."""
    nc = await nats.connect(url)
    try:
        inbox = nc.new_inbox()
        subscription = await nc.subscribe(inbox)
        await nc.publish("$SRV.STATS.colonies", b"", reply=inbox)
        served = []
        with contextlib.suppress(nats.errors.TimeoutError):
            while True:
                stats = msgspec.json.decode((await subscription.next_msg(timeout=1.0)).data)
                served.append(sum(e.get("num_requests", 0) for e in stats["endpoints"]))
        return served
    finally:
        await nc.close()


# --- workflows through several replicas ----------------------------------------------------


@pytest.mark.parametrize("count", [2, 3])
def test_replicas_run_200_seed_workflows_each_process_assigned_and_closed_once(
    tmp_path: Path, count: int
) -> None:
    for replicas in new_replicas(tmp_path, count):
        colony = new_colony(replicas)
        with python_executors(replicas, colony, count=3, concurrency=4):
            submitted = submit_all(replicas, colony, 200)
            assert_all_succeed(replicas, colony, submitted)
        assert_each_process_assigned_once_per_attempt_and_closed_once(replicas)
        served = asyncio.run(requests_served(replicas.nats.url))
        assert len(served) == count
        assert min(served) > 0, served  # every replica answered commands


def test_a_write_is_readable_on_any_replica_at_once_1000_times(two: Replicas) -> None:
    """Submit, then get the graph by a fresh request: whichever replica answers, the
    client's own write is there (read-your-writes through ``Colonies-After``)."""
    colony = new_colony(two)
    spec = _spec("gen_nums", GEN_NUMS, colony.name)
    for _ in range(1000):
        process = two.client.submit_func_spec(spec, colony.owner_prvkey)
        got = two.client.get_process(process.processid, colony.owner_prvkey)
        assert got.processid == process.processid


# --- replica affinity ----------------------------------------------------------------------


async def served_by_endpoint(url: str) -> dict[str, dict[str, tuple[int, int]]]:
    """Per running replica (its name, ``Colonies-Replica``): each endpoint's requests
    and errors."""
    nc = await nats.connect(url)
    try:
        inbox = nc.new_inbox()
        subscription = await nc.subscribe(inbox)
        await nc.publish("$SRV.STATS.colonies", b"", reply=inbox)
        served = {}
        with contextlib.suppress(nats.errors.TimeoutError):
            while True:
                stats = msgspec.json.decode((await subscription.next_msg(timeout=1.0)).data)
                served[stats["metadata"]["replica"]] = {
                    e["name"]: (e.get("num_requests", 0), e.get("num_errors", 0))
                    for e in stats["endpoints"]
                }
        return served
    finally:
        await nc.close()


def test_a_client_keeps_to_its_replica_and_it_fails_over(
    two: Replicas,
) -> None:
    colony = new_colony(two)
    executor_key = two.new_executor(colony)
    submitter = Colonies("127.0.0.1", two.nats.port)  # affinity: the default
    executor = Colonies("127.0.0.1", two.nats.port)
    spec = _spec("gen_nums", GEN_NUMS, colony.name)
    rounds = 10
    try:
        for _ in range(rounds):
            process = submitter.submit_func_spec(spec, colony.owner_prvkey)
            assigned = executor.assign(colony.name, 20, executor_key)
            assert assigned.processid == process.processid
            executor.close(assigned.processid, [1, 2], executor_key)
        served = asyncio.run(served_by_endpoint(two.nats.url))
        assert len(served) == 2
        # The first submit went to the queue group; it named the replica that took it,
        # which got every later one directly. The executor keeps to the replica its own
        # first claim reached (it holds the claims; work submitted on the other replica
        # reaches it through its follower), and closes there.
        [(home, endpoints)] = [
            (replica, endpoints)
            for replica, endpoints in served.items()
            if endpoints["submit_func_spec-here"][0] > 0
        ]
        assert endpoints["submit_func_spec-here"] == (rounds - 1, 0)
        for replica, endpoints in served.items():
            if replica != home:
                assert endpoints["submit_func_spec-here"] == (0, 0)
        assert sum(e["claim"][0] for e in served.values()) == 1  # the first, to any
        [endpoints] = [e for e in served.values() if e["claim-here"][0] > 0]  # one replica
        assert endpoints["claim-here"] == (rounds - 1, 0)
        assert endpoints["close-here"][0] >= rounds - 1

        # The replica the client keeps to dies: its next commands go to the other one.
        [victim] = [e for e in two.engines if f"replica {home}" in e.log()]
        victim.kill()
        process = submitter.submit_func_spec(spec, colony.owner_prvkey)
        assigned = executor.assign(colony.name, 20, executor_key)
        assert assigned.processid == process.processid
        executor.close(assigned.processid, [1, 2], executor_key)
        done = submitter.get_process(process.processid, colony.owner_prvkey)
        assert done.state == ProcessState.SUCCESS
    finally:
        submitter.disconnect()
        executor.disconnect()
    assert_each_process_assigned_once_per_attempt_and_closed_once(two)


# --- a replica killed -----------------------------------------------------------------------


async def _send(url: str, op: str, sealed: bytes) -> tuple[str | None, bytes]:
    nc = await nats.connect(url)
    try:
        reply = await nc.request(api_subject(op), sealed, timeout=10)
        return (reply.headers or {}).get(ERROR_CODE_HEADER), reply.data
    finally:
        await nc.close()


def test_a_replica_killed_mid_load_stops_nothing_and_a_retried_submit_makes_one_graph(
    three: Replicas,
) -> None:
    colony = new_colony(three)
    with python_executors(three, colony, count=3, concurrency=4):
        first = submit_all(three, colony, 60)
        three.engines[1].kill()
        second = submit_all(three, colony, 60)
        assert_all_succeed(three, colony, first + second)
    assert_each_process_assigned_once_per_attempt_and_closed_once(three)

    # A submit whose reply was lost is sent again, byte for byte, to whichever replica.
    workflow, _, _ = seed_workflows(colony.name)[0]
    body = {"workflow": msgspec.to_builtins(workflow)}
    sealed = crypto.seal("submit_workflow", body, colony.owner_prvkey)
    replies = [asyncio.run(_send(three.nats.url, "submit_workflow", sealed)) for _ in range(4)]
    assert {code for code, _ in replies} == {None}
    made = {msgspec.json.decode(data)["processgraphid"] for _, data in replies}
    [graphid] = made
    log = read_events(three.nats.url)
    graphs = [e for e in log.of_kind("GraphSubmitted") if e.aggregate_id.endswith(graphid)]
    assert len(graphs) == 1


async def _send_to_each(
    url: str, replicas: list[str], op: str, sealed: bytes
) -> list[tuple[str | None, bytes]]:
    """The same signed bytes sent at the same moment to each replica by its own subject:
    every replica decides the command before it can have applied another's event."""
    nc = await nats.connect(url)
    try:
        replies = await asyncio.gather(
            *(nc.request(replica_subject(name, op), sealed, timeout=10) for name in replicas)
        )
        return [((r.headers or {}).get(ERROR_CODE_HEADER), r.data) for r in replies]
    finally:
        await nc.close()


def test_one_submission_decided_on_two_replicas_at_once_makes_one_graph(two: Replicas) -> None:
    """A retry racing its original on another replica (the first reply was lost): the
    graph is named after the command, so the second decision conflicts in the log and
    is answered as a retry, with the same graph."""
    colony = new_colony(two)
    replicas = list(asyncio.run(served_by_endpoint(two.nats.url)))
    assert len(replicas) == 2
    workflow, _, _ = seed_workflows(colony.name)[0]
    for _ in range(3):
        body = {"workflow": msgspec.to_builtins(workflow)}
        sealed = crypto.seal("submit_workflow", body, colony.owner_prvkey)
        replies = asyncio.run(_send_to_each(two.nats.url, replicas, "submit_workflow", sealed))
        assert [code for code, _ in replies] == [None, None], replies
        [graphid] = {msgspec.json.decode(data)["processgraphid"] for _, data in replies}
        log = read_events(two.nats.url)
        graphs = [e for e in log.of_kind("GraphSubmitted") if e.aggregate_id.endswith(graphid)]
        assert len(graphs) == 1
    assert len(read_events(two.nats.url).of_kind("GraphSubmitted")) == 3


# --- timers across replicas -----------------------------------------------------------------


@pytest.mark.parametrize("kill_first", [False, True])
def test_an_overrun_times_out_once_across_three_replicas(three: Replicas, kill_first: bool) -> None:
    """Every replica holds the deadline; optimistic concurrency on the graph lets one
    record ExecutionTimedOut, the others drop theirs (also with a replica killed)."""
    colony = new_colony(three)
    executor = three.new_executor(colony)
    spec = func_spec("sleepy", [], colony.name, EXECUTOR_TYPE, maxexectime=2)
    process = three.client.submit_func_spec(spec, colony.owner_prvkey)
    three.client.assign(colony.name, 10, executor)  # and never close it
    if kill_first:
        three.engines[0].kill()

    def timed_out() -> bool:
        return bool(read_events(three.nats.url).of_kind("ExecutionTimedOut"))

    wait_until(timed_out, 20, "the execution deadline fired")
    # The other replicas' timers came due at the same instant; their timer loops wake at
    # least every second. Counting after a few seconds more shows whether one fired too.
    time.sleep(3)
    final = three.client.get_process(process.processid, colony.owner_prvkey)
    assert final.state == ProcessState.FAILED
    log = read_events(three.nats.url)
    assert [e.processid for e in log.of_kind("ExecutionTimedOut")] == [process.processid]
    for engine in three.engines:
        assert "Traceback" not in engine.log()
