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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.micro.request import ERROR_CODE_HEADER, ERROR_HEADER

from colonies_es.client.errors import ColoniesConnectionError, ColoniesError
from colonies_es.crypto import seal
from colonies_es.protocol import AFTER_HEADER, SEQUENCE_HEADER, api_subject
from colonies_es.settings import NatsAccess

__all__ = ["Connection"]

log = logging.getLogger("colonies.client")

RECONNECT_WAIT = 0.5
"""Seconds between attempts to reach a NATS server, when connecting and after a loss."""

ATTEMPTS = 2
"""Times a command is sent (the same signed bytes) before its timeout is reported; each
attempt waits ``timeout / ATTEMPTS`` seconds for the reply."""


class Connection:
    """A lazily opened NATS connection to ``servers`` that sends signed commands.

    Once open, the connection survives the loss of its server: nats-py reconnects without
    limit (commands sent meanwhile time out with :class:`ColoniesConnectionError`).
    """

    def __init__(
        self, servers: list[str], timeout: float, access: NatsAccess | None = None
    ) -> None:
        """``timeout`` bounds both the first connection and each command's reply, in seconds.
        ``access`` adds the caller's NATS credential and TLS CA (its servers win over
        ``servers``)."""
        self.access = access or NatsAccess(tuple(servers))
        self.servers = list(self.access.servers)
        self.timeout = timeout
        self._nc: NATS | None = None
        self._opening = asyncio.Lock()
        self._last_error: Exception | None = None
        self.sequence = 0
        """The highest event-log sequence a reply or a work ticket has shown this client."""

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

    async def _remember_error(self, error: Exception) -> None:
        """nats-py's error callback: keep the latest error to explain a failure with."""
        self._last_error = error
        log.debug("NATS connection to %s: %r", self.url, error)

    async def command(self, op: str, body: msgspec.Struct, prvkey: str) -> bytes:
        """Send ``body`` as the command ``op`` signed by ``prvkey``; return the reply's body.

        Raises :class:`ColoniesError` when the engine refuses the command (its status and
        message), :class:`ColoniesConnectionError` when no engine answers or the reply
        does not come within ``timeout`` seconds, and ``ValueError`` for an invalid
        ``prvkey``.
        """
        return await self.request(api_subject(op), op, body, prvkey)

    async def request(self, subject: str, op: str, body: msgspec.Struct, prvkey: str) -> bytes:
        """Send ``body`` sealed for ``op`` as a request on ``subject`` (a command, or a
        query to the projectors); the same reply handling and errors as :meth:`command`."""
        # Signed by the identity key itself: with libsecp256k1 that costs the client about
        # what an Ed25519 session key did, and the engine less than half (crypto.py).
        data = seal(op, body, prvkey)
        nc = await self.nats()
        server = "colonies engine" if subject.startswith("colonies.api.") else "projector"
        try:
            reply = await self._request(nc, subject, op, data)
        except nats.errors.MaxPayloadError:
            raise ColoniesError(
                413,
                f"the command {op!r} ({len(data)} bytes) is over the NATS message limit "
                f"({nc.max_payload} bytes)",
            ) from None
        except nats.errors.NoRespondersError:
            raise ColoniesConnectionError(f"no {server} is answering on {self.url}") from None
        except nats.errors.TimeoutError:
            raise ColoniesConnectionError(
                f"the {server} on {self.url} did not answer {op!r} within {self.timeout} s"
            ) from None
        except nats.errors.Error as error:  # closed, draining, bad subject...
            raise ColoniesConnectionError(
                f"cannot send {op!r} to {self.url}: {_describe(error)}"
            ) from error
        headers = reply.headers or {}
        self.saw(headers.get(SEQUENCE_HEADER))
        code = headers.get(ERROR_CODE_HEADER)
        if code is not None:
            raise ColoniesError(_status(code), headers.get(ERROR_HEADER, ""))
        return reply.data

    async def _request(self, nc: NATS, subject: str, op: str, data: bytes) -> Msg:
        """Sends the signed ``data`` up to :data:`ATTEMPTS` times until a reply comes;
        raises the last attempt's ``nats.errors.TimeoutError`` if none does."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return await nc.request(
                    subject,
                    data,
                    timeout=self.timeout / ATTEMPTS,
                    headers={AFTER_HEADER: str(self.sequence)},
                )
            except nats.errors.TimeoutError:
                if attempt == ATTEMPTS:
                    raise
                log.info("no reply to %r in %.1f s: sending it again", op, self.timeout / ATTEMPTS)
        raise AssertionError("unreachable")

    def saw(self, sequence: str | int | None) -> None:
        """Notes an event-log sequence shown by a reply or a ticket (header text or int)."""
        try:
            value = int(sequence or 0)
        except ValueError:
            return
        self.sequence = max(self.sequence, value)

    async def close(self) -> None:
        """Flush what is pending and close the connection; the next call opens a new one.

        Never raises for a connection that is already lost (the server went away): there
        is nothing left to flush to, and the caller is only saying goodbye.
        """
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            try:
                await nc.close()
            except (OSError, TimeoutError, nats.errors.Error) as error:
                log.debug("closing the NATS connection to %s: %r", self.url, error)


def _status(code: str) -> int:
    try:
        return int(code)
    except ValueError:
        return 500


def _describe(error: BaseException) -> str:
    text = str(error)
    return text if text else type(error).__name__
