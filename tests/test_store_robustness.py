"""The JetStream event store keeps the issue's promises on a real nats-server.

"Bad input gets a clear error and writes nothing; nothing is lost when a component crashes;
no hang: bounded timeouts."

Each test works on a stream of its own (as in ``test_store_eventsourcing.py``). Tests that
crash the server start their own (``nats_server_factory``), SIGKILL it and start it again on
the same store directory and port. Every wait is a condition polled against a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar
from uuid import UUID, uuid4

import nats
import pytest
from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import (
    DataError,
    IntegrityError,
    Notification,
    OperationalError,
    StoredEvent,
    Tracking,
)
from nats.aio.client import Client as NATS
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from colonies_es import crypto
from colonies_es.embedded import NatsServer, free_port
from colonies_es.engine import ColoniesApp
from colonies_es.store import (
    JetStreamApplicationRecorder,
    JetStreamFactory,
    JetStreamProcessRecorder,
    JetStreamTrackingRecorder,
    StreamConfigurationError,
)
from colonies_es.store.codec import encode_envelope
from colonies_es.store.jetstream import Entry, JetStreamLog, StreamSpec
from colonies_es.store.recorders import JetStreamSubscription, _wake

T = TypeVar("T")

TIMEOUT = 2.0
"""``JETSTREAM_TIMEOUT`` of every factory here: the bound of one NATS round trip."""

BOUND = 3 * TIMEOUT + 1.0
"""The longest any one store call may block (a recorder waits three timeouts at most)."""

MAX_BATCH = 1000
"""The most events one insert may hold (JetStream's atomic batch limit)."""


# --------------------------------------------------------------------------- helpers


def fresh_env(nats_url: str, **settings: str) -> dict[str, str]:
    """Settings for a new, empty stream (and subject prefix) on the server at ``nats_url``."""
    tag = uuid4().hex[:12]
    return {
        "PERSISTENCE_MODULE": "colonies_es.store",
        "NATS_URL": nats_url,
        "JETSTREAM_STREAM": f"ROBUST_{tag}",
        "JETSTREAM_SUBJECT_PREFIX": f"r{tag}",
        "JETSTREAM_TIMEOUT": str(TIMEOUT),
        **settings,
    }


def stored(originator_id: UUID | str, version: int, state: bytes = b"{}") -> StoredEvent:
    return StoredEvent(originator_id, version, "tests:Happened", state)


def history(originator_id: UUID | str, count: int, first: int = 1) -> list[StoredEvent]:
    """Events ``first`` .. ``first + count - 1`` of one aggregate."""
    return [stored(originator_id, version) for version in range(first, first + count)]


def versions(recorder: JetStreamApplicationRecorder, originator_id: UUID | str) -> list[int]:
    return [e.originator_version for e in recorder.select_events(originator_id)]


def all_notifications(recorder: JetStreamApplicationRecorder) -> Sequence[Notification]:
    return recorder.select_notifications(None, 1_000_000)


def wait_until(condition: Callable[[], bool], within: float, what: str) -> None:
    """Polls ``condition`` until it holds; fails the test if it does not within the bound."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within} s: {what}")
        time.sleep(0.02)


def insert_when_reachable(
    recorder: JetStreamApplicationRecorder, events: Sequence[StoredEvent], within: float
) -> None:
    """Inserts ``events`` once NATS answers again (after a restart), failing after ``within``."""
    wait_until(lambda: recorder.connection.nc.is_connected, within, "store reconnected")
    deadline = time.monotonic() + within
    while True:
        try:
            recorder.insert_events(events)
            return
        except OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def elapsed_call(call: Callable[[], object]) -> tuple[BaseException | None, float]:
    """Runs ``call``; returns what it raised (or None) and how long it took."""
    started = time.monotonic()
    try:
        call()
    except BaseException as error:
        return error, time.monotonic() - started
    return None, time.monotonic() - started


def on_own_connection(nats_url: str, action: Callable[[NATS], Awaitable[T]]) -> T:
    """Runs ``action`` on a NATS connection of its own (not the store's), then closes it."""

    async def run() -> T:
        nc = await nats.connect(nats_url, allow_reconnect=False, connect_timeout=TIMEOUT)
        try:
            return await action(nc)
        finally:
            await nc.close()

    return asyncio.run(run())


def stream_config(nats_url: str, name: str) -> dict[str, Any] | None:
    """The stream's configuration as the server reports it, None if there is no stream."""

    async def config(nc: NATS) -> dict[str, Any] | None:
        try:
            info = await nc.jsm().stream_info(name)
        except NotFoundError:
            return None
        assert info.config is not None
        return info.config.as_dict()

    return on_own_connection(nats_url, config)


def create_stream(nats_url: str, config: StreamConfig) -> dict[str, Any]:
    """Creates a stream as an operator would; returns its configuration."""

    async def create(nc: NATS) -> dict[str, Any]:
        info = await nc.jsm().add_stream(config)
        assert info.config is not None
        return info.config.as_dict()

    return on_own_connection(nats_url, create)


def server_max_payload(nats_url: str) -> int:
    async def read(nc: NATS) -> int:
        return nc.max_payload

    return on_own_connection(nats_url, read)


def log_stream_config(env: dict[str, str]) -> StreamConfig:
    """What the issue asks of the event-log stream, written out independently of the store."""
    prefix = env["JETSTREAM_SUBJECT_PREFIX"]
    return StreamConfig(
        name=env["JETSTREAM_STREAM"],
        subjects=[f"{prefix}.ev.>", f"{prefix}.trk.>"],
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        num_replicas=1,
        max_msgs=-1,
        max_bytes=-1,
        max_age=0,
        max_msgs_per_subject=-1,
        discard=DiscardPolicy.OLD,
        deny_delete=True,
        deny_purge=True,
        allow_rollup_hdrs=False,
        allow_direct=True,
        allow_atomic=True,
    )


# --------------------------------------------------------------------------- fixtures

OpenFactory = Callable[[dict[str, str]], JetStreamFactory]


@pytest.fixture
def open_factory() -> Iterator[OpenFactory]:
    """Opens factories (each its own NATS connection and head cache); closes them after."""
    with contextlib.ExitStack() as opened:

        def open_(env: dict[str, str]) -> JetStreamFactory:
            factory = JetStreamFactory(env)
            opened.callback(factory.close)
            return factory

        yield open_


@pytest.fixture
def env(nats_url: str) -> dict[str, str]:
    return fresh_env(nats_url)


def application_recorder(factory: JetStreamFactory) -> JetStreamApplicationRecorder:
    recorder = factory.application_recorder()
    assert isinstance(recorder, JetStreamApplicationRecorder)
    return recorder


@pytest.fixture
def recorder(env: dict[str, str], open_factory: OpenFactory) -> JetStreamApplicationRecorder:
    return application_recorder(open_factory(env))


@pytest.fixture
def crashable(nats_server_factory: Callable[..., NatsServer]) -> NatsServer:
    """A server of this test's own, which it may SIGKILL and start again."""
    return nats_server_factory()


# ------------------------------------------------- 1, 2: the stream's configuration


def test_a_stream_created_beforehand_as_the_log_needs_is_used(
    env: dict[str, str], open_factory: OpenFactory, nats_url: str
) -> None:
    create_stream(nats_url, log_stream_config(env))

    recorder = application_recorder(open_factory(env))
    recorder.insert_events([stored(uuid4(), 1)])

    assert recorder.max_notification_id() == 1


WEAKENINGS = [
    pytest.param({"deny_delete": False}, "deny_delete", id="deletes-allowed"),
    pytest.param({"deny_purge": False}, "deny_purge", id="purges-allowed"),
    pytest.param({"allow_atomic": False}, "allow_atomic", id="no-atomic-batches"),
    pytest.param(  # the server allows roll-ups only with purges
        {"allow_rollup_hdrs": True, "deny_purge": False}, "allow_rollup_hdrs", id="rollups"
    ),
    pytest.param({"max_msgs": 1000}, "max_msgs", id="max-msgs"),
    pytest.param({"max_bytes": 10_000_000}, "max_bytes", id="max-bytes"),
    pytest.param({"max_age": 3600.0}, "max_age", id="max-age"),
    pytest.param({"max_msgs_per_subject": 10}, "max_msgs_per_subject", id="per-subject"),
    pytest.param({"storage": StorageType.MEMORY}, "storage", id="memory-storage"),
]


@pytest.mark.parametrize(("weaker", "named"), WEAKENINGS)
def test_a_stream_with_a_weaker_configuration_is_refused_and_left_alone(
    env: dict[str, str],
    open_factory: OpenFactory,
    nats_url: str,
    weaker: dict[str, Any],
    named: str,
) -> None:
    before = create_stream(nats_url, dataclasses.replace(log_stream_config(env), **weaker))
    factory = open_factory(env)

    with pytest.raises(StreamConfigurationError, match=named):
        factory.application_recorder()

    assert stream_config(nats_url, env["JETSTREAM_STREAM"]) == before


def test_a_stream_missing_one_of_the_log_subjects_is_refused_and_left_alone(
    env: dict[str, str], open_factory: OpenFactory, nats_url: str
) -> None:
    config = log_stream_config(env)
    events_only = (config.subjects or [])[:1]
    before = create_stream(nats_url, dataclasses.replace(config, subjects=events_only))
    factory = open_factory(env)

    with pytest.raises(StreamConfigurationError, match=r"subjects .*trk"):
        factory.application_recorder()

    assert stream_config(nats_url, env["JETSTREAM_STREAM"]) == before


UNNOTICED_WEAKENINGS = [
    pytest.param({"no_ack": True}, "no_ack", id="no-acks:every-write-times-out-yet-lands"),
    pytest.param({"max_msg_size": 1024}, "max_msg_size", id="max-msg-size:1KiB-events"),
    pytest.param({"max_consumers": 1}, "max_consumers", id="max-consumers:reads-collide"),
]


@pytest.mark.parametrize(("weaker", "named"), UNNOTICED_WEAKENINGS)
def test_a_stream_with_a_limit_the_store_does_not_check_is_refused(
    env: dict[str, str],
    open_factory: OpenFactory,
    nats_url: str,
    weaker: dict[str, Any],
    named: str,
) -> None:
    create_stream(nats_url, dataclasses.replace(log_stream_config(env), **weaker))
    factory = open_factory(env)

    with pytest.raises(StreamConfigurationError, match=named):
        factory.application_recorder()


def test_without_create_table_a_missing_stream_is_a_clear_error_and_not_created(
    open_factory: OpenFactory, nats_url: str
) -> None:
    env = fresh_env(nats_url, CREATE_TABLE="f")
    factory = open_factory(env)

    with pytest.raises(StreamConfigurationError, match="does not exist"):
        factory.application_recorder()

    assert stream_config(nats_url, env["JETSTREAM_STREAM"]) is None


UNUSABLE_SETTINGS = [
    pytest.param({"JETSTREAM_STREAM": "HAS*STAR"}, id="stream-with-wildcard"),
    pytest.param({"JETSTREAM_SUBJECT_PREFIX": "has space"}, id="prefix-with-space"),
    pytest.param({"JETSTREAM_SUBJECT_PREFIX": "tail.>"}, id="prefix-with-tail-wildcard"),
    pytest.param(
        {"JETSTREAM_STREAM": "has.dot"},
        id="stream-with-dot",
    ),
    pytest.param(
        {"JETSTREAM_STREAM": "has space"},
        id="stream-with-space",
    ),
    pytest.param(
        {"JETSTREAM_SUBJECT_PREFIX": "has.*"},
        id="prefix-with-wildcard",
    ),
]


@pytest.mark.parametrize("settings", UNUSABLE_SETTINGS)
def test_a_stream_name_or_prefix_that_cannot_work_is_a_configuration_error(
    open_factory: OpenFactory, nats_url: str, settings: dict[str, str]
) -> None:
    factory = open_factory(fresh_env(nats_url, **settings))

    error, took = elapsed_call(factory.application_recorder)

    assert isinstance(error, StreamConfigurationError), repr(error)
    assert took < BOUND


# ------------------------------------------------------------- 3: atomic batches


@pytest.mark.parametrize("writer", ["same-connection", "another-connection"])
def test_a_batch_with_one_conflicting_event_writes_nothing(
    env: dict[str, str], open_factory: OpenFactory, writer: str
) -> None:
    """A conflict the writer knows from its head cache, or only the server can see."""
    recorder = application_recorder(open_factory(env))
    first, conflicting, third = uuid4(), uuid4(), uuid4()
    recorder.insert_events([stored(conflicting, 1)])
    high_water = recorder.max_notification_id()
    batch_writer = (
        recorder if writer == "same-connection" else application_recorder(open_factory(env))
    )

    with pytest.raises(IntegrityError):
        batch_writer.insert_events([stored(first, 1), stored(conflicting, 1), stored(third, 1)])

    assert recorder.max_notification_id() == high_water
    assert versions(recorder, first) == []
    assert versions(recorder, conflicting) == [1]
    assert versions(recorder, third) == []


def test_a_batch_is_stored_whole_with_consecutive_notification_ids(
    recorder: JetStreamApplicationRecorder,
) -> None:
    one, two = uuid4(), uuid4()

    ids = recorder.insert_events([*history(one, 3), *history(two, 2)])

    assert ids == [1, 2, 3, 4, 5]
    assert [(n.originator_id, n.originator_version) for n in all_notifications(recorder)] == [
        (one, 1),
        (one, 2),
        (one, 3),
        (two, 1),
        (two, 2),
    ]


def test_a_subscription_hands_over_its_events_in_batches_and_says_when_it_ended(
    recorder: JetStreamApplicationRecorder,
) -> None:
    one = uuid4()
    recorder.insert_events(history(one, 3))
    subscription = recorder.subscribe(gt=1)
    assert isinstance(subscription, JetStreamSubscription)

    got: list[Notification] = []
    deadline = time.monotonic() + BOUND
    while len(got) < 2:
        assert time.monotonic() < deadline, f"only {got} arrived"
        batch = subscription.next_batch(BOUND)
        assert batch is not None
        got += batch
    quiet = subscription.next_batch(0.2)
    subscription.stop()
    ended = subscription.next_batch(BOUND)

    assert [(n.id, n.originator_version) for n in got] == [(2, 2), (3, 3)]
    assert quiet == []  # nothing new within the timeout
    assert ended is None


def test_a_subscription_reads_ahead_of_a_slow_reader_only_so_far_and_loses_nothing(
    recorder: JetStreamApplicationRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(JetStreamSubscription, "READ_AHEAD", 2)
    one = uuid4()
    for first in (1, 501, 1001, 1501):
        recorder.insert_events(history(one, 500, first))
    subscription = recorder.subscribe()
    assert isinstance(subscription, JetStreamSubscription)

    # Not read for a while: the consumer stops at two batches (of up to 256).
    wait_until(lambda: subscription._queue.qsize() == 2, BOUND, "two batches read ahead")
    time.sleep(0.5)
    assert subscription._queue.qsize() == 2  # the private queue: what is held in memory
    got: list[Notification] = []
    deadline = time.monotonic() + BOUND
    while len(got) < 2000:
        assert time.monotonic() < deadline, f"only {len(got)} arrived"
        batch = subscription.next_batch(BOUND)
        assert batch is not None
        got += batch
    subscription.stop()

    assert [n.originator_version for n in got] == list(range(1, 2001))


def test_a_reader_wakes_the_consumer_only_when_it_waits_for_room(
    recorder: JetStreamApplicationRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Waking the store's loop from the reader's thread costs the reader a write to the
    # loop's pipe and a hand-off of the interpreter lock: only a waiting consumer gets it.
    monkeypatch.setattr(JetStreamSubscription, "READ_AHEAD", 4)
    one = uuid4()
    recorder.insert_events(history(one, 100, 1))
    subscription = recorder.subscribe()
    assert isinstance(subscription, JetStreamSubscription)
    wakes: list[object] = []
    loop = subscription._room._loop
    call_soon_threadsafe = loop.call_soon_threadsafe

    def counted(callback: Any, *args: Any) -> Any:
        if callback is _wake:  # the reader's wake-up (not the store's own requests)
            wakes.append(callback)
        return call_soon_threadsafe(callback, *args)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counted)
    got: list[Notification] = []
    deadline = time.monotonic() + BOUND
    while len(got) < 100:  # fewer batches than the read-ahead: the consumer never waits
        assert time.monotonic() < deadline, f"only {len(got)} arrived"
        got += subscription.next_batch(BOUND) or []
    assert wakes == []

    for first in range(101, 3001, 500):  # more batches than the read-ahead
        recorder.insert_events(history(one, min(500, 3001 - first), first))
    room = subscription._room
    wait_until(lambda: room._waiter is not None, BOUND, "the consumer waits for room")
    assert subscription._queue.qsize() == 4
    got += subscription.next_batch(BOUND) or []
    # Woken by the batch that made room. (Not "room._waiter is None": once woken, the
    # consumer fills that room and may wait again before this line runs.)
    assert len(wakes) == 1
    while len(got) < 3000:
        assert time.monotonic() < deadline, f"only {len(got)} arrived"
        got += subscription.next_batch(BOUND) or []
    subscription.stop()

    assert [n.originator_version for n in got] == list(range(1, 3001))


# ------------------------------------------------------------- 4: racing writers


def race(
    writers: Sequence[JetStreamApplicationRecorder], events: Sequence[StoredEvent]
) -> list[BaseException | None]:
    """Each writer inserts ``events`` in a thread of its own, all released together.

    Returns what each insert raised (None: it succeeded).
    """
    outcomes: list[BaseException | None] = [None] * len(writers)
    start = threading.Barrier(len(writers))

    def run(index: int) -> None:
        start.wait(BOUND)
        try:
            writers[index].insert_events(events)
        except BaseException as error:
            outcomes[index] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(writers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(2 * BOUND)
        assert not thread.is_alive(), "a writer hung"
    return outcomes


RACERS = 8


def test_threads_racing_for_one_version_on_one_recorder_leave_one_event(
    recorder: JetStreamApplicationRecorder,
) -> None:
    aggregate = uuid4()

    outcomes = race([recorder] * RACERS, [stored(aggregate, 1)])

    assert sum(outcome is None for outcome in outcomes) == 1
    assert all(isinstance(o, IntegrityError) for o in outcomes if o is not None), outcomes
    assert len(all_notifications(recorder)) == 1


def test_connections_racing_for_one_version_leave_one_event(
    env: dict[str, str], open_factory: OpenFactory
) -> None:
    """Separate factories: separate connections and head caches, only the server arbitrates."""
    aggregate = uuid4()
    recorders = [application_recorder(open_factory(env)) for _ in range(RACERS)]

    outcomes = race(recorders, [stored(aggregate, 1)])

    assert sum(outcome is None for outcome in outcomes) == 1
    assert all(isinstance(o, IntegrityError) for o in outcomes if o is not None), outcomes
    assert len(all_notifications(recorders[0])) == 1


def test_connections_racing_with_batches_over_shared_aggregates_never_interleave(
    env: dict[str, str], open_factory: OpenFactory
) -> None:
    """Each writer appends v1..v5 of the same two aggregates: one whole batch wins."""
    one, two = uuid4(), uuid4()
    batch = [*history(one, 5), *history(two, 5)]
    recorders = [application_recorder(open_factory(env)) for _ in range(RACERS)]

    outcomes = race(recorders, batch)

    assert sum(outcome is None for outcome in outcomes) == 1
    assert all(isinstance(o, IntegrityError) for o in outcomes if o is not None), outcomes
    assert versions(recorders[0], one) == [1, 2, 3, 4, 5]
    assert versions(recorders[0], two) == [1, 2, 3, 4, 5]
    assert len(all_notifications(recorders[0])) == 10


def test_a_writer_that_never_saw_the_aggregate_appends_the_next_version_after_it(
    env: dict[str, str], open_factory: OpenFactory
) -> None:
    aggregate = uuid4()
    first = application_recorder(open_factory(env))
    stale = application_recorder(open_factory(env))
    first.insert_events([stored(aggregate, 1)])

    [v2_id] = stale.insert_events([stored(aggregate, 2)]) or []

    notifications = all_notifications(first)
    assert [(n.originator_version, n.id) for n in notifications] == [(1, 1), (2, v2_id)]


def test_a_writer_with_a_stale_head_appends_a_later_version_but_not_an_existing_one(
    env: dict[str, str], open_factory: OpenFactory
) -> None:
    aggregate = uuid4()
    stale = application_recorder(open_factory(env))
    other = application_recorder(open_factory(env))
    stale.insert_events([stored(aggregate, 1)])  # stale now remembers v1 as the head
    other.insert_events([stored(aggregate, 2)])

    with pytest.raises(IntegrityError):
        stale.insert_events([stored(aggregate, 2)])
    stale.insert_events([stored(aggregate, 3)])

    assert versions(other, aggregate) == [1, 2, 3]


# --------------------------------------------------------- 5: bad input writes nothing


def assert_nothing_written(recorder: JetStreamApplicationRecorder) -> None:
    assert recorder.max_notification_id() is None


def assert_still_writes(recorder: JetStreamApplicationRecorder) -> None:
    """The recorder (and its connection) survived the refused write."""
    aggregate = uuid4()
    recorder.insert_events([stored(aggregate, 1)])
    assert versions(recorder, aggregate) == [1]


def test_an_event_over_the_servers_max_payload_is_a_data_error_and_writes_nothing(
    recorder: JetStreamApplicationRecorder, nats_url: str
) -> None:
    too_big = b"x" * (server_max_payload(nats_url) + 1)

    with pytest.raises(DataError, match="max_payload"):
        recorder.insert_events([stored(uuid4(), 1), stored(uuid4(), 1, too_big)])

    assert_nothing_written(recorder)
    assert_still_writes(recorder)


def payload_of_size(size: int) -> bytes:
    """Event state such that the event's whole message payload is ``size`` bytes."""
    probe = stored(uuid4(), 1, b"x" * size)
    overhead = len(encode_envelope(probe)) - size
    return b"x" * (size - overhead)


@pytest.mark.parametrize("batched", [False, True], ids=["single", "batch"])
def test_an_event_whose_headers_push_it_over_max_payload_leaves_the_recorder_working(
    recorder: JetStreamApplicationRecorder, nats_url: str, batched: bool
) -> None:
    almost_max = payload_of_size(server_max_payload(nats_url) - 16)
    events = [stored(uuid4(), 1, almost_max)]
    if batched:
        events.insert(0, stored(uuid4(), 1))

    error, _ = elapsed_call(lambda: recorder.insert_events(events))

    assert error is None or isinstance(error, DataError), repr(error)
    assert_still_writes(recorder)


def test_more_events_than_one_atomic_batch_is_a_data_error_and_writes_nothing(
    recorder: JetStreamApplicationRecorder,
) -> None:
    with pytest.raises(DataError, match=str(MAX_BATCH)):
        recorder.insert_events(history(uuid4(), MAX_BATCH + 1))

    assert_nothing_written(recorder)


def test_a_full_atomic_batch_is_stored(recorder: JetStreamApplicationRecorder) -> None:
    aggregates = [uuid4() for _ in range(MAX_BATCH // 2)]

    recorder.insert_events([e for a in aggregates for e in history(a, 2)])

    assert recorder.max_notification_id() == MAX_BATCH


@pytest.mark.parametrize(
    "bad_id",
    [
        "",
        "with space",
        "tab\there",
        "new\nline",
        "*",
        ">",
        "a.*",
        "a.>",
        ".leading",
        "trailing.",
        "a..b",
    ],
)
def test_an_aggregate_id_that_cannot_be_a_subject_is_a_data_error_and_writes_nothing(
    recorder: JetStreamApplicationRecorder, bad_id: str
) -> None:
    with pytest.raises(DataError, match="subject"):
        recorder.insert_events([stored(uuid4(), 1), stored(bad_id, 1)])

    assert_nothing_written(recorder)


def test_an_aggregate_id_too_long_for_a_subject_is_a_data_error_and_the_recorder_keeps_working(
    recorder: JetStreamApplicationRecorder,
) -> None:
    with pytest.raises(DataError):
        recorder.insert_events([stored("a" * 5000, 1)])

    assert_still_writes(recorder)


def test_duplicate_versions_in_one_insert_are_an_integrity_error_and_write_nothing(
    recorder: JetStreamApplicationRecorder,
) -> None:
    aggregate = uuid4()

    with pytest.raises(IntegrityError):
        recorder.insert_events([stored(uuid4(), 1), stored(aggregate, 1), stored(aggregate, 1)])

    assert_nothing_written(recorder)


class Unregistered:
    """A value no transcoding was registered for."""


class Holder(Aggregate):
    @event("Held")
    def hold(self, thing: object) -> None:
        self.thing = thing


def test_an_event_whose_state_cannot_be_encoded_fails_the_save_and_writes_nothing(
    env: dict[str, str],
) -> None:
    app: Application[UUID] = Application(env=env)
    try:
        holder = Holder()
        holder.hold(Unregistered())

        with pytest.raises(TypeError, match="Unregistered"):
            app.save(holder)

        assert app.recorder.max_notification_id() is None
        with pytest.raises(AggregateNotFoundError):
            app.repository.get(holder.id)
    finally:
        app.close()


# ------------------------------------------------------------------- 6: NATS down


def factory_without_server() -> JetStreamFactory:
    """A factory for a port nothing listens on (short timeout: this test waits it out)."""
    return JetStreamFactory(fresh_env(f"nats://127.0.0.1:{free_port()}", JETSTREAM_TIMEOUT="0.5"))


def test_a_factory_without_a_server_fails_with_an_operational_error() -> None:
    with pytest.raises(OperationalError):
        factory_without_server()


def test_a_factory_without_a_server_gives_up_within_a_bound() -> None:
    error, took = elapsed_call(factory_without_server)

    assert error is not None
    assert took < 10


def test_a_killed_server_fails_writes_fast_and_after_restart_they_resume_with_nothing_lost(
    crashable: NatsServer, open_factory: OpenFactory
) -> None:
    recorder = application_recorder(open_factory(fresh_env(crashable.url)))
    before = [uuid4() for _ in range(5)]
    for aggregate in before:
        recorder.insert_events(history(aggregate, 2))

    crashable.kill()
    error, took = elapsed_call(lambda: recorder.insert_events([stored(uuid4(), 1)]))
    assert isinstance(error, OperationalError), repr(error)
    assert took < BOUND

    crashable.start()
    after = uuid4()
    insert_when_reachable(recorder, history(after, 2), within=BOUND)

    stored_ids = [(n.originator_id, n.originator_version) for n in all_notifications(recorder)]
    expected = [(a, v) for a in [*before, after] for v in (1, 2)]
    assert [i for i in stored_ids if i[0] in {*before, after}] == expected


def test_reads_fail_fast_while_the_server_is_down(
    crashable: NatsServer, open_factory: OpenFactory
) -> None:
    recorder = application_recorder(open_factory(fresh_env(crashable.url)))
    aggregate = uuid4()
    recorder.insert_events([stored(aggregate, 1)])

    crashable.kill()

    for read in (
        recorder.max_notification_id,
        lambda: recorder.select_events(aggregate),
        lambda: recorder.select_notifications(None, 10),
    ):
        error, took = elapsed_call(read)
        assert isinstance(error, OperationalError), repr(error)
        assert took < BOUND
    # Closing a factory after reads failed in an outage is the next test's business.
    crashable.start()
    wait_until(lambda: recorder.connection.nc.is_connected, BOUND, "store reconnected")


def test_a_subscription_follows_again_within_seconds_of_a_server_restart(
    crashable: NatsServer, open_factory: OpenFactory
) -> None:
    """A server restart takes the follower's live pull request and its memory consumer
    with it, and nothing says so: the connection made again (or the server's idle
    heartbeats stopping) does. Before, the pull waited out its expiry plus the log's
    timeout (8 s at the engine's 5 s) before it made a new consumer, and the event
    appended after the restart waited with it (7.7 s here; now 0.7 s)."""
    recorder = application_recorder(open_factory(fresh_env(crashable.url, JETSTREAM_TIMEOUT="5")))
    recorder.insert_events([stored(uuid4(), 1)])
    subscription = recorder.subscribe(gt=0)
    try:
        first = subscription.next_batch(BOUND)
        assert first is not None
        assert [n.id for n in first] == [1]

        crashable.kill()
        crashable.start()
        after = uuid4()
        insert_when_reachable(recorder, [stored(after, 1)], within=BOUND)
        appended = time.monotonic()
        followed: list[Notification] = []
        while not followed and time.monotonic() - appended < 15:
            followed += subscription.next_batch(0.1) or []
        took = time.monotonic() - appended
    finally:
        subscription.stop()
    assert [n.originator_id for n in followed] == [after]
    assert took < 3.0, f"the event appended after the restart was followed {took:.1f} s later"


def store_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "colonies-store"}


def test_closing_a_factory_after_reads_failed_in_an_outage_returns_and_stops_its_thread(
    crashable: NatsServer,
) -> None:
    threads_before = store_threads()
    factory = JetStreamFactory(fresh_env(crashable.url))
    recorder = application_recorder(factory)
    aggregate = uuid4()
    recorder.insert_events([stored(aggregate, 1)])
    crashable.kill()
    wait_until(lambda: not recorder.connection.nc.is_connected, BOUND, "disconnect noticed")
    with pytest.raises(OperationalError):
        recorder.select_events(aggregate)

    error, took = elapsed_call(factory.close)

    assert error is None, repr(error)
    assert took < BOUND
    assert store_threads() <= threads_before


# --------------------------------------------------------------- 7: killed mid-write

BATCH = 50


def test_a_server_killed_under_batched_writes_keeps_every_acknowledged_batch_whole(
    crashable: NatsServer, open_factory: OpenFactory
) -> None:
    env = fresh_env(crashable.url)
    recorder = application_recorder(open_factory(env))
    acknowledged: list[UUID] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def write_batches() -> None:
        while not stop.is_set():
            aggregate = uuid4()
            try:
                recorder.insert_events(history(aggregate, BATCH))
            except OperationalError as error:
                failures.append(error)
                time.sleep(0.01)
            else:
                acknowledged.append(aggregate)

    writer = threading.Thread(target=write_batches)
    writer.start()
    try:
        wait_until(lambda: len(acknowledged) >= 20, BOUND, "batches written before the kill")
        crashable.kill()
        wait_until(lambda: len(failures) >= 1, BOUND, "a write failing while the server is down")
        acknowledged_before_restart = len(acknowledged)
        crashable.start()
        wait_until(
            lambda: len(acknowledged) >= acknowledged_before_restart + 5,
            3 * BOUND,
            "batches written after the restart",
        )
    finally:
        stop.set()
        writer.join(2 * BOUND)
    assert not writer.is_alive(), "the writer hung"

    notifications = all_notifications(application_recorder(open_factory(env)))
    per_aggregate = Counter(n.originator_id for n in notifications)
    assert set(per_aggregate.values()) == {BATCH}, "a batch was stored in part"
    assert set(acknowledged) <= set(per_aggregate), "an acknowledged batch was lost"
    for aggregate in per_aggregate:
        batch = [n.originator_version for n in notifications if n.originator_id == aggregate]
        assert batch == list(range(1, BATCH + 1))


# --------------------------------------------------- 8: subscriptions across restarts


def test_a_subscription_receives_every_event_in_order_across_a_server_restart(
    crashable: NatsServer, open_factory: OpenFactory
) -> None:
    recorder = application_recorder(open_factory(fresh_env(crashable.url)))
    received: list[tuple[UUID | str, int, int]] = []
    subscription = recorder.subscribe(gt=None)

    def follow() -> None:
        for notification in subscription:
            received.append(
                (notification.originator_id, notification.originator_version, notification.id)
            )

    follower = threading.Thread(target=follow)
    follower.start()
    try:
        before = uuid4()
        recorder.insert_events(history(before, 3))
        wait_until(lambda: len(received) >= 3, BOUND, "events before the restart received")

        crashable.kill()
        crashable.start()
        after = [uuid4(), uuid4()]
        for aggregate in after:
            insert_when_reachable(recorder, history(aggregate, 2), within=BOUND)
        wait_until(lambda: len(received) >= 7, 3 * BOUND, "events after the restart received")
    finally:
        subscription.stop()
        follower.join(BOUND)
    assert not follower.is_alive(), "the subscription did not stop"

    expected = [(before, v) for v in (1, 2, 3)] + [(a, v) for a in after for v in (1, 2)]
    assert [(r[0], r[1]) for r in received] == expected
    ids = [r[2] for r in received]
    assert ids == sorted(set(ids)), "notification ids repeated or out of order"


def test_stopping_a_subscription_ends_its_iteration(recorder: JetStreamApplicationRecorder) -> None:
    subscription = recorder.subscribe(gt=None)
    finished = threading.Event()

    def follow() -> None:
        for _ in subscription:
            pass
        finished.set()

    follower = threading.Thread(target=follow)
    follower.start()
    subscription.stop()
    follower.join(BOUND)

    assert finished.is_set()


# ----------------------------------------------------- 9: tracking and process recorders


def tracking_recorder(factory: JetStreamFactory) -> JetStreamTrackingRecorder:
    return factory.tracking_recorder()


def process_recorder(factory: JetStreamFactory) -> JetStreamProcessRecorder:
    recorder = factory.process_recorder()
    assert isinstance(recorder, JetStreamProcessRecorder)
    return recorder


@pytest.mark.parametrize("writer", ["same-connection", "another-connection"])
def test_the_tracking_recorder_refuses_to_go_back_or_repeat(
    env: dict[str, str], open_factory: OpenFactory, writer: str
) -> None:
    tracking = tracking_recorder(open_factory(env))
    tracking.insert_tracking(Tracking("upstream", 5))
    other = tracking if writer == "same-connection" else tracking_recorder(open_factory(env))

    for position in (5, 4, 1):
        with pytest.raises(IntegrityError):
            other.insert_tracking(Tracking("upstream", position))
    other.insert_tracking(Tracking("upstream", 9))

    assert tracking.max_tracking_id("upstream") == 9
    assert tracking.max_tracking_id("elsewhere") is None


@pytest.mark.parametrize("writer", ["same-connection", "another-connection"])
def test_a_process_event_that_conflicts_writes_neither_it_nor_its_tracking(
    env: dict[str, str], open_factory: OpenFactory, writer: str
) -> None:
    recorder = process_recorder(open_factory(env))
    aggregate = uuid4()
    recorder.insert_events([stored(aggregate, 1)], tracking=Tracking("upstream", 1))
    other = recorder if writer == "same-connection" else process_recorder(open_factory(env))
    high_water = recorder.max_notification_id()

    with pytest.raises(IntegrityError):
        other.insert_events(
            [stored(uuid4(), 1), stored(aggregate, 1)], tracking=Tracking("upstream", 2)
        )

    assert recorder.max_tracking_id("upstream") == 1
    assert recorder.max_notification_id() == high_water
    assert versions(recorder, aggregate) == [1]


@pytest.mark.parametrize("writer", ["same-connection", "another-connection"])
def test_a_process_event_with_an_old_tracking_id_is_not_written(
    env: dict[str, str], open_factory: OpenFactory, writer: str
) -> None:
    recorder = process_recorder(open_factory(env))
    recorder.insert_events([stored(uuid4(), 1)], tracking=Tracking("upstream", 7))
    other = recorder if writer == "same-connection" else process_recorder(open_factory(env))
    fresh = uuid4()

    with pytest.raises(IntegrityError):
        other.insert_events([stored(fresh, 1)], tracking=Tracking("upstream", 7))

    assert versions(recorder, fresh) == []
    assert recorder.max_tracking_id("upstream") == 7


def test_a_process_event_and_its_tracking_are_written_together(
    env: dict[str, str], open_factory: OpenFactory
) -> None:
    recorder = process_recorder(open_factory(env))
    aggregate = uuid4()

    ids = recorder.insert_events(history(aggregate, 2), tracking=Tracking("upstream", 3))

    assert recorder.max_tracking_id("upstream") == 3
    assert [n.id for n in all_notifications(recorder)] == list(ids or [])
    assert versions(recorder, aggregate) == [1, 2]


async def test_an_append_no_stream_takes_is_an_operational_error_at_once(nats_url: str) -> None:
    """An append whose subject no stream captures is answered "no responders" by the
    server: a clear error well within the timeout, and the log keeps appending after it."""
    nc = await nats.connect(nats_url)
    try:
        log = JetStreamLog(nc, f"nostream{uuid4().hex[:8]}", lambda _: None, timeout=TIMEOUT)
        started = time.monotonic()
        with pytest.raises(OperationalError, match=r"no stream takes nobody\.listens"):
            await log.append([Entry(f"nobody.listens.{uuid4().hex}", 1, b"x")])
        assert time.monotonic() - started < TIMEOUT
        with pytest.raises(OperationalError, match=r"no stream takes nobody\.listens"):
            await log.append([Entry(f"nobody.listens.{uuid4().hex}", 1, b"y")])
    finally:
        await nc.close()


async def test_a_patient_read_of_the_log_waits_out_a_server_that_does_not_answer(
    crashable: NatsServer,
) -> None:
    """A whole-log reader (the audit, the chaos checker) reads with ``patience``: while
    JetStream does not answer (here a killed server, as during a cluster's leader
    election) the read starts again until it does, and returns every message once; a read
    without patience fails at once."""
    nc = await nats.connect(crashable.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        log = JetStreamLog(nc, "PATIENT", lambda _: None, timeout=TIMEOUT)
        await log.ensure_stream(StreamSpec("PATIENT", ("patient.>",)))
        await log.append([Entry(f"patient.{n}", 1, b"x") for n in range(20)])

        crashable.kill()
        with pytest.raises(OperationalError):
            await log.read_range("patient.>", 1, 100)

        # Started again from the loop's thread: a server started from a thread dies with
        # that thread (the parent-death signal is per thread).
        asyncio.get_running_loop().call_later(1.0, crashable.start)
        messages = await log.read_range("patient.>", 1, 100, patience=6 * BOUND)
        assert [m.sequence for m in messages] == list(range(1, 21))
    finally:
        await nc.close()


def test_an_engine_that_cannot_open_its_log_leaves_no_connection_behind(nats_url: str) -> None:
    """The engine's start-up builds its application again after each failure; a failed
    build closes the store's NATS connection and loop thread instead of leaving them."""

    def store_threads() -> int:
        return sum(thread.name == "colonies-store" for thread in threading.enumerate())

    before = store_threads()
    env = fresh_env(nats_url, CREATE_TABLE="f")  # the stream is missing: refused
    for _ in range(3):
        with pytest.raises(StreamConfigurationError, match="does not exist"):
            ColoniesApp(env, server_id="s", engine_prvkey=crypto.new_private_key())
    assert store_threads() == before
