"""QueryClient: the read model's queries, for the CLI and scripts (synchronous).

One method per query of :mod:`colonies_es.projections.protocol`; each signs its request with the
client's key, sends it to ``colonies.q.<op>`` and decodes the reply into the models of
:mod:`colonies_es.models`. Failures are the client package's: :class:`ColoniesError`
(``.status``: 400, 403 not a member, 404 not found, 408 the view did not reach the
position asked for in time) and :class:`ColoniesConnectionError` (NATS unreachable, no
projector answering, no reply in time).

Reading your own writes: a query may reach a projector that has not yet applied the
event a command just wrote. :meth:`QueryClient.wait_for_position` waits until the view
has applied the log up to a stream sequence; from then on every query of this client
asks for a view at least that far (``after``), whichever projector answers.
:meth:`QueryClient.log_position` is the sequence of the last event in the log, a safe
``seq`` to wait for after a command returned.

It runs its own event loop in a background thread (the store's
:class:`~colonies_es.loop.LoopThread`) over the client package's lazily opened,
self-reconnecting :class:`~colonies_es.client.connection.Connection`.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Self, TypeVar

from colonies_es.client.async_client import server_urls
from colonies_es.client.connection import Connection
from colonies_es.client.read_side import REPLY_MARGIN, ReadSide
from colonies_es.loop import LoopThread
from colonies_es.models import (
    Log,
    Process,
    ProcessGraph,
    Statistics,
)
from colonies_es.projections.protocol import (
    DEFAULT_COUNT,
    GetGraph,
    GetLogs,
    GetPosition,
    GetProcess,
    GetStats,
    GraphView,
    ListGraphs,
    ListProcesses,
    Position,
    Query,
)
from colonies_es.settings import NatsAccess

__all__ = ["QueryClient"]

T = TypeVar("T")


class QueryClient:
    """Queries of the read model, signed with ``prvkey`` (see the module docstring).

    Safe to share between threads. Close it (or use ``with``) to stop its loop thread.
    """

    def __init__(
        self,
        prvkey: str,
        host: str = "localhost",
        port: int = 4222,
        tls: bool = False,
        *,
        servers: Sequence[str] | None = None,
        timeout: float = 10.0,
        nkey_file: str = "",
        tls_ca_file: str = "",
    ) -> None:
        """Query through NATS at ``host:port`` (or the URLs in ``servers``) as the
        identity of ``prvkey``; ``timeout`` bounds connecting and each reply (seconds).
        ``nkey_file`` and ``tls_ca_file``: the caller's NATS credential and the CA of the
        server's certificate, as for :class:`~colonies_es.client.Colonies`."""
        self.prvkey = prvkey
        self.timeout = timeout
        self._floor = 0
        urls = server_urls(host, port, tls, servers)
        access = NatsAccess(tuple(urls), nkey_file, tls_ca_file)
        self._connection = Connection(urls, timeout, access)
        self._read_side = ReadSide(self._connection)
        self._loop = LoopThread("colonies-queries")

    # ------------------------------------------------------------------ queries

    def get_graph(self, processgraphid: str) -> GraphView:
        """The process graph and its processes (in the graph's order)."""
        return self._query("get_graph", GetGraph(processgraphid=processgraphid), GraphView)

    def list_graphs(
        self, colonyname: str, count: int = DEFAULT_COUNT, state: int | None = None
    ) -> list[ProcessGraph]:
        """The colony's process graphs (only those in ``state``, if given), newest first,
        at most ``count``."""
        body = ListGraphs(colonyname=colonyname, count=count, state=state)
        return self._query("list_graphs", body, list[ProcessGraph])

    def list_processes(
        self, colonyname: str, count: int = DEFAULT_COUNT, state: int | None = None
    ) -> list[Process]:
        """The colony's processes (only those in ``state``, if given), newest first, at
        most ``count``."""
        body = ListProcesses(colonyname=colonyname, count=count, state=state)
        return self._query("list_processes", body, list[Process])

    def get_process(self, processid: str) -> Process:
        """One process."""
        return self._query("get_process", GetProcess(processid=processid), Process)

    def stats(self, colonyname: str) -> Statistics:
        """The colony's executors, and its processes and graphs per state."""
        return self._query("stats", GetStats(colonyname=colonyname), Statistics)

    def logs(self, processid: str, count: int = DEFAULT_COUNT, since: int = 0) -> list[Log]:
        """The process's log messages after ``since`` (unix ns), oldest first: the last
        ``count`` of them (all when ``count`` <= 0)."""
        body = GetLogs(processid=processid, count=count, since=since)
        return self._query("logs", body, list[Log])

    # ------------------------------------------------------------------ positions

    def position(self) -> int:
        """The position of the view of the projector that answers (the stream sequence
        of the last event it applied)."""
        return self._query("position", GetPosition(), Position).position

    def wait_for_position(self, seq: int, timeout: float = 10.0) -> int:
        """Waits until a projector's view has applied the log up to ``seq`` and returns
        its position; later queries of this client answer from views at least that far.

        Raises ColoniesError(408) when the view does not get there within ``timeout``
        seconds.
        """
        body = GetPosition(after=seq, wait=timeout)
        position = self._query("position", body, Position, timeout + REPLY_MARGIN).position
        self._floor = max(self._floor, seq)
        return position

    def log_position(self) -> int:
        """The stream sequence of the last event in the log (0 when there is none), as a
        projector reads it from the stream."""
        position: int = self._loop.run(self._read_side.log_position(self.prvkey))
        return position

    # ------------------------------------------------------------------ plumbing

    def _query(self, op: str, body: Query, result: type[T], timeout: float | None = None) -> T:
        """The answer to ``op`` from a view at least at this client's floor."""
        asked = self._read_side.query(
            op, body, self.prvkey, result, after=self._floor, timeout=timeout
        )
        return self._loop.run(asked)

    def close(self) -> None:
        """Closes the connection and stops the loop thread."""
        try:
            self._loop.run(self._connection.close(), self.timeout)
        finally:
            self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
