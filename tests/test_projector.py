"""The projector and its queries on the real stack: nats-server, engine process, and
``colonies projector`` as a child process following the engine's (sealed) log.

The module shares one stack and one projector; every test makes its own colony. Answers
are compared with what the engine itself answers for the same things. The last test
deletes the view and rebuilds it from the log: everything must read the same.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import nats
import pytest
from eventsourcing.utils import Environment

from colonies_es import ColoniesError, crypto, func_spec
from colonies_es.client.queries import QueryClient
from colonies_es.projections.projector import Follower, Projector
from colonies_es.projections.protocol import query_subject
from colonies_es.projections.runner import run_projector
from colonies_es.projections.view import UPSTREAM, open_view
from colonies_es.settings import Settings
from colonies_es.states import ProcessState
from colonies_es.store import JetStreamFactory
from tests.stack import ColonyHandle, Stack, start_stack, stop_stack
from tests.test_projector_support import (
    EXECUTOR_TYPE,
    ProjectorProcess,
    answers,
    caught_up,
    delete_view,
    dump_view,
    run_seed,
    seed_workflow,
    view_position,
    wait_for_view,
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """This module's stack: the engine without a projector beside it, so that the
    projector under test answers every query and listing (its rebuild is tested)."""
    running = start_stack(tmp_path_factory.mktemp("stack"), projector=False)
    yield running
    stop_stack(running)


@pytest.fixture(scope="module")
def projector(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProjectorProcess]:
    directory = tmp_path_factory.mktemp("projector")
    running = ProjectorProcess(
        stack.nats.url, directory / "view.sqlite", stack.engine.seal_key, directory
    ).start()
    yield running
    running.stop()


@dataclass
class Members:
    """A fresh colony with an approved executor ``exec-1``, a user, and the owner's
    query client."""

    handle: ColonyHandle
    executor: str
    user: str
    query: QueryClient

    @property
    def name(self) -> str:
        return self.handle.name

    @property
    def owner(self) -> str:
        return self.handle.owner_prvkey


COLONIES: dict[str, str] = {}
"""Every colony made by this module's tests: name -> owner key (for the rebuild test)."""


@pytest.fixture
def colony(stack: Stack, projector: ProjectorProcess) -> Iterator[Members]:
    handle = stack.new_colony()
    executor = stack.new_executor(handle, EXECUTOR_TYPE, name="exec-1")
    user = crypto.new_private_key()
    stack.client.add_user(
        handle.name, crypto.id_from_private_key(user), "user-1", handle.owner_prvkey
    )
    COLONIES[handle.name] = handle.owner_prvkey
    with QueryClient(handle.owner_prvkey, servers=[stack.nats.url]) as query:
        yield Members(handle, executor, user, query)


def status_of(call: Callable[[], Any]) -> int:
    with pytest.raises(ColoniesError) as refused:
        call()
    return refused.value.status


# ---------------------------------------------------------------------------- answers


def test_a_graph_and_its_processes_read_as_the_engine_answers_them(
    stack: Stack, colony: Members
) -> None:
    graph = run_seed(stack, colony.handle, colony.executor)
    caught_up(colony.query)

    view = colony.query.get_graph(graph.processgraphid)

    assert view.graph == stack.client.get_processgraph(graph.processgraphid, colony.owner)
    assert view.graph.state == ProcessState.SUCCESS
    assert [p.processid for p in view.processes] == view.graph.processids
    for process in view.processes:
        assert process == stack.client.get_process(process.processid, colony.owner)
        assert colony.query.get_process(process.processid) == process
    assert [(p.input, p.output) for p in view.processes] == [([], [1, 2]), ([1, 2], [3])]
    assert view.executornames == dict.fromkeys(view.graph.processids, "exec-1")


