"""The state an engine derives from the log: aggregates, the indices over them, timers.

Every engine replica keeps one :class:`EngineState`. It changes in exactly two ways,
both consequences of events already in the log:

- :meth:`EngineState.apply`: the next event of an aggregate, read from the log (the
  rebuild at start, the follower that tails the stream, a writer catching up after a
  conflict). Events from any replica arrive this way.
- :meth:`EngineState.install`: a decision of this replica whose events the log has just
  acknowledged (the aggregate was decided on a copy; the copy replaces the cached one).

Both update the derived indices (the graphs of legacy process ids, the
ready processes, the deadlines) from the events themselves, so every replica converges on
the same state whoever wrote. Versions keep the two from applying an event twice: an
event at or below the cached aggregate's version is already in.

``applied`` is the stream sequence up to which the follower has applied the log; a
command that must see a write of sequence N waits in :meth:`EngineState.wait_applied`.

Memory is bounded by live work, not by history (issue 14). Colonies and graphs that
have not ended are *resident* (``aggregates``). A graph that has ended (SUCCESS, FAILED,
CANCELLED or removed) with no process ready or running is *evicted* by :meth:`sweep` once
the follower has applied its last event: it leaves ``aggregates`` and its process counts
move into per-colony totals (for ``stats``). Nothing of it remains in memory: a
process id tells its graph (``p + H(p)`` from the id's first half,
:func:`~colonies_es.domain.graph_id_of_process`), so no index of ended graphs is needed,
except a map of the processes whose ids do not derive to their graph (*legacy* ids,
written before derived ids or given by tests; empty for a log written since). A command
on an evicted graph loads it from its own subject (:class:`~.aggregates.Aggregates`); reads keep
it in a small LRU (:data:`LOADED_CACHE`), a change makes it resident again
(:meth:`revive`, which takes its counts out of the totals) until the next sweep. So a
graph is always counted exactly once: by iterating resident graphs, or in the totals.
"""

from __future__ import annotations

import asyncio
import heapq
import sys
import threading
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import msgspec

from colonies_es.domain import (
    AuditedAggregate,
    AuditedEvent,
    ChildrenAdded,
    Colony,
    GraphCancelled,
    GraphRemoved,
    ProcessGraph,
    derives_graph,
    graph_aggregate_id,
    graph_id_of_process,
)
from colonies_es.engine.ready import Key, ReadyIndex
from colonies_es.models import ProcessState

__all__ = ["LOADED_CACHE", "ColonyGraphs", "Effects", "EngineState", "LiveState", "Timer"]

_ENDED = (ProcessState.SUCCESS, ProcessState.FAILED, ProcessState.CANCELLED)
_ENDED_CODES = frozenset(int(state) for state in _ENDED)

LOADED_CACHE = 512
"""Evicted graphs kept after a command loaded them from the log (least recently used go)."""

COUNTED = ("successfulworkflows", "failedworkflows", "successfulprocesses", "failedprocesses")
"""The statistics an evicted graph contributes to its colony's totals, in this order."""


def graph_counts(graph: ProcessGraph) -> tuple[int, int, int, int]:
    """What ``graph`` adds to :data:`COUNTED` (nothing once removed)."""
    if graph.removed:
        return (0, 0, 0, 0)
    return (
        int(graph.state == ProcessState.SUCCESS),
        int(graph.state == ProcessState.FAILED),
        graph.count_in(ProcessState.SUCCESS),
        graph.count_in(ProcessState.FAILED),
    )


_PENDING = (ProcessState.WAITING, ProcessState.RUNNING)


def pending_count(graph: ProcessGraph) -> int:
    """The WAITING and RUNNING processes of a graph that is itself WAITING or RUNNING (a
    graph that ended or was removed counts none): what the pending quota counts."""
    if graph.removed or graph.state not in _PENDING:
        return 0
    return graph.count_in(*_PENDING)


