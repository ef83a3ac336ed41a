"""How stored events look on the wire: the message envelope and the event-state transcoder.

Every event is one JetStream message. Its payload is a msgpack *envelope* holding what
eventsourcing's ``StoredEvent`` holds (originator id, version, topic, state bytes); the
stream sequence of the message is the notification id and the subject names the aggregate.

The *state* inside the envelope is the domain event's attributes, encoded by
:class:`MsgspecTranscoder` (msgpack through msgspec) instead of eventsourcing's default JSON
transcoder: faster, and it round-trips ``UUID``, ``datetime`` and ``Decimal`` exactly.
:class:`EventMapper` turns stored events back into domain events, as eventsourcing's
``Mapper`` does, for less: the engine, the projector and the readers of history use it.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import hmac
from collections.abc import Callable
from decimal import Decimal
from typing import Any, NamedTuple, TypeVar
from uuid import UUID

import msgspec
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import (
    DataError,
    JSONTranscoder,
    Mapper,
    MapperDeserialisationError,
    Notification,
    StoredEvent,
    Transcoding,
    TranscodingNotRegisteredError,
    find_id_convertor,
)
from eventsourcing.utils import get_topic, resolve_topic


class Envelope(msgspec.Struct, array_like=True, frozen=True):
    """The payload of one event message (msgpack array, compact and fast to decode).

    The originator id is in ``uuid`` when it is a UUID (msgspec decodes it natively),
    else in ``name``.
    """

    uuid: UUID | None
    name: str | None
    originator_version: int
    topic: str
    state: bytes
    seal: bytes | None = None
    """HMAC-SHA256 by the writer's seal key over the subject and the other fields (see
    :class:`Sealer`); None when the log is not sealed."""

    @property
    def originator_id(self) -> UUID | str:
        """The originator id with the type it was recorded with."""
        return self.uuid if self.uuid is not None else (self.name or "")


_Frozen = TypeVar("_Frozen", StoredEvent, Notification)

_envelope_encoder = msgspec.msgpack.Encoder()
_envelope_decoder = msgspec.msgpack.Decoder(Envelope)


class Sealer:
    """Seals envelopes with a key shared by the log's trusted writers and readers (engine,
    projectors), so that a message appended to the stream by anyone else is recognised
    and ignored.

    The seal is a keyed BLAKE2b-256 MAC over the subject and the payload's bytes before
    the seal (the seal is the envelope's last field, so those bytes are the payload
    minus its last 32): checking it needs no re-encoding, a few microseconds an event.

    This protects the infrastructure's own view of the log; the offline audit does not
    need the key: every event carries the actor's signed command (DESIGN.md, point 7).
    """

    SIZE = 32

    def __init__(self, key: bytes) -> None:
        if not 16 <= len(key) <= 64:
            raise ValueError("a seal key has 16 to 64 bytes")
        # BLAKE2b hashes the key as a first block: hash it once, copy the state per MAC
        # (half the cost of a check; the MAC is the same as re-keying every time).
        self._keyed = hashlib.blake2b(key=key, digest_size=self.SIZE)

    def _mac(self, subject: str, body: bytes) -> bytes:
        mac = self._keyed.copy()
        mac.update(subject.encode())
        mac.update(b"\0")
        mac.update(body)
        return mac.digest()

    def seal(self, subject: str, envelope: Envelope) -> bytes:
        """The payload of ``envelope`` on ``subject``, sealed."""
        placeholder = _envelope_encoder.encode(
            msgspec.structs.replace(envelope, seal=bytes(self.SIZE))
        )
        body = placeholder[: -self.SIZE]
        return body + self._mac(subject, body)

    def seal_bytes(self, subject: str, body: bytes) -> bytes:
        """``body`` followed by its seal for ``subject`` (for payloads other than
        envelopes, e.g. engine checkpoints); :meth:`is_sealed` checks it."""
        return body + self._mac(subject, body)

    def is_sealed(self, subject: str, payload: bytes) -> bool:
        """True if ``payload`` (an encoded envelope) was sealed with this key for
        ``subject``. (:meth:`_mac` written out: every event read pays this call.)"""
        if len(payload) <= self.SIZE:
            return False
        mac = self._keyed.copy()
        mac.update(subject.encode())
        mac.update(b"\0")
        mac.update(payload[: -self.SIZE])
        return hmac.compare_digest(payload[-self.SIZE :], mac.digest())


def to_envelope(event: StoredEvent) -> Envelope:
    """The envelope of a stored event (unsealed)."""
    originator_id = event.originator_id
    return Envelope(
        uuid=originator_id if isinstance(originator_id, UUID) else None,
        name=None if isinstance(originator_id, UUID) else originator_id,
        originator_version=event.originator_version,
        topic=event.topic,
        state=event.state,
    )


def encode_envelope(event: StoredEvent, subject: str = "", sealer: Sealer | None = None) -> bytes:
    """Encodes a stored event as a message payload for ``subject`` (sealed if a sealer is
    given); raises ``DataError`` if it cannot."""
    try:
        envelope = to_envelope(event)
        if sealer is not None:
            return sealer.seal(subject, envelope)
        return _envelope_encoder.encode(envelope)
    except (TypeError, msgspec.EncodeError) as error:
        msg = (
            f"cannot encode stored event {event.originator_id}@{event.originator_version}: {error}"
        )
        raise DataError(msg) from error


def decode_envelope(payload: bytes) -> Envelope:
    """Decodes a message payload; raises ``DataError`` for anything that is not an envelope."""
    try:
        return _envelope_decoder.decode(payload)
    except msgspec.DecodeError as error:
        msg = f"not a stored event envelope: {error}"
        raise DataError(msg) from error


def to_stored_event(envelope: Envelope) -> StoredEvent:
    """The stored event an envelope holds."""
    return _frozen(
        StoredEvent,
        {
            "originator_id": envelope.originator_id,
            "originator_version": envelope.originator_version,
            "topic": envelope.topic,
            "state": envelope.state,
        },
    )


def to_notification(envelope: Envelope, sequence: int) -> Notification:
    """The notification of the envelope at stream sequence ``sequence`` (made as
    :func:`_frozen` makes it, written out: every event read pays this call)."""
    notification = object.__new__(Notification)
    object.__setattr__(
        notification,
        "__dict__",
        {
            "originator_id": envelope.uuid if envelope.uuid is not None else (envelope.name or ""),
            "originator_version": envelope.originator_version,
            "topic": envelope.topic,
            "state": envelope.state,
            "id": sequence,
        },
    )
    return notification


def _frozen(cls: type[_Frozen], fields: dict[str, Any]) -> _Frozen:
    """An instance of the frozen dataclass ``cls`` with ``fields`` (all of them), made as
    eventsourcing's mapper makes events: without the generated ``__init__``, whose
    ``object.__setattr__`` per field cost most of a notification (every event read pays
    it, in the engine's follower and in the projector's loop thread)."""
    instance = object.__new__(cls)
    object.__setattr__(instance, "__dict__", fields)
    return instance


# msgpack extension type codes used by the transcoder.
_EXT_UUID = 1
_EXT_DATETIME = 2
_EXT_DECIMAL = 3
_EXT_DATE = 4
_EXT_CUSTOM = 5


class MsgspecTranscoder(JSONTranscoder):
    """Encodes domain-event state as msgpack with msgspec.

    ``UUID``, ``datetime``, ``date`` and ``Decimal`` values round-trip exactly as msgpack
    extension types (msgspec alone would turn UUIDs and Decimals into strings). A
    ``datetime`` in UTC (``tzinfo`` is ``datetime.UTC``, as every time of the domain's
    events) is msgpack's own timestamp, which msgspec decodes natively, with no Python
    call per value; any other ``datetime`` (another offset, naive) is an extension of its
    ISO text, which keeps its offset. Logs written before UTC times were timestamps hold
    them as ISO extensions: they decode to the same values. Other
    types need a registered eventsourcing ``Transcoding``, as with ``JSONTranscoder``;
    an unregistered one is refused. Tuples come back as lists (msgpack has one array type).

    It subclasses ``JSONTranscoder`` only for its registration interface: eventsourcing
    applications register their transcodings on JSON transcoders alone.
    """

    def __init__(self) -> None:
        self._by_type: dict[type, Transcoding] = {}
        self._by_name: dict[str, Transcoding] = {}
        self._encoder = msgspec.msgpack.Encoder(enc_hook=self._enc_hook)
        self._decoder = msgspec.msgpack.Decoder(ext_hook=self._ext_hook)

    def register(self, transcoding: Transcoding) -> None:
        """Registers a transcoding for a custom type (built-in types need none)."""
        self._by_type[transcoding.type] = transcoding
        self._by_name[transcoding.name] = transcoding

    def encode(self, obj: Any) -> bytes:
        return self._encoder.encode(self._tag(obj))

    def decode(self, data: bytes) -> Any:
        return self._decoder.decode(data)

    def _enc_hook(self, obj: Any) -> msgspec.msgpack.Ext:
        # Only reached for objects _tag let through, which it never does: kept as a guard.
        raise _not_registered(obj)

    def _tag(self, obj: Any) -> Any:
        """Replaces values msgspec would encode lossily by typed msgpack extensions.

        Builtin scalars pass as they are; UUID, datetime, date and Decimal become
        extensions; registered types become their transcoding's (tagged) output. Anything
        else is refused, also types msgspec could encode itself (dataclasses, enums,
        ``time``, ``timedelta``) but that would not come back as what they were.
        """
        kind = type(obj)
        if kind in _PLAIN:
            return obj
        if kind is dict:
            return {key: self._tag(value) for key, value in obj.items()}
        if kind is list or kind is tuple:
            return [self._tag(value) for value in obj]
        if kind is dt.datetime and obj.tzinfo is dt.UTC:
            return obj  # a msgpack timestamp: decoded natively, to an equal datetime in UTC
        if isinstance(obj, UUID):
            return msgspec.msgpack.Ext(_EXT_UUID, obj.bytes)
        if isinstance(obj, dt.datetime):
            return msgspec.msgpack.Ext(_EXT_DATETIME, obj.isoformat().encode())
        if isinstance(obj, dt.date):
            return msgspec.msgpack.Ext(_EXT_DATE, obj.isoformat().encode())
        if isinstance(obj, Decimal):
            return msgspec.msgpack.Ext(_EXT_DECIMAL, str(obj).encode())
        transcoding = self._by_type.get(kind)
        if transcoding is not None:
            data = self._encoder.encode((transcoding.name, self._tag(transcoding.encode(obj))))
            return msgspec.msgpack.Ext(_EXT_CUSTOM, data)
        if isinstance(obj, dict):
            return {key: self._tag(value) for key, value in obj.items()}
        if isinstance(obj, list | tuple):
            return [self._tag(value) for value in obj]
        if isinstance(obj, str | int | float | bytes) and not isinstance(obj, enum.Enum):
            return obj
        raise _not_registered(obj)

    def _ext_hook(self, code: int, data: memoryview) -> Any:
        raw = bytes(data)
        if code == _EXT_UUID:
            return UUID(bytes=raw)
        if code == _EXT_DATETIME:
            return dt.datetime.fromisoformat(raw.decode())
        if code == _EXT_DATE:
            return dt.date.fromisoformat(raw.decode())
        if code == _EXT_DECIMAL:
            return Decimal(raw.decode())
        if code == _EXT_CUSTOM:
            name, value = self._decoder.decode(raw)
            transcoding = self._by_name.get(name)
            if transcoding is None:
                msg = f"no transcoding registered for {name!r}"
                raise TranscodingNotRegisteredError(msg)
            return transcoding.decode(value)
        msg = f"unknown msgpack extension type {code}"
        raise DataError(msg)


_PLAIN = frozenset({str, int, float, bool, type(None), bytes})

_plain_encoder = msgspec.msgpack.Encoder()
"""Encodes the state of events that promise plain values (:meth:`EventMapper.to_stored_event`)."""


class _EventClass(NamedTuple):
    """What :class:`EventMapper` needs of a topic's event class, resolved once."""

    cls: type
    id_convertor: Callable[[UUID | str], UUID | str]
    class_version: int