def test_listings_are_newest_first_by_state_and_counted_like_the_engine(
    stack: Stack, colony: Members
) -> None:
    client = stack.client
    done = run_seed(stack, colony.handle, colony.executor)
    failed = client.submit_workflow(seed_workflow(colony.name), colony.owner)
    first = client.assign(colony.name, 10, colony.executor)
    client.fail(first.processid, ["boom"], colony.executor)
    running = client.submit_workflow(seed_workflow(colony.name), colony.owner)
    client.assign(colony.name, 10, colony.executor)
    waiting = client.submit_workflow(seed_workflow(colony.name), colony.owner)
    caught_up(colony.query)

    graphs = colony.query.list_graphs(colony.name, 100)

    newest_first = [waiting, running, failed, done]
    assert [g.processgraphid for g in graphs] == [g.processgraphid for g in newest_first]
    assert graphs == client.get_processgraphs(colony.name, 100, colony.owner)
    assert colony.query.list_graphs(colony.name, 2) == graphs[:2]
    for state in ProcessState:
        assert colony.query.list_graphs(colony.name, 100, state) == client.get_processgraphs(
            colony.name, 100, colony.owner, state=state
        )
        assert colony.query.list_processes(colony.name, 100, state) == client.list_processes(
            colony.name, 100, state, colony.owner
        )
    processes = colony.query.list_processes(colony.name, 100)
    assert processes == client.list_processes(colony.name, 100, -1, colony.owner)
    assert len(processes) == 8
    assert colony.query.list_processes(colony.name, 3) == processes[:3]
    assert colony.query.stats(colony.name) == client.stats(colony.name, colony.owner)
    stats = colony.query.stats(colony.name)
    assert (stats.waitingworkflows, stats.runningworkflows) == (1, 1)
    assert (stats.successfulworkflows, stats.failedworkflows) == (1, 1)
    assert (stats.waitingprocesses, stats.runningprocesses) == (3, 1)
    assert (stats.successfulprocesses, stats.failedprocesses) == (2, 1)


def test_logs_come_oldest_first_after_since_and_the_last_count_of_them(
    stack: Stack, colony: Members
) -> None:
    stack.client.submit_workflow(seed_workflow(colony.name), colony.owner)
    process = stack.client.assign(colony.name, 10, colony.executor)
    for message in ("one", "two", "three"):
        stack.client.add_log(process.processid, message, colony.executor)
    caught_up(colony.query)

    logs = colony.query.logs(process.processid, 0)

    assert [(log.message, log.executorname, log.colonyname) for log in logs] == [
        (message, "exec-1", colony.name) for message in ("one", "two", "three")
    ]
    engine = stack.client.get_process_log(colony.name, process.processid, 100, 0, colony.owner)
    assert [log.message for log in engine] == [log.message for log in logs]
    for ours, theirs in zip(logs, engine, strict=True):
        assert abs(ours.timestamp - theirs.timestamp) <= 1000  # the engine rounds via float
    assert [log.message for log in colony.query.logs(process.processid, 2)] == ["two", "three"]
    since_first = colony.query.logs(process.processid, 0, since=logs[0].timestamp)
    assert [log.message for log in since_first] == ["two", "three"]
    assert colony.query.logs(process.processid, 1, since=logs[0].timestamp) == logs[2:]


def test_a_dynamic_graph_reads_with_its_added_processes_in_graph_order(
    stack: Stack, colony: Members
) -> None:
    client = stack.client
    workflow = seed_workflow(colony.name)
    workflow.functionspecs[0].nodename = workflow.functionspecs[0].funcname = "map"
    workflow.functionspecs[1].nodename = workflow.functionspecs[1].funcname = "reduce"
    workflow.functionspecs[1].conditions.dependencies[:] = ["map"]
    graph = client.submit_workflow(workflow, colony.owner)
    mapper = client.assign(colony.name, 10, colony.executor)
    reduce_id = graph.processids[1]
    child = func_spec("gen_nums", [], colony.name, EXECUTOR_TYPE)
    for index in range(3):
        client.add_child(
            graph.processgraphid,
            mapper.processid,
            reduce_id,
            child,
            f"gen_nums_{index}",
            index == 0,
            colony.executor,
        )
    client.close(mapper.processid, [], colony.executor)
    for _ in range(3):
        generator = client.assign(colony.name, 10, colony.executor)
        client.close(generator.processid, [1, 2], colony.executor)
    caught_up(colony.query)

    view = colony.query.get_graph(graph.processgraphid)

    engine = client.get_processgraph(graph.processgraphid, colony.owner)
    assert view.graph == engine
    assert [p.processid for p in view.processes] == engine.processids
    assert [p.spec.nodename for p in view.processes] == [
        "map",
        "reduce",
        "gen_nums_0",
        "gen_nums_1",
        "gen_nums_2",
    ]
    for process in view.processes:
        assert process == client.get_process(process.processid, colony.owner)
    reduce = next(p for p in view.processes if p.processid == reduce_id)
    assert reduce.input == [1, 2, 1, 2, 1, 2]


