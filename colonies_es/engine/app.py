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
import heapq
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator
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
    GraphCancelled,
    GraphRemoved,
    LogAdded,
    NotFound,
    ProcessGraph,
    colony_aggregate_id,
    graph_aggregate_id,
)
from colonies_es.engine.ready import Key, ReadyIndex
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
from colonies_es.store.codec import to_notification
from colonies_es.store.jetstream import JetStreamLog

log = logging.getLogger("colonies.engine")

A = TypeVar("A", bound=AuditedAggregate)

_ENDED = (ProcessState.SUCCESS, ProcessState.FAILED, ProcessState.CANCELLED)
_DOMAIN_TOPIC_PREFIX = "colonies_es.domain."


@dataclass
class Effects:
    """What the service publishes after a decision."""

    ready: list[Key] = field(default_factory=list)
    """One (colony, executor type) per process that became ready: a work ticket each."""
    ended: list[tuple[str, str]] = field(default_factory=list)
    """(colony, process id) of processes that ended: an end notification each."""
    new_types: list[Key] = field(default_factory=list)
    """Executor types that appeared: their work consumer must exist."""

    def merge(self, other: Effects) -> None:
        self.ready.extend(other.ready)
        self.ended.extend(other.ended)
        self.new_types.extend(other.new_types)


@dataclass
class Outcome:
    """The reply to a command (status 200 with a JSON body, or an error) and its effects."""

    status: int
    body: bytes = b""
    message: str = ""
    effects: Effects = field(default_factory=Effects)


@dataclass(order=True)
class _Timer:
    at: float
    processid: str = field(compare=False)
    graph_id: str = field(compare=False)
    attempt: int = field(compare=False)
    kind: str = field(compare=False)


