"""The aggregates a decision reads and changes: memory first, then the log, under locks.

:class:`Aggregates` is what every op handler (:mod:`colonies_es.engine.ops`) and the
timers (:mod:`.timers`) work with. It gives

- lookups that answer with one clear :class:`~colonies_es.domain.DomainError` (a colony
  that does not exist, a caller that is not a member, a process no graph holds);
- :meth:`Aggregates.load`: an aggregate from memory, or an evicted (ended) graph from its
  own subject in the log;
- :meth:`Aggregates.change` / :meth:`Aggregates.save_new`: a decision taken on a copy of
  the aggregate under its lock, appended to the log (optimistic concurrency in the
  JetStream store), and installed in :class:`~colonies_es.engine.state.EngineState` only
  once the log has acknowledged it. On a conflict (another replica wrote first) the
  aggregate catches up from its subject (:meth:`Aggregates.catch_up`) and the decision is
  taken again, up to :data:`CONFLICT_RETRIES` times.

Chained writes (:class:`_Writers`): while a decision's one event is on its way to the log,
another command on the same aggregate need not wait for the acknowledgement. It decides
on the in-flight decision's copy and sends its own one event chained to it
(:meth:`JetStreamLog.append` with ``after``: stored only if the message before it is the
stream's last). Each is installed in order, once the log has it and the one before it is
installed; each command is still answered only after its own event is stored. A chained
write that the server refuses (the one before it was refused, or another message came in
between) wrote nothing: its command is decided again the ordinary way. The aggregate's
lock stays held until the last write of the chain is installed, so the follower and
everything else that waits for the lock sees the same as before. Only on a stream of one
replica (:attr:`JetStreamLog.chainable`); on a replicated one an atomic batch is the
cheap way (DESIGN.md), not built yet.

The last stream sequence the current command wrote is kept in :data:`last_written` (a
context variable: each command is its own task), for the reply's ``Colonies-Sequence``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import weakref
from collections import Counter
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
from eventsourcing.persistence import (
    DataError,
    IntegrityError,
    Mapper,
    Notification,
    OperationalError,
)
from nats.aio.client import Client as NATS

from colonies_es import crypto
from colonies_es.domain import (
    AuditedAggregate,
    AuditedEvent,
    Colony,
    Forbidden,
    NotFound,
    ProcessGraph,
    colony_aggregate_id,
    graph_aggregate_id,
    graph_id_of_process,
    is_id,
)
from colonies_es.engine.counters import ReplicaCounters
from colonies_es.engine.held import HeldClaims, ProcessEnds, woken_claims
from colonies_es.engine.quotas import Quotas
from colonies_es.engine.ready import Key, ReadyProcess
from colonies_es.engine.replies import SeenCommands
from colonies_es.engine.state import Effects, EngineState, NotNext
from colonies_es.store import JetStreamApplicationRecorder
from colonies_es.store.codec import to_notification
from colonies_es.store.jetstream import ChainBroken, JetStreamLog, StoredMessage

__all__ = [
    "CONFLICT_RETRIES",
    "Aggregates",
    "audit",
    "deciding",
    "last_written",
    "replay_events",
]

log = logging.getLogger("colonies.engine")

A = TypeVar("A", bound=AuditedAggregate)

DOMAIN_TOPIC_PREFIX = "colonies_es.domain."
"""Only event classes under this module are ever instantiated from the log."""

READ_REPLY_FIELDS = 4096
"""Bytes kept, in a read reply carrying one event, for everything but its payload."""

CONFLICT_RETRIES = 5
"""Times a decision is taken again after another replica changed the aggregate first."""

deciding: ContextVar[crypto.VerifiedCommand | None] = ContextVar("deciding", default=None)
"""The command the current task is deciding (set by the application before its handler
runs): the command the events it writes carry, noted without decoding them again."""

CHAIN_LIMIT = 16
"""Writes that may join one aggregate's chain (:class:`_Writers`) before it closes:
commands waiting for the aggregate's lock are served after at most that many."""

INSTALLED_LIMIT = 100_000
"""Sequences kept in :attr:`Aggregates.installed` at most (a follower far behind)."""

