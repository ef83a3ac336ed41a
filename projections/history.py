"""The history of one process graph: every event on its own subject, in order, in words.

A graph's events are the messages on ``colonies.ev.<colony>.graph.<processgraphid>``
(one subject per aggregate, DESIGN.md), so reading a graph's history costs one batched
direct get per 1000 of its events, whatever the size of the rest of the log. Each
:class:`HistoryEntry` holds the stream sequence, the time the log recorded it, who caused
it (``actor``, and a name found in the colony's events), one line saying what happened,
and the decoded domain event (for ``--json``, time travel, debugging and audit).

Who may read: whoever may read the stream. History goes straight to JetStream, not
through the engine, so the colony's membership is not checked here; restrict the
``COLONIES`` stream (NATS accounts) to restrict history.

Trust: with the log's seal key (``EVENT_SEAL_KEY``) only the messages the engine sealed
are read, so events appended to the stream by anyone else are ignored (``colonies audit
verify`` reports them). Without it, every well-formed event on the subject is read.
Messages that are not this system's events, or whose version does not follow the last
one read, are ignored too. Ignored messages are logged as warnings.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any, Protocol, cast, overload

import msgspec
import nats
from eventsourcing.persistence import Cipher, DataError
from nats.aio.client import Client as NATS

from colonies_es.domain import (
    AttemptFailed,
    AttributeAdded,
    AuditedEvent,
    ChildAdded,
    ChildrenAdded,
    ColonyCreated,
    ExecutionTimedOut,
    ExecutorAdded,
    GraphCancelled,
    GraphEvent,
    GraphRemoved,
    GraphRerun,
    GraphSubmitted,
    LogAdded,
    OutputSet,
    ProcessAssigned,
    ProcessClosed,
    ReadyProcess,
    UserAdded,
    WaitTimedOut,
)
from colonies_es.settings import NatsAccess
from colonies_es.states import ProcessState
from colonies_es.store.codec import (
    EventMapper,
    MsgspecTranscoder,
    Sealer,
    decode_envelope,
    to_stored_event,
)
from colonies_es.store.jetstream import JetStreamLog, StoredMessage

__all__ = [
    "PREFIX",
    "STREAM",
    "EventSource",
    "HistoryEntry",
    "SubjectReader",
    "Untrusted",
    "actor_names",
    "colony_subject",
    "connect",
    "decode_event",
    "event_fields",
    "graph_history",
    "graph_subject",
    "history",
    "open_log",
    "recorded_time",
    "sealer_of",
    "topic_of",
]

log = logging.getLogger("colonies.history")

STREAM = "COLONIES"
"""The event-log stream."""
PREFIX = "colonies"
"""Events are on ``<PREFIX>.ev.<aggregate id>``."""
CONNECT_TIMEOUT = 5.0
"""Seconds :func:`connect` tries to reach NATS."""


class SubjectReader(Protocol):
    """Anything that reads the messages of one subject in order: a store's
    :class:`JetStreamLog`, or the events a projector sent in answer to a ``graph_events``
    query (:class:`~projections.graph_events.FetchedEvents`)."""

    async def read_subject(self, subject: str) -> list[StoredMessage]: ...


EventSource = NATS | JetStreamLog | SubjectReader
"""Where events are read: a connected nats-py client, a store's :class:`JetStreamLog`, or
events fetched through a membership-checked query."""

_DOMAIN_TOPIC_PREFIX = "colonies_es.domain."
_mapper = EventMapper(transcoder=MsgspecTranscoder())
_MAX_NAMES = 5
_MAX_TEXT = 80


class Untrusted(Exception):
    """A message that is not one of this system's events (or not sealed by the engine)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class HistoryEntry:
    """One event of a graph's history."""

    sequence: int
    """Its stream sequence."""
    time: datetime
    """When the log recorded it (UTC, microseconds)."""
    subject: str
    event: GraphEvent
    """The decoded domain event (read it, never change it)."""
    actorname: str
    """The actor's name in the colony ("colony owner", an executor or user name,
    "engine"), or empty when unknown."""
    summary: str
    """What happened, in one line."""

    @property
    def actor(self) -> str:
        """The id of whoever caused it: the command's signer, or the engine."""
        return self.event.actor

    @property
    def kind(self) -> str:
        """The event's class name: ``ProcessClosed``, ``GraphSubmitted``, ..."""
        return type(self.event).__name__

    @property
    def version(self) -> int:
        """The graph's version after this event (1 for the submission)."""
        return self.event.originator_version

    def to_json(self) -> dict[str, Any]:
        """The entry as JSON-ready builtins; ``event`` holds the event's own fields
        (``command``, the signed envelope, as base64)."""
        return {
            "sequence": self.sequence,
            "time": self.time.isoformat(),
            "subject": self.subject,
            "version": self.version,
            "kind": self.kind,
            "topic": topic_of(self.event),
            "actor": self.actor,
            "actorname": self.actorname,
            "summary": self.summary,
            "event": event_fields(self.event),
        }


