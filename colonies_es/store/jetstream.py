"""The event log on one JetStream stream: append with optimistic concurrency, read back.

This is the asyncio half of the store; :mod:`colonies_es.store.recorders` wraps it for
eventsourcing's synchronous recorder interfaces.

Model:

- One subject per aggregate (``<prefix>.<originator id>``); the stream sequence of a message
  is its notification id.
- ``append`` writes one message with a plain publish, several with a JetStream *atomic
  batch* (headers ``Nats-Batch-Id`` / ``Nats-Batch-Sequence`` / ``Nats-Batch-Commit``, server
  >= 2.12, stream with ``allow_atomic``): all are stored or none.
- Optimistic concurrency: the first message for each subject carries
  ``Nats-Expected-Last-Subject-Sequence``, the sequence of the last message we know on that
  subject (0: none). The server refuses the whole write if another writer got there first.
  We then read the real last message of each subject: if its version is at or beyond the
  first version we write, the write conflicts (``IntegrityError``); otherwise it is retried
  with the new expectation. Known heads are cached, so the usual write is one round trip.
- Chained writes (``append(..., message_id=..., after=...)``, on a stream of one replica
  only: :attr:`JetStreamLog.chainable`): a one-message write may be
  sent before the write it follows on the same subject is acknowledged. It carries
  ``Nats-Expected-Last-Msg-Id`` (the ``Nats-Msg-Id`` of the write before it) instead of a
  subject sequence: the server stores it only if that message is the stream's last, which
  implies the subject expectation it could not state yet. When the write before it was
  refused, or any other message came in between, it is refused (:class:`ChainBroken`)
  and nothing is written. Two plain appends cost two round trips in series; a chained
  pair costs about 1.4-1.6 of one (an atomic batch on a file stream costs 10-20: it is
  staged in a file store of its own, made, fsynced and deleted per batch; DESIGN.md).
- Reads in bulk go through a short-lived ephemeral pull consumer (no per-message headers to
  parse, ~200k msgs/s); reads of one aggregate through batched direct get (one round trip).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from eventsourcing.persistence import DataError, IntegrityError, OperationalError, ProgrammingError
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from colonies_es.nats_hot_path import deliver_inline
from colonies_es.reply_inbox import ReplyInbox
from colonies_es.store.frames import deliver_frames, stop_frames

log = logging.getLogger("colonies.store")

MAX_ATOMIC_BATCH = 1000
"""The server's limit of messages in one atomic batch (ADR-50)."""

HEAD_CACHE_SIZE = 100_000
"""Subjects whose last (version, sequence) we remember; a miss costs one extra round trip."""

LIVE_PULL_EXPIRES = 3.0
"""Seconds a pull request of :meth:`JetStreamLog.follow` waits for new messages."""

LIVE_PULL_HEARTBEAT = 1.0
"""Seconds between the idle heartbeats the server sends while such a pull waits (the
server refuses a heartbeat over half the request's expiry)."""

LIVE_PULL_RECHECK = 0.5
"""Seconds between looks, while a live pull hears nothing, at whether the connection was
made again meanwhile (the request died with the old one: a server restart)."""

LIVE_PULL_SILENCE = 2.5
"""Seconds without a message or heartbeat after which a live pull is taken for lost (a
server restart drops it and its memory consumer, and nothing says so) and its consumer
made anew from the last sequence followed: two heartbeats missed, with slack for a busy
machine. A silence that was only a slow machine costs one consumer made again."""

_EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
_EXPECTED_LAST_MSG_ID = "Nats-Expected-Last-Msg-Id"
_MSG_ID = "Nats-Msg-Id"
_ERR_WRONG_LAST_MSG_ID = 10070
_ERR_WRONG_LAST_SEQUENCE = 10071
_ERR_BATCH_WRONG_LAST_SEQUENCE = 10164


class ChainBroken(Exception):
    """A chained write was refused because the message it was to follow is not the
    stream's last (refused itself, or another message came in between): nothing of it was
    written. Decide again on what the log has."""


class _ConsumerLost(Exception):
    """A pull went unanswered or the server dropped the consumer: recreate it."""


