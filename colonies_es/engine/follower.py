"""How a replica's state follows the log: the rebuild at start, then the follower.

:meth:`Follower.rebuild` brings :class:`~.state.EngineState` (aggregates, indices, timers)
and the recent commands (the replay guard and the replies of retries,
:class:`~.replies.SeenCommands`) up to the log's end: from the newest checkpoint
(:mod:`.checkpoint`), or by replaying the whole log when there is no usable checkpoint.
:meth:`Follower.catch_up_with_log` then applies what follows the checkpoint, as the
follower does, before the engine serves. :meth:`Follower.follow` then applies
every event appended after it, by any replica, forever: events this replica wrote and
installed itself are skipped by their sequence, without decoding or checking the seal
(an own event whose install is still under way: by its version, once installed); an
event that does not follow the cached aggregate (a gap) makes the aggregate catch up
from its own subject (:meth:`~.aggregates.Aggregates.catch_up`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Iterator
from datetime import UTC, datetime
from typing import cast

from eventsourcing.persistence import Notification, OperationalError

from colonies_es.domain import AuditedEvent
from colonies_es.engine.aggregates import Aggregates
from colonies_es.engine.checkpoint import Checkpoint, CheckpointStore
from colonies_es.engine.state import NotNext
from colonies_es.store.codec import Envelope, to_notification
from colonies_es.store.jetstream import StoredMessage

__all__ = ["Follower"]

log = logging.getLogger("colonies.engine")

PAGE = 1000
"""Events read per request while rebuilding."""

LOG_END_WAIT = 30.0
"""Seconds start-up keeps asking for the log's last event (see ``_log_end``)."""

REPLAY_EVICTS_EVERY = 10_000
"""Events between two evictions of ended graphs while the whole log is replayed
(:meth:`EngineState.evict_ended_while_rebuilding`)."""

PARALLEL_READS = 64
"""Aggregates read from their subjects at once when starting from a checkpoint."""


