"""The read side over a client's connection: signed queries to the projectors.

Listings (a colony's graphs and processes, by state or all) are answered by the
projectors' read model (``colonies.q.<op>``, :mod:`colonies_es.projections.protocol`),
not by the engine: they must not need the engine to hold ended graphs in memory. A query
is sealed like a command, with the op ``q.<op>``, and the projector checks that the
caller is a member of the colony.

Read-your-writes: a projector may not yet have applied what a command just wrote. Each
query carries ``after``, a stream sequence the answering view must have reached; the
projector waits for it (bounded by ``wait``) and refuses with 408 if it does not get
there. :meth:`ReadSide.query` asks, by default, for the sequence of the last event in the
log at the time of the call (:meth:`ReadSide.log_position`, itself a query a projector
answers from the stream): everything this client saw
acknowledged before the call is in the answer, whichever projector answers.
"""

from __future__ import annotations

from typing import TypeVar

import nats.errors
from nats.micro.request import ERROR_CODE_HEADER, ERROR_HEADER

from colonies_es.client.connection import Connection
from colonies_es.client.errors import ColoniesConnectionError, ColoniesError
from colonies_es.crypto import seal
from colonies_es.models import ModelValidationError, decode
from colonies_es.projections.protocol import (
    GetLogPosition,
    Position,
    Query,
    query_subject,
    signed_op,
)

__all__ = ["REPLY_MARGIN", "ReadSide"]

T = TypeVar("T")


REPLY_MARGIN = 1.0
"""Seconds the client waits for a reply beyond what it lets the projector wait."""


class ReadSide:
    """Signed queries of the read model over ``connection`` (see the module docstring).

    Coroutines of the connection's event loop. Failures: :class:`ColoniesError`
    (``.status``: 400, 403 not a member, 404 not found, 408 the view did not reach the
    position in time) and :class:`ColoniesConnectionError` (NATS unreachable, no
    projector answering, no reply in time).
    """

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    async def query(
        self,
        op: str,
        body: Query,
        prvkey: str,
        result: type[T],
        *,
        after: int | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> T:
        """Sends query ``op`` signed with ``prvkey``; returns its answer as ``result``.

        The answer reflects the log at least up to ``after`` (default: the log's last
        event now, :meth:`log_position`; the body's own ``after`` if higher). The
        projector may wait up to ``timeout`` (default: the connection's timeout) minus
        :data:`REPLY_MARGIN` seconds for its view to get there.
        """
        reply_within = self._connection.timeout if timeout is None else timeout
        if after is None:
            after = await self.log_position(prvkey)
        body.after = max(body.after, after)
        body.wait = max(reply_within - REPLY_MARGIN, 0.0)
        data = await self._request(op, seal(signed_op(op), body, prvkey), reply_within)
        try:
            return decode(data, result)
        except ModelValidationError as error:
            raise ColoniesError(500, f"unreadable reply to {op!r}: {error}") from error

    async def _request(self, op: str, sealed: bytes, reply_within: float) -> bytes:
        nc = await self._connection.nats()
        url = self._connection.url
        try:
            reply = await nc.request(query_subject(op), sealed, timeout=reply_within)
        except nats.errors.NoRespondersError:
            raise ColoniesConnectionError(
                f"no projector is answering on {url} (listings come from the read model: "
                "run `colonies projector`, or `colonies server` without --no-projector)"
            ) from None
        except nats.errors.TimeoutError:
            raise ColoniesConnectionError(
                f"no projector on {url} answered {op!r} within {reply_within:g} s"
            ) from None
        except nats.errors.Error as error:
            raise ColoniesConnectionError(f"cannot send {op!r} to {url}: {error!r}") from error
        headers = reply.headers or {}
        code = headers.get(ERROR_CODE_HEADER)
        if code is not None:
            status = int(code) if code.isdigit() else 500
            raise ColoniesError(status, headers.get(ERROR_HEADER, ""))
        return bytes(reply.data)

    async def log_position(self, prvkey: str) -> int:
        """The stream sequence of the last event in the log (0 when there is none), as a
        projector reads it from the stream: the signed query ``log_position``, so that a
        client needs no right to read the stream (NATS authorization)."""
        sealed = seal(signed_op("log_position"), GetLogPosition(), prvkey)
        data = await self._request("log_position", sealed, self._connection.timeout)
        try:
            reply: Position = decode(data, Position)
        except ModelValidationError as error:
            raise ColoniesError(500, f"unreadable reply to 'log_position': {error}") from error
        return reply.position