class JetStreamUnavailable(OperationalError):
    """JetStream answered "temporarily unavailable" (503): a cluster electing a leader,
    a server starting up. Worth asking again; any other refusal is not."""


class StreamConfigurationError(ProgrammingError):
    """The stream exists with a configuration too weak (or different) for an event log."""


@dataclass(frozen=True)
class Entry:
    """One message to append: the aggregate's subject, the event's version, the payload."""

    subject: str
    version: int
    payload: bytes


class StoredMessage(msgspec.Struct, frozen=True):
    """One message read back from the stream (a Struct: cheaper than a dataclass)."""

    sequence: int
    subject: str
    payload: bytes
    timestamp_ns: int


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _PubAck(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    count: int = 0
    error: _ApiError | None = None


class _ConsumerCreated(msgspec.Struct):
    name: str = ""
    num_pending: int = 0
    error: _ApiError | None = None


_pub_ack = msgspec.json.Decoder(_PubAck)
_consumer_created = msgspec.json.Decoder(_ConsumerCreated)
_json = msgspec.json.Encoder()


_STREAM_NAME = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_SUBJECT_TOKEN = re.compile(r"^[^\s.*>]+$")

MAX_SUBJECT_LENGTH = 1024
"""Longest subject we publish to: the server refuses control lines over 4 KiB (and then
closes the connection), so ids are bounded well below that."""


@dataclass(frozen=True)
class StreamSpec:
    """What an event-log stream must be. ``subjects`` are the stream's subject filters:
    literal tokens ending in ``>``."""

    name: str
    subjects: tuple[str, ...]
    replicas: int = 1

    def __post_init__(self) -> None:
        if not _STREAM_NAME.match(self.name):
            msg = (
                f"stream name {self.name!r} is not usable: use letters, digits, '_' or '-' "
                "(no dots, spaces or wildcards)"
            )
            raise StreamConfigurationError(msg)
        for subject in self.subjects:
            tokens = subject.split(".")
            if tokens[-1] != ">" or not all(_SUBJECT_TOKEN.match(t) for t in tokens[:-1]):
                msg = (
                    f"subject filter {subject!r} of stream {self.name!r} is not usable: "
                    "the prefix must be literal tokens (no spaces, '*' or '>')"
                )
                raise StreamConfigurationError(msg)

    def config(self) -> dict[str, object]:
        """The JetStream stream configuration (JSON fields of the stream create API)."""
        return {
            "name": self.name,
            "subjects": list(self.subjects),
            "storage": "file",
            "retention": "limits",
            "num_replicas": self.replicas,
            "max_msgs": -1,
            "max_bytes": -1,
            "max_age": 0,
            "max_msgs_per_subject": -1,
            "discard": "old",
            "deny_delete": True,
            "deny_purge": True,
            "allow_rollup_hdrs": False,
            "allow_direct": True,
            "allow_atomic": True,
        }

    def differences(self, actual: dict[str, Any]) -> list[str]:
        """Each way an existing stream's configuration differs from what the log needs."""
        wanted = self.config()
        problems = []
        for key in ("mirror", "sources", "subject_transform", "republish"):
            if actual.get(key):
                problems.append(f"{key} is set ({actual[key]!r}), needs none")
        for key, value in _ALSO_REQUIRED.items():
            have = actual.get(key, _DEFAULTS.get(key, value))
            if have != value:
                problems.append(f"{key} is {have!r}, needs {value!r}")
        for key, value in wanted.items():
            if key == "subjects":
                missing = set(self.subjects) - set(actual.get("subjects") or [])
                if missing:
                    problems.append(f"subjects {sorted(missing)} missing")
                continue
            have = actual.get(key, _DEFAULTS.get(key))
            if have != value:
                problems.append(f"{key} is {have!r}, needs {value!r}")
        return problems


# Settings we do not send on creation but that an existing stream must not have changed:
# no_ack (appends would never be acknowledged), a message size or consumer limit.
_ALSO_REQUIRED: dict[str, object] = {
    "no_ack": False,
    "sealed": False,
    "max_msg_size": -1,
    "max_consumers": -1,
}

# Values the server leaves out of a stream's configuration when they are at their default.
_DEFAULTS: dict[str, object] = {
    "no_ack": False,
    "sealed": False,
    "deny_delete": False,
    "deny_purge": False,
    "allow_rollup_hdrs": False,
    "allow_direct": False,
    "allow_atomic": False,
    "max_age": 0,
}


class JetStreamLog:
    """Appends to and reads from one stream. All methods are coroutines of one event loop."""

    def __init__(
        self,
        nc: NATS,
        stream: str,
        version_of: Callable[[StoredMessage], int | None],
        timeout: float = 5.0,
    ) -> None:
        self.nc = nc
        self.stream = stream
        self.timeout = timeout
        self._version_of = version_of
        self._heads: dict[str, tuple[int, int]] = {}  # subject -> (version, sequence)
        self._acks: ReplyInbox | None = None  # made by the first append
        self.chainable = False
        """True once :meth:`ensure_stream` found or made a stream of one replica: only
        there may writes be chained (:meth:`append` with ``after``). On a replicated
        stream nats-server 2.15 checks ``Nats-Expected-Last-Msg-Id`` only when it applies
        the Raft entry, and a mismatch there is a "critical write error" that stops the
        stream (seen in tests/test_chaos.py's three-node run; DESIGN.md)."""

    def rebound(self, nc: NATS) -> JetStreamLog:
        """This log on another connection (and so that connection's event loop), sharing
        what it knows of the subjects' heads: for a writer living on its own loop."""
        other = JetStreamLog(nc, self.stream, self._version_of, self.timeout)
        other._heads = self._heads
        other.chainable = self.chainable
        return other

    def remember_head(self, subject: str, version: int, sequence: int) -> None:
        """Records that ``subject``'s last message is ``version`` at ``sequence`` (e.g.
        learnt while replaying the log), saving a conflict round trip on the next write."""
        self._heads[subject] = (version, sequence)

    def forget_head(self, subject: str) -> None:
        """Drops what is known of ``subject``'s head (an aggregate leaving memory); the
        next write to it costs one extra round trip."""
        self._heads.pop(subject, None)

    # ----------------------------------------------------------------- stream

    async def ensure_stream(self, spec: StreamSpec, create: bool = True) -> None:
        """Makes sure the stream exists as ``spec`` says; never reconfigures an existing one.

        Raises ``StreamConfigurationError`` naming every difference when the stream exists
        with another configuration (deletes allowed, say), or when it is missing and
        ``create`` is false.
        """
        info = await self._api(f"STREAM.INFO.{spec.name}", b"")
        error = info.get("error")
        if error is None:
            problems = spec.differences(info["config"])
            if problems:
                msg = (
                    f"stream {spec.name!r} exists with a configuration unfit for the event log: "
                    + "; ".join(problems)
                    + " (it is never reconfigured automatically)"
                )
                raise StreamConfigurationError(msg)
            self.chainable = info["config"].get("num_replicas", 1) == 1
            return
        if error.get("err_code") != 10059:  # stream not found
            raise OperationalError(f"stream info {spec.name!r}: {error.get('description')}")
        if not create:
            msg = f"stream {spec.name!r} does not exist (and creating it was turned off)"
            raise StreamConfigurationError(msg)
        created = await self._api(f"STREAM.CREATE.{spec.name}", _json.encode(spec.config()))
        error = created.get("error")
        if error is not None and error.get("err_code") != 10058:  # already exists (a race)
            raise StreamConfigurationError(
                f"cannot create stream {spec.name!r}: {error.get('description')}"
            )
        self.chainable = spec.replicas == 1

    # ----------------------------------------------------------------- append

    async def append(
        self,
        entries: Sequence[Entry],
        *,
        message_id: str | None = None,
        after: str | None = None,
    ) -> list[int]:
        """Appends ``entries`` atomically and returns their stream sequences.

        Raises ``IntegrityError`` when an entry's version is not after the last version
        already on its subject (nothing is written), ``DataError`` for a write the server
        can never take (too big), ``OperationalError`` when NATS cannot be reached or does
        not answer in time. After an ``OperationalError`` the write may or may not have
        happened, never partly; retrying it then gives ``IntegrityError`` if it did.

        ``message_id`` (one entry only) names the message (``Nats-Msg-Id``) so that a
        chained write may follow it before it is acknowledged. ``after`` (one entry only)
        makes this a chained write: stored only if the message named ``after`` is the
        stream's last, else :class:`ChainBroken` and nothing is written (never retried
        here). The message is in the connection's outgoing buffer, in call order, before
        this coroutine first suspends.
        """
        if not entries:
            return []
        if (message_id is not None or after is not None) and len(entries) != 1:
            raise ProgrammingError("only a one-message write is named or chained")
        if after is not None:
            if not self.chainable:
                raise ProgrammingError("writes are chained only on a stream of one replica")
            return [await self._append_chained(entries[0], message_id, after)]
        if len(entries) > MAX_ATOMIC_BATCH:
            msg = (
                f"{len(entries)} events in one write: JetStream records at most "
                f"{MAX_ATOMIC_BATCH} atomically"
            )
            raise DataError(msg)
        first_versions = _first_versions(entries)
        for entry in entries:
            if len(entry.subject) > MAX_SUBJECT_LENGTH:
                msg = f"subject of {len(entry.subject)} characters: at most {MAX_SUBJECT_LENGTH}"
                raise DataError(msg)
        for _attempt in range(10):
            for subject, version in first_versions.items():
                self._check_head(subject, version)
            ack = await self._publish(self._messages(entries, message_id))
            if ack.error is None:
                last = ack.seq
                sequences = list(range(last - len(entries) + 1, last + 1))
                self._remember_heads(entries, sequences)
                return sequences
            if ack.error.err_code not in (_ERR_WRONG_LAST_SEQUENCE, _ERR_BATCH_WRONG_LAST_SEQUENCE):
                raise _api_error_to_exception(ack.error)
            # Another writer appended to one of the subjects: learn the real heads, re-check.
            for subject in first_versions:
                await self.refresh_head(subject)
        raise OperationalError("append kept conflicting with concurrent writers; gave up")

    def _check_head(self, subject: str, version: int) -> None:
        """IntegrityError when the known head of ``subject`` is at or past ``version``."""
        head = self._heads.get(subject)
        if head is not None and head[0] >= version:
            msg = f"{subject}: version {version} is not after recorded version {head[0]}"
            raise IntegrityError(msg)

    async def _append_chained(self, entry: Entry, message_id: str | None, after: str) -> int:
        """One chained write (see :meth:`append`)."""
        self._check_head(entry.subject, entry.version)
        headers = {_EXPECTED_LAST_MSG_ID: after}
        if message_id is not None:
            headers[_MSG_ID] = message_id
        self._check_size(entry, headers)
        ack = await self._publish([(entry, headers)])
        if ack.error is not None:
            if ack.error.err_code == _ERR_WRONG_LAST_MSG_ID:
                raise ChainBroken(f"{entry.subject}: the write before it is not the last")
            raise _api_error_to_exception(ack.error)
        self._remember_heads([entry], [ack.seq])
        return ack.seq

    def _messages(
        self, entries: Sequence[Entry], message_id: str | None = None
    ) -> list[tuple[Entry, dict[str, str]]]:
        """Each entry with its headers: the expectation on the first entry per subject,
        the batch headers when there are several entries, the message id when named.

        Raises ``DataError`` when a message, headers included, exceeds the server's
        ``max_payload`` (the server would close the connection on such a message).
        """
        messages = []
        expecting: set[str] = set()
        batch_id = uuid.uuid4().hex if len(entries) > 1 else ""
        for number, entry in enumerate(entries, start=1):
            headers: dict[str, str] = {}
            if entry.subject not in expecting:
                expecting.add(entry.subject)
                head = self._heads.get(entry.subject)
                headers[_EXPECTED_LAST_SUBJECT_SEQ] = str(head[1] if head else 0)
            if len(entries) > 1:
                headers["Nats-Batch-Id"] = batch_id
                headers["Nats-Batch-Sequence"] = str(number)
                if number == len(entries):
                    headers["Nats-Batch-Commit"] = "1"
            elif message_id is not None:
                headers[_MSG_ID] = message_id
            self._check_size(entry, headers)
            messages.append((entry, headers))
        return messages

    def _check_size(self, entry: Entry, headers: dict[str, str]) -> None:
        size = len(entry.payload) + _header_size(headers)
        if size > self.nc.max_payload:
            msg = (
                f"event for {entry.subject} is {size} bytes with its headers, over the "
                f"server's max_payload of {self.nc.max_payload}"
            )
            raise DataError(msg)

    async def _publish(self, messages: Sequence[tuple[Entry, dict[str, str]]]) -> _PubAck:
        try:
            for entry, headers in messages[:-1]:
                await self.nc.publish(entry.subject, entry.payload, headers=headers)
            entry, headers = messages[-1]
            if self._acks is None or self._acks.nc is not self.nc:
                self._acks = ReplyInbox(self.nc)
            reply = await self._acks.request(entry.subject, entry.payload, headers, self.timeout)
            return _pub_ack.decode(reply.data)
        except nats.errors.MaxPayloadError as error:
            raise DataError(f"event over the server's max_payload: {error}") from error
        except nats.errors.NoRespondersError as error:
            msg = f"append: no stream takes {entry.subject} (JetStream off, or no {self.stream})"
            raise OperationalError(msg) from error
        except (nats.errors.Error, OSError) as error:
            raise _connection_error("append", error) from error
        except msgspec.DecodeError as error:
            raise OperationalError(f"unexpected reply to a publish: {error}") from error

    def _remember_heads(self, entries: Sequence[Entry], sequences: Sequence[int]) -> None:
        if len(self._heads) > HEAD_CACHE_SIZE:
            self._heads.clear()
        heads = self._heads
        for entry, sequence in zip(entries, sequences, strict=True):
            known = heads.get(entry.subject)
            if known is None or known[1] < sequence:  # chained writes' acks may come late
                heads[entry.subject] = (entry.version, sequence)

    async def refresh_head(self, subject: str) -> tuple[int, int] | None:
        """Reads the last message on ``subject`` and remembers (version, sequence): the
        version of the last message we trust, the sequence of the last message there is
        (the expectation the server checks)."""
        last = await self.last_message(subject)
        if last is None:
            self._heads.pop(subject, None)
            return None
        version = self._version_of(last)
        if version is None:  # not ours: find the last trusted version on the subject
            trusted = [v for m in await self.read_subject(subject) if (v := self._version_of(m))]
            version = trusted[-1] if trusted else 0
        head = (version, last.sequence)
        self._heads[subject] = head
        return head

    # ----------------------------------------------------------------- read

    async def last_message(self, subject: str) -> StoredMessage | None:
        """The last message on ``subject`` (wildcards allowed), or None."""
        reply = await self._request(
            f"$JS.API.DIRECT.GET.{self.stream}", _json.encode({"last_by_subj": subject})
        )
        if reply.headers and reply.headers.get("Status"):
            if reply.headers["Status"] == "404":
                return None
            raise OperationalError(f"direct get {subject}: {reply.headers}")
        return _direct_message(reply)

    async def subjects(self, filter_subject: str) -> list[str]:
        """The stream's subjects matching ``filter_subject`` that hold messages (stream
        info with ``subjects_filter``, page by page: the server sends a bounded number
        of subjects per reply)."""
        found: list[str] = []
        while True:
            request = {"subjects_filter": filter_subject, "offset": len(found)}
            info = await self._api(f"STREAM.INFO.{self.stream}", _json.encode(request))
            if "error" in info:
                raise OperationalError(f"stream info {self.stream}: {info['error']}")
            page = (info.get("state") or {}).get("subjects") or {}
            found.extend(page)
            if not page or len(found) >= int(info.get("total") or 0):
                return found

    async def read_subject(self, subject: str) -> list[StoredMessage]:
        """Every message on one subject, in order (batched direct get)."""
        messages: list[StoredMessage] = []
        start = 1
        batch = 1000
        while True:
            got = await self._direct_batch(subject, start, batch)
            messages.extend(got)
            if len(got) < batch:
                break
            start = got[-1].sequence + 1
        if messages and "*" not in subject and ">" not in subject:
            versions = [v for m in messages if (v := self._version_of(m)) is not None]
            self._heads[subject] = (versions[-1] if versions else 0, messages[-1].sequence)
        return messages

    async def read_at(self, subject: str, sequence: int) -> StoredMessage | None:
        """The message at stream sequence ``sequence`` if it is on ``subject`` (one
        direct get), else None."""
        found = await self._direct_batch(subject, sequence, 1)
        return found[0] if found and found[0].sequence == sequence else None

    async def _direct_batch(self, subject: str, start: int, batch: int) -> list[StoredMessage]:
        inbox = self.nc.new_inbox()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        messages: list[StoredMessage] = []

        async def on_message(msg: Msg) -> None:
            status = msg.headers.get("Status") if msg.headers else None
            if status is None:
                messages.append(_direct_message(msg))
                if len(messages) == batch and not done.done():
                    done.set_result(None)
            elif not done.done():
                if status in ("204", "404"):  # end of batch / nothing there
                    done.set_result(None)
                else:
                    done.set_exception(OperationalError(f"direct get {subject}: {msg.headers}"))

        request = {"seq": start, "batch": batch, "next_by_subj": subject}
        sub = await self.nc.subscribe(inbox, cb=on_message)
        try:
            await self.nc.publish(
                f"$JS.API.DIRECT.GET.{self.stream}", _json.encode(request), reply=inbox
            )
            await asyncio.wait_for(done, self.timeout)
        except TimeoutError as error:
            raise OperationalError(
                f"direct get {subject}: no answer in {self.timeout} s"
            ) from error
        except nats.errors.Error as error:
            raise _connection_error("read", error) from error
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        return messages

    async def read_range(
        self,
        filter_subject: str,
        start: int,
        limit: int,
        stop: int | None = None,
        *,
        patience: float = 0.0,
    ) -> list[StoredMessage]:
        """Up to ``limit`` messages matching ``filter_subject`` with sequences from ``start``
        (inclusive) to ``stop`` (inclusive, if given), in order.

        Fails at once (OperationalError) when JetStream does not answer, unless
        ``patience`` is given: then the read starts again, every half second, while
        JetStream does not answer or says it is temporarily unavailable (a cluster
        electing a stream leader takes several seconds), for up to that many seconds. It
        is for long one-shot reads of the whole log (the audit, the chaos checker); a
        refusal, or a closed connection, still fails at once."""
        deadline = time.monotonic() + patience
        while True:
            try:
                return await self._read_range(filter_subject, start, limit, stop)
            except OperationalError as error:
                if not unanswered(error) or time.monotonic() + 0.5 > deadline:
                    raise
                log.warning("JetStream does not answer (%s): reading again", error)
                await asyncio.sleep(0.5)

    async def _read_range(
        self, filter_subject: str, start: int, limit: int, stop: int | None
    ) -> list[StoredMessage]:
        if limit <= 0 or (stop is not None and stop < start):
            return []
        name, pending = await self._create_consumer(filter_subject, start)
        try:
            want = min(limit, pending)
            if want == 0:
                return []
            messages: list[StoredMessage] = []
            try:
                async for batch in self._pull(name, want, no_wait=True):
                    for message in batch:
                        if stop is not None and message.sequence > stop:
                            return messages
                        messages.append(message)
            except _ConsumerLost as error:
                raise OperationalError("reading the stream: the server did not answer") from error
            return messages
        finally:
            await self._delete_consumer(name)

    async def follow(self, filter_subject: str, after: int) -> AsyncIterator[list[StoredMessage]]:
        """Yields batches of messages after sequence ``after``, forever (live tail).

        Survives lost consumers and reconnects by recreating its consumer from the last
        sequence it yielded.
        """
        last = after
        while True:
            if self.nc.is_closed:
                raise OperationalError("following the log: the NATS connection is closed")
            try:
                name, _ = await self._create_consumer(filter_subject, last + 1)
            except OperationalError:
                await asyncio.sleep(0.5)  # NATS unreachable: back off, then try again
                continue
            try:
                while True:
                    async for batch in self._pull(name, 256, no_wait=False):
                        last = batch[-1].sequence
                        yield batch
            except (_ConsumerLost, OperationalError):
                await asyncio.sleep(0.2)  # recreate the consumer from the last sequence
            finally:
                with contextlib.suppress(Exception):
                    await self._delete_consumer(name)

    async def _create_consumer(self, filter_subject: str, start: int) -> tuple[str, int]:
        config = {
            "stream_name": self.stream,
            "config": {
                "deliver_policy": "by_start_sequence",
                "opt_start_seq": max(start, 1),
                "ack_policy": "none",
                "filter_subject": filter_subject,
                "inactive_threshold": 10_000_000_000,
                "mem_storage": True,
                "num_replicas": 1,
            },
        }
        reply = await self._request(f"$JS.API.CONSUMER.CREATE.{self.stream}", _json.encode(config))
        created = _consumer_created.decode(reply.data)
        if created.error is not None:
            raise _api_error_to_exception(created.error)
        return created.name, created.num_pending

    async def _delete_consumer(self, name: str) -> None:
        # Not awaited for an answer: an unanswered delete is cleaned up by inactive_threshold.
        with contextlib.suppress(nats.errors.Error):
            await self.nc.publish(f"$JS.API.CONSUMER.DELETE.{self.stream}.{name}", b"")

    async def _pull(
        self, consumer: str, batch: int, no_wait: bool
    ) -> AsyncIterator[list[StoredMessage]]:
        """One pull request; yields what arrives in chunks until it is complete.

        Ends when the server says the request is done (all delivered, no more messages,
        expired). With ``no_wait`` false the request waits up to :data:`LIVE_PULL_EXPIRES`
        seconds for new messages, the server sending an idle heartbeat every
        :data:`LIVE_PULL_HEARTBEAT` seconds meanwhile. Raises ``_ConsumerLost`` when the
        consumer is gone or nothing answers: for a live pull, within
        :data:`LIVE_PULL_RECHECK` seconds of the connection being made again, or
        :data:`LIVE_PULL_SILENCE` seconds after its last message or heartbeat (a server
        restart takes the request and the memory consumer with it, and nothing says so);
        within the log's timeout for a ``no_wait`` one.
        """
        expires = LIVE_PULL_EXPIRES
        arrived: list[StoredMessage] = []
        wake = asyncio.Event()
        ended = False
        lost = False

        def on_frame(subject: bytes, reply: bytes, payload: bytes) -> None:  # see frames
            sequence, stamp = _sequence_and_time(reply.split(b"."))
            arrived.append(StoredMessage(sequence, subject.decode(), payload, stamp))
            wake.set()

        def on_message(msg: Msg) -> None:  # inline, as nats-py reads it
            nonlocal ended, lost
            if msg.reply:
                arrived.append(_consumed_message(msg))
            else:
                # A status: 404 no messages, 408 expired (done); 409 consumer deleted or
                # limits (lost); 100 a heartbeat (the request lives: the wait starts anew).
                status = msg.headers.get("Status") if msg.headers else None
                if status != "100":
                    ended = True
                    lost = status not in ("404", "408")
            wake.set()

        async def on_message_later(msg: Msg) -> None:  # where inline delivery is not had
            on_message(msg)

        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox, cb=on_message_later)
        deliver_inline(sub, on_message)
        deliver_frames(sub, on_frame)
        request: dict[str, object] = {"batch": batch}
        if no_wait:
            request["no_wait"] = True
        else:
            request["expires"] = int(expires * 1e9)
            request["idle_heartbeat"] = int(LIVE_PULL_HEARTBEAT * 1e9)
        wait = self.timeout if no_wait else LIVE_PULL_RECHECK
        reconnects = self.nc.stats["reconnects"]
        try:
            await self.nc.publish(
                f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{consumer}",
                _json.encode(request),
                reply=inbox,
            )
            received = 0
            heard = time.monotonic()
            while received < batch and not ended:
                try:
                    async with asyncio.timeout(wait):  # no task per wait, as wait_for makes
                        await wake.wait()
                except TimeoutError:
                    if (
                        no_wait
                        or self.nc.stats["reconnects"] != reconnects  # the request died with
                        or time.monotonic() - heard >= LIVE_PULL_SILENCE  # its connection
                    ):
                        raise _ConsumerLost from None
                    continue
                heard = time.monotonic()
                wake.clear()
                if arrived:
                    chunk = arrived[:]
                    arrived.clear()
                    received += len(chunk)
                    yield chunk
            if arrived:  # delivered together with the status that ended the pull
                yield arrived[:]
            if lost:
                raise _ConsumerLost
        except nats.errors.Error as error:
            raise _connection_error("read", error) from error
        finally:
            stop_frames(sub)
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    # ----------------------------------------------------------------- plumbing

    async def _request(self, subject: str, payload: bytes) -> Msg:
        try:
            return await self.nc.request(subject, payload, timeout=self.timeout)
        except nats.errors.NoRespondersError as error:
            raise OperationalError(f"{subject}: JetStream is not enabled on the server") from error
        except (nats.errors.Error, OSError) as error:
            raise _connection_error(subject, error) from error

    async def _api(self, endpoint: str, payload: bytes) -> dict[str, Any]:
        reply = await self._request(f"$JS.API.{endpoint}", payload)
        decoded: dict[str, Any] = msgspec.json.decode(reply.data)
        return decoded


