"""How a replica's state follows the log: the rebuild at start, then the follower.

:meth:`Follower.rebuild` replays the whole log into :class:`~.state.EngineState`
(aggregates, indices, timers) and feeds the recent commands to the replay guard and the
replies of retries (:class:`~.replies.SeenCommands`). :meth:`Follower.follow` then applies
every event appended after it, by any replica, forever: events this replica wrote itself
are already in (their versions tell) and are skipped without decoding; an event that
does not follow the cached aggregate (a gap) makes the aggregate catch up from its own
subject (:meth:`~.aggregates.Aggregates.catch_up`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime

from eventsourcing.persistence import Notification

from colonies_es.engine.aggregates import Aggregates
from colonies_es.engine.state import NotNext
from colonies_es.store.codec import Envelope, to_notification
from colonies_es.store.jetstream import StoredMessage

__all__ = ["Follower"]

log = logging.getLogger("colonies.engine")

PAGE = 1000
"""Events read per request while rebuilding."""


class Follower:
    """Applies the log to the aggregates' state (see the module doc)."""

    def __init__(self, aggregates: Aggregates) -> None:
        self.aggregates = aggregates
        self.state = aggregates.state
        self.seen = aggregates.seen

    def rebuild(self) -> None:
        """Replays the whole log into memory: aggregates, indices, timers, seen commands.

        :meth:`follow` goes on from the last sequence read here."""
        now = datetime.now(UTC)
        count = 0
        last = 0
        for notification in self._all_notifications():
            last = notification.id
            event = self.aggregates.decode(notification)
            if event is None:
                continue
            try:
                self.state.apply(event, notification.id, index=False)
            except Exception as error:  # an event that does not fit: not ours
                log.warning("skipping event %s: %r", notification.id, error)
                continue
            self.aggregates.log.remember_head(
                self.aggregates.subject_of(event.originator_id),
                event.originator_version,
                notification.id,
            )
            self.seen.remember(event, notification.id, now)
            count += 1
        self.state.index_all(last)
        self.state.advance(last)
        log.info(
            "rebuilt %d aggregates from %d events (log at %d)",
            len(self.state.aggregates),
            count,
            last,
        )

    def _all_notifications(self) -> Iterator[Notification]:
        start = 0
        while True:
            page = self.aggregates.store.select_notifications(start, PAGE, inclusive_of_start=False)
            yield from page
            if len(page) < PAGE:
                return
            start = page[-1].id

    async def follow(self) -> None:
        """Applies every event appended after the rebuild, by any replica, forever."""
        store = self.aggregates.store
        async for batch in self.aggregates.log.follow(store.events_filter, self.state.applied):
            now = datetime.now(UTC)
            for message in batch:
                envelope = store.connection.trusted(message)
                if envelope is not None:
                    await self._follow_one(message, envelope, now)
            self.state.advance(batch[-1].sequence)

    async def _follow_one(self, message: StoredMessage, envelope: Envelope, now: datetime) -> None:
        aggregates = self.aggregates
        aggregate_id = str(envelope.originator_id)
        version = envelope.originator_version
        aggregates.log.remember_head(message.subject, version, message.sequence)
        if aggregates.busy(aggregate_id):
            async with aggregates.lock(aggregate_id):  # a decision being written: let it install
                pass
        cached = self.state.aggregates.get(aggregate_id)  # resident only (see state.py)
        if cached is not None and cached.version >= version:
            return  # already in: this replica's own write, or a catch-up got it
        event = aggregates.decode(to_notification(envelope, message.sequence))
        if event is None:
            return
        try:
            self.state.apply(event, message.sequence)
        except NotNext:
            await aggregates.catch_up(aggregate_id)
        except Exception as error:  # an event that does not fit: not ours
            log.warning("skipping event %s: %r", message.sequence, error)
            return
        self.seen.remember(event, message.sequence, now)
