"""The event store against raw nats-py, on one fresh nats-server.

Every measurement gets a fresh stream configured exactly like the store's
(:meth:`StreamSpec.config`), events of the same size for raw and recorder (an encoded
envelope of a 150-byte state), a warm-up, and its own connection. Raw rates use nats-py's
JetStream API as an application would; recorder rates go through
``JetStreamFactory(...).application_recorder()`` from synchronous threads, as eventsourcing
calls it. Targets compare each recorder rate with its raw counterpart.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass

import msgspec
import nats
from eventsourcing.persistence import ApplicationRecorder, StoredEvent
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from benchmarks.harness import (
    NATS_CONFIG,
    Options,
    Report,
    Sample,
    Stopwatch,
    Target,
    environment,
    nats_server,
    server_version,
)
from colonies_es.store import JetStreamFactory
from colonies_es.store.codec import encode_envelope
from colonies_es.store.jetstream import StreamSpec

STATE = random.Random(0).randbytes(150)
"""The state of every benchmark event: the size of a small domain event's attributes."""

TOPIC = "colonies_es.domain.process:Process.Assigned"
THREADS = 8
BATCH = 10
"""Events per ``insert_events`` call of the threaded measurement (all of one aggregate)."""

WINDOW = 256
"""Publishes in flight in the raw pipelined measurement."""

TARGETS = [
    Target("rec_seq", "raw_seq", 0.70),
    Target("rec_threads", "raw_pipe", 0.40),
    Target("rec_threads", "raw_atomic"),  # what the server allows for atomic batches
    Target("select_1k", "raw_replay", 0.50),
    Target("select_10k", "raw_replay", 0.50),
    Target("subscribe", "raw_replay", 0.50),
]


@dataclass(frozen=True)
class Sizes:
    seconds: float
    """How long each write measurement should take (sized by its warm-up)."""
    reads: int
    """Notifications (messages) read by each read measurement."""
    warmup: int
    """Operations before the stopwatch starts."""


FULL = Sizes(seconds=2.0, reads=20_000, warmup=500)
QUICK = Sizes(seconds=0.5, reads=5_000, warmup=200)


def run(options: Options) -> Report:
    sizes = QUICK if options.quick else FULL
    report = Report(
        group="store",
        runs=options.runs,
        parameters={
            "seconds_per_write_measurement": sizes.seconds,
            "reads": sizes.reads,
            "warmup": sizes.warmup,
            "payload_bytes": len(encode_envelope(new_event())),
            "state_bytes": len(STATE),
            "threads": THREADS,
            "batch": BATCH,
            "pipeline_window": WINDOW,
        },
        environment={**environment(), "nats_config": str(NATS_CONFIG)},
        targets=TARGETS,
    )
    with nats_server() as url:
        report.environment["nats_server"] = server_version(url)
        measurements = StoreBenchmark(url, sizes).measurements()
        # Rounds interleave the measurements, so a noisy minute spreads over all of them.
        for round_number in range(1, options.runs + 1):
            for m in measurements:
                sample = m.measure()
                report.add(m.key, m.label, m.unit, sample)
                progress = f"run {round_number}/{options.runs}"
                print(f"  {progress}  {m.label:<48} {sample.rate:>10,.0f} {m.unit}", flush=True)
    report.environment["load_average_after"] = environment()["load_average"]
    return report


# ------------------------------------------------------------------------- events


def new_event(originator_id: uuid.UUID | None = None, version: int = 1) -> StoredEvent:
    return StoredEvent(
        originator_id=originator_id or uuid.uuid4(),
        originator_version=version,
        topic=TOPIC,
        state=STATE,
    )


def aggregate_events() -> list[StoredEvent]:
    """The first ``BATCH`` events of one new aggregate."""
    aggregate = uuid.uuid4()
    return [new_event(aggregate, version) for version in range(1, BATCH + 1)]


def new_events(count: int) -> list[StoredEvent]:
    """``count`` first events of as many new aggregates."""
    return [new_event() for _ in range(count)]


def as_messages(events: Sequence[StoredEvent], prefix: str) -> list[tuple[str, bytes]]:
    """The (subject, payload) the recorder would publish for each event."""
    return [(f"{prefix}.{_token(event.originator_id)}", encode_envelope(event)) for event in events]


def _token(originator_id: uuid.UUID | str) -> str:
    return originator_id.hex if isinstance(originator_id, uuid.UUID) else originator_id


