"""`colonies gateway`: the ColonyOS HTTP RPC gateway, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from colonies_es.gateway import DEFAULT_PORT


def gateway(
    nats: Annotated[
        str,
        typer.Option(
            "--nats", envvar="COLONIES_NATS_URL", help="NATS server URL(s), comma separated."
        ),
    ] = "nats://127.0.0.1:4222",
    host: Annotated[
        str, typer.Option(help="Address to listen on (0.0.0.0 for all interfaces).")
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option(
            envvar="COLONIES_GATEWAY_PORT", help="HTTP port (ColonyOS's is 50080); 0 picks one."
        ),
    ] = DEFAULT_PORT,
) -> None:
    """Serve the ColonyOS HTTP RPC (POST /api, GET /health, the /pubsub websocket) so that
    unmodified ColonyOS clients such as pycolonies use this system. Point them at it with
    COLONIES_SERVER_HOST / COLONIES_SERVER_PORT. The engine verifies every message's own
    signature; the gateway holds no key. Plain HTTP: put TLS in front of it."""
    from colonies_es.gateway import run_gateway

    def started(bound: int) -> None:
        print(
            f"colonies gateway ready on http://{host}:{bound} (NATS {nats}, pid {os.getpid()})",
            flush=True,
        )

    try:
        run_gateway(nats, host, port, started)
    except KeyboardInterrupt:
        pass
    except (ConnectionError, OSError) as error:  # one readable line, not a traceback
        typer.echo(f"error: {error}", err=True)
        sys.exit(1)
