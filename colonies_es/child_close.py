"""A function's child sending its process's close itself, over a NATS connection of its own.

Why: when a function ends, its child process holds the output, and the executor (the
child's parent) is asleep. Handing the output back over the pipe wakes the parent, which
then reads it, does the report's bookkeeping, seals the close and publishes it: about a
quarter of a millisecond and a process wake-up between the function's end and the close
leaving the machine (DESIGN.md, "The executor on asyncio", eighth session). When the
executor asks for it (a :class:`~colonies_es.client.async_client.CloseOrder` with the
job), the child seals the close and publishes it itself, then tells the parent, off the
critical path, with the close's exact bytes. The order comes from the executor's own
client: the subject (the engine replica it prefers), the ``Colonies-After`` header, the
claim the close carries (already sealed) and the reply subject, a request the executor
has registered in its reply inbox, so the reply (the next process) comes to the
executor as before, which sends the same bytes again if it does not come.

The child leaves the close to the executor (:meth:`ChildCloser.send` returns None) when
it has no connection (yet: one is opened after the first order, off the critical path,
with the executor's credential and TLS), when the claim inside would be stale (a long
function: the engine reads the log's end before deciding an old command), or when the
close is larger than the server takes. What the function printed, its ``colonies``
calls and its failures are the executor's business: the runner does not ask for this
then (:mod:`~colonies_es.function_runner`).

The connection lives in the child between functions. The child blocks on its pipe, not
on an event loop (the function may run one of its own), so nats-py's loop only runs
while the child connects, or when the server wrote something (its PINGs) while the
child waited for a job (:meth:`ChildCloser.wait_for`). The close is written to the
socket at once, as the connection's next message, without the loop (running it for a
publish cost about 100 us): :func:`~colonies_es.nats_hot_path.publish_now` puts the
frame (built by nats-py's own ``hpub_cmd``) into nats-py's pending buffer and writes it.
The connection never reconnects by itself: a lost one is dropped and opened again after
the next function.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing.connection
import select
import time
from typing import Any

from nats.aio.client import Client as NATS
from nats.protocol.command import hpub_cmd

from colonies_es.client.async_client import CloseOrder
from colonies_es.crypto import seal
from colonies_es.nats_hot_path import publish_now
from colonies_es.protocol import CloseProcess
from colonies_es.settings import NatsAccess

__all__ = ["ChildCloser"]

log = logging.getLogger("colonies.executor")

CONNECT_TIMEOUT = 5.0
"""Seconds a child waits for its NATS connection before leaving closes to the executor."""

RECONNECT_AFTER = 5.0
"""Seconds after a failed connection before a child tries again."""

_SERVICE_TIME = 0.01
"""Seconds the child's event loop runs when the server wrote to an idle child (a PING
to answer, or the connection's end)."""


