"""Reading the raw event log in tests: every event of the ``COLONIES`` stream, decoded.

The engine's log is the truth (DESIGN.md), so tests that promise "exactly once" or
"nothing written" check it here, straight from JetStream with nats-py, without going
through the engine or the store's recorders:

- :func:`last_sequence` is the stream's last sequence, and :func:`nothing_written` a
  block after which it must not have moved (a refused command writes nothing);
- :func:`read_events` is every event, in stream order, with its subject, sequence,
  aggregate id, version, event class name and decoded state;
- :class:`EventLog` answers the usual questions about such a list (events of a kind,
  per process, versions per aggregate).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from colonies_es.crypto import SignedCommand
from colonies_es.store.codec import MsgspecTranscoder, decode_envelope, to_stored_event

STREAM = "COLONIES"
EVENT_SUBJECTS = "colonies.ev.>"

_transcoder = MsgspecTranscoder()


@dataclass(frozen=True)
class LoggedEvent:
    """One event message of the log."""

    sequence: int
    subject: str
    aggregate_id: str
    version: int
    topic: str
    state: dict[str, Any]

    @property
    def kind(self) -> str:
        """The event's class name: ``ProcessAssigned``, ``GraphSubmitted``, ..."""
        return self.topic.rsplit(":", 1)[-1].rsplit(".", 1)[-1]

    @property
    def processid(self) -> str | None:
        """The process the event is about, for events about one process."""
        value = self.state.get("processid")
        return value if isinstance(value, str) else None


async def _last_sequence(url: str, stream: str) -> int:
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().stream_info(stream)
        return int(info.state.last_seq)
    finally:
        await nc.close()


async def _read_events(url: str, stream: str) -> list[LoggedEvent]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        last = int((await js.stream_info(stream)).state.last_seq)
        subscription = await js.pull_subscribe(
            EVENT_SUBJECTS,
            stream=stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.NONE,
                deliver_policy=DeliverPolicy.ALL,
                inactive_threshold=30.0,
            ),
        )
        events: list[LoggedEvent] = []
        try:
            seen = 0
            while seen < last:
                try:
                    batch = await subscription.fetch(1000, timeout=1.0)
                except nats.errors.TimeoutError:
                    break  # the remaining sequences are not events (or were never written)
                for message in batch:
                    seen = message.metadata.sequence.stream
                    if seen > last:
                        break
                    stored = to_stored_event(decode_envelope(message.data))
                    events.append(
                        LoggedEvent(
                            sequence=seen,
                            subject=message.subject,
                            aggregate_id=str(stored.originator_id),
                            version=stored.originator_version,
                            topic=stored.topic,
                            state=_transcoder.decode(stored.state),
                        )
                    )
        finally:
            await subscription.unsubscribe()
        return events
    finally:
        await nc.close()


def command_payload(event_command: object) -> dict[str, Any]:
    """The payload (op, nonce, ts, body) of the signed command an event stores, or of
    sealed command bytes."""
    raw = event_command if isinstance(event_command, bytes) else str(event_command).encode()
    signed = msgspec.json.decode(raw, type=SignedCommand)
    payload: dict[str, Any] = msgspec.json.decode(signed.payload)
    return payload


def last_sequence(url: str, stream: str = STREAM) -> int:
    """The last sequence of the event-log stream (0 when empty)."""
    return asyncio.run(_last_sequence(url, stream))


@contextlib.contextmanager
def nothing_written(url: str, stream: str = STREAM, colony: str = "") -> Iterator[None]:
    """Fails unless the stream's last sequence is the same after the block as before;
    with ``colony``, the last sequence of that colony's events (on a shared stack, other
    tests' deadlines may append to other colonies meanwhile)."""
    before = _last_of(url, stream, colony)
    assert before or not colony, f"no event of colony {colony!r}: the filter matches nothing"
    yield
    after = _last_of(url, stream, colony)
    assert after == before, f"the log moved from sequence {before} to {after}"


def _last_of(url: str, stream: str, colony: str) -> int:
    if not colony:
        return last_sequence(url, stream)
    return asyncio.run(_last_sequence_of(url, stream, EVENT_SUBJECTS[:-1] + colony + ".>"))


async def _last_sequence_of(url: str, stream: str, subjects: str) -> int:
    nc = await nats.connect(url)
    try:
        last = await nc.jetstream().get_last_msg(stream, subjects)
        return int(last.seq or 0)
    except nats.js.errors.NotFoundError:
        return 0
    finally:
        await nc.close()


def read_events(url: str, stream: str = STREAM) -> EventLog:
    """Every event stored in the stream up to now, in stream order."""
    return EventLog(asyncio.run(_read_events(url, stream)))


class EventLog(Sequence[LoggedEvent]):
    """A list of logged events with the questions tests ask of it."""

    def __init__(self, events: Iterable[LoggedEvent]) -> None:
        self._events = list(events)

    def __getitem__(self, index: Any) -> Any:
        return self._events[index]

    def __len__(self) -> int:
        return len(self._events)

    def of_kind(self, kind: str) -> list[LoggedEvent]:
        """The events of one class (``"ProcessAssigned"``), in stream order."""
        return [event for event in self._events if event.kind == kind]

    def for_graph(self, colonyname: str, processgraphid: str) -> list[LoggedEvent]:
        """The events of one process graph aggregate, in stream order."""
        aggregate = f"{colonyname}.graph.{processgraphid}"
        return [event for event in self._events if event.aggregate_id == aggregate]

    def closed_outputs(self, processid: str) -> list[list[Any]]:
        """The output of each ``ProcessClosed`` of a process (one, when all is well)."""
        return [
            e.state["output"] for e in self.of_kind("ProcessClosed") if e.processid == processid
        ]

    def count_per_process(self, kind: str) -> Counter[str]:
        """How many events of ``kind`` each process has."""
        return Counter(e.processid for e in self.of_kind(kind) if e.processid is not None)

    def versions(self) -> dict[str, list[int]]:
        """Each aggregate's event versions, in stream order."""
        versions: dict[str, list[int]] = {}
        for event in self._events:
            versions.setdefault(event.aggregate_id, []).append(event.version)
        return versions

    def assert_versions_contiguous(self) -> None:
        """Every aggregate's versions are 1..n in stream order: none lost, none twice."""
        for aggregate, versions in self.versions().items():
            expected = list(range(1, len(versions) + 1))
            assert versions == expected, f"versions of {aggregate}: {versions}"
