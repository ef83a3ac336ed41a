"""The query service: ``colonies.q.<op>`` answered from the read model over NATS.

A ``nats.micro`` service (``colonies-queries``, queue group ``colonies-queries``) with one
endpoint per op of :data:`~projections.protocol.QUERIES`. Each request is served in its
own task of the runner's task group, so a slow one (waiting for the view to reach its
``after``) does not hold up the others:

1. the signed request is opened (signature, freshness, op ``q.<op>``) and its body
   decoded, in a worker thread (ECDSA is CPU work);
2. when the body asks for a position the view has not reached, the task waits for it
   (:class:`PositionWatch`, woken by the projector's commits), up to ``wait`` seconds;
3. the answer is read in a worker thread from one SQLite read transaction
   (:class:`~projections.view.Snapshot`, which checks membership);
4. the reply is the answer's JSON, or the micro error headers with the status.

Queries change nothing, so a replayed query within the freshness window is harmless:
there is no replay guard.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable

import anyio
import msgspec
import nats.errors
import nats.micro
from anyio.abc import TaskGroup
from nats.aio.client import Client as NATS
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, GroupConfig, Service, ServiceConfig

from colonies_es import crypto
from colonies_es.models import encode
from colonies_es.projections.graph_events import GraphEventReader
from colonies_es.projections.protocol import (
    MAX_WAIT,
    QUERIES,
    QUERY_PREFIX,
    QUERY_QUEUE_GROUP,
    QUERY_SERVICE,
    GetGraph,
    GetGraphEvents,
    GetLogs,
    GetProcess,
    GetStats,
    ListGraphs,
    ListProcesses,
    Position,
    Query,
    QueryRefused,
    signed_op,
)
from colonies_es.projections.view import ReadModel
from colonies_es.protocol import FORWARDED_LIST, FORWARDED_LIST_SUBJECT, ForwardedList
from colonies_es.store.codec import Sealer

__all__ = ["PositionWatch", "QueryService"]

log = logging.getLogger("colonies.queries")


class _Colony(msgspec.Struct):
    colonyname: str


class _GraphColony(msgspec.Struct):
    """The part of a ``get_graph`` answer that names the graph's colony."""

    graph: _Colony


LOG_STREAM = "COLONIES"
"""The event log's stream (the store's default)."""
LOG_EVENTS = "colonies.ev.>"
"""The subjects of its events."""


class PositionWatch:
    """The position the view has committed, and waiting for it to reach a sequence.

    Used from the event loop only; the projector's thread calls :meth:`advance` through
    ``anyio.from_thread.run_sync``.
    """

    def __init__(self, position: int) -> None:
        self.position = position
        self._changed = anyio.Event()

    def advance(self, position: int) -> None:
        """The view has committed up to ``position``: wake whoever waits for it."""
        if position > self.position:
            self.position = position
            self._changed.set()
            self._changed = anyio.Event()

    async def wait_for(self, target: int) -> None:
        """Returns once the position is at least ``target``."""
        while self.position < target:
            await self._changed.wait()