class ChildCloser:
    """A function child's NATS connection, for sending closes (one per child)."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._nc: NATS | None = None
        self._access: tuple[tuple[str, ...], str, str] | None = None
        self._retry_at = 0.0  # time.monotonic() before which no new connection is tried
        self._polled: tuple[tuple[int, int], select.poll] | None = None
        """((pipe, socket) file descriptors, a poll object watching them)."""

    def send(self, order: CloseOrder, output: list[Any], prvkey: str) -> bytes | None:
        """Seal the close that ``order`` describes, with ``output``, by ``prvkey``, and
        publish it (written to the socket before this returns); its bytes, or None when
        it was not sent (no connection to the order's servers, the claim inside no
        longer fresh, or the close over the server's message limit)."""
        nc, loop = self._nc, self._loop
        if (
            nc is None
            or loop is None
            or not nc.is_connected
            or order.access != self._access
            or time.monotonic() >= order.fresh_until
        ):
            return None
        body = CloseProcess(
            processid=order.processid, out=output, attempt=order.attempt, claim=order.claim
        )
        try:
            data = seal("close", body, prvkey)
        except (TypeError, ValueError) as error:  # nothing sent: the executor's close says why
            log.debug("a function's child could not seal its close: %r", error)
            return None
        if len(data) > nc.max_payload:
            return None
        # As nats-py's publish would, without running the loop for it (a hundred us)
        if not publish_now(nc, _hpub(order.subject, order.reply, order.headers, data)):
            return None
        if nc._pending or _unwritten(nc):  # not all written at once: the loop finishes it
            try:
                loop.run_until_complete(asyncio.wait_for(nc.flush(), CONNECT_TIMEOUT))
            except Exception as error:  # sent or not: the executor's retry decides
                log.debug("a function's child could not flush its close: %r", error)
        return data

    def connect(self, access: tuple[tuple[str, ...], str, str]) -> None:
        """Have a connection to ``access``'s servers (a
        :class:`~colonies_es.settings.NatsAccess`'s fields) for the next :meth:`send`:
        open one unless there is one (a failure is logged at debug level and tried again
        :data:`RECONNECT_AFTER` seconds later). Blocks for up to
        :data:`CONNECT_TIMEOUT` seconds: call it off the critical path."""
        if self._nc is not None and self._nc.is_connected and access == self._access:
            return
        if time.monotonic() < self._retry_at:
            return
        self.close()
        loop = self._loop = self._loop or asyncio.new_event_loop()
        nc = NATS()
        try:
            loop.run_until_complete(
                asyncio.wait_for(
                    nc.connect(
                        **NatsAccess(*access).connect_options(),
                        name="colonies-es function child",
                        allow_reconnect=False,
                        max_reconnect_attempts=0,
                        ping_interval=24 * 3600,  # its loop rarely runs: the server pings
                    ),
                    CONNECT_TIMEOUT,
                )
            )
        except Exception as error:  # the executor closes meanwhile
            log.debug("a function's child cannot connect to NATS: %r", error)
            self._retry_at = time.monotonic() + RECONNECT_AFTER
            with contextlib.suppress(Exception):
                loop.run_until_complete(nc.close())
            return
        self._nc, self._access = nc, access

    def wait_for(self, conn: multiprocessing.connection.Connection) -> None:
        """Return once ``conn`` (the child's pipe) has something to read, answering the
        NATS server meanwhile (its PINGs); a connection found lost is dropped."""
        while True:
            sock = self._socket()
            if sock is None:
                return
            pipe = conn.fileno()
            if self._polled is None or self._polled[0] != (pipe, sock.fileno()):
                poller = select.poll()
                poller.register(pipe, select.POLLIN)
                poller.register(sock.fileno(), select.POLLIN)
                self._polled = ((pipe, sock.fileno()), poller)
            ready = self._polled[1].poll()
            if any(fd == pipe for fd, _ in ready):
                return
            assert self._loop is not None
            self._loop.run_until_complete(asyncio.sleep(_SERVICE_TIME))
            if self._nc is not None and not self._nc.is_connected:
                self.close()

    def _socket(self) -> Any:
        """The connection's socket (something with a ``fileno``), None without one (a
        nats-py without the attributes this relies on: PINGs are then answered only
        while the child publishes)."""
        nc = self._nc
        if nc is None or not nc.is_connected:
            return None
        writer = getattr(getattr(nc, "_transport", None), "_io_writer", None)
        sock = writer.get_extra_info("socket") if writer is not None else None
        return sock if callable(getattr(sock, "fileno", None)) else None

    def close(self) -> None:
        """Close the connection (if any)."""
        nc, self._nc = self._nc, None
        self._access = None
        self._polled = None
        if nc is not None and self._loop is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                self._loop.run_until_complete(asyncio.wait_for(nc.close(), CONNECT_TIMEOUT))


def _hpub(subject: str, reply: str, headers: dict[str, str], payload: bytes) -> bytes:
    """The NATS protocol's ``HPUB`` frame publishing ``payload`` with ``headers`` (tokens
    and digits of this project's own: nothing to escape)."""
    head = b"NATS/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()
    return hpub_cmd(subject, reply, head + b"\r\n", payload)


def _unwritten(nc: NATS) -> int:
    """Bytes the connection's transport still holds (the socket took less than all)."""
    writer = getattr(getattr(nc, "_transport", None), "_io_writer", None)
    transport = getattr(writer, "transport", None)
    return 0 if transport is None else int(transport.get_write_buffer_size())
