"""eventsourcing recorders on JetStream, and the infrastructure factory that builds them.

Select with ``PERSISTENCE_MODULE=colonies_es.store``. Environment (eventsourcing's
``Environment``: each name may also be prefixed with the application name):

- ``NATS_URL`` (default ``nats://127.0.0.1:4222``): comma-separated server URLs;
  ``NATS_NKEY_FILE`` (the writer's NATS credential, an nkey seed file) and
  ``NATS_TLS_CA_FILE`` (the CA of the server's TLS certificate), both optional
  (:class:`colonies_es.settings.NatsAccess`).
- ``JETSTREAM_STREAM`` (default ``COLONIES``): the event-log stream.
- ``JETSTREAM_SUBJECT_PREFIX`` (default ``colonies``): events go to ``<prefix>.ev.<id>``,
  tracking records to ``<prefix>.trk.<application>``, snapshots to ``<prefix>.snap.<id>`` on
  the stream ``<stream>_SNAPSHOTS``.
- ``JETSTREAM_REPLICAS`` (default 1; 3 in a cluster), ``JETSTREAM_TIMEOUT`` (seconds,
  default 5), ``CREATE_TABLE`` (default yes: create missing streams).
- ``EVENT_SEAL_KEY`` (hex, >= 16 bytes; optional): writers seal every event with it
  (HMAC, :class:`~colonies_es.store.codec.Sealer`) and readers ignore messages it did not
  seal, so events appended to the stream by anyone but the log's trusted writers are
  never read back (they stay in the stream for ``audit verify`` to report).

Aggregate ids become subject tokens: a UUID is written as its hex; a string id may contain
dots (``colony.graph.<hex>`` gives one subject per graph) but no spaces, ``*`` or ``>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import re
import threading
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import nats
import nats.errors
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    DataError,
    InfrastructureFactory,
    Mapper,
    Notification,
    OperationalError,
    ProcessRecorder,
    StoredEvent,
    Subscription,
    Tracking,
    TrackingRecorder,
    Transcoder,
)
from eventsourcing.utils import Environment, EnvType, resolve_topic, strtobool
from nats.aio.client import Client as NATS

from colonies_es.loop import LoopClosedError, LoopThread
from colonies_es.settings import NatsAccess
from colonies_es.store.codec import (
    Envelope,
    EventMapper,
    MsgspecTranscoder,
    Sealer,
    decode_envelope,
    encode_envelope,
    to_notification,
    to_stored_event,
)
from colonies_es.store.jetstream import Entry, JetStreamLog, StoredMessage, StreamSpec

_TOKEN = re.compile(r"^[^\s*>]+$")


log = logging.getLogger("colonies.store")


async def _log_nats_error(error: Exception) -> None:
    """nats-py reports connection trouble here (instead of printing tracebacks)."""
    log.warning("NATS: %r", error)


class _Connection:
    """The NATS connection and loop thread shared by every recorder of one factory."""

    def __init__(self, access: NatsAccess, timeout: float, sealer: Sealer | None = None) -> None:
        self.timeout = timeout
        self.sealer = sealer
        self._logs: dict[str, JetStreamLog] = {}
        self._lock = threading.Lock()
        self.loop = LoopThread("colonies-store")
        try:
            self.nc: NATS = self.run(self._connect(access))
        except BaseException:
            self.loop.close()
            raise

    async def _connect(self, access: NatsAccess) -> NATS:
        where = ", ".join(access.servers)
        try:
            options = access.connect_options()
        except ValueError as error:
            raise OperationalError(str(error)) from None
        try:
            # nats-py retries a first connection as long as reconnects are allowed:
            # bound it, so a missing server is an error, not a wait forever.
            return await asyncio.wait_for(
                nats.connect(
                    **options,
                    connect_timeout=self.timeout,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    pending_size=0,  # while reconnecting, writes fail at once (no queueing)
                    error_cb=_log_nats_error,
                    name="colonies-es store",
                ),
                self.timeout,
            )
        except TimeoutError as error:
            raise OperationalError(f"cannot connect to NATS at {where}: no answer") from error
        except (nats.errors.Error, OSError) as error:
            raise OperationalError(f"cannot connect to NATS at {where}: {error!r}") from error

    def log_for(self, spec: StreamSpec, create: bool) -> JetStreamLog:
        """The one log object per stream (so recorders share its cache of subject heads)."""
        with self._lock:
            log = self._logs.get(spec.name)
            if log is None:
                log = JetStreamLog(self.nc, spec.name, self.version_of, self.timeout)
                self.run(log.ensure_stream(spec, create))
                self._logs[spec.name] = log
            return log

    def trusted(self, message: StoredMessage) -> Envelope | None:
        """The message's envelope, or None when it cannot be trusted: undecodable, or
        (with a seal key) not sealed by a writer holding the key."""
        try:
            envelope = decode_envelope(message.payload)
        except DataError:
            log.warning(
                "ignoring message %d on %s: not an event", message.sequence, message.subject
            )
            return None
        if self.sealer is not None and not self.sealer.is_sealed(message.subject, message.payload):
            log.warning("ignoring message %d on %s: not sealed", message.sequence, message.subject)
            return None
        return envelope

    def version_of(self, message: StoredMessage) -> int | None:
        envelope = self.trusted(message)
        return None if envelope is None else envelope.originator_version

    def run(self, coro: Any) -> Any:
        """Runs a coroutine of the log on the loop; a bounded wait, never a hang."""
        try:
            return self.loop.run(coro, self.timeout * 3)
        except TimeoutError as error:
            raise OperationalError(f"NATS operation timed out: {error}") from error
        except LoopClosedError as error:
            raise OperationalError(f"the store was closed: {error}") from error

    def close(self) -> None:
        """Closes the connection (best effort when NATS is gone) and stops the loop."""
        try:
            if not self.nc.is_closed:
                self.loop.run(self.nc.close(), self.timeout)
        except (TimeoutError, nats.errors.Error, OSError) as error:
            log.debug("closing the NATS connection: %r", error)
        finally:
            self.loop.close()


class JetStreamAggregateRecorder(AggregateRecorder):
    """Stores each aggregate's events on its own subject of one JetStream stream."""

    def __init__(
        self,
        connection: _Connection,
        spec: StreamSpec,
        subject_prefix: str,
        create: bool = True,
    ) -> None:
        self.connection = connection
        self.spec = spec
        self.subject_prefix = subject_prefix
        self.log = connection.log_for(spec, create)

    def subject_for(self, originator_id: UUID | str) -> str:
        """The subject of an aggregate's events; ``DataError`` if the id cannot be one."""
        token = originator_id.hex if isinstance(originator_id, UUID) else originator_id
        if (
            not token
            or not _TOKEN.match(token)
            or ".." in token
            or token[0] == "."
            or token[-1] == "."
        ):
            msg = f"aggregate id {originator_id!r} cannot be used as a NATS subject token"
            raise DataError(msg)
        return f"{self.subject_prefix}.{token}"

    def entries_for(self, stored_events: Sequence[StoredEvent]) -> list[Entry]:
        """The log entries (subject, version, sealed payload) of these stored events, for a
        writer appending through :class:`JetStreamLog` directly."""
        return self._entries(stored_events)

    def _entries(self, stored_events: Sequence[StoredEvent]) -> list[Entry]:
        entries = []
        for event in stored_events:
            subject = self.subject_for(event.originator_id)
            payload = encode_envelope(event, subject, self.connection.sealer)
            entries.append(Entry(subject, event.originator_version, payload))
        return entries

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        self._insert(self._entries(stored_events))
        return None

    def _insert(self, entries: list[Entry]) -> list[int]:
        sequences: list[int] = self.connection.run(self.log.append(entries))
        return sequences

    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        subject = self.subject_for(originator_id)
        if desc and limit == 1 and gt is None and lte is None:
            last = self.connection.run(self.log.last_message(subject))
            trusted = None if last is None else self.connection.trusted(last)
            if last is None or trusted is not None:
                return [] if trusted is None else [to_stored_event(trusted)]
        messages: list[StoredMessage] = self.connection.run(self.log.read_subject(subject))
        events = []
        for message in messages:
            envelope = self.connection.trusted(message)
            if envelope is None:
                continue
            version = envelope.originator_version
            if (gt is None or version > gt) and (lte is None or version <= lte):
                events.append(to_stored_event(envelope))
        if desc:
            events.reverse()
        return events if limit is None else events[:limit]


