"""Group commit in the event log (colonies_es/store/jetstream.py, ``group_commit=True``).

Appends made together by different writers go out as one JetStream atomic batch; each
caller gets its own sequences, and a conflict of one caller never fails another. Run
against the session's real nats-server, each test on a stream of its own.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats
import pytest
from eventsourcing.persistence import IntegrityError
from nats.aio.client import Client as NATS

from colonies_es.store.jetstream import Entry, JetStreamLog, StoredMessage, StreamSpec

T = TypeVar("T")


def _version(message: StoredMessage) -> int:
    return int(message.payload.decode())


def entry(subject: str, version: int) -> Entry:
    return Entry(subject, version, str(version).encode())


async def batch_id(log: JetStreamLog, sequence: int) -> str | None:
    """The ``Nats-Batch-Id`` the message at ``sequence`` was stored with (the server
    keeps a message's headers), None when it was not part of an atomic batch."""
    request = json.dumps({"seq": sequence}).encode()
    reply = await log.nc.request(f"$JS.API.DIRECT.GET.{log.stream}", request, timeout=5)
    return (reply.headers or {}).get("Nats-Batch-Id")


def on_a_fresh_stream(nats_url: str, test: Callable[[JetStreamLog, str], Awaitable[T]]) -> T:
    """Runs ``test(log, prefix)`` with a group-committing log on a new stream."""
    name = f"GC{uuid.uuid4().hex[:10]}"
    prefix = f"gc{name.lower()}"

    async def run() -> T:
        nc: NATS = await nats.connect(nats_url)
        try:
            log = JetStreamLog(nc, name, _version, timeout=5.0, group_commit=True)
            await log.ensure_stream(StreamSpec(name, (f"{prefix}.>",)))
            return await test(log, prefix)
        finally:
            await nc.close()

    return asyncio.run(run())


def test_appends_made_together_are_stored_as_one_batch_each_with_its_sequences(
    nats_url: str,
) -> None:
    async def test(log: JetStreamLog, prefix: str) -> None:
        writes = [[entry(f"{prefix}.a{n}", 1), entry(f"{prefix}.a{n}", 2)] for n in range(5)]
        answers = await asyncio.gather(*(log.append(w) for w in writes))
        assert sorted(s for answer in answers for s in answer) == list(range(1, 11))
        for write, sequences in zip(writes, answers, strict=True):
            stored = await log.read_subject(write[0].subject)
            assert [m.sequence for m in stored] == sequences
            assert [_version(m) for m in stored] == [1, 2]
        ids = {await batch_id(log, sequence) for sequence in range(1, 11)}
        assert len(ids) == 1
        assert None not in ids  # all ten in one atomic batch

    on_a_fresh_stream(nats_url, test)


def test_a_conflicting_append_in_a_group_fails_alone_and_the_others_are_stored(
    nats_url: str,
) -> None:
    async def test(log: JetStreamLog, prefix: str) -> None:
        contested = f"{prefix}.contested"
        other_writer = JetStreamLog(log.nc, log.stream, _version)  # its own head cache
        await other_writer.append([entry(contested, 1)])  # this log does not know it
        outcomes = await asyncio.gather(
            log.append([entry(f"{prefix}.first", 1)]),
            log.append([entry(contested, 1)]),
            log.append([entry(f"{prefix}.third", 1)]),
            return_exceptions=True,
        )
        assert isinstance(outcomes[1], IntegrityError)
        assert [_version(m) for m in await log.read_subject(contested)] == [1]
        for subject, outcome in (
            (f"{prefix}.first", outcomes[0]),
            (f"{prefix}.third", outcomes[2]),
        ):
            stored = await log.read_subject(subject)
            assert [m.sequence for m in stored] == outcome
            assert [_version(m) for m in stored] == [1]

    on_a_fresh_stream(nats_url, test)


def test_a_stale_writer_in_a_group_is_retried_with_the_new_head_and_stored(
    nats_url: str,
) -> None:
    """A refused batch is not an error for a writer whose version still comes next: it
    is appended alone with the subject's real head, as without group commit."""

    async def test(log: JetStreamLog, prefix: str) -> None:
        busy = f"{prefix}.busy"
        other_writer = JetStreamLog(log.nc, log.stream, _version)
        await other_writer.append([entry(busy, 1)])  # head moved: this log expects none
        answers = await asyncio.gather(
            log.append([entry(busy, 2)]), log.append([entry(f"{prefix}.calm", 1)])
        )
        assert [_version(m) for m in await log.read_subject(busy)] == [1, 2]
        assert answers[0] == [(await log.read_subject(busy))[-1].sequence]

    on_a_fresh_stream(nats_url, test)


def test_appends_to_one_subject_together_are_applied_in_order(nats_url: str) -> None:
    async def test(log: JetStreamLog, prefix: str) -> None:
        subject = f"{prefix}.same"
        first = log.append([entry(subject, 1)])
        second = log.append([entry(subject, 2)])
        await asyncio.gather(first, second)
        assert [_version(m) for m in await log.read_subject(subject)] == [1, 2]

    on_a_fresh_stream(nats_url, test)


def test_a_cancelled_append_does_not_stop_the_others(nats_url: str) -> None:
    async def test(log: JetStreamLog, prefix: str) -> None:
        tasks = [asyncio.ensure_future(log.append([entry(f"{prefix}.c{n}", 1)])) for n in range(4)]
        tasks[0].cancel()  # the leader, before it sends
        done = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
        assert isinstance(done[0], asyncio.CancelledError)
        for n in range(1, 4):
            assert [_version(m) for m in await log.read_subject(f"{prefix}.c{n}")] == [1]
        assert await log.append([entry(f"{prefix}.after", 1)])  # the lead was handed on

    on_a_fresh_stream(nats_url, test)


@pytest.mark.parametrize("replicas", [1, 3])
def test_group_commit_is_chosen_for_replicated_streams_only(replicas: int) -> None:
    from colonies_es.store.recorders import group_commit_for

    assert group_commit_for(StreamSpec("LOG", ("log.>",), replicas)) is (replicas > 1)
