"""A subscription's messages handed over as raw frames, parsed without nats-py's objects.

nats-py reads every message through its protocol parser (a regular expression per
control line, an argument dict), an ``await`` of ``Client._process_msg`` (statistics, the
subscription's lookup, a header parse, a ``Msg`` object with its subject and reply
decoded) and the subscription's queue: about 6 us a message on this project's 2-core
machine, which is what a reader of the whole log (a projector rebuilding its view, an
engine catching up) pays per event before any work of its own. :func:`deliver_frames`
hands each message of a subscription that has a reply subject (every message a pull
consumer delivers: ``$JS.ACK...``) to a function as ``(subject, reply, payload)`` bytes,
sliced straight from the read buffer, *without its headers* (the store never reads the
headers a message was stored with: the engine's ``Nats-Expected-Last-Subject-Sequence``,
batch and message ids).

While a subscription takes frames, the connection's parser takes every whole ``MSG``
and ``HMSG`` frame itself: the other subscriptions' frames, and the subscription's
messages without a reply subject (a pull's status messages: 404, 408, 409, heartbeats,
which have headers and no reply), go to nats-py's ``Client._process_msg`` as its own
parser hands them; so a subscription taking frames must also take its messages as
``Msg`` objects (its callback, or :func:`~colonies_es.nats_hot_path.deliver_inline`)
and treat both alike. A frame not all read yet waits in the buffer for the next read;
any other operation (``PING``, ``+OK``, ``-ERR``, ``INFO``) and what follows it in the
buffer go to nats-py's parser.

It wraps the connection's parser object (``Client._ps``, as nats-py 2.16 has it) and
works on that parser's own buffer and state: nats-py keeps calling ``_ps.parse`` from
its read loop, and a parse in progress when the wrapper is installed simply finishes.
Where the attributes are not found, :func:`deliver_frames` changes nothing and returns
False (every message then goes nats-py's way).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from nats.protocol.parser import AWAITING_CONTROL_LINE, MAX_CONTROL_LINE_SIZE, Parser

__all__ = ["FrameHandler", "deliver_frames", "stop_frames"]

log = logging.getLogger("colonies.nats")

FrameHandler = Callable[[bytes, bytes, bytes], None]
"""Called with a message's subject, reply subject and payload (without headers)."""

_CRLF = b"\r\n"


class _FrameParser:
    """Wraps a connection's nats-py parser: the messages with a reply subject of the
    subscriptions in :attr:`handlers` go to their handler, everything else the way
    nats-py's parser sends it."""

    def __init__(self, client: NATS, inner: Parser) -> None:
        self._client = client
        self._inner = inner
        self.handlers: dict[int, FrameHandler] = {}
        """Subscription id -> the function its frames are given to."""

    def __getattr__(self, name: str) -> Any:  # the rest of nats-py's parser
        return getattr(self._inner, name)

    async def parse(self, data: bytes = b"") -> None:
        """Takes the whole ``MSG`` and ``HMSG`` frames at the front of the buffer (those
        of :attr:`handlers` with a reply subject to their handler, without headers; the
        others to nats-py's ``_process_msg``, as its parser would), then lets nats-py's
        parser go on from the first other operation (with everything after it). A frame
        not all read yet waits in the buffer for the next read."""
        inner = self._inner
        buffer = inner.buf
        buffer.extend(data)
        handlers = self.handlers
        client = self._client
        while handlers and inner.state == AWAITING_CONTROL_LINE:
            if buffer.startswith(b"HMSG "):
                skip = 5
            elif buffer.startswith(b"MSG "):
                skip = 4
            else:
                break
            end = buffer.find(_CRLF)
            if end < 0:
                if len(buffer) < MAX_CONTROL_LINE_SIZE:
                    return  # the control line is not all here yet: wait for more bytes
                break  # nats-py's parser says what is wrong
            arguments = bytes(buffer[skip:end]).split()
            try:  # MSG <subject> <sid> [reply] <size>, HMSG ... [reply] <header size> <size>
                header_size = int(arguments.pop(-2)) if skip == 5 else 0
                size, sid = int(arguments.pop()), int(arguments[1])
            except (IndexError, ValueError):
                break  # malformed: nats-py's parser says so
            if len(arguments) == 3:
                subject, _, reply = arguments
            elif len(arguments) == 2:
                subject, reply = arguments[0], b""
            else:
                break
            start = end + 2
            stop = start + size
            if len(buffer) < stop + 2:
                return  # the payload is not all here yet: wait for more bytes
            # Messages with no reply subject (a pull's statuses) go nats-py's way.
            handler = handlers.get(sid) if reply else None
            if handler is None:
                headers = bytes(buffer[start : start + header_size]) if header_size else None
                payload = bytes(buffer[start + header_size : stop])
                del buffer[: stop + 2]
                await client._process_msg(sid, subject, reply, payload, headers)  # type: ignore[arg-type]
                continue
            payload = bytes(buffer[start + header_size : stop])
            del buffer[: stop + 2]
            stats = client.stats
            stats["in_msgs"] += 1
            stats["in_bytes"] += stop - start - header_size
            try:
                handler(subject, reply, payload)
            except Exception:  # never into nats-py's read loop, which would drop the link
                log.exception("delivering a message on %s failed", subject.decode(errors="replace"))
        await inner.parse()


def deliver_frames(subscription: Subscription, handler: FrameHandler) -> bool:
    """From now on, each message of ``subscription`` with a reply subject is given to
    ``handler(subject, reply, payload)`` (its headers left out) at once, on the
    connection's event loop, instead of becoming a ``Msg``; messages without a reply
    subject still become ``Msg`` objects (see the module doc). ``handler`` must be quick
    and must not block; what it raises is logged. Undo with :func:`stop_frames` (before
    or after unsubscribing). Returns False, changing nothing, when this nats-py does not
    have the attributes it relies on."""
    client = getattr(subscription, "_conn", None)
    sid = getattr(subscription, "_id", None)
    if not isinstance(client, NATS) or not isinstance(sid, int):
        return False
    parser = getattr(client, "_ps", None)
    if isinstance(parser, _FrameParser):
        parser.handlers[sid] = handler
        return True
    if not isinstance(parser, Parser) or not isinstance(getattr(parser, "buf", None), bytearray):
        return False
    frames = _FrameParser(client, parser)
    frames.handlers[sid] = handler
    client._ps = frames  # type: ignore[assignment]
    return True


def stop_frames(subscription: Subscription) -> None:
    """Frames of ``subscription`` go nats-py's way again (no-op if they already do)."""
    parser = getattr(getattr(subscription, "_conn", None), "_ps", None)
    if isinstance(parser, _FrameParser):
        parser.handlers.pop(getattr(subscription, "_id", -1), None)