class JetStreamApplicationRecorder(JetStreamAggregateRecorder, ApplicationRecorder):
    """Aggregate recorder whose stream sequence numbers are the notification ids."""

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        return self._insert(self._entries(stored_events))

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        first = 1 if start is None else (start if inclusive_of_start else start + 1)
        wanted = set(topics)
        notifications: list[Notification] = []
        while len(notifications) < limit:
            chunk = limit - len(notifications) if not wanted else max(limit, 500)
            messages: list[StoredMessage] = self.connection.run(
                self.log.read_range(self.events_filter, first, chunk, stop)
            )
            for message in messages:
                envelope = self.connection.trusted(message)
                if envelope is not None and (not wanted or envelope.topic in wanted):
                    notifications.append(to_notification(envelope, message.sequence))
                    if len(notifications) == limit:
                        break
            if len(messages) < chunk:
                break
            first = messages[-1].sequence + 1
        return notifications

    @property
    def events_filter(self) -> str:
        return f"{self.subject_prefix}.>"

    def max_notification_id(self) -> int | None:
        last = self.connection.run(self.log.last_message(self.events_filter))
        return None if last is None else last.sequence

    def subscribe(
        self, gt: int | None = None, topics: Sequence[str] = ()
    ) -> Subscription[ApplicationRecorder]:
        return JetStreamSubscription(self, gt=gt, topics=topics)


