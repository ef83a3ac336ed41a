"""Prometheus metrics of the engine, served on an opt-in port (``colonies server
--metrics-port``).

What an operator watches (the names below are what Prometheus scrapes):

- ``colonies_commands_total{op, status}``: commands handled, by op and the status of
  the answer (200, 403, 404, 409...);
- ``colonies_command_seconds{op}``: how long handling took, from the request to the
  decision (a histogram: rates, p50/p99);
- ``colonies_ready_processes{colony, executortype}``: processes ready and not yet
  assigned, per executor type (work waiting for executors);
- ``colonies_executors_waiting{colony, executortype}``: requests for work executors
  have open right now: claims this engine holds (each worker of a live executor keeps
  one open while idle, on one of the engines) plus pulls on the work consumer (the
  gateway's); a type whose gauge stays at 0 on every engine while work is ready has
  nobody alive serving it;
- ``colonies_log_sequence`` and ``colonies_follower_lag_events``: the event log's last
  sequence and how many of its events this engine has not applied yet (when the engine
  tells its applied position);
- ``colonies_replica_total{what}``: what coordinating with other engine replicas cost
  this one (conflicts, catch-ups, claim races, read-your-writes waits, events followed:
  :mod:`colonies_es.engine.counters`), read when scraped.

The counters are updated as commands are handled; the gauges are sampled every
:data:`SAMPLE_INTERVAL` seconds by :meth:`EngineMetrics.sample_forever`, from the
engine's own state and JetStream's stream and consumer info. Each engine process has its
own registry, so tests can run several in one process.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import anyio
import nats.errors
import nats.js.errors
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, Metric

from colonies_es.protocol import WORK_STREAM, work_consumer

if TYPE_CHECKING:
    from colonies_es.engine.counters import ReplicaCounters
    from colonies_es.engine.service import Engine

__all__ = ["SAMPLE_INTERVAL", "EngineMetrics"]

log = logging.getLogger("colonies.metrics")

SAMPLE_INTERVAL = 5.0
"""Seconds between two samples of the gauges."""
LOG_STREAM = "COLONIES"
"""The event log's stream (see colonies_es.store)."""
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class EngineMetrics:
    """The engine's metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.commands = Counter(
            "colonies_commands",
            "Commands handled, by op and the status of the answer.",
            ["op", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "colonies_command_seconds",
            "Seconds from a command's arrival to its decision, by op.",
            ["op"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ready = Gauge(
            "colonies_ready_processes",
            "Processes ready and not assigned yet, by colony and executor type.",
            ["colony", "executortype"],
            registry=self.registry,
        )
        self.waiting = Gauge(
            "colonies_executors_waiting",
            "Requests for work open on the work consumer (idle live executor workers).",
            ["colony", "executortype"],
            registry=self.registry,
        )
        self.log_sequence = Gauge(
            "colonies_log_sequence", "The event log's last sequence.", registry=self.registry
        )
        self.lag = Gauge(
            "colonies_follower_lag_events",
            "Events of the log this engine has not applied yet.",
            registry=self.registry,
        )
        self._replica = _ReplicaCollector()
        self.registry.register(self._replica)

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` over HTTP on ``port`` (0: a free one) in a daemon thread;
        the port it listens on."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)

    def command(self, op: str, status: int, seconds: float) -> None:
        """Count one handled command and its latency."""
        self.commands.labels(op, str(status)).inc()
        self.latency.labels(op).observe(seconds)

    async def sample_forever(self, engine: Engine, interval: float = SAMPLE_INTERVAL) -> None:
        """Sample the gauges from ``engine`` every ``interval`` seconds until cancelled."""
        while True:
            try:
                await self.sample(engine)
            except (nats.errors.Error, OSError) as error:
                log.warning("cannot sample the metrics: %r", error)
            await anyio.sleep(interval)

    async def sample(self, engine: Engine) -> None:
        """Set the gauges from ``engine``'s state and JetStream's info, now: every
        executor type of an approved executor, or with ready work, is shown."""
        app = engine.app
        if app is None or engine.nc is None:
            return
        self._replica.counters = getattr(app, "counters", None)
        counts = app.ready.counts()
        keys = set(counts) | app.executor_types()
        self._replace(self.ready, {key: float(counts.get(key, 0)) for key in keys})
        js = engine.nc.jetstream()
        held = app.aggregates.claims.counts()  # executors' claims this replica holds (long polls)
        waiting: dict[tuple[str, str], float] = {}
        for colonyname, executortype in keys:
            try:
                info = await js.consumer_info(WORK_STREAM, work_consumer(colonyname, executortype))
            except nats.js.errors.NotFoundError:
                continue
            pulling = info.num_waiting or 0  # clients pulling work tickets (the gateway)
            waiting[(colonyname, executortype)] = float(
                pulling + held.get((colonyname, executortype), 0)
            )
        self._replace(self.waiting, waiting)
        last = (await js.stream_info(LOG_STREAM)).state.last_seq
        self.log_sequence.set(last)
        # Engines that follow the log (issue 8) keep their applied position in
        # ``app.state.applied``; an engine without it shows no lag.
        applied = getattr(getattr(app, "state", None), "applied", None)
        if isinstance(applied, int):
            self.lag.set(max(0, last - applied))

    @staticmethod
    def _replace(gauge: Gauge, values: Mapping[tuple[str, str], float]) -> None:
        """Set ``gauge`` to exactly ``values`` (labels not in it are dropped)."""
        gauge.clear()
        for labels, value in values.items():
            gauge.labels(*labels).set(value)


class _ReplicaCollector:
    """``colonies_replica_total{what}``: the engine's :class:`ReplicaCounters`, read at
    each scrape (nothing until the first sample found the application)."""

    def __init__(self) -> None:
        self.counters: ReplicaCounters | None = None

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "colonies_replica",
            "What coordinating with other engine replicas cost this one, by what.",
            labels=["what"],
        )
        if self.counters is not None:
            for what, value in self.counters.as_dict().items():
                family.add_metric([what], value)
        yield family
