"""The `colonies` command line application (typer)."""

from __future__ import annotations

import typer

app = typer.Typer(help="colonies-es: event-sourced ColonyOS workflows on NATS JetStream.")


@app.callback()
def _root() -> None:
    """colonies-es command line."""


def main() -> None:
    app()
