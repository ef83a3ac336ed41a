"""The event-state transcoder and the message envelope round-trip what events hold.

Pure unit tests: no NATS server.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import msgspec
import pytest
from eventsourcing.cipher import AESCipher
from eventsourcing.persistence import (
    DataError,
    Mapper,
    MapperDeserialisationError,
    Notification,
    StoredEvent,
    Transcoding,
    TranscodingNotRegisteredError,
)
from eventsourcing.utils import Environment

from colonies_es.domain import Colony, ProcessGraph
from colonies_es.models import Workflow, func_spec
from colonies_es.store.codec import (
    EventMapper,
    MsgspecTranscoder,
    decode_envelope,
    encode_envelope,
    to_notification,
    to_stored_event,
)


class Point:
    """A custom value type, unknown to msgspec."""

    def __init__(self, x: int, y: int) -> None:
        self.x = x
        self.y = y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    def __hash__(self) -> int:
        return hash((self.x, self.y))


class PointAsList(Transcoding):
    type = Point
    name = "point"

    def encode(self, obj: Point) -> list[int]:
        return [obj.x, obj.y]

    def decode(self, data: list[int]) -> Point:
        x, y = data
        return Point(x, y)


class Payment:
    """A custom type whose transcoding output holds values that need typing themselves."""

    def __init__(self, payment_id: UUID, amount: Decimal, at: dt.datetime) -> None:
        self.payment_id = payment_id
        self.amount = amount
        self.at = at

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Payment) and vars(self) == vars(other)

    def __repr__(self) -> str:
        return f"Payment({vars(self)!r})"

    def __hash__(self) -> int:
        return hash(self.payment_id)


class PaymentAsDict(Transcoding):
    type = Payment
    name = "payment"

    def encode(self, obj: Payment) -> dict[str, Any]:
        return {"payment_id": obj.payment_id, "amount": obj.amount, "at": obj.at}

    def decode(self, data: dict[str, Any]) -> Payment:
        return Payment(**data)


@dataclasses.dataclass(frozen=True)
class Coordinates:
    lat: float
    lon: float


class Colour(enum.Enum):
    RED = "red"


def round_trip(transcoder: MsgspecTranscoder, state: dict[str, Any]) -> dict[str, Any]:
    decoded: dict[str, Any] = transcoder.decode(transcoder.encode(state))
    return decoded


@pytest.fixture
def transcoder() -> MsgspecTranscoder:
    transcoder = MsgspecTranscoder()
    transcoder.register(PointAsList())
    transcoder.register(PaymentAsDict())
    return transcoder


@pytest.mark.parametrize(
    "value",
    [
        uuid4(),
        dt.datetime(2026, 3, 1, 12, 30, 45, 123456, tzinfo=dt.UTC),
        dt.datetime(2026, 3, 1, 12, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
        dt.date(2026, 3, 1),
        Decimal("12345678901234567890.000000001"),
        Decimal("-0.10"),
        b"\x00\xffbytes",
        "text with ünïcode",
        2**62,
        -1.5,
        True,
        None,
    ],
    ids=lambda value: type(value).__name__,
)
def test_values_round_trip_with_their_type(transcoder: MsgspecTranscoder, value: object) -> None:
    decoded = round_trip(transcoder, {"value": value})["value"]

    assert decoded == value
    assert type(decoded) is type(value)


def test_aware_datetimes_keep_their_offset(transcoder: MsgspecTranscoder) -> None:
    eastern = dt.timezone(dt.timedelta(hours=-5))
    value = dt.datetime(2026, 3, 1, 7, 0, tzinfo=eastern)

    decoded = round_trip(transcoder, {"at": value})["at"]

    assert decoded.utcoffset() == dt.timedelta(hours=-5)


def test_decimals_keep_their_exponent(transcoder: MsgspecTranscoder) -> None:
    decoded = round_trip(transcoder, {"amount": Decimal("1.10")})["amount"]

    assert str(decoded) == "1.10"


def test_nested_dicts_and_lists_round_trip_with_typed_leaves(
    transcoder: MsgspecTranscoder,
) -> None:
    state = {
        "ids": [uuid4(), uuid4()],
        "by_day": {
            "2026-03-01": {"amounts": [Decimal("1.5"), Decimal("2")], "at": dt.date(2026, 3, 1)}
        },
        "deep": [[{"id": uuid4()}]],
        "empty": {"list": [], "dict": {}},
    }

    assert round_trip(transcoder, state) == state


def test_a_registered_transcoding_round_trips_nested_inside_the_state(
    transcoder: MsgspecTranscoder,
) -> None:
    state = {"origin": Point(1, 2), "path": [Point(3, 4), {"to": Point(5, 6)}]}

    assert round_trip(transcoder, state) == state


def test_typed_values_inside_a_transcoding_output_round_trip(
    transcoder: MsgspecTranscoder,
) -> None:
    payment = Payment(uuid4(), Decimal("9.99"), dt.datetime(2026, 3, 1, tzinfo=dt.UTC))

    assert round_trip(transcoder, {"payment": payment}) == {"payment": payment}


def test_tuples_come_back_as_lists(transcoder: MsgspecTranscoder) -> None:
    assert round_trip(transcoder, {"pair": (1, 2)}) == {"pair": [1, 2]}


def test_an_unregistered_custom_type_is_refused_with_a_clear_error(
    transcoder: MsgspecTranscoder,
) -> None:
    class Unregistered:
        pass

    with pytest.raises(TranscodingNotRegisteredError, match="Unregistered"):
        transcoder.encode({"thing": Unregistered()})


@pytest.mark.parametrize(
    "value",
    [Coordinates(1.0, 2.0), Colour.RED, dt.time(12, 30), dt.timedelta(days=3)],
    ids=lambda value: type(value).__name__,
)
def test_types_msgspec_knows_but_the_transcoder_cannot_restore_are_refused(
    transcoder: MsgspecTranscoder, value: object
) -> None:
    with pytest.raises(TypeError):
        transcoder.encode({"value": value})


def test_decoding_a_registered_name_this_transcoder_lacks_is_a_clear_error(
    transcoder: MsgspecTranscoder,
) -> None:
    encoded = transcoder.encode({"origin": Point(1, 2)})

    with pytest.raises(TranscodingNotRegisteredError, match="point"):
        MsgspecTranscoder().decode(encoded)


@pytest.mark.parametrize("originator_id", [uuid4(), "colony.graph.1234"], ids=["uuid", "str"])
def test_the_envelope_round_trips_a_stored_event(originator_id: UUID | str) -> None:
    event = StoredEvent(originator_id, 7, "module:Topic", b"\x01state")

    decoded = to_stored_event(decode_envelope(encode_envelope(event)))

    assert decoded == event
    assert type(decoded.originator_id) is type(originator_id)


def test_a_payload_that_is_not_an_envelope_is_a_data_error() -> None:
    with pytest.raises(DataError, match="not a stored event envelope"):
        decode_envelope(b"\x93garbage")


def test_utc_times_are_msgpack_timestamps_decoded_to_the_same_utc_datetime(
    transcoder: MsgspecTranscoder,
) -> None:
    """The domain's times (UTC) need no Python hook to decode: msgpack's timestamp."""
    value = dt.datetime(2026, 3, 1, 12, 30, 45, 123456, tzinfo=dt.UTC)

    encoded = transcoder.encode({"at": value})
    decoded = transcoder.decode(encoded)["at"]

    assert msgspec.msgpack.decode(encoded, type=dict[str, msgspec.msgpack.Ext | dt.datetime]) == {
        "at": value
    }
    assert decoded == value
    assert decoded.tzinfo is dt.UTC


def test_times_written_as_iso_extensions_by_earlier_versions_still_decode(
    transcoder: MsgspecTranscoder,
) -> None:
    """Logs written before UTC times were timestamps hold every time as ISO text."""
    at = dt.datetime(2026, 3, 1, 12, 30, 45, 123456, tzinfo=dt.UTC)
    old = msgspec.msgpack.encode(
        {"at": msgspec.msgpack.Ext(2, at.isoformat().encode()), "ready": [{"t": None}]}
    )

    decoded = transcoder.decode(old)

    assert decoded == {"at": at, "ready": [{"t": None}]}
    assert decoded["at"].tzinfo == dt.UTC


def _domain_events() -> list[StoredEvent]:
    """A colony's and a two-step graph's events, stored as the engine stores them."""
    owner, executorid = "0" * 64, "e" * 64
    now = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    by_owner = {"now": now, "actor": owner, "command": b"{}"}
    by_executor = {"now": now, "actor": executorid, "command": b"{}"}
    colony = Colony.create("c", owner, **by_owner)
    colony.add_executor(executorid, "ex-1", "python-executor", **by_owner)
    colony.approve_executor("ex-1", **by_owner)
    executor = colony.executor_by_id(executorid)
    assert executor is not None
    specs = [
        func_spec(func=name, args=[1], colonyname="c", executortype="python-executor")
        for name in ("a", "b")
    ]
    specs[1].conditions.dependencies.append("a")
    workflow = Workflow(colonyname="c", functionspecs=specs)
    graph = ProcessGraph.submit("c", workflow, initiatorid=owner, initiatorname="owner", **by_owner)
    for processid in graph.processids:
        graph.assign(processid, executor, 1, **by_executor)
        graph.close(processid, executorid, [2], **by_executor)
    mapper: Mapper[str] = Mapper(transcoder=MsgspecTranscoder())
    events = [*colony.collect_events(), *graph.collect_events()]
    return [mapper.to_stored_event(event) for event in events]


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_the_event_mapper_makes_the_events_eventsourcings_mapper_makes(encrypted: bool) -> None:
    cipher = None
    if encrypted:
        key = AESCipher.create_key(32)
        cipher = AESCipher(Environment(env={AESCipher.CIPHER_KEY: key}))
    library: Mapper[str] = Mapper(transcoder=MsgspecTranscoder(), cipher=cipher)
    ours = EventMapper(transcoder=MsgspecTranscoder(), cipher=cipher)
    plain: Mapper[str] = Mapper(transcoder=MsgspecTranscoder())
    stored = [library.to_stored_event(plain.to_domain_event(e)) for e in _domain_events()]

    for event in stored:
        theirs, mine = library.to_domain_event(event), ours.to_domain_event(event)
        assert type(mine) is type(theirs)
        assert vars(mine) == vars(theirs)


def test_the_event_mapper_refuses_state_that_does_not_decrypt_as_the_library_does() -> None:
    key = AESCipher.create_key(32)
    cipher = AESCipher(Environment(env={AESCipher.CIPHER_KEY: key}))
    other = AESCipher(Environment(env={AESCipher.CIPHER_KEY: AESCipher.create_key(32)}))
    event = Mapper(transcoder=MsgspecTranscoder(), cipher=other).to_stored_event(
        Mapper(transcoder=MsgspecTranscoder()).to_domain_event(_domain_events()[0])
    )

    with pytest.raises(MapperDeserialisationError, match="Failed to deserialise"):
        EventMapper(transcoder=MsgspecTranscoder(), cipher=cipher).to_domain_event(event)


def test_notifications_and_stored_events_from_envelopes_are_the_librarys_frozen_dataclasses() -> (
    None
):
    stored = StoredEvent("c.graph.x", 3, "colonies_es.domain:Event", b"state")
    envelope = decode_envelope(encode_envelope(stored))

    notification = to_notification(envelope, 42)

    assert notification == Notification(
        originator_id="c.graph.x",
        originator_version=3,
        topic="colonies_es.domain:Event",
        state=b"state",
        id=42,
    )
    assert to_stored_event(envelope) == stored
    assert hash(to_stored_event(envelope)) == hash(stored)
    with pytest.raises(dataclasses.FrozenInstanceError):
        notification.id = 43  # type: ignore[misc]
