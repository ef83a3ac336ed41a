"""Messages handed to a plain function as nats-py reads them, without a task in between.

nats-py delivers a subscription's messages through an ``asyncio.Queue`` read by a task
of the subscription (``Subscription._wait_for_msgs``), which awaits the callback: every
message costs a queue put, a wake-up of that task (one more step of the event loop
before anything happens) and a queue get. For the subscriptions on a hot path whose
work per message is a few lines that never wait (set a request's future, note a log
message, start the task that handles a command), that machinery is most of the cost.
:func:`deliver_inline` replaces the subscription's queue with one that calls a function
at once, inside nats-py's read of the socket.

**Writing a lone request at once** (:func:`write_now`). ``publish`` appends a message to
the connection's pending buffer and wakes nats-py's flusher task, which writes the buffer
one step of the event loop later. A client that has one request in flight and nothing
else to send (a script's ``submit`` then ``wait``, an idle executor's close) gains
nothing from that wait; :class:`~colonies_es.reply_inbox.ReplyInbox` writes such a
request at once. Writing *every* reply or append at once was measured and dropped: at
throughput it split the writes the flusher batches, and nats-server's CPU per process
doubled (DESIGN.md, "The engine's critical path", sixth session).

**Publishing without nats-py's per-call work** (:func:`publish`). nats-py's ``publish``
checks the subject and reply with a regular expression each, and builds the header block
key by key (a regular expression per key, a strip, a translation and an encode per
value): 5.0 us for a publish with the engine's two headers against 1.3 us for the same
frame built at once (20,000 publishes, load 4). The engine publishes six such messages
per process (two replies, three appends, a ticket), a client and an executor one each
(their request). :func:`publish` writes the very bytes nats-py would for the input it
takes (a header name checked once, values without line breaks or outer blanks) and
hands everything else to nats-py's ``publish``.

All of these reach into nats-py (``Subscription._pending_queue`` and ``_pending_size``;
``Client._pending``, ``_pending_data_size``, ``_transport``, ``_flush_queue``,
``_flush_pending``, ``_max_payload`` and ``_max_pending_size``, as nats-py 2.16 has them):
where those are not found, nats-py's own path is kept.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.aio.transport import TcpTransport
from nats.protocol.command import hpub_cmd, pub_cmd

__all__ = ["deliver_inline", "publish", "publish_now", "write_now"]

log = logging.getLogger("colonies.nats")


class _Inline(asyncio.Queue[Msg]):
    """A subscription's pending queue that hands each message to ``deliver`` at once.

    Nothing is ever queued: the subscription's own task waits on it forever (until the
    subscription ends), ``qsize()`` is 0 and ``join()`` (a drain) returns at once."""

    def __init__(self, subscription: Subscription, deliver: Callable[[Msg], None]) -> None:
        super().__init__()
        self._subscription = subscription
        self._deliver = deliver

    def put_nowait(self, item: Msg) -> None:
        # nats-py counted the bytes as pending (its slow-consumer limit): they are not.
        self._subscription._pending_size -= len(item.data)
        try:
            self._deliver(item)
        except Exception:  # never into nats-py's read loop, which would drop the connection
            log.exception("delivering a message on %s failed", item.subject)


def deliver_inline(subscription: Subscription, deliver: Callable[[Msg], None]) -> bool:
    """From now on, each message of ``subscription`` is given to ``deliver(msg)`` while
    nats-py reads it from the socket (in order, on the connection's event loop), instead
    of to the subscription's callback. ``deliver`` must be quick and must not block: it
    holds up every other message of the connection. What it raises is logged.

    Call it right after subscribing, before the event loop runs again (so that no
    message went the ordinary way). Returns False, changing nothing, when this nats-py
    does not keep the attributes it relies on."""
    queue = getattr(subscription, "_pending_queue", None)
    if not isinstance(queue, asyncio.Queue) or not isinstance(
        getattr(subscription, "_pending_size", None), int
    ):
        return False
    subscription._pending_queue = _Inline(subscription, deliver)
    return True


def write_now(nc: NATS) -> None:
    """Write what ``nc`` has pending (the messages published so far, in order) to its
    socket now instead of when nats-py's flusher task runs (it then finds nothing to
    write). Does nothing while ``nc`` is not connected (nats-py keeps the buffer for the
    reconnection), on a transport other than TCP (a WebSocket writes in a task of its
    own), or on a nats-py without the attributes it relies on."""
    transport = getattr(nc, "_transport", None)
    pending = getattr(nc, "_pending", None)
    if (
        not pending
        or not isinstance(pending, list)
        or not isinstance(transport, TcpTransport)
        or not isinstance(getattr(nc, "_pending_data_size", None), int)
        or not nc.is_connected
    ):
        return
    transport.writelines(pending)  # type: ignore[no-untyped-call]  # sent at once if it fits
    nc._pending = []
    nc._pending_data_size = 0


def publish_now(nc: NATS, frame: bytes) -> bool:
    """Queue the protocol ``frame`` (a whole ``PUB`` or ``HPUB``, as nats-py's ``publish``
    builds it) behind what ``nc`` has pending and write it all now (:func:`write_now`),
    without running the event loop: for a process that does not run one while it works
    (a function's child sending its close, :mod:`~colonies_es.child_close`). False, and
    nothing queued, while ``nc`` is not connected or on a nats-py without the attributes
    this relies on."""
    pending = getattr(nc, "_pending", None)
    if (
        not isinstance(pending, list)
        or not isinstance(getattr(nc, "_pending_data_size", None), int)
        or not nc.is_connected
    ):
        return False
    pending.append(frame)
    nc._pending_data_size += len(frame)
    write_now(nc)
    return True


_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
"""A header name nats-py sends as it is (its own rule: an HTTP token)."""
_NOT_IN_SUBJECT = re.compile(r"[ \t\r\n]")
"""What nats-py refuses in a subject or reply (it would break the protocol line)."""
_NOT_IN_VALUE = re.compile(r"[\r\n]|^\s|\s$")
"""A header value nats-py would change (line breaks to blanks, outer blanks stripped):
left to nats-py."""
_names: dict[str, bytes] = {}
"""Header names already checked, with their encoding (at most :data:`_NAMES_KEPT`)."""
_NAMES_KEPT = 64
_FAST_PUBLISH = all(
    hasattr(NATS, name)
    for name in ("_flush_pending", "is_connected", "is_draining_pubs", "is_closed")
)


async def publish(
    nc: NATS,
    subject: str,
    payload: bytes = b"",
    reply: str = "",
    headers: Mapping[str, str] | None = None,
) -> None:
    """``nc.publish(subject, payload, reply=reply, headers=headers)``, the same frame
    queued the same way (behind what is pending, nats-py's flusher woken), without
    nats-py's per-call checks and header building (see the module doc). Anything out
    of the ordinary goes through nats-py's ``publish`` itself, which raises what it
    raises: a subject or reply with blanks or line breaks, an empty subject, a header
    value with line breaks or outer blanks, a header name that is not a token, a payload
    over the server's limit, a connection that is not connected (reconnecting, closed,
    draining), a nats-py without the attributes this relies on."""
    frame = _frame(nc, subject, payload, reply, headers)
    if frame is None:
        await nc.publish(
            subject, payload, reply=reply, headers=None if headers is None else dict(headers)
        )
        return
    nc._pending.append(frame)
    nc._pending_data_size += len(frame)
    stats = nc.stats
    stats["out_msgs"] += 1
    stats["out_bytes"] += len(payload)
    if 0 < nc._max_pending_size < nc._pending_data_size:
        await nc._flush_pending(force_flush=True)
    flushing = nc._flush_queue
    if flushing is not None and flushing.empty():
        await nc._flush_pending()


def _frame(
    nc: NATS, subject: str, payload: bytes, reply: str, headers: Mapping[str, str] | None
) -> bytes | None:
    """The ``PUB``/``HPUB`` frame nats-py would queue, or None to leave it to nats-py."""
    if (
        not _FAST_PUBLISH
        or not subject
        or not nc.is_connected
        or nc.is_draining_pubs
        or not isinstance(getattr(nc, "_pending", None), list)
        or not isinstance(getattr(nc, "_max_payload", None), int)
        or not isinstance(getattr(nc, "_max_pending_size", None), int)
        or getattr(nc, "_flush_queue", None) is None
        or len(payload) > nc._max_payload
        or _NOT_IN_SUBJECT.search(subject)
        or (reply and _NOT_IN_SUBJECT.search(reply))
    ):
        return None
    if not headers:
        return pub_cmd(subject, reply, payload) if headers is None else None
    block = [b"NATS/1.0\r\n"]
    for name, value in headers.items():
        encoded = _names.get(name)
        if encoded is None:
            if not _HEADER_NAME.fullmatch(name):
                return None
            encoded = name.encode() + b": "
            if len(_names) < _NAMES_KEPT:
                _names[name] = encoded
        if _NOT_IN_VALUE.search(value):
            return None
        block += (encoded, value.encode(), b"\r\n")
    block.append(b"\r\n")
    return hpub_cmd(subject, reply, b"".join(block), payload)