def evictable(graph: ProcessGraph) -> bool:
    """True when the graph has ended (or was removed) and no process is ready or running:
    nothing (no claim, no deadline) needs it in memory."""
    if not graph.removed and graph.state not in _ENDED:
        return False
    return not any(node.is_ready or node.is_running for node in graph.nodes.values())


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


@dataclass(order=True)
class Timer:
    """A deadline the log implies: at ``at``, expire ``attempt`` of a process."""

    at: float
    processid: str = field(compare=False)
    graph_id: str = field(compare=False)
    attempt: int = field(compare=False)
    kind: Literal["exec", "wait"] = field(compare=False)


class ColonyGraphs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One colony's part of a :class:`LiveState`: its processes with legacy ids (ids
    that do not derive to their graph) and their graphs, packed (32 bytes an id), and
    the totals of its evicted graphs. Nothing here grows with a history of derived ids."""

    colonyname: str
    graphs: bytes
    """The processgraph ids of the graphs holding ``processes``, 32 bytes each."""
    processes: bytes
    """The ids of the colony's processes whose id does not derive to their graph
    (legacy ids, see :meth:`EngineState.graph_of`), 32 bytes each."""
    graph_of: bytes
    """Per process, the index of its graph in ``graphs`` (unsigned 32-bit little endian)."""
    evicted: list[int]
    """The :data:`COUNTED` statistics of the colony's evicted graphs."""