# ------------------------------------------------------------------------- streams


@dataclass(frozen=True)
class Stream:
    """A stream as the store's factory names it: events on ``<prefix>.ev.<id>``."""

    name: str
    prefix: str

    @property
    def events_prefix(self) -> str:
        return f"{self.prefix}.ev"

    @property
    def spec(self) -> StreamSpec:
        return StreamSpec(self.name, (f"{self.prefix}.ev.>", f"{self.prefix}.trk.>"))

    def factory(self, url: str) -> JetStreamFactory:
        return JetStreamFactory(
            {
                "NATS_URL": url,
                "JETSTREAM_STREAM": self.name,
                "JETSTREAM_SUBJECT_PREFIX": self.prefix,
            }
        )


class _ApiReply(msgspec.Struct):
    error: dict[str, object] | None = None


async def _api(nc: NATS, subject: str, body: object = None) -> None:
    payload = b"" if body is None else msgspec.json.encode(body)
    reply = await nc.request(f"$JS.API.{subject}", payload, timeout=10)
    error = msgspec.json.decode(reply.data, type=_ApiReply).error
    if error is not None:
        raise RuntimeError(f"{subject}: {error}")


@asynccontextmanager
async def connected(url: str) -> AsyncIterator[NATS]:
    nc = await nats.connect(url)
    try:
        yield nc
    finally:
        await nc.close()


async def publish_pipelined(nc: NATS, messages: Sequence[tuple[str, bytes]]) -> None:
    """Publishes with up to ``WINDOW`` acknowledgements outstanding; raises on any refusal."""
    js = nc.jetstream(publish_async_max_pending=WINDOW)
    acks = [await js.publish_async(subject, payload) for subject, payload in messages]
    await js.publish_async_completed()
    await asyncio.gather(*acks)


# ------------------------------------------------------------------------- measurements


@dataclass(frozen=True)
class Measurement:
    key: str
    label: str
    unit: str
    measure: Callable[[], Sample]


