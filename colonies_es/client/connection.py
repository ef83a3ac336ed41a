"""One NATS connection, opened on first use, and the signed command round trip over it.

Every operation of the client is one :meth:`Connection.command`: the body is sealed with
the caller's key (:func:`colonies_es.crypto.seal`, through a session key it certifies),
sent as a NATS request to ``colonies.api.<op>``, and the reply is either the result's
JSON or a refusal carried in the ``nats.micro`` error headers (protocol.py, "Commands").

Several engines may answer (protocol.py, "Read-your-writes and retries"): the connection
remembers the highest log sequence any reply (or work ticket) carried and sends it with
every command, so whichever engine answers has seen what this client saw. A command whose
reply does not come is sent again, the same signed bytes, once: an engine that already
decided it answers with the original reply instead of deciding twice.

Commands go to the engine replica that showed the highest sequence (protocol.py, "Replica
affinity": :class:`Affinity`), which then waits for nothing; when it does not answer, to
the queue group.

Replies come back on one wildcard subscription of the connection's own inbox, each
request named by a counter (:class:`~colonies_es.reply_inbox.ReplyInbox`), cheaper than
nats-py's ``request``.

A claim the engine may hold (protocol.py, "Work") names where the engine asks whether it
still waits before assigning it work that came meanwhile: :meth:`Connection.claiming`
answers there "yes" while the claim's caller waits, "no" once it gave up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.micro.request import ERROR_CODE_HEADER, ERROR_HEADER

from colonies_es.client.errors import ColoniesConnectionError, ColoniesError, NoEngineAnswering
from colonies_es.crypto import seal
from colonies_es.protocol import (
    AFTER_HEADER,
    REPLICA_HEADER,
    SEQUENCE_HEADER,
    alive_subject,
    api_subject,
    replica_subject,
)
from colonies_es.reply_inbox import ConnectionInterrupted, ReplyInbox, Reservation
from colonies_es.settings import NatsAccess

__all__ = ["Affinity", "Connection", "Prepared"]

log = logging.getLogger("colonies.client")

RECONNECT_WAIT = 0.5
"""Seconds between attempts to reach a NATS server, when connecting and after a loss."""

ATTEMPTS = 2
"""Times a command is sent (the same signed bytes) before its timeout is reported; each
attempt waits ``timeout / ATTEMPTS`` seconds for the reply."""

HELD_MARGIN = 1.0
"""Seconds past its hold that a held command (a claim, a ``wait_process``) waits for
its reply before it is sent again."""


class Affinity:
    """Which engine replica a client's next command goes to, and what it must wait for.

    The replica that named itself last (in a reply: the one that assigned the process
    an executor closes next, say) is *preferred*. It has applied or
    written everything it showed this client, so a command sent to it directly needs
    only what the client saw from the others (:attr:`elsewhere`, its
    ``Colonies-After``). A command to the queue group needs all of it
    (:attr:`sequence`). Sequences from a source that names no replica count as seen
    elsewhere.
    """

    def __init__(self) -> None:
        self.preferred: str | None = None
        """The replica commands go to first; None: the queue group."""
        self.from_preferred = 0
        """The highest sequence the preferred replica showed."""
        self.elsewhere = 0
        """The highest sequence any other source showed."""

    @property
    def sequence(self) -> int:
        """The highest sequence seen at all."""
        return max(self.from_preferred, self.elsewhere)

    def saw(self, sequence: int, replica: str | None) -> None:
        """Notes ``sequence`` shown by ``replica`` (None: unnamed), which becomes the
        preferred one if named."""
        if replica is None:
            self.elsewhere = max(self.elsewhere, sequence)
        elif replica == self.preferred:
            self.from_preferred = max(self.from_preferred, sequence)
        else:
            self.elsewhere = self.sequence
            self.preferred, self.from_preferred = replica, sequence

    def route(self, op: str) -> tuple[str, int]:
        """Where a command ``op`` goes now and the ``Colonies-After`` it carries: the
        preferred replica's own subject with what was seen elsewhere, or the queue
        group's with everything seen."""
        if self.preferred is not None:
            return replica_subject(self.preferred, op), self.elsewhere
        return api_subject(op), self.sequence

    def forget(self) -> None:
        """The preferred replica did not answer: from now on the queue group."""
        self.elsewhere = self.sequence
        self.preferred, self.from_preferred = None, 0