last_written: ContextVar[int] = ContextVar("last_written", default=0)
"""The last stream sequence the command being decided (this task's) has written."""


class _Link:
    """One write of a chain: the aggregate as it will be once the write is installed,
    the name of its message, and its outcome (True once installed, False when it
    wrote nothing or its outcome is not known)."""

    __slots__ = ("draft", "message_id", "outcome")

    def __init__(self, draft: AuditedAggregate) -> None:
        self.draft = draft
        self.message_id = uuid.uuid4().hex
        self.outcome: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def settle(self, installed: bool) -> None:
        if not self.outcome.done():
            self.outcome.set_result(installed)


class _Writers:
    """The writes in flight on one aggregate while a command of this replica holds its
    lock: the lock is released when the last of them (``holders``) is done."""

    __slots__ = ("holders", "joined", "lock", "tail")

    def __init__(self, lock: asyncio.Lock) -> None:
        self.lock = lock
        self.holders = 1
        self.joined = 0
        self.tail: _Link | None = None
        """The last write sent: the next one may chain to it while its outcome is open."""

    def joinable(self) -> _Link | None:
        tail = self.tail
        if tail is None or tail.outcome.done() or self.joined >= CHAIN_LIMIT:
            return None
        return tail


class Aggregates:
    """The engine's aggregates for deciding commands (see the module doc)."""

    def __init__(
        self,
        state: EngineState,
        store: JetStreamApplicationRecorder,
        mapper: Mapper[Any],
        seen: SeenCommands,
        *,
        server_id: str,
        quotas: Quotas,
    ) -> None:
        self.state = state
        self.store = store
        self.log: JetStreamLog = store.log
        """Where writes go; :meth:`ColoniesApp.attach` rebinds it to the engine's loop."""
        self.mapper = mapper
        self.seen = seen
        self.server_id = server_id
        self.quotas = quotas
        self.counters = ReplicaCounters()
        """What coordinating with other replicas cost (:mod:`.counters`)."""
        self.installed: set[int] = set()
        """Stream sequences of events this replica wrote and installed that the follower
        has not reached yet: it skips them by sequence, without decoding or checking
        their seal (:meth:`Follower._follow_one`)."""
        self.claiming: set[str] = set()
        """Ready processes a claim of this replica is assigning right now: a concurrent
        claim takes the next best instead of queueing for the same one."""
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()  # a lock lives while a command holds or awaits it
        )
        self._writers: dict[str, _Writers] = {}
        """Per aggregate whose lock a :meth:`change` holds: its writes in flight."""
        self._spared_wakes: Counter[Key] | None = None
        """While a decision is installed: the wakes per key its offers made already."""
        self.claims = HeldClaims()
        """Claims this replica holds while nothing is ready for their executor."""
        self.ends = ProcessEnds()
        """``wait_process`` requests this replica holds until their process ends."""
        state.ready.on_ready = self._wake_claim
        state.on_ended = self.ends.ended
        self.nc: NATS | None = None
        """The engine's connection once attached: where it asks a claimer whether its
        held claim still waits (:func:`colonies_es.engine.ops.work.claim`)."""
        self.requests_in_hand = 0
        """Requests the service has received and not answered yet, held ones included
        (kept by ``Engine._start`` / ``Engine._served``): with :attr:`HeldClaims.asleep`
        and :attr:`ProcessEnds.asleep`, whether the engine has other work than the
        command at hand (:meth:`work_first`)."""

    def others_in_hand(self, woken: int = 0) -> int:
        """Requests in hand besides the caller's own, the ``woken`` claims it woke, and
        the claims and ``wait_process`` requests held asleep (nothing to do for them)."""
        return self.requests_in_hand - 1 - woken - self.claims.asleep - self.ends.asleep

    async def work_first(self, effects: Effects) -> None:
        """Called by a command once its change is installed (``effects``: what it
        caused), before it builds its reply: who runs next.

        - *Held waits first*: when it ended processes that ``wait_process`` requests
          held here wait for, they answer before it goes on (one step of the loop): a
          waiting client's result is the end of a round trip, this command's reply
          (an executor's close) is not.
        - *Work first where it pays*: when it woke claims held here (held.py) and the
          engine has other requests in hand (a busy engine: at throughput, in a
          fan-out), it yields once, so that the woken claims whose writes are
          acknowledged install and answer (executors are fed) before it goes on.
        - *Reply first* otherwise: when the woken claims are all the engine has
          besides this command (a lone submission, a diamond's step), it answers at
          once. Its reply goes out with the woken claim's (written at once, held.py)
          when that claim's acknowledgement came in the same read, else with the next
          flush. Its caller's next request (a ``wait_process``) then goes out while
          the executor works, instead of after the executor's work and competing with
          it for the CPU. Measured in DESIGN.md, "The engine's critical path", eighth
          session. Counted: ``work_first``, ``reply_first`` (:mod:`.counters`).

        The aggregate's lock is free by then (a woken claim on the same graph takes it)."""
        woken = woken_claims.get()
        waits = any(self.ends.awaited(processid) for _, processid in effects.ended)
        if woken:
            if self.others_in_hand(len(woken)) > 0:
                self.counters.work_first += 1
            else:
                self.counters.reply_first += 1
                if not waits:
                    return
        if woken or waits:
            await asyncio.sleep(0)

    def _wake_claim(self, key: tuple[str, str], executornames: tuple[str, ...]) -> None:
        """A process became ready: wake a claim held here that may take it (held.py),
        unless the decision being installed offered it to one already (:meth:`_write`)."""
        spared = self._spared_wakes
        if spared is not None and spared[key] > 0:
            spared[key] -= 1
            return
        self.claims.wake(key, executornames)

    # ------------------------------------------------------------------ lookups

    def colony(self, colonyname: str) -> Colony:
        """The colony (not removed), or NotFound."""
        colony = self.state.get(colony_aggregate_id(colonyname))
        if not isinstance(colony, Colony) or colony.removed:
            raise NotFound(f"colony {colonyname!r} does not exist")
        return colony

    def member_colony(
        self, cmd: crypto.VerifiedCommand, colonyname: str, allow_server_owner: bool = False
    ) -> Colony:
        """The colony, if the caller is a member (or, when allowed, the server owner)."""
        colony = self.colony(colonyname)
        if not colony.is_member(cmd.caller_id) and not (
            allow_server_owner and cmd.caller_id == self.server_id
        ):
            raise Forbidden(f"the caller is not a member of colony {colonyname!r}")
        return colony

    def require_server_owner(self, cmd: crypto.VerifiedCommand) -> None:
        if cmd.caller_id != self.server_id:
            raise Forbidden("only the server owner can do this")

    async def graph_id_of(self, processid: str) -> str:
        """The aggregate id of the graph holding the process, or NotFound.

        Memory answers for live work (a resident graph, one recently loaded, a legacy
        id: :meth:`EngineState.graph_of`), so claims and closes never read the log.
        Otherwise the process's id names its graph (``p + H(p)`` for ``p`` its first
        half, :func:`~colonies_es.domain.graph_id_of_process`), which is read from its
        own subject in each colony (few) until one holds the process: a crafted id,
        whose graph does not exist or does not hold it, finds nothing."""
        graph_id = self.state.graph_of(processid)
        if graph_id is not None:
            return graph_id
        processgraphid = graph_id_of_process(processid)
        if processgraphid is not None:
            for colonyname in self.state.colony_names():
                graph = await self.load(graph_aggregate_id(colonyname, processgraphid))
                if isinstance(graph, ProcessGraph) and processid in graph.nodes:
                    return graph.id
        raise NotFound(f"process {processid} does not exist")

    async def graph_id_by_graphid(self, processgraphid: str) -> str:
        """The aggregate id of the process graph with this (client-facing) id, or
        NotFound: memory first (every colony), then the graph's own subject in the log
        of each colony (few)."""
        if is_id(processgraphid):
            colonies = self.state.colony_names()
            for colonyname in colonies:
                graph_id = graph_aggregate_id(colonyname, processgraphid)
                if self.state.get(graph_id) is not None:
                    return graph_id
            for colonyname in colonies:
                graph_id = graph_aggregate_id(colonyname, processgraphid)
                if await self.load(graph_id) is not None:
                    return graph_id
        raise NotFound(f"process graph {processgraphid} does not exist")

    async def readable(self, cmd: crypto.VerifiedCommand, graph_id: str) -> ProcessGraph:
        """The graph, if it exists, is not removed and the caller may read it."""
        graph = await self.load(graph_id)
        if not isinstance(graph, ProcessGraph) or graph.removed:
            raise NotFound(f"process graph {graph_id.rsplit('.', 1)[-1]} does not exist")
        self.member_colony(cmd, graph.colonyname)
        return graph

    def live_graphs_newest_first(self, colonyname: str) -> list[ProcessGraph]:
        """The colony's resident graphs not removed (every graph that has not ended, and
        some that just did), newest first. Listings of ended graphs come from the read
        model (:mod:`.read_model`), which holds the whole history on disk."""
        graphs = list(reversed(self.state.resident_graphs(colonyname)))
        return sorted(graphs, key=lambda graph: graph.created_on, reverse=True)

    async def graph_ids_in_log(self, colonyname: str) -> list[str]:
        """The aggregate ids of every graph the log has of the colony (removed ones too),
        from the stream's subjects (JetStream stream info, page by page): what a command
        over the colony's whole history (``remove_all``) works through, one at a time."""
        base = self.store.subject_prefix
        subjects = await self.log.subjects(f"{base}.{colonyname}.graph.*")
        return [subject.removeprefix(f"{base}.") for subject in subjects]

    # ------------------------------------------------------------------ reading the log

    def subject_of(self, aggregate_id: str) -> str:
        return self.store.subject_for(aggregate_id)

    def decode(self, notification: Notification) -> AuditedEvent | None:
        """The domain event, or None for a foreign topic (never instantiated)."""
        if not notification.topic.startswith(DOMAIN_TOPIC_PREFIX):
            log.warning(
                "skipping event %s of foreign topic %r", notification.id, notification.topic
            )
            return None
        event = self.mapper.to_domain_event(notification)
        return event if isinstance(event, AuditedEvent) else None

    async def events_of(self, aggregate_id: str) -> list[tuple[AuditedEvent, int]]:
        """The aggregate's events from its own subject, with their stream sequences."""
        messages = await self.log.read_subject(self.store.subject_for(aggregate_id))
        events = []
        for message in messages:
            event = self._event_in(message)
            if event is not None:
                events.append((event, message.sequence))
        return events

    async def event_at(self, aggregate_id: str, sequence: int) -> AuditedEvent | None:
        """The aggregate's event stored at stream sequence ``sequence`` (one read), None
        when that sequence holds none of its events."""
        message = await self.log.read_at(self.store.subject_for(aggregate_id), sequence)
        return None if message is None else self._event_in(message)

    def _event_in(self, message: StoredMessage) -> AuditedEvent | None:
        """The event ``message`` holds, None when its seal or its kind is not trusted."""
        envelope = self.store.connection.trusted(message)
        if envelope is None:
            return None
        return self.decode(to_notification(envelope, message.sequence))

    async def load(self, aggregate_id: str, keep_head: bool = False) -> AuditedAggregate | None:
        """The aggregate from memory, or a graph that is not resident from its own
        subject (as far as the follower has applied the log; None when the subject has
        none), kept in the state's LRU for a while. Colonies are always resident.

        The log forgets what it learnt of the subject's head unless ``keep_head`` (the
        caller is about to change the graph): reading many ended graphs leaves nothing
        behind but the LRU."""
        found = self.state.get(aggregate_id)
        if found is not None:
            return found
        _colonyname, _, rest = aggregate_id.partition(".")
        kind, _, processgraphid = rest.partition(".")
        if kind != "graph" or not is_id(processgraphid):
            return None
        applied = self.state.applied
        events = await self.events_of(aggregate_id)
        graph = replay_events(event for event, seq in events if seq <= applied)
        found = self.state.get(aggregate_id)  # the follower may have revived it meanwhile
        if found is not None:
            return found
        if not keep_head:
            self.log.forget_head(self.subject_of(aggregate_id))
        if not isinstance(graph, ProcessGraph):
            return None
        self.state.keep_loaded(graph)
        return graph

    async def resident(self, aggregate_id: str) -> AuditedAggregate | None:
        """The aggregate, made resident again if it was an evicted graph (to change it)."""
        found = await self.load(aggregate_id, keep_head=True)
        if isinstance(found, ProcessGraph) and not self.state.is_resident(aggregate_id):
            self.state.revive(found)
        return found

    async def catch_up(self, aggregate_id: str) -> None:
        """Brings one aggregate up to its subject's last event (after a conflict, a gap,
        or an event on an evicted graph), through the same :meth:`EngineState.apply` as
        the follower."""
        self.counters.catch_ups += 1
        events = await self.events_of(aggregate_id)
        if not self.state.is_resident(aggregate_id):
            # Evicted: its colony's totals hold it as the log had it up to ``applied``.
            before = replay_events(e for e, seq in events if seq <= self.state.applied)
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
                rebuilt = replay_events(whole for whole, _ in events)
                if rebuilt is not None:
                    self.state.replace(rebuilt, events[-1][1])
                return
            self.seen.remember(event, sequence, now)

    # ------------------------------------------------------------------ writing

    def lock(self, aggregate_id: str) -> asyncio.Lock:
        """The aggregate's lock: its commands (and the follower's installs) one at a time."""
        lock = self._locks.get(aggregate_id)
        if lock is None:
            lock = self._locks[aggregate_id] = asyncio.Lock()
        return lock

    def busy(self, aggregate_id: str) -> bool:
        """True while a command of this replica holds the aggregate's lock."""
        lock = self._locks.get(aggregate_id)
        return lock is not None and lock.locked()

    async def save_new(self, aggregate: AuditedAggregate) -> Effects:
        """Saves a new aggregate (IntegrityError if its id exists) and installs it. A
        one-event write may have others chained to it (module doc)."""
        lock = self.lock(aggregate.id)
        await lock.acquire()
        writers = self._writers[aggregate.id] = _Writers(lock)
        try:
            effects = await self._write(writers, aggregate)
        finally:
            self._leave(aggregate.id, writers)
        await self.work_first(effects)
        return effects

    async def change(
        self, aggregate_id: str, kind: type[A], decide: Callable[[A], None]
    ) -> tuple[A, Effects]:
        """Runs ``decide`` on a copy of the aggregate under its lock, saves what it
        triggered, and installs the copy once the log has it.

        A refused or failed write leaves the cached aggregate as it was. When another
        replica changed the aggregate first (``IntegrityError``), this one catches up
        from the aggregate's subject and decides again, up to :data:`CONFLICT_RETRIES`
        times. While another command's one-event write on the aggregate is in flight,
        a one-event decision is chained to it instead (module doc, :meth:`_join`).
        """
        joined = await self._join(aggregate_id, kind, decide)
        if joined is not None:
            await self.work_first(joined[1])
            return joined
        lock = self.lock(aggregate_id)
        await lock.acquire()
        writers = self._writers[aggregate_id] = _Writers(lock)
        try:
            for attempt in range(CONFLICT_RETRIES):
                cached = await self.resident(aggregate_id)
                if not isinstance(cached, kind):
                    what = "colony" if kind is Colony else "process graph"
                    name = aggregate_id.split(".")[0 if kind is Colony else -1]
                    raise NotFound(f"{what} {name!r} does not exist")
                draft = cached.copy()
                decide(draft)  # a DomainError triggers nothing
                try:
                    effects = await self._write(writers, draft)
                except IntegrityError:
                    self.counters.conflicts += 1
                    if attempt == CONFLICT_RETRIES - 1:
                        raise
                    await self.catch_up(aggregate_id)
                    continue
                break
            else:
                raise AssertionError("unreachable")
        finally:
            self._leave(aggregate_id, writers)
        await self.work_first(effects)
        return draft, effects

    async def _join(
        self, aggregate_id: str, kind: type[A], decide: Callable[[A], None]
    ) -> tuple[A, Effects] | None:
        """Decides on the aggregate's write in flight and sends the one event chained to
        it; installs it once stored and the write before it is installed. None when
        there is nothing to chain to, the decision is not one event or is refused on the
        in-flight copy, or the server refused the chained write: the caller then decides
        the ordinary way (under the lock, on what the log has)."""
        writers = self._writers.get(aggregate_id)
        before = writers.joinable() if writers is not None else None
        if writers is None or before is None or not isinstance(before.draft, kind):
            return None
        draft = before.draft.copy()
        try:
            decide(draft)
        except Exception:  # decided again on the installed aggregate, answered from there
            return None
        if len(draft.pending_events) != 1:
            return None
        writers.holders += 1
        writers.joined += 1
        try:
            try:
                effects = await self._write(writers, draft, before)
            except (ChainBroken, IntegrityError):
                self.counters.chains_broken += 1
                return None
            self.counters.chained += 1
            return draft, effects
        finally:
            self._leave(aggregate_id, writers)

    async def _write(
        self, writers: _Writers, draft: AuditedAggregate, before: _Link | None = None
    ) -> Effects:
        """Writes the draft's pending events (chained to ``before`` when given) and
        installs the draft once the log has them (and ``before`` is installed). A
        one-event write becomes the aggregate's tail, open to chained writes while in
        flight; the processes it makes ready are offered to claims held here before it
        is sent (:meth:`_offer_ready`). Raises what :meth:`_save` raises (nothing
        installed), :class:`ChainBroken` for a refused chained write.

        Only a write that may well be followed is named (``Nats-Msg-Id``, which the
        server keeps for its duplicate window, about 200 bytes each for 2 minutes)."""
        offered = self._offer_ready(draft)
        link = _Link(draft) if self.log.chainable and _may_be_followed(draft, offered) else None
        writers.tail = link
        try:
            events, sequences = await self._save(
                draft,
                message_id=link.message_id if link is not None else None,
                after=before.message_id if before is not None else None,
            )
            if before is not None and not await before.outcome:
                # Stored after a write whose sender does not know it was stored (it timed
                # out): take both in from the log; this command's outcome is unknown too.
                await self.catch_up(draft.id)
                raise OperationalError("the write before this one went unanswered; retry")
            self._spared_wakes = offered
            try:
                effects = self.state.install(draft, events, last_written.get())
            finally:
                self._spared_wakes = None
            self._installed(sequences)
        except BaseException:
            if link is not None:
                link.settle(False)
            raise
        if link is not None:
            link.settle(True)
        return effects

    def _offer_ready(self, draft: AuditedAggregate) -> Counter[Key] | None:
        """Hands each process the draft's pending events make ready to a claim held here
        that may take it (:meth:`HeldClaims.offer`): the claim decides on this draft and
        chains its assignment to the draft's write. The offers are made by a callback
        that runs once the write is published and its task waits (so that nats-py's
        flusher, woken by the publish, sends the write before the claim decides).
        Returns the count per key, filled by then: the ready index's wakes for those
        processes at the install are spared (the claims have them already)."""
        if not isinstance(draft, ProcessGraph) or draft.removed or not self.claims.holds_any():
            return None
        offers: list[tuple[Key, ReadyProcess]] = []
        for event in draft.pending_events:
            for made_ready in getattr(event, "ready", ()):
                processid = made_ready["processid"]
                node = draft.nodes.get(processid)
                if node is None or not node.is_ready or node.readytime is None:
                    continue
                conditions = node.spec.conditions
                ready = ReadyProcess(
                    (-node.spec.priority, node.readytime.timestamp(), 0),
                    processid,
                    draft.id,
                    node.attempt,
                    tuple(conditions.executornames),
                )
                offers.append(((draft.colonyname, conditions.executortype), ready))
        if not offers:
            return None
        offered: Counter[Key] = Counter()

        def offer() -> None:  # in a copy of this context: noted for the deciding command
            for key, ready in offers:
                if self.claims.offer(key, ready):
                    offered[key] += 1

        asyncio.get_running_loop().call_soon(offer)
        return offered

    def _leave(self, aggregate_id: str, writers: _Writers) -> None:
        """One write of the aggregate is done; the last one releases its lock."""
        if writers.tail is not None and writers.holders == 1:
            writers.tail.settle(False)  # never left open to a joiner once all are done
        writers.holders -= 1
        if writers.holders == 0:
            if self._writers.get(aggregate_id) is writers:
                del self._writers[aggregate_id]
            writers.lock.release()

    async def change_graph(
        self, graph_id: str, decide: Callable[[ProcessGraph], None]
    ) -> tuple[ProcessGraph, Effects]:
        """:meth:`change` on a process graph."""
        return await self.change(graph_id, ProcessGraph, decide)

    def _installed(self, sequences: list[int]) -> None:
        """The events at ``sequences`` were written and installed by this replica."""
        if len(self.installed) > INSTALLED_LIMIT:  # the follower fell far behind
            self.installed.clear()  # it then decodes those events to skip them
        self.installed.update(sequences)

    async def _save(
        self,
        aggregate: AuditedAggregate,
        *,
        message_id: str | None = None,
        after: str | None = None,
    ) -> tuple[list[AuditedEvent], list[int]]:
        """Appends the aggregate's pending events to the log (atomically), notes the last
        sequence written for the reply (:data:`last_written`) and marks the commands as
        applied (a retry's reply is computed again from the aggregate: :mod:`.replies`).
        Returns the events and their stream sequences. ``message_id`` and ``after`` name
        and chain a one-event write (:meth:`JetStreamLog.append`)."""
        pending: list[AuditedEvent] = list(aggregate.collect_events())  # type: ignore[arg-type]
        stored = [self.mapper.to_stored_event(event) for event in pending]
        entries = self.store.entries_for(stored)
        limit = readable_limit(self.log.nc.max_payload)
        for entry, event in zip(entries, pending, strict=True):
            if len(entry.payload) > limit:
                raise DataError(
                    f"its {type(event).__name__} event would be {len(entry.payload):,} bytes, "
                    f"over {limit:,}: the history, audit and UI could not read it back in one "
                    "reply; make it smaller (fewer functions per workflow or per add_children)"
                )
        sequences = await self.log.append(entries, message_id=message_id, after=after)
        last_written.set(max(last_written.get(), sequences[-1]))
        now = datetime.now(UTC)
        command = deciding.get()
        for event in pending:
            self.seen.remember(event, last_written.get(), now, command)
        return pending, sequences


