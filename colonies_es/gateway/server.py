"""The ColonyOS HTTP gateway: ColonyOS clients (pycolonies, the Go CLI) in, engine commands out.

Routes, as the ColonyOS server has them (COLONYOS_RPC.md, 1.1):

- ``POST /api``: one RPC envelope ``{payloadtype, payload, signature}``. The gateway
  forwards the body *unchanged* to the engine on ``colonies.api.colonyos``; the engine
  verifies the signature itself, checks the caller's role, decides and stores the envelope
  with the event (:mod:`colonies_es.colonyos`). The gateway only reshapes the answer
  (:mod:`.replies`). It holds no key and is trusted with nothing: a gateway that altered a
  message would break its signature.
- ``GET /health``: 200 with an empty body while the gateway is connected to NATS, else 503.
- ``GET /pubsub``: the websocket of pycolonies' ``wait()`` (``subscribeprocessmsg``).

``assignprocessmsg`` is a long poll: the gateway sends the executor's envelope to the
engine (a claim), and while the engine answers "no process ready" it waits for a work
ticket of that colony (:class:`WorkSignals`) or one second, and asks again, until the
message's ``timeout``. Then it answers 404 "No process available for assignment", as
ColonyOS does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import ssl
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import nats
import nats.errors
from aiohttp import WSMsgType, web
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.micro.request import ERROR_CODE_HEADER, ERROR_HEADER

from colonies_es import colonyos
from colonies_es.client.work import WorkTickets
from colonies_es.gateway.replies import error_reply, reply, shape
from colonies_es.protocol import NAME_PATTERN, WORK_PREFIX, api_subject, ended_subject
from colonies_es.settings import NatsAccess

__all__ = ["DEFAULT_PORT", "Gateway"]

log = logging.getLogger("colonies.gateway")

DEFAULT_PORT = 50080
"""ColonyOS's port in every pycolonies example and test."""

ENGINE_SUBJECT = api_subject(colonyos.ENGINE_OP)

ASSIGN_RETRY = 1.0
"""Seconds a waiting assign sleeps at most before asking the engine again (a ticket it
missed, work of another type woken in its place)."""

CONNECT_TIMEOUT = 5.0
"""Seconds the gateway tries to reach NATS at start before giving up (then it reconnects
forever)."""

SPENT_TICKET_WAIT = 0.05
"""Seconds :class:`SpentTickets` waits for a ticket to take before it gives up on it."""

NOTHING_READY = "no process ready"
"""How the engine's 404 to a claim begins when the claimer may take nothing right now
(the only 404 an assign waits through; any other is answered at once)."""

_PROCESS_ID = re.compile(r"^[0-9a-f]{64}$")
_ENDED_STATES = frozenset({2, 3, 4})


@dataclass(eq=False)
class _Waiter:
    executortype: str | None
    woken: asyncio.Event = field(default_factory=asyncio.Event)


class WorkSignals:
    """Wakes assigns waiting in a colony when the engine publishes a work ticket there.

    One core NATS subscription per colony (``colonies.work.<colony>.*``: it sees the
    tickets the engine publishes into the work stream, without consuming them). Each
    ticket wakes one waiter: the longest waiting whose executor type is the ticket's, else
    the longest waiting whose type is not known yet. Waiters also retry on their own
    (:data:`ASSIGN_RETRY`), so a missed or misdirected ticket costs at most that.
    """

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._waiters: dict[str, deque[_Waiter]] = {}
        self._subscriptions: dict[str, Subscription] = {}

    @contextlib.asynccontextmanager
    async def waiting(self, colonyname: str, executortype: str | None) -> AsyncIterator[_Waiter]:
        """Register a waiter for the duration of the block."""
        if colonyname not in self._subscriptions:
            self._subscriptions[colonyname] = await self._nc.subscribe(
                f"{WORK_PREFIX}.{colonyname}.*", cb=self._ticket
            )
        waiter = _Waiter(executortype)
        queue = self._waiters.setdefault(colonyname, deque())
        queue.append(waiter)
        try:
            yield waiter
        finally:
            queue.remove(waiter)

    async def _ticket(self, message: Msg) -> None:
        _, _, colonyname, executortype = message.subject.split(".", 3)
        queue = self._waiters.get(colonyname, ())
        idle = [w for w in queue if not w.woken.is_set()]
        chosen = next((w for w in idle if w.executortype == executortype), None) or next(
            (w for w in idle if w.executortype is None), None
        )
        if chosen is not None:
            chosen.woken.set()

    async def close(self) -> None:
        for subscription in self._subscriptions.values():
            with contextlib.suppress(nats.errors.Error):
                await subscription.unsubscribe()
        self._subscriptions.clear()