class _ReadAhead:
    """How far the consumer (on the store's loop) may read ahead of the reader (another
    thread): at most ``limit`` batches queued and not taken. A consumer at the limit
    waits, and the reader wakes it when it takes a batch, and only then.

    Waking the loop from another thread writes to the loop's self-pipe, and the writer
    then waits for the interpreter lock, which the woken loop thread takes. The reader
    used to do that for every batch it took (an ``asyncio.Semaphore`` released on the
    loop), whether the consumer waited or not: a live view, whose consumer never waits,
    paid it for nothing. (Waking the consumer only once the queue had drained to half,
    so that it refills in one burst, was measured and not kept: the reader no longer
    waited in the wake-up, 1.7-2.4 s of a 100,000-event rebuild, but the rebuild was no
    faster, the loop thread's work taking the interpreter lock at other moments.)
    """

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        self._limit = limit
        self._loop = loop
        self._lock = threading.Lock()
        self._queued = 0
        self._waiter: asyncio.Future[None] | None = None
        """The consumer's wait for room (on the loop), if it waits."""

    async def reserve(self) -> None:
        """Counts one more batch queued, after waiting for room if the limit is reached
        (on the loop)."""
        while True:
            with self._lock:
                if self._queued < self._limit:
                    self._queued += 1
                    return
                waiter = self._waiter = self._loop.create_future()
            await waiter

    def unreserve(self) -> None:
        """Gives back a reservation whose batch was not queued (on the loop)."""
        with self._lock:
            self._queued -= 1

    def taken(self) -> None:
        """The reader took a batch (in its thread): wakes the consumer if it waits."""
        with self._lock:
            self._queued -= 1
            waiter, self._waiter = self._waiter, None
            if waiter is None:
                return
        with contextlib.suppress(RuntimeError):  # the loop is closed: the store is
            self._loop.call_soon_threadsafe(_wake, waiter)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class JetStreamSubscription(Subscription[JetStreamApplicationRecorder]):
    """Live notifications after ``gt``: a consumer on the loop feeds a queue we iterate.

    The consumer reads at most :attr:`READ_AHEAD` batches (of up to 256 notifications)
    ahead of the reader, then waits for it to take one (:class:`_ReadAhead`): a reader
    far behind the log (a projector rebuilding its view) holds a few megabytes
    of the log in memory, not the whole backlog it has yet to read.
    """

    _STOP = object()
    READ_AHEAD = 32
    """Batches read from the log and not yet taken by the reader, at most."""

    def __init__(
        self,
        recorder: JetStreamApplicationRecorder,
        gt: int | None = None,
        topics: Sequence[str] = (),
    ) -> None:
        super().__init__(recorder=recorder, gt=gt, topics=topics)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._wanted = set(topics)
        self._buffer: list[Notification] = []
        self._index = 0
        self._stop_lock = threading.Lock()
        self._loop = recorder.connection.loop.loop
        self._room = _ReadAhead(self.READ_AHEAD, self._loop)
        self._task = asyncio.run_coroutine_threadsafe(self._follow(recorder, gt or 0), self._loop)

    async def _follow(self, recorder: JetStreamApplicationRecorder, after: int) -> None:
        try:
            async for batch in recorder.log.follow(recorder.events_filter, after):
                await self._room.reserve()  # given back when the reader takes a batch
                notifications = []
                for message in batch:
                    envelope = recorder.connection.trusted(message)
                    if envelope is None:
                        continue
                    if not self._wanted or envelope.topic in self._wanted:
                        notifications.append(to_notification(envelope, message.sequence))
                if notifications:
                    self._queue.put(notifications)
                else:
                    self._room.unreserve()
        except BaseException as error:  # delivered to the iterating thread
            self._queue.put(error)
            raise

    def stop(self) -> None:
        with self._stop_lock:
            if self._has_been_stopped:
                return
            super().stop()
            self._task.cancel()
            self._queue.put(self._STOP)

    def next_batch(self, timeout: float | None = None) -> list[Notification] | None:
        """The notifications that arrived together (what the iterator would give next,
        up to the end of its current batch), waiting up to ``timeout`` seconds (None:
        as long as it takes) for some: ``[]`` when none came in time, None once the
        subscription has ended (stopped). Raises what ``next()`` raises on a failure.

        For a reader that works in batches and must also act on time (a projector
        committing every so often): one hand-off per batch instead of one per event.
        """
        if self._index < len(self._buffer):
            batch = self._buffer[self._index :]
            self._buffer, self._index = [], 0
            return batch
        if self._has_been_stopped:
            return None
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return []
        if item is self._STOP:
            return None
        if isinstance(item, BaseException):
            self.stop()
            if isinstance(item, Exception) and not isinstance(item, StopAsyncIteration):
                raise item
            return None
        self._taken()
        notifications: list[Notification] = item
        return None if self._has_been_stopped else notifications

    def _taken(self) -> None:
        """Makes room for the consumer to read one more batch (from the reader's thread)."""
        self._room.taken()

    def __next__(self) -> Notification:
        while self._index >= len(self._buffer):
            if self._has_been_stopped:
                raise StopIteration
            item = self._queue.get()
            if item is self._STOP:
                raise StopIteration
            if isinstance(item, BaseException):
                self.stop()
                if isinstance(item, Exception) and not isinstance(item, StopAsyncIteration):
                    raise item
                raise StopIteration
            self._taken()
            self._buffer, self._index = item, 0
        if self._has_been_stopped:
            raise StopIteration
        notification = self._buffer[self._index]
        self._index += 1
        return notification


