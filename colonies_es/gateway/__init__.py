"""The ColonyOS HTTP RPC gateway (``colonies gateway``): unmodified ColonyOS clients
(pycolonies, the Go CLI) talk to the engine through it. See :mod:`.server`."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

from colonies_es.gateway.server import DEFAULT_PORT, Gateway
from colonies_es.settings import NatsAccess

__all__ = ["DEFAULT_PORT", "Gateway", "run_gateway"]


def run_gateway(
    access: NatsAccess, host: str, port: int, started: Callable[[int], None] | None = None
) -> None:
    """Serve until SIGINT or SIGTERM; ``started(port)`` once listening.

    Raises ``ConnectionError`` (NATS unreachable) or ``OSError`` (port taken).
    """

    async def serve() -> None:
        gateway = Gateway(access)
        bound = await gateway.start(host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            if started is not None:
                started(bound)
            await stop.wait()
        finally:
            await gateway.stop()

    asyncio.run(serve())
