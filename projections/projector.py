"""The projector: the log's events, applied to the domain's aggregates, become view rows.

No domain rule is re-implemented here. As the engine does, the projector keeps the
aggregates (:class:`~colonies_es.domain.Colony`, :class:`~colonies_es.domain.ProcessGraph`)
in memory and applies each event with ``event.mutate``; then it writes the rows of what
the event touched, read from the aggregate (``graph.to_model()``,
``graph.process_model(pid)``, the colony's executors and users).

:class:`Projector` applies one notification at a time and gathers the changes;
:meth:`Projector.commit` writes them with the new position in one SQLite transaction
(:meth:`ReadModel.write`); :meth:`Projector.commit_later` returns once the rows are
written and leaves the COMMIT to the view's thread, so that the next events are applied
meanwhile (:meth:`Projector.finish_commit` waits for it; the follower reports a commit
only then). :class:`Follower` feeds it from the store's live
subscription (``recorder.subscribe(gt=position)``) and commits every ``batch_size``
events or ``batch_interval`` seconds after the first uncommitted one, whichever comes
first: a rebuild writes big batches, a live view lags by about ``batch_interval``.

What the projector promises:

- *Exactly once.* The position moves only with the rows (same transaction); on start it
  resumes after the stored position, so no event is missed or applied twice.
- *Replay gives the same view.* Every row is a function of the aggregates' states (and
  of the position of the events that created graphs and processes), never of when
  batches were cut; the executor name stored with an assignment is the one the colony
  had at the assignment's position in the log.
- *Aggregates are a cache.* Graphs are kept in memory up to ``cache_size`` (least
  recently used first out, when a commit starts, and only graphs whose rows are all
  stored); a graph done with (removed, or ended with nothing running) leaves at the
  first commit after its rows are stored. An aggregate not in memory (evicted, or
  after a restart) is rebuilt from its own events up to the version the view's rows
  reflect (``select_events(aggregate_id, lte=version)``). The view is asked for that
  version only when it may hold the aggregate (a Bloom filter of the ids it held at
  the start and of those written since): a new graph costs no query.
- *Bad events are skipped.* Events of a foreign topic (not ``colonies_es.domain.``),
  that cannot be decoded, or that do not apply to their aggregate (wrong version, no
  such aggregate, an ``apply`` that fails) are logged as warnings and skipped; an
  ``apply`` failing halfway leaves no trace (the aggregate is rebuilt from the log).
  The store itself already drops messages that are not events or not sealed.

Cost: a rebuild is CPU-bound, and shares one interpreter lock between the store's
reading thread (NATS, envelopes, seals) and the follower's (decoding, ``mutate``, rows,
SQLite statements); the view's thread runs the COMMITs and WAL checkpoints beside them.
The follower takes what the store decoded a batch (up to 256 events) at a time, and
event kinds are told by class, once. ``python -m benchmarks projector`` compares a
rebuild with a raw ordered-consumer replay of the same stream (DESIGN.md, "The read side
keeps up", for the figures).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import NamedTuple, Protocol, cast

import msgspec
from eventsourcing.domain import OriginatorIDError, OriginatorVersionError
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    Mapper,
    Notification,
    OperationalError,
    StoredEvent,
)

from colonies_es.domain import (
    AttemptFailed,
    AttributeAdded,
    AuditedAggregate,
    AuditedCreationEvent,
    AuditedEvent,
    ChildAdded,
    ChildrenAdded,
    Colony,
    GraphEvent,
    LogAdded,
    OutputSet,
    ProcessAssigned,
    ProcessClosed,
    ProcessGraph,
    WaitTimedOut,
    colony_aggregate_id,
)
from colonies_es.models import encode
from colonies_es.projections.view import (
    ColonyRow,
    ExecutorRow,
    GraphRow,
    LogRow,
    ProcessRow,
    ReadModel,
    UserRow,
    ViewChanges,
)
from colonies_es.states import ProcessState

__all__ = ["BATCH_SIZE", "DOMAIN_TOPIC_PREFIX", "BatchSubscription", "Follower", "Projector"]

log = logging.getLogger("colonies.projector")

DOMAIN_TOPIC_PREFIX = "colonies_es.domain."
"""Only events whose topic starts with this are ever decoded (as in the engine)."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Events that name every process they change, in ``processid``, ``ready``, ``cancelled``,
# ``parentprocessid``, ``child`` or ``children`` (with the processes they relink). For any
# other event (submission, cancel, remove, kinds added later) every process of the graph
# is rewritten.
_NAMING_THEIR_PROCESSES = (
    ProcessAssigned,
    OutputSet,
    ProcessClosed,
    AttemptFailed,
    WaitTimedOut,
    ChildAdded,
    ChildrenAdded,
    AttributeAdded,
    LogAdded,
)


