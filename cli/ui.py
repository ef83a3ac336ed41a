"""`colonies ui`: the web UI, reading as the person who runs it.

It serves :mod:`colonies_es.ui.server` on a loopback address (``--ui-host``,
``--ui-port``); a non-loopback address needs ``--expose``. It prints one line,
``colonies ui ready at <url>``, whose link carries the access token, and runs until
Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import sys
from typing import Annotated

import typer
from aiohttp import web

from colonies_es.cli.common import (
    MEMBER,
    ColonyOption,
    HostOption,
    PortOption,
    PrvkeyOption,
    Server,
    TlsOption,
    fail,
    require_colony,
    require_key,
)
from colonies_es.client import ColoniesConnectionError
from colonies_es.crypto import id_from_private_key
from colonies_es.settings import Settings, SettingsError
from colonies_es.ui.reader import Identity, Reader
from colonies_es.ui.server import UiBindError, build_app, check_bind

__all__ = ["READY_LINE", "ui"]

READY_LINE = "colonies ui ready at"
DEFAULT_UI_PORT = 8470
_SHUTDOWN_TIMEOUT = 2.0
"""Seconds open pages (live streams) get to close when the server stops."""


def ui(
    ui_host: Annotated[
        str,
        typer.Option(
            "--ui-host",
            help="Address the web server listens on. Only loopback addresses unless --expose.",
        ),
    ] = "127.0.0.1",
    ui_port: Annotated[
        int,
        typer.Option("--ui-port", min=0, max=65535, help="Its port; 0 picks a free one."),
    ] = DEFAULT_UI_PORT,
    expose: Annotated[
        bool,
        typer.Option(
            "--expose",
            help="Allow a non-loopback --ui-host. Whoever reaches it with the printed link "
            "reads every graph, input, output, traceback and log your key may read, and may "
            "re-run failed graphs as you.",
        ),
    ] = False,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="COLONIES_UI_TOKEN",
            help="The access token the link carries (default: a new random one per run).",
            show_default=False,
        ),
    ] = None,
    seal_key: Annotated[
        str | None,
        typer.Option(
            "--seal-key",
            envvar="COLONIES_EVENT_SEAL_KEY",
            help="The log's seal key (hex): show only events the engine sealed.",
            show_default=False,
        ),
    ] = None,
    engine_id: Annotated[
        str,
        typer.Option(
            "--engine-id",
            envvar="COLONIES_ENGINE_ID",
            help="The engine's id, for the audit verdict (it signs timeouts).",
        ),
    ] = "",
    server_id: Annotated[
        str,
        typer.Option(
            "--server-id",
            envvar="COLONIES_SERVER_ID",
            help="The server owner's id, for the audit verdict (it creates colonies).",
        ),
    ] = "",
    host: HostOption = "localhost",
    port: PortOption = 4222,
    tls: TlsOption = False,
    colony: ColonyOption = None,
    prvkey: PrvkeyOption = None,
) -> None:
    """Serve the web UI: a colony's graphs, drawn, followed live and replayed event by
    event (time travel), with tracebacks, re-run and audit of failed graphs.

    It reads through the same signed, membership-checked queries and commands as the
    CLI, with your key (COLONIES_PRVKEY): a page shows only what you may read. It listens
    on 127.0.0.1 unless told otherwise, and every page needs the access token carried by
    the printed link. Runs until Ctrl-C.
    """
    try:
        check_bind(ui_host, expose)
    except UiBindError as error:
        fail(str(error), status=2)
    try:
        # The flags (or their variables) say where NATS is; the settings add this
        # client's NATS credential and TLS CA.
        settings = Settings.load(nats_url=Server(host, port, tls).url)
    except SettingsError as error:
        fail(str(error), status=2)
    identity = Identity(
        nats=settings.nats,
        prvkey=require_key(prvkey, MEMBER),
        colonyname=require_colony(colony),
        seal_key=seal_key or None,
        engine_id=engine_id,
        server_id=server_id,
    )
    if expose:
        typer.echo(
            f"warning: the UI listens on {ui_host}; whoever has the link reads colony "
            f"{identity.colonyname} as {id_from_private_key(identity.prvkey)[:12]} and may "
            "re-run its failed graphs",
            err=True,
        )
    try:
        asyncio.run(_serve(identity, ui_host, ui_port, token or secrets.token_urlsafe(24)))
    except ColoniesConnectionError as error:
        fail(f"{error} — is `colonies dev` running?")
    except OSError as error:
        fail(f"cannot listen on {ui_host}:{ui_port}: {error.strerror or error}")


async def _serve(identity: Identity, ui_host: str, ui_port: int, token: str) -> None:
    """Runs the server until SIGINT or SIGTERM."""
    reader = Reader(identity)
    runner: web.AppRunner | None = None
    try:
        await reader.client.connect()
        runner = web.AppRunner(
            build_app(reader, token), shutdown_timeout=_SHUTDOWN_TIMEOUT, access_log=None
        )
        await runner.setup()
        site = web.TCPSite(runner, ui_host, ui_port)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        bound_port = runner.addresses[0][1]
        shown_host = f"[{ui_host}]" if ":" in ui_host else ui_host
        typer.echo(f"{READY_LINE} http://{shown_host}:{bound_port}/?token={token}")
        sys.stdout.flush()
        await stop.wait()
    finally:
        if runner is not None:
            await runner.cleanup()
        await reader.close()
