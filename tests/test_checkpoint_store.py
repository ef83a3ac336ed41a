"""Checkpoints in their JetStream stream (colonies_es/engine/checkpoint.py), on the
session's real nats-server: what is written is read back, sealed and encrypted; a
forged, stale or incomplete checkpoint is refused with its reason; of several writers
the newest sequence wins and old chunks go.

Each test uses a log stream of its own (a fresh name and subject prefix).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import nats
import pytest
from nats.aio.client import Client as NATS

from colonies_es.encryption import cipher_of, new_cipher_key
from colonies_es.engine.checkpoint import (
    CHUNK_BYTES,
    Checkpoint,
    CheckpointStore,
    CheckpointWriter,
)
from colonies_es.engine.replies import RememberedCommand, SeenCommands
from colonies_es.engine.state import ColonyGraphs, EngineState, LiveState
from colonies_es.store.codec import Sealer

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    connection = await nats.connect(nats_url)
    yield connection
    await connection.close()


async def _log(nc: NATS) -> tuple[str, str]:
    """A fresh event-log stream: (its name, its subject prefix)."""
    token = uuid.uuid4().hex[:10]
    name, prefix = f"LOG{token}", f"t{token}"
    await nc.jetstream().add_stream(name=name, subjects=[f"{prefix}.ev.>"])
    for number in range(5):
        await nc.jetstream().publish(f"{prefix}.ev.x", str(number).encode())
    return name, prefix


def _checkpoint(sequence: int, graphs: int = 3) -> Checkpoint:
    """A checkpoint of ``graphs`` evicted single-process graphs of colony ``c``."""
    return Checkpoint(
        state=LiveState(
            applied=sequence,
            resident=["c.colony"],
            colonies=[
                ColonyGraphs(
                    colonyname="c",
                    graphs=os.urandom(32 * graphs),
                    processes=os.urandom(32 * graphs),
                    graph_of=b"".join(n.to_bytes(4, "little") for n in range(graphs)),
                    evicted=[graphs, 0, graphs, 0],
                )
            ],
            last_heard={"e" * 64: datetime(2026, 12, 6, 8, 0, tzinfo=UTC)},
        ),
        commands=[RememberedCommand("k:n", 1.5, "close", "c.graph.x", "p", sequence)],
    )


async def test_a_checkpoint_is_read_back_as_written_sealed_and_encrypted(nc: NATS) -> None:
    stream, prefix = await _log(nc)
    key = new_cipher_key()
    store = CheckpointStore(
        nc, stream, prefix, sealer=Sealer(os.urandom(32)), cipher=cipher_of(key)
    )
    written = _checkpoint(5, graphs=20_000)  # 1.3 MB of ids: several chunks
    assert await store.write(written, "engine-1")
    found, reason = await store.read()
    assert reason == ""
    assert found == written
    head = await store.head()
    assert head is not None
    assert head[0].chunks == -(-head[0].size // CHUNK_BYTES) > 1
    # Encrypted at rest: no id of the state appears in the stored chunks.
    chunk = await nc.jetstream().get_last_msg(
        store.stream, f"{store.prefix}.data.{head[0].id}.0", direct=True
    )
    assert written.state.colonies[0].graphs[:32] not in (chunk.data or b"")
    assert b"c.colony" not in (chunk.data or b"")


async def test_forged_foreign_or_incomplete_checkpoints_are_refused_with_the_reason(
    nc: NATS,
) -> None:
    stream, prefix = await _log(nc)
    sealer = Sealer(os.urandom(32))
    store = CheckpointStore(nc, stream, prefix, sealer=sealer)
    assert await store.read() == (None, "no checkpoint yet")

    forger = CheckpointStore(nc, stream, prefix, sealer=Sealer(os.urandom(32)))
    assert await forger.write(_checkpoint(5), "forger")
    found, reason = await store.read()
    assert found is None
    assert "seal" in reason

    unsealed = CheckpointStore(nc, stream, prefix)
    await nc.jetstream().purge_stream(store.stream)
    assert await unsealed.write(_checkpoint(5), "no key")
    assert (await store.read())[0] is None

    await nc.jetstream().purge_stream(store.stream)
    assert await store.write(_checkpoint(99), "engine")  # the log ends at 5
    found, reason = await store.read()
    assert found is None
    assert "beyond the log's end 5" in reason

    await nc.jetstream().purge_stream(store.stream)
    good = _checkpoint(4)
    assert await store.write(good, "engine")
    assert (await store.read())[0] == good
    encrypted = CheckpointStore(
        nc, stream, prefix, sealer=sealer, cipher=cipher_of(new_cipher_key())
    )
    found, reason = await encrypted.read()
    assert found is None
    assert "without encryption" in reason

    head = await store.head()
    assert head is not None
    await nc.jetstream().purge_stream(store.stream, subject=f"{store.prefix}.data.>")
    found, reason = await store.read()
    assert found is None
    assert "chunk 0 of 1 is missing" in reason

    # The log stream deleted and made again (same name): another log.
    assert await store.write(_checkpoint(5), "engine")
    await nc.jetstream().delete_stream(stream)
    await nc.jetstream().add_stream(name=stream, subjects=[f"{prefix}.ev.>"])
    for number in range(6):
        await nc.jetstream().publish(f"{prefix}.ev.x", str(number).encode())
    found, reason = await store.read()
    assert found is None
    assert "created" in reason


async def test_of_several_writers_the_newest_sequence_wins_and_old_chunks_go(nc: NATS) -> None:
    stream, prefix = await _log(nc)
    for number in range(400):
        await nc.jetstream().publish(f"{prefix}.ev.y", str(number).encode())
    stores = [CheckpointStore(nc, stream, prefix) for _ in range(4)]
    outcomes = await asyncio.gather(
        *(store.write(_checkpoint(100 * (n + 1)), f"engine-{n}") for n, store in enumerate(stores))
    )
    found, _ = await stores[0].read()
    assert found is not None
    assert found.sequence == 400
    assert outcomes[3] is True
    assert not await stores[1].write(_checkpoint(300), "late")  # older than the head
    assert await stores[2].newest() == 400

    for sequence in (401, 402, 403):
        assert await stores[0].write(_checkpoint(sequence), "engine-0")
    info = await nc.jetstream().stream_info(
        stores[0].stream, subjects_filter=f"{stores[0].prefix}.data.>"
    )
    kept = {subject.split(".")[3] for subject in (info.state.subjects or {})}
    assert len(kept) == 2  # the head's chunks and the previous one's


async def test_replicas_write_checkpoints_every_n_events_taking_turns(nc: NATS) -> None:
    """Two writers on one log (two replicas): checkpoints follow the log's position, and
    a replica does not write one when the other just did."""
    stream, prefix = await _log(nc)
    states = [EngineState(), EngineState()]
    writers = [
        CheckpointWriter(
            CheckpointStore(nc, stream, prefix), state, SeenCommands(60), f"engine-{n}", every=10
        )
        for n, state in enumerate(states)
    ]
    tasks = [asyncio.create_task(w.run_forever(check_interval=0.05)) for w in writers]
    try:
        for target in (12, 24, 36):
            for state in states:
                state.advance(target)
            deadline = asyncio.get_running_loop().time() + 10
            while await writers[0].store.newest() != target:
                assert asyncio.get_running_loop().time() < deadline, f"no checkpoint at {target}"
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # both writers looked again
        for state in states:
            state.advance(40)  # 4 past the newest: under every=10, no checkpoint yet
        await asyncio.sleep(0.3)
        assert await writers[1].store.newest() == 36
        assert await writers[1].write_final()  # a clean stop writes its position
        assert not await writers[0].write_final()  # the head is already there
    finally:
        for task in tasks:
            task.cancel()
    info = await nc.jetstream().stream_info(writers[0].store.stream)
    assert info.state.messages <= 1 + 2 * 1  # the head and two single-chunk checkpoints


async def test_a_format_1_checkpoint_is_read_as_legacy_ids_and_an_unknown_format_refused(
    nc: NATS, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Format 1 (before derived ids) listed every graph and process: restored, its
    processes are the legacy map (they all have random ids), so an upgraded engine
    starts from it. A format this engine does not know is refused with the reason."""
    from colonies_es.engine import checkpoint as module

    stream, prefix = await _log(nc)
    store = CheckpointStore(nc, stream, prefix, sealer=Sealer(os.urandom(32)))
    old = _checkpoint(4, graphs=3)
    monkeypatch.setattr(module, "FORMAT", 1)
    assert await store.write(old, "an engine of before")
    monkeypatch.undo()
    found, reason = await store.read()
    assert found == old, reason
    state = EngineState()
    state.restore(found.state)
    [colony] = old.state.colonies
    processes = [colony.processes[n : n + 32].hex() for n in range(0, 96, 32)]
    graphs = [f"c.graph.{colony.graphs[n : n + 32].hex()}" for n in range(0, 96, 32)]
    for processid, graph_id in zip(processes, graphs, strict=True):
        assert state.graph_of(processid) == graph_id

    await nc.jetstream().purge_stream(store.stream)
    monkeypatch.setattr(module, "FORMAT", 3)
    assert await store.write(_checkpoint(4), "an engine of later")
    monkeypatch.undo()
    found, reason = await store.read()
    assert found is None
    assert reason == "it has format 3, this engine reads (1, 2)"