class JetStreamTrackingRecorder(TrackingRecorder):
    """Tracking records on subjects ``<prefix>.trk.<application>``; ids only ever rise.

    A tracking record is stored like an event of an aggregate named after the upstream
    application whose version is the notification id, so the log's optimistic concurrency
    refuses an id at or below the last one recorded.
    """

    def __init__(
        self,
        connection: _Connection,
        spec: StreamSpec,
        tracking_prefix: str,
        create: bool = True,
    ) -> None:
        self.connection = connection
        self.tracking_prefix = tracking_prefix
        self.log = connection.log_for(spec, create)

    def tracking_entry(self, tracking: Tracking) -> Entry:
        name = tracking.application_name
        if not name or not _TOKEN.match(name) or "." in name:
            msg = f"application name {name!r} cannot be a NATS subject token"
            raise DataError(msg)
        record = StoredEvent(name, tracking.notification_id, "tracking", b"")
        subject = f"{self.tracking_prefix}.{name}"
        payload = encode_envelope(record, subject, self.connection.sealer)
        return Entry(subject=subject, version=tracking.notification_id, payload=payload)

    def insert_tracking(self, tracking: Tracking) -> None:
        self.connection.run(self.log.append([self.tracking_entry(tracking)]))

    def max_tracking_id(self, application_name: str) -> int | None:
        subject = self.tracking_entry(Tracking(application_name, 0)).subject
        last = self.connection.run(self.log.last_message(subject))
        if last is None:
            return None
        version = self.connection.version_of(last)
        if version is None:  # the last record is not ours: find the last trusted one
            messages = self.connection.run(self.log.read_subject(subject))
            versions = [v for m in messages if (v := self.connection.version_of(m)) is not None]
            return versions[-1] if versions else None
        return version


class JetStreamProcessRecorder(
    JetStreamTrackingRecorder, JetStreamApplicationRecorder, ProcessRecorder
):
    """Events and the tracking record of what caused them, in one atomic batch."""

    def __init__(
        self,
        connection: _Connection,
        spec: StreamSpec,
        subject_prefix: str,
        tracking_prefix: str,
        create: bool = True,
    ) -> None:
        JetStreamApplicationRecorder.__init__(self, connection, spec, subject_prefix, create)
        self.tracking_prefix = tracking_prefix

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        entries = self._entries(stored_events)
        tracking: Tracking | None = kwargs.get("tracking")
        if tracking is None:
            return self._insert(entries)
        sequences = self._insert([*entries, self.tracking_entry(tracking)])
        return sequences[:-1]