def _may_be_followed(draft: AuditedAggregate, offered: Counter[Key] | None) -> bool:
    """True for a one-event write that other commands may chain to while it is in
    flight: one whose newly ready processes are offered to held claims, or one on a
    graph of several processes (its executors report concurrently). A graph of one
    process sees one command at a time but for its submission's offer."""
    if len(draft.pending_events) != 1:
        return False
    return offered is not None or (isinstance(draft, ProcessGraph) and len(draft.nodes) > 1)


def readable_limit(max_payload: int) -> int:
    """The largest event payload the engine writes for a server of this ``max_payload``:
    the read side's replies (``graph_events``: history, time travel, audit, the UI) carry
    an event's payload in base64, a third bigger, with a few fields around it, in one
    NATS message. A bigger event would be stored, and its graph's history then fail."""
    return (max_payload - READ_REPLY_FIELDS) * 3 // 4


def audit(cmd: crypto.VerifiedCommand, now: datetime) -> dict[str, Any]:
    """The audit fields every event of a command carries: when, who, and the command."""
    return {"now": now, "actor": cmd.caller_id, "command": msgspec.json.encode(cmd.command)}


def replay_events(events: Iterable[AuditedEvent]) -> AuditedAggregate | None:
    """The aggregate these events (its own, in order) build."""
    aggregate: AuditedAggregate | None = None
    for event in events:
        aggregate = event.mutate(aggregate)
    return aggregate