class StoreBenchmark:
    """The measurements; each returns one :class:`Sample` and leaves no stream behind."""

    def __init__(self, url: str, sizes: Sizes) -> None:
        self.url = url
        self.sizes = sizes
        self._numbers = itertools.count(1)
        self._counts: dict[str, int] = {}

    def measurements(self) -> list[Measurement]:
        return [
            Measurement("raw_seq", "raw: js.publish, sequential", "msgs/s", self.raw_sequential),
            Measurement(
                "raw_pipe", f"raw: js.publish_async, {WINDOW} in flight", "msgs/s",
                self.raw_pipelined,
            ),
            Measurement(
                "raw_atomic", f"raw: atomic batches of {BATCH}, {THREADS} in flight", "msgs/s",
                self.raw_atomic_batches,
            ),
            Measurement("raw_replay", "raw: ordered consumer replay", "msgs/s", self.raw_replay),
            Measurement(
                "rec_seq", "recorder: insert_events, 1 thread, 1 event", "events/s",
                self.insert_sequential,
            ),
            Measurement(
                "rec_threads", f"recorder: insert_events, {THREADS} threads, {BATCH} events",
                "events/s", self.insert_threaded,
            ),
            Measurement(
                "select_1k", "recorder: select_notifications limit=1000", "notif/s",
                self.select(1000),
            ),
            Measurement(
                "select_10k", "recorder: select_notifications limit=10000", "notif/s",
                self.select(10_000),
            ),
            Measurement("subscribe", "recorder: subscribe(gt=0)", "notif/s", self.subscribe),
        ]  # fmt: skip

    # -- helpers

    def _new_stream(self) -> Stream:
        number = next(self._numbers)
        return Stream(f"BENCH_{number}", f"bench{number}")

    def _create(self, stream: Stream, fill: int = 0) -> None:
        """Creates ``stream`` (store configuration) holding ``fill`` events."""

        async def create() -> None:
            async with connected(self.url) as nc:
                await _api(nc, f"STREAM.CREATE.{stream.name}", stream.spec.config())
                if fill:
                    await publish_pipelined(nc, as_messages(new_events(fill), stream.events_prefix))

        asyncio.run(create())

    def _delete(self, stream: Stream) -> None:
        async def delete() -> None:
            async with connected(self.url) as nc:
                await _api(nc, f"STREAM.DELETE.{stream.name}")

        asyncio.run(delete())

    def _messages(self, stream: Stream, count: int) -> list[tuple[str, bytes]]:
        return as_messages(new_events(count), stream.events_prefix)

    def _count(self, key: str, warmup: Sample) -> int:
        """How many operations make a measurement of about ``sizes.seconds`` (fixed by the
        first run, so every run does the same work)."""
        if key not in self._counts:
            wanted = round(warmup.rate * self.sizes.seconds)
            self._counts[key] = max(self.sizes.warmup, wanted)
        return self._counts[key]

    # -- raw nats-py

    def raw_sequential(self) -> Sample:
        """``js.publish`` one message at a time, each awaited for its PubAck."""
        stream = self._new_stream()
        self._create(stream)

        async def measure() -> Sample:
            async with connected(self.url) as nc:
                js = nc.jetstream()

                async def publish(messages: list[tuple[str, bytes]]) -> Sample:
                    with Stopwatch() as watch:
                        for subject, payload in messages:
                            await js.publish(subject, payload)
                    return Sample(len(messages), watch.seconds)

                warmup = await publish(self._messages(stream, self.sizes.warmup))
                count = self._count("raw_seq", warmup)
                return await publish(self._messages(stream, count))

        try:
            return asyncio.run(measure())
        finally:
            self._delete(stream)

    def raw_pipelined(self) -> Sample:
        """``js.publish_async`` with ``WINDOW`` acknowledgements outstanding."""
        stream = self._new_stream()
        self._create(stream)

        async def measure() -> Sample:
            async with connected(self.url) as nc:

                async def publish(messages: list[tuple[str, bytes]]) -> Sample:
                    with Stopwatch() as watch:
                        await publish_pipelined(nc, messages)
                    return Sample(len(messages), watch.seconds)

                warmup = await publish(self._messages(stream, self.sizes.warmup * 10))
                count = self._count("raw_pipe", warmup)
                return await publish(self._messages(stream, count))

        try:
            return asyncio.run(measure())
        finally:
            self._delete(stream)

    def raw_atomic_batches(self) -> Sample:
        """What the threaded recorder measurement asks of the server, without the recorder:
        ``THREADS`` coroutines each committing atomic batches of ``BATCH`` messages of one
        new subject (the headers the store sends, ADR-50)."""
        stream = self._new_stream()
        self._create(stream)

        async def commit(nc: NATS, messages: list[tuple[str, bytes]]) -> None:
            batch_id = uuid.uuid4().hex
            for number, (subject, payload) in enumerate(messages, start=1):
                headers = {"Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(number)}
                if number == 1:
                    headers["Nats-Expected-Last-Subject-Sequence"] = "0"
                if number < len(messages):
                    await nc.publish(subject, payload, headers=headers)
                else:
                    headers["Nats-Batch-Commit"] = "1"
                    reply = await nc.request(subject, payload, timeout=10, headers=headers)
                    error = msgspec.json.decode(reply.data, type=_ApiReply).error
                    _check(error is None, f"atomic batch refused: {error}")

        async def run_batches(nc: NATS, batches_per_writer: int) -> Sample:
            work = [
                [
                    as_messages(aggregate_events(), stream.events_prefix)
                    for _ in range(batches_per_writer)
                ]
                for _ in range(THREADS)
            ]

            async def writer(batches: list[list[tuple[str, bytes]]]) -> None:
                for messages in batches:
                    await commit(nc, messages)

            with Stopwatch() as watch:
                await asyncio.gather(*(writer(batches) for batches in work))
            return Sample(THREADS * batches_per_writer * BATCH, watch.seconds)

        async def measure() -> Sample:
            async with connected(self.url) as nc:
                warmup = await run_batches(nc, max(1, self.sizes.warmup // BATCH))
                batches = self._count("raw_atomic", warmup) // (THREADS * BATCH)
                return await run_batches(nc, max(1, batches))

        try:
            return asyncio.run(measure())
        finally:
            self._delete(stream)

    def raw_replay(self) -> Sample:
        """An ordered push consumer delivering every stored message to a counting callback."""
        stream = self._new_stream()
        reads = self.sizes.reads
        self._create(stream, fill=reads)

        async def replay(nc: NATS, count: int) -> Sample:
            js = nc.jetstream()
            done = asyncio.Event()
            received = 0

            async def on_message(msg: Msg) -> None:
                nonlocal received
                received += 1
                if received == count:
                    done.set()

            with Stopwatch() as watch:
                sub = await js.subscribe(
                    f"{stream.events_prefix}.>",
                    stream=stream.name,
                    cb=on_message,
                    ordered_consumer=True,
                    deliver_policy=DeliverPolicy.ALL,
                )
                await asyncio.wait_for(done.wait(), 60)
            await sub.unsubscribe()
            return Sample(count, watch.seconds)

        async def measure() -> Sample:
            async with connected(self.url) as nc:
                await replay(nc, min(self.sizes.warmup * 4, reads))
                return await replay(nc, reads)

        try:
            return asyncio.run(measure())
        finally:
            self._delete(stream)

    # -- the recorder

    def insert_sequential(self) -> Sample:
        """``insert_events`` of one new aggregate's first event per call, from one thread."""
        stream = self._new_stream()
        factory = stream.factory(self.url)
        try:
            recorder = factory.application_recorder()

            def insert(events: list[StoredEvent]) -> Sample:
                with Stopwatch() as watch:
                    for event in events:
                        recorder.insert_events([event])
                return Sample(len(events), watch.seconds)

            warmup = insert(new_events(self.sizes.warmup))
            return insert(new_events(self._count("rec_seq", warmup)))
        finally:
            factory.close()
            self._delete(stream)

    def insert_threaded(self) -> Sample:
        """``THREADS`` threads sharing one recorder, each inserting batches of ``BATCH``
        events of one new aggregate per call."""
        stream = self._new_stream()
        factory = stream.factory(self.url)
        try:
            recorder = factory.application_recorder()
            warmup = _insert_in_threads(recorder, max(1, self.sizes.warmup // BATCH))
            batches = self._count("rec_threads", warmup) // (THREADS * BATCH)
            return _insert_in_threads(recorder, max(1, batches))
        finally:
            factory.close()
            self._delete(stream)

    def select(self, limit: int) -> Callable[[], Sample]:
        """``select_notifications`` reading every notification in sections of ``limit``."""

        def measure() -> Sample:
            stream = self._new_stream()
            reads = self.sizes.reads
            self._create(stream, fill=reads)
            factory = stream.factory(self.url)
            try:
                recorder = factory.application_recorder()
                recorder.select_notifications(start=1, limit=min(limit, self.sizes.warmup * 4))
                with Stopwatch() as watch:
                    last, read = 0, 0
                    while read < reads:
                        section = recorder.select_notifications(start=last + 1, limit=limit)
                        if not section:
                            break
                        read += len(section)
                        last = section[-1].id
                _check(read == reads and last == reads, f"read {read} notifications up to {last}")
                return Sample(read, watch.seconds)
            finally:
                factory.close()
                self._delete(stream)

        return measure

    def subscribe(self) -> Sample:
        """Iterating ``subscribe(gt=0)`` until every notification has arrived."""
        stream = self._new_stream()
        reads = self.sizes.reads
        self._create(stream, fill=reads)
        factory = stream.factory(self.url)
        try:
            recorder = factory.application_recorder()

            def follow(count: int) -> Sample:
                with Stopwatch() as watch, recorder.subscribe(gt=0) as subscription:
                    for received, notification in enumerate(subscription, start=1):
                        if received == count:
                            _check(notification.id == count, f"got id {notification.id}")
                            break
                return Sample(count, watch.seconds)

            follow(min(self.sizes.warmup * 4, reads))
            return follow(reads)
        finally:
            factory.close()
            self._delete(stream)


def _insert_in_threads(recorder: ApplicationRecorder, batches_per_thread: int) -> Sample:
    """Each of ``THREADS`` threads inserts its batches; timed from a common start."""
    work = [[aggregate_events() for _ in range(batches_per_thread)] for _ in range(THREADS)]
    start = threading.Barrier(THREADS + 1)

    def insert(batches: list[list[StoredEvent]]) -> None:
        start.wait()
        for batch in batches:
            recorder.insert_events(batch)

    with ThreadPoolExecutor(THREADS) as pool:
        futures = [pool.submit(insert, batches) for batches in work]
        start.wait()
        with Stopwatch() as watch:
            for future in futures:
                future.result()
    return Sample(THREADS * batches_per_thread * BATCH, watch.seconds)


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise RuntimeError(f"benchmark went wrong: {what}")
