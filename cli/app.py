"""The `colonies` command line application (typer)."""

from __future__ import annotations

import typer
from colonies_es.cli.dev import dev
from colonies_es.cli.server import server

app = typer.Typer(help="colonies-es: event-sourced ColonyOS workflows on NATS JetStream.")
app.command(name="dev")(dev)
app.command(name="server")(server)


@app.callback()
def _root() -> None:
    """colonies-es command line."""


def main() -> None:
    app()
