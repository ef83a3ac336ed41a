"""The engine's command handling: an eventsourcing application over the domain aggregates.

:meth:`ColoniesApp.handle` takes one signed command (the exact bytes a client sent),
checks its signature, freshness and size, waits until this replica has applied the log
as far as the client has seen, answers a retry of a command already applied with the
original reply, and otherwise runs the op's handler (:data:`.ops.HANDLERS`). The answer
is an :class:`Outcome`: the reply and the effects the service publishes (work tickets,
end notifications). A refused command writes nothing.

The parts, each in its own module:

- :mod:`.state`: the state derived from the log (aggregates, indices, deadlines);
- :mod:`.follower`: the rebuild at start and the follower that applies every replica's
  events;
- :mod:`.aggregates`: lookups, loading and changing aggregates (a decision on a copy,
  installed once the log has it; optimistic concurrency against other replicas);
- :mod:`.ops`: one typed handler per op;
- :mod:`.timers`: deadlines and memory sweeps;
- :mod:`.replies`: the commands already seen (replay guard, replies to retries);
- :mod:`.service`: the NATS service around all of this.

Commands run as coroutines on the engine's event loop: the decision is synchronous
domain code, and the resulting events are appended by the store's
:class:`~colonies_es.store.jetstream.JetStreamLog` bound to the engine's own connection
(:meth:`ColoniesApp.attach`), which spares two thread hand-offs per command.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from eventsourcing.application import Application
from eventsourcing.persistence import DataError, IntegrityError, PersistenceError
from eventsourcing.utils import Environment, EnvType
from nats.aio.client import Client as NATS

from colonies_es import colonyos, crypto
from colonies_es.domain import (
    AuditedAggregate,
    ChildrenAdded,
    Colony,
    DomainError,
    NothingCame,
    ProcessAssigned,
    ProcessGraph,
)
from colonies_es.engine.aggregates import Aggregates, deciding, last_written
from colonies_es.engine.checkpoint import CheckpointStore, CheckpointWriter
from colonies_es.engine.counters import ReplicaCounters
from colonies_es.engine.follower import Follower
from colonies_es.engine.ops import EMPTY, HANDLERS
from colonies_es.engine.ops.work import ready_hint
from colonies_es.engine.quotas import QuotaExceeded, Quotas
from colonies_es.engine.ready import Key, ReadyIndex
from colonies_es.engine.replies import UNSURE, Applied, Decided, SeenCommands
from colonies_es.engine.state import Effects, EngineState
from colonies_es.engine.timers import Timers
from colonies_es.models import encode
from colonies_es.protocol import NOTHING_READY, Claim, CloseProcess, NextProcess
from colonies_es.store import JetStreamApplicationRecorder

log = logging.getLogger("colonies.engine")


@dataclass
class Outcome:
    """The reply to a command (status 200 with a JSON body, or an error), its effects,
    and the stream sequence the reply reflects (what it wrote, or what was applied)."""

    status: int
    body: bytes = b""
    message: str = ""
    effects: Effects = field(default_factory=Effects)
    sequence: int = 0
    nothing_came: bool = False
    """A 404 that says the request waited for something and none came
    (:class:`~colonies_es.domain.NothingCame`), not that something it names is missing."""
    unsure: bool = False
    """A 503 whose write may have been stored: the log failed or did not answer."""


_READ_AGAIN = 0
"""The status of a remembered reply meaning "a read: answer its retry by reading again"."""
_READ_AGAIN_MARK = Decided(_READ_AGAIN, b"", "", 0)
_UNSURE_MARK = Decided(UNSURE, b"", "", 0)

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
        """Opens the store and rebuilds the state from the whole log (this blocks).

        When that fails (NATS or JetStream not answering, a stream configured too weakly),
        the store's connection and its loop thread are closed before the error goes on:
        the engine's start-up tries again, and each try would otherwise leave both."""
        try:
            self._build(env, server_id, engine_prvkey, max_skew, quotas)
        except BaseException:
            factory = self.__dict__.get("factory")  # missing: it failed before a connection
            if factory is not None:
                factory.close()
            raise

    def _build(
        self,
        env: EnvType | None,
        server_id: str,
        engine_prvkey: str,
        max_skew: float,
        quotas: Quotas | None,
    ) -> None:
        super().__init__(env)
        recorder = self.recorder
        if not isinstance(recorder, JetStreamApplicationRecorder):
            raise TypeError("the engine needs the JetStream store (PERSISTENCE_MODULE)")
        self.quotas = quotas or Quotas()
        self.server_id = server_id
        self.engine_prvkey = engine_prvkey
        self.engine_id = crypto.id_from_private_key(engine_prvkey)
        self.max_skew = max_skew
        self.seen = SeenCommands(max_skew)
        self.state = EngineState()
        self.aggregates = Aggregates(
            self.state, recorder, self.mapper, self.seen, server_id=server_id, quotas=self.quotas
        )
        self.follower = Follower(self.aggregates)
        self.timers = Timers(self.aggregates, engine_prvkey)
        self._in_flight: dict[str, asyncio.Future[Outcome]] = {}
        self.follower.rebuild()

    @property
    def counters(self) -> ReplicaCounters:
        """What coordinating with other replicas cost (:mod:`.counters`)."""
        return self.aggregates.counters

    @property
    def ready(self) -> ReadyIndex:
        """The ready processes (part of :attr:`state`)."""
        return self.state.ready

    def executor_types(self) -> set[Key]:
        """(colony, executor type) of every APPROVED executor."""
        return self.state.executor_types()

    def attach(self, nc: NATS) -> None:
        """Writes from now on go through ``nc`` on the caller's event loop (the engine's),
        without crossing to the store's loop thread. Heads learnt at rebuild are kept."""
        self.aggregates.log = self.aggregates.log.rebound(nc)
        self.aggregates.nc = nc

    def checkpoint_writer(self, nc: NATS, every: int, interval: float) -> CheckpointWriter:
        """What writes this replica's checkpoints through ``nc`` (:mod:`.checkpoint`)."""
        store = CheckpointStore.of_log(nc, self.aggregates.store, self.mapper.cipher)
        return CheckpointWriter(
            store, self.state, self.seen, self.engine_id, every=every, interval=interval
        )

    async def catch_up_with_log(self) -> int:
        """Applies the log after the start-up's checkpoint up to the log's current end
        (:meth:`.Follower.catch_up_with_log`); returns how many events."""
        return await self.follower.catch_up_with_log()

    async def follow(self) -> None:
        """Applies every event any replica appends, forever (:class:`.Follower`)."""
        await self.follower.follow()

    # ------------------------------------------------------------------ commands

    async def handle(
        self,
        op: str,
        data: bytes,
        now: float,
        after: int = 0,
        publish: Callable[[Effects, int], Awaitable[None]] | None = None,
    ) -> Outcome:
        """Decides one signed command; never raises (errors become an Outcome).

        ``after`` is the highest stream sequence the client has seen: the command waits
        (at most :data:`CATCH_UP_WAIT` seconds, then 503) until this replica has applied
        the log that far. A retry of a command already decided (here or, through the
        log, on another replica) gets the original reply.

        A close that carries a sealed claim (``CloseProcess.claim``) is decided first;
        once it succeeded, the claim is decided as the command it is (its own signature,
        role, replay key and event) and the reply is a :class:`NextProcess`. The claim's
        signature is checked while the close waits for the log (a task of its own: the
        engine's one thread is otherwise idle then), and the requests held for the
        closed process (``wait_process``) are answered before the close goes on
        (``Aggregates.work_first``), so before the claim is decided: both keep the
        claim off the critical path of whoever waits for the result. The claim
        may be held (its ``wait``) until work comes: ``publish`` (the service's) is then
        given the close's effects and sequence before it is decided, so that the end
        notification and the tickets of what the close made ready do not wait for it.
        """
        opened = self._open(op, data, now)
        if isinstance(opened, Outcome):
            return opened
        command, body = opened
        claim = body.claim if isinstance(body, CloseProcess) else b""
        if not claim:
            return await self._handle_opened(command, body, now, after)
        opening = asyncio.get_running_loop().create_task(self._open_soon("claim", claim, now))
        try:
            outcome = await self._handle_opened(command, body, now, after)
        finally:
            opened_claim = await opening
        if outcome.status != 200:
            return outcome
        if publish is not None:
            await publish(outcome.effects, outcome.sequence)
            outcome.effects = Effects()
        claimed = (
            opened_claim
            if isinstance(opened_claim, Outcome)
            else await self._handle_opened(*opened_claim, now, after)
        )
        if claimed.status == 200 and not isinstance(opened_claim, Outcome):
            claim_command, claim_body = opened_claim
            if isinstance(claim_body, Claim) and claim_body.prefetch:  # a NextProcess already
                reply = claimed.body
            else:
                more = ready_hint(self.aggregates, claim_command.caller_id, claim_body.colonyname)
                reply = b'{"next":%b,"more":%d}' % (claimed.body, more)
        else:
            refused = "" if claimed.status == 404 else f"{claimed.status}: {claimed.message}"
            reply = encode(NextProcess(refused=refused))
        outcome.effects.merge(claimed.effects)
        return Outcome(
            200, reply, effects=outcome.effects, sequence=max(outcome.sequence, claimed.sequence)
        )

    def _open(
        self, op: str, data: bytes, now: float
    ) -> tuple[crypto.VerifiedCommand, Any] | Outcome:
        """The command sent to ``op`` with its decoded body, once its size, signature and
        freshness checked out (nothing decided yet); else the refusal."""
        try:
            self.quotas.check_command_size(op, len(data))
            if op == colonyos.ENGINE_OP:  # a ColonyOS client's envelope, via the gateway
                command = colonyos.open_envelope(data, now)  # nothing to guard: see colonyos
                op = command.op
            else:
                command = crypto.open_command(data, now, self.max_skew)
                if command.op != op:
                    raise crypto.CommandRejected(400, f"command for {command.op!r} sent to {op!r}")
            return command, command.decode_body(HANDLERS[op].body)
        except (crypto.CommandRejected, QuotaExceeded) as error:  # before any decision
            return Outcome(error.status, message=error.message, sequence=self.state.reached)

    async def _open_soon(
        self, op: str, data: bytes, now: float
    ) -> tuple[crypto.VerifiedCommand, Any] | Outcome:
        """:meth:`_open` in a task of its own, started before the close it came with is
        decided. Its first step only yields: the close's append, published in the step
        that started this task, is then written by nats-py's flusher (woken by that
        publish, so queued after this task's first step) before the signature is
        checked, instead of waiting for the check."""
        await asyncio.sleep(0)
        return self._open(op, data, now)

    async def _handle_opened(
        self, command: crypto.VerifiedCommand, body: Any, now: float, after: int
    ) -> Outcome:
        """:meth:`handle` for one opened command (:meth:`_open`): a copy of a command
        being handled here waits for that one's outcome; otherwise it is decided once."""
        key = command.replay_key
        running = self._in_flight.get(key)
        if running is not None:  # a copy (a retry) of a command being handled here
            original = await asyncio.shield(running)
            return dataclasses.replace(original, effects=Effects())  # published once
        # Registered before the first await: a copy arriving meanwhile waits for this one.
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            outcome = await self._handle_once(command.op, command, body, now, after)
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
        if self.state.applied < after:
            self.counters.after_waits += 1
            if not await self.state.wait_applied(after, CATCH_UP_WAIT):
                self.counters.behind += 1
                return self._behind(after)
        key = command.replay_key
        known = self.seen.replies.get(key)
        if isinstance(known, Decided) and known.status == _READ_AGAIN:
            outcome = await self._decide(op, command, body, now, check_replay=False)
            outcome.sequence = outcome.sequence or self.state.reached
            return outcome
        if isinstance(known, Decided) and known.status == UNSURE:
            # Its first try's append went unanswered: once this replica has applied the
            # log to its end, the event's Applied mark answers if it was stored.
            end = await self._log_end()  # not known yet: the mark stays for the next retry
            if not end:
                return Outcome(503, message="the event log is unavailable: try again")
            if not await self.state.wait_applied(end, CATCH_UP_WAIT):
                return self._behind(end)
            known = self.seen.replies.get(key)
            if isinstance(known, Applied):
                return await self._replay(known, body)
            outcome = await self._decide(op, command, body, now, check_replay=False)
        elif known is not None:
            return await self._replay(known, body)
        else:
            outcome = await self._decide(op, command, body, now, check_replay=True)
        if (
            outcome.status == 404
            and not outcome.sequence  # it wrote nothing
            and not outcome.nothing_came  # a claim that found no work: it would wait again
            and await self._caught_up_anew()
        ):
            # Not found here, but this replica was behind the log: what the command
            # names (a colony, an executor, a process) may have been made on another
            # replica a moment ago (a client that has seen nothing yet sends no
            # Colonies-After). Decided again, once.
            outcome = await self._decide(op, command, body, now, check_replay=False)
        elif outcome.status == 409 and not outcome.sequence:
            # Lost to a concurrent write: maybe this very command's, decided by another
            # replica whose reply never reached the client (a submission names the graph
            # after its command, so deciding it twice conflicts). Once this replica has
            # applied the log, it answers as a retry of that decision.
            await self._caught_up_anew()
            applied = self.seen.replies.get(key)
            if isinstance(applied, Applied):
                return await self._replay(applied, body)
        wrote = outcome.sequence > 0
        if not wrote:
            outcome.sequence = self.state.reached
        if outcome.unsure:  # stored or not: a retry asks the log (unless it already said)
            if not isinstance(self.seen.replies.get(key), Applied):
                self.seen.replies.remember(key, _UNSURE_MARK)
        elif outcome.status != 200:  # refused (a write's success is marked Applied)
            self.seen.replies.remember(key, Decided(outcome.status, b"", outcome.message, 0))
        elif not wrote:  # a read: its retry reads again
            self.seen.replies.remember(key, _READ_AGAIN_MARK)
        return outcome

    async def _decide(
        self, op: str, command: crypto.VerifiedCommand, body: Any, now: float, check_replay: bool
    ) -> Outcome:
        """Runs the op's handler; every failure becomes a one-line refusal."""
        last_written.set(0)
        deciding.set(command)
        try:
            if check_replay:
                self.seen.guard.check_and_remember(command.replay_key, command.ts, now)
            handler = HANDLERS[op].handle
            reply = await handler(self.aggregates, command, body, datetime.fromtimestamp(now, UTC))
        except crypto.CommandRejected as error:
            return Outcome(error.status, message=error.message)
        except DomainError as error:
            return Outcome(
                error.status,
                message=error.message,
                sequence=last_written.get(),
                nothing_came=isinstance(error, NothingCame),
            )
        except IntegrityError:
            return Outcome(409, message="a concurrent change kept winning: try again")
        except DataError as error:  # the event cannot be stored as it is: never retry
            return Outcome(400, message=f"{op} refused: {error}")
        except PersistenceError as error:
            log.error("%s: the event log failed: %s", op, error)
            return Outcome(503, message=f"the event log is unavailable: {error}", unsure=True)
        except Exception:
            log.exception("%s failed", op)
            return Outcome(500, message=f"internal error while handling {op}")
        return Outcome(200, body=reply.body, effects=reply.effects, sequence=last_written.get())

    async def _caught_up_anew(self) -> bool:
        """True when this replica had not applied the log up to its end and now has (it
        waits at most :data:`CATCH_UP_WAIT` seconds); False when it was up to date, or
        could not catch up in time."""
        end = await self._log_end()
        if self.state.applied >= end:
            return False
        self.counters.after_waits += 1
        return await self.state.wait_applied(end, CATCH_UP_WAIT)

    def _behind(self, after: int) -> Outcome:
        return Outcome(
            503,
            message=f"this engine has not caught up with the log (at {self.state.applied}, "
            f"the client has seen {after}): try again",
        )

    async def _log_end(self) -> int:
        """The stream's last event sequence (one request to the server)."""
        aggregates = self.aggregates
        try:
            last = await aggregates.log.last_message(aggregates.store.events_filter)
        except PersistenceError:
            return 0
        return 0 if last is None else last.sequence

    async def _replay(self, known: Decided | Applied, body: Any) -> Outcome:
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
        """The reply of a command another replica applied, from the aggregate now.

        What it names is read as it is now: for a submission, a child, an attribute,
        a colony or an executor that is the same thing with a later state (the caller
        goes on by its id), but a claim's assignment may have ended and its process
        been given to another executor since (:meth:`_reply_to_claim`)."""
        aggregate = await self.aggregates.load(known.aggregate_id)
        if known.op == "claim":
            return await self._reply_to_claim(known, body, aggregate)
        if isinstance(aggregate, ProcessGraph):
            if known.op == "submit_func_spec":
                return encode(aggregate.process_model(aggregate.rootprocessids[0], shared=True))
            if known.op in ("submit_workflow", "rerun_processgraph"):
                return encode(aggregate.to_model())
            if known.op == "add_child":
                return encode(aggregate.process_model(known.subject, shared=True))
            if known.op == "add_children":  # the ids its event added, read back
                event = await self.aggregates.event_at(known.aggregate_id, known.sequence)
                if isinstance(event, ChildrenAdded):
                    return encode([child["processid"] for child in event.children])
            if known.op == "add_attribute":
                processid, _, attributeid = known.subject.partition(":")
                model = aggregate.process_model(processid)
                return encode(next(a for a in model.attributes if a.attributeid == attributeid))
        if isinstance(aggregate, Colony):
            if known.op == "add_colony":
                return encode(aggregate.to_model())
            if known.op == "add_executor":
                return encode(aggregate.executor_model(body.executor.executorname))
        return EMPTY

    async def _reply_to_claim(
        self, known: Applied, body: Any, graph: AuditedAggregate | None
    ) -> bytes:
        """The reply to a retried claim: the process its own event assigned (read back
        from the log at the mark's sequence, one read: attempt and executor), as it is now, while
        that assignment is the process's live one (the same attempt, still RUNNING on
        the same executor).

        Once that attempt is over (it overran its ``maxexectime``, was failed or
        cancelled, its graph removed) the claimer's reply never came, and the process
        may be at a later attempt held by another executor: answering with the process
        as it is now would hand the claimer that other attempt to run. The retry is
        answered as a claim that found nothing (NothingCame, :data:`NOTHING_READY`): the
        executor claims again, and the attempt it never saw is nobody's to report."""
        assigned = await self.aggregates.event_at(known.aggregate_id, known.sequence)
        if not isinstance(assigned, ProcessAssigned) or not isinstance(graph, ProcessGraph):
            raise NothingCame(f"{NOTHING_READY} for this claim: the process it took is gone")
        node = graph.process(known.subject)
        if not (
            node.is_running
            and node.attempt == assigned.attempt
            and node.assignedexecutorid == assigned.executorid
        ):
            log.info(  # whole ids: a process id begins with its graph's
                "a retried claim of executor %s: the attempt it took (%d of %s, process %s) "
                "is over; answered that nothing is ready",
                assigned.executorid,
                assigned.attempt,
                node.nodename,
                known.subject,
            )
            raise NothingCame(
                f"{NOTHING_READY} for this claim any more: the attempt it took (attempt "
                f"{assigned.attempt} of process {known.subject}) ended before it was sent again"
            )
        process = graph.process_model(known.subject, shared=True)
        if isinstance(body, Claim) and body.prefetch:
            return encode(NextProcess(next=process))
        return encode(process)


__all__ = ["ColoniesApp", "Effects", "Outcome"]