def topic_of(event: AuditedEvent) -> str:
    """The eventsourcing topic of an event's class (``module:Class``)."""
    cls = type(event)
    return f"{cls.__module__}:{cls.__qualname__}"


def event_fields(event: AuditedEvent) -> dict[str, Any]:
    """An event's fields as JSON-ready builtins (times RFC 3339, bytes base64)."""
    fields: dict[str, Any] = msgspec.to_builtins(vars(event))
    fields["command"] = base64.b64encode(event.command).decode("ascii")
    return fields


# --- reading the log ---------------------------------------------------------------------


def graph_subject(colonyname: str | None, processgraphid: str, prefix: str = PREFIX) -> str:
    """The subject of a graph's events; any colony (``*``) when ``colonyname`` is empty."""
    return f"{prefix}.ev.{colonyname or '*'}.graph.{processgraphid}"


def colony_subject(colonyname: str, prefix: str = PREFIX) -> str:
    """The subject of a colony's events."""
    return f"{prefix}.ev.{colonyname}.colony"


@overload
def open_log(source: NATS | JetStreamLog, stream: str = STREAM) -> JetStreamLog: ...
@overload
def open_log(source: SubjectReader, stream: str = STREAM) -> SubjectReader: ...
def open_log(source: EventSource, stream: str = STREAM) -> JetStreamLog | SubjectReader:
    """A reader of the log ``stream`` on ``source`` (returned as is if it is one)."""
    if isinstance(source, NATS):
        return JetStreamLog(source, stream, lambda message: None)
    return source


def sealer_of(seal_key: str | bytes | None) -> Sealer | None:
    """The :class:`Sealer` of a seal key given as hex text or bytes (None: no key)."""
    if not seal_key:
        return None
    return Sealer(bytes.fromhex(seal_key) if isinstance(seal_key, str) else seal_key)


