"""The engine's decisions: an eventsourcing application over the domain aggregates.

:meth:`ColoniesApp.handle` takes one signed command (the exact bytes a client sent),
checks its signature, freshness and the caller's role, lets the aggregate decide, saves
the resulting event (optimistic concurrency in the JetStream store) and answers with an
:class:`Outcome`: the reply and the effects the service publishes (work tickets, end
notifications). A refused command writes nothing.

The application keeps every aggregate in memory (``_aggregates``), rebuilt from the log
on start (through eventsourcing's recorder), plus derived indices: which graph holds a
process, the ready processes per (colony, executor type) and the pending deadlines.

Commands run as coroutines on the engine's event loop: the decision is synchronous
domain code, and the resulting events (eventsourcing's mapper, the store's sealed
entries) are appended by the store's :class:`~colonies_es.store.jetstream.JetStreamLog`
bound to the engine's own connection (:meth:`ColoniesApp.attach`), which spares two
thread hand-offs per command. Each aggregate has a lock so its commands apply one at a
time; other aggregates' commands go on meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
from eventsourcing.application import Application
from eventsourcing.persistence import DataError, IntegrityError, Notification, PersistenceError
from eventsourcing.utils import Environment, EnvType
from nats.aio.client import Client as NATS

from colonies_es import colonyos, crypto
from colonies_es.domain import (
    AuditedAggregate,
    AuditedEvent,
    Colony,
    Conflict,
    DomainError,
    Forbidden,
    LogAdded,
    NotFound,
    ProcessGraph,
    colony_aggregate_id,
    graph_aggregate_id,
)
from colonies_es.engine.quotas import QuotaExceeded, Quotas
from colonies_es.engine.ready import Key, ReadyIndex
from colonies_es.engine.replies import Applied, Decided, Replies
from colonies_es.engine.state import Effects, EngineState, NotNext, Timer
from colonies_es.models import (
    Executor as ExecutorModel,
)
from colonies_es.models import (
    Log,
    ProcessState,
    Statistics,
    Workflow,
    encode,
)
from colonies_es.protocol import (
    OPS,
    AddAttribute,
    AddChild,
    AddColony,
    AddExecutor,
    AddLog,
    AddUser,
    Claim,
    CloseProcess,
    ColonyRef,
    ExecutorRef,
    FailProcess,
    GetLogs,
    GraphRef,
    ListQuery,
    ProcessRef,
    RemoveAll,
    SetOutput,
    SubmitFuncSpec,
    SubmitWorkflow,
)
from colonies_es.store import JetStreamApplicationRecorder
from colonies_es.store.codec import Envelope, to_notification
from colonies_es.store.jetstream import JetStreamLog, StoredMessage

log = logging.getLogger("colonies.engine")

A = TypeVar("A", bound=AuditedAggregate)

_ENDED = (ProcessState.SUCCESS, ProcessState.FAILED, ProcessState.CANCELLED)
_DOMAIN_TOPIC_PREFIX = "colonies_es.domain."


@dataclass
class Outcome:
    """The reply to a command (status 200 with a JSON body, or an error), its effects,
    and the stream sequence the reply reflects (what it wrote, or what was applied)."""

    status: int
    body: bytes = b""
    message: str = ""
    effects: Effects = field(default_factory=Effects)
    sequence: int = 0


_EMPTY = b"{}"

_READ_AGAIN = 0
"""The status of a remembered reply meaning "a read: answer its retry by reading again"."""
_READ_AGAIN_MARK = Decided(_READ_AGAIN, b"", "", 0)

_written: ContextVar[int] = ContextVar("written", default=0)
"""The last stream sequence the command being decided (this task's) has written."""

CONFLICT_RETRIES = 5
"""Times a decision is taken again after another replica changed the aggregate first."""

CATCH_UP_WAIT = 5.0
"""Seconds a command waits for this replica to apply the log up to the sequence its
client has seen (read-your-writes) before the engine answers 503."""

RETRY_AGE = 1.0
"""A command signed more than this many seconds ago may be a retry (its first try's
reply was lost): the replica first applies the log up to its end, so that it knows the
command if another replica applied it."""


class ColoniesApp(Application[str]):
    """Handles signed commands on colonies, executors and process graphs."""

    name = "colonies"

    def construct_env(self, name: str, env: EnvType | None = None) -> Environment:
        """Exactly the environment given (:meth:`colonies_es.settings.Settings.store_env`),
        never ``os.environ``: eventsourcing would look up ``COLONIES_NATS_URL`` and
        ``COLONIES_EVENT_SEAL_KEY`` there first (the application is named ``colonies``)
        and so override the settings the engine was started with."""
        complete = dict(type(self).env)
        if type(self).is_snapshotting_enabled or type(self).snapshotting_intervals:
            complete["IS_SNAPSHOTTING_ENABLED"] = "y"
        complete.update(env or {})
        return Environment(name, complete)

    def __init__(
        self,
        env: EnvType | None = None,
        *,
        server_id: str,
        engine_prvkey: str,
        max_skew: float = crypto.DEFAULT_MAX_SKEW,
        quotas: Quotas | None = None,
    ) -> None:
        super().__init__(env)
        self.quotas = quotas or Quotas()
        self.server_id = server_id
        self.engine_prvkey = engine_prvkey
        self.engine_id = crypto.id_from_private_key(engine_prvkey)
        self.max_skew = max_skew
        self.guard = crypto.ReplayGuard(max_skew)
        self.replies = Replies(max_skew)
        self.state = EngineState()
        self._in_flight: dict[str, asyncio.Future[Outcome]] = {}
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()  # a lock lives while a command holds or awaits it
        )
        self._handlers: dict[
            str, Callable[[crypto.VerifiedCommand, Any, datetime], Awaitable[Any]]
        ] = {op: getattr(self, f"_op_{op}") for op in OPS}
        self._log = self._recorder_log()
        self.rebuild()

    @property
    def ready(self) -> ReadyIndex:
        """The ready processes (part of :attr:`state`)."""
        return self.state.ready

    # ------------------------------------------------------------------ rebuild

    def rebuild(self) -> None:
        """Replays the whole log into memory: aggregates, indices, timers, seen commands.

        The follower (:meth:`follow`) goes on from the last sequence read here."""
        now = datetime.now(UTC)
        count = 0
        last = 0
        for notification in self._all_notifications():
            last = notification.id
            event = self._decode(notification)
            if event is None:
                continue
            try:
                self.state.apply(event, notification.id, index=False)
            except Exception as error:  # an event that does not fit: not ours
                log.warning("skipping event %s: %r", notification.id, error)
                continue
            self._log.remember_head(
                self._subject_of(event.originator_id), event.originator_version, notification.id
            )
            self._remember_command(event, notification.id, now)
            count += 1
        self.state.index_all(last)
        self.state.advance(last)
        log.info(
            "rebuilt %d aggregates from %d events (log at %d)",
            len(self.state.aggregates),
            count,
            last,
        )

    def _recorder_log(self) -> JetStreamLog:
        recorder = self.recorder
        if not isinstance(recorder, JetStreamApplicationRecorder):
            raise TypeError("the engine needs the JetStream store (PERSISTENCE_MODULE)")
        return recorder.log

    @property
    def _store(self) -> JetStreamApplicationRecorder:
        recorder = self.recorder
        assert isinstance(recorder, JetStreamApplicationRecorder)
        return recorder

    def _subject_of(self, aggregate_id: str) -> str:
        return self._store.subject_for(aggregate_id)

    def _all_notifications(self) -> Iterator[Notification]:
        start = 0
        while True:
            page = self.recorder.select_notifications(start, 1000, inclusive_of_start=False)
            yield from page
            if len(page) < 1000:
                return
            start = page[-1].id

    def _decode(self, notification: Notification) -> AuditedEvent | None:
        # Only our own domain's event classes are ever instantiated from the log.
        if not notification.topic.startswith(_DOMAIN_TOPIC_PREFIX):
            log.warning(
                "skipping event %s of foreign topic %r", notification.id, notification.topic
            )
            return None
        event = self.mapper.to_domain_event(notification)
        return event if isinstance(event, AuditedEvent) else None

    def _remember_command(self, event: AuditedEvent, sequence: int, now: datetime) -> None:
        """Feeds a recent command to the replay guard and the replies of retries (both
        survive restarts and see what other replicas accepted)."""
        if not event.command or (now - event.timestamp).total_seconds() > 2 * self.max_skew:
            return
        try:
            signed = msgspec.json.decode(event.command, type=crypto.SignedCommand)
            payload = msgspec.json.decode(signed.payload, type=crypto.CommandPayload)
        except msgspec.DecodeError:  # e.g. a ColonyOS envelope (no nonce)
            return
        if not payload.nonce:
            return
        caller = crypto.id_from_public_key(signed.public_key)
        replay_key = f"{caller}:{payload.nonce}"
        self.guard.remember(replay_key, payload.ts, now.timestamp())
        subject = getattr(event, "processid", None) or ""
        child = getattr(event, "child", None)
        if child is not None:
            subject = child["processid"]
        attribute = getattr(event, "attributeid", None)
        if attribute:
            subject = f"{subject}:{attribute}"
        self.replies.remember(
            replay_key, Applied(payload.op, event.originator_id, subject, sequence)
        )

    # ------------------------------------------------------------------ following the log

    async def follow(self) -> None:
        """Applies every event appended after the rebuild, by any replica, forever.

        Events this replica wrote itself are already in (their versions tell) and are
        skipped without decoding; an event that does not follow the cached aggregate
        (a gap) makes the aggregate reload from its own subject.
        """
        store = self._store
        async for batch in self._log.follow(store.events_filter, self.state.applied):
            now = datetime.now(UTC)
            for message in batch:
                envelope = store.connection.trusted(message)
                if envelope is not None:
                    await self._follow_one(message, envelope, now)
            self.state.advance(batch[-1].sequence)

    async def _follow_one(self, message: StoredMessage, envelope: Envelope, now: datetime) -> None:
        aggregate_id = str(envelope.originator_id)
        version = envelope.originator_version
        self._log.remember_head(message.subject, version, message.sequence)
        lock = self._locks.get(aggregate_id)
        if lock is not None and lock.locked():
            async with lock:  # a decision of this replica is being written: let it install
                pass
        cached = self.state.aggregates.get(aggregate_id)  # resident only (see state.py)
        if cached is not None and cached.version >= version:
            return  # already in: this replica's own write, or a catch-up got it
        event = self._decode(to_notification(envelope, message.sequence))
        if event is None:
            return
        try:
            self.state.apply(event, message.sequence)
        except NotNext:
            await self._catch_up(aggregate_id)
        except Exception as error:  # an event that does not fit: not ours
            log.warning("skipping event %s: %r", message.sequence, error)
            return
        self._remember_command(event, message.sequence, now)

    async def _catch_up(self, aggregate_id: str) -> None:
        """Brings one aggregate up to its subject's last event (after a conflict, a gap,
        or an event on an evicted graph), through the same :meth:`EngineState.apply` as
        the follower."""
        events = await self._events_of(aggregate_id)
        if not self.state.is_resident(aggregate_id):
            # Evicted: its colony's totals hold it as the log had it up to ``applied``.
            before = _replay_events(e for e, seq in events if seq <= self.state.applied)
            if isinstance(before, ProcessGraph):
                self.state.revive(before)
        cached = self.state.aggregates.get(aggregate_id)
        have = cached.version if cached is not None else 0
        now = datetime.now(UTC)
        for event, sequence in events:
            if event.originator_version <= have:
                continue
            try:
                self.state.apply(event, sequence)
            except NotNext:
                rebuilt = _replay_events(whole for whole, _ in events)
                if rebuilt is not None:
                    self.state.replace(rebuilt, events[-1][1])
                return
            self._remember_command(event, sequence, now)

    # ------------------------------------------------------------------ commands

    async def handle(self, op: str, data: bytes, now: float, after: int = 0) -> Outcome:
        """Decides one signed command; never raises (errors become an Outcome).

        ``after`` is the highest stream sequence the client has seen: the command waits
        (at most :data:`CATCH_UP_WAIT` seconds, then 503) until this replica has applied
        the log that far. A retry of a command already decided (here or, through the
        log, on another replica) gets the original reply.
        """
        try:
            self.quotas.check_command_size(op, len(data))
            if op == colonyos.ENGINE_OP:  # a ColonyOS client's envelope, via the gateway
                command = colonyos.open_envelope(data, now)  # nothing to guard: see colonyos
                op = command.op
            else:
                command = crypto.open_command(data, now, self.max_skew)
                if command.op != op:
                    raise crypto.CommandRejected(400, f"command for {command.op!r} sent to {op!r}")
            body = command.decode_body(OPS[op])
        except (crypto.CommandRejected, QuotaExceeded) as error:  # before any decision
            return Outcome(error.status, message=error.message, sequence=self.state.reached)
        key = command.replay_key
        running = self._in_flight.get(key)
        if running is not None:  # a copy (a retry) of a command being handled here
            original = await asyncio.shield(running)
            return dataclasses.replace(original, effects=Effects())  # published once
        # Registered before the first await: a copy arriving meanwhile waits for this one.
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            outcome = await self._handle_once(op, command, body, now, after)
            future.set_result(outcome)
            return outcome
        finally:
            del self._in_flight[key]
            if not future.done():
                future.cancel()

    async def _handle_once(
        self, op: str, command: crypto.VerifiedCommand, body: Any, now: float, after: int
    ) -> Outcome:
        """:meth:`handle` for the one copy of a command being handled."""
        if now - command.ts > RETRY_AGE:
            after = max(after, await self._log_end())
        if not await self.state.wait_applied(after, CATCH_UP_WAIT):
            return self._behind(after)
        key = command.replay_key
        known = self.replies.get(key)
        if isinstance(known, Decided) and known.status == _READ_AGAIN:
            outcome = await self._decide(op, command, body, now, check_replay=False)
            outcome.sequence = outcome.sequence or self.state.reached
            return outcome
        if known is not None:
            return await self._replay(known, command, body)
        outcome = await self._decide(op, command, body, now, check_replay=True)
        wrote = outcome.sequence > 0
        if not wrote:
            outcome.sequence = self.state.reached
        if outcome.status != 200:  # refused (a write's success is marked Applied)
            self.replies.remember(key, Decided(outcome.status, b"", outcome.message, 0))
        elif not wrote:  # a read: its retry reads again
            self.replies.remember(key, _READ_AGAIN_MARK)
        return outcome

    async def _decide(
        self, op: str, command: crypto.VerifiedCommand, body: Any, now: float, check_replay: bool
    ) -> Outcome:
        _written.set(0)
        try:
            if check_replay:
                self.guard.check_and_remember(command.replay_key, command.ts, now)
            result = await self._handlers[op](command, body, datetime.fromtimestamp(now, UTC))
        except crypto.CommandRejected as error:
            return Outcome(error.status, message=error.message)
        except DomainError as error:
            return Outcome(error.status, message=error.message, sequence=_written.get())
        except IntegrityError:
            return Outcome(409, message="a concurrent change kept winning: try again")
        except DataError as error:  # the event cannot be stored as it is: never retry
            return Outcome(400, message=f"{op} refused: {error}")
        except PersistenceError as error:
            log.error("%s: the event log failed: %s", op, error)
            return Outcome(503, message=f"the event log is unavailable: {error}")
        except Exception:
            log.exception("%s failed", op)
            return Outcome(500, message=f"internal error while handling {op}")
        body_bytes, effects = result if isinstance(result, tuple) else (result, Effects())
        return Outcome(200, body=body_bytes, effects=effects, sequence=_written.get())

    def _behind(self, after: int) -> Outcome:
        return Outcome(
            503,
            message=f"this engine has not caught up with the log (at {self.state.applied}, "
            f"the client has seen {after}): try again",
        )

    async def _log_end(self) -> int:
        """The stream's last event sequence (one request to the server)."""
        try:
            last = await self._log.last_message(self._store.events_filter)
        except PersistenceError:
            return 0
        return 0 if last is None else last.sequence

    async def _replay(
        self, known: Decided | Applied, cmd: crypto.VerifiedCommand, body: Any
    ) -> Outcome:
        """The reply to a retried command (see :mod:`.replies`)."""
        if isinstance(known, Decided):
            sequence = max(known.sequence, self.state.reached)
            return Outcome(known.status, known.body, known.message, sequence=sequence)
        try:
            reply = await self._reply_to_applied(known, body)
        except DomainError as error:
            return Outcome(error.status, message=error.message, sequence=known.sequence)
        return Outcome(200, body=reply, sequence=max(known.sequence, self.state.reached))

    async def _reply_to_applied(self, known: Applied, body: Any) -> bytes:
        """The reply of a command another replica applied, from the aggregate now."""
        aggregate = await self._load(known.aggregate_id)
        if isinstance(aggregate, ProcessGraph):
            if known.op == "submit_func_spec":
                return encode(aggregate.process_model(aggregate.rootprocessids[0]))
            if known.op in ("submit_workflow", "rerun_processgraph"):
                return encode(aggregate.to_model())
            if known.op in ("claim", "add_child"):
                return encode(aggregate.process_model(known.subject))
            if known.op == "add_attribute":
                processid, _, attributeid = known.subject.partition(":")
                model = aggregate.process_model(processid)
                return encode(next(a for a in model.attributes if a.attributeid == attributeid))
        if isinstance(aggregate, Colony):
            if known.op == "add_colony":
                return encode(aggregate.to_model())
            if known.op == "add_executor":
                return encode(aggregate.executor_model(body.executor.executorname))
        return _EMPTY

    # --- colonies

    async def _op_add_colony(
        self, cmd: crypto.VerifiedCommand, body: AddColony, now: datetime
    ) -> Any:
        self._require_server_owner(cmd)
        name = body.colony.name
        if self.state.get(colony_aggregate_id(name)) is not None:
            raise Conflict(f"colony {name!r} already exists")
        colony = Colony.create(name, body.colony.colonyid, **self._audit(cmd, now))
        await self._save_new(colony)
        return encode(colony.to_model())

    async def _op_del_colony(
        self, cmd: crypto.VerifiedCommand, body: ColonyRef, now: datetime
    ) -> Any:
        self._require_server_owner(cmd)
        await self._change(
            colony_aggregate_id(body.colonyname),
            Colony,
            lambda c: c.remove(**self._audit(cmd, now)),
        )
        return _EMPTY

    async def _op_list_colonies(self, cmd: crypto.VerifiedCommand, body: Any, now: datetime) -> Any:
        self._require_server_owner(cmd)
        colonies = [
            a.to_model()
            for a in list(self.state.aggregates.values())
            if isinstance(a, Colony) and not a.removed
        ]
        return encode(colonies)

    async def _op_get_colony(
        self, cmd: crypto.VerifiedCommand, body: ColonyRef, now: datetime
    ) -> Any:
        colony = self._member_colony(cmd, body.colonyname, allow_server_owner=True)
        return encode(colony.to_model())

    async def _op_stats(self, cmd: crypto.VerifiedCommand, body: ColonyRef, now: datetime) -> Any:
        colony = self._member_colony(cmd, body.colonyname, allow_server_owner=True)
        stats = Statistics(executors=len(colony.executors), colonies=1)
        for name, value in self.state.evicted_counts(colony.name).items():
            setattr(stats, name, value)
        for graph in self.state.resident_graphs(colony.name):
            counts = {
                ProcessState.WAITING: "waiting",
                ProcessState.RUNNING: "running",
                ProcessState.SUCCESS: "successful",
                ProcessState.FAILED: "failed",
            }
            kind = counts.get(ProcessState(graph.state))
            if kind:
                setattr(stats, f"{kind}workflows", getattr(stats, f"{kind}workflows") + 1)
            for node in graph.nodes.values():
                kind = counts.get(ProcessState(node.state))
                if kind:
                    setattr(stats, f"{kind}processes", getattr(stats, f"{kind}processes") + 1)
        return encode(stats)

    # --- executors and users

    async def _op_add_executor(
        self, cmd: crypto.VerifiedCommand, body: AddExecutor, now: datetime
    ) -> Any:
        executor = body.executor
        colony, _ = await self._change(
            colony_aggregate_id(executor.colonyname),
            Colony,
            lambda c: c.add_executor(
                executor.executorid,
                executor.executorname,
                executor.executortype,
                **self._audit(cmd, now),
            ),
        )
        return encode(colony.executor_model(executor.executorname))

    async def _executor_change(
        self, cmd: crypto.VerifiedCommand, body: ExecutorRef, now: datetime, verb: str
    ) -> Any:
        def act(colony: Colony) -> None:
            getattr(colony, f"{verb}_executor")(body.executorname, **self._audit(cmd, now))

        colony, _ = await self._change(colony_aggregate_id(body.colonyname), Colony, act)
        effects = Effects()
        if verb == "approve":
            executor = colony.executor_by_name(body.executorname)
            if executor is not None:
                effects.new_types.append((colony.name, executor.executortype))
        return _EMPTY, effects

    async def _op_approve_executor(
        self, cmd: crypto.VerifiedCommand, body: ExecutorRef, now: datetime
    ) -> Any:
        return await self._executor_change(cmd, body, now, "approve")

    async def _op_reject_executor(
        self, cmd: crypto.VerifiedCommand, body: ExecutorRef, now: datetime
    ) -> Any:
        return await self._executor_change(cmd, body, now, "reject")

    async def _op_remove_executor(
        self, cmd: crypto.VerifiedCommand, body: ExecutorRef, now: datetime
    ) -> Any:
        return await self._executor_change(cmd, body, now, "remove")

    async def _op_list_executors(
        self, cmd: crypto.VerifiedCommand, body: ColonyRef, now: datetime
    ) -> Any:
        colony = self._member_colony(cmd, body.colonyname)
        executors = [colony.executor_model(e.executorname) for e in colony.executors.values()]
        return encode([self._heard(executor) for executor in executors])

    async def _op_get_executor(
        self, cmd: crypto.VerifiedCommand, body: ExecutorRef, now: datetime
    ) -> Any:
        colony = self._member_colony(cmd, body.colonyname)
        executor = colony.executor_by_name(body.executorname)
        if executor is None:
            raise NotFound(f"no executor named {body.executorname!r} in colony {body.colonyname!r}")
        return encode(self._heard(executor))

    def _heard(self, executor: ExecutorModel) -> ExecutorModel:
        """``executor`` with its ``lastheardfromtime`` (the state's ``last_heard``)."""
        executor.lastheardfromtime = self.state.last_heard.get(executor.executorid)
        return executor

    async def _op_whoami(self, cmd: crypto.VerifiedCommand, body: ColonyRef, now: datetime) -> Any:
        colony = self._colony(body.colonyname)
        executor = colony.executor_by_id(cmd.caller_id)
        if executor is None:
            raise NotFound(f"the caller is not an executor of colony {body.colonyname!r}")
        return encode(executor)

    async def _op_add_user(self, cmd: crypto.VerifiedCommand, body: AddUser, now: datetime) -> Any:
        await self._change(
            colony_aggregate_id(body.colonyname),
            Colony,
            lambda c: c.add_user(body.userid, body.username, **self._audit(cmd, now)),
        )
        return _EMPTY

    # --- submission

    async def _op_submit_func_spec(
        self, cmd: crypto.VerifiedCommand, body: SubmitFuncSpec, now: datetime
    ) -> Any:
        workflow = Workflow(colonyname=body.spec.conditions.colonyname, functionspecs=[body.spec])
        graph, effects = await self._submit(cmd, workflow, now)
        return encode(graph.process_model(graph.rootprocessids[0])), effects

    async def _op_submit_workflow(
        self, cmd: crypto.VerifiedCommand, body: SubmitWorkflow, now: datetime
    ) -> Any:
        graph, effects = await self._submit(cmd, body.workflow, now)
        return encode(graph.to_model()), effects

    async def _submit(
        self, cmd: crypto.VerifiedCommand, workflow: Workflow, now: datetime
    ) -> tuple[ProcessGraph, Effects]:
        colony = self._member_colony(cmd, workflow.colonyname)
        adding = len(workflow.functionspecs)
        self.quotas.check_pending(colony.name, self.state.pending_processes(colony.name), adding)
        graph = ProcessGraph.submit(
            colony.name,
            workflow,
            initiatorid=cmd.caller_id,
            initiatorname=self._name_of(colony, cmd.caller_id),
            **self._audit(cmd, now),
        )
        return graph, await self._save_new(graph)

    # --- executors' work

    async def _op_claim(self, cmd: crypto.VerifiedCommand, body: Claim, now: datetime) -> Any:
        colony = self._colony(body.colonyname)
        executor = colony.executor_by_id(cmd.caller_id)
        if executor is None or executor.state != 1:
            raise Forbidden(
                f"only an APPROVED executor of colony {body.colonyname!r} can claim work"
            )
        key = (colony.name, executor.executortype)
        while True:
            best = self.ready.best_for(key, executor.executorname)
            if best is None:
                raise NotFound(
                    f"no process ready for {executor.executorname!r} ({executor.executortype})"
                )
            try:
                graph, effects = await self._change_graph(
                    best.graph_id,
                    lambda g, best=best: g.assign(  # type: ignore[misc]
                        best.processid, executor, best.attempt, **self._audit(cmd, now)
                    ),
                )
            except (Conflict, NotFound):
                self.ready.discard(best.processid)  # raced or stale: try the next best
                continue
            return encode(graph.process_model(best.processid)), effects

    async def _op_close(
        self, cmd: crypto.VerifiedCommand, body: CloseProcess, now: datetime
    ) -> Any:
        _graph, effects = await self._change_graph(
            self._graph_id_of(body.processid),
            lambda g: g.close(
                body.processid,
                cmd.caller_id,
                list(body.out),
                attempt=body.attempt,
                **self._audit(cmd, now),
            ),
        )
        return _EMPTY, effects

    async def _op_fail(self, cmd: crypto.VerifiedCommand, body: FailProcess, now: datetime) -> Any:
        _graph, effects = await self._change_graph(
            self._graph_id_of(body.processid),
            lambda g: g.fail(
                body.processid,
                cmd.caller_id,
                list(body.errors),
                attempt=body.attempt,
                **self._audit(cmd, now),
            ),
        )
        return _EMPTY, effects

    async def _op_set_output(
        self, cmd: crypto.VerifiedCommand, body: SetOutput, now: datetime
    ) -> Any:
        _, effects = await self._change_graph(
            self._graph_id_of(body.processid),
            lambda g: g.set_output(
                body.processid,
                cmd.caller_id,
                list(body.out),
                attempt=body.attempt,
                **self._audit(cmd, now),
            ),
        )
        return _EMPTY, effects

    # --- reading processes and graphs

    async def _op_get_process(
        self, cmd: crypto.VerifiedCommand, body: ProcessRef, now: datetime
    ) -> Any:
        graph = await self._readable(cmd, self._graph_id_of(body.processid))
        return encode(graph.process_model(body.processid))

    async def _op_list_processes(
        self, cmd: crypto.VerifiedCommand, body: ListQuery, now: datetime
    ) -> Any:
        self._member_colony(cmd, body.colonyname)
        found = []
        ended_too = body.state is None or body.state < 0 or body.state in _ENDED
        async for graph in self._graphs_newest_first(body.colonyname, ended_too):
            for node in reversed(list(graph.nodes.values())):
                if body.state is None or body.state < 0 or node.state == body.state:
                    found.append(graph.process_model(node.processid))
                    if len(found) >= body.count:
                        return encode(found)
        return encode(found)

    async def _op_get_processgraph(
        self, cmd: crypto.VerifiedCommand, body: GraphRef, now: datetime
    ) -> Any:
        graph = await self._readable(cmd, self._graph_id_by_graphid(body.processgraphid))
        return encode(graph.to_model())

    async def _op_get_processgraphs(
        self, cmd: crypto.VerifiedCommand, body: ListQuery, now: datetime
    ) -> Any:
        self._member_colony(cmd, body.colonyname)
        found = []
        ended_too = body.state is None or body.state < 0 or body.state in _ENDED
        async for graph in self._graphs_newest_first(body.colonyname, ended_too):
            if body.state is None or body.state < 0 or graph.state == body.state:
                found.append(graph.to_model())
                if len(found) >= body.count:
                    break
        return encode(found)

    async def _op_rerun_processgraph(
        self, cmd: crypto.VerifiedCommand, body: GraphRef, now: datetime
    ) -> Any:
        failed = await self._readable(cmd, self._graph_id_by_graphid(body.processgraphid))
        colony = self._colony(failed.colonyname)
        graph = ProcessGraph.rerun_from_failed(
            failed,
            initiatorid=cmd.caller_id,
            initiatorname=self._name_of(colony, cmd.caller_id),
            **self._audit(cmd, now),
        )
        return encode(graph.to_model()), await self._save_new(graph)

    # --- cancel and remove

    async def _op_cancel_processgraph(
        self, cmd: crypto.VerifiedCommand, body: GraphRef, now: datetime
    ) -> Any:
        graph_id = self._graph_id_by_graphid(body.processgraphid)
        await self._readable(cmd, graph_id)
        _, effects = await self._change_graph(graph_id, lambda g: g.cancel(**self._audit(cmd, now)))
        return _EMPTY, effects

    async def _op_remove_processgraph(
        self, cmd: crypto.VerifiedCommand, body: GraphRef, now: datetime
    ) -> Any:
        graph_id = self._graph_id_by_graphid(body.processgraphid)
        await self._readable(cmd, graph_id)
        _, effects = await self._change_graph(graph_id, lambda g: g.remove(**self._audit(cmd, now)))
        return _EMPTY, effects

    async def _op_remove_process(
        self, cmd: crypto.VerifiedCommand, body: ProcessRef, now: datetime
    ) -> Any:
        graph_id = self._graph_id_of(body.processid)
        graph = await self._readable(cmd, graph_id)
        if len(graph.nodes) > 1:
            raise Conflict(
                f"process {body.processid} belongs to a workflow of {len(graph.nodes)} processes: "
                "remove its process graph instead"
            )
        _, effects = await self._change_graph(graph_id, lambda g: g.remove(**self._audit(cmd, now)))
        return _EMPTY, effects

    async def _remove_all(self, cmd: crypto.VerifiedCommand, body: RemoveAll, now: datetime) -> Any:
        colony = self._colony(body.colonyname)
        if cmd.caller_id != colony.ownerid:
            raise Forbidden(f"only the owner of colony {colony.name!r} can remove all its graphs")
        state = None if body.state is None or body.state < 0 else body.state
        if state == ProcessState.RUNNING:
            raise Conflict("RUNNING graphs cannot be removed: cancel them first")
        effects = Effects()
        graphs = [graph async for graph in self._graphs_newest_first(colony.name, True)]
        for graph in reversed(graphs):
            if graph.state == ProcessState.RUNNING or (state is not None and graph.state != state):
                continue
            try:
                _, more = await self._change_graph(
                    graph.id, lambda g: g.remove(**self._audit(cmd, now))
                )
            except (Conflict, NotFound):
                continue  # started running or was removed meanwhile
            effects.merge(more)
        return _EMPTY, effects

    async def _op_remove_all_processes(
        self, cmd: crypto.VerifiedCommand, body: RemoveAll, now: datetime
    ) -> Any:
        return await self._remove_all(cmd, body, now)

    async def _op_remove_all_processgraphs(
        self, cmd: crypto.VerifiedCommand, body: RemoveAll, now: datetime
    ) -> Any:
        return await self._remove_all(cmd, body, now)

    # --- dynamic graphs, attributes and logs

    async def _op_add_child(
        self, cmd: crypto.VerifiedCommand, body: AddChild, now: datetime
    ) -> Any:
        graph_id = self._graph_id_by_graphid(body.processgraphid)
        if self._graph_id_of(body.parentprocessid) != graph_id:
            raise NotFound(
                f"process {body.parentprocessid} is not in process graph {body.processgraphid}"
            )
        added: list[str] = []
        colonyname = graph_id.split(".", 1)[0]  # graph ids are <colony>.graph.<id>
        self.quotas.check_pending(colonyname, self.state.pending_processes(colonyname), 1)

        def add(graph: ProcessGraph) -> None:
            added.append(
                graph.add_child(
                    body.parentprocessid,
                    cmd.caller_id,
                    body.spec,
                    body.nodename,
                    insert=body.insert,
                    childprocessid=body.childprocessid,
                    **self._audit(cmd, now),
                )
            )

        graph, effects = await self._change_graph(graph_id, add)
        return encode(graph.process_model(added[0])), effects

    async def _op_add_attribute(
        self, cmd: crypto.VerifiedCommand, body: AddAttribute, now: datetime
    ) -> Any:
        added: list[str] = []
        graph, effects = await self._change_graph(
            self._graph_id_of(body.processid),
            lambda g: added.append(
                g.add_attribute(
                    body.processid, cmd.caller_id, body.key, body.value, **self._audit(cmd, now)
                )
            ),
        )
        model = graph.process_model(body.processid)
        attribute = next(a for a in model.attributes if a.attributeid == added[0])
        return encode(attribute), effects

    async def _op_add_log(self, cmd: crypto.VerifiedCommand, body: AddLog, now: datetime) -> Any:
        graph_id = self._graph_id_of(body.processid)
        graph = await self._load(graph_id)
        if not isinstance(graph, ProcessGraph):
            raise NotFound(f"process {body.processid} does not exist")
        executor = self._colony(graph.colonyname).executor_by_id(cmd.caller_id)
        name = executor.executorname if executor is not None else ""
        await self._change_graph(
            graph_id,
            lambda g: g.add_log(
                body.processid, cmd.caller_id, name, body.message, **self._audit(cmd, now)
            ),
        )
        return _EMPTY

    async def _op_get_process_log(
        self, cmd: crypto.VerifiedCommand, body: GetLogs, now: datetime
    ) -> Any:
        graph_id = self._graph_id_of(body.processid)
        graph = await self._readable(cmd, graph_id)
        logs = [
            Log(
                processid=event.processid,
                colonyname=graph.colonyname,
                executorname=event.executorname,
                message=event.message,
                timestamp=_unix_ns(event.timestamp),
            )
            for event, _ in await self._events_of(graph_id)
            if isinstance(event, LogAdded) and event.processid == body.processid
        ]
        logs = [log for log in logs if log.timestamp > body.since]
        return encode(logs[-body.count :] if body.count > 0 else logs)

    # ------------------------------------------------------------------ timers

    def next_deadline_in(self, now: float) -> float:
        """Seconds until the next deadline (a large number when there is none)."""
        return self.state.next_deadline_in(now)

    async def fire_deadlines(self, now: float) -> Effects:
        """Expires every process whose execution or waiting deadline has come.

        Every replica holds the same timers; the first to record a timeout wins the
        graph's optimistic concurrency, the others find the attempt already expired
        (a ``Conflict`` once caught up) and drop the timer quietly.
        """
        effects = Effects()
        when = datetime.fromtimestamp(now, UTC)
        while (timer := self.state.pop_due(now)) is not None:
            body = {"processid": timer.processid, "attempt": timer.attempt, "kind": timer.kind}
            sealed = crypto.seal(f"expire_{timer.kind}", body, self.engine_prvkey, now)
            audit = {"now": when, "actor": self.engine_id, "command": sealed}

            def expire(
                graph: ProcessGraph, timer: Timer = timer, audit: dict[str, Any] = audit
            ) -> None:
                if timer.kind == "exec":
                    graph.expire_exec(timer.processid, timer.attempt, **audit)
                else:
                    graph.expire_wait(timer.processid, **audit)

            try:
                _, more = await self._change_graph(timer.graph_id, expire)
            except (Conflict, NotFound, IntegrityError):
                continue  # stale timer: the process moved on (here or on another replica)
            except PersistenceError as error:
                log.error("could not record a timeout: %s", error)
                self.state.push_timer(
                    Timer(now + 1.0, timer.processid, timer.graph_id, timer.attempt, timer.kind)
                )
                continue
            effects.merge(more)
        return effects

    # ------------------------------------------------------------------ helpers

    def executor_types(self) -> set[Key]:
        """(colony, executor type) of every APPROVED executor."""
        return self.state.executor_types()

    def _audit(self, cmd: crypto.VerifiedCommand, now: datetime) -> dict[str, Any]:
        return {"now": now, "actor": cmd.caller_id, "command": msgspec.json.encode(cmd.command)}

    def _require_server_owner(self, cmd: crypto.VerifiedCommand) -> None:
        if cmd.caller_id != self.server_id:
            raise Forbidden("only the server owner can do this")

    def _colony(self, colonyname: str) -> Colony:
        colony = self.state.get(colony_aggregate_id(colonyname))
        if not isinstance(colony, Colony) or colony.removed:
            raise NotFound(f"colony {colonyname!r} does not exist")
        return colony

    def _member_colony(
        self, cmd: crypto.VerifiedCommand, colonyname: str, allow_server_owner: bool = False
    ) -> Colony:
        colony = self._colony(colonyname)
        if not colony.is_member(cmd.caller_id) and not (
            allow_server_owner and cmd.caller_id == self.server_id
        ):
            raise Forbidden(f"the caller is not a member of colony {colonyname!r}")
        return colony

    @staticmethod
    def _name_of(colony: Colony, identity: str) -> str:
        executor = colony.executor_by_id(identity)
        if executor is not None:
            return executor.executorname
        if identity == colony.ownerid:
            return "colony owner"
        return colony.users.get(identity, "")

    async def _graphs_newest_first(
        self, colonyname: str, ended_too: bool
    ) -> AsyncIterator[ProcessGraph]:
        """The colony's graphs not removed, newest first; evicted (ended) graphs only
        with ``ended_too``, each loaded from the log when the caller gets that far."""
        for graph_id in reversed(self.state.graph_ids(colonyname)):
            graph = self.state.get(graph_id)
            if graph is None and ended_too:
                graph = await self._load(graph_id)
            if isinstance(graph, ProcessGraph) and not graph.removed:
                yield graph

    def _graph_id_of(self, processid: str) -> str:
        graph_id = self.state.graph_of(processid)
        if graph_id is None:
            raise NotFound(f"process {processid} does not exist")
        return graph_id

    def _graph_id_by_graphid(self, processgraphid: str) -> str:
        for colonyname in self.state.colony_names():
            graph_id = graph_aggregate_id(colonyname, processgraphid)
            if self.state.knows_graph(colonyname, graph_id):
                return graph_id
        raise NotFound(f"process graph {processgraphid} does not exist")

    async def _readable(self, cmd: crypto.VerifiedCommand, graph_id: str) -> ProcessGraph:
        """The graph, if it exists, is not removed and the caller may read it."""
        graph = await self._load(graph_id)
        if not isinstance(graph, ProcessGraph) or graph.removed:
            raise NotFound(f"process graph {graph_id.rsplit('.', 1)[-1]} does not exist")
        self._member_colony(cmd, graph.colonyname)
        return graph

    def _lock(self, aggregate_id: str) -> asyncio.Lock:
        lock = self._locks.get(aggregate_id)
        if lock is None:
            lock = self._locks[aggregate_id] = asyncio.Lock()
        return lock

    def attach(self, nc: NATS) -> None:
        """Writes from now on go through ``nc`` on the caller's event loop (the engine's),
        without crossing to the store's loop thread. Heads learnt at rebuild are kept."""
        self._log = self._store.log.rebound(nc)

    def _remember_commands(self, events: list[AuditedEvent]) -> None:
        """Marks this replica's own commands as applied (:mod:`.replies`): a retry's reply
        is computed again from the aggregate, so no reply body is kept in memory."""
        now = datetime.now(UTC)
        for event in events:
            self._remember_command(event, _written.get(), now)

    async def _save(self, aggregate: AuditedAggregate) -> list[AuditedEvent]:
        """Appends the aggregate's pending events to the log (atomically) and notes the
        last sequence written for the reply (:data:`_written`)."""
        pending: list[AuditedEvent] = list(aggregate.collect_events())  # type: ignore[arg-type]
        stored = [self.mapper.to_stored_event(event) for event in pending]
        sequences = await self._log.append(self._store.entries_for(stored))
        _written.set(max(_written.get(), sequences[-1]))
        return pending

    async def _events_of(self, aggregate_id: str) -> list[tuple[AuditedEvent, int]]:
        """The aggregate's events from its own subject, with their stream sequences."""
        store = self._store
        messages = await self._log.read_subject(store.subject_for(aggregate_id))
        events = []
        for message in messages:
            envelope = store.connection.trusted(message)
            if envelope is None:
                continue
            event = self._decode(to_notification(envelope, message.sequence))
            if event is not None:
                events.append((event, message.sequence))
        return events

    async def _load(self, aggregate_id: str) -> AuditedAggregate | None:
        """The aggregate from memory, or an evicted graph from its own subject (as far
        as the follower has applied the log), kept in the state's LRU for a while."""
        found = self.state.get(aggregate_id)
        if found is not None:
            return found
        colonyname, _, rest = aggregate_id.partition(".")
        if not rest.startswith("graph.") or not self.state.knows_graph(colonyname, aggregate_id):
            return None
        applied = self.state.applied
        events = await self._events_of(aggregate_id)
        graph = _replay_events(event for event, seq in events if seq <= applied)
        if not isinstance(graph, ProcessGraph):
            return None
        found = self.state.get(aggregate_id)  # the follower may have revived it meanwhile
        if found is not None:
            return found
        self.state.keep_loaded(graph)
        return graph

    async def _resident(self, aggregate_id: str) -> AuditedAggregate | None:
        """The aggregate, made resident again if it was an evicted graph (to change it)."""
        found = await self._load(aggregate_id)
        if isinstance(found, ProcessGraph) and not self.state.is_resident(aggregate_id):
            self.state.revive(found)
        return found

    def sweep(self) -> int:
        """Evicts the graphs that ended (see state.py); returns how many."""
        evicted = self.state.sweep(self._busy)
        for graph_id in evicted:
            self._log.forget_head(self._subject_of(graph_id))
        if evicted:
            log.info(
                "memory: %d ended graphs left memory, %d aggregates resident",
                len(evicted),
                len(self.state.aggregates),
            )
        return len(evicted)

    def _busy(self, aggregate_id: str) -> bool:
        lock = self._locks.get(aggregate_id)
        return lock is not None and lock.locked()

    async def _save_new(self, aggregate: AuditedAggregate) -> Effects:
        """Saves a new aggregate (IntegrityError if its id exists) and installs it."""
        async with self._lock(aggregate.id):
            events = await self._save(aggregate)
            self._remember_commands(events)
            return self.state.install(aggregate, events, _written.get())

    async def _change(
        self, aggregate_id: str, kind: type[A], decide: Callable[[A], None]
    ) -> tuple[A, Effects]:
        """Runs ``decide`` on a copy of the aggregate under its lock, saves what it
        triggered, and installs the copy once the log has it.

        A refused or failed write leaves the cached aggregate as it was. When another
        replica changed the aggregate first (``IntegrityError``), this one catches up
        from the aggregate's subject and decides again, up to :data:`CONFLICT_RETRIES`
        times.
        """
        async with self._lock(aggregate_id):
            for attempt in range(CONFLICT_RETRIES):
                cached = await self._resident(aggregate_id)
                if not isinstance(cached, kind):
                    what = "colony" if kind is Colony else "process graph"
                    name = aggregate_id.split(".")[0 if kind is Colony else -1]
                    raise NotFound(f"{what} {name!r} does not exist")
                draft = cached.copy()
                decide(draft)  # a DomainError triggers nothing
                try:
                    events = await self._save(draft)
                except IntegrityError:
                    if attempt == CONFLICT_RETRIES - 1:
                        raise
                    await self._catch_up(aggregate_id)
                    continue
                self._remember_commands(events)
                return draft, self.state.install(draft, events, _written.get())
            raise AssertionError("unreachable")

    async def _change_graph(
        self, graph_id: str, decide: Callable[[ProcessGraph], None]
    ) -> tuple[ProcessGraph, Effects]:
        return await self._change(graph_id, ProcessGraph, decide)


def _replay_events(events: Iterable[AuditedEvent]) -> AuditedAggregate | None:
    """The aggregate these events (its own, in order) build."""
    aggregate: AuditedAggregate | None = None
    for event in events:
        aggregate = event.mutate(aggregate)
    return aggregate


def _unix_ns(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000) * 1000


__all__ = ["ColoniesApp", "Effects", "Outcome"]