class JetStreamFactory(InfrastructureFactory[JetStreamTrackingRecorder]):
    """Builds JetStream recorders sharing one NATS connection (see the module docstring)."""

    NATS_URL = "NATS_URL"
    NATS_NKEY_FILE = "NATS_NKEY_FILE"
    NATS_TLS_CA_FILE = "NATS_TLS_CA_FILE"
    JETSTREAM_STREAM = "JETSTREAM_STREAM"
    JETSTREAM_SUBJECT_PREFIX = "JETSTREAM_SUBJECT_PREFIX"
    JETSTREAM_REPLICAS = "JETSTREAM_REPLICAS"
    JETSTREAM_TIMEOUT = "JETSTREAM_TIMEOUT"
    CREATE_TABLE = "CREATE_TABLE"
    EVENT_SEAL_KEY = "EVENT_SEAL_KEY"

    aggregate_recorder_class = JetStreamAggregateRecorder
    application_recorder_class = JetStreamApplicationRecorder
    tracking_recorder_class = JetStreamTrackingRecorder
    process_recorder_class = JetStreamProcessRecorder

    def __init__(self, env: Environment | EnvType | None):
        super().__init__(env)
        access = NatsAccess.from_store_env(
            {
                name: self.env.get(name)
                for name in (self.NATS_URL, self.NATS_NKEY_FILE, self.NATS_TLS_CA_FILE)
            }
        )
        timeout = float(self.env.get(self.JETSTREAM_TIMEOUT) or 5)
        self.stream = self.env.get(self.JETSTREAM_STREAM) or "COLONIES"
        self.prefix = self.env.get(self.JETSTREAM_SUBJECT_PREFIX) or "colonies"
        self.replicas = int(self.env.get(self.JETSTREAM_REPLICAS) or 1)
        seal_key = self.env.get(self.EVENT_SEAL_KEY)
        sealer = Sealer(bytes.fromhex(seal_key)) if seal_key else None
        self._connection = _Connection(access, timeout, sealer)

    def transcoder(self) -> Transcoder:
        """msgspec (msgpack) unless ``TRANSCODER_TOPIC`` names another transcoder."""
        if self.env.get(self.TRANSCODER_TOPIC):
            return super().transcoder()
        return MsgspecTranscoder()

    def mapper(
        self,
        transcoder: Transcoder | None = None,
        mapper_class: type[Mapper[Any]] | None = None,
    ) -> Mapper[Any]:
        """An :class:`~colonies_es.store.codec.EventMapper` unless ``MAPPER_TOPIC`` or
        ``mapper_class`` names another mapper."""
        if mapper_class is None and not self.env.get(self.MAPPER_TOPIC):
            mapper_class = EventMapper
        return super().mapper(transcoder, mapper_class)

    def _create(self) -> bool:
        return strtobool(self.env.get(self.CREATE_TABLE) or "yes")

    def events_spec(self) -> StreamSpec:
        return StreamSpec(
            self.stream, (f"{self.prefix}.ev.>", f"{self.prefix}.trk.>"), self.replicas
        )

    def aggregate_recorder(self, purpose: str = "events") -> AggregateRecorder:
        if purpose == "events":
            return self.aggregate_recorder_class(
                self._connection, self.events_spec(), f"{self.prefix}.ev", self._create()
            )
        spec = StreamSpec(
            f"{self.stream}_{purpose.upper()}", (f"{self.prefix}.{purpose}.>",), self.replicas
        )
        return self.aggregate_recorder_class(
            self._connection, spec, f"{self.prefix}.{purpose}", self._create()
        )

    def application_recorder(self) -> ApplicationRecorder:
        topic = self.env.get(self.APPLICATION_RECORDER_TOPIC)
        cls = resolve_topic(topic) if topic else self.application_recorder_class
        recorder: ApplicationRecorder = cls(
            self._connection, self.events_spec(), f"{self.prefix}.ev", self._create()
        )
        return recorder

    def tracking_recorder(
        self, tracking_recorder_class: type[JetStreamTrackingRecorder] | None = None
    ) -> JetStreamTrackingRecorder:
        if tracking_recorder_class is None:
            topic = self.env.get(self.TRACKING_RECORDER_TOPIC)
            tracking_recorder_class = (
                resolve_topic(topic) if topic else self.tracking_recorder_class
            )
        assert tracking_recorder_class is not None
        return tracking_recorder_class(
            self._connection, self.events_spec(), f"{self.prefix}.trk", self._create()
        )

    def process_recorder(self) -> ProcessRecorder:
        topic = self.env.get(self.PROCESS_RECORDER_TOPIC)
        cls = resolve_topic(topic) if topic else self.process_recorder_class
        recorder: ProcessRecorder = cls(
            self._connection,
            self.events_spec(),
            f"{self.prefix}.ev",
            f"{self.prefix}.trk",
            self._create(),
        )
        return recorder

    def close(self) -> None:
        self._connection.close()