_EMPTY = b"{}"


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
    ) -> None:
        super().__init__(env)
        self.server_id = server_id
        self.engine_prvkey = engine_prvkey
        self.engine_id = crypto.id_from_private_key(engine_prvkey)
        self.max_skew = max_skew
        self.guard = crypto.ReplayGuard(max_skew)
        self.ready = ReadyIndex()
        self._aggregates: dict[str, AuditedAggregate] = {}
        self._graph_of_process: dict[str, str] = {}
        self._graphs_of_colony: dict[str, list[str]] = {}
        self._timers: list[_Timer] = []
        self._locks: dict[str, asyncio.Lock] = {}
        self._index_lock = threading.RLock()
        self._handlers: dict[
            str, Callable[[crypto.VerifiedCommand, Any, datetime], Awaitable[Any]]
        ] = {op: getattr(self, f"_op_{op}") for op in OPS}
        self._log = self._recorder_log()
        self.rebuild()

    # ------------------------------------------------------------------ rebuild

    def rebuild(self) -> None:
        """Replays the whole log into memory: aggregates, indices, timers, seen nonces."""
        now = datetime.now(UTC)
        count = 0
        for notification in self._all_notifications():
            event = self._decode(notification)
            if event is None:
                continue
            aggregate = self._aggregates.get(event.originator_id)
            try:
                aggregate = event.mutate(aggregate)
            except Exception as error:  # an event that does not fit: not ours
                log.warning("skipping event %s: %r", notification.id, error)
                continue
            assert aggregate is not None
            self._aggregates[event.originator_id] = aggregate
            self._log.remember_head(
                self._subject_of(event.originator_id), event.originator_version, notification.id
            )
            self._remember_command(event, now)
            count += 1
        for aggregate in self._aggregates.values():
            if isinstance(aggregate, ProcessGraph):
                self._index_graph(aggregate, None)
        log.info("rebuilt %d aggregates from %d events", len(self._aggregates), count)

    def _recorder_log(self) -> JetStreamLog:
        recorder = self.recorder
        if not isinstance(recorder, JetStreamApplicationRecorder):
            raise TypeError("the engine needs the JetStream store (PERSISTENCE_MODULE)")
        return recorder.log

    def _subject_of(self, aggregate_id: str) -> str:
        recorder = self.recorder
        assert isinstance(recorder, JetStreamApplicationRecorder)
        return recorder.subject_for(aggregate_id)

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

    def _remember_command(self, event: AuditedEvent, now: datetime) -> None:
        """Feeds recent commands' nonces to the replay guard (it survives restarts)."""
        if not event.command or (now - event.timestamp).total_seconds() > 2 * self.max_skew:
            return
        try:
            signed = msgspec.json.decode(event.command, type=crypto.SignedCommand)
            payload = msgspec.json.decode(signed.payload, type=crypto.CommandPayload)
        except msgspec.DecodeError:
            return
        caller = crypto.id_from_public_key(signed.public_key)
        self.guard.remember(f"{caller}:{payload.nonce}", payload.ts, now.timestamp())

    # ------------------------------------------------------------------ commands

    async def handle(self, op: str, data: bytes, now: float) -> Outcome:
        """Decides one signed command; never raises (errors become an Outcome)."""
        try:
            if op == colonyos.ENGINE_OP:  # a ColonyOS client's envelope, via the gateway
                command = colonyos.open_envelope(data, now)  # nothing to guard: see colonyos
                op = command.op
                body = command.decode_body(OPS[op])
            else:
                command = crypto.open_command(data, now, self.max_skew)
                if command.op != op:
                    raise crypto.CommandRejected(400, f"command for {command.op!r} sent to {op!r}")
                body = command.decode_body(OPS[op])
                self.guard.check_and_remember(command.replay_key, command.ts, now)
            result = await self._handlers[op](command, body, datetime.fromtimestamp(now, UTC))
        except crypto.CommandRejected as error:
            return Outcome(error.status, message=error.message)
        except DomainError as error:
            return Outcome(error.status, message=error.message)
        except IntegrityError:
            return Outcome(409, message="a concurrent change won: try again")
        except DataError as error:  # the event cannot be stored as it is: never retry
            return Outcome(400, message=f"{op} refused: {error}")
        except PersistenceError as error:
            log.error("%s: the event log failed: %s", op, error)
            return Outcome(503, message=f"the event log is unavailable: {error}")
        except Exception:
            log.exception("%s failed", op)
            return Outcome(500, message=f"internal error while handling {op}")
        body_bytes, effects = result if isinstance(result, tuple) else (result, Effects())
        return Outcome(200, body=body_bytes, effects=effects)

    # --- colonies

    async def _op_add_colony(
        self, cmd: crypto.VerifiedCommand, body: AddColony, now: datetime
    ) -> Any:
        self._require_server_owner(cmd)
        name = body.colony.name
        if colony_aggregate_id(name) in self._aggregates:
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
            for a in self._aggregates.values()
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
        for graph in self._graphs(colony.name):
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
        return encode([colony.executor_model(e.executorname) for e in colony.executors.values()])

    async def _op_get_executor(
        self, cmd: crypto.VerifiedCommand, body: ExecutorRef, now: datetime
    ) -> Any:
        colony = self._member_colony(cmd, body.colonyname)
        executor = colony.executor_by_name(body.executorname)
        if executor is None:
            raise NotFound(f"no executor named {body.executorname!r} in colony {body.colonyname!r}")
        return encode(executor)

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
        graph = ProcessGraph.submit(
            colony.name,
            workflow,
            initiatorid=cmd.caller_id,
            initiatorname=self._name_of(colony, cmd.caller_id),
            **self._audit(cmd, now),
        )
        events = await self._save_new(graph)
        return graph, self._index_graph(graph, events)

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
                body.processid, cmd.caller_id, list(body.out), **self._audit(cmd, now)
            ),
        )
        return _EMPTY, effects

    async def _op_fail(self, cmd: crypto.VerifiedCommand, body: FailProcess, now: datetime) -> Any:
        _graph, effects = await self._change_graph(
            self._graph_id_of(body.processid),
            lambda g: g.fail(
                body.processid, cmd.caller_id, list(body.errors), **self._audit(cmd, now)
            ),
        )
        return _EMPTY, effects

    async def _op_set_output(
        self, cmd: crypto.VerifiedCommand, body: SetOutput, now: datetime
    ) -> Any:
        _, effects = await self._change_graph(
            self._graph_id_of(body.processid),
            lambda g: g.set_output(
                body.processid, cmd.caller_id, list(body.out), **self._audit(cmd, now)
            ),
        )
        return _EMPTY, effects

    # --- reading processes and graphs

    async def _op_get_process(
        self, cmd: crypto.VerifiedCommand, body: ProcessRef, now: datetime
    ) -> Any:
        graph = self._readable_graph(cmd, self._graph_id_of(body.processid))
        return encode(graph.process_model(body.processid))

    async def _op_list_processes(
        self, cmd: crypto.VerifiedCommand, body: ListQuery, now: datetime
    ) -> Any:
        self._member_colony(cmd, body.colonyname)
        found = []
        for graph in reversed(self._graphs(body.colonyname)):
            for node in reversed(list(graph.nodes.values())):
                if body.state is None or body.state < 0 or node.state == body.state:
                    found.append(graph.process_model(node.processid))
                    if len(found) >= body.count:
                        return encode(found)
        return encode(found)

    async def _op_get_processgraph(
        self, cmd: crypto.VerifiedCommand, body: GraphRef, now: datetime
    ) -> Any:
        graph = self._readable_graph(cmd, self._graph_id_by_graphid(body.processgraphid))
        return encode(graph.to_model())

    async def _op_get_processgraphs(
        self, cmd: crypto.VerifiedCommand, body: ListQuery, now: datetime
    ) -> Any:
        self._member_colony(cmd, body.colonyname)
        found = []
        for graph in reversed(self._graphs(body.colonyname)):
            if body.state is None or body.state < 0 or graph.state == body.state:
                found.append(graph.to_model())
                if len(found) >= body.count:
                    break
        return encode(found)

    async def _op_rerun_processgraph(
        self, cmd: crypto.VerifiedCommand, body: GraphRef, now: datetime
    ) -> Any:
        failed = self._readable_graph(cmd, self._graph_id_by_graphid(body.processgraphid))
        colony = self._colony(failed.colonyname)
        graph = ProcessGraph.rerun_from_failed(
            failed,
            initiatorid=cmd.caller_id,
            initiatorname=self._name_of(colony, cmd.caller_id),
            **self._audit(cmd, now),
        )
        events = await self._save_new(graph)
        return encode(graph.to_model()), self._index_graph(graph, events)

    # --- cancel and remove

    async def _op_cancel_processgraph(
        self, cmd: crypto.VerifiedCommand, body: GraphRef, now: datetime
    ) -> Any:
        graph_id = self._graph_id_by_graphid(body.processgraphid)
        self._readable_graph(cmd, graph_id)
        _, effects = await self._change_graph(graph_id, lambda g: g.cancel(**self._audit(cmd, now)))
        return _EMPTY, effects

    async def _op_remove_processgraph(
        self, cmd: crypto.VerifiedCommand, body: GraphRef, now: datetime
    ) -> Any:
        graph_id = self._graph_id_by_graphid(body.processgraphid)
        self._readable_graph(cmd, graph_id)
        _, effects = await self._change_graph(graph_id, lambda g: g.remove(**self._audit(cmd, now)))
        return _EMPTY, effects

    async def _op_remove_process(
        self, cmd: crypto.VerifiedCommand, body: ProcessRef, now: datetime
    ) -> Any:
        graph_id = self._graph_id_of(body.processid)
        graph = self._readable_graph(cmd, graph_id)
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
        for graph in list(self._graphs(colony.name)):
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
        graph = self._aggregates[graph_id]
        assert isinstance(graph, ProcessGraph)
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
        graph = self._readable_graph(cmd, graph_id)
        logs = [
            Log(
                processid=event.processid,
                colonyname=graph.colonyname,
                executorname=event.executorname,
                message=event.message,
                timestamp=_unix_ns(event.timestamp),
            )
            for event in await self._events_of(graph_id)
            if isinstance(event, LogAdded) and event.processid == body.processid
        ]
        logs = [log for log in logs if log.timestamp > body.since]
        return encode(logs[-body.count :] if body.count > 0 else logs)

    # ------------------------------------------------------------------ timers

    def next_deadline_in(self, now: float) -> float:
        """Seconds until the next deadline (a large number when there is none)."""
        with self._index_lock:
            return self._timers[0].at - now if self._timers else 3600.0

    async def fire_deadlines(self, now: float) -> Effects:
        """Expires every process whose execution or waiting deadline has come."""
        effects = Effects()
        when = datetime.fromtimestamp(now, UTC)
        while True:
            with self._index_lock:
                if not self._timers or self._timers[0].at > now:
                    return effects
                timer = heapq.heappop(self._timers)
            body = {"processid": timer.processid, "attempt": timer.attempt, "kind": timer.kind}
            sealed = crypto.seal(f"expire_{timer.kind}", body, self.engine_prvkey, now)
            audit = {"now": when, "actor": self.engine_id, "command": sealed}

            def expire(
                graph: ProcessGraph, timer: _Timer = timer, audit: dict[str, Any] = audit
            ) -> None:
                if timer.kind == "exec":
                    graph.expire_exec(timer.processid, timer.attempt, **audit)
                else:
                    graph.expire_wait(timer.processid, **audit)

            try:
                _, more = await self._change_graph(timer.graph_id, expire)
            except (Conflict, NotFound):
                continue  # stale timer: the process moved on
            except PersistenceError as error:
                log.error("could not record a timeout: %s", error)
                with self._index_lock:
                    heapq.heappush(self._timers, _Timer(now + 1.0, *_timer_rest(timer)))
                continue
            effects.merge(more)

    # ------------------------------------------------------------------ helpers

    def executor_types(self) -> set[Key]:
        """(colony, executor type) of every APPROVED executor."""
        return {
            (a.name, e.executortype)
            for a in list(self._aggregates.values())
            if isinstance(a, Colony) and not a.removed
            for e in a.executors.values()
            if e.state == 1
        }

    def _audit(self, cmd: crypto.VerifiedCommand, now: datetime) -> dict[str, Any]:
        return {"now": now, "actor": cmd.caller_id, "command": msgspec.json.encode(cmd.command)}

    def _require_server_owner(self, cmd: crypto.VerifiedCommand) -> None:
        if cmd.caller_id != self.server_id:
            raise Forbidden("only the server owner can do this")

    def _colony(self, colonyname: str) -> Colony:
        colony = self._aggregates.get(colony_aggregate_id(colonyname))
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

    def _graphs(self, colonyname: str) -> list[ProcessGraph]:
        """The colony's graphs not removed, oldest first."""
        with self._index_lock:
            ids = list(self._graphs_of_colony.get(colonyname, ()))
        graphs = [self._aggregates[graph_id] for graph_id in ids]
        return [g for g in graphs if isinstance(g, ProcessGraph) and not g.removed]

    def _graph_id_of(self, processid: str) -> str:
        with self._index_lock:
            graph_id = self._graph_of_process.get(processid)
        if graph_id is None:
            raise NotFound(f"process {processid} does not exist")
        return graph_id

    def _graph_id_by_graphid(self, processgraphid: str) -> str:
        for colonyname in list(self._graphs_of_colony):
            graph_id = graph_aggregate_id(colonyname, processgraphid)
            if graph_id in self._aggregates:
                return graph_id
        raise NotFound(f"process graph {processgraphid} does not exist")

    def _readable_graph(self, cmd: crypto.VerifiedCommand, graph_id: str) -> ProcessGraph:
        graph = self._aggregates.get(graph_id)
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
        recorder = self.recorder
        assert isinstance(recorder, JetStreamApplicationRecorder)
        self._log = recorder.log.rebound(nc)

    async def _save(self, aggregate: AuditedAggregate) -> list[AuditedEvent]:
        """Appends the aggregate's pending events to the log (atomically)."""
        pending: list[AuditedEvent] = list(aggregate.collect_events())  # type: ignore[arg-type]
        recorder = self.recorder
        assert isinstance(recorder, JetStreamApplicationRecorder)
        stored = [self.mapper.to_stored_event(event) for event in pending]
        await self._log.append(recorder.entries_for(stored))
        return pending

    async def _reload(self, aggregate_id: str) -> AuditedAggregate | None:
        """The aggregate as the log has it (after a refused or failed write)."""
        aggregate: AuditedAggregate | None = None
        for event in await self._events_of(aggregate_id):
            aggregate = event.mutate(aggregate)
        return aggregate

    async def _events_of(self, aggregate_id: str) -> list[AuditedEvent]:
        recorder = self.recorder
        assert isinstance(recorder, JetStreamApplicationRecorder)
        messages = await self._log.read_subject(recorder.subject_for(aggregate_id))
        events = []
        for message in messages:
            envelope = recorder.connection.trusted(message)
            if envelope is None:
                continue
            event = self._decode(to_notification(envelope, message.sequence))
            if event is not None:
                events.append(event)
        return events

    async def _save_new(self, aggregate: AuditedAggregate) -> list[AuditedEvent]:
        async with self._lock(aggregate.id):
            events = await self._save(aggregate)  # IntegrityError if it exists
            self._aggregates[aggregate.id] = aggregate
            return events

    async def _change(
        self, aggregate_id: str, kind: type[A], decide: Callable[[A], None]
    ) -> tuple[A, list[AuditedEvent]]:
        """Runs ``decide`` on the aggregate under its lock and saves what it triggered.

        If saving fails the in-memory aggregate is reloaded from the log, so a refused
        write leaves no trace in memory either.
        """
        async with self._lock(aggregate_id):
            aggregate = self._aggregates.get(aggregate_id)
            if not isinstance(aggregate, kind):
                what = "colony" if kind is Colony else "process graph"
                name = aggregate_id.split(".")[0 if kind is Colony else -1]
                raise NotFound(f"{what} {name!r} does not exist")
            decide(aggregate)  # a DomainError triggers nothing
            try:
                events = await self._save(aggregate)
            except BaseException:
                reloaded = await self._reload(aggregate_id)
                if reloaded is not None:
                    self._aggregates[aggregate_id] = reloaded
                raise
            return aggregate, events

    async def _change_graph(
        self, graph_id: str, decide: Callable[[ProcessGraph], None]
    ) -> tuple[ProcessGraph, Effects]:
        graph, events = await self._change(graph_id, ProcessGraph, decide)
        return graph, self._index_graph(graph, events)

    def _index_graph(self, graph: ProcessGraph, events: list[AuditedEvent] | None) -> Effects:
        """Updates the derived indices after ``events`` (None: index the whole graph)."""
        effects = Effects()
        with self._index_lock:
            if events is None or any(e.originator_version == 1 for e in events):
                graphs = self._graphs_of_colony.setdefault(graph.colonyname, [])
                if graph.id not in graphs:
                    graphs.append(graph.id)
                for processid in graph.nodes:
                    self._graph_of_process[processid] = graph.id
            # Ordered (a dict): processes made ready together keep the event's order.
            touched: dict[str, None] = dict.fromkeys(graph.nodes) if events is None else {}
            for event in events or ():
                child = getattr(event, "child", None)
                if child is not None:
                    self._graph_of_process[child["processid"]] = graph.id
                touched.update(dict.fromkeys(r["processid"] for r in getattr(event, "ready", ())))
                event_process: str | None = getattr(event, "processid", None)
                if event_process:
                    touched[event_process] = None
                touched.update(dict.fromkeys(getattr(event, "cancelled", ())))
                if isinstance(event, GraphRemoved | GraphCancelled):
                    touched.update(dict.fromkeys(graph.nodes))
            for processid in touched:
                node = graph.nodes[processid]
                key = (graph.colonyname, node.spec.conditions.executortype)
                if node.is_ready and not graph.removed:
                    assert node.readytime is not None
                    newly = processid not in self.ready
                    self.ready.add(
                        key,
                        processid,
                        graph.id,
                        node.attempt,
                        node.spec.priority,
                        node.readytime.timestamp(),
                        tuple(node.spec.conditions.executornames),
                    )
                    if newly and events is not None:
                        effects.ready.append(key)
                else:
                    self.ready.discard(processid)
                if events is not None and node.state in _ENDED:
                    effects.ended.append((graph.colonyname, processid))
            if graph.removed:
                return effects
            for processid in touched:  # only what this event touched: no scan of the graph
                node = graph.nodes[processid]
                if node.is_ready and node.waitdeadline is not None:
                    timer = _Timer(
                        node.waitdeadline.timestamp(), processid, graph.id, node.attempt, "wait"
                    )
                elif node.is_running and node.execdeadline is not None:
                    timer = _Timer(
                        node.execdeadline.timestamp(), processid, graph.id, node.attempt, "exec"
                    )
                else:
                    continue
                heapq.heappush(self._timers, timer)
        return effects


def _unix_ns(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000) * 1000


def _timer_rest(timer: _Timer) -> tuple[str, str, int, str]:
    return timer.processid, timer.graph_id, timer.attempt, timer.kind


__all__ = ["ColoniesApp", "Effects", "Outcome"]
