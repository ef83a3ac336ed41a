"""One graph's events for the ``graph_events`` query: read by the projector, given to
members only.

History, time travel, debug and the audit of one graph need the graph's events and its
colony's. Clients may not read the stream (NATS authorization, DESIGN.md "Who may touch
NATS"); they send the signed query ``graph_events`` instead, and the projector answers
after the membership check of ``get_graph`` (:meth:`QueryService`), with what this module
reads:

- the messages the engine sealed (with the log's seal key) as events; whatever else was
  appended to the graph's subjects is handed out marked ``trusted=False``, as it is, for
  the audit to report, and is never read as an event;
- the state in clear when the log is encrypted (the projector holds the cipher key, the
  client does not need it); the seal, which covered the encrypted bytes, is dropped;
- at most about :data:`REPLY_BUDGET` of a reply's bytes at a time (``more`` says there is
  more; the client asks again after the last sequence it got).

:class:`FetchedEvents` is the client's side: the messages of the replies, readable by
:func:`~projections.history.graph_history` and :func:`~projections.audit.verify_graph`
like the log itself.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec
from eventsourcing.persistence import Cipher, Compressor
from nats.aio.client import Client as NATS

from colonies_es.projections.history import colony_subject, graph_subject, open_log
from colonies_es.projections.protocol import GraphEvents, RawEvent
from colonies_es.store.codec import Sealer, decode_envelope
from colonies_es.store.jetstream import StoredMessage

__all__ = ["REPLY_BUDGET", "FetchedEvents", "GraphEventReader"]

REPLY_BUDGET = 0.6
"""Share of the NATS max_payload one reply's events may take (JSON's base64 of the
payloads adds a third)."""

_encoder = msgspec.msgpack.Encoder()


class GraphEventReader:
    """Reads a graph's trusted events, in clear, on the projector's connection."""

    def __init__(
        self,
        nc: NATS,
        sealer: Sealer | None = None,
        cipher: Cipher | None = None,
        compressor: Compressor | None = None,
    ) -> None:
        self.nc = nc
        self.sealer = sealer
        self.cipher = cipher
        self.compressor = compressor

    async def read(self, colonyname: str, processgraphid: str, start: int) -> GraphEvents:
        """The events of the graph and of its colony from stream sequence ``start``, in
        order, as many as fit in one reply."""
        log = open_log(self.nc)
        messages = await log.read_subject(graph_subject(colonyname, processgraphid))
        messages += await log.read_subject(colony_subject(colonyname))
        budget = int(self.nc.max_payload * REPLY_BUDGET)
        events: list[RawEvent] = []
        for message in sorted(messages, key=lambda m: m.sequence):
            if message.sequence < start:
                continue
            event = self._in_clear(message)
            budget -= len(event.payload) + len(event.subject) + 64
            if budget < 0 and events:
                return GraphEvents(events=events, more=True)
            events.append(event)
        return GraphEvents(events=events)

    def _in_clear(self, message: StoredMessage) -> RawEvent:
        """The message with its state decrypted; as it is, untrusted, if the engine did
        not seal it (or it does not decrypt)."""
        untrusted = RawEvent(
            sequence=message.sequence,
            subject=message.subject,
            timestamp_ns=message.timestamp_ns,
            payload=message.payload,
            trusted=False,
        )
        if self.sealer is not None and not self.sealer.is_sealed(message.subject, message.payload):
            return untrusted
        try:
            envelope = decode_envelope(message.payload)
            state = envelope.state
            if self.cipher is not None:
                state = self.cipher.decrypt(state)
            if self.compressor is not None:
                state = self.compressor.decompress(state)
        except Exception:  # not an envelope, a wrong key, a damaged message
            return untrusted
        clear = msgspec.structs.replace(envelope, state=state, seal=None)
        return msgspec.structs.replace(untrusted, payload=_encoder.encode(clear), trusted=True)


class FetchedEvents:
    """The messages of ``graph_events`` replies, read like the log (``read_subject``):
    the trusted ones only, or all of them with ``untrusted`` (for the audit)."""

    def __init__(self, events: Iterable[RawEvent], untrusted: bool = False) -> None:
        self.events = list(events)
        self._messages = [
            StoredMessage(
                sequence=event.sequence,
                subject=event.subject,
                payload=event.payload,
                timestamp_ns=event.timestamp_ns,
            )
            for event in self.events
            if event.trusted or untrusted
        ]

    @property
    def unsealed(self) -> frozenset[int]:
        """Sequences of the messages the engine did not seal."""
        return frozenset(event.sequence for event in self.events if not event.trusted)

    def including_untrusted(self) -> FetchedEvents:
        """The same messages, the untrusted ones included (what the audit reads)."""
        return FetchedEvents(self.events, untrusted=True)

    async def read_subject(self, subject: str) -> list[StoredMessage]:
        """The messages on ``subject`` (a ``*`` token matches any one token), in order."""
        pattern = subject.split(".")
        return [m for m in self._messages if _matches(pattern, m.subject.split("."))]


def _matches(pattern: list[str], tokens: list[str]) -> bool:
    if len(pattern) != len(tokens):
        return False
    return all(wanted in ("*", token) for wanted, token in zip(pattern, tokens, strict=True))