_ENDED = frozenset(
    {int(ProcessState.SUCCESS), int(ProcessState.FAILED), int(ProcessState.CANCELLED)}
)
"""The states a graph ends in."""
_RUNNING = int(ProcessState.RUNNING)

_NONE_YET: set[str] = set()
"""No process of the graph to rewrite yet (a marker: never changed)."""


class _Spoiled(Exception):
    """An event's ``apply`` failed after it may have changed the aggregate."""


class Projector:
    """Applies notifications to in-memory aggregates and commits their rows in batches.

    Not thread-safe: one thread calls :meth:`process` and :meth:`commit`. When
    :meth:`process` raises (the store or SQLite failed, not a bad event), what it did is
    unknown: :meth:`commit` then refuses until :meth:`restart`.
    """

    def __init__(
        self,
        view: ReadModel,
        recorder: AggregateRecorder,
        mapper: Mapper[str],
        cache_size: int = 10_000,
    ) -> None:
        """``recorder`` is the event log's (its ``select_events`` rebuilds aggregates),
        ``mapper`` turns its stored events into domain events."""
        self.view = view
        self.recorder = recorder
        self.mapper = mapper
        self.cache_size = cache_size
        self._position: int = view.position()
        self._pending = 0
        self._failed = False
        self._write_failed = False
        self._writing: int | None = None
        """The position of the commit in flight (:meth:`commit_later`)."""
        self._colonies: dict[str, Colony] = {}
        self._graphs: OrderedDict[str, ProcessGraph] = OrderedDict()
        self._dirty_colonies: set[str] = set()
        self._dirty_graphs: dict[str, set[str] | None] = {}
        """Graph id -> the processes to rewrite (None: all of them)."""
        self._created: dict[str, tuple[int, int]] = {}
        """Process or graph id -> (sequence of its creation, index in its graph)."""
        self._assignees: dict[str, tuple[str, str]] = {}
        """Process id -> (executor id, executor name) of its latest assignment."""
        self._logs: list[LogRow] = []
        self._ended: set[str] = set()
        """Graphs in memory done with, changed since they were last written: removed, or
        ended with no process still running. They leave memory once their rows are
        stored (:meth:`_evict`)."""
        self._looked_up: dict[str, int | None] = {}
        """Aggregate id -> its version in the committed view (None: not there), looked
        up ahead for a batch by :meth:`prefetch`; forgotten at each commit."""
        self._in_view = _IdFilter(view.aggregate_ids())
        """The aggregates the view may hold rows of: those it held at the start and
        those written since. Any other is not looked up in the view (a new graph)."""

    @property
    def position(self) -> int:
        """The sequence of the last notification processed (committed or not)."""
        return self._position

    @property
    def writing(self) -> bool:
        """True while a commit is in flight (:meth:`commit_later`)."""
        return self._writing is not None

    @property
    def pending(self) -> int:
        """Notifications processed since the last commit."""
        return self._pending

    def restart(self) -> None:
        """Forgets all that is not committed: resumes from the view's position with no
        aggregate in memory (after the commit in flight, whatever became of it)."""
        self._writing = None
        with contextlib.suppress(Exception):
            self.view.finish_write()
        self._position = self.view.position()
        self._pending = 0
        self._failed = False
        self._write_failed = False
        self._colonies.clear()
        self._graphs.clear()
        self._ended.clear()
        self._forget_changes()

    def prefetch(self, notifications: Iterable[Notification]) -> None:
        """Looks up, in one query, the view's versions of the aggregates of these
        notifications that are not in memory (for :meth:`process` to come): a log of
        many small workflows would otherwise cost a query per new graph."""
        graphs, colonies, looked_up = self._graphs, self._colonies, self._looked_up
        wanted = {
            aggregate_id
            for n in notifications
            if (aggregate_id := str(n.originator_id)) not in graphs
            and aggregate_id not in colonies
            and aggregate_id not in looked_up
        }
        if not wanted:
            return
        in_view = self._in_view
        maybe = {aggregate_id for aggregate_id in wanted if aggregate_id in in_view}
        found = self.view.versions_of(maybe) if maybe else {}
        self._looked_up.update((aggregate_id, found.get(aggregate_id)) for aggregate_id in wanted)

    # ------------------------------------------------------------------ applying

    def process(self, notification: Notification) -> None:
        """Applies one notification of the log (in order, each exactly once)."""
        if notification.id <= self._position:
            raise ValueError(
                f"notification {notification.id} is not after position {self._position}"
            )
        self._failed = True  # until it is done
        self._apply(notification)
        self._failed = False

    def _apply(self, notification: Notification) -> None:
        self._position = notification.id
        self._pending += 1
        decoded = self._decode(notification)
        if decoded is None:
            return
        event, kind = decoded
        current = self._aggregate(event.originator_id)
        known = len(current.nodes) if isinstance(current, ProcessGraph) else 0
        try:
            aggregate = _next_state(current, event, kind)
        except _Spoiled:  # rebuild it as it was before the event
            assert current is not None
            self._graphs.pop(current.id, None)
            self._colonies.pop(current.id, None)
            self._keep(self._rebuild(current.id, current.version))
            return
        if aggregate is None:
            return
        if current is None:
            self._keep(aggregate)
        if isinstance(aggregate, ProcessGraph):  # the commoner, asked first
            self._graph_changed(aggregate, event, kind, notification.id, known)
        elif isinstance(aggregate, Colony):
            self._dirty_colonies.add(aggregate.id)

    def _decode(self, stored: StoredEvent) -> tuple[AuditedEvent, _Kind] | None:
        """The domain event and its kind, or None (with a warning) for a foreign or
        unreadable one."""
        if not stored.topic.startswith(DOMAIN_TOPIC_PREFIX):
            _skip(stored, f"foreign topic {stored.topic!r}")
            return None
        try:
            event = self.mapper.to_domain_event(stored)
        except Exception as error:
            _skip(stored, f"cannot decode it: {error!r}")
            return None
        kind = _kind_of(type(event))
        if not kind.audited:
            _skip(stored, f"{stored.topic!r} is not a domain event")
            return None
        return cast(AuditedEvent, event), kind

    def _graph_changed(
        self, graph: ProcessGraph, event: AuditedEvent, kind: _Kind, sequence: int, known: int
    ) -> None:
        graph_id = graph.id
        created = self._created
        if kind.creation:
            created[graph.processgraphid] = (sequence, 0)
        nodes = graph.nodes
        new: list[str] = []
        if len(nodes) > known:
            new = list(itertools.islice(nodes, known, None))
            for index, processid in enumerate(new, start=known):
                created[processid] = (sequence, index)
        touched = _named_processes(event, kind)
        dirty_graphs = self._dirty_graphs
        if touched is None:
            dirty_graphs[graph_id] = None
        elif (dirty := dirty_graphs.get(graph_id, _NONE_YET)) is _NONE_YET:
            touched.update(new)
            dirty_graphs[graph_id] = touched
        elif dirty is not None:
            dirty.update(touched, new)
        if graph.removed or (graph.state in _ENDED and not graph.count_in(_RUNNING)):
            self._ended.add(graph_id)
        if kind.assigned:
            assigned = cast(ProcessAssigned, event)
            colony = self._aggregate(colony_aggregate_id(graph.colonyname))
            executor = None
            if isinstance(colony, Colony):
                executor = colony.executor_by_id(assigned.executorid)
            name = executor.executorname if executor is not None else ""
            self._assignees[assigned.processid] = (assigned.executorid, name)
        elif kind.logged:
            logged = cast(LogAdded, event)
            self._logs.append(
                LogRow(  # positional: seq, processid, graph, colony, executor, message, time
                    sequence,
                    logged.processid,
                    graph.processgraphid,
                    graph.colonyname,
                    logged.executorname,
                    logged.message,
                    _unix_ns(logged.timestamp),
                )
            )

    # ------------------------------------------------------------------ aggregates

    def _aggregate(self, aggregate_id: str) -> AuditedAggregate | None:
        """The aggregate as of the position, from memory or rebuilt; None if the view
        has never seen it."""
        colony = self._colonies.get(aggregate_id)
        if colony is not None:
            return colony
        graph = self._graphs.get(aggregate_id)
        if graph is not None:
            self._graphs.move_to_end(aggregate_id)
            return graph
        # One primary-key lookup in the view (not a set of every id ever seen, which
        # would grow with the history), unless prefetched with the batch or certainly
        # not there.
        if aggregate_id in self._looked_up:
            version = self._looked_up[aggregate_id]
        elif aggregate_id in self._in_view:
            version = self.view.version_of(aggregate_id)
        else:
            version = None
        if version is None:
            return None
        aggregate = self._rebuild(aggregate_id, version)
        self._keep(aggregate)
        return aggregate

    def _keep(self, aggregate: AuditedAggregate | None) -> None:
        if isinstance(aggregate, Colony):
            self._colonies[aggregate.id] = aggregate
        elif isinstance(aggregate, ProcessGraph):
            self._graphs[aggregate.id] = aggregate
            self._graphs.move_to_end(aggregate.id)

    def _rebuild(self, aggregate_id: str, version: int) -> AuditedAggregate | None:
        """The aggregate from its own events up to ``version``, skipping (as when they
        came live) those that do not apply."""
        events = [
            decoded[0]
            for stored in self.recorder.select_events(aggregate_id, lte=version)
            if (decoded := self._decode(stored)) is not None
        ]
        aggregate: AuditedAggregate | None = None
        applied: list[AuditedEvent] = []
        for event in events:
            try:
                after = _next_state(aggregate, event, _kind_of(type(event)))
            except _Spoiled:
                after = None
                aggregate = _replay(applied)
            if after is not None:
                aggregate = after
                applied.append(event)
        if aggregate is None or aggregate.version != version:
            log.error(
                "rebuilt %s at version %s, the view has version %d",
                aggregate_id,
                None if aggregate is None else aggregate.version,
                version,
            )
        return aggregate

    # ------------------------------------------------------------------ committing

    def commit(self) -> int:
        """Writes the rows changed since the last commit with the position, in one
        transaction, and returns the position once stored (after the write in flight,
        if any). Does nothing if nothing was processed."""
        self.finish_commit()
        self.commit_later()
        self.finish_commit()
        return self._position

    def commit_later(self) -> None:
        """Starts writing the rows changed since the last commit with the position (one
        transaction, in the view's thread: :meth:`ReadModel.start_write`) and returns,
        so that more notifications can be processed meanwhile. :meth:`finish_commit`
        waits for it, and must be called before the next commit. Does nothing if nothing
        was processed."""
        if self._failed or self._write_failed:
            raise RuntimeError("a notification or a write failed: restart() the projector")
        if self._writing is not None:
            raise RuntimeError("a commit is in flight: finish_commit() first")
        if self._pending == 0:
            return
        self._evict()
        changes = ViewChanges(logs=self._logs)
        for colony_id in self._dirty_colonies:
            self._colony_rows(self._colonies[colony_id], changes)
        for graph_id, touched in self._dirty_graphs.items():
            self._graph_rows(self._graphs[graph_id], touched, changes)
        self.view.start_write(changes, self._position)
        for aggregate_id, _version in changes.versions:
            self._in_view.add(aggregate_id)
        self._writing = self._position
        self._pending = 0
        self._forget_changes()

    def finish_commit(self) -> int | None:
        """Waits for the commit in flight and returns its position (None when there was
        none). Raises what the write raised: nothing of it was stored, and the projector
        refuses to commit until :meth:`restart`."""
        position, self._writing = self._writing, None
        if position is None:
            return None
        try:
            self.view.finish_write()
        except BaseException:
            self._write_failed = True
            raise
        return position

    def _evict(self) -> None:
        """Drops the graphs whose rows are all stored (none with changes to commit; the
        commit before is finished) that are done with (:attr:`_ended`), then the least
        recently used beyond ``cache_size``: an aggregate not in memory is rebuilt to the
        version the committed view holds.

        A removed graph takes no more events; one that ended (SUCCESS, FAILED,
        CANCELLED) with no process running takes none but its removal (the engine
        refuses every other command on it; a rerun is a new graph). A FAILED graph whose
        other branches still run stays until they end. Keeping finished graphs spared
        nothing but a removal's rebuild, and cost memory and the collector's scans of
        every cached graph's objects: on a log of many small workflows the follower
        spent 1.6-1.7 us per event in collections while up to ``cache_size`` finished
        graphs stayed in memory, 0.3 us once they left (DESIGN.md, "The read side keeps
        up", ninth session)."""
        graphs, dirty = self._graphs, self._dirty_graphs
        if self._ended:
            still_dirty = set()
            for graph_id in self._ended:
                if graph_id in dirty:
                    still_dirty.add(graph_id)
                else:
                    graphs.pop(graph_id, None)
            self._ended = still_dirty
        excess = len(graphs) - self.cache_size
        if excess <= 0:
            return
        evicted = []
        for graph_id in graphs:  # least recently used first
            if graph_id not in dirty:
                evicted.append(graph_id)
                if len(evicted) == excess:
                    break
        for graph_id in evicted:
            del graphs[graph_id]

    def _forget_changes(self) -> None:
        self._looked_up.clear()  # the view moves on, and the cache may evict
        self._dirty_colonies.clear()
        self._dirty_graphs.clear()
        self._created.clear()
        self._assignees.clear()
        self._logs = []

    def _colony_rows(self, colony: Colony, changes: ViewChanges) -> None:
        changes.colonies.append(ColonyRow(colony.name, colony.ownerid, colony.removed))
        changes.members[colony.name] = (
            [
                ExecutorRow(colony.name, e.executorid, e.executorname, e.executortype, e.state)
                for e in colony.executors.values()
            ],
            [UserRow(colony.name, userid, name) for userid, name in colony.users.items()],
        )
        changes.versions.append((colony.id, colony.version))

    def _graph_rows(
        self, graph: ProcessGraph, touched: Iterable[str] | None, changes: ViewChanges
    ) -> None:
        gid = graph.processgraphid
        colonyname = graph.colonyname
        removed = graph.removed
        iso = _iso
        # Rows are built with positional arguments, in the fields' order: a NamedTuple's
        # keywords cost a microsecond more per row.
        changes.graphs.append(
            GraphRow(  # processgraphid, colonyname, seq, state, initiator id and name,
                gid,  # submission, start and end times, removed, model
                colonyname,
                self._created.get(gid, (0, 0))[0],
                graph.state,
                graph.initiatorid,
                graph.initiatorname,
                iso(graph.submissiontime),
                iso(graph.starttime),
                iso(graph.endtime),
                removed,
                encode(graph.to_model()),
            )
        )
        assignees = self._assignees
        for processid in graph.nodes if touched is None else touched:
            node = graph.nodes[processid]
            seq, position = self._created.get(processid, (0, 0))
            spec = node.spec
            assignee = assignees.get(processid)
            changes.processes.append(
                ProcessRow(  # see ProcessRow for the fields' names
                    processid,
                    gid,
                    colonyname,
                    seq,
                    position,
                    spec.nodename,
                    spec.funcname,
                    spec.conditions.executortype,
                    node.state,
                    spec.priority,
                    node.attempt,
                    node.retries,
                    node.assignedexecutorid,
                    iso(node.submissiontime),
                    iso(node.starttime),
                    iso(node.endtime),
                    removed,
                    encode(graph.process_model(processid, shared=True)),
                    # the executor's name if this batch assigned it to its executor now
                    assignee[1]
                    if assignee is not None and assignee[0] == node.assignedexecutorid
                    else None,
                )
            )
        changes.versions.append((graph.id, graph.version))


