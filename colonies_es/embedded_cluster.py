"""Run a JetStream cluster of nats-servers on one machine, as child processes.

`colonies dev --cluster 3` and the tests' ``nats_cluster`` fixture use this to get what
production runs on several machines: three (or more) nats-servers joined by routes into
one cluster, each with its own server name and store directory, so that streams with
three replicas (R3) survive the loss of any one node.

:class:`NatsCluster` starts one :class:`~colonies_es.embedded.NatsServer` per node with the
cluster flags (``--name``, ``--cluster_name``, ``--cluster``, ``--routes``), the nodes'
client and route ports fixed at the first start so that a node killed and started again
rejoins with the same identity. Guarantees, on top of each node's (readiness, one-line
errors, no orphans):

* **Ready means usable.** :meth:`NatsCluster.start` returns once every node is ready
  *and* the JetStream meta group has a leader: a stream with ``num_replicas`` up to the
  cluster's size can be created at once.
* **Nodes come and go.** :meth:`NatsCluster.kill` and :meth:`NatsCluster.restart` act on
  one node; :meth:`NatsCluster.stream_leader` says which node leads a stream (from the
  stream info's ``cluster`` field), so a test can kill exactly that one, and
  :meth:`NatsCluster.make_leader` moves the leadership (to read each node's copy).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import time
from collections.abc import Awaitable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import nats
import nats.errors

from colonies_es.embedded import NatsServer, NatsServerError, free_port

__all__ = ["DEFAULT_CLUSTER_NAME", "NatsCluster", "node_name"]

T = TypeVar("T")

DEFAULT_CLUSTER_NAME = "colonies"
_META_POLL = 0.1  # seconds between two asks whether the JetStream meta group has a leader


def node_name(cluster_name: str, index: int) -> str:
    """The server name of node ``index`` (0-based) of a cluster: ``<cluster>-<index+1>``.

    Server names are a node's identity in JetStream's replication groups: a node must
    keep its name (and its store directory) across restarts.
    """
    return f"{cluster_name}-{index + 1}"


class NatsCluster:
    """``size`` nats-servers with JetStream joined into one cluster on ``host``.

    Node ``i`` keeps its store in ``store_root/node-<i+1>`` and logs to
    ``log_dir/nats-server-<i+1>.log`` (``log_dir`` defaults to ``store_root``). ``ports``
    fixes the client ports (default: free ones); route ports are always picked free at
    the first start and kept. ``config`` is the nats-server file every node reads (it
    must not set ``server_name``, ``cluster`` or ``jetstream.store_dir``: the flags give
    them).

    Use it as a context manager, or :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        store_root: Path,
        size: int = 3,
        *,
        ports: Sequence[int] | None = None,
        config: Path | None = None,
        host: str = "127.0.0.1",
        name: str = DEFAULT_CLUSTER_NAME,
        log_dir: Path | None = None,
        nkey_file: str = "",
    ) -> None:
        """``nkey_file``: the NATS credential the cluster's own checks (readiness,
        stream placement) connect with, when ``config`` turns authorization on."""
        self.nkey_file = nkey_file
        if size < 1:
            raise ValueError(f"a cluster needs at least one node, not {size}")
        if ports is not None and len(ports) != size:
            raise ValueError(f"{len(ports)} ports given for {size} nodes")
        self.name = name
        self.host = host
        route_ports = [free_port(host) for _ in range(size)]
        routes = ",".join(f"nats-route://{host}:{port}" for port in route_ports)
        logs = Path(log_dir) if log_dir is not None else Path(store_root)
        self.nodes: list[NatsServer] = [
            NatsServer(
                Path(store_root) / f"node-{index + 1}",
                port=ports[index] if ports is not None else None,
                config=config,
                host=host,
                log_file=logs / f"nats-server-{index + 1}.log",
                extra_args=(
                    "--name",
                    node_name(name, index),
                    "--cluster_name",
                    name,
                    "--cluster",
                    f"nats://{host}:{route_ports[index]}",
                    "--routes",
                    routes,
                ),
            )
            for index in range(size)
        ]

    # -- addresses --

    @property
    def urls(self) -> list[str]:
        """The client URL of every node, in node order."""
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """Every node's client URL, comma separated (what ``--nats`` and
        ``COLONIES_NATS_URL`` take)."""
        return ",".join(self.urls)

    def node_named(self, server_name: str) -> int:
        """The index of the node whose server name is ``server_name``."""
        for index in range(len(self.nodes)):
            if node_name(self.name, index) == server_name:
                return index
        raise KeyError(f"no node named {server_name!r} in cluster {self.name!r}")

    def __repr__(self) -> str:
        running = sum(node.running for node in self.nodes)
        return f"<NatsCluster {self.name} {running}/{len(self.nodes)} running {self.url}>"

    # -- lifecycle --

    def start(self, timeout: float = 30.0) -> NatsCluster:
        """Start every node, then wait until JetStream has a meta leader; returns
        ``self``. Raises :class:`~colonies_es.embedded.NatsServerError` (the nodes that
        started are stopped again) when a node cannot start or the cluster does not
        form within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        try:
            for node in self.nodes:
                node.start(timeout=max(deadline - time.monotonic(), 1.0))
            self.wait_for_jetstream(max(deadline - time.monotonic(), 1.0))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every node (SIGTERM, then SIGKILL after ``timeout``); safe to repeat."""
        for node in reversed(self.nodes):
            node.stop(timeout)

    def kill(self, index: int) -> None:
        """SIGKILL node ``index``, as a crash would."""
        self.nodes[index].kill()

    def restart(self, index: int, timeout: float = 30.0) -> None:
        """Start node ``index`` again (same name, ports and store) and wait until the
        cluster's JetStream answers through it."""
        deadline = time.monotonic() + timeout
        self.nodes[index].start(timeout=timeout)
        self.wait_for_jetstream(max(deadline - time.monotonic(), 1.0), nodes=[index])

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- JetStream --

    def wait_for_jetstream(self, timeout: float, nodes: Sequence[int] | None = None) -> None:
        """Wait until JetStream answers account requests through each of ``nodes``
        (default: every running node), which it does once the meta group has a leader.
        Raises :class:`NatsServerError` after ``timeout`` seconds."""
        indexes = list(nodes) if nodes is not None else list(range(len(self.nodes)))
        deadline = time.monotonic() + timeout
        for index in indexes:
            url = self.nodes[index].url
            problem: str | None = "no answer"
            while time.monotonic() < deadline:
                problem = _run(
                    _jetstream_problem(url, max(deadline - time.monotonic(), 0.5), self.nkey_file)
                )
                if problem is None:
                    break
                time.sleep(_META_POLL)
            else:
                raise NatsServerError(
                    f"the JetStream cluster {self.name!r} did not form within {timeout:g} s "
                    f"({url}: {problem}; see {self.nodes[index].log_file})"
                )

    def stream_info(
        self, stream: str, index: int | None = None, timeout: float = 10.0
    ) -> dict[str, Any]:
        """The stream's info as node ``index`` (default: the first running one) gives
        it: ``config``, ``state``, and in a cluster ``cluster`` with the ``leader``'s
        server name and the ``replicas``. While the stream elects a leader nobody
        answers: this retries for up to ``timeout`` seconds."""
        node = self._node(index)
        deadline = time.monotonic() + timeout
        problem = ""
        while time.monotonic() < deadline:
            try:
                reply = _run(
                    _request(node.url, f"$JS.API.STREAM.INFO.{stream}", b"", 2.0, self.nkey_file)
                )
            except (nats.errors.Error, OSError, TimeoutError) as error:
                problem = repr(error)
                time.sleep(_META_POLL)
                continue
            info: dict[str, Any] = json.loads(reply)
            if "error" not in info:
                return info
            problem = str(info["error"])
            time.sleep(_META_POLL)
        raise NatsServerError(f"no info of stream {stream} from {node.url}: {problem}")

    def stream_leader(self, stream: str) -> int:
        """The index of the node that leads ``stream`` now (from its info's
        ``cluster.leader``)."""
        leader = self.stream_info(stream).get("cluster", {}).get("leader")
        if not leader:
            raise NatsServerError(f"stream {stream} has no leader at the moment")
        return self.node_named(str(leader))

    def make_leader(self, stream: str, index: int, timeout: float = 15.0) -> None:
        """Move the leadership of ``stream`` to node ``index`` (a leader step-down with
        that node preferred), and return once it leads. Reads through a consumer then
        come from that node's copy of the stream."""
        wanted = node_name(self.name, index)
        request = json.dumps({"placement": {"preferred": wanted}}).encode()
        deadline = time.monotonic() + timeout
        while self.stream_leader(stream) != index:
            if time.monotonic() >= deadline:
                raise NatsServerError(f"node {wanted} did not become leader of {stream}")
            subject = f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}"
            with contextlib.suppress(nats.errors.Error, OSError, TimeoutError):
                _run(_request(self._node(None).url, subject, request, 2.0, self.nkey_file))
            time.sleep(_META_POLL)

    def _node(self, index: int | None) -> NatsServer:
        if index is not None:
            return self.nodes[index]
        for node in self.nodes:
            if node.running:
                return node
        raise NatsServerError(f"no node of cluster {self.name!r} is running")