def recorded_time(message: StoredMessage) -> datetime:
    """When the log recorded ``message``, to the microsecond (UTC)."""
    micros = message.timestamp_ns // 1000
    return datetime.fromtimestamp(micros // 1_000_000, UTC).replace(microsecond=micros % 1_000_000)


def decode_event(
    message: StoredMessage, sealer: Sealer | None = None, cipher: Cipher | None = None
) -> AuditedEvent:
    """The domain event a message holds (its state decrypted with ``cipher`` when the
    log is encrypted). Raises :class:`Untrusted` for a message that is not an event
    envelope, is not sealed by ``sealer`` (when given), does not decrypt, names a class
    that is not one of this system's events, or lacks some of that event's fields."""
    try:
        envelope = decode_envelope(message.payload)
    except DataError:
        raise Untrusted("not an event envelope") from None
    if sealer is not None and not sealer.is_sealed(message.subject, message.payload):
        raise Untrusted("not sealed by the engine (no valid seal)")
    if cipher is not None:
        try:
            envelope = msgspec.structs.replace(envelope, state=cipher.decrypt(envelope.state))
        except Exception:
            raise Untrusted("it does not decrypt with the cipher key") from None
    if not envelope.topic.startswith(_DOMAIN_TOPIC_PREFIX):
        raise Untrusted(f"not an event of this system (topic {envelope.topic!r})")
    try:
        event = _mapper.to_domain_event(to_stored_event(envelope))
    except Exception as error:  # unknown class, undecodable state
        raise Untrusted(f"cannot decode the event: {error}") from None
    fields = _field_names(type(event))
    if fields is None:
        raise Untrusted(f"{envelope.topic!r} is not an event class")
    if not fields <= vars(event).keys():
        missing = fields - vars(event).keys()
        raise Untrusted(f"{type(event).__name__} without {', '.join(sorted(missing))}")
    return cast(AuditedEvent, event)


@cache
def _field_names(cls: type[Any]) -> frozenset[str] | None:
    """The fields of event class ``cls``; None if it is not one of this system's events
    (found once per class: ``isinstance`` on an event class goes through its ABC
    metaclass)."""
    if not issubclass(cls, AuditedEvent):
        return None
    return frozenset(field.name for field in dataclasses.fields(cls))


async def actor_names(
    source: EventSource, colonyname: str, seal_key: str | bytes | None = None
) -> dict[str, str]:
    """Names of the identities of a colony, by id, from its events: the owner ("colony
    owner"), the server owner who created it ("server owner"), executors and users."""
    sealer = sealer_of(seal_key)
    names: dict[str, str] = {}
    for message in await open_log(source).read_subject(colony_subject(colonyname)):
        try:
            event = decode_event(message, sealer)
        except Untrusted:
            continue
        if isinstance(event, ColonyCreated):
            names.setdefault(event.actor, "server owner")
            names[event.ownerid] = "colony owner"
        elif isinstance(event, ExecutorAdded):
            names[event.executorid] = event.executorname
        elif isinstance(event, UserAdded):
            names[event.userid] = event.username
    return names


async def graph_history(
    source: EventSource,
    colonyname: str | None,
    processgraphid: str,
    seal_key: str | bytes | None = None,
) -> list[HistoryEntry]:
    """Every event of a process graph, in order (empty if there is no such graph).

    ``colonyname`` may be None: the graph's subject is then found in any colony.
    ``seal_key`` (hex or bytes) is the log's seal key: with it, messages the engine did
    not seal are ignored. Raises ``OperationalError`` when the log cannot be read.
    """
    reader = open_log(source)
    sealer = sealer_of(seal_key)
    messages = await reader.read_subject(graph_subject(colonyname, processgraphid))
    events: list[tuple[StoredMessage, GraphEvent]] = []
    for message in messages:
        if events and message.subject != events[0][0].subject:
            continue  # the same graph id in another colony: not this graph
        try:
            event = decode_event(message, sealer)
        except Untrusted as untrusted:
            log.warning(
                "ignoring message %d on %s: %s", message.sequence, message.subject, untrusted
            )
            continue
        expected = events[-1][1].originator_version + 1 if events else 1
        if (
            not isinstance(event, GraphEvent)
            or event.originator_version != expected
            or isinstance(event, GraphSubmitted) != (expected == 1)
        ):
            log.warning(
                "ignoring message %d on %s: not version %d of the graph",
                message.sequence,
                message.subject,
                expected,
            )
            continue
        events.append((message, event))
    if not events:
        return []
    colonyname = events[0][0].subject.split(".")[-3]
    names = await actor_names(reader, colonyname, seal_key)
    narrator = _Narrator(names)
    return [
        HistoryEntry(
            sequence=message.sequence,
            time=recorded_time(message),
            subject=message.subject,
            event=event,
            actorname=narrator.actor_name(event),
            summary=narrator.describe(event),
        )
        for message, event in events
    ]


async def connect(where: str | NatsAccess) -> NATS:
    """A nats-py connection for reading, to the NATS URL(s) ``where`` (comma separated)
    or as a :class:`~colonies_es.settings.NatsAccess` says (credential, TLS).

    Gives up after one attempt per server, within about :data:`CONNECT_TIMEOUT`
    seconds per server, raising the last connection error (nats-py's ``NoServersError``
    when every server refused). nats-py's default error callback, which logs a
    traceback per failed attempt, is replaced by a debug line.
    """
    access = NatsAccess.from_store_env({"NATS_URL": where}) if isinstance(where, str) else where

    async def quiet(error: Exception) -> None:
        log.debug("NATS at %s: %r", access.url, error)

    return await asyncio.wait_for(
        nats.connect(
            **access.connect_options(),
            connect_timeout=CONNECT_TIMEOUT,
            max_reconnect_attempts=1,  # 0 would mean "retry forever" at the first connect
            reconnect_time_wait=0.1,
            allow_reconnect=False,
            error_cb=quiet,
        ),
        CONNECT_TIMEOUT * (len(access.servers) + 1),
    )


def history(
    url: str | NatsAccess,
    processgraphid: str,
    colonyname: str | None = None,
    seal_key: str | bytes | None = None,
) -> list[HistoryEntry]:
    """:func:`graph_history` for plain (non-async) code: connects to NATS at ``url``,
    reads, disconnects."""

    async def read() -> list[HistoryEntry]:
        nc = await connect(url)
        try:
            return await graph_history(nc, colonyname, processgraphid, seal_key)
        finally:
            await nc.close()

    return asyncio.run(read())


# --- telling what happened -----------------------------------------------------------------


class _Narrator:
    """Describes a graph's events in order: it learns nodenames as processes appear."""

    def __init__(self, actors: dict[str, str]) -> None:
        self.actors = actors
        self.nodenames: dict[str, str] = {}
        self.graphstate: int | None = None

    def actor_name(self, event: GraphEvent) -> str:
        if isinstance(event, ExecutionTimedOut | WaitTimedOut):
            return "engine"
        return self.actors.get(event.actor, "")

    def describe(self, event: GraphEvent) -> str:
        """One line for ``event``; call it for every event, in order."""
        if isinstance(event, GraphSubmitted):
            for process in event.processes:
                self.nodenames[process["processid"]] = process["spec"].get("nodename", "")
        elif isinstance(event, ChildAdded):
            self.nodenames[event.child["processid"]] = event.child["spec"].get("nodename", "")
        elif isinstance(event, ChildrenAdded):
            for child in event.children:
                self.nodenames[child["processid"]] = child["spec"].get("nodename", "")
        parts = [self._what(event)]
        ready = [r for r in event.ready if getattr(event, "processid", None) != r["processid"]]
        if ready:
            parts.append("ready: " + ", ".join(self._ready(r) for r in ready))
        if event.graphstate != self.graphstate and not (
            self.graphstate is None and event.graphstate == ProcessState.WAITING
        ):
            parts.append(f"graph {ProcessState(event.graphstate).name}")
        self.graphstate = event.graphstate
        return "; ".join(parts)

    def _what(self, event: GraphEvent) -> str:
        if isinstance(event, GraphRerun):
            kept = [self.name(pid) for pid in event.completed]
            return (
                f"re-ran graph {event.origin}: {len(event.processes)} processes, "
                f"{len(kept)} keeping their output{_listing(kept, ' (')}"
            )
        if isinstance(event, GraphSubmitted):
            names = [self.name(p["processid"]) for p in event.processes]
            return f"submitted {_count(names, 'process')} {_listing(names, '(')}".rstrip()
        if isinstance(event, ProcessAssigned):
            executor = self.actors.get(event.executorid, event.executorid[:12])
            return f"{self.name(event.processid)} assigned to {executor} (attempt {event.attempt})"
        if isinstance(event, ProcessClosed):
            return f"{self.name(event.processid)} closed: out={_text(event.output)}"
        if isinstance(event, OutputSet):
            return f"{self.name(event.processid)} set its output: out={_text(event.output)}"
        if isinstance(event, AttemptFailed):
            verb = "timed out" if isinstance(event, ExecutionTimedOut) else "failed"
            what = f"{self.name(event.processid)} {verb} (attempt {event.attempt}): "
            what += _first_error(event.errors)
            return what + ("; retried" if event.retried else self._cancelled(event.cancelled))
        if isinstance(event, WaitTimedOut):
            what = f"{self.name(event.processid)} was not taken in time (attempt {event.attempt})"
            return f"{what}: {_first_error(event.errors)}{self._cancelled(event.cancelled)}"
        if isinstance(event, GraphCancelled):
            names = [self.name(pid) for pid in event.cancelled]
            return f"graph cancelled: {_count(names, 'process')} cancelled {_listing(names)}"
        if isinstance(event, ChildAdded):
            child = event.child
            what = f"{self.name(event.parentprocessid)} added {self.name(child['processid'])}"
            if event.insert and child["children"]:
                what += " (insert)"
            if child["children"]:
                what += " before " + ", ".join(self.name(pid) for pid in child["children"])
            return what
        if isinstance(event, ChildrenAdded):
            names = [self.name(child["processid"]) for child in event.children]
            what = f"{self.name(event.parentprocessid)} added {_count(names, 'process')} "
            what += _listing(names, "(")
            waiting = event.children[0]["children"] if event.children else []
            if event.insert and waiting:
                what += " (insert)"
            if waiting:
                what += " before " + ", ".join(self.name(pid) for pid in waiting)
            return what
        if isinstance(event, AttributeAdded):
            return f"{self.name(event.processid)} attribute {event.key}={_text(event.value)}"
        if isinstance(event, LogAdded):
            return f"{self.name(event.processid)} log: {_text(event.message)}"
        if isinstance(event, GraphRemoved):
            return "graph removed"
        return type(event).__name__

    def name(self, processid: str) -> str:
        return self.nodenames.get(processid) or processid[:12]

    def _ready(self, ready: ReadyProcess) -> str:
        name = self.name(ready["processid"])
        return f"{name} in={_text(ready['input'])}" if ready["input"] else name

    def _cancelled(self, cancelled: Sequence[str]) -> str:
        names = [self.name(pid) for pid in cancelled]
        if not names:
            return ""
        return f"; cancelled {_count(names, 'waiting process')}: {', '.join(names)}"


def _count(names: Sequence[str], noun: str) -> str:
    return f"{len(names)} {noun}{'' if len(names) == 1 else 'es'}"


def _listing(names: Iterable[str], opening: str = "(") -> str:
    """``(a, b, c)`` with at most a few names (``(a, b, ...)``), empty for no names."""
    names = list(names)
    if not names:
        return ""
    shown = names[:_MAX_NAMES] + (["..."] if len(names) > _MAX_NAMES else [])
    return f"{opening}{', '.join(shown)})"


def _text(value: object) -> str:
    """A short rendering of a value (lists as ``[1, 2]``), cut at 80 characters."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 3] + "..."


def _first_error(errors: Sequence[str]) -> str:
    first = errors[0].strip().splitlines()[0] if errors and errors[0].strip() else "no error given"
    return _text(first)
