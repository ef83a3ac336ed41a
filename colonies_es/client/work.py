"""Work tickets: how an executor learns that there is work for its type.

The engine publishes a ticket to the stream ``COLONIES_WORK`` for every process that
becomes ready (protocol.py, "Work"). Executors of one type in one colony share the durable
pull consumer described by :func:`work_consumer_config`; the engine creates it when the
type first appears, and a client that finds it missing creates it with the same
configuration (JetStream accepts the identical creation twice).
"""

from __future__ import annotations

import asyncio
import contextlib

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.client import JetStreamContext

from colonies_es.protocol import WORK_STREAM, work_consumer, work_subject

__all__ = ["TICKET_ACK_WAIT", "WorkTickets", "work_consumer_config"]

TICKET_ACK_WAIT = 30.0
"""Seconds a fetched ticket stays with its executor before JetStream hands it to another."""

_GIVE_BACK_WAIT = 0.05
"""Seconds ``close`` listens for tickets still on their way to this client."""

_GIVE_BACK_DELAY = 0.5
"""Seconds before a ticket given back by ``close`` is offered again (to other executors)."""

_RETRY_PAUSE = 1.0
"""Seconds to wait before looking for the consumer again when it (or its stream) is missing."""


def work_consumer_config(colonyname: str, executortype: str) -> ConsumerConfig:
    """The configuration of the durable consumer shared by the executors of
    ``executortype`` in ``colonyname``: explicit acks, a ticket redelivered if not acked
    within :data:`TICKET_ACK_WAIT` seconds, no limit on tickets held at once.

    The engine and the client both create the consumer from this one function, so the
    two creations are identical and neither fails because the other came first.
    """
    return ConsumerConfig(
        durable_name=work_consumer(colonyname, executortype),
        filter_subject=work_subject(colonyname, executortype),
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=TICKET_ACK_WAIT,
        max_ack_pending=-1,
    )


class WorkTickets:
    """The tickets of one executor type in one colony, pulled one at a time.

    Fetches are serialised (several tasks waiting for work through the same instance
    take turns); what a caller does with its ticket (claim, ack, nak) is not.
    """

    def __init__(self, nc: NATS, colonyname: str, executortype: str) -> None:
        self._js = nc.jetstream()
        self._config = work_consumer_config(colonyname, executortype)
        self._subscription: JetStreamContext.PullSubscription | None = None
        self._fetching = asyncio.Lock()

    async def next(self, deadline: float) -> Msg | None:
        """The next ticket, or None when none came by ``deadline`` (event loop time).

        The caller must ``ack()`` the ticket once it has claimed (or found nothing to
        claim), or ``nak()`` it to hand it to another executor at once. While the
        consumer or the work stream does not exist yet, this waits for it. Cancelling
        the wait loses nothing: a ticket delivered to the abandoned fetch is returned
        by the next call, or given back by :meth:`close`.
        """
        try:
            async with asyncio.timeout_at(deadline):
                await self._fetching.acquire()
        except TimeoutError:
            return None
        try:
            return await self._fetch(deadline)
        finally:
            self._fetching.release()

    async def _fetch(self, deadline: float) -> Msg | None:
        loop = asyncio.get_running_loop()
        while (remaining := deadline - loop.time()) > 0.001:
            subscription = await self._bind()
            if subscription is None:
                await asyncio.sleep(min(_RETRY_PAUSE, remaining))
                continue
            try:
                [ticket] = await subscription.fetch(1, timeout=remaining)
            except nats.errors.TimeoutError:
                return None
            except nats.js.errors.APIError:  # the consumer went away
                await self._unbind()
                await asyncio.sleep(min(_RETRY_PAUSE, remaining))
                continue
            return ticket
        return None

    async def _bind(self) -> JetStreamContext.PullSubscription | None:
        """The pull subscription, creating the consumer if needed; None if its stream is
        missing."""
        if self._subscription is None:
            durable = self._config.durable_name
            assert durable is not None
            try:
                await self._js.consumer_info(WORK_STREAM, durable)
            except nats.js.errors.NotFoundError:
                try:
                    await self._js.add_consumer(WORK_STREAM, self._config)
                except nats.js.errors.NotFoundError:  # no stream: the engine never ran
                    return None
            self._subscription = await self._js.pull_subscribe_bind(durable, WORK_STREAM)
        return self._subscription

    async def _unbind(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            with contextlib.suppress(nats.errors.Error):
                await subscription.unsubscribe()

    async def close(self) -> None:
        """Stop pulling, giving back (nak) the tickets that reached this client without
        a caller: a fetch abandoned by a cancelled ``next`` leaves its pull request open
        on the server, and what it delivers must not wait for the ack wait to recirculate.
        """
        subscription = self._subscription
        if subscription is not None:
            with contextlib.suppress(nats.errors.Error):
                while True:  # queued tickets first, then whatever comes in _GIVE_BACK_WAIT
                    [ticket] = await subscription.fetch(1, timeout=_GIVE_BACK_WAIT)
                    await ticket.nak(delay=_GIVE_BACK_DELAY)  # not straight back to us
        await self._unbind()
