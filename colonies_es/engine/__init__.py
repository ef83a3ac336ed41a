"""The engine: command handling (:mod:`.app`, which names the other modules), the NATS
service around it (:mod:`.service`) and how to run it (:func:`run_engine`)."""

from __future__ import annotations

import gc
import importlib.util
import logging
import os
import signal
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import anyio

from colonies_es.encryption import check_log_key
from colonies_es.engine.app import ColoniesApp
from colonies_es.engine.quotas import Quotas
from colonies_es.engine.service import Engine
from colonies_es.settings import Settings

GC_THRESHOLDS = (20_000, 20, 20)
"""The thresholds of the engine process's cyclic garbage collector (Python's are 700, 10,
10). With the default, 3,000 processes through a loaded engine cost 437 young, 40 middle
and 3 full collections (each full one walks every resident aggregate): 0.27-0.29 s, 5-6%
of the engine's CPU; with these, 5 young collections and 0.02-0.03 s. The cost: up to
20,000 young objects live a little longer before a reference cycle among them is freed
(nothing the engine keeps depends on when)."""


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
    gc.set_threshold(*GC_THRESHOLDS)
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

    anyio.run(until_signalled, backend_options={"use_uvloop": use_uvloop()})


def use_uvloop() -> bool:
    """True when ``COLONIES_ENGINE_LOOP=uvloop`` asks for uvloop as the engine's event
    loop (install it yourself: ``pip install uvloop``); Python's standard loop otherwise.

    Opt-in, not a dependency: on a nats-py request/reply micro-benchmark uvloop saved
    5-11% of the CPU per message, but end to end (2,000 tasks through `colonies dev`)
    the engine's CPU per process was the same with either loop, within the noise
    (DESIGN.md, "CPU per process"). Raises RuntimeError, one line, when asked for and
    not installed."""
    if os.environ.get("COLONIES_ENGINE_LOOP", "asyncio") != "uvloop":
        return False
    if importlib.util.find_spec("uvloop") is None:
        raise RuntimeError(
            "COLONIES_ENGINE_LOOP=uvloop, but uvloop is not installed (pip install uvloop)"
        )
    return True


__all__ = ["ColoniesApp", "Engine", "run_engine", "use_uvloop"]