class EventMapper(Mapper[Any]):
    """eventsourcing's ``Mapper`` (transcoder, optional compressor and cipher), with a
    cheaper :meth:`to_domain_event` for the readers of the log.

    The result is the same as the library's: the event class resolved from the topic,
    the state decrypted (cipher), decompressed and decoded, the originator id converted
    to the class's id type, old class versions upcast, and the event made without
    calling its constructor. What differs is that a topic's class, id convertor and
    class version are resolved once per topic instead of once per event. Errors are the
    library's: ``MapperDeserialisationError`` for state that does not decrypt or decode,
    the topic's resolution error for an unknown class.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._classes: dict[tuple[str, type], _EventClass] = {}

    def to_stored_event(self, domain_event: DomainEventProtocol[Any]) -> StoredEvent:
        """The stored event of ``domain_event``, as eventsourcing's mapper makes it.

        An event whose class says ``plain_state = True`` promises that its state holds
        only what msgpack carries natively: str, int, float, bool, None, bytes, lists and
        dicts of these, and UTC datetimes (``tzinfo`` is ``datetime.UTC``). Its state is
        then encoded by msgspec directly, without :meth:`MsgspecTranscoder._tag` walking
        every value in Python: the bytes are the same (``_tag`` returns such values as
        they are), for a third to a fifth of the cost. Any other event, or another
        transcoder, goes the library's way."""
        cls = type(domain_event)
        if not (getattr(cls, "plain_state", False) and type(self.transcoder) is MsgspecTranscoder):
            return super().to_stored_event(domain_event)
        topic = get_topic(cls)  # the library keeps a cache per class
        state = dict(vars(domain_event))
        originator_id = state.pop("originator_id")
        originator_version = state.pop("originator_version")
        class_version = getattr(cls, "class_version", 1)
        if class_version > 1:
            state["class_version"] = class_version
        try:
            stored_state = _plain_encoder.encode(state)
        except (TypeError, msgspec.EncodeError):  # it broke its promise: the careful way
            stored_state = self.transcoder.encode(state)
        if self.compressor:
            stored_state = self.compressor.compress(stored_state)
        if self.cipher:
            stored_state = self.cipher.encrypt(stored_state)
        return _frozen(
            StoredEvent,
            {
                "originator_id": originator_id,
                "originator_version": originator_version,
                "topic": topic,
                "state": stored_state,
            },
        )

    def _event_class(self, topic: str, id_type: type) -> _EventClass:
        key = (topic, id_type)
        found = self._classes.get(key)
        if found is None:
            cls = resolve_topic(topic)
            found = _EventClass(
                cls, find_id_convertor(cls, id_type), getattr(cls, "class_version", 1)
            )
            self._classes[key] = found
        return found

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[Any]:
        """The domain event ``stored_event`` records (see the class doc)."""
        originator_id = stored_event.originator_id
        event_class = self._event_class(stored_event.topic, type(originator_id))
        state = stored_event.state
        try:
            if self.cipher is not None:
                state = self.cipher.decrypt(state)
            if self.compressor is not None:
                state = self.compressor.decompress(state)
            event_state: dict[str, Any] = self.transcoder.decode(state)
        except Exception as error:
            msg = (
                f"Failed to deserialise state of stored event with topic "
                f"'{stored_event.topic}', originator_id '{originator_id}' and "
                f"originator_version {stored_event.originator_version}: {error}"
            )
            raise MapperDeserialisationError(msg) from error
        event_state["originator_id"] = event_class.id_convertor(originator_id)
        event_state["originator_version"] = stored_event.originator_version
        cls = event_class.cls
        from_version = event_state.pop("class_version", 1)
        while from_version < event_class.class_version:
            getattr(cls, f"upcast_v{from_version}_v{from_version + 1}")(event_state)
            from_version += 1
        event: DomainEventProtocol[Any] = object.__new__(cls)
        object.__setattr__(event, "__dict__", event_state)
        return event


def _not_registered(obj: Any) -> TranscodingNotRegisteredError:
    return TranscodingNotRegisteredError(
        f"Object of type {type(obj).__name__} is not serializable: register a Transcoding for it"
    )
