"""The `colonies` command line application (typer)."""

from __future__ import annotations

from importlib import metadata
from typing import Annotated

import typer

from colonies_es.cli import executor_admin
from colonies_es.cli.colony import colony_app
from colonies_es.cli.dev import dev
from colonies_es.cli.executor import executor_app
from colonies_es.cli.gateway import gateway
from colonies_es.cli.helptext import reflow_help
from colonies_es.cli.history import audit_app, debug, history_command, replay, rerun
from colonies_es.cli.key import key_app
from colonies_es.cli.members import log_app, stats, user_app
from colonies_es.cli.process import process_app
from colonies_es.cli.projector import projector
from colonies_es.cli.server import server
from colonies_es.cli.ui import ui
from colonies_es.cli.workflow import workflow_app

app = typer.Typer(help="colonies-es: event-sourced ColonyOS workflows on NATS JetStream.")
app.command(name="dev")(dev)
app.command(name="server")(server)
app.command(name="gateway")(gateway)
app.add_typer(executor_app, name="executor")
app.command(name="projector")(projector)
app.command(name="ui")(ui)
app.add_typer(workflow_app, name="workflow")
app.add_typer(process_app, name="process")
app.add_typer(colony_app, name="colony")
app.add_typer(key_app, name="key")
executor_app.command(name="ls")(executor_admin.list_executors)
executor_app.command(name="approve")(executor_admin.approve)
executor_app.command(name="reject")(executor_admin.reject)
executor_app.command(name="remove")(executor_admin.remove)
workflow_app.command(name="history")(history_command)
workflow_app.command(name="replay")(replay)
workflow_app.command(name="debug")(debug)
workflow_app.command(name="rerun")(rerun)
app.add_typer(audit_app, name="audit")
app.add_typer(user_app, name="user")
app.add_typer(log_app, name="log")
app.command(name="stats")(stats)


def _print_version(wanted: bool) -> None:
    if wanted:
        typer.echo(f"colonies-es {_version()}")
        raise typer.Exit()


def _version() -> str:
    try:
        return metadata.version("colonies-es")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """colonies-es command line."""


def main() -> None:
    app()


reflow_help(app)  # last: after every command is registered
