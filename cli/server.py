"""`colonies server`: run the engine against a NATS server until Ctrl-C or SIGTERM."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

import typer

from colonies_es import crypto
from colonies_es.settings import Settings, SettingsError


def server(
    nats: Annotated[
        str | None,
        typer.Option(
            "--nats",
            help="NATS server URL(s), comma separated. [env: COLONIES_NATS_URL; "
            "default: nats://localhost:4222]",
            show_default=False,
        ),
    ] = None,
    server_id: Annotated[
        str | None,
        typer.Option(
            "--server-id",
            help="Id of the server owner (the only identity that may add colonies). "
            "[env: COLONIES_SERVER_ID]",
            show_default=False,
        ),
    ] = None,
    engine_prvkey: Annotated[
        str | None,
        typer.Option(
            "--engine-prvkey",
            help="Private key the engine signs its own events with (timeouts). "
            "A fresh one is made when empty. [env: COLONIES_ENGINE_PRVKEY]",
            show_default=False,
        ),
    ] = None,
    seal_key: Annotated[
        str | None,
        typer.Option(
            "--seal-key",
            help="Hex key (>= 16 bytes) sealing every event; give the same to projectors. "
            "Messages the key did not seal are ignored. [env: COLONIES_EVENT_SEAL_KEY]",
            show_default=False,
        ),
    ] = None,
    projector: Annotated[
        bool,
        typer.Option(
            "--projector/--no-projector",
            help="Also run a projector (read model, listings, stats, logs on colonies.q.*) "
            "in this process. Turn it off when projectors run on their own.",
        ),
    ] = True,
    projector_db: Annotated[
        str | None,
        typer.Option(
            "--projector-db",
            help="SQLite file of the projector's view (rebuilt from the log if deleted). "
            "[env: COLONIES_PROJECTOR_DB; default: colonies-view.sqlite]",
            show_default=False,
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=0,
            max=65535,
            help="Serve Prometheus metrics on this port (/metrics; 0 picks a free one, "
            "logged): commands by op and status, latency, ready processes and waiting "
            "executors per type, follower lag. Off unless given.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the engine: serve signed commands on colonies.api.*, publish ready work,
    fire timeouts; and a projector beside it (--no-projector to leave it out). State is
    rebuilt from the JetStream event log on start.

    Every other setting (NATS credential, TLS CA, cipher key, stream replicas, quotas)
    comes from its COLONIES_* variable (colonies_es/settings.py); flags win over them."""
    from colonies_es.engine import run_engine

    try:
        settings = Settings.load(
            nats_url=nats,
            server_id=server_id,
            engine_prvkey=engine_prvkey,
            event_seal_key=seal_key,
            projector_db=projector_db,
        )
    except SettingsError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    if not settings.server_id:
        typer.echo(
            "error: the server owner id is required (--server-id or COLONIES_SERVER_ID)", err=True
        )
        raise typer.Exit(2)
    if not settings.engine_prvkey:
        settings = settings.replace(engine_prvkey=crypto.new_private_key())

    def started() -> None:
        print(f"colonies engine ready on {settings.nats.url} (pid {os.getpid()})", flush=True)

    beside: list[Callable[[], Coroutine[Any, Any, object]]] = []
    if projector:  # the read side, in the engine's event loop (the engine does not know it)
        from colonies_es.projections.runner import run_projector

        beside.append(functools.partial(run_projector, settings))
    try:
        run_engine(settings, started, beside=beside, metrics_port=metrics_port)
    except KeyboardInterrupt:
        pass
    except Exception as error:  # one readable line, not a traceback
        typer.echo(f"error: {_cause(error)}", err=True)
        sys.exit(1)


def _cause(error: BaseException) -> BaseException:
    """The first real error inside (task) exception groups."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error
