"""Benchmarks of colonies-es: ``python -m benchmarks [GROUP ...] [--quick] [--json PATH]``.

A *group* is a module of this package with a ``run(options: Options) -> Report`` function
(see :mod:`benchmarks.harness`), listed in :data:`GROUPS`. To add one (the engine end to
end, the projector), write the module and add a line here.
"""

GROUPS: dict[str, str] = {
    "store": "The event store (recorder) against raw nats-py JetStream",
    "crypto": "Signing and checking commands (no server)",
    "engine": "The engine end to end: throughput and claim latency with 4 executor processes",
    "gateway": "pycolonies via the ColonyOS gateway beside the native client: throughput, assign",
    "timetravel": "Time travel: replaying one graph costs its own length, not the log's",
    "mapreduce": "A map adding 1,000 children end to end with 4 python executor processes",
    "graphs": "One decision on a big graph (no server): add_child, assign, close at 100-5,000",
    "projector": "The projector rebuilding its view from the log, against a raw replay",
    "audit": "The whole-log audit of 200,000 events: in one process, by workers auditing shares",
    "chaos": "Fault injection: faults/min, workflows, anomalies (target 0), recovery p50/p99",
    "replicas": "1, 2 and 3 engine replicas: throughput, claim latency, follower lag, failover",
    "startup": "An engine's start-up time and RSS with 10k, 100k (and 1M) events in the log",
    "cluster": "R1 vs a 3-node JetStream cluster (R3): throughput, claim latency, leader failover",
    "ui": "The web UI in headless Chromium: a 1,000-child graph's first render, scrubber steps",
    "security": "Authorization, TLS and encryption at rest, each on and off: throughput, claims",
    "peers": "Beside Celery + Redis: 2,000 tasks, round trip, fan-out 1,000, diamond; CPU",
}
"""Group name (also its module under ``benchmarks``) and what it measures."""
