"""Shared pytest fixtures: real nats-servers with JetStream, started by the tests themselves.

Nothing needs to run before pytest: the servers come from ``colonies_es.embedded``, on free
ports, with temporary store directories, and are stopped at teardown.

* ``nats_url`` / ``nats_server`` (session): one server shared by the whole run. Use it for
  anything that does not stop or kill the server; give your streams unique names.
* ``stack`` (per module) / ``fresh_stack`` (per test): a nats-server of its own, a real
  engine process and a connected client (``tests/stack.py``); ``stack_with_projector``
  (per module) runs a projector in the engine's process, for queries such as history.
  Share ``stack`` within a module by making a new colony per test
  (``stack.new_colony()``); take ``fresh_stack`` to kill or restart the engine or the
  server.
* ``nats_server_factory`` (per test): ``factory(store_dir=None, port=None, **kwargs)``
  starts and returns a new :class:`~colonies_es.embedded.NatsServer` (extra keyword
  arguments go to its constructor: ``config``, ``http_port``, ...). ``store_dir=None`` means
  a fresh temporary directory. To test a crash, ``server.kill()`` it, then start
  ``factory(store_dir=server.store_dir, port=server.port)`` (or ``server.start()`` again).
  Every server it started is stopped at the end of the test.
* ``nats_cluster`` (per test): a 3-node JetStream cluster of the test's own
  (:class:`~colonies_es.embedded_cluster.NatsCluster`), ready for R3 streams. Give
  components ``nats_cluster.url`` (every node's URL, comma separated) and
  ``replicas=3``; ``nats_cluster.stream_leader(stream)`` is the index of the node leading
  a stream, ``kill(i)`` / ``restart(i)`` crash and bring back node ``i`` (same name,
  ports and store). Stopped at the end of the test.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from colonies_es.embedded import NatsServer
from colonies_es.embedded_cluster import NatsCluster
from tests.stack import Stack, start_stack, stop_stack

# The CLI sizes its tables to COLUMNS when it is set (cli/common.py). Tests that want a
# width say so (COLUMNS=... on the call); the terminal that runs pytest, or a runner that
# exports COLUMNS=80 to its workers, must not decide for the others.
for _variable in ("COLUMNS", "LINES"):
    os.environ.pop(_variable, None)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A started nats-server shared by the test session (do not stop or kill it)."""
    server = NatsServer(tmp_path_factory.mktemp("nats-session")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def nats_url(nats_server: NatsServer) -> str:
    """The client URL of the session's nats-server, e.g. ``nats://127.0.0.1:PORT``."""
    return nats_server.url


@pytest.fixture
def nats_server_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., NatsServer]]:
    """A callable starting new nats-servers, all stopped when the test ends."""
    started: list[NatsServer] = []

    def start_server(
        store_dir: Path | None = None, port: int | None = None, **kwargs: Any
    ) -> NatsServer:
        directory = store_dir if store_dir is not None else tmp_path_factory.mktemp("nats")
        server = NatsServer(directory, port=port, **kwargs)
        started.append(server)
        return server.start()

    yield start_server
    for server in reversed(started):
        server.stop()


@pytest.fixture
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """A started 3-node JetStream cluster of the test's own, free to kill nodes of."""
    cluster = NatsCluster(tmp_path_factory.mktemp("cluster"), 3).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A nats-server, an engine process and a client, shared by one test module."""
    running = start_stack(tmp_path_factory.mktemp("stack"))
    yield running
    stop_stack(running)


@pytest.fixture(scope="module")
def stack_with_projector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack whose engine process runs a projector too (``colonies server``'s
    default): for what needs queries, such as the history of a graph."""
    running = start_stack(tmp_path_factory.mktemp("stack"), projector=True)
    yield running
    stop_stack(running)


@pytest.fixture
def fresh_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack of the test's own, free to kill and restart."""
    running = start_stack(tmp_path_factory.mktemp("stack"))
    yield running
    stop_stack(running)