def _header_size(headers: dict[str, str]) -> int:
    """Bytes of a NATS header block (``NATS/1.0`` line, ``key: value`` lines, blank line)."""
    if not headers:
        return 0
    return 12 + sum(len(key) + len(value) + 4 for key, value in headers.items())


def _first_versions(entries: Sequence[Entry]) -> dict[str, int]:
    """The first version written per subject; versions must rise within each subject."""
    first: dict[str, int] = {}
    previous: dict[str, int] = {}
    for entry in entries:
        before = previous.get(entry.subject)
        if before is not None and entry.version <= before:
            msg = (
                f"{entry.subject}: versions in one write must increase ({before}, {entry.version})"
            )
            raise IntegrityError(msg)
        previous[entry.subject] = entry.version
        first.setdefault(entry.subject, entry.version)
    return first


def _direct_message(msg: Msg) -> StoredMessage:
    headers = msg.headers or {}
    stamp = headers.get("Nats-Time-Stamp", "")
    return StoredMessage(
        sequence=int(headers["Nats-Sequence"]),
        subject=headers.get("Nats-Subject", msg.subject),
        payload=msg.data,
        timestamp_ns=_rfc3339_ns(stamp) if stamp else 0,
    )


def _consumed_message(msg: Msg) -> StoredMessage:
    sequence, stamp = _sequence_and_time(msg.reply.split("."))
    return StoredMessage(sequence, msg.subject, msg.data, stamp)