def _next_state(
    current: AuditedAggregate | None, event: AuditedEvent, kind: _Kind
) -> AuditedAggregate | None:
    """``current`` after ``event`` (of class ``kind``); None (with a warning, ``current``
    unchanged) when the event does not apply to it. Raises ``_Spoiled`` when ``apply``
    failed halfway."""
    if kind.creation:
        if current is not None:
            _skip(event, "it creates an aggregate that exists")
            return None
        topic = cast(AuditedCreationEvent, event).originator_topic
        if not topic.startswith(DOMAIN_TOPIC_PREFIX):
            _skip(event, f"foreign aggregate {topic!r}")
            return None
    elif current is None:
        _skip(event, "no such aggregate")
        return None
    try:
        aggregate = event.mutate(current)
    except (OriginatorIDError, OriginatorVersionError) as error:
        _skip(event, f"it does not follow the aggregate: {error!r}")
        return None
    except Exception as error:
        _skip(event, f"it does not apply: {error!r}")
        if current is None:
            return None
        raise _Spoiled from error
    return aggregate if isinstance(aggregate, AuditedAggregate) else None


def _skip(event: StoredEvent | AuditedEvent, reason: str) -> None:
    log.warning("skipping event %s v%d: %s", event.originator_id, event.originator_version, reason)


