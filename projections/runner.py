"""Running a projector: follow the log into the SQLite view and serve queries, until
cancelled (``colonies projector``).

:func:`run_projector` owns everything it starts, structured with anyio task groups:

- the view (:func:`~projections.view.open_view`) and the event log's recorders (the
  JetStream store, with the log's seal key if it has one);
- the :class:`~projections.projector.Follower`, in a worker thread of its own: it
  resumes after the view's position and commits in batches. When the task is cancelled
  the follower is stopped and commits what it processed; if it fails, the error ends
  :func:`run_projector` (a supervisor restarts it, and it resumes from its position);
- the query service (:class:`~projections.service.QueryService`) on its own NATS
  connection, woken by each commit for queries waiting on a position.

Projectors are independent: several may run (each with its own SQLite file), in the
same queue group; every one of them answers from its own complete view.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
from eventsourcing.persistence import ApplicationRecorder, Mapper, OperationalError
from eventsourcing.utils import Environment

from colonies_es.encryption import check_log_key
from colonies_es.projections.graph_events import GraphEventReader
from colonies_es.projections.history import sealer_of
from colonies_es.projections.projector import BATCH_SIZE, Follower, Projector
from colonies_es.projections.service import PositionWatch, QueryService
from colonies_es.projections.view import UPSTREAM, ReadModel, open_view
from colonies_es.settings import Settings
from colonies_es.store import JetStreamFactory

__all__ = ["CatchUp", "run_projector"]

log = logging.getLogger("colonies.projector")

STOP_TIMEOUT = 3.0
"""Seconds given to stopping the query service and draining its connection."""


async def run_projector(
    settings: Settings,
    started: Callable[[int], Any] | None = None,
    *,
    batch_size: int = BATCH_SIZE,
    batch_interval: float = 0.1,
    cache_size: int = 10_000,
) -> None:
    """Projects the event log into the SQLite view at ``settings.projector_db`` and
    answers queries on ``colonies.q.*``, until the calling task is cancelled.

    ``started(position)`` is called once queries are served, with the position the view
    resumed from (0 for a new view). The NATS access, the log's seal key (as given to the
    engine: without it, events anyone appended to the stream are projected too), cipher
    and replicas come from ``settings``.
    ``batch_size`` / ``batch_interval`` bound a commit (events / seconds after the first
    uncommitted event, up to a second while catching up: :class:`Follower`);
    ``cache_size`` is how many graphs stay in memory.

    Raises what stops the projection: NATS unreachable at start, an unusable SQLite file,
    a failing store.
    """
    await check_log_key(settings.nats, settings.cipher_key, settings.event_seal_key)
    view = await anyio.to_thread.run_sync(open_view, settings.projector_db)
    try:
        factory = await anyio.to_thread.run_sync(_log_factory, settings)
        try:
            await _project_and_serve(
                factory, view, settings, started, batch_size, batch_interval, cache_size
            )
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(factory.close)
    finally:
        view.close()


def _log_factory(settings: Settings) -> JetStreamFactory:
    """The store's factory for the engine's log (connects to NATS)."""
    return JetStreamFactory(Environment(UPSTREAM, settings.store_env()))


async def _project_and_serve(
    factory: JetStreamFactory,
    view: ReadModel,
    settings: Settings,
    started: Callable[[int], Any] | None,
    batch_size: int,
    batch_interval: float,
    cache_size: int,
) -> None:
    recorder = await anyio.to_thread.run_sync(factory.application_recorder)
    mapper: Mapper[str] = factory.mapper(factory.transcoder())
    projector = Projector(view, recorder, mapper, cache_size)
    watch = PositionWatch(projector.position)
    catch_up = CatchUp(projector.position, projector.position)  # its end is read once serving

    def committed(position: int) -> None:  # in the follower's thread
        anyio.from_thread.run_sync(watch.advance, position)
        catch_up.committed(position)

    follower = Follower(
        projector,
        recorder,
        batch_size=batch_size,
        batch_interval=batch_interval,
        on_commit=committed,
    )
    access = settings.nats
    nc = await access.connect(
        "colonies-es projector",
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
    )
    try:
        async with anyio.create_task_group() as tasks:
            # Graph events for members' history queries: sealed ones only, decrypted.
            events = GraphEventReader(
                nc, sealer_of(settings.event_seal_key), mapper.cipher, mapper.compressor
            )
            service = await QueryService(
                nc, view, watch, events=events, sealer=sealer_of(settings.event_seal_key)
            ).start(tasks)
            log.info("projector ready on %s at position %d", access.url, projector.position)
            if started is not None:
                started(projector.position)
            catch_up = CatchUp(projector.position, await _log_end(recorder))
            tasks.start_soon(_follow, follower)
            try:
                await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(STOP_TIMEOUT):
                    await service.stop()
    finally:
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            with anyio.move_on_after(STOP_TIMEOUT):
                await nc.drain()
            await nc.close()


async def _log_end(recorder: ApplicationRecorder) -> int:
    """The log's last sequence, for :class:`CatchUp` only: 0 when it cannot be read now
    (a cluster still electing the stream's leader answers no direct get), and then the
    catch-up is not reported; the follower does not need it."""
    try:
        end = await anyio.to_thread.run_sync(recorder.max_notification_id)
    except OperationalError as error:
        log.info("not reporting the catch-up: the log's end is unknown (%s)", error)
        return 0
    return end or 0


async def _follow(follower: Follower) -> None:
    """Runs the follower in a thread; stops it when this task is cancelled."""

    async def stop_when_cancelled() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            follower.stop()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(stop_when_cancelled)
        await anyio.to_thread.run_sync(follower.run, limiter=anyio.CapacityLimiter(1))
        tasks.cancel_scope.cancel()


class CatchUp:
    """Says how a projector catches up with the log it starts behind: every
    ``interval`` seconds an INFO line (events projected, percent of the way to the log's
    last sequence when it started, events/s), and one line when it gets there (events,
    seconds, events/s). Nothing when it starts caught up. The projector's log is its
    terminal when run in one (``colonies projector``)."""

    def __init__(
        self,
        start: int,
        end: int,
        interval: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.start = start
        self.end = end
        self.interval = interval
        self.clock = clock
        self.started = clock()
        self._said_at = self.started
        self.behind = end > start

    def committed(self, position: int) -> None:
        """The view has committed ``position`` (called after each commit)."""
        if not self.behind:
            return
        now = self.clock()
        done = position - self.start
        rate = done / max(now - self.started, 1e-9)
        if position >= self.end:
            self.behind = False
            log.info(
                "caught up with the log at position %d: %s events in %.1f s (%s events/s)",
                position,
                f"{done:,}",
                now - self.started,
                f"{rate:,.0f}",
            )
        elif now - self._said_at >= self.interval:
            self._said_at = now
            log.info(
                "catching up with the log: %s of %s events (%.0f%%), %s events/s",
                f"{done:,}",
                f"{self.end - self.start:,}",
                100 * done / (self.end - self.start),
                f"{rate:,.0f}",
            )