class SpentTickets:
    """Takes one work ticket off the work stream per process assigned through the gateway.

    A native executor consumes the ticket it claims with; an assign through the gateway
    claims without one, so without this each such process would leave a ticket in the
    (never purged) work stream, and native executors of that type would claim for nothing.
    One task, owned by the gateway, takes them one at a time (waiting
    :data:`SPENT_TICKET_WAIT` at most for each: a ticket already taken by a native
    executor that then found nothing is not there any more). A ticket taken that a ready
    process still needed is re-issued by the engine's reconciler within a second.
    """

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._spent: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._tickets: dict[tuple[str, str], WorkTickets] = {}
        self._task = asyncio.get_running_loop().create_task(self._take_forever())

    def spent(self, colonyname: str, executortype: str) -> None:
        """A process of this type was assigned through the gateway."""
        if NAME_PATTERN.match(colonyname) and NAME_PATTERN.match(executortype):
            self._spent.put_nowait((colonyname, executortype))

    async def _take_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            key = await self._spent.get()
            tickets = self._tickets.get(key)
            if tickets is None:
                tickets = self._tickets[key] = WorkTickets(self._nc, *key)
            try:
                ticket = await tickets.next(loop.time() + SPENT_TICKET_WAIT)
                if ticket is not None:
                    await ticket.ack()
            except nats.errors.Error as error:
                log.debug("could not take a spent ticket of %s: %r", key, error)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        for tickets in self._tickets.values():
            await tickets.close()


