"""The engine: command handling (:mod:`.app`), ready work (:mod:`.ready`), the NATS
service around them (:mod:`.service`) and how to run it (:func:`run_engine`)."""

from __future__ import annotations

import functools
import logging
import signal
from collections.abc import Callable
from typing import Any

import anyio

from colonies_es.engine.app import ColoniesApp
from colonies_es.engine.service import Engine


def app_env(
    nats_url: str,
    seal_key: str = "",
    stream: str = "COLONIES",
    prefix: str = "colonies",
) -> dict[str, str]:
    """The eventsourcing environment of an application reading or writing the log on
    ``nats_url`` (the engine, a projector); ``seal_key`` is the log's seal key (hex)."""
    env = {
        "PERSISTENCE_MODULE": "colonies_es.store",
        "NATS_URL": nats_url,
        "JETSTREAM_STREAM": stream,
        "JETSTREAM_SUBJECT_PREFIX": prefix,
    }
    if seal_key:
        env["EVENT_SEAL_KEY"] = seal_key
    return env


def run_engine(
    nats_url: str,
    server_id: str,
    engine_prvkey: str,
    started: Callable[[], Any] | None = None,
    seal_key: str = "",
    projector_db: str = "",
) -> None:
    """Runs the engine in this thread until interrupted (KeyboardInterrupt, SIGTERM).

    With ``seal_key`` (hex) every event is sealed and unsealed messages in the log are
    ignored; without, anyone able to publish to the stream could inject events. With
    ``projector_db`` a projector (read model and queries) runs beside the engine, in the
    same event loop, keeping its view in that SQLite file.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not seal_key:
        logging.getLogger("colonies.engine").warning(
            "no event seal key (COLONIES_EVENT_SEAL_KEY): events appended to the stream by "
            "others cannot be told from the engine's"
        )

    def make_app() -> ColoniesApp:
        return ColoniesApp(
            app_env(nats_url, seal_key), server_id=server_id, engine_prvkey=engine_prvkey
        )

    engine = Engine(nats_url, make_app)

    async def until_signalled() -> None:
        # SIGINT/SIGTERM cancel the engine's task from inside the loop, so its shutdown
        # (service stop, connection drain) runs while nats-py's own tasks still work.
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(engine.run, started)
            if projector_db:
                from colonies_es.projections.runner import run_projector

                tasks.start_soon(
                    functools.partial(run_projector, nats_url, projector_db, seal_key=seal_key)
                )
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    tasks.cancel_scope.cancel()
                    return

    anyio.run(until_signalled)


__all__ = ["ColoniesApp", "Engine", "app_env", "run_engine"]