def _sequence_and_time(tokens: list[str] | list[bytes]) -> tuple[int, int]:
    """The stream sequence and time stamp of a consumed message, from its reply subject
    split at dots (as text or bytes):
    $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>, or the v2 form
    $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>.<x>
    """
    if len(tokens) == 9:
        return int(tokens[5]), int(tokens[7])
    return int(tokens[7]), int(tokens[9])


def _rfc3339_ns(stamp: str) -> int:
    """Nanoseconds since the epoch of a server time stamp like 2026-01-01T00:00:00.123456789Z."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    seconds = datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp()
    return int(seconds) * 1_000_000_000 + int((fraction or "0").ljust(9, "0")[:9])


def _api_error_to_exception(error: _ApiError) -> Exception:
    text = f"JetStream refused the request: {error.description} (error {error.err_code})"
    if error.code in (400, 413):
        return DataError(text)
    if error.code == 503:
        return JetStreamUnavailable(text)
    return OperationalError(text)


def unanswered(error: BaseException) -> bool:
    """True when ``error`` says JetStream did not answer (a pull or request timed out, or
    "temporarily unavailable": a cluster electing a leader, a server starting), rather
    than that it refused or the connection is closed. ``error`` is this module's
    OperationalError (its cause tells) or one of nats-py's own errors."""
    if isinstance(error, JetStreamUnavailable):
        return True
    cause = error.__cause__ if isinstance(error, OperationalError) else error
    return isinstance(
        cause, _ConsumerLost | nats.errors.TimeoutError | nats.js.errors.ServiceUnavailableError
    )


def _connection_error(what: str, error: BaseException) -> OperationalError:
    if isinstance(error, nats.errors.TimeoutError):
        return OperationalError(f"{what}: NATS did not answer in time ({error!r})")
    if isinstance(error, nats.errors.OutboundBufferLimitError):
        return OperationalError(f"{what}: not connected to NATS (reconnecting)")
    return OperationalError(f"{what}: NATS connection problem: {error!r}")
