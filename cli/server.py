"""`colonies server`: run the engine against a NATS server until Ctrl-C or SIGTERM."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from colonies_es import crypto


def server(
    nats: Annotated[
        str,
        typer.Option(
            "--nats", envvar="COLONIES_NATS_URL", help="NATS server URL(s), comma separated."
        ),
    ] = "nats://127.0.0.1:4222",
    server_id: Annotated[
        str,
        typer.Option(
            "--server-id",
            envvar="COLONIES_SERVER_ID",
            help="Id of the server owner (the only identity that may add colonies).",
        ),
    ] = "",
    engine_prvkey: Annotated[
        str,
        typer.Option(
            "--engine-prvkey",
            envvar="COLONIES_ENGINE_PRVKEY",
            help="Private key the engine signs its own events with (timeouts). "
            "A fresh one is made when empty.",
        ),
    ] = "",
    seal_key: Annotated[
        str,
        typer.Option(
            "--seal-key",
            envvar="COLONIES_EVENT_SEAL_KEY",
            help="Hex key (>= 16 bytes) sealing every event; give the same to projectors. "
            "Messages the key did not seal are ignored.",
        ),
    ] = "",
    projector: Annotated[
        bool,
        typer.Option(
            "--projector/--no-projector",
            help="Also run a projector (read model, listings, stats, logs on colonies.q.*) "
            "in this process. Turn it off when projectors run on their own.",
        ),
    ] = True,
    projector_db: Annotated[
        str,
        typer.Option(
            "--projector-db",
            envvar="COLONIES_PROJECTOR_DB",
            help="SQLite file of the projector's view (rebuilt from the log if deleted).",
        ),
    ] = "colonies-view.sqlite",
) -> None:
    """Run the engine: serve signed commands on colonies.api.*, publish ready work,
    fire timeouts; and a projector beside it (--no-projector to leave it out). State is
    rebuilt from the JetStream event log on start."""
    from colonies_es.engine import run_engine

    if not server_id:
        typer.echo(
            "error: the server owner id is required (--server-id or COLONIES_SERVER_ID)", err=True
        )
        raise typer.Exit(2)
    key = engine_prvkey or crypto.new_private_key()

    def started() -> None:
        print(f"colonies engine ready on {nats} (pid {os.getpid()})", flush=True)

    try:
        run_engine(nats, server_id, key, started, seal_key, projector_db if projector else "")
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
