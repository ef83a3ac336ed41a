"""A graph's timeline for the web UI: its nodes, its edges and every event's changes.

The page draws a graph as it was at any event of its history (the scrubber). Rather than
ask the server for the whole graph at each step, it gets the timeline once:

- ``nodes``: every process the graph ever had (its id, node name and function), with the
  index of the event that made it (``born``) and how (``submitted`` with the workflow, or
  ``child`` added at run time);
- ``edges``: every parent → child link it ever had, with the event that made it and the
  one that removed it (``died``; add_child with ``insert`` moves links), and its kind
  (``dependency`` from the workflow, ``add_child`` from a ChildAdded event);
- ``events``: each event's sequence, time, kind, actor, summary, the graph's state after
  it, and ``changes``: ``[node, state]`` for each process whose state it changed.

:meth:`TimelineBuilder.to_json` packs it so that a 1,000-child graph's 3,000 events stay
a compact document (ids are 64 characters): nodes are named by their index in
``nodes``; an edge is ``[from, to, born, died, add_child (0|1)]``; an event is ``[seq,
us (microseconds since the epoch), kind (index in "kinds"), actor (index in "actors",
each [id, name]), summary, graph state, changes]``. :attr:`TimelineBuilder.events` and
:attr:`TimelineBuilder.edges` keep the unpacked dicts. A page following a running graph
asks only for what follows what it has (:meth:`TimelineBuilder.to_json`'s counts).

A node's state at event ``i`` is its last change at or before ``i``, so a step of the
scrubber is a handful of changes. The states come from the domain itself: each event is
applied with its own ``mutate`` (as time travel does) and the changed processes are read
from the aggregate, so the UI never re-implements the graph's rules. Only the processes
an event can touch are compared (the ones it names); events of other kinds compare all.

:class:`TimelineBuilder` is incremental: a running graph's new events extend it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from colonies_es.domain import (
    AttemptFailed,
    AttributeAdded,
    ChildAdded,
    ChildrenAdded,
    GraphCancelled,
    GraphEvent,
    GraphSubmitted,
    LogAdded,
    OutputSet,
    ProcessAssigned,
    ProcessClosed,
    ProcessGraph,
    WaitTimedOut,
)
from colonies_es.projections.history import HistoryEntry
from colonies_es.projections.timetravel import apply_entry

__all__ = ["TimelineBuilder", "moment_index"]

_NAMED_ONLY = (
    ProcessAssigned,
    OutputSet,
    ProcessClosed,
    AttemptFailed,
    WaitTimedOut,
    GraphCancelled,
    ChildAdded,
    ChildrenAdded,
    AttributeAdded,
    LogAdded,
)
"""Event kinds that change only the processes they name (see :func:`_touched`)."""


class TimelineBuilder:
    """Builds a graph's timeline from its history entries, in order (module docstring).

    Feed it the whole history once (:meth:`extend`), then only the entries that follow
    (a running graph); :meth:`to_json` is the timeline so far.
    """

    def __init__(self) -> None:
        self.graph: ProcessGraph | None = None
        """The aggregate after the last entry fed (the domain's own replay)."""
        self.entries: list[HistoryEntry] = []
        self.nodes: list[dict[str, Any]] = []
        self.edges: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self._index: dict[str, int] = {}
        """Processid -> its index in :attr:`nodes`."""
        self._states: dict[str, int] = {}
        self._parents: dict[str, list[str]] = {}
        self._live_edges: dict[tuple[str, str], dict[str, Any]] = {}

    @property
    def last_sequence(self) -> int:
        """The stream sequence of the last entry fed (0 before any)."""
        return self.entries[-1].sequence if self.entries else 0

    def extend(self, entries: Iterable[HistoryEntry]) -> int:
        """Applies the entries after :attr:`last_sequence` (earlier ones are skipped, so
        a re-read history can be passed whole); returns how many were new. Raises
        :class:`~colonies_es.projections.timetravel.ReplayError` for an event that does
        not apply."""
        added = 0
        for entry in entries:
            if entry.sequence <= self.last_sequence:
                continue
            self._apply(entry)
            added += 1
        return added

    def _apply(self, entry: HistoryEntry) -> None:
        index = len(self.entries)
        graph = self.graph = apply_entry(self.graph, entry)
        self.entries.append(entry)
        changes: list[list[Any]] = []
        touched = [
            (processid, node)
            for processid in _touched(entry.event, graph)
            if (node := graph.nodes.get(processid)) is not None
        ]
        for processid, node in touched:  # the new ones first: an edge may join two of them,
            if processid not in self._index:  # or an older process to one (a reduce waiting
                self._index[processid] = len(self.nodes)  # for children added beside it)
                added = isinstance(entry.event, ChildAdded | ChildrenAdded)
                kind = "child" if added else "submitted"
                self.nodes.append(
                    {
                        "id": processid,
                        "name": node.nodename,
                        "func": node.spec.funcname,
                        "born": index,
                        "kind": kind,
                    }
                )
        for processid, node in touched:
            if self._states.get(processid) != node.state:
                self._states[processid] = node.state
                changes.append([self._index[processid], node.state])
            if self._parents.get(processid) != node.parents:
                self._link(processid, node.parents, index, entry.event)
        self.events.append(
            {
                "seq": entry.sequence,
                "us": int(entry.time.timestamp() * 1_000_000),
                "kind": entry.kind,
                "actor": entry.actor,
                "actorname": entry.actorname,
                "summary": entry.summary,
                "graphstate": graph.state,
                "changes": changes,
            }
        )

    def _link(self, processid: str, parents: list[str], index: int, event: GraphEvent) -> None:
        """Records the edges into ``processid`` that ``event`` made or removed. Parents
        are usually only appended (a reduce gaining a map's children one by one): that
        case costs the new parents only, not the whole list again."""
        before = self._parents.get(processid, [])
        if parents[: len(before)] == before:
            added, removed = parents[len(before) :], []
        else:
            old, new = set(before), set(parents)
            added, removed = [p for p in parents if p not in old], list(old - new)
        kind = "add_child" if isinstance(event, ChildAdded | ChildrenAdded) else "dependency"
        for parent in added:
            edge = {
                "from": self._index[parent],
                "to": self._index[processid],
                "born": index,
                "died": None,
                "kind": kind,
            }
            self.edges.append(edge)
            self._live_edges[(parent, processid)] = edge
        for parent in removed:
            gone = self._live_edges.pop((parent, processid), None)
            if gone is not None:
                gone["died"] = index
        self._parents[processid] = list(parents)

    def to_json(
        self, events_from: int = 0, nodes_from: int = 0, edges_from: int = 0
    ) -> dict[str, Any]:
        """The timeline so far, packed (module docstring), with the graph's identity and
        state after its last event; empty lists before any entry. It does not change as
        the builder goes on (its lists are copies).

        Given the counts of events, nodes and edges a page already has, only what
        follows them: ``events``, ``nodes`` and ``edges`` from those counts, ``died``:
        ``[edge, event]`` for each earlier edge removed by an event after
        ``events_from``, and ``from``: the three counts. (The kind and actor tables are
        always whole: indexes stay the same from one answer to the next.)
        """
        graph = self.graph
        kinds: dict[str, int] = {}
        actors: dict[tuple[str, str], int] = {}
        events = [
            [
                event["seq"],
                event["us"],
                kinds.setdefault(event["kind"], len(kinds)),
                actors.setdefault((event["actor"], event["actorname"]), len(actors)),
                event["summary"],
                event["graphstate"],
                event["changes"],
            ]
            for event in self.events
        ]
        packed: dict[str, Any] = {
            "processgraphid": graph.processgraphid if graph else "",
            "colonyname": graph.colonyname if graph else "",
            "state": graph.state if graph else 0,
            "origin": graph.origin if graph else "",
            "nodes": self.nodes[nodes_from:],
            "edges": [
                [e["from"], e["to"], e["born"], e["died"], int(e["kind"] == "add_child")]
                for e in self.edges[edges_from:]
            ],
            "kinds": list(kinds),
            "actors": [list(actor) for actor in actors],
            "events": events[events_from:],
        }
        if events_from or nodes_from or edges_from:
            packed["from"] = {"events": events_from, "nodes": nodes_from, "edges": edges_from}
            packed["died"] = [
                [number, edge["died"]]
                for number, edge in enumerate(self.edges[:edges_from])
                if edge["died"] is not None and edge["died"] >= events_from
            ]
        return packed


def _touched(event: GraphEvent, graph: ProcessGraph) -> Iterable[str]:
    """The processes whose state or parents ``event`` may have changed: the ones it
    names for the kinds of :data:`_NAMED_ONLY`, every process for the others
    (submission, re-run, removal, kinds added later)."""
    if isinstance(event, GraphSubmitted) or not isinstance(event, _NAMED_ONLY):
        return list(graph.nodes)
    named: list[str] = [ready["processid"] for ready in event.ready]
    for field in ("processid", "parentprocessid"):
        value = getattr(event, field, None)
        if isinstance(value, str):
            named.append(value)
    named.extend(getattr(event, "cancelled", ()))
    if isinstance(event, ChildAdded):
        named.append(event.child["processid"])
        named.extend(event.child["children"])
    if isinstance(event, ChildrenAdded):
        for child in event.children:
            named.append(child["processid"])
            named.extend(child["children"])
    return dict.fromkeys(named)


def moment_index(entries: Sequence[HistoryEntry], sequence: int) -> int:
    """The index of the last entry at or before stream ``sequence`` (-1: none)."""
    return max((i for i, e in enumerate(entries) if e.sequence <= sequence), default=-1)