class LiveState(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What an :class:`EngineState` needs besides aggregates to go on from the log at
    sequence ``applied`` (:meth:`EngineState.capture`, :meth:`EngineState.restore`).

    Aggregates are named, not stored: ``resident`` lists the colonies and graphs the
    state held, and whoever restores reads each from its own subject of the log up to
    ``applied`` (so the aggregates always come from the log itself). The ready index and
    the deadlines follow from those aggregates.
    """

    applied: int
    resident: list[str]
    """Ids of the resident aggregates (colonies, graphs not evicted), in memory order."""
    colonies: list[ColonyGraphs]
    last_heard: dict[str, datetime]


_ID_BYTES = 32


class NotNext(Exception):
    """An event that does not follow the cached aggregate (a gap): load the aggregate
    from its own subject instead."""


class EngineState:
    """Aggregates and indices, changed only by events of the log (see the module doc)."""

    def __init__(self) -> None:
        self.aggregates: dict[str, AuditedAggregate] = {}
        self.ready = ReadyIndex()
        self.last_heard: dict[str, datetime] = {}
        """Identity -> time of the latest graph event it caused (an executor's claims,
        closes, fails, logs...): its ``lastheardfromtime``. After a rebuild, the latest
        assignment or end of a process it held."""
        self.applied = 0
        """The stream sequence the follower has applied the log up to."""
        self.written = 0
        """The highest stream sequence this replica has written or installed."""
        self._legacy_graph_of: dict[str, str] = {}
        """Process id -> graph aggregate id, only for the processes whose id does not
        derive to their graph (:func:`~colonies_es.domain.graph_id_of_process`): ids made
        before derived ids, or given by tests. Empty for a log written since."""
        self._colony_names: dict[str, None] = {}
        self._loaded: OrderedDict[str, ProcessGraph] = OrderedDict()
        self._ending: dict[str, int] = {}  # resident evictable graph -> its last sequence
        self._evicted_counts: dict[str, list[int]] = {}
        self._timers: list[Timer] = []
        self._pending: dict[str, int] = {}  # colony -> pending_count of its graphs, summed
        self._pending_of_graph: dict[str, tuple[str, int]] = {}  # graph -> (colony, count)
        self._recount: set[str] = set()  # resident graphs changed since the last count
        self._resident_of_colony: dict[str, dict[str, None]] = {}
        self._lock = threading.RLock()  # the rebuild runs in a thread, the rest on the loop
        self._progress: asyncio.Event | None = None
        self.on_ended: Callable[[str], None] | None = None
        """Called with the id of each process that ends, whoever's event ended it (the
        engine answers the requests waiting for it, ``wait_process``)."""

    # ------------------------------------------------------------------ reading

    def get(self, aggregate_id: str) -> AuditedAggregate | None:
        """The aggregate if it is resident or in the LRU of loaded graphs; None when it
        is unknown or evicted (see :meth:`knows_graph`)."""
        found = self.aggregates.get(aggregate_id)
        if found is None:
            found = self._loaded.get(aggregate_id)
            if found is not None:
                self._loaded.move_to_end(aggregate_id)
        return found

    def is_resident(self, aggregate_id: str) -> bool:
        return aggregate_id in self.aggregates

    def evicted_counts(self, colonyname: str) -> dict[str, int]:
        """The :data:`COUNTED` statistics of the colony's evicted graphs."""
        totals = self._evicted_counts.get(colonyname, [0, 0, 0, 0])
        return dict(zip(COUNTED, totals, strict=True))

    def pending_processes(self, colonyname: str) -> int:
        """The WAITING and RUNNING processes of the colony's resident graphs (evicted
        graphs have none), as :func:`pending_count` counts them.

        Kept incrementally: each graph changed since the last call is counted again, so
        a submission costs the graphs that changed, not every graph of the colony."""
        for graph_id in self._recount:
            self._uncount_pending(graph_id)
            graph = self.aggregates.get(graph_id)
            if isinstance(graph, ProcessGraph):
                count = pending_count(graph)
                if count:
                    self._pending_of_graph[graph_id] = (graph.colonyname, count)
                    self._pending[graph.colonyname] = self._pending.get(graph.colonyname, 0) + count
        self._recount.clear()
        return self._pending.get(colonyname, 0)

    def _uncount_pending(self, graph_id: str) -> None:
        colonyname, count = self._pending_of_graph.pop(graph_id, ("", 0))
        if count:
            self._pending[colonyname] -= count

    def keep_loaded(self, graph: ProcessGraph) -> None:
        """Keeps an evicted graph a command loaded from the log (LRU, not resident)."""
        if graph.id in self.aggregates:
            return
        self._loaded[graph.id] = graph
        self._loaded.move_to_end(graph.id)
        while len(self._loaded) > LOADED_CACHE:
            self._loaded.popitem(last=False)

    def revive(self, graph: ProcessGraph) -> None:
        """Makes an evicted graph (as loaded, no further than :attr:`applied`) resident
        again, taking its counts out of the colony's totals, before a change to it."""
        if graph.id in self.aggregates:
            return
        self._loaded.pop(graph.id, None)
        self.aggregates[graph.id] = graph
        self._resident_of_colony.setdefault(graph.colonyname, {})[graph.id] = None
        self._recount.add(graph.id)
        self._count(graph, -1)

    def sweep(self, busy: Callable[[str], bool]) -> list[str]:
        """Evicts every resident graph that has ended, whose last event the follower has
        applied and that no command is changing (``busy``); returns their ids."""
        evicted = []
        for graph_id, sequence in list(self._ending.items()):
            if sequence > self.applied or busy(graph_id):
                continue
            graph = self.aggregates.pop(graph_id, None)
            del self._ending[graph_id]
            if isinstance(graph, ProcessGraph):
                self._resident_of_colony.get(graph.colonyname, {}).pop(graph_id, None)
            self._recount.discard(graph_id)
            self._uncount_pending(graph_id)
            if isinstance(graph, ProcessGraph):
                self._count(graph, +1)
                evicted.append(graph_id)
        return evicted

    def evict_ended_while_rebuilding(self, sequence: int) -> list[str]:
        """During a whole-log replay (events applied with ``index=False``), once it is
        applied up to ``sequence``: every graph that has ended by then is indexed (its
        legacy ids) and evicted, so that the replay holds the graphs live at one time,
        not the whole history. A later event on one of them is a gap (:class:`NotNext`),
        which the replay fills by reading that graph from the log, as the follower does."""
        with self._lock:
            for graph_id in list(self._ending):
                graph = self.aggregates.get(graph_id)
                if isinstance(graph, ProcessGraph):
                    self._index_graph(graph, None, heard_from_nodes=False)
            self.applied = max(self.applied, sequence)  # nobody waits during the replay
            return self.sweep(lambda _: False)

    def _count(self, graph: ProcessGraph, sign: int) -> None:
        totals = self._evicted_counts.setdefault(graph.colonyname, [0, 0, 0, 0])
        for index, value in enumerate(graph_counts(graph)):
            totals[index] += sign * value

    def _settle(self, aggregate: AuditedAggregate, sequence: int) -> None:
        """Notes whether a resident graph may be evicted once ``sequence`` is applied
        (and the name of a colony)."""
        if not isinstance(aggregate, ProcessGraph):
            if isinstance(aggregate, Colony):
                self._colony_names[aggregate.name] = None
            return
        self._recount.add(aggregate.id)
        self._resident_of_colony.setdefault(aggregate.colonyname, {})[aggregate.id] = None
        if evictable(aggregate):
            self._ending[aggregate.id] = max(sequence, self._ending.get(aggregate.id, 0))
        else:
            self._ending.pop(aggregate.id, None)

    @property
    def reached(self) -> int:
        """The sequence a reply of this replica may claim it reflects: a client that
        sends it back makes another replica wait until it has applied that far."""
        return max(self.applied, self.written)

    def graph_of(self, processid: str) -> str | None:
        """The aggregate id of the graph holding ``processid``, if memory tells: a
        legacy id's graph, or a resident (or recently loaded) graph its id derives to
        that holds it. None otherwise: the graph may still be in the log
        (:meth:`~.aggregates.Aggregates.graph_id_of` asks it)."""
        with self._lock:
            legacy = self._legacy_graph_of.get(processid)
            if legacy is not None:
                return legacy
            processgraphid = graph_id_of_process(processid)
            if processgraphid is None:
                return None
            for colonyname in self._colony_names:
                graph_id = graph_aggregate_id(colonyname, processgraphid)
                graph = self.aggregates.get(graph_id) or self._loaded.get(graph_id)
                if isinstance(graph, ProcessGraph) and processid in graph.nodes:
                    return graph_id
            return None

    def resident_graphs(self, colonyname: str) -> list[ProcessGraph]:
        """The colony's resident graphs not removed (the others are in its totals): as
        many as are live, however long the colony's history."""
        with self._lock:
            ids = list(self._resident_of_colony.get(colonyname, ()))
        graphs = [self.aggregates.get(graph_id) for graph_id in ids]
        return [g for g in graphs if isinstance(g, ProcessGraph) and not g.removed]

    def colony_names(self) -> list[str]:
        """Every colony the log has (removed ones too): few, so lookups try each."""
        with self._lock:
            return list(self._colony_names)

    def executor_types(self) -> set[Key]:
        """(colony, executor type) of every APPROVED executor."""
        return {
            (a.name, e.executortype)
            for a in list(self.aggregates.values())
            if isinstance(a, Colony) and not a.removed
            for e in a.executors.values()
            if e.state == 1
        }

    # ------------------------------------------------------------------ changing

    def apply(self, event: AuditedEvent, sequence: int, index: bool = True) -> bool:
        """Applies an event read from the log (at ``sequence``); False if it was already
        in (its version is at or below the cached aggregate's). Raises :class:`NotNext`
        when it does not follow the cached aggregate (a gap: the caller loads the whole
        aggregate). ``index=False`` leaves the indices to :meth:`index_all` (rebuild)."""
        cached = self.aggregates.get(event.originator_id)
        have = cached.version if cached is not None else 0
        if event.originator_version <= have:
            return False
        if event.originator_version != have + 1:
            raise NotNext(f"{event.originator_id}: event {event.originator_version} after {have}")
        aggregate = event.mutate(cached)
        assert isinstance(aggregate, AuditedAggregate)
        self.aggregates[event.originator_id] = aggregate
        if isinstance(aggregate, ProcessGraph):
            if index:
                self._index_graph(aggregate, [event])
            else:
                self._heard(event.actor, event.timestamp)
        self._settle(aggregate, sequence)
        return True

    def replace(self, aggregate: AuditedAggregate, sequence: int) -> None:
        """Installs an aggregate rebuilt from its own subject (after a gap), if it is
        newer than the cached one, and indexes it whole."""
        cached = self.aggregates.get(aggregate.id)
        if cached is not None and cached.version >= aggregate.version:
            return
        self.aggregates[aggregate.id] = aggregate
        if isinstance(aggregate, ProcessGraph):
            self._index_graph(aggregate, None)
        self._settle(aggregate, sequence)

    def install(
        self, aggregate: AuditedAggregate, events: list[AuditedEvent], sequence: int
    ) -> Effects:
        """Installs this replica's decision once the log acknowledged ``events`` (the
        last at ``sequence``), and returns what to publish. The caller holds the
        aggregate's lock, so nothing else advanced it meanwhile."""
        cached = self.aggregates.get(aggregate.id)
        if cached is not None and cached.version >= aggregate.version:
            raise AssertionError(f"{aggregate.id} advanced under its lock")
        self.aggregates[aggregate.id] = aggregate
        self.written = max(self.written, sequence)
        self._settle(aggregate, sequence)
        if isinstance(aggregate, ProcessGraph):
            return self._index_graph(aggregate, events)
        return Effects()

    def index_all(self, sequence: int) -> None:
        """Indexes every graph whole (after the rebuild up to ``sequence``; who was heard
        from was recorded per event by :meth:`apply`)."""
        for aggregate in list(self.aggregates.values()):
            if isinstance(aggregate, ProcessGraph):
                self._index_graph(aggregate, None, heard_from_nodes=False)
                self._settle(aggregate, sequence)

    # ------------------------------------------------------------------ checkpoints

    def capture(self) -> Callable[[], LiveState]:
        """What a checkpoint of this state at :attr:`applied` holds.

        Call it on the thread that changes the state (the engine's loop): it copies the
        indices (C-speed dict copies) and returns a function that packs the copies into
        a :class:`LiveState`, to run on another thread (packing a long history's ids
        takes a while). Aggregates this replica installed beyond ``applied`` may be in
        the copy; restoring applies the log after ``applied`` again, which is harmless
        (indices are idempotent, aggregates are read from the log).
        """
        with self._lock:
            applied = self.applied
            resident = list(self.aggregates)
            legacy = dict(self._legacy_graph_of)
            evicted = {name: list(totals) for name, totals in self._evicted_counts.items()}
            last_heard = dict(self.last_heard)

        def pack() -> LiveState:
            return LiveState(
                applied=applied,
                resident=resident,
                colonies=_pack_colonies(legacy, evicted),
                last_heard=last_heard,
            )

        return pack

    def restore(self, live: LiveState) -> None:
        """Takes the indices of ``live`` into this (new, empty) state, whole or not at
        all (ValueError or IndexError for packed ids that do not fit). The caller then
        loads the resident aggregates (:meth:`apply` with ``index=False``, up to
        ``live.applied``), calls :meth:`index_all` and applies the log after it."""
        legacy: dict[str, str] = {}
        for colony in live.colonies:
            prefix = f"{colony.colonyname}.graph."
            graphs = [prefix + hex_id for hex_id in _hex_ids(colony.graphs)]
            owners = array("I")
            owners.frombytes(colony.graph_of)
            if sys.byteorder != "little":
                owners.byteswap()
            processes = _hex_ids(colony.processes)
            if len(processes) != len(owners):
                raise ValueError(f"{len(processes)} processes but {len(owners)} graphs of them")
            legacy.update(zip(processes, map(graphs.__getitem__, owners), strict=True))
        with self._lock:
            if self.aggregates or self._legacy_graph_of:
                raise RuntimeError("restore into a state that is not empty")
            self._legacy_graph_of = legacy
            self._evicted_counts = {
                colony.colonyname: list(colony.evicted)
                for colony in live.colonies
                if any(colony.evicted)
            }
            self.last_heard.update(live.last_heard)

    # ------------------------------------------------------------------ the follower's position

    def advance(self, sequence: int) -> None:
        """The follower has applied the log up to ``sequence``: wake the waiters."""
        if sequence <= self.applied:
            return
        self.applied = sequence
        if self._progress is not None:
            self._progress.set()
            self._progress = None

    async def wait_applied(self, sequence: int, within: float) -> bool:
        """Waits until the log is applied up to ``sequence``; False after ``within`` s."""
        if self.applied >= sequence:
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while self.applied < sequence:
            if self._progress is None:
                self._progress = asyncio.Event()
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._progress.wait(), remaining)
            except TimeoutError:
                return self.applied >= sequence
        return True

    # ------------------------------------------------------------------ timers

    def next_deadline_in(self, now: float) -> float:
        """Seconds until the next deadline (a large number when there is none)."""
        with self._lock:
            return self._timers[0].at - now if self._timers else 3600.0

    def pop_due(self, now: float) -> Timer | None:
        """The next timer due at ``now``, removed; None when none is due."""
        with self._lock:
            if not self._timers or self._timers[0].at > now:
                return None
            return heapq.heappop(self._timers)

    def push_timer(self, timer: Timer) -> None:
        with self._lock:
            heapq.heappush(self._timers, timer)

    # ------------------------------------------------------------------ indices

    def _heard(self, actor: str, moment: datetime) -> None:
        known = self.last_heard.get(actor)
        if known is None or moment > known:
            self.last_heard[actor] = moment

    def _heard_from_nodes(self, graph: ProcessGraph) -> None:
        """What a graph's processes tell of their executors (when events are not at hand)."""
        for node in graph.nodes.values():
            moment = node.endtime or node.starttime
            if node.assignedexecutorid and moment is not None:
                self._heard(node.assignedexecutorid, moment)

    def _index_legacy(self, graph: ProcessGraph, processids: Iterable[str]) -> None:
        """Records which of ``processids`` (of ``graph``) have ids that do not derive
        to it: only those need the legacy map (one hash per call, none per process)."""
        prefix = graph.processgraphid[:32] if derives_graph(graph.processgraphid) else None
        for processid in processids:
            if prefix is None or not processid.startswith(prefix):
                self._legacy_graph_of[processid] = graph.id

    def _index_graph(
        self,
        graph: ProcessGraph,
        events: list[AuditedEvent] | None,
        heard_from_nodes: bool = True,
    ) -> Effects:
        """Updates the derived indices after ``events`` (None: index the whole graph, and
        unless ``heard_from_nodes`` is false, take who was heard from its processes)."""
        effects = Effects()
        with self._lock:
            if events is None or any(e.originator_version == 1 for e in events):
                self._colony_names[graph.colonyname] = None
                self._index_legacy(graph, graph.nodes)
            # Ordered (a dict): processes made ready together keep the event's order.
            touched: dict[str, None] = dict.fromkeys(graph.nodes) if events is None else {}
            if events is None and heard_from_nodes:
                self._heard_from_nodes(graph)
            for event in events or ():
                self._heard(event.actor, event.timestamp)
                child = getattr(event, "child", None)
                if child is not None:
                    self._index_legacy(graph, (child["processid"],))
                if isinstance(event, ChildrenAdded):
                    self._index_legacy(graph, (c["processid"] for c in event.children))
                touched.update(dict.fromkeys(r["processid"] for r in getattr(event, "ready", ())))
                event_process: str | None = getattr(event, "processid", None)
                if event_process:
                    touched[event_process] = None
                touched.update(dict.fromkeys(getattr(event, "cancelled", ())))
                if isinstance(event, (GraphRemoved, GraphCancelled)):
                    touched.update(dict.fromkeys(graph.nodes))
            removed = graph.removed
            for processid in touched:
                node = graph.nodes[processid]
                ready = node.is_ready
                if ready and not removed:
                    assert node.readytime is not None
                    key = (graph.colonyname, node.spec.conditions.executortype)
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
                if events is not None and node.state in _ENDED_CODES:
                    effects.ended.append((graph.colonyname, processid))
                    if self.on_ended is not None:
                        self.on_ended(processid)
                if removed:  # only what these events touched: no scan of the graph
                    continue
                if ready and node.waitdeadline is not None:
                    timer = Timer(
                        node.waitdeadline.timestamp(), processid, graph.id, node.attempt, "wait"
                    )
                elif node.is_running and node.execdeadline is not None:
                    timer = Timer(
                        node.execdeadline.timestamp(), processid, graph.id, node.attempt, "exec"
                    )
                else:
                    continue
                heapq.heappush(self._timers, timer)
        return effects


