"""Answers to retried commands: a retry gets the original reply, never a second effect.

A client whose command timed out (the replica answering it was killed, the reply was
lost) sends the same signed bytes again; the command's replay key (signer and nonce)
identifies it. :class:`Replies` remembers, per replay key:

- an :class:`Applied` mark, recorded by every replica that applied the command's event:
  the one that decided it, and the others from the log (the follower, the rebuild):
  where the event went, so that the reply is computed again from the aggregate (see
  ``ColoniesApp._reply_to_applied``; no reply body is kept; a claim's is the assignment
  its own event made while that attempt is live, else "nothing ready"), or
- a :class:`Decided` refusal (status and message) of the replica that refused it, the
  mark that it was a read (answered by reading again), or the mark that its write went
  unanswered (:data:`UNSURE`: stored or not, the log says; an :class:`Applied` mark
  replaces it when the follower finds the event).

Entries only matter while the command is fresh: a retry older than the freshness window
is refused as stale before it gets here. So entries older than ``2 * window`` seconds are
dropped, and at most ``limit`` are kept (the oldest go first).
"""

from __future__ import annotations

import functools
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

import msgspec

from colonies_es import crypto
from colonies_es.domain import AuditedEvent

__all__ = ["UNSURE", "Applied", "Decided", "RememberedCommand", "Replies", "SeenCommands"]

UNSURE = -1
"""The status of a :class:`Decided` mark meaning "its append went unanswered (the log
failed, 503): whether its event was stored is unknown here". A retry is answered once
this replica has applied the log to its end: by the :class:`Applied` mark that replaces
this one if the event was stored, else by deciding the command anew."""


@dataclass(frozen=True, slots=True)
class Decided:
    """The reply this replica gave: status, body (200) or message, sequence written."""

    status: int
    body: bytes
    message: str
    sequence: int


@dataclass(frozen=True, slots=True)
class Applied:
    """A command whose event this replica applied from the log: the op, the aggregate
    and, for ops that answer about one process, that process (``subject``)."""

    op: str
    aggregate_id: str
    subject: str
    sequence: int


class RememberedCommand(msgspec.Struct, array_like=True, frozen=True):
    """A command of the window whose event is in the log, as a checkpoint keeps it: its
    replay key and signing time (for the replay guard) and its :class:`Applied` mark."""

    key: str
    ts: float
    op: str
    aggregate_id: str
    subject: str
    sequence: int


class Replies:
    """A bounded map from replay key to the command's reply (see the module doc)."""

    def __init__(self, window: float, limit: int = 50_000) -> None:
        self.window = window
        self.limit = limit
        self._entries: OrderedDict[str, tuple[float, Decided | Applied]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, replay_key: str) -> Decided | Applied | None:
        found = self._entries.get(replay_key)
        return None if found is None else found[1]

    def applied(self) -> list[tuple[str, Applied]]:
        """The :class:`Applied` marks (replay key, mark), oldest first: what the log
        says about the window's commands (for checkpoints; refusals are this replica's)."""
        return [
            (key, entry) for key, (_, entry) in self._entries.items() if isinstance(entry, Applied)
        ]

    def remember(self, replay_key: str, entry: Decided | Applied) -> None:
        """Records ``entry``; a :class:`Decided` reply is never replaced by an
        :class:`Applied` mark (the follower seeing the replica's own write), but for an
        :data:`UNSURE` one (the write went unanswered, and the log has it)."""
        now = time.monotonic()
        known = self._entries.get(replay_key)
        if (
            known is not None
            and isinstance(known[1], Decided)
            and known[1].status != UNSURE
            and isinstance(entry, Applied)
        ):
            return
        self._entries[replay_key] = (now, entry)
        self._entries.move_to_end(replay_key)
        horizon = now - 2 * self.window
        while self._entries:
            oldest_key, (when, _) = next(iter(self._entries.items()))
            if when >= horizon and len(self._entries) <= self.limit:
                break
            del self._entries[oldest_key]


class _StoredCommand(msgspec.Struct):
    """What :class:`SeenCommands` reads of a stored :class:`~colonies_es.crypto.SignedCommand`:
    its signature was checked when the command was accepted, so no field is validated
    again (the patterns of the full type cost most of a decode)."""

    payload: bytes
    public_key: str


class _StoredPayload(msgspec.Struct):
    op: str
    ts: float
    nonce: str = ""


_decode_stored_command = msgspec.json.Decoder(_StoredCommand).decode
_decode_stored_payload = msgspec.json.Decoder(_StoredPayload).decode
_id_of_key = functools.lru_cache(maxsize=4096)(crypto.id_from_public_key)


class SeenCommands:
    """The commands this replica knows were applied, fed from every event it applies or
    writes: the replay guard (a command is accepted once) and the :class:`Replies` of
    retries. Both survive restarts (the rebuild feeds them) and see what other replicas
    accepted (the follower feeds them)."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.guard = crypto.ReplayGuard(window)
        self.replies = Replies(window)

    def remember(
        self,
        event: AuditedEvent,
        sequence: int,
        now: datetime,
        command: crypto.VerifiedCommand | None = None,
    ) -> None:
        """Notes the signed command ``event`` carries, if it is recent enough to matter.
        ``command``: that command as this replica verified it (the replica writing the
        event knows it): its fields are taken as they are instead of decoding the
        stored bytes again (the same values: the event stores ``command.command``)."""
        if not event.command or (now - event.timestamp).total_seconds() > 2 * self.window:
            return
        checked = command is not None and isinstance(command.command, crypto.SignedCommand)
        if command is not None and checked:
            caller, op = command.caller_id, command.op
            nonce, ts = command.nonce, command.ts
        else:
            try:
                signed = _decode_stored_command(event.command)
                payload = _decode_stored_payload(signed.payload)
                caller = _id_of_key(signed.public_key)
            except (msgspec.DecodeError, ValueError):  # e.g. a ColonyOS envelope (no nonce)
                return
            op, nonce, ts = payload.op, payload.nonce, payload.ts
        if not nonce:
            return
        replay_key = f"{caller}:{nonce}"
        if not checked:  # a command this replica decided is in the guard since its check
            self.guard.remember(replay_key, ts, now.timestamp())
        subject = getattr(event, "processid", None) or ""
        child = getattr(event, "child", None)
        if child is not None:
            subject = child["processid"]
        attribute = getattr(event, "attributeid", None)
        if attribute:
            subject = f"{subject}:{attribute}"
        self.replies.remember(replay_key, Applied(op, event.originator_id, subject, sequence))

    def capture(self) -> list[RememberedCommand]:
        """The window's commands whose events are in the log, for a checkpoint."""
        return [
            RememberedCommand(key, ts, mark.op, mark.aggregate_id, mark.subject, mark.sequence)
            for key, mark in self.replies.applied()
            if (ts := self.guard.signed_at(key)) is not None
        ]

    def restore(self, commands: list[RememberedCommand], now: datetime) -> None:
        """Remembers a checkpoint's commands, as :meth:`remember` would have from their
        events (those signed more than ``2 * window`` before ``now`` no longer matter)."""
        moment = now.timestamp()
        for command in commands:
            if moment - command.ts > 2 * self.window:
                continue
            self.guard.remember(command.key, command.ts, moment)
            self.replies.remember(
                command.key,
                Applied(command.op, command.aggregate_id, command.subject, command.sequence),
            )