class Gateway:
    """The aiohttp application in front of the engine, over one NATS connection."""

    def __init__(self, access: NatsAccess, *, timeout: float = 10.0) -> None:
        """Reach NATS with ``access`` (a client's role: it only sends requests and reads
        work-ticket subjects). ``timeout`` (seconds) bounds each engine request and the
        wait for a websocket's first message."""
        self.access = access
        self.timeout = timeout
        self.nc: NATS | None = None
        self._signals: WorkSignals | None = None
        self._spent: SpentTickets | None = None
        self._types: dict[str, str] = {}  # executor id -> executor type, as learnt
        self._runner: web.AppRunner | None = None

    # ------------------------------------------------------------------ lifecycle

    def application(self) -> web.Application:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_post("/api", self._api)
        app.router.add_get("/health", self._health)
        app.router.add_get("/pubsub", self._pubsub)
        return app

    async def start(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        tls: ssl.SSLContext | None = None,
    ) -> int:
        """Connect to NATS and listen on ``host:port`` (0: a free port); return the port.
        With ``tls`` it serves HTTPS and WSS (pycolonies' ``tls=True``).

        Raises ``ConnectionError`` if NATS cannot be reached within
        :data:`CONNECT_TIMEOUT`, ``OSError`` if the port is taken.
        """
        try:
            nc: NATS = await asyncio.wait_for(
                self.access.connect(
                    "colonies-es gateway",
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    error_cb=self._nats_error,
                ),
                CONNECT_TIMEOUT,
            )
        except (TimeoutError, OSError, nats.errors.Error) as error:
            raise ConnectionError(f"cannot connect to NATS at {self.access.url}") from error
        self.nc = nc
        self._signals = WorkSignals(nc)
        self._spent = SpentTickets(nc)
        self._runner = web.AppRunner(self.application(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=tls)
        try:
            await site.start()
        except OSError:
            await self.stop()
            raise
        return int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop listening and close the NATS connection."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._signals is not None:
            await self._signals.close()
        if self._spent is not None:
            await self._spent.close()
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(nats.errors.Error):
                await self.nc.drain()

    async def _nats_error(self, error: Exception) -> None:
        """nats-py's error callback: one line per trouble once connected (before, the
        start says it in one line)."""
        if self.nc is not None:
            log.warning("NATS: %r", error)

    # ------------------------------------------------------------------ engine

    async def _engine(self, data: bytes) -> tuple[int, bytes, str]:
        """Send an envelope to the engine: (status, reply body, error message)."""
        assert self.nc is not None
        try:
            answer = await self.nc.request(ENGINE_SUBJECT, data, timeout=self.timeout)
        except nats.errors.NoRespondersError:
            return 503, b"", "no colonies engine is answering"
        except nats.errors.TimeoutError:
            return 503, b"", f"the colonies engine did not answer within {self.timeout} s"
        except nats.errors.MaxPayloadError:
            return 413, b"", f"the message is over the NATS message limit ({len(data)} bytes)"
        except nats.errors.Error as error:
            return 503, b"", f"NATS: {error!r}"
        code = (answer.headers or {}).get(ERROR_CODE_HEADER)
        if code is not None:
            return _status(code), b"", (answer.headers or {}).get(ERROR_HEADER, "")
        return 200, answer.data, ""

    # ------------------------------------------------------------------ routes

    async def _health(self, request: web.Request) -> web.Response:
        connected = self.nc is not None and self.nc.is_connected
        return web.Response(status=200 if connected else 503)

    async def _api(self, request: web.Request) -> web.Response:
        data = await request.read()
        envelope = _parse(data)
        if envelope is None:
            return _error(400, "malformed RPC message: expected {payloadtype, payload, signature}")
        payloadtype = envelope["payloadtype"]
        if payloadtype == "assignprocessmsg":
            status, body, message = await self._assign(request, data, envelope)
        else:
            status, body, message = await self._engine(data)
        if status != 200:
            return _error(status, message)
        result = shape(payloadtype, body)
        self._learn(payloadtype, result)
        return web.Response(body=reply(payloadtype, result), content_type="application/json")

    async def _assign(
        self, request: web.Request, data: bytes, envelope: dict[str, Any]
    ) -> tuple[int, bytes, str]:
        """The long poll: claim now, else wait for work until the message's timeout.

        The message's fields steer the waiting only; the engine verifies the envelope on
        every try and refuses a bad one at once (and ``timeout`` 0 with 400). It stops
        claiming when the caller has gone (a process claimed for nobody would wait for
        its execution time limit).
        """
        message = _payload(envelope)
        colonyname = message.get("colonyname")
        timeout = message.get("timeout")
        status, body, error = await self._engine(data)
        if (
            status != 404
            or not error.startswith(NOTHING_READY)
            or not isinstance(timeout, int | float)
            or timeout <= 0
            or not isinstance(colonyname, str)
            or not NAME_PATTERN.match(colonyname)
        ):
            return status, body, _nothing(status, error)
        assert self._signals is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        executortype = self._types.get(_caller(envelope))
        async with self._signals.waiting(colonyname, executortype) as waiter:
            while (remaining := deadline - loop.time()) > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter.woken.wait(), min(remaining, ASSIGN_RETRY))
                waiter.woken.clear()
                if request.transport is None or request.transport.is_closing():
                    break  # the caller is gone
                status, body, error = await self._engine(data)
                if status != 404 or not error.startswith(NOTHING_READY):
                    break
        return status, body, _nothing(status, error)

    def _learn(self, payloadtype: str, result: Any) -> None:
        """Remember executors' types (to wake the right waiting assign); count the work
        tickets assigns through the gateway leave behind."""
        if payloadtype == "addexecutormsg" and isinstance(result, dict):
            self._types[result.get("executorid", "")] = result.get("executortype", "")
        elif payloadtype == "assignprocessmsg" and isinstance(result, dict):
            conditions = (result.get("spec") or {}).get("conditions") or {}
            executortype = conditions.get("executortype", "")
            self._types[result.get("assignedexecutorid", "")] = executortype
            if self._spent is not None:
                self._spent.spent(conditions.get("colonyname", ""), executortype)

    async def _pubsub(self, request: web.Request) -> web.WebSocketResponse:
        """``wait()``: one ``subscribeprocessmsg``, one frame when the process reaches the
        requested state.

        Like ColonyOS, when the time runs out the socket is dropped without a close frame,
        which makes pycolonies' ``wait()`` raise. Unlike ColonyOS, a process that ended in
        another state (FAILED waiting for SUCCESS) drops it at once instead of at the
        timeout: it can never reach the requested state. A refused message gets an error
        frame and a normal close.
        """
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        try:
            first = await ws.receive(timeout=self.timeout)
        except TimeoutError:
            await ws.close()
            return ws
        data = first.data.encode() if first.type == WSMsgType.TEXT else b""
        envelope = _parse(data)
        if envelope is None or envelope["payloadtype"] != "subscribeprocessmsg":
            await ws.send_str(_error_text(400, "expected one subscribeprocessmsg"))
            await ws.close()
            return ws
        message = _payload(envelope)
        colonyname, processid = message.get("colonyname"), message.get("processid")
        wanted, timeout = message.get("state"), message.get("timeout")
        if (
            not isinstance(colonyname, str)
            or not NAME_PATTERN.match(colonyname)
            or not isinstance(processid, str)
            or not _PROCESS_ID.match(processid)
            or not isinstance(timeout, int | float)
        ):
            await ws.send_str(_error_text(400, "bad subscribeprocessmsg"))
            await ws.close()
            return ws
        assert self.nc is not None
        ended = await self.nc.subscribe(ended_subject(colonyname, processid))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                status, body, error = await self._engine(data)  # verified, member checked
                if status != 200:
                    await ws.send_str(_error_text(status, error))
                    await ws.close()
                    return ws
                process = shape("getprocessmsg", body)
                if process.get("state") == wanted:
                    await ws.send_str(reply("subscribeprocessmsg", process).decode())
                    await ws.close()
                    return ws
                remaining = deadline - loop.time()
                if process.get("state") in _ENDED_STATES or remaining <= 0:
                    break
                with contextlib.suppress(nats.errors.TimeoutError):
                    await ended.next_msg(timeout=min(remaining, ASSIGN_RETRY))
        finally:
            with contextlib.suppress(nats.errors.Error):
                await ended.unsubscribe()
        if request.transport is not None:
            request.transport.close()  # no close frame: pycolonies' wait() raises
        return ws


