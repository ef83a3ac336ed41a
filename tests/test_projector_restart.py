"""A projector killed (SIGKILL) while the log grows resumes from its last commit: it
misses no event and applies none twice, so its view equals a fresh rebuild's, row for
row. Small batches (3 events per commit) make kills land between and inside commits.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

from colonies_es.client import ColoniesConnectionError
from colonies_es.client.queries import QueryClient
from tests.eventlog import read_events
from tests.stack import Stack
from tests.test_projector_support import (
    EXECUTOR_TYPE,
    ProjectorProcess,
    dump_view,
    run_seed,
    view_position,
    wait_for_view,
)


def test_a_projector_killed_mid_stream_misses_no_event_and_applies_none_twice(
    stack: Stack, tmp_path: Path
) -> None:
    colony = stack.new_colony()
    executor = stack.new_executor(colony, EXECUTOR_TYPE)
    runs = [run_seed(stack, colony, executor) for _ in range(15)]  # a backlog to catch up on
    seal_key = stack.engine.seal_key
    url = stack.nats.url
    with (
        ProjectorProcess(url, tmp_path / "victim.sqlite", seal_key, tmp_path, 3) as victim,
        ProjectorProcess(url, tmp_path / "fresh.sqlite", seal_key, tmp_path) as fresh,
    ):
        victim.start()
        stopping = threading.Event()

        def load() -> None:  # the log keeps growing while the projector is killed
            while not stopping.is_set() and len(runs) < 100:
                runs.append(run_seed(stack, colony, executor))

        writer = threading.Thread(target=load)
        writer.start()
        try:
            for _ in range(4):
                wait_for_view(victim.db, view_position(victim.db) + 10)
                victim.kill()
                victim.start()
        finally:
            stopping.set()
            writer.join(60)
        with QueryClient(colony.owner_prvkey, servers=[url]) as query:
            end = query.log_position()
        fresh.start()
        wait_for_view(victim.db, end)
        wait_for_view(fresh.db, end)
        victim.stop()
        fresh.stop()

    assert victim.starts == 5
    assert dump_view(victim.db) == dump_view(fresh.db)
    logs = dump_view(victim.db, ["logs"])["logs"]
    assert len([row for row in logs if row[3] == colony.name]) == len(runs)  # one per run


def test_a_projector_rides_out_a_restart_of_the_nats_server(
    fresh_stack: Stack, tmp_path: Path
) -> None:
    stack = fresh_stack
    colony = stack.new_colony()
    executor = stack.new_executor(colony, EXECUTOR_TYPE)
    acknowledged = [run_seed(stack, colony, executor)]
    seal_key = stack.engine.seal_key
    url = stack.nats.url
    with (
        ProjectorProcess(url, tmp_path / "survivor.sqlite", seal_key, tmp_path) as survivor,
        ProjectorProcess(url, tmp_path / "fresh.sqlite", seal_key, tmp_path) as fresh,
        QueryClient(colony.owner_prvkey, servers=[url]) as query,
    ):
        survivor.start()
        wait_for_view(survivor.db, query.log_position())

        stack.nats.kill()
        stack.nats.start()
        deadline = time.monotonic() + 30
        while True:  # until the client has reconnected
            try:
                acknowledged.append(run_seed(stack, colony, executor))
                break
            except ColoniesConnectionError:
                assert time.monotonic() < deadline, "the client did not reconnect"
                time.sleep(0.1)
        acknowledged.append(run_seed(stack, colony, executor))
        end = query.log_position()
        wait_for_view(survivor.db, end)
        fresh.start()
        wait_for_view(fresh.db, end)
        survivor.stop()
        fresh.stop()

    assert survivor.starts == 1
    assert dump_view(survivor.db) == dump_view(fresh.db)
    log = read_events(url)  # the raw log keeps every run acknowledged, the crash's too
    log.assert_versions_contiguous()
    for graph in acknowledged:
        kinds = Counter(e.kind for e in log.for_graph(colony.name, graph.processgraphid))
        assert kinds == {
            "GraphSubmitted": 1,
            "ProcessAssigned": 2,
            "LogAdded": 1,
            "ProcessClosed": 2,
        }
