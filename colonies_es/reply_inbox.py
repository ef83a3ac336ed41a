"""Requests over NATS whose replies come to one wildcard subscription per connection.

``nc.request`` (nats-py) draws a NUID and random bytes for each request, adds a done
callback to its future and waits through ``asyncio.wait_for``: together about a third of
the client-side cost of a command or an append. :class:`ReplyInbox` names each request
by a counter under one inbox of the connection and waits on a plain future with a timer;
the replies are handed to their futures as nats-py reads them (:mod:`.nats_hot_path`).
The engine's appends (``store/jetstream.py``) and the client's commands
(``client/connection.py``) use it; the client's command that is the only one awaiting a
reply is written to the socket at once (``write_alone``).
"""

from __future__ import annotations

import asyncio
import itertools

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from colonies_es.nats_hot_path import deliver_inline, publish, write_now

__all__ = ["ConnectionInterrupted", "ReplyInbox", "Reservation"]


class ConnectionInterrupted(nats.errors.TimeoutError):
    """The connection was lost and made again while the request waited: its reply, if
    any, went to the old connection. A timeout, only earlier: send the request again."""

    def __str__(self) -> str:
        return "nats: the connection was interrupted while waiting for the reply"


class Reservation:
    """A reply awaited at :attr:`subject` for a request someone else publishes (a
    function's child sending its close itself: :meth:`ReplyInbox.reserve`)."""

    def __init__(self, subject: str, token: str, reply: asyncio.Future[Msg]) -> None:
        self.subject = subject
        """The reply subject the request must name."""
        self.token = token
        self.reply = reply


class ReplyInbox:
    """Requests on one NATS connection ``nc``, each answered at ``<inbox>.<n>``.

    The wildcard subscription is made by the first request (two first requests at once
    may make two; both deliver to the same waiting requests). nats-py subscribes again
    after a reconnection; a new connection needs a new inbox.
    """

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self._prefix = ""
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._numbers = itertools.count()
        self._reserved = 0  # reservations among _waiting (not requests this inbox wrote)

    async def request(
        self,
        subject: str,
        payload: bytes,
        headers: dict[str, str],
        seconds: float,
        write_alone: bool = False,
    ) -> Msg:
        """Publish ``payload`` (with ``headers``) on ``subject`` and return the reply.

        With ``write_alone``, a request that no other request of this inbox is awaiting a
        reply beside is written to the socket at once
        (:func:`~colonies_es.nats_hot_path.write_now`), one step of the event loop before
        nats-py's flusher would: a caller with one request in flight (a script's
        ``submit`` then ``wait``, an idle executor's close) has nothing to batch it with.
        With others in flight (a client at throughput) the flusher batches as before.

        Raises nats-py's ``TimeoutError`` when none came within ``seconds``,
        ``NoRespondersError`` when nothing listens on ``subject``, and what ``publish``
        raises (``MaxPayloadError``, a closed or draining connection...)."""
        await self._subscribed()
        loop = asyncio.get_running_loop()
        token = str(next(self._numbers))
        reply: asyncio.Future[Msg] = loop.create_future()
        self._waiting[token] = reply
        timer = loop.call_later(seconds, _time_out, reply)
        try:
            await publish(self.nc, subject, payload, self._prefix + token, headers)
            if write_alone and len(self._waiting) - self._reserved == 1:
                write_now(self.nc)
            msg = await reply
        finally:
            timer.cancel()
            del self._waiting[token]
        if msg.headers and msg.headers.get("Status") == "503":
            raise nats.errors.NoRespondersError
        return msg

    async def _subscribed(self) -> None:
        if not self._prefix:
            prefix = self.nc.new_inbox() + "."
            subscription = await self.nc.subscribe(prefix + "*", cb=self._answered_later)
            deliver_inline(subscription, self._answered)
            self._prefix = prefix

    async def reserve(self) -> Reservation:
        """A reply subject of this inbox for a request that another connection publishes
        (a function's child, with the same credential): its reply is awaited with
        :meth:`reply_to`, and :meth:`release` must follow either way. A reservation does
        not count as a request awaited beside others (``write_alone``)."""
        await self._subscribed()
        token = str(next(self._numbers))
        reservation = Reservation(
            self._prefix + token, token, asyncio.get_running_loop().create_future()
        )
        self._waiting[token] = reservation.reply
        self._reserved += 1
        return reservation

    async def reply_to(self, reservation: Reservation, seconds: float) -> Msg:
        """The reply at ``reservation``'s subject, once it came (maybe before this call);
        the errors of :meth:`request` (the same request may then be sent again with
        :meth:`request`, which waits at a subject of its own)."""
        timer = asyncio.get_running_loop().call_later(seconds, _time_out, reservation.reply)
        try:
            msg = await reservation.reply
        finally:
            timer.cancel()
        if msg.headers and msg.headers.get("Status") == "503":
            raise nats.errors.NoRespondersError
        return msg

    def release(self, reservation: Reservation) -> None:
        """Stop awaiting a reply at ``reservation``'s subject (a late one is dropped)."""
        if self._waiting.pop(reservation.token, None) is not None:
            self._reserved -= 1
        if not reservation.reply.done():
            reservation.reply.cancel()

    def interrupted(self) -> None:
        """The connection came back after a loss: every request still waiting fails at
        once with :class:`ConnectionInterrupted` instead of waiting out its timeout."""
        for reply in self._waiting.values():
            if not reply.done():
                reply.set_exception(ConnectionInterrupted())

    def _answered(self, msg: Msg) -> None:
        reply = self._waiting.get(msg.subject.rpartition(".")[2])
        if reply is not None and not reply.done():
            reply.set_result(msg)

    async def _answered_later(self, msg: Msg) -> None:
        """The subscription's callback where nats-py's delivery stays (another nats-py)."""
        self._answered(msg)


def _time_out(reply: asyncio.Future[Msg]) -> None:
    if not reply.done():
        reply.set_exception(nats.errors.TimeoutError())