@dataclass(frozen=True)
class Prepared:
    """A command that another connection publishes, its reply awaited by this one
    (:meth:`Connection.prepare`)."""

    op: str
    subject: str
    """Where to publish it."""
    headers: dict[str, str]
    """The headers to publish it with."""
    held: float
    replies: ReplyInbox
    reservation: Reservation

    @property
    def reply(self) -> str:
        """The reply subject to publish it with."""
        return self.reservation.subject


class Connection:
    """A lazily opened NATS connection to ``servers`` that sends signed commands.

    Once open, the connection survives the loss of its server: nats-py reconnects without
    limit (commands sent meanwhile time out with :class:`ColoniesConnectionError`).
    """

    def __init__(
        self,
        servers: list[str],
        timeout: float,
        access: NatsAccess | None = None,
        affinity: bool = True,
    ) -> None:
        """``timeout`` bounds both the first connection and each command's reply, in seconds.
        ``access`` adds the caller's NATS credential and TLS CA (its servers win over
        ``servers``). Without ``affinity`` every command goes to the queue group."""
        self.access = access or NatsAccess(tuple(servers))
        self.servers = list(self.access.servers)
        self.timeout = timeout
        self._nc: NATS | None = None
        self._opening = asyncio.Lock()
        self._last_error: Exception | None = None
        self.affinity = Affinity()
        """The replica commands go to, and the sequences seen (:class:`Affinity`)."""
        self._follows_replicas = affinity
        self._claims: set[str] = set()  # tokens of the claims waiting for a reply
        self._alive: tuple[NATS, Subscription, str] | None = None  # (its connection, it, inbox)
        self._replies: ReplyInbox | None = None  # of the connection it was made on

    @property
    def sequence(self) -> int:
        """The highest event-log sequence a reply or a work ticket has shown this client."""
        return self.affinity.sequence

    @property
    def url(self) -> str:
        """The NATS server address(es), for messages."""
        return ", ".join(self.servers)

    async def nats(self) -> NATS:
        """The connected NATS client, connecting first if there is none (or it was closed).

        Raises :class:`ColoniesConnectionError` when no server of ``servers`` could be
        reached within ``timeout`` seconds.
        """
        if self._nc is None or self._nc.is_closed:
            async with self._opening:
                if self._nc is None or self._nc.is_closed:
                    self._nc = await self._open()
        return self._nc

    async def _open(self) -> NATS:
        nc = NATS()
        self._last_error = None
        try:
            options = self.access.connect_options()
        except ValueError as error:
            raise ColoniesConnectionError(str(error)) from None
        try:
            await asyncio.wait_for(
                nc.connect(
                    **options,
                    name="colonies-es client",
                    error_cb=self._remember_error,
                    reconnected_cb=self._reconnected,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=RECONNECT_WAIT,  # type: ignore[arg-type]
                ),
                self.timeout,
            )
        except (TimeoutError, OSError, nats.errors.Error) as error:
            with contextlib.suppress(Exception):
                await nc.close()
            reason = self._last_error or error
            raise ColoniesConnectionError(
                f"cannot connect to NATS at {self.url} within {self.timeout} s: {_describe(reason)}"
            ) from error
        return nc

    async def _reconnected(self) -> None:
        """nats-py's reconnection callback: replies to requests sent before the loss will
        not come (the engine answered the old connection, or never got them), so those
        requests are sent again now rather than after their timeout."""
        if self._replies is not None:
            self._replies.interrupted()

    async def _remember_error(self, error: Exception) -> None:
        """nats-py's error callback: keep the latest error to explain a failure with."""
        self._last_error = error
        log.debug("NATS connection to %s: %r", self.url, error)

    async def command(self, op: str, body: msgspec.Struct, prvkey: str, held: float = 0.0) -> bytes:
        """Send ``body`` as the command ``op`` signed by ``prvkey``; return the reply's body.

        ``held``: seconds the engine may hold the command before it answers (a claim's
        ``wait``), added to the time each attempt waits for the reply.

        Raises :class:`ColoniesError` when the engine refuses the command (its status and
        message), :class:`ColoniesConnectionError` when no engine answers or the reply
        does not come within ``timeout`` seconds, and ``ValueError`` for an invalid
        ``prvkey``.
        """
        return await self.request(api_subject(op), op, body, prvkey, held)

    def seal(self, op: str, body: msgspec.Struct, prvkey: str) -> bytes:
        """``body`` sealed as the command ``op`` by ``prvkey`` (to send inside another)."""
        return seal(op, body, prvkey)  # the identity key itself (libsecp256k1, crypto.py)

    async def request(
        self, subject: str, op: str, body: msgspec.Struct, prvkey: str, held: float = 0.0
    ) -> bytes:
        """Send ``body`` sealed for ``op`` as a request on ``subject`` (a command, or a
        query to the projectors); the same reply handling and errors as :meth:`command`."""
        return await self.send_sealed(subject, op, self.seal(op, body, prvkey), held)

    async def send_sealed(self, subject: str, op: str, data: bytes, held: float = 0.0) -> bytes:
        """:meth:`request` with the command already sealed (``data``): sent as it is."""
        nc = await self.nats()
        server = "colonies engine" if subject.startswith("colonies.api.") else "projector"
        try:
            reply = await self._request(nc, subject, op, data, held)
        except nats.errors.MaxPayloadError:
            raise ColoniesError(
                413,
                f"the command {op!r} ({len(data)} bytes) is over the NATS message limit "
                f"({nc.max_payload} bytes)",
            ) from None
        except nats.errors.NoRespondersError:
            raise NoEngineAnswering(f"no {server} is answering on {self.url}") from None
        except nats.errors.TimeoutError:
            raise ColoniesConnectionError(
                f"the {server} on {self.url} did not answer {op!r} within {self.timeout} s"
            ) from None
        except nats.errors.Error as error:  # closed, draining, bad subject...
            raise ColoniesConnectionError(
                f"cannot send {op!r} to {self.url}: {_describe(error)}"
            ) from error
        return self._reply_body(reply)

    def _reply_body(self, reply: Msg) -> bytes:
        """The body of a command's ``reply``, its sequence and replica noted; raises
        :class:`ColoniesError` for a refusal."""
        headers = reply.headers or {}
        self.saw(headers.get(SEQUENCE_HEADER), headers.get(REPLICA_HEADER))
        code = headers.get(ERROR_CODE_HEADER)
        if code is not None:
            raise ColoniesError(_status(code), headers.get(ERROR_HEADER, ""))
        return reply.data

    async def _request(self, nc: NATS, subject: str, op: str, data: bytes, held: float) -> Msg:
        """Sends the signed ``data`` up to :data:`ATTEMPTS` times until a reply comes;
        raises the last attempt's ``nats.errors.TimeoutError`` if none does. A request
        the connection's loss interrupted is sent again at once, without counting as an
        attempt (at most :data:`ATTEMPTS` times).

        A command (``colonies.api.<op>``) goes first to the preferred replica
        (:class:`Affinity`); if that one has no responder or does not answer in time,
        the same bytes go to the queue group, and the replica is forgotten."""
        affinity = self.affinity
        direct = affinity.preferred is not None and subject == api_subject(op)
        replies = self._reply_inbox(nc)
        seconds = _attempt_timeout(self.timeout, held)
        attempt = interruptions = 0
        while True:
            target, after = affinity.route(op) if direct else (subject, affinity.sequence)
            try:
                return await replies.request(
                    target, data, {AFTER_HEADER: str(after)}, seconds, write_alone=True
                )
            except nats.errors.NoRespondersError:
                if target == subject:
                    raise
                log.info("engine replica %s is gone: sending %r to any", affinity.preferred, op)
                affinity.forget()
                return await self._request(nc, subject, op, data, held)
            except ConnectionInterrupted:  # not an attempt: the reply could not come
                interruptions += 1
                if interruptions > ATTEMPTS:
                    raise
                log.info("the connection to NATS came back: sending %r again", op)
            except nats.errors.TimeoutError:
                if target != subject:
                    affinity.forget()
                attempt += 1
                if attempt == ATTEMPTS:
                    raise
                log.info("no reply to %r in %.1f s: sending it again", op, seconds)

    async def prepare(self, op: str, held: float = 0.0) -> Prepared:
        """Where and how a command ``op`` that another connection publishes (a function's
        child, with the same credential: its close) is sent, its reply awaited here
        (:meth:`complete`, or :meth:`discard` if it is not sent after all): the subject
        (the preferred replica's, as :meth:`request` would pick), the reply subject and
        the ``Colonies-After`` header. ``held`` as for :meth:`command`."""
        nc = await self.nats()
        replies = self._reply_inbox(nc)
        reservation = await replies.reserve()
        subject, after = self.affinity.route(op)
        return Prepared(op, subject, {AFTER_HEADER: str(after)}, held, replies, reservation)

    async def complete(self, prepared: Prepared, data: bytes | None) -> bytes:
        """The reply to the command ``prepared`` was for, which another connection
        published as ``data``: what :meth:`command` returns and raises. When no reply
        comes within an attempt's time (or no replica answered there), ``data`` is sent
        again from here, the same bytes, as :meth:`command` would (``None``: the bytes
        are not known, and a missing reply is a :class:`ColoniesConnectionError`)."""
        op = prepared.op
        seconds = _attempt_timeout(self.timeout, prepared.held)
        try:
            reply = await prepared.replies.reply_to(prepared.reservation, seconds)
        except nats.errors.TimeoutError:  # ConnectionInterrupted too
            if prepared.subject != api_subject(op):
                self.affinity.forget()
            if data is None:
                raise ColoniesConnectionError(
                    f"the colonies engine on {self.url} did not answer {op!r} within "
                    f"{seconds:.1f} s"
                ) from None
            log.info("no reply to %r in %.1f s: sending it again", op, seconds)
            return await self.send_sealed(api_subject(op), op, data, prepared.held)
        except nats.errors.NoRespondersError:
            if prepared.subject == api_subject(op) or data is None:
                raise NoEngineAnswering(f"no colonies engine is answering on {self.url}") from None
            self.affinity.forget()
            return await self.send_sealed(api_subject(op), op, data, prepared.held)
        finally:
            prepared.replies.release(prepared.reservation)
        return self._reply_body(reply)

    def discard(self, prepared: Prepared) -> None:
        """The command ``prepared`` was for was not sent: stop awaiting its reply."""
        prepared.replies.release(prepared.reservation)

    def _reply_inbox(self, nc: NATS) -> ReplyInbox:
        """The reply inbox of ``nc`` (a new one for a new connection)."""
        replies = self._replies
        if replies is None or replies.nc is not nc:
            replies = self._replies = ReplyInbox(nc)
        return replies

    @contextlib.asynccontextmanager
    async def claiming(self) -> AsyncIterator[str]:
        """A claim waits for its reply for the duration of the block: yields the subject
        (:attr:`colonies_es.protocol.Claim.alive`) where this connection answers the
        engine "1" meanwhile, and "0" once the block is left (the caller gave up: a
        cancelled ``assign``), so that work is never assigned to a claim nobody awaits.
        """
        subject = await self.alive_subject()
        with self.awaiting(subject):
            yield subject

    async def alive_subject(self) -> str:
        """A new subject where this connection answers the engine whether a claim still
        waits (:attr:`colonies_es.protocol.Claim.alive`): "0" until the claim naming it
        is awaited (:meth:`awaiting`), so it may be made (and the claim sealed) ahead."""
        return alive_subject(await self._alive_inbox(), secrets.token_hex(8))

    @contextlib.contextmanager
    def awaiting(self, subject: str) -> Iterator[None]:
        """The claim naming ``subject`` (from :meth:`alive_subject`) waits for its reply
        for the duration of the block: the engine is answered "1" meanwhile."""
        token = subject.rsplit(".", 1)[-1]
        self._claims.add(token)
        try:
            yield
        finally:
            self._claims.discard(token)

    def answers_at(self, subject: str) -> bool:
        """Whether ``subject`` (from :meth:`alive_subject`) is still answered: False once
        the connection it was made on was replaced (closed and opened again)."""
        alive = self._alive
        return (
            alive is not None
            and alive[0] is self._nc
            and subject.startswith(alive_subject(alive[2], ""))
        )

    async def _alive_inbox(self) -> str:
        """The inbox under which this connection answers whether its claims still wait,
        subscribed on first use (again after the connection was replaced)."""
        nc = await self.nats()
        if self._alive is None or self._alive[0] is not nc:
            inbox = nc.new_inbox()
            subscription = await nc.subscribe(alive_subject(inbox, "*"), cb=self._answer_alive)
            await nc.flush()  # subscribed before any claim names it
            self._alive = (nc, subscription, inbox)
        return self._alive[2]

    async def _answer_alive(self, msg: Msg) -> None:
        token = msg.subject.rsplit(".", 1)[-1]
        with contextlib.suppress(nats.errors.Error):
            await msg.respond(b"1" if token in self._claims else b"0")

    def saw(self, sequence: str | int | None, replica: str | None = None) -> None:
        """Notes an event-log sequence shown by a reply or a ticket (header text or int)
        and the engine replica that showed it (its ``Colonies-Replica`` header)."""
        try:
            value = int(sequence or 0)
        except ValueError:
            return
        named = self._follows_replicas and replica and _is_token(replica)
        self.affinity.saw(value, replica if named else None)

    async def close(self) -> None:
        """Flush what is pending and close the connection; the next call opens a new one.

        Never raises for a connection that is already lost (the server went away): there
        is nothing left to flush to, and the caller is only saying goodbye.
        """
        nc, self._nc = self._nc, None
        self._alive = self._replies = None
        if nc is not None and not nc.is_closed:
            try:
                await nc.close()
            except (OSError, TimeoutError, nats.errors.Error) as error:
                log.debug("closing the NATS connection to %s: %r", self.url, error)


def _is_token(replica: str) -> bool:
    """A replica name that fits in a subject token (anything else is ignored)."""
    return replica.isascii() and replica.isalnum() and len(replica) <= 64


def _attempt_timeout(timeout: float, held: float) -> float:
    """Seconds one attempt waits for its reply: ``timeout / ATTEMPTS``, or for a command
    the engine may hold ``held`` seconds, that plus at most :data:`HELD_MARGIN` (the
    engine answers when the hold is over; a reply that did not come by then was lost, and
    waiting long for it would hold up an executor that is stopping)."""
    if held <= 0:
        return timeout / ATTEMPTS
    return held + min(timeout / ATTEMPTS, HELD_MARGIN)


def _status(code: str) -> int:
    try:
        return int(code)
    except ValueError:
        return 500


def _describe(error: BaseException) -> str:
    text = str(error)
    return text if text else type(error).__name__
