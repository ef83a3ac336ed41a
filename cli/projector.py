"""`colonies projector`: follow the event log into a SQLite read model and answer queries
on colonies.q.* until Ctrl-C or SIGTERM."""

from __future__ import annotations

import functools
import gc
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated

import typer

from colonies_es.settings import Settings, SettingsError

GC_THRESHOLDS = (100_000, 20, 20)
"""The collector's thresholds in a projector process. With Python's default (700, 10,
10) the full collections rescanning the graphs it keeps (up to 10,000) took 16-23% of
the follower's CPU on a log of many small workflows; with the engine's (20,000, 20,
20) the young collections still took 3.8 us per event of a rebuild of that log (41 of
them in 100,000 events, each scanning the graphs made since the last), 1.6 us with
100,000 (5 of them)."""


def projector(
    nats: Annotated[
        str | None,
        typer.Option(
            "--nats",
            help="NATS server URL(s), comma separated. [env: COLONIES_NATS_URL; "
            "default: nats://localhost:4222]",
            show_default=False,
        ),
    ] = None,
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            help="The SQLite file of the read model (created if missing; delete it to "
            "rebuild the view from the log). [env: COLONIES_PROJECTOR_DB; default: "
            "colonies-view.sqlite]",
            show_default=False,
        ),
    ] = None,
    seal_key: Annotated[
        str | None,
        typer.Option(
            "--seal-key",
            help="The event log's seal key (hex), as given to the engine: messages it did "
            "not seal are ignored. [env: COLONIES_EVENT_SEAL_KEY]",
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size",
            min=1,
            help="Events per commit, at most (a live view commits about every 0.1 s; "
            "a rebuild every this many events or every second).",
        ),
    ] = 10_000,
) -> None:
    """Run a projector: keep the read model (graphs, processes, logs, stats) up to date
    from the event log and serve the queries on colonies.q.*. It resumes where it stopped.

    Every other setting (NATS credential, TLS CA, cipher key, stream replicas) comes from
    its COLONIES_* variable (colonies_es/settings.py); flags win over them."""
    import anyio

    from colonies_es.projections.runner import run_projector

    try:
        settings = Settings.load(nats_url=nats, projector_db=db, event_seal_key=seal_key)
    except SettingsError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    gc.set_threshold(*GC_THRESHOLDS)
    if not settings.event_seal_key:
        logging.getLogger("colonies.projector").warning(
            "no event seal key (COLONIES_EVENT_SEAL_KEY): events appended to the stream by "
            "others are projected too"
        )

    def started(position: int) -> None:
        print(
            f"colonies projector ready on {settings.nats.url} (view {settings.projector_db} "
            f"at position {position}, "
            f"pid {os.getpid()})",
            flush=True,
        )

    run = functools.partial(run_projector, settings, started, batch_size=batch_size)
    try:
        anyio.run(_until_signalled, run)
    except Exception as error:  # one readable line, not a traceback
        typer.echo(f"error: {_reason(error)}", err=True)
        sys.exit(1)


async def _until_signalled(run: Callable[[], Awaitable[None]]) -> None:
    """Runs ``run()`` until SIGINT or SIGTERM, then cancels it (a clean stop)."""
    import anyio

    async with anyio.create_task_group() as tasks:

        async def cancel_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    tasks.cancel_scope.cancel()

        tasks.start_soon(cancel_on_signal)
        await run()
        tasks.cancel_scope.cancel()


def _reason(error: BaseException) -> str:
    """The first error inside task-group exception groups, as one line."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return str(error) or type(error).__name__