class Follower:
    """Applies the log to the aggregates' state (see the module doc)."""

    def __init__(self, aggregates: Aggregates) -> None:
        self.aggregates = aggregates
        self.state = aggregates.state
        self.seen = aggregates.seen

    def rebuild(self) -> None:
        """Brings the state up to the log's end: from the newest usable checkpoint and
        the log after it, else (none, or refused: one log line says why) by replaying
        the whole log. :meth:`follow` goes on from the last sequence read here."""
        checkpoint, reason = self._read_checkpoint()
        if checkpoint is not None:
            try:
                self._restore(checkpoint)
                return
            except (ValueError, IndexError) as error:  # indices that do not fit: nothing taken
                reason = f"the checkpoint's indices do not fit ({error})"
        log.info("replaying the whole log: %s", reason)
        self._replay_all()

    def _read_checkpoint(self) -> tuple[Checkpoint | None, str]:
        store = self.aggregates.store
        checkpoints = CheckpointStore.of_log(
            store.connection.nc, store, self.aggregates.mapper.cipher
        )
        found: tuple[Checkpoint | None, str] = store.connection.run(checkpoints.read())
        checkpoint, reason = found
        if checkpoint is None:
            return None, "no usable checkpoint (" + reason + ")"
        return checkpoint, ""

    def _replay_all(self) -> None:
        """Replays the whole log into memory: aggregates, indices, timers, seen commands.
        Ended graphs leave memory every :data:`REPLAY_EVICTS_EVERY` events; an event on
        one of them brings it back from its own subject (``Aggregates.catch_up``)."""
        store = self.aggregates.store
        now = datetime.now(UTC)
        count = evicted = 0
        last = 0
        for notification in self._notifications_after(0):
            last = notification.id
            event = self.aggregates.decode(notification)
            if event is None:
                continue
            try:
                self.state.apply(event, notification.id, index=False)
            except NotNext:  # a graph evicted earlier in this replay: read it whole
                store.connection.run(self.aggregates.catch_up(event.originator_id))
            except Exception as error:  # an event that does not fit: not ours
                log.warning("skipping event %s: %r", notification.id, error)
                continue
            self._remember_head(event, notification.id)
            self.seen.remember(event, notification.id, now)
            count += 1
            if count % REPLAY_EVICTS_EVERY == 0:
                evicted += len(self.state.evict_ended_while_rebuilding(last))
        self.state.index_all(last)
        self.state.advance(last)
        log.info(
            "rebuilt %d aggregates from %d events (log at %d; %d ended graphs left memory "
            "on the way)",
            len(self.state.aggregates),
            count,
            last,
            evicted,
        )

    def _restore(self, checkpoint: Checkpoint) -> None:
        """The state of ``checkpoint``, its resident aggregates read from their own
        subjects up to its sequence: the follower goes on from that sequence."""
        at = checkpoint.sequence
        store = self.aggregates.store
        loaded: list[list[tuple[AuditedEvent, int]]] = store.connection.run(
            self._read_aggregates(checkpoint.state.resident)
        )
        self.state.restore(checkpoint.state)  # all or nothing: the state is still empty if not
        for events in loaded:
            for event, sequence in events:
                if sequence > at:
                    break  # the tail below applies it
                self.state.apply(event, sequence, index=False)
                self._remember_head(event, sequence)
        self.state.index_all(at)
        self.seen.restore(checkpoint.commands, datetime.now(UTC))
        self.state.advance(at)
        log.info(
            "started from the checkpoint at sequence %d: %d aggregates read from their "
            "subjects; following the log from there",
            at,
            len(loaded),
        )

    async def _read_aggregates(self, ids: list[str]) -> list[list[tuple[AuditedEvent, int]]]:
        """The events of each aggregate of ``ids``, :data:`PARALLEL_READS` at a time."""
        found: list[list[tuple[AuditedEvent, int]]] = []
        for start in range(0, len(ids), PARALLEL_READS):
            batch = ids[start : start + PARALLEL_READS]
            found.extend(await asyncio.gather(*map(self.aggregates.events_of, batch)))
        return found

    def _remember_head(self, event: AuditedEvent, sequence: int) -> None:
        self.aggregates.log.remember_head(
            self.aggregates.subject_of(event.originator_id), event.originator_version, sequence
        )

    def _notifications_after(self, start: int) -> Iterator[Notification]:
        while True:
            page = self.aggregates.store.select_notifications(start, PAGE, inclusive_of_start=False)
            yield from page
            if len(page) < PAGE:
                return
            start = page[-1].id

    async def catch_up_with_log(self) -> int:
        """Applies the log up to its end as it is now, as :meth:`follow` does (at start,
        after a checkpoint: the engine serves once this returns); returns how many
        events that was."""
        store = self.aggregates.store
        end = await self._log_end()
        start = self.state.applied
        if start >= end:
            return 0
        # An async generator (closed on leaving, which deletes its consumer).
        batches = cast(
            "AsyncGenerator[list[StoredMessage], None]",
            self.aggregates.log.follow(store.events_filter, start),
        )
        async with contextlib.aclosing(batches):
            async for batch in batches:
                now = datetime.now(UTC)
                for message in batch:
                    if self._installed_here(message.sequence):
                        continue
                    envelope = store.connection.trusted(message)
                    if envelope is not None:
                        await self._follow_one(message, envelope, now)
                self.state.advance(batch[-1].sequence)
                if self.state.applied >= end:
                    break
        log.info(
            "caught up with the log: %d events after sequence %d applied (log at %d)",
            self.state.applied - start,
            start,
            self.state.applied,
        )
        return self.state.applied - start

    async def _log_end(self) -> int:
        """The sequence of the log's last event. A stream just made (a cluster electing
        its leader) may not answer direct gets for a moment: tried for
        :data:`LOG_END_WAIT` seconds."""
        filter_subject = self.aggregates.store.events_filter
        deadline = asyncio.get_running_loop().time() + LOG_END_WAIT
        while True:
            try:
                last = await self.aggregates.log.last_message(filter_subject)
                return last.sequence if last is not None else 0
            except OperationalError as error:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                log.warning("reading the log's end, again shortly: %s", error)
                await asyncio.sleep(0.5)

    async def follow(self) -> None:
        """Applies every event appended after the rebuild, by any replica, forever."""
        store = self.aggregates.store
        async for batch in self.aggregates.log.follow(store.events_filter, self.state.applied):
            now = datetime.now(UTC)
            for message in batch:
                if self._installed_here(message.sequence):
                    continue
                envelope = store.connection.trusted(message)
                if envelope is not None:
                    await self._follow_one(message, envelope, now)
            self.state.advance(batch[-1].sequence)

    def _installed_here(self, sequence: int) -> bool:
        """True (once) for an event this replica wrote and installed itself: skipped
        without decoding its envelope or checking its seal (the append's acknowledgement
        gave its sequence; the head of its subject was noted then). An own event whose
        acknowledgement the command has not seen yet takes the general path: its
        aggregate's lock, then the version says it is in."""
        installed = self.aggregates.installed
        if sequence not in installed:
            return False
        installed.discard(sequence)
        self.aggregates.counters.skipped += 1
        return True

    async def _follow_one(self, message: StoredMessage, envelope: Envelope, now: datetime) -> None:
        """Applies one trusted event of the log, unless this replica has it already."""
        aggregates = self.aggregates
        aggregate_id = str(envelope.originator_id)
        version = envelope.originator_version
        aggregates.log.remember_head(message.subject, version, message.sequence)
        if aggregates.busy(aggregate_id):
            async with aggregates.lock(aggregate_id):  # a decision being written: let it install
                pass
        cached = self.state.aggregates.get(aggregate_id)  # resident only (see state.py)
        if cached is not None and cached.version >= version:
            aggregates.counters.skipped += 1
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
        aggregates.counters.followed += 1
        self.seen.remember(event, message.sequence, now)
