"""The `colonies` command line application (typer)."""

from __future__ import annotations

import typer
from colonies_es.cli.dev import dev

app = typer.Typer(help="colonies-es: event-sourced ColonyOS workflows on NATS JetStream.")
app.command(name="dev")(dev)


@app.callback()
def _root() -> None:
    """colonies-es command line."""


def main() -> None:
    app()