class QueryService:
    """Answers signed queries from ``view`` on ``nc`` (see the module docstring)."""

    def __init__(
        self,
        nc: NATS,
        view: ReadModel,
        watch: PositionWatch,
        max_skew: float = crypto.DEFAULT_MAX_SKEW,
        events: GraphEventReader | None = None,
        sealer: Sealer | None = None,
    ) -> None:
        """``events`` reads the graphs' events for ``graph_events`` (by default on
        ``nc``, without seal key or cipher). ``sealer``: the log's seal key, which must
        have sealed a listing the engine forwards (``forwarded_list``; any is taken
        without one, as events are)."""
        self.sealer = sealer
        self.nc = nc
        self.events = events or GraphEventReader(nc)
        self.view = view
        self.watch = watch
        self.max_skew = max_skew
        self._limiter = anyio.CapacityLimiter(8)

    async def start(self, tasks: TaskGroup) -> Service:
        """Adds the micro service; its requests are served by tasks of ``tasks``. The
        caller stops the returned service (before ``tasks`` ends)."""
        service = await nats.micro.add_service(
            self.nc,
            ServiceConfig(
                name=QUERY_SERVICE,
                version="0.1.0",
                description="colonies-es read model: graphs, processes, stats, logs",
                queue_group=QUERY_QUEUE_GROUP,
            ),
        )
        group = service.add_group(GroupConfig(name=QUERY_PREFIX, queue_group=QUERY_QUEUE_GROUP))
        for op in [*QUERIES, FORWARDED_LIST]:
            await group.add_endpoint(EndpointConfig(name=op, handler=self._handler(tasks, op)))
        return service

    def _handler(self, tasks: TaskGroup, op: str) -> Callable[[Request], Awaitable[None]]:
        async def receive(request: Request) -> None:
            tasks.start_soon(self._serve, op, request)

        return receive

    async def _serve(self, op: str, request: Request) -> None:
        try:
            reply = await self._reply(op, request.data)
            await request.respond(reply)
        except QueryRefused as refusal:
            await self._refuse(op, request, refusal.status, refusal.message)
        except Exception:
            log.exception("query %s failed", op)
            await self._refuse(op, request, 500, f"internal error while answering {op}")

    async def _refuse(self, op: str, request: Request, status: int, message: str) -> None:
        try:
            await request.respond_error(str(status), message)
        except nats.errors.Error as error:  # the caller is gone
            log.warning("could not answer %s: %r", op, error)

    async def _reply(self, op: str, data: bytes) -> bytes:
        if op == FORWARDED_LIST:
            caller, body = self._open_forwarded(data)
        else:
            caller, body = await anyio.to_thread.run_sync(
                self._open, op, data, time.time(), limiter=self._limiter
            )
        if body.after > self.watch.position:
            wait = min(body.wait, MAX_WAIT) if body.wait > 0 else 0.0  # NaN: no wait
            with anyio.move_on_after(wait):
                await self.watch.wait_for(body.after)
            if body.after > self.watch.position:
                raise QueryRefused(
                    408,
                    f"the read model has not reached position {body.after} within {wait:g} s "
                    f"(it is at {self.watch.position})",
                )
        if op == "position":
            return encode(Position(position=self.watch.position))
        if op == "log_position":
            return encode(Position(position=await self._log_position()))
        if isinstance(body, GetGraphEvents):
            return await self._graph_events(caller, body)
        reply = await anyio.to_thread.run_sync(self._answer, caller, body, limiter=self._limiter)
        if len(reply) > self.nc.max_payload:
            raise QueryRefused(
                413,
                f"the answer is {len(reply)} bytes, over the NATS max_payload of "
                f"{self.nc.max_payload}: ask for fewer",
            )
        return reply

    async def _graph_events(self, caller: str, body: GetGraphEvents) -> bytes:
        """The graph's events, after the membership check of ``get_graph``."""
        try:
            colonyname = await anyio.to_thread.run_sync(
                self._colony_of_graph, body.processgraphid, caller, limiter=self._limiter
            )
        except QueryRefused as refused:
            if refused.status not in (403, 404):
                raise
            # The graph, or the caller's membership, may be newer than the view: catch
            # up with the log as it is now before refusing (read your own writes).
            head = await self._log_position()
            wait = min(body.wait, MAX_WAIT) if body.wait > 0 else 0.0
            with anyio.move_on_after(wait):
                await self.watch.wait_for(head)
            colonyname = await anyio.to_thread.run_sync(
                self._colony_of_graph, body.processgraphid, caller, limiter=self._limiter
            )
        try:
            events = await self.events.read(colonyname, body.processgraphid, body.start)
        except Exception as error:
            log.warning("cannot read the events of graph %s: %r", body.processgraphid, error)
            raise QueryRefused(503, f"cannot read the log: {error}") from None
        return encode(events)

    def _colony_of_graph(self, processgraphid: str, caller: str) -> str:
        """The graph's colony, once ``caller`` is known to be one of its members (403
        otherwise, 404 for a graph that does not exist or was removed)."""
        with self.view.snapshot() as view:
            graph = msgspec.json.decode(view.get_graph(processgraphid, caller), type=_GraphColony)
        return graph.graph.colonyname

    async def _log_position(self) -> int:
        """The stream sequence of the last event in the log (0 when there is none)."""
        request = json.dumps({"last_by_subj": LOG_EVENTS}).encode()
        try:
            reply = await self.nc.request(f"$JS.API.DIRECT.GET.{LOG_STREAM}", request, timeout=5)
        except nats.errors.Error as error:
            raise QueryRefused(503, f"cannot read the log's position: {error!r}") from error
        headers = reply.headers or {}
        if headers.get("Status") == "404":
            return 0
        try:
            return int(headers["Nats-Sequence"])
        except (KeyError, ValueError):
            raise QueryRefused(503, f"unexpected reply to a direct get: {headers}") from None

    def _open(self, op: str, data: bytes, now: float) -> tuple[str, Query]:
        """The caller's id and the decoded body of a signed query for ``op``."""
        try:
            command = crypto.open_command(data, now, self.max_skew)
            if command.op != signed_op(op):
                raise QueryRefused(400, f"query signed for {command.op!r} sent to {op!r}")
            return command.caller_id, command.decode_body(QUERIES[op])
        except crypto.CommandRejected as rejected:
            raise QueryRefused(rejected.status, rejected.message) from None

    def _open_forwarded(self, data: bytes) -> tuple[str, Query]:
        """The caller and the listing of a ``forwarded_list`` from the engine (sealed
        with the log's seal key, when this projector has one)."""
        if self.sealer is not None:
            if not self.sealer.is_sealed(FORWARDED_LIST_SUBJECT, data):
                raise QueryRefused(403, "a forwarded listing not sealed by the engine")
            data = data[: -Sealer.SIZE]
        try:
            forwarded = msgspec.json.decode(data, type=ForwardedList)
        except msgspec.ValidationError as error:
            raise QueryRefused(400, f"forwarded listing: {error}") from None
        kind = {"graphs": ListGraphs, "processes": ListProcesses}.get(forwarded.what)
        if kind is not None:
            return forwarded.caller, kind(
                colonyname=forwarded.colonyname,
                state=forwarded.state,
                count=forwarded.count,
                after=forwarded.after,
                wait=forwarded.wait,
            )
        raise QueryRefused(400, f"forwarded listing of {forwarded.what!r}: graphs or processes")

    def _answer(self, caller: str, body: Query) -> bytes:
        """The answer to ``body`` for ``caller``, from one snapshot of the view."""
        with self.view.snapshot() as view:
            match body:
                case GetGraph():
                    return view.get_graph(body.processgraphid, caller)
                case ListGraphs():
                    return view.list_graphs(body.colonyname, body.state, body.count, caller)
                case ListProcesses():
                    return view.list_processes(body.colonyname, body.state, body.count, caller)
                case GetProcess():
                    return view.get_process(body.processid, caller)
                case GetStats():
                    return view.stats(body.colonyname, caller)
                case GetLogs():
                    return view.logs(body.processid, body.count, body.since, caller)
        raise QueryRefused(400, f"no such query: {type(body).__name__}")