def _hex_ids(packed: bytes) -> list[str]:
    """The ids packed in ``packed`` (32 bytes each), as 64 hex characters."""
    if len(packed) % _ID_BYTES:
        raise ValueError(f"packed ids of {len(packed)} bytes: not a multiple of {_ID_BYTES}")
    hexed = packed.hex()
    width = 2 * _ID_BYTES
    return [hexed[at : at + width] for at in range(0, len(hexed), width)]


def _packed(hex_ids: list[str]) -> bytes:
    """``hex_ids`` (64 hex characters each) packed, 32 bytes an id; ValueError for an id
    that is not one (the domain makes no other)."""
    width = 2 * _ID_BYTES
    if any(len(hex_id) != width for hex_id in hex_ids):
        raise ValueError(f"an id that is not {width} hex characters")
    return bytes.fromhex("".join(hex_ids))


def _pack_colonies(legacy: dict[str, str], evicted: dict[str, list[int]]) -> list[ColonyGraphs]:
    """The legacy map and the totals, one :class:`ColonyGraphs` per colony that has
    either (see :meth:`EngineState.capture`).

    Raises ValueError for an id that is not 64 hex characters (the domain makes no other).
    """
    graphs: dict[str, dict[str, int]] = {}  # colony -> graph aggregate id -> its position
    processes: dict[str, list[str]] = {}
    owners: dict[str, array[int]] = {}
    for processid, graph_id in legacy.items():
        colonyname = graph_id.split(".", 1)[0]  # graph ids are <colony>.graph.<id>
        of_colony = graphs.setdefault(colonyname, {})
        position = of_colony.setdefault(graph_id, len(of_colony))
        processes.setdefault(colonyname, []).append(processid)
        owners.setdefault(colonyname, array("I")).append(position)
    if sys.byteorder != "little":
        for positions_of_colony in owners.values():
            positions_of_colony.byteswap()
    packed = []
    for name in [*graphs, *(name for name in evicted if name not in graphs)]:
        prefix = f"{name}.graph."
        graph_ids = [graph_id.removeprefix(prefix) for graph_id in graphs.get(name, ())]
        packed.append(
            ColonyGraphs(
                colonyname=name,
                graphs=_packed(graph_ids),
                processes=_packed(processes.get(name, [])),
                graph_of=owners[name].tobytes() if name in owners else b"",
                evicted=evicted.get(name, [0, 0, 0, 0]),
            )
        )
    return packed
