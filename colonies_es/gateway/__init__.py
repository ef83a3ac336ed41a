"""The ColonyOS HTTP RPC gateway (``colonies gateway``): unmodified ColonyOS clients
(pycolonies, the Go CLI) talk to the engine through it. See :mod:`.server`."""

from __future__ import annotations

import asyncio
import signal
import ssl
from collections.abc import Callable

from colonies_es.gateway.server import DEFAULT_PORT, Gateway
from colonies_es.settings import NatsAccess

__all__ = ["DEFAULT_PORT", "Gateway", "run_gateway", "tls_context"]


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """The server side of HTTPS from a PEM certificate (chain) and its private key.

    Raises ``ValueError`` naming the file that cannot be read.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as error:
        raise ValueError(
            f"cannot use the TLS certificate {cert_file} with the key {key_file}: {error}"
        ) from None
    return context


def run_gateway(
    access: NatsAccess,
    host: str,
    port: int,
    started: Callable[[int], None] | None = None,
    tls: ssl.SSLContext | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM (HTTPS with ``tls``); ``started(port)`` once
    listening.

    Raises ``ConnectionError`` (NATS unreachable) or ``OSError`` (port taken).
    """

    async def serve() -> None:
        gateway = Gateway(access)
        bound = await gateway.start(host, port, tls)
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
