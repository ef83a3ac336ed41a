"""`colonies gateway`: the ColonyOS HTTP RPC gateway, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from colonies_es.gateway import DEFAULT_PORT
from colonies_es.settings import Settings, SettingsError


def gateway(
    nats: Annotated[
        str | None,
        typer.Option(
            "--nats",
            help="NATS server URL(s), comma separated. [env: COLONIES_NATS_URL; "
            "default: nats://localhost:4222]",
            show_default=False,
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on (0.0.0.0 for all interfaces).")
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option(min=0, max=65535, help="HTTP port (ColonyOS uses 50080); 0 picks one."),
    ] = DEFAULT_PORT,
    tls_cert: Annotated[
        str,
        typer.Option(
            "--tls-cert",
            envvar="COLONIES_GATEWAY_TLS_CERT",
            help="PEM certificate (chain): serve HTTPS and WSS (pycolonies' tls=True, "
            "COLONIES_SERVER_TLS=true). Needs --tls-key.",
        ),
    ] = "",
    tls_key: Annotated[
        str,
        typer.Option(
            "--tls-key", envvar="COLONIES_GATEWAY_TLS_KEY", help="The certificate's private key."
        ),
    ] = "",
) -> None:
    """Serve the ColonyOS HTTP RPC (POST /api, GET /health, the /pubsub websocket) so that
    unmodified ColonyOS clients such as pycolonies use this system: point them at it with
    COLONIES_SERVER_HOST and COLONIES_SERVER_PORT. The engine verifies each message's own
    signature and stores it with the event; the gateway holds no key. ColonyOS messages
    carry no nonce: beyond one machine serve HTTPS (--tls-cert, --tls-key), so that they
    cannot be captured and replayed. NATS access (credential, CA) comes from the
    COLONIES_* variables (colonies_es/settings.py)."""
    from colonies_es.gateway import run_gateway, tls_context

    if bool(tls_cert) != bool(tls_key):
        typer.echo("error: --tls-cert and --tls-key go together", err=True)
        raise typer.Exit(2)
    try:
        tls = tls_context(tls_cert, tls_key) if tls_cert else None
    except ValueError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None

    try:
        settings = Settings.load(nats_url=nats)
        access = settings.nats
        access.connect_options()  # a missing credential file is one line, now
    except SettingsError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None

    def started(bound: int) -> None:
        print(
            f"colonies gateway ready on {'https' if tls else 'http'}://{host}:{bound} "
            f"(NATS {access.url}, pid {os.getpid()})",
            flush=True,
        )

    try:
        run_gateway(access, host, port, started, tls)
    except KeyboardInterrupt:
        pass
    except (ConnectionError, OSError) as error:  # one readable line, not a traceback
        typer.echo(f"error: {error}", err=True)
        sys.exit(1)
