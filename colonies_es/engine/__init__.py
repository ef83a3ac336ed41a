"""The engine: command handling (:mod:`.app`), ready work (:mod:`.ready`), the NATS
service around them (:mod:`.service`) and how to run it (:func:`run_engine`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio

from colonies_es.engine.app import ColoniesApp
from colonies_es.engine.service import Engine


def app_env(nats_url: str, stream: str = "COLONIES", prefix: str = "colonies") -> dict[str, str]:
    """The eventsourcing environment of the engine's application on ``nats_url``."""
    return {
        "PERSISTENCE_MODULE": "colonies_es.store",
        "NATS_URL": nats_url,
        "JETSTREAM_STREAM": stream,
        "JETSTREAM_SUBJECT_PREFIX": prefix,
    }


def run_engine(
    nats_url: str,
    server_id: str,
    engine_prvkey: str,
    started: Callable[[], Any] | None = None,
) -> None:
    """Runs the engine in this thread until interrupted (KeyboardInterrupt, SIGTERM)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    def make_app() -> ColoniesApp:
        return ColoniesApp(app_env(nats_url), server_id=server_id, engine_prvkey=engine_prvkey)

    engine = Engine(nats_url, make_app)
    anyio.run(engine.run, started)


__all__ = ["ColoniesApp", "Engine", "app_env", "run_engine"]