def _replay(events: Iterable[AuditedEvent]) -> AuditedAggregate | None:
    """The aggregate from events known to apply, in order."""
    aggregate: AuditedAggregate | None = None
    for event in events:
        aggregate = event.mutate(aggregate)
    return aggregate


def _named_processes(event: AuditedEvent, kind: _Kind) -> set[str] | None:
    """The processes ``event`` changed, or None when it may have changed any."""
    if not kind.names_processes:
        return None
    graph_event = cast(GraphEvent, event)
    named = {ready["processid"] for ready in graph_event.ready} if graph_event.ready else set()
    for attribute in kind.naming:
        value = getattr(event, attribute, None)
        if not value:
            continue
        if attribute == "child":  # the new process and those whose parents it changed
            named.add(value["processid"])
            named.update(value["children"])
        elif isinstance(value, str):
            named.add(value)
        else:
            named.update(value)
    return named


_times_encoder = msgspec.json.Encoder()


def _iso(moment: datetime | None) -> str | None:
    """``moment.isoformat()`` (None for None), the text the rows hold. A UTC time (every
    time of the domain) is cut from msgspec's RFC 3339 text instead, ``"...Z"`` with
    microseconds only when not zero as ``isoformat`` writes them: the same text for a
    quarter of the cost (``isoformat`` of an aware time costs about 1 us, several per
    process row). ``tests/test_projector_view.py`` compares the two."""
    if moment is None:
        return None
    if moment.tzinfo is not UTC:
        return moment.isoformat()
    return _times_encoder.encode(moment)[1:-2].decode() + "+00:00"


