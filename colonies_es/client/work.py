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
        consumer or the work stream does not exist yet, this waits for it.
        """
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(deadline), self._fetching:
                while True:
                    subscription = await self._bind()
                    if subscription is None:
                        await asyncio.sleep(_RETRY_PAUSE)
                        continue
                    remaining = deadline - loop.time()
                    if remaining <= 0.001:
                        return None
                    try:
                        [ticket] = await subscription.fetch(1, timeout=remaining)
                    except nats.errors.TimeoutError:
                        return None
                    except nats.js.errors.APIError:  # the consumer went away
                        await self._unbind()
                        await asyncio.sleep(_RETRY_PAUSE)
                        continue
                    return ticket
        except TimeoutError:
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
        """Stop pulling; tickets fetched but not acked go back after the ack wait."""
        await self._unbind()
