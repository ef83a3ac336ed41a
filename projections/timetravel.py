"""Time travel: the state of one process graph at a moment of its history, by replay.

A moment (:func:`parse_moment`, CLIENT_API.md) is one of

- a stream sequence, ``1234``: after every event of the graph up to that sequence;
- a time, ``2026-11-26T14:39:08.123456+00:00`` (ISO 8601; without an offset it is UTC):
  after every event the log recorded up to then;
- ``#N``: after the graph's N-th event, counted from 1.

:func:`state_at` replays only that graph's events, up to the moment, into a fresh
:class:`~colonies_es.domain.ProcessGraph` (each event's ``mutate``: the rules are not run
again), so its cost is the graph's own length, not the log's. :func:`replay_steps` walks
the history event by event. :func:`replay` does it all from a NATS URL or a client.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import msgspec

from colonies_es.domain import GraphEvent, ProcessGraph
from colonies_es.models import Process
from colonies_es.models import ProcessGraph as ProcessGraphModel
from colonies_es.projections.history import HistoryEntry, history

__all__ = [
    "GraphState",
    "Moment",
    "Nth",
    "ReplayError",
    "apply_entry",
    "graph_state",
    "parse_moment",
    "replay",
    "replay_steps",
    "state_at",
    "upto",
]


@dataclass(frozen=True)
class Nth:
    """After the graph's ``n``-th event (from 1)."""

    n: int


Moment = int | datetime | Nth
"""A stream sequence, a time (timezone-aware) or the N-th event."""


class ReplayError(ValueError):
    """The moment is outside the graph's history, or its events do not replay."""


class _HasUrl(Protocol):
    @property
    def url(self) -> str: ...


def parse_moment(text: str) -> Moment:
    """``"1234"`` (a stream sequence), ``"#3"`` (the third event) or an ISO 8601 time
    (UTC when it has no offset). Raises ValueError for anything else."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    if text.startswith("#"):
        if not text[1:].isdigit() or int(text[1:]) < 1:
            raise ValueError(f"{text!r}: after '#' comes an event number, from 1")
        return Nth(int(text[1:]))
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a stream sequence (1234), an ISO time "
            "(2026-01-31T12:00:00Z) nor an event number (#3)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def upto(entries: Sequence[HistoryEntry], moment: Moment) -> list[HistoryEntry]:
    """The entries of a history up to ``moment``, the moment's own event included.

    Raises :class:`ReplayError` when the graph did not exist yet at that moment, or for
    ``#N`` past its last event.
    """
    if isinstance(moment, Nth):
        if moment.n > len(entries):
            raise ReplayError(f"#{moment.n}: the graph has {len(entries)} events")
        return list(entries[: moment.n])
    if isinstance(moment, datetime):
        last = max((i for i, e in enumerate(entries) if e.time <= moment), default=-1)
    else:
        last = max((i for i, e in enumerate(entries) if e.sequence <= moment), default=-1)
    if last < 0:
        first = (
            f" (its first event is {entries[0].sequence} at {entries[0].time})" if entries else ""
        )
        raise ReplayError(f"the graph did not exist yet at {_show(moment)}{first}")
    return list(entries[: last + 1])


def state_at(
    history_or_events: Sequence[HistoryEntry] | Sequence[GraphEvent], moment: Moment
) -> ProcessGraph:
    """The graph as it was at ``moment``, rebuilt from its events into a fresh aggregate.

    Takes a history (:func:`~colonies_es.projections.history.graph_history`) or the
    graph's events in order; events alone carry no stream sequence, so with them a
    moment is ``#N`` or a time (compared with the events' own timestamps). Raises
    :class:`ReplayError` as :func:`upto` does, or when the events do not replay.
    """
    entries = [_as_entry(item) for item in history_or_events]
    if isinstance(moment, int) and entries and entries[0].sequence < 0:
        raise ReplayError("events without stream sequences: give a time or #N")
    *_, (_, graph) = replay_steps(upto(entries, moment))  # upto never returns nothing
    return graph


def replay_steps(entries: Sequence[HistoryEntry]) -> Iterator[tuple[HistoryEntry, ProcessGraph]]:
    """Each entry with the graph right after it. The graph is one aggregate changed in
    place from step to step: take what you need (:func:`graph_state`) before the next.
    Raises :class:`ReplayError` for an event that does not apply."""
    graph: ProcessGraph | None = None
    for entry in entries:
        graph = apply_entry(graph, entry)
        yield entry, graph


def apply_entry(graph: ProcessGraph | None, entry: HistoryEntry) -> ProcessGraph:
    """The graph after ``entry`` (``graph`` may be changed in place; None before the
    first event). Raises :class:`ReplayError` for an event that does not apply."""
    try:
        changed = entry.event.mutate(graph)
    except Exception as error:
        raise ReplayError(
            f"event {entry.sequence} ({entry.kind}) does not replay: {error}"
        ) from error
    if not isinstance(changed, ProcessGraph):
        raise ReplayError(f"event {entry.sequence} ({entry.kind}) does not make a graph")
    return changed


class GraphState(msgspec.Struct, kw_only=True):
    """A graph and its processes as clients see them (``workflow get``), at one moment."""

    processgraph: ProcessGraphModel
    processes: list[Process]


def graph_state(graph: ProcessGraph) -> GraphState:
    """A copy of the graph's state, as models (nothing shared with the aggregate)."""
    return GraphState(
        processgraph=graph.to_model(),
        processes=[graph.process_model(pid) for pid in graph.processids],
    )


def replay(
    client_or_url: str | _HasUrl,
    processgraphid: str,
    moment: Moment | str,
    colonyname: str | None = None,
    seal_key: str | bytes | None = None,
) -> GraphState:
    """The state of a graph at ``moment`` (a :data:`Moment` or its text), read from the
    log on NATS at ``client_or_url`` (a URL, or a client whose ``url`` says where).

    For plain code; in async code use ``graph_history`` and :func:`state_at`. Raises
    :class:`ReplayError` (also when there is no such graph) and ValueError for a bad
    moment.
    """
    at = parse_moment(moment) if isinstance(moment, str) else moment
    url = client_or_url if isinstance(client_or_url, str) else client_or_url.url
    entries = history(url, processgraphid, colonyname, seal_key)
    if not entries:
        raise ReplayError(f"process graph {processgraphid} has no events")
    return graph_state(state_at(entries, at))


def _as_entry(item: HistoryEntry | GraphEvent) -> HistoryEntry:
    if isinstance(item, HistoryEntry):
        return item
    return HistoryEntry(
        sequence=-1, time=item.timestamp, subject="", event=item, actorname="", summary=""
    )


def _show(moment: Moment) -> str:
    if isinstance(moment, datetime):
        return moment.isoformat()
    return f"sequence {moment}" if isinstance(moment, int) else f"#{moment.n}"
