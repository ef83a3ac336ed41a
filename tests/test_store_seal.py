"""With a seal key, events appended to the stream by anyone else are never read back."""

from __future__ import annotations

import asyncio
import os
import uuid

import nats
import pytest
from eventsourcing.persistence import IntegrityError, StoredEvent

from colonies_es.store import JetStreamFactory
from colonies_es.store.codec import encode_envelope


def sealed_env(nats_url: str, key: str | None) -> dict[str, str]:
    tag = uuid.uuid4().hex[:12]
    env = {
        "NATS_URL": nats_url,
        "JETSTREAM_STREAM": f"SEAL_{tag}",
        "JETSTREAM_SUBJECT_PREFIX": f"s{tag}",
    }
    if key is not None:
        env["EVENT_SEAL_KEY"] = key
    return env


def forge(nats_url: str, subject: str, payload: bytes) -> None:
    """Publishes straight to the stream, bypassing every writer that holds the key."""

    async def publish() -> None:
        nc = await nats.connect(nats_url)
        try:
            await nc.jetstream().publish(subject, payload)
        finally:
            await nc.close()

    asyncio.run(publish())


def event(aggregate: str, version: int, state: bytes = b"{}") -> StoredEvent:
    return StoredEvent(aggregate, version, "colonies_es.domain.graph_events:Forged", state)


@pytest.fixture
def key() -> str:
    return os.urandom(32).hex()


def test_a_forged_event_is_ignored_and_the_aggregate_stays_writable(
    nats_url: str, key: str
) -> None:
    env = sealed_env(nats_url, key)
    factory = JetStreamFactory(env)
    try:
        recorder = factory.application_recorder()
        recorder.insert_events([event("dev.graph.a", 1)])
        subject = f"{env['JETSTREAM_SUBJECT_PREFIX']}.ev.dev.graph.a"
        # A well-formed but unsealed version 2, as a client bypassing the engine would write.
        forge(nats_url, subject, encode_envelope(event("dev.graph.a", 2, b"forged"), subject))

        assert [e.originator_version for e in recorder.select_events("dev.graph.a")] == [1]
        assert [n.originator_version for n in recorder.select_notifications(None, 10)] == [1]

        # The engine's next write (version 2) lands after the forged message, and is read.
        recorder.insert_events([event("dev.graph.a", 2, b"real")])
        read = recorder.select_events("dev.graph.a")
        assert [(e.originator_version, e.state) for e in read] == [(1, b"{}"), (2, b"real")]
        with pytest.raises(IntegrityError):
            recorder.insert_events([event("dev.graph.a", 2, b"again")])
    finally:
        factory.close()


def test_a_reader_with_another_key_sees_nothing(nats_url: str, key: str) -> None:
    env = sealed_env(nats_url, key)
    writer = JetStreamFactory(env)
    reader = JetStreamFactory({**env, "EVENT_SEAL_KEY": os.urandom(32).hex()})
    try:
        writer.application_recorder().insert_events([event("dev.colony", 1)])
        assert reader.application_recorder().select_notifications(None, 10) == []
        assert writer.application_recorder().select_notifications(None, 10) != []
    finally:
        writer.close()
        reader.close()