def _parse(data: bytes) -> dict[str, Any] | None:
    """The envelope as a dict, or None if it is not one (its fields are checked by the
    engine; here only what routing needs)."""
    try:
        envelope = json.loads(data)
    except ValueError:
        return None
    if not isinstance(envelope, dict) or not isinstance(envelope.get("payloadtype"), str):
        return None
    return envelope


def _payload(envelope: dict[str, Any]) -> dict[str, Any]:
    """The message inside, unverified (for routing only), or {} when unreadable."""
    try:
        message = json.loads(base64.b64decode(envelope.get("payload", "")))
    except (ValueError, TypeError):
        return {}
    return message if isinstance(message, dict) else {}


def _caller(envelope: dict[str, Any]) -> str:
    """The signer's id, or "" (for routing only: the engine verifies)."""
    try:
        return colonyos.recover_id(str(envelope.get("payload")), str(envelope.get("signature")))
    except Exception:
        return ""


def _nothing(status: int, error: str) -> str:
    """The engine's message, in ColonyOS's words when no process was available."""
    return (
        "No process available for assignment"
        if status == 404 and error.startswith(NOTHING_READY)
        else error
    )


def _status(code: str) -> int:
    try:
        return int(code)
    except ValueError:
        return 500


def _error_text(status: int, message: str) -> str:
    return error_reply(status, message).decode()


def _error(status: int, message: str) -> web.Response:
    return web.Response(
        status=status, body=error_reply(status, message), content_type="application/json"
    )
