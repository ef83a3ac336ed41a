"""Messages handed over as raw frames (colonies_es/store/frames.py), on a real
nats-server: every message of a frames subscription arrives once and in order, as a
frame (those with a reply subject, their headers left out) or through nats-py (those
without); other subscriptions of the connection are untouched; a whole-log read of
events stored with headers, as the engine writes them, uses frames."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.aio.msg import Msg

from colonies_es.nats_hot_path import deliver_inline
from colonies_es.store import frames
from colonies_es.store.jetstream import Entry, JetStreamLog, StreamSpec


async def test_frames_and_nats_py_messages_arrive_once_in_order(nats_url: str) -> None:
    """Small and large payloads (a 200 KB one spans several reads of the socket), some
    with headers, half with a reply subject (those are frames), interleaved with another
    subscription's messages on the same connection."""
    nc = await nats.connect(nats_url)
    try:
        got: list[tuple[str, bytes, bool]] = []  # (reply, payload, as a frame)
        other: list[bytes] = []
        done, other_done = asyncio.Event(), asyncio.Event()
        total = 400

        def on_frame(subject: bytes, reply: bytes, payload: bytes) -> None:
            assert subject == b"frames.test"
            got.append((reply.decode(), payload, True))
            if len(got) == total:
                done.set()

        def on_message(msg: Msg) -> None:
            got.append((msg.reply, msg.data, False))
            if len(got) == total:
                done.set()

        async def on_other(msg: Msg) -> None:
            other.append(msg.data)
            if len(other) == total:
                other_done.set()

        sub = await nc.subscribe("frames.test", cb=None)
        assert deliver_inline(sub, on_message)
        assert frames.deliver_frames(sub, on_frame)
        await nc.subscribe("frames.other", cb=on_other)
        await nc.flush()

        def payload(number: int) -> bytes:
            size = 200_000 if number % 97 == 0 else 1 + number * 7 % 3000
            return str(number).encode().ljust(size, b".")

        publisher = await nats.connect(nats_url)
        try:
            for number in range(total):
                headers = {"N": str(number)} if number % 10 == 3 else None
                reply = f"r.{number}" if number % 2 else ""
                await publisher.publish("frames.test", payload(number), reply, headers)
                await publisher.publish("frames.other", str(number).encode())
            await publisher.flush()
        finally:
            await publisher.close()
        await asyncio.wait_for(done.wait(), 20)
        assert [data for _, data, _ in got] == [payload(n) for n in range(total)]
        assert [reply for reply, _, _ in got] == [f"r.{n}" if n % 2 else "" for n in range(total)]
        as_frames = [n for n, (_, _, frame) in enumerate(got) if frame]
        assert as_frames == [n for n in range(total) if n % 2]  # with a reply subject
        await asyncio.wait_for(other_done.wait(), 10)
        assert other == [str(n).encode() for n in range(total)]
        frames.stop_frames(sub)
    finally:
        await nc.close()


async def test_a_failing_frame_handler_is_logged_and_the_connection_goes_on(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    nc = await nats.connect(nats_url)
    try:
        got: list[bytes] = []
        second = asyncio.Event()

        def on_frame(subject: bytes, reply: bytes, payload: bytes) -> None:
            if payload == b"bad":
                raise ValueError("a bug in the handler")
            got.append(payload)
            second.set()

        sub = await nc.subscribe("frames.fail", cb=None)
        assert frames.deliver_frames(sub, on_frame)
        await nc.publish("frames.fail", b"bad", reply="r")
        await nc.publish("frames.fail", b"good", reply="r")
        await asyncio.wait_for(second.wait(), 10)
        assert got == [b"good"]
        assert "delivering a message on frames.fail failed" in caplog.text
        assert nc.is_connected
    finally:
        await nc.close()


async def test_a_whole_log_read_takes_its_messages_as_frames(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's pulls use frames: reading back 600 messages appended by the store
    (stored with its headers) hands them over as frames (counted), with the sequences,
    subjects and payloads that were appended."""
    nc = await nats.connect(nats_url)
    try:
        log = JetStreamLog(nc, "FRAMES", lambda message: None)
        await log.ensure_stream(StreamSpec("FRAMES", ("frames.ev.>",)))
        for first in range(0, 600, 100):  # atomic batches: stored with headers, as the engine's
            await log.append(
                [
                    Entry(f"frames.ev.{number % 7}", number // 7 + 1, str(number).encode())
                    for number in range(first, first + 100)
                ]
            )
        counted = 0
        original = frames.deliver_frames

        def counting(sub: object, handler: frames.FrameHandler) -> bool:
            def count(subject: bytes, reply: bytes, payload: bytes) -> None:
                nonlocal counted
                counted += 1
                handler(subject, reply, payload)

            return original(sub, count)  # type: ignore[arg-type]

        monkeypatch.setattr("colonies_es.store.jetstream.deliver_frames", counting)
        messages = await log.read_range("frames.ev.>", 1, 1000)
        assert [m.sequence for m in messages] == list(range(1, 601))
        assert [m.payload for m in messages] == [str(n).encode() for n in range(600)]
        assert [m.subject for m in messages] == [f"frames.ev.{n % 7}" for n in range(600)]
        assert all(m.timestamp_ns > 0 for m in messages)
        assert counted == 600
    finally:
        await nc.close()