def test_removed_graphs_are_absent_from_gets_listings_and_stats(
    stack: Stack, colony: Members
) -> None:
    kept = run_seed(stack, colony.handle, colony.executor)
    removed = run_seed(stack, colony.handle, colony.executor)
    stack.client.remove_processgraph(removed.processgraphid, colony.owner)
    caught_up(colony.query)
    query = colony.query

    assert status_of(lambda: query.get_graph(removed.processgraphid)) == 404
    assert status_of(lambda: query.get_process(removed.processids[0])) == 404
    assert status_of(lambda: query.logs(removed.processids[0])) == 404
    assert [g.processgraphid for g in query.list_graphs(colony.name)] == [kept.processgraphid]
    assert {p.processid for p in query.list_processes(colony.name)} == set(kept.processids)
    assert query.stats(colony.name).successfulworkflows == 1
    assert query.stats(colony.name) == stack.client.stats(colony.name, colony.owner)


# ---------------------------------------------------------------------------- access


def test_only_members_of_the_colony_may_read_it(stack: Stack, colony: Members) -> None:
    graph = run_seed(stack, colony.handle, colony.executor)
    pending = stack.new_executor(colony.handle, EXECUTOR_TYPE, approve=False)
    caught_up(colony.query)
    processid = graph.processids[0]
    queries: list[Callable[[QueryClient], Any]] = [
        lambda q: q.get_graph(graph.processgraphid),
        lambda q: q.list_graphs(colony.name),
        lambda q: q.list_processes(colony.name),
        lambda q: q.get_process(processid),
        lambda q: q.stats(colony.name),
        lambda q: q.logs(processid),
    ]
    url = [stack.nats.url]

    for key in (crypto.new_private_key(), pending):
        with QueryClient(key, servers=url) as outsider:
            for query in queries:
                assert status_of(lambda: query(outsider)) == 403  # noqa: B023
    for key in (colony.user, colony.executor, colony.owner):
        with QueryClient(key, servers=url) as member:
            for query in queries:
                query(member)


def test_what_does_not_exist_is_not_found(colony: Members) -> None:
    query = colony.query
    unknown = "0" * 64
    assert status_of(lambda: query.get_graph(unknown)) == 404
    assert status_of(lambda: query.get_process(unknown)) == 404
    assert status_of(lambda: query.logs(unknown)) == 404
    assert status_of(lambda: query.list_graphs("nosuchcolony")) == 404
    assert status_of(lambda: query.stats("nosuchcolony")) == 404


def test_a_request_signed_for_another_op_is_refused(stack: Stack, colony: Members) -> None:
    caught_up(colony.query)

    async def ask(subject: str, op: str) -> str:
        nc = await nats.connect(stack.nats.url)
        try:
            data = crypto.seal(op, {"colonyname": colony.name}, colony.owner)
            reply = await nc.request(subject, data, timeout=10)
            return (reply.headers or {}).get("Nats-Service-Error-Code", "200")
        finally:
            await nc.close()

    assert asyncio.run(ask(query_subject("stats"), "q.stats")) == "200"
    assert asyncio.run(ask(query_subject("stats"), "stats")) == "400"  # an engine command
    assert asyncio.run(ask(query_subject("list_graphs"), "q.stats")) == "400"


# ---------------------------------------------------------------------------- positions


def test_a_client_reads_its_own_writes_by_waiting_for_the_log_position(
    stack: Stack, colony: Members
) -> None:
    graph = stack.client.submit_workflow(seed_workflow(colony.name), colony.owner)
    written = colony.query.log_position()

    assert colony.query.wait_for_position(written, 10) >= written
    assert colony.query.get_graph(graph.processgraphid).graph.state == ProcessState.WAITING


def test_waiting_for_a_position_not_reached_times_out_with_408(colony: Members) -> None:
    beyond = colony.query.log_position() + 1_000_000

    assert status_of(lambda: colony.query.wait_for_position(beyond, 0.3)) == 408
    colony.query.stats(colony.name)  # later queries do not wait for it


