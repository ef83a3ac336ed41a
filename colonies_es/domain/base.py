"""Building blocks the aggregates share: string ids, audited events, names and ids checks.

eventsourcing's ready-made ``Aggregate`` and ``AggregateEvent`` use UUID ids. Ours are
strings because they double as NATS subject tokens (``<colony>.colony``,
``<colony>.graph.<processgraphid>``), so this module builds the same pieces on the
library's generic bases with ``str`` as the id type:

- :class:`AuditedEvent` (``CanMutateAggregate[str]``, a frozen dataclass like every
  eventsourcing event) adds the audit fields every event of this system carries:
  ``actor``, the id of whoever caused the event (the signer of the command, or the
  engine's own id for what the engine decides itself, such as a timeout), and
  ``command``, the exact bytes of the signed command envelope it came from (``b""`` when
  there is none, e.g. in unit tests). An event's ``timestamp`` is the ``now`` the command
  was given: the domain never reads the clock.
- :class:`AuditedCreationEvent` (``CanInitAggregate[str]``) is the first event of an
  aggregate; replaying it builds the aggregate.
- :class:`AuditedAggregate` (``BaseAggregate[str]``) gives commands a typed way to
  trigger events: build the event with :meth:`~AuditedAggregate._next_header`, hand it
  to :meth:`~AuditedAggregate._trigger`.

Events are constructed with keyword arguments and are checked by the type checker (their
metaclass is declared a dataclass maker). Their fields hold only what eventsourcing's
transcoder can store: str, int, float, bool, None, bytes, datetime, and lists and dicts
of these. Stored tuples come back as lists, so events use lists.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
from datetime import UTC, datetime
from typing import Any, ClassVar, Self, TypedDict, TypeVar, dataclass_transform

import msgspec
from eventsourcing.domain import (
    BaseAggregate,
    CanInitAggregate,
    CanMutateAggregate,
    MetaDomainEvent,
)
from eventsourcing.utils import get_topic, resolve_topic

from colonies_es.domain.errors import BadRequest

__all__ = [
    "AuditedAggregate",
    "AuditedCreationEvent",
    "AuditedEvent",
    "EventHeader",
    "check_id",
    "check_name",
    "clone",
    "clone_as",
    "colony_aggregate_id",
    "derives_graph",
    "graph_aggregate_id",
    "graph_id_of_process",
    "is_id",
    "new_graph_id",
    "new_id",
    "new_process_id",
]

T = TypeVar("T")

_clone_encoder = msgspec.msgpack.Encoder()


def clone(value: Any) -> Any:
    """An independent copy of user data (JSON-like: lists, dicts, scalars, datetimes).

    The domain copies inputs, outputs and specs so that no list is shared between an
    event and an aggregate; a msgpack round trip does it several times faster than
    ``copy.deepcopy``, which dominated the cost of replaying graphs.
    """
    return msgspec.msgpack.decode(_clone_encoder.encode(value))


def clone_as(value: Any, kind: type[T]) -> T:
    """An independent copy of ``value`` (a Struct, or plain data) as a ``kind``."""
    return msgspec.msgpack.decode(_clone_encoder.encode(value), type=kind)


_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ID_RE = re.compile(r"[0-9a-f]{64}")


def new_id() -> str:
    """A fresh random id (an attribute's, a log's): 64 lowercase hex characters (SHA3-256
    of 32 random bytes, as ColonyOS makes them). Graphs and processes get ids that tell
    their graph instead: :func:`new_graph_id`, :func:`new_process_id`."""
    return hashlib.sha3_256(os.urandom(32)).hexdigest()


_HALF = 32
"""Hex characters in each half of a graph or process id (128 bits)."""

_GRAPH_ID_DOMAIN = b"colonies-es graph id v1\x00"
"""Domain separation of :func:`_graph_check`: this hash serves no other purpose."""


def _graph_check(prefix: str) -> str:
    """The second half of the id of the graph whose ids start with ``prefix``."""
    return hashlib.sha3_256(_GRAPH_ID_DOMAIN + prefix.encode()).hexdigest()[:_HALF]


_GRAPH_SEED_DOMAIN = b"colonies-es graph id from a command v1\x00"
"""Domain separation of a seeded :func:`new_graph_id`'s ``p``."""


