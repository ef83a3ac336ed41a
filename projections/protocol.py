"""The query protocol: subjects, op names, request bodies and replies of the read side.

Requests
    A query is sealed like a command (:func:`colonies_es.crypto.seal`) with the op name
    ``"q.<op>"`` (``"q.get_graph"``...), so a signed query can never be replayed as an
    engine command, and sent as a NATS request to ``colonies.q.<op>``. Projectors serve
    these subjects as the ``nats.micro`` service ``colonies-queries`` in the queue group
    ``colonies-queries``. The caller must be a member of the colony the answer is about
    (its owner, an APPROVED executor or a user), as the projected colony says.

Replies
    A success is the JSON of the result: models of :mod:`colonies_es.models`, lists of
    them, or the objects documented on each body below. A refusal carries the micro
    error headers ``Nats-Service-Error-Code`` (400, 403, 404, 408, 413 the answer is over the
    NATS max_payload: ask for fewer, 500) and
    ``Nats-Service-Error`` (one readable line), like the engine's.

Consistency
    Every body has ``after`` and ``wait``: the answer must come from a view that has
    applied the log at least up to stream sequence ``after``; the projector waits up to
    ``wait`` seconds for that (at most :data:`MAX_WAIT`) and answers 408 if it does not
    get there. With several projectors in the queue group, this is how a client that has
    seen position N never reads an older view from another instance.
"""

from __future__ import annotations

import msgspec

from colonies_es.models import Process, ProcessGraph

QUERY_PREFIX = "colonies.q"
QUERY_SERVICE = "colonies-queries"
QUERY_QUEUE_GROUP = "colonies-queries"
SIGNED_OP_PREFIX = "q."

MAX_WAIT = 30.0
"""Longest a projector waits for its view to reach a query's ``after`` (seconds)."""

DEFAULT_COUNT = 100


def query_subject(op: str) -> str:
    """The subject of query ``op``: ``colonies.q.<op>``."""
    return f"{QUERY_PREFIX}.{op}"


def signed_op(op: str) -> str:
    """The op name sealed into the signed request of query ``op``: ``q.<op>``."""
    return f"{SIGNED_OP_PREFIX}{op}"


class QueryRefused(Exception):
    """A query the read side will not answer, with its status (400, 403, 404, 408)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Query(msgspec.Struct, kw_only=True):
    """What every query body holds: the position its answer must reflect."""

    after: int = 0
    """Answer from a view that has applied the log up to this stream sequence."""
    wait: float = 5.0
    """Seconds the projector may wait for its view to reach ``after``."""


class GetGraph(Query, kw_only=True):
    """A process graph with its processes: :class:`GraphView`."""

    processgraphid: str


class ListGraphs(Query, kw_only=True):
    """The colony's process graphs, newest first: ``[ProcessGraph, ...]``."""

    colonyname: str
    state: int | None = None
    """Only graphs in this state; None (or a negative number) for every state."""
    count: int = DEFAULT_COUNT


class ListProcesses(Query, kw_only=True):
    """The colony's processes, newest first: ``[Process, ...]``."""

    colonyname: str
    state: int | None = None
    """Only processes in this state; None (or a negative number) for every state."""
    count: int = DEFAULT_COUNT


class GetProcess(Query, kw_only=True):
    """One process: ``Process``."""

    processid: str


class GetStats(Query, kw_only=True):
    """Counts of the colony's processes and graphs per state: ``Statistics``."""

    colonyname: str


class GetLogs(Query, kw_only=True):
    """A process's log messages with a ``timestamp`` after ``since`` (unix ns), oldest
    first; the last ``count`` of them (all when ``count`` <= 0): ``[Log, ...]``."""

    processid: str
    count: int = DEFAULT_COUNT
    since: int = 0


class GetPosition(Query, kw_only=True):
    """The projector's position (the last stream sequence its view has applied), once it
    is at least ``after``: :class:`Position`. Any signed caller may ask."""


class GetLogPosition(Query, kw_only=True):
    """The stream sequence of the last event in the log (0 when there is none), read by
    the projector from the stream whatever its view's position: :class:`Position`. Any
    signed caller may ask; clients need no right to read the stream for it."""


class GetGraphEvents(Query, kw_only=True):
    """A graph's events and its colony's (they name the actors and say who was allowed
    what), as the log stores them, from stream sequence ``start`` on: :class:`GraphEvents`.
    The caller must be a member of the graph's colony: this is how history, time travel,
    debug and the audit of one graph are read without any right on the stream."""

    processgraphid: str
    start: int = 0


class GraphView(msgspec.Struct, kw_only=True):
    """The reply to ``get_graph``: ``{"graph": ProcessGraph, "processes": [Process, ...],
    "executornames": {processid: name}}``."""

    graph: ProcessGraph
    processes: list[Process]
    """In the graph's order (``processids``)."""
    executornames: dict[str, str] = msgspec.field(default_factory=dict)
    """The name of each assigned executor (``Process`` has only its id), by process id,
    as the executor was named when it took the process."""


class RawEvent(msgspec.Struct, kw_only=True):
    """One message of the log: an event the engine sealed, with its state in clear (when
    the log is encrypted) and the seal dropped; or, with ``trusted`` false, a message on
    the same subject that the engine did not seal, as it is (for the audit to report)."""

    sequence: int
    subject: str
    timestamp_ns: int
    payload: bytes
    """The event envelope (colonies_es.store.codec), msgpack."""
    trusted: bool = True


class GraphEvents(msgspec.Struct, kw_only=True):
    """The reply to ``graph_events``: events by stream sequence; ``more`` when the reply
    stopped short of the last (ask again with ``start`` after the last sequence)."""

    events: list[RawEvent]
    more: bool = False


class Position(msgspec.Struct, kw_only=True):
    """The reply to ``position``."""

    position: int


QUERIES: dict[str, type[Query]] = {
    "get_graph": GetGraph,
    "list_graphs": ListGraphs,
    "list_processes": ListProcesses,
    "get_process": GetProcess,
    "stats": GetStats,
    "logs": GetLogs,
    "position": GetPosition,
    "log_position": GetLogPosition,
    "graph_events": GetGraphEvents,
}
"""Every query op, with the type of its body."""
