"""The engine: command handling (:mod:`.app`, which names the other modules), the NATS
service around it (:mod:`.service`) and how to run it (:func:`run_engine`)."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import anyio

from colonies_es.encryption import check_log_key
from colonies_es.engine.app import ColoniesApp
from colonies_es.engine.quotas import Quotas
from colonies_es.engine.service import Engine
from colonies_es.settings import Settings


def run_engine(
    settings: Settings,
    started: Callable[[], Any] | None = None,
    *,
    beside: Sequence[Callable[[], Coroutine[Any, Any, object]]] = (),
    metrics_port: int | None = None,
) -> None:
    """Runs the engine in this thread until interrupted (KeyboardInterrupt, SIGTERM).

    Everything comes from ``settings``: NATS access, ``server_id``, ``engine_prvkey``
    (required), the log's seal key, cipher and replicas. With a seal key every event is
    sealed and unsealed messages in the log are ignored; without, anyone able to publish
    to the stream could inject events. Each of ``beside`` is started in the engine's
    event loop and cancelled with it (``colonies server`` runs a projector this way; the
    engine itself knows nothing of the read side). With ``metrics_port`` Prometheus
    metrics are served on that port (0: a free one; :mod:`.metrics`); the port is logged.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not settings.event_seal_key:
        logging.getLogger("colonies.engine").warning(
            "no event seal key (COLONIES_EVENT_SEAL_KEY): events appended to the stream by "
            "others cannot be told from the engine's"
        )

    def make_app() -> ColoniesApp:
        return ColoniesApp(
            settings.store_env(),
            server_id=settings.server_id,
            engine_prvkey=settings.engine_prvkey,
            max_skew=float(settings.command_window),
            quotas=Quotas(settings.max_pending_processes, settings.max_command_bytes),
        )

    engine = Engine(
        settings.nats.url,
        make_app,
        settings.nats,
        work_replicas=settings.stream_replicas,
        checkpoint_events=settings.checkpoint_events,
        checkpoint_seconds=settings.checkpoint_seconds,
    )
    if metrics_port is not None:
        from colonies_es.engine.metrics import EngineMetrics

        engine.metrics = EngineMetrics()
        port = engine.metrics.serve(metrics_port)
        logging.getLogger("colonies.engine").info("metrics on http://0.0.0.0:%d/metrics", port)

    async def until_signalled() -> None:
        # SIGINT/SIGTERM cancel the engine's task from inside the loop, so its shutdown
        # (service stop, connection drain) runs while nats-py's own tasks still work.
        await check_log_key(settings.nats, settings.cipher_key, settings.event_seal_key)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(engine.run, started)
            for task in beside:
                tasks.start_soon(task)
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    tasks.cancel_scope.cancel()
                    return

    anyio.run(until_signalled)


__all__ = ["ColoniesApp", "Engine", "run_engine"]