def new_graph_id(seed: str | None = None) -> str:
    """A fresh process graph id, ``p + H(p)``: ``p`` 32 random hex characters, ``H(p)``
    the first 32 hex characters of a domain-separated SHA3-256 of ``p``. Every process
    of the graph gets an id ``p + r`` (:func:`new_process_id`), so the graph of a
    process follows from its id (:func:`graph_id_of_process`) with no index.

    With a ``seed`` (the engine gives the replay key of the command that makes the
    graph: signer and nonce), ``p`` is a hash of it instead: the same command decided
    twice, on two replicas, names the same graph, so the second decision conflicts in
    the log instead of making a second graph."""
    if seed is None:
        prefix = os.urandom(_HALF // 2).hex()
    else:
        prefix = hashlib.sha3_256(_GRAPH_SEED_DOMAIN + seed.encode()).hexdigest()[:_HALF]
    return prefix + _graph_check(prefix)


def new_process_id(processgraphid: str) -> str:
    """A fresh id for a process of graph ``processgraphid``: the graph's first 32 hex
    characters then 32 random ones (unique within the graph with overwhelming
    probability; the graph still refuses a repeat)."""
    return processgraphid[:_HALF] + os.urandom(_HALF // 2).hex()


def graph_id_of_process(processid: str) -> str | None:
    """The id of the graph a process of this id would belong to (``p + H(p)`` for
    ``p = processid[:32]``), or None when ``processid`` is not an id. Whether that graph
    exists and holds the process is for the caller to check: a process id made before
    these ids (a *legacy* id, random) or a crafted one derives to a graph that does not
    exist, or that does not hold it."""
    if not is_id(processid):
        return None
    prefix = processid[:_HALF]
    return prefix + _graph_check(prefix)


def derives_graph(processgraphid: str) -> bool:
    """True if ``processgraphid`` is of the form ``p + H(p)`` (made by
    :func:`new_graph_id`), so its processes' ids may derive to it."""
    return is_id(processgraphid) and _graph_check(processgraphid[:_HALF]) == processgraphid[_HALF:]


def check_name(value: str, what: str) -> str:
    """Return ``value`` if it may be used as a NATS subject token (a colony name, an
    executor type): 1 to 64 letters, digits, ``_`` or ``-``. Otherwise raise BadRequest
    naming ``what`` was wrong."""
    if not _NAME_RE.fullmatch(value):
        raise BadRequest(f"{what} {value!r} is not valid: use 1 to 64 letters, digits, '_' or '-'")
    return value


def is_id(value: str) -> bool:
    """True if ``value`` is an id: 64 lowercase hex characters."""
    return _ID_RE.fullmatch(value) is not None


def check_id(value: str, what: str) -> str:
    """Return ``value`` if it is an id (64 lowercase hex characters), else raise
    BadRequest naming ``what`` was wrong."""
    if not is_id(value):
        raise BadRequest(f"{what} {value!r} is not an id (64 lowercase hex characters)")
    return value


def colony_aggregate_id(colonyname: str) -> str:
    """The id of a colony's aggregate, ``"<colonyname>.colony"``."""
    return f"{colonyname}.colony"


def graph_aggregate_id(colonyname: str, processgraphid: str) -> str:
    """The id of a process graph's aggregate, ``"<colonyname>.graph.<processgraphid>"``."""
    return f"{colonyname}.graph.{processgraphid}"


@dataclass_transform(frozen_default=True)
class _EventMeta(MetaDomainEvent):
    """eventsourcing's event metaclass (it makes every event class a frozen dataclass),
    declared as such so that type checkers check the events' constructors."""


class AuditedEvent(CanMutateAggregate[str], metaclass=_EventMeta):
    """Something that happened to an aggregate with a string id, and who caused it.

    Subclasses declare their own fields and an ``apply(aggregate)`` that makes the
    change; ``mutate`` (from eventsourcing) checks the id and version, then calls it.
    """

    originator_id: str
    """The id of the aggregate the event belongs to."""
    originator_version: int
    """The aggregate's version after this event: 1 for the creation event, then +1."""
    timestamp: datetime
    """When it happened: the ``now`` given to the command (timezone-aware)."""
    actor: str
    """The id of the identity that caused it: the command's signer, or the engine."""
    command: bytes
    """The signed command envelope it came from, byte for byte (``b""`` if none)."""

    plain_state: ClassVar[bool] = True
    """A promise to the store: the event's fields hold only str, int, float, bool, None,
    bytes, lists and dicts of these, and UTC datetimes, so its state is encoded without
    a walk over every value (:meth:`colonies_es.store.codec.EventMapper.to_stored_event`).
    It holds because times come from the ``now`` a command is given, made UTC by the
    event's header, and user data is copied through msgpack (:func:`clone`), which
    leaves nothing else. An event class that breaks it sets it to False."""


class AuditedCreationEvent(CanInitAggregate[str], AuditedEvent):
    """The first event of an aggregate: replaying it constructs the aggregate."""

    originator_topic: str
    """The aggregate's class, as an eventsourcing topic."""

    def mutate(self, aggregate: Any) -> Any:
        """The aggregate this event creates, as eventsourcing's ``CanInitAggregate.mutate``
        makes it, for aggregates whose ``__init__`` takes no arguments (every
        :class:`AuditedAggregate`): the library's picks the arguments of both
        initialisers out of the event's fields on every creation, a sixth of the cost
        of a one-process submission."""
        assert aggregate is None
        cls = resolve_topic(self.originator_topic)
        made = cls.__new__(cls)
        made.__base_init__(self.originator_id, self.originator_version, self.timestamp)
        made.__init__()
        self.apply(made)
        return made


class EventHeader(TypedDict):
    """The fields every :class:`AuditedEvent` starts with, to unpack into a constructor."""

    originator_id: str
    originator_version: int
    timestamp: datetime
    actor: str
    command: bytes


def _header(
    aggregate_id: str, version: int, now: datetime, actor: str, command: bytes
) -> EventHeader:
    if now.tzinfo is None:
        raise ValueError(f"now must be a timezone-aware datetime, got {now!r}")
    if now.tzinfo is not UTC:  # the same moment; events hold UTC times (plain_state)
        now = now.astimezone(UTC)
    return EventHeader(
        originator_id=aggregate_id,
        originator_version=version,
        timestamp=now,
        actor=actor,
        command=command,
    )


class AuditedAggregate(BaseAggregate[str]):
    """An aggregate with a string id whose events are :class:`AuditedEvent` objects.

    Subclasses define ``__init__(self)`` with no parameters, setting empty values of
    their attributes; their creation event's ``apply`` fills them in. Aggregates are
    created by their own class methods (``Colony.create``, ``ProcessGraph.submit``),
    never by calling the class.
    """

    @classmethod
    def _creation_header(
        cls, aggregate_id: str, *, now: datetime, actor: str, command: bytes
    ) -> EventHeader:
        """The header of the creation event of a new aggregate with ``aggregate_id``."""
        return _header(aggregate_id, cls.INITIAL_VERSION, now, actor, command)

    @classmethod
    def _topic(cls) -> str:
        """The ``originator_topic`` of this class's creation event."""
        return get_topic(cls)

    @classmethod
    def _create_from(cls, event: AuditedCreationEvent) -> Self:
        """The aggregate ``event`` creates, with ``event`` pending (to be saved)."""
        aggregate = event.mutate(None)
        if not isinstance(aggregate, cls):
            raise TypeError(f"{type(event).__name__} does not create a {cls.__name__}")
        aggregate.pending_events.append(event)
        return aggregate

    def copy(self) -> Self:
        """An independent copy with no pending events: the engine decides on a copy and
        keeps it only once its events are in the log, so a refused or failed write
        leaves the aggregate it started from untouched. Subclasses with large state
        override this with something cheaper than ``copy.deepcopy``."""
        duplicate = copy.deepcopy(self)
        duplicate._pending_events = []
        return duplicate

    def _next_header(self, *, now: datetime, actor: str, command: bytes) -> EventHeader:
        """The header of the next event of this aggregate."""
        return _header(self.id, self.version + 1, now, actor, command)

    def _trigger(self, event: AuditedEvent) -> None:
        """Apply ``event`` to this aggregate and keep it pending (to be saved)."""
        event.mutate(self)
        self.pending_events.append(event)