def _unix_ns(moment: datetime) -> int:
    """Unix nanoseconds of ``moment``, exactly (microsecond resolution)."""
    since = moment - _EPOCH
    return ((since.days * 86_400 + since.seconds) * 1_000_000 + since.microseconds) * 1000


class _IdFilter:
    """A Bloom filter of ids: ``id in filter`` is True for every id added, and for a
    few others (about 3% with a million ids in it, more beyond: then it only saves
    fewer look-ups). Its size is fixed (1 MiB), whatever the number of ids."""

    _BITS = 1 << 23
    _MASK = _BITS - 1

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self._bits = bytearray(self._BITS // 8)
        for key in ids:
            self.add(key)

    @classmethod
    def _positions(cls, key: str) -> tuple[int, int, int]:
        code = hash(key) & 0xFFFF_FFFF_FFFF_FFFF  # 64 bits, three positions of 23
        return code & cls._MASK, (code >> 23) & cls._MASK, (code >> 41) & cls._MASK

    def add(self, key: str) -> None:
        bits = self._bits
        for position in self._positions(key):
            bits[position >> 3] |= 1 << (position & 7)

    def __contains__(self, key: str) -> bool:
        bits = self._bits
        first, second, third = self._positions(key)
        return bool(
            bits[first >> 3] & (1 << (first & 7))
            and bits[second >> 3] & (1 << (second & 7))
            and bits[third >> 3] & (1 << (third & 7))
        )


class _Kind(NamedTuple):
    """What the projector needs to know of an event class, worked out once per class:
    ``isinstance`` on eventsourcing's abstract classes goes through ``ABCMeta`` each time,
    several times an event."""

    audited: bool
    """One of the domain's events."""
    creation: bool
    """It creates its aggregate."""
    names_processes: bool
    """A graph event naming every process it changes (in ``ready`` and :attr:`naming`)."""
    naming: tuple[str, ...]
    """The attributes of the event that name processes it changes."""
    assigned: bool
    """A ProcessAssigned (its executor's name is recorded with the process)."""
    logged: bool
    """A LogAdded (a row of the logs table)."""


_NAMING_ATTRIBUTES = ("processid", "parentprocessid", "cancelled", "child")
_KINDS: dict[type, _Kind] = {}


def _kind_of(cls: type) -> _Kind:
    """The :class:`_Kind` of the event class ``cls``."""
    kind = _KINDS.get(cls)
    if kind is None:
        names = issubclass(cls, GraphEvent) and issubclass(cls, _NAMING_THEIR_PROCESSES)
        fields = {field.name for field in dataclasses.fields(cls)} if names else set()
        if issubclass(cls, LogAdded):  # a log line changes nothing its process's row holds
            fields.discard("processid")
        kind = _KINDS[cls] = _Kind(
            audited=issubclass(cls, AuditedEvent),
            creation=issubclass(cls, AuditedCreationEvent),
            names_processes=names,
            naming=tuple(name for name in _NAMING_ATTRIBUTES if name in fields),
            assigned=issubclass(cls, ProcessAssigned),
            logged=issubclass(cls, LogAdded),
        )
    return kind


# ---------------------------------------------------------------------- following


class BatchSubscription(Protocol):
    """A live subscription to the log that hands over its notifications in batches
    (:meth:`colonies_es.store.JetStreamSubscription.next_batch`)."""

    def next_batch(self, timeout: float | None = None) -> list[Notification] | None:
        """The next notifications, ``[]`` after ``timeout`` seconds without any, None
        once stopped."""

    def stop(self) -> None:
        """Ends the subscription: :meth:`next_batch` returns None."""


BATCH_SIZE = 10_000
"""Events per commit at most, by default (a rebuild's batches; a live view commits
sooner, see :class:`Follower`)."""


class Follower:
    """Feeds a :class:`Projector` from the log's live subscription, committing in batches.

    :meth:`run` blocks (call it in a thread of its own) until :meth:`stop` is called
    from any thread, or raises what went wrong: SQLite's errors, the store's lasting
    ones. When reading the log fails for a while (``OperationalError``: NATS lost while
    an aggregate is read back), it restarts the projector from its committed position
    after ``retry_interval`` seconds, as often as needed. What was processed in full is
    committed before it returns or raises. ``on_commit(position)`` is called after each
    commit, in the running thread.

    When it commits: after ``batch_size`` events, or ``batch_interval`` seconds after the
    first uncommitted one; but when that interval is over and more events are already
    waiting (the follower is catching up with a backlog: a rebuild, a restart), it
    keeps the batch open up to ``catch_up_interval`` seconds. A live view therefore lags
    by about ``batch_interval``; a rebuild commits every ``batch_size`` events or every
    ``catch_up_interval`` seconds, since each commit of a log of many small graphs
    rewrites pages all over the tables' indexes (fewer, bigger commits cost about half
    the SQLite CPU per event).

    Each commit's COMMIT runs in the view's thread while the follower applies the next
    events (:meth:`Projector.commit_later`); ``on_commit`` is called once it is stored,
    at the latest before the follower waits for more events.

    The recorder's subscriptions must hand over batches (:class:`BatchSubscription`, as
    the JetStream store's do): the follower takes each batch the store decoded in one
    hand-off, and waits for the next one no longer than the commit deadline.
    """

    def __init__(
        self,
        projector: Projector,
        recorder: ApplicationRecorder,
        *,
        batch_size: int = BATCH_SIZE,
        batch_interval: float = 0.1,
        catch_up_interval: float = 1.0,
        on_commit: Callable[[int], None] | None = None,
        retry_interval: float = 1.0,
    ) -> None:
        self.projector = projector
        self.recorder = recorder
        self.batch_size = batch_size
        self.batch_interval = batch_interval
        self.catch_up_interval = catch_up_interval
        self.on_commit = on_commit
        self.retry_interval = retry_interval
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._subscription: BatchSubscription | None = None

    def run(self) -> None:
        """Follows the log from the projector's position until stopped."""
        while not self._stopped.is_set():
            try:
                self._follow()
            except OperationalError as error:
                log.warning(
                    "reading the event log failed (%s): resuming from the committed "
                    "position in %g s",
                    error,
                    self.retry_interval,
                )
                self.projector.restart()
                self._stopped.wait(self.retry_interval)

    def _follow(self) -> None:
        with self._lock:
            if self._stopped.is_set():
                return
            subscription = self.recorder.subscribe(gt=self.projector.position or None)
            if not callable(getattr(subscription, "next_batch", None)):
                subscription.stop()
                msg = f"{type(subscription).__name__} does not hand over batches (next_batch)"
                raise TypeError(msg)
            batches = cast(BatchSubscription, subscription)
            self._subscription = batches
        try:
            self._project(batches)
        finally:
            batches.stop()

    def stop(self) -> None:
        """Makes :meth:`run` commit and return (safe from any thread, at any time)."""
        with self._lock:
            self._stopped.set()
            if self._subscription is not None:
                self._subscription.stop()

    def _project(self, subscription: BatchSubscription) -> None:
        first: float | None = None  # when the first uncommitted event was processed
        projector = self.projector
        ahead: list[Notification] | None = []  # a batch taken early (see _due)
        while True:
            if ahead:
                batch, ahead = ahead, []
            elif ahead is None:
                batch = None
            else:
                timeout = None if first is None else self._wait_left(first)
                batch = self._next_batch(subscription, 0) if projector.writing else []
                if not batch:  # nothing waiting: the commit in flight ends first
                    self._finish_commit()
                    batch = self._next_batch(subscription, timeout)
            if batch is None:
                self._commit()
                if not self._stopped.is_set():
                    raise RuntimeError("the subscription to the event log ended by itself")
                return
            projector.prefetch(batch)
            for notification in batch:
                projector.process(notification)
                if projector.pending >= self.batch_size:
                    self._commit_later()
                    first = None
            if projector.pending == 0:
                continue
            now = time.monotonic()
            if first is None:
                first = now
            elif now - first >= self.batch_interval:
                if now - first < self.catch_up_interval:
                    ahead = self._next_batch(subscription, 0)
                    if ahead:  # more is waiting: still catching up, keep the batch open
                        continue
                self._commit_later()
                first = None

    def _wait_left(self, first: float) -> float:
        """Seconds to wait for more events before the open batch is due."""
        return max(0.0, first + self.batch_interval - time.monotonic())

    def _next_batch(
        self, subscription: BatchSubscription, timeout: float | None
    ) -> list[Notification] | None:
        """The subscription's next batch; what was processed is committed if it raises."""
        try:
            return subscription.next_batch(timeout)
        except BaseException:
            self._commit()
            raise

    def _commit_later(self) -> None:
        """Starts committing what was processed (after the commit before has ended): the
        next events are applied while it is written."""
        self._finish_commit()
        self.projector.commit_later()

    def _finish_commit(self) -> None:
        """Waits for the commit in flight, if any, and reports it."""
        position = self.projector.finish_commit()
        if position is not None and self.on_commit is not None:
            self.on_commit(position)

    def _commit(self) -> None:
        """Commits what was processed and waits for it (and for the commit before)."""
        self._finish_commit()
        had_pending = self.projector.pending > 0
        position = self.projector.commit()
        if had_pending and self.on_commit is not None:
            self.on_commit(position)
