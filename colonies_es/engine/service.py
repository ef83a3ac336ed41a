"""The engine process (``colonies server``): NATS in, commands to the application, work out.

One asyncio task owns everything here (structured with an anyio task group):

- a ``nats.micro`` service answers every op of :data:`colonies_es.protocol.OPS` on
  ``colonies.api.<op>``, and ColonyOS envelopes (:mod:`colonies_es.colonyos`) on
  ``colonies.api.colonyos`` (queue group ``colonies-engine``), and the same ops for this
  replica alone on ``colonies.api.replica.<replica>.<op>`` (replica affinity, protocol.py:
  a client's next command goes to the replica that holds what it acts on, so replicas
  neither wait for each other's writes nor race for one graph; every reply and ticket
  names its replica). Each request is handled in its own asyncio task on this loop
  (a plain task: an anyio child task cost 3 to 6% of the engine's CPU per request),
  kept in a set and cancelled when the engine stops: the decision is quick CPU work
  and the write is awaited on the engine's own connection (no hop to another thread),
  so a command waiting for the log does not hold up the others. The service's ``$SRV.STATS`` show
  each op's processing time and errors, recorded when the reply is sent
  (:mod:`.op_stats`).
- a command whose decision woke claims held here lets them decide first (they run up to
  their append) as soon as its change is installed, before it builds its reply, when
  the engine has other requests in hand; when it has none, the command replies first
  (:meth:`.aggregates.Aggregates.work_first`). Requests held
  for a process the command ended (``wait_process``) answer before it goes on.
  The service counts the requests in hand for this (``_start``, ``_served``).
- the requests, the appends' acknowledgements and the followed log come from nats-py as
  it reads them, without a task step per message (:mod:`colonies_es.nats_hot_path`).
- after a command, its effects go out: a work ticket per process that became ready
  (none for one a claim held here was woken to take: :mod:`.held`), an end
  notification per process that ended, a work consumer per new executor type.
- the follower applies every event any replica appends (:mod:`.follower`), and a sweep
  evicts ended graphs from memory every second (:mod:`.timers`; they stay in the log).
- a reconciler re-issues work tickets every second where ready processes have fewer
  tickets waiting than processes (a lost message, a restart), and the timer loop fires
  the deadlines the log implies (execution and waiting time limits).

On start the application takes its state from the newest checkpoint (or the whole log)
and the follower applies the log after it; only then does the engine serve. A checkpoint
is written every so many events or seconds and when the engine stops
(:mod:`.checkpoint`). The work stream, which is derived data, is created if missing and
topped up from the state. It is never purged: other replicas may be serving it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import anyio
import msgspec
import nats
import nats.errors
import nats.micro
from eventsourcing.persistence import OperationalError
from nats.aio.client import Client as NATS
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, GroupConfig, Service, ServiceConfig

from colonies_es import nats_hot_path
from colonies_es.client.work import work_consumer_config
from colonies_es.colonyos import ENGINE_OP as COLONYOS_OP
from colonies_es.engine.app import ColoniesApp, Effects
from colonies_es.engine.checkpoint import CHECKPOINT_EVENTS, CHECKPOINT_SECONDS
from colonies_es.engine.held import held_reply, woken_claims
from colonies_es.engine.metrics import EngineMetrics
from colonies_es.engine.op_stats import OpStats
from colonies_es.engine.ready import Key
from colonies_es.nats_hot_path import deliver_inline, write_now
from colonies_es.protocol import (
    AFTER_HEADER,
    API_PREFIX,
    ENGINE_QUEUE_GROUP,
    OPS,
    REPLICA_HEADER,
    REPLICA_PREFIX,
    SEQUENCE_HEADER,
    WORK_PREFIX,
    WORK_STREAM,
    WorkTicket,
    ended_subject,
    work_consumer,
    work_subject,
)
from colonies_es.settings import NatsAccess
from colonies_es.store.jetstream import unanswered

log = logging.getLogger("colonies.engine")

FINAL_CHECKPOINT_WAIT = 30.0
"""Seconds a stopping engine gives its last checkpoint (the next start reads the log
after the newest checkpoint anyway)."""

SWEEP_INTERVAL = 1.0
"""Seconds between evictions of ended graphs from memory (state.py)."""

RECONCILE_INTERVAL = 1.0
"""Seconds between checks that every ready process has a work ticket waiting."""

TICKET_GRACE = 1.0
"""Seconds a process has been ready before the reconciler counts it: the replica whose
decision made it ready publishes its ticket right after answering, and a reconciler (of
any replica) counting it meanwhile would publish a second one, a claim for nothing (or,
from another replica, a claim that races the owner's)."""

CONNECT_TIMEOUT = 5.0
"""Seconds the engine tries to reach NATS at start before giving up."""

_T = TypeVar("_T")

START_PATIENCE = 60.0
"""Seconds start-up keeps trying while JetStream's API does not answer (a cluster electing
its leaders after a node's loss answers nothing for a few seconds): reading the log's
stream to build the application, then setting up the work stream; then it fails."""


_ticket_encoder = msgspec.json.Encoder()
_REPLY_HEADROOM = 1024  # bytes kept for the reply's headers


async def _log_nats_error(error: Exception) -> None:
    """nats-py reports connection trouble here (one line, instead of a traceback)."""
    log.warning("NATS: %r", error)


MAX_MESSAGE = 400
"""Characters of a refusal's message: it may quote what the caller sent (a name of 100 KB
would otherwise travel back in a header)."""


def _brief(message: str) -> str:
    """``message`` on one line, cut to :data:`MAX_MESSAGE` characters."""
    line = " ".join(message.split())
    return line if len(line) <= MAX_MESSAGE else line[: MAX_MESSAGE - 1] + "…"


class Engine:
    """Runs the command service and the work dispatch until cancelled."""

    metrics: EngineMetrics | None = None
    """Set before :meth:`run` to count commands and sample gauges (colonies_es.engine.metrics)."""

    def __init__(
        self,
        nats_url: str,
        app_factory: Callable[[], ColoniesApp],
        access: NatsAccess | None = None,
        work_replicas: int = 1,
        checkpoint_events: int = CHECKPOINT_EVENTS,
        checkpoint_seconds: float = CHECKPOINT_SECONDS,
    ) -> None:
        """Serve through NATS at ``nats_url``; ``access`` (its servers, credential and
        TLS CA) wins over ``nats_url`` when given. ``work_replicas``: copies of the work
        stream (the settings' ``stream_replicas``, as for the log). A checkpoint of the
        state is stored every ``checkpoint_events`` events or ``checkpoint_seconds``
        seconds and when the engine stops (:mod:`.checkpoint`; 0 events: never)."""
        self.work_replicas = work_replicas
        self.checkpoint_events = checkpoint_events
        self.checkpoint_seconds = checkpoint_seconds
        self.access = access or NatsAccess.from_store_env({"NATS_URL": nats_url})
        self.nats_url = self.access.url
        self._app_factory = app_factory
        self.replica = secrets.token_hex(6)
        """This engine process's name among the replicas (a new one at each start):
        its own subjects and the ``Colonies-Replica`` header of its replies."""
        self.app: ColoniesApp | None = None
        self.nc: NATS | None = None
        self._consumers: set[tuple[str, str]] = set()
        self._requests: set[asyncio.Task[None]] = set()
        """The tasks of the requests being handled (see ``_handler``)."""
        self.op_stats = OpStats()
        """Processing time and errors per op, shown by ``$SRV.STATS`` (:mod:`.op_stats`)."""

    async def run(self, started: Callable[[], Any] | None = None) -> None:
        """Serves until the calling task is cancelled; ``started()`` once ready."""
        self.nc = await self._connect()
        try:
            self.app = await _patiently(lambda: anyio.to_thread.run_sync(self._app_factory))
            self.app.attach(self.nc)
            await self.app.catch_up_with_log()  # what follows the start-up's checkpoint
            checkpoints = self.app.checkpoint_writer(
                self.nc, self.checkpoint_events, self.checkpoint_seconds
            )
            try:
                await _patiently(self._reset_work)
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(self.app.follow)
                    if self.checkpoint_events > 0:
                        tasks.start_soon(checkpoints.run_forever)
                    service = await self._start_service()
                    tasks.start_soon(self._reconcile_forever)
                    tasks.start_soon(self._timers_forever)
                    if self.metrics is not None:
                        tasks.start_soon(self.metrics.sample_forever, self)
                    tasks.start_soon(self._sweep_forever)
                    await self.nc.flush()  # the endpoints are subscribed before "ready"
                    log.info("engine ready on %s (replica %s)", self.nats_url, self.replica)
                    if started is not None:
                        started()
                    try:
                        await anyio.sleep_forever()
                    finally:
                        with anyio.CancelScope(shield=True):
                            await service.stop()
                            await self._cancel_requests()
                            if self.checkpoint_events > 0 and not self.nc.is_connected:
                                log.warning(
                                    "NATS unreachable: stopping without a final checkpoint "
                                    "(the next start follows the log from the newest one)"
                                )
                            elif self.checkpoint_events > 0:
                                with anyio.move_on_after(FINAL_CHECKPOINT_WAIT):
                                    await checkpoints.write_final()
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self.app.close)
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                if self.nc.is_connected:
                    await self.nc.drain()
                else:  # nothing to drain into: waiting would only wait for a timeout
                    await self.nc.close()

    async def _connect(self) -> NATS:
        """The engine's connection (reconnecting forever once made); a NATS server that
        cannot be reached at start is one clear error within ``CONNECT_TIMEOUT``."""
        try:
            with anyio.fail_after(CONNECT_TIMEOUT):
                return await nats.connect(
                    **self.access.connect_options(),
                    name="colonies-es engine",
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    error_cb=_log_nats_error,
                )
        except (TimeoutError, OSError, nats.errors.Error) as error:
            raise ConnectionError(f"cannot connect to NATS at {self.nats_url}") from error

    # ----------------------------------------------------------------- commands

    async def _start_service(self) -> Service:
        assert self.nc is not None
        service = await nats.micro.add_service(
            self.nc,
            ServiceConfig(
                name="colonies",
                version="0.1.0",
                description="colonies-es engine: signed workflow commands",
                queue_group=ENGINE_QUEUE_GROUP,
                stats_handler=self.op_stats.fill,
                metadata={"replica": self.replica},  # in $SRV.INFO and $SRV.STATS
            ),
        )
        group = service.add_group(GroupConfig(name=API_PREFIX, queue_group=ENGINE_QUEUE_GROUP))
        own = service.add_group(GroupConfig(name=f"{REPLICA_PREFIX}.{self.replica}"))
        for op in (*OPS, COLONYOS_OP):
            await group.add_endpoint(EndpointConfig(name=op, handler=self._handler(op, op)))
            self._take_inline(service, op, op)
            here = f"{op}-here"  # its own endpoint name: $SRV.STATS tell the two apart
            await own.add_endpoint(
                EndpointConfig(name=here, subject=op, handler=self._handler(op, here))
            )
            self._take_inline(service, op, here)
        return service

    def _handler(self, op: str, endpoint: str) -> Callable[[Request], Awaitable[None]]:
        """The endpoint's handler where nats-py delivers its requests (see
        :meth:`_take_inline`): it returns at once, so that the endpoint takes the next."""

        async def receive(request: Request) -> None:
            self._start(op, request, endpoint)

        return receive

    def _take_inline(self, service: Service, op: str, endpoint: str) -> None:
        """Each request of the endpoint just added starts its task as nats-py reads it
        (:mod:`colonies_es.nats_hot_path`): one step of the event loop and a queue
        less per command than through the endpoint's own task."""
        added = service._endpoints[-1]
        subscription = added._subscription
        if subscription is not None:
            deliver_inline(subscription, lambda msg: self._start(op, Request(msg), endpoint))

    def _start(self, op: str, request: Request, endpoint: str) -> None:
        """Starts the task that serves one request; kept until done, cancelled when the
        engine stops."""
        self.op_stats.received(endpoint)
        if self.app is not None:
            self.app.aggregates.requests_in_hand += 1
        task = asyncio.get_running_loop().create_task(self._serve(op, request, endpoint))
        self._requests.add(task)
        task.add_done_callback(self._served)

    def _served(self, task: asyncio.Task[None]) -> None:
        """A request's task ended: forget it; log what it raised (``_serve`` answers
        every expected failure itself, so this is a bug, not a refusal)."""
        self._requests.discard(task)
        if self.app is not None:
            self.app.aggregates.requests_in_hand -= 1
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("handling a request failed", exc_info=error)

    async def _cancel_requests(self) -> None:
        """Cancels the requests still being handled and waits until they ended."""
        requests = list(self._requests)
        for task in requests:
            task.cancel()
        await asyncio.gather(*requests, return_exceptions=True)

    async def _serve(self, op: str, request: Request, endpoint: str) -> None:
        assert self.app is not None
        assert self.nc is not None
        arrived = time.perf_counter_ns()
        woken: list[Key] = []  # claims this command's decision woke: no ticket for those
        woken_claims.set(woken)

        async def publish(effects: Effects, sequence: int) -> None:
            """A close's effects, before the claim it carries is decided (maybe held)."""
            await self._apply(effects, sequence, woken)
            woken.clear()

        outcome = await self.app.handle(op, request.data, time.time(), _after(request), publish)
        if self.metrics is not None:
            self.metrics.command(op, outcome.status, (time.perf_counter_ns() - arrived) / 1e9)
        headers = {SEQUENCE_HEADER: str(outcome.sequence), REPLICA_HEADER: self.replica}
        status, message = outcome.status, _brief(outcome.message)
        if status == 200 and len(outcome.body) > self.nc.max_payload - _REPLY_HEADROOM:
            status, message = (
                413,
                f"the answer ({len(outcome.body)} bytes) is over the NATS message limit "
                f"({self.nc.max_payload}): ask for fewer (count)",
            )
        replied = True
        try:
            if status == 200:
                reply = _reply_subject(request)
                if reply is None:  # a nats.micro without the message kept: its own way
                    await request.respond(outcome.body, headers=headers)
                else:
                    await nats_hot_path.publish(self.nc, reply, outcome.body, "", headers)
                if held_reply.get():  # someone waited for this: not after the rest
                    write_now(self.nc)
            else:
                await request.respond_error(str(status), message, headers=headers)
        except nats.errors.Error as error:  # the caller is gone; the decision stands
            log.warning("could not answer %s: %r", op, error)
            replied, message = False, f"could not answer: {error!r}"
        self.op_stats.record(endpoint, status, time.perf_counter_ns() - arrived, message, replied)
        await self._apply(outcome.effects, outcome.sequence, woken)

    async def _apply(self, effects: Effects, sequence: int, woken: Sequence[Key] = ()) -> None:
        """Publishes what a decision implies: tickets (carrying ``sequence``, the event
        that made the work ready), end notifications, consumers. ``woken``: the key of
        each claim held here that the decision woke (held.py): that claim takes one of
        the processes made ready, so one ticket fewer of that key is published."""
        assert self.nc is not None
        assert self.app is not None
        spared = Counter(woken)
        try:
            for key in effects.new_types:
                await self._ensure_consumer(key)
            for colonyname, executortype in effects.ready:
                await self._ensure_consumer((colonyname, executortype))
                if spared[(colonyname, executortype)] > 0:
                    spared[(colonyname, executortype)] -= 1
                    self.app.counters.tickets_spared += 1
                    continue
                await self._publish_ticket(colonyname, executortype, sequence)
            for colonyname, processid in effects.ended:
                await nats_hot_path.publish(
                    self.nc, ended_subject(colonyname, processid), processid.encode()
                )
        except nats.errors.Error as error:
            # Tickets are derived data: the reconciler re-issues what was not published.
            log.warning("could not publish effects: %r", error)

    # ----------------------------------------------------------------- work

    async def _reset_work(self) -> None:
        """Creates the (derived) work stream if it is missing, and issues a ticket per
        ready process that has none waiting. Never purges: other replicas may be using
        it, and a ticket too many only costs a claim that finds nothing."""
        assert self.nc is not None
        assert self.app is not None
        js = self.nc.jetstream()
        config = StreamConfig(
            name=WORK_STREAM,
            subjects=[f"{WORK_PREFIX}.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.MEMORY,  # derived data: rebuilt from state if lost
            num_replicas=self.work_replicas,
        )
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            await js.update_stream(config)
        for key in self.app.executor_types():
            await self._ensure_consumer(key)
        await self._top_up_tickets()

    async def _ensure_consumer(self, key: tuple[str, str]) -> None:
        if key in self._consumers:
            return
        assert self.nc is not None
        await self.nc.jetstream().add_consumer(WORK_STREAM, work_consumer_config(*key))
        self._consumers.add(key)

    async def _publish_ticket(self, colonyname: str, executortype: str, sequence: int) -> None:
        """Publishes a ticket without waiting for JetStream's ack: the stream takes it as
        any message on its subjects; one lost on the way is re-issued by the reconciler.
        ``sequence`` is a log position at which the work is known (the claim sends it),
        and this replica, which knows it, is named (the claim goes to it)."""
        assert self.nc is not None
        ticket = WorkTicket(colonyname=colonyname, executortype=executortype)
        await nats_hot_path.publish(
            self.nc,
            work_subject(colonyname, executortype),
            _ticket_encoder.encode(ticket),
            "",
            {SEQUENCE_HEADER: str(sequence), REPLICA_HEADER: self.replica},
        )

    async def _reconcile_forever(self) -> None:
        while True:
            await anyio.sleep(RECONCILE_INTERVAL)
            try:
                await self._reconcile()
            except (nats.errors.Error, OSError) as error:
                log.warning("ticket reconciliation failed: %r", error)

    async def _reconcile(self) -> None:
        """Tops up the work tickets (:meth:`_top_up_tickets`).

        If the work stream or a consumer is gone (a nats-server restarted without it),
        the work is set up again from the engine's state.
        """
        assert self.nc is not None
        assert self.app is not None
        js = self.nc.jetstream()
        try:
            await js.stream_info(WORK_STREAM)
        except nats.js.errors.NotFoundError:
            log.warning("the work stream is gone: setting it up again from the engine's state")
            self._consumers.clear()
            await self._reset_work()
            return
        await self._top_up_tickets()

    async def _top_up_tickets(self) -> None:
        """Issues tickets where fewer wait (unclaimed or unacked) than processes ready
        for more than :data:`TICKET_GRACE` seconds, and removes the surplus where more
        wait than processes are ready: executors claim without tickets (protocol.py,
        "Work"), so the tickets of work they took stay behind. (The surplus is counted
        against every ready process, not only those past the grace: the tickets of work
        made ready a moment ago were published with it, and removing them only to issue
        them again once the grace passed cost a third of a ticket per process more.)"""
        assert self.nc is not None
        assert self.app is not None
        js = self.nc.jetstream()
        sequence = self.app.state.reached
        ready_before = time.time() - TICKET_GRACE
        counts = self.app.ready.counts(ready_before)
        everyone = self.app.ready.counts()
        for colonyname, executortype in self._consumers | set(counts):
            old = counts.get((colonyname, executortype), 0)
            ready = everyone.get((colonyname, executortype), 0)
            await self._ensure_consumer((colonyname, executortype))
            try:
                info = await js.consumer_info(WORK_STREAM, work_consumer(colonyname, executortype))
            except nats.js.errors.NotFoundError:
                self._consumers.discard((colonyname, executortype))
                continue
            waiting = (info.num_pending or 0) + (info.num_ack_pending or 0)
            if waiting > ready:  # keep the newest ``ready`` (keep=None: purge them all)
                subject = work_subject(colonyname, executortype)
                await js.purge_stream(WORK_STREAM, subject=subject, keep=ready or None)
            for _ in range(old - waiting):
                await self._publish_ticket(colonyname, executortype, sequence)

    # ----------------------------------------------------------------- timers

    async def _timers_forever(self) -> None:
        """Fires due deadlines (execution / waiting time limits) as engine commands."""
        assert self.app is not None
        while True:
            delay = self.app.timers.next_deadline_in(time.time())
            await anyio.sleep(min(max(delay, 0.05), 1.0))
            effects = await self.app.timers.fire_deadlines(time.time())
            await self._apply(effects, self.app.state.reached)

    # ----------------------------------------------------------------- memory

    async def _sweep_forever(self) -> None:
        """Evicts ended graphs from memory (they stay readable from the log)."""
        assert self.app is not None
        while True:
            await anyio.sleep(SWEEP_INTERVAL)
            self.app.timers.sweep()


def _reply_subject(request: Request) -> str | None:
    """Where ``request`` is answered (``Request.respond`` publishes there too: nats.micro
    2.16 keeps the message as ``_msg``, without a public name for its reply subject);
    None where the message is not found so. ValueError, as ``respond``'s, when it has no
    reply subject."""
    msg = getattr(request, "_msg", None)
    if msg is None:
        return None
    reply: str = msg.reply
    if not reply:
        raise ValueError("no reply subject set")
    return reply


def _after(request: Request) -> int:
    """The highest log sequence the client has seen (0 when it says none)."""
    value = (request.headers or {}).get(AFTER_HEADER, "0")
    try:
        return max(int(value), 0)
    except ValueError:
        return 0


async def _patiently(attempt: Callable[[], Awaitable[_T]]) -> _T:
    """``attempt()``, again every second while JetStream does not answer (a timeout, also
    as the cause of the store's OperationalError, or "temporarily unavailable"), up to
    :data:`START_PATIENCE` seconds; any other error at once."""
    deadline = time.monotonic() + START_PATIENCE
    while True:
        try:
            return await attempt()
        except (OperationalError, nats.errors.Error) as error:
            if not unanswered(error) or time.monotonic() > deadline:
                raise
            log.warning("JetStream does not answer yet (%s): trying again", error)
            await anyio.sleep(1.0)
