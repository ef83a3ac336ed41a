"""Messages handed over as nats-py reads them (colonies_es/nats_hot_path.py), on a real
nats-server: in order, none lost to nats-py's slow-consumer limit, a failing delivery
logged, and such a subscription still drains and ends. A lone request of a
:class:`~colonies_es.reply_inbox.ReplyInbox` is written at once; one beside others waits
for nats-py's flusher (which batches). The hot path's ``publish`` queues the very frame
nats-py's would, and leaves what it does not take to nats-py."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.aio.msg import Msg

from colonies_es.nats_hot_path import deliver_inline, publish
from colonies_es.reply_inbox import ReplyInbox


async def _never(msg: Msg) -> None:
    raise AssertionError(f"the ordinary delivery got {msg.subject}")


async def test_every_message_arrives_in_order_past_the_pending_limit(nats_url: str) -> None:
    """3,000 messages of 1 KB through a subscription whose pending limit is 64 KB: the
    ordinary delivery, its callback held up, would drop most of them as a slow consumer;
    inline, each is handed over as it is read (and the callback never runs)."""
    nc = await nats.connect(nats_url)
    try:
        got: list[bytes] = []
        done = asyncio.Event()
        total = 3000

        def deliver(msg: Msg) -> None:
            got.append(msg.data)
            if len(got) == total:
                done.set()

        sub = await nc.subscribe("inline.test", cb=_never, pending_bytes_limit=64 * 1024)
        assert deliver_inline(sub, deliver)
        publisher = await nats.connect(nats_url)
        try:
            for number in range(total):
                await publisher.publish("inline.test", str(number).encode().ljust(1024))
            await publisher.flush()
        finally:
            await publisher.close()
        await asyncio.wait_for(done.wait(), 10)
        assert [int(data) for data in got] == list(range(total))
        assert sub.pending_bytes == 0
        assert sub.pending_msgs == 0
    finally:
        await nc.drain()  # returns: nothing is left queued in the subscription


async def test_a_failing_delivery_is_logged_and_the_connection_goes_on(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        got: list[bytes] = []
        second = asyncio.Event()

        def deliver(msg: Msg) -> None:
            if msg.data == b"bad":
                raise ValueError("a bug in the delivery")
            got.append(msg.data)
            second.set()

        sub = await nc.subscribe("inline.fails", cb=_never)
        assert deliver_inline(sub, deliver)
        await nc.publish("inline.fails", b"bad")
        await nc.publish("inline.fails", b"good")
        await asyncio.wait_for(second.wait(), 5)
        assert got == [b"good"]
        assert nc.is_connected
        await sub.unsubscribe()
    finally:
        await nc.close()


async def test_a_lone_request_is_written_at_once_and_one_beside_others_is_batched(
    nats_url: str,
) -> None:
    """``write_alone``: the request no other awaits a reply beside is on its way to the
    server when its task first yields (nothing left in nats-py's pending buffer); with a
    second request waiting, it stays pending until the flusher's turn, as before."""
    responder = await nats.connect(nats_url)
    nc = await nats.connect(nats_url)
    try:
        held: list[Msg] = []
        holds = asyncio.Event()

        async def answer(msg: Msg) -> None:
            if msg.data == b"hold":
                held.append(msg)  # answered at the end
                holds.set()
            else:
                await msg.respond(b"re: " + msg.data)

        await responder.subscribe("lone.test", cb=answer)
        await responder.flush()
        replies = ReplyInbox(nc)
        headers = {"k": "v"}
        assert (await replies.request("lone.test", b"warm", headers, 5)).data == b"re: warm"

        lone = asyncio.create_task(replies.request("lone.test", b"one", headers, 5, True))
        await asyncio.sleep(0)  # the request's first step ran: published, awaiting
        assert nc.pending_data_size == 0  # written at once
        assert (await lone).data == b"re: one"

        holding = asyncio.create_task(replies.request("lone.test", b"hold", headers, 5, True))
        await asyncio.wait_for(holds.wait(), 5)  # it reached the responder: it waits beside
        beside = asyncio.create_task(replies.request("lone.test", b"two", headers, 5, True))
        await asyncio.sleep(0)
        assert nc.pending_data_size > 0  # left to the flusher
        assert (await beside).data == b"re: two"
        await held[0].respond(b"done")
        assert (await holding).data == b"done"
    finally:
        await nc.close()
        await responder.close()


_PUBLISHES: list[tuple[str, bytes, str, dict[str, str] | None]] = [
    ("colonies.api.submit", b'{"a":1}', "_INBOX.x.1", {"Colonies-After": "42"}),
    ("_INBOX.y.7", b"", "", {"Colonies-Sequence": "7", "Colonies-Replica": "ab12"}),
    ("colonies.ended.c.p", b"p", "", None),
    ("s", b"x" * 300, "r", {}),  # empty headers: an HPUB with an empty block
    ("s", b"", "", {"Empty": ""}),
    ("s", b"", "", {"Odd": " padded "}),  # nats-py strips it: left to nats-py
    ("s", b"", "", {"Line": "a\r\nb"}),  # nats-py blanks the break: left to nats-py
    ("s", b"", "", {"K": "välue"}),
]


async def test_publish_queues_the_frame_nats_py_would(nats_url: str) -> None:
    """For each input (ordinary ones, and ones nats-py changes or refuses, which the hot
    path hands to it), the bytes queued are nats-py's own, and the server delivers it."""
    nc = await nats.connect(nats_url)
    try:
        received: list[Msg] = []
        sub = await nc.subscribe("s")
        for subject, payload, reply, headers in _PUBLISHES:
            pending = len(nc._pending)
            await nc.publish(subject, payload, reply=reply, headers=headers)
            expected = b"".join(nc._pending[pending:])
            del nc._pending[pending:]
            await publish(nc, subject, payload, reply, headers)
            assert b"".join(nc._pending[pending:]) == expected, (subject, headers)
            if subject == "s":
                received.append(await sub.next_msg(timeout=5))
        assert [msg.data for msg in received] == [
            payload for subject, payload, _, _ in _PUBLISHES if subject == "s"
        ]
    finally:
        await nc.close()


@pytest.mark.parametrize("subject", ["", "a b", "a\r\nPUB x 1"])
async def test_publish_refuses_what_nats_py_refuses(nats_url: str, subject: str) -> None:
    """A subject nats-py refuses (empty, a blank, a line break: protocol injection), or a
    header name that is not a token, is refused the same way, nothing queued."""
    nc = await nats.connect(nats_url)
    try:
        pending = list(nc._pending)
        with pytest.raises(nats.errors.BadSubjectError):
            await publish(nc, subject, b"x", "", {"K": "v"})
        with pytest.raises(nats.errors.BadSubjectError):
            await publish(nc, "ok", b"x", subject or " ", None)
        for name in ("Not a token", "Ünicode", "K:"):
            with pytest.raises(nats.errors.BadHeaderError):
                await publish(nc, "ok", b"x", "", {name: "v"})
        assert nc._pending == pending
    finally:
        await nc.close()