def _run(coroutine: Awaitable[T]) -> T:
    """Run ``coroutine`` to completion in a fresh event loop of a helper thread (so this
    works whether or not the calling thread already runs a loop)."""

    async def main() -> T:
        return await coroutine

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result()


async def _request(
    url: str,
    subject: str,
    payload: bytes,
    timeout: float,  # noqa: ASYNC109
    nkey_file: str = "",
) -> bytes:
    """One NATS request to the server at ``url``, on a connection of its own (with the
    credential in ``nkey_file``, if any)."""
    credential = {"nkeys_seed": nkey_file} if nkey_file else {}
    nc = await nats.connect(url, connect_timeout=timeout, max_reconnect_attempts=0, **credential)
    try:
        reply = await nc.request(subject, payload, timeout=timeout)
        return bytes(reply.data)
    finally:
        await nc.close()


async def _jetstream_problem(url: str, timeout: float, nkey_file: str = "") -> str | None:  # noqa: ASYNC109
    """None when JetStream answers a stream listing through ``url``, else what went wrong
    (no meta leader yet: 503, no answer, refused connection). In a cluster the listing is
    answered by the meta leader, so an answer also means this node's routes are up."""
    try:
        data = await _request(url, "$JS.API.STREAM.NAMES", b"", min(timeout, 2.0), nkey_file)
    except (nats.errors.Error, OSError, TimeoutError) as error:
        return repr(error)
    answer: dict[str, Any] = json.loads(data)
    refusal = answer.get("error")
    return None if refusal is None else str(refusal.get("description", refusal))
