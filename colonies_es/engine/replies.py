"""Answers to retried commands: a retry gets the original reply, never a second effect.

A client whose command timed out (the replica answering it was killed, the reply was
lost) sends the same signed bytes again; the command's replay key (signer and nonce)
identifies it. :class:`Replies` remembers, per replay key:

- an :class:`Applied` mark, recorded by every replica that applied the command's event:
  the one that decided it, and the others from the log (the follower, the rebuild):
  where the event went, so that the reply is computed again from the aggregate (see
  ``ColoniesApp._reply_to_applied``; no reply body is kept), or
- a :class:`Decided` refusal (status and message) of the replica that refused it, or the
  mark that it was a read (answered by reading again).

Entries only matter while the command is fresh: a retry older than the freshness window
is refused as stale before it gets here. So entries older than ``2 * window`` seconds are
dropped, and at most ``limit`` are kept (the oldest go first).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["Applied", "Decided", "Replies"]


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

    def remember(self, replay_key: str, entry: Decided | Applied) -> None:
        """Records ``entry``; a :class:`Decided` reply is never replaced by an
        :class:`Applied` mark (the follower seeing the replica's own write)."""
        now = time.monotonic()
        known = self._entries.get(replay_key)
        if known is not None and isinstance(known[1], Decided) and isinstance(entry, Applied):
            return
        self._entries[replay_key] = (now, entry)
        self._entries.move_to_end(replay_key)
        horizon = now - 2 * self.window
        while self._entries:
            oldest_key, (when, _) = next(iter(self._entries.items()))
            if when >= horizon and len(self._entries) <= self.limit:
                break
            del self._entries[oldest_key]