# ---------------------------------------------------------------------------- lifecycle


async def test_run_projector_serves_until_cancelled_then_stops_with_everything_committed(
    stack: Stack, colony: Members, tmp_path: Path
) -> None:
    db = tmp_path / "in-process.sqlite"
    threads_before = {t.name for t in threading.enumerate()}
    graph = await anyio.to_thread.run_sync(run_seed, stack, colony.handle, colony.executor)
    end = await anyio.to_thread.run_sync(colony.query.log_position)
    ready = anyio.Event()
    resumed_from: list[int] = []

    def started(position: int) -> None:
        resumed_from.append(position)
        ready.set()

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(
                lambda: run_projector(
                    Settings(
                        nats_url=stack.nats.url,
                        projector_db=str(db),
                        event_seal_key=stack.engine.seal_key,
                    ),
                    started,
                )
            )
            await ready.wait()
            await anyio.to_thread.run_sync(wait_for_view, db, end)
            tasks.cancel_scope.cancel()

    assert resumed_from == [0]
    assert view_position(db) == end
    assert graph.processgraphid in str(dump_view(db, ["graphs"]))
    ours = {"projector-feed", "colonies-store"}  # the follower's and the store's threads
    assert {t.name for t in threading.enumerate()} & ours <= threads_before


# ---------------------------------------------------------------------------- rebuild


def test_a_follower_keeps_its_batch_open_only_while_events_wait(
    stack: Stack, projector: ProjectorProcess, colony: Members, tmp_path: Path
) -> None:
    """A follower catching up with the whole log (a batch closes only when nothing more
    waits, here) ends with the projector's view, row for row; once caught up, a new
    event is committed at once, not after ``catch_up_interval``."""
    run_seed(stack, colony.handle, colony.executor)
    caught_up(colony.query)
    db = tmp_path / "follower.sqlite"
    settings = Settings(nats_url=stack.nats.url, event_seal_key=stack.engine.seal_key)
    factory = JetStreamFactory(Environment(UPSTREAM, settings.store_env()))
    view = open_view(db)
    recorder = factory.application_recorder()
    commits: list[int] = []
    follower = Follower(
        Projector(view, recorder, factory.mapper(factory.transcoder())),
        recorder,
        batch_interval=0.0,
        catch_up_interval=600.0,
        on_commit=commits.append,
    )
    thread = threading.Thread(target=follower.run)
    thread.start()
    try:
        wait_for_view(db, colony.query.log_position())
        run_seed(stack, colony.handle, colony.executor)  # live events, one at a time
        end = caught_up(colony.query)
        started = time.monotonic()
        wait_for_view(db, end)
        live = time.monotonic() - started
    finally:
        follower.stop()
        thread.join(30)
        view.close()
        factory.close()

    assert not thread.is_alive()
    assert live < 30  # far from the 600 s a batch may stay open while events wait
    assert commits == sorted(set(commits))
    assert commits[-1] == end
    assert dump_view(db) == dump_view(projector.db)


def test_deleting_the_view_and_replaying_the_log_gives_identical_answers(
    stack: Stack, projector: ProjectorProcess, colony: Members
) -> None:
    client = stack.client
    run_seed(stack, colony.handle, colony.executor)
    removed = run_seed(stack, colony.handle, colony.executor)
    client.remove_processgraph(removed.processgraphid, colony.owner)
    client.submit_workflow(seed_workflow(colony.name), colony.owner)
    failing = client.assign(colony.name, 10, colony.executor)
    client.add_log(failing.processid, "about to fail", colony.executor)
    client.fail(failing.processid, ["boom"], colony.executor)
    client.submit_workflow(seed_workflow(colony.name), colony.owner)
    caught_up(colony.query)
    clients = {name: QueryClient(key, servers=[stack.nats.url]) for name, key in COLONIES.items()}
    try:
        before = answers(clients)
        rows_before = dump_view(projector.db)
        projector.stop()
        delete_view(projector.db)
        projector.start()
        assert caught_up(colony.query) == rows_before["tracking"][-1][1]

        assert answers(clients) == before
        assert dump_view(projector.db) == rows_before
    finally:
        for member in clients.values():
            member.close()
    assert len(before[colony.name]["graphs"]) == 3
