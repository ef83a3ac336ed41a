"""An engine's start-up and memory against the length of the log (issues 8.5 and 14.2).

For each size, a fresh nats-server gets a log of ``events`` events written with the
engine's own code path (the domain's aggregates, eventsourcing's mapper, the store's
sealed entries, appended in atomic batches through :class:`JetStreamLog`): one colony
with an executor, then graphs of one process each submitted, assigned and closed (three
events a graph), :data:`LIVE` of them left running. Then ``colonies server`` is started
and timed from the process start to its "engine ready" line; its RSS is read from /proc
once it is ready, and again once its sweep has evicted the ended graphs.

Today's engine replays the whole log at start (issue 8.5 is not done): the figures show
how start-up grows with history. They are printed and kept in the report's parameters
(``startup_seconds_<events>``, ``rss_mb_<events>``: when ready, after the sweep).
Targets (issue 8 / 14): start-up <= 5 s at 1M events; RSS flat within 50 MB from 10k to
1M finished processes.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats

from benchmarks.harness import NATS_CONFIG, Options, Report, environment
from colonies_es import crypto
from colonies_es.domain import Colony, ProcessGraph
from colonies_es.embedded import NatsServer
from colonies_es.engine import ColoniesApp
from colonies_es.models import Workflow, func_spec
from colonies_es.settings import Settings
from colonies_es.store import JetStreamApplicationRecorder
from colonies_es.store.jetstream import JetStreamLog

LIVE = 1000
"""Graphs left running (assigned, not closed) in every log."""

GRAPHS_PER_BATCH = 300
"""Graphs appended per atomic batch (3 events each: under the server's 1,000)."""


def run(options: Options) -> Report:
    sizes = [10_000, 100_000] if options.quick else [10_000, 100_000, 1_000_000]
    report = Report(
        group="startup",
        runs=1,
        parameters={"events": sizes, "live_graphs": LIVE},
        environment={**environment(), "nats_config": str(NATS_CONFIG)},
    )
    for events in sizes:
        seconds, ready_mb, swept_mb = measure(events)
        print(
            f"  {events:>9,} events: ready in {seconds:.2f} s, RSS {ready_mb:.0f} MB when "
            f"ready, {swept_mb:.0f} MB once ended graphs left memory",
            flush=True,
        )
        report.parameters[f"startup_seconds_{events}"] = seconds
        report.parameters[f"rss_mb_{events}"] = [ready_mb, swept_mb]
    report.environment["load_average_after"] = environment()["load_average"]
    return report


def measure(events: int) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory(prefix="colonies-bench-startup-") as tmp:
        server = NatsServer(Path(tmp) / "jetstream", config=NATS_CONFIG).start()
        try:
            server_prvkey = crypto.new_private_key()
            engine_prvkey = crypto.new_private_key()
            seal_key = os.urandom(32).hex()
            env = {
                **os.environ,
                "COLONIES_NATS_URL": server.url,
                "COLONIES_SERVER_ID": crypto.id_from_private_key(server_prvkey),
                "COLONIES_ENGINE_PRVKEY": engine_prvkey,
                "COLONIES_EVENT_SEAL_KEY": seal_key,
            }
            settings = Settings.load(env)
            app = ColoniesApp(
                settings.store_env(),
                server_id=settings.server_id,
                engine_prvkey=engine_prvkey,
            )
            try:
                asyncio.run(build_log(app, server.url, events))
            finally:
                app.close()
            return time_start(env, Path(tmp) / "engine.log")
        finally:
            server.stop()


async def build_log(app: ColoniesApp, url: str, events: int) -> None:
    """Appends ``events`` events (about) through the engine's own code path."""
    recorder = app.recorder
    assert isinstance(recorder, JetStreamApplicationRecorder)
    nc = await nats.connect(url)
    log: JetStreamLog = recorder.log.rebound(nc)
    try:
        now = datetime(2026, 1, 1, tzinfo=UTC)
        owner = crypto.new_private_key()
        executor_key = crypto.new_private_key()
        executorid = crypto.id_from_private_key(executor_key)
        ownerid = crypto.id_from_private_key(owner)
        colony = Colony.create("bench", ownerid, now=now, actor=app.server_id, command=b"")
        audit = {"now": now, "actor": ownerid, "command": b""}
        colony.add_executor(executorid, "ex", "noop", **audit)
        colony.approve_executor("ex", **audit)
        await append(app, log, list(colony.collect_events()))
        executor = colony.executor_by_name("ex")
        assert executor is not None
        spec = func_spec("noop", [], "bench", "noop")
        workflow = Workflow(colonyname="bench", functionspecs=[spec])
        graphs = events // 3
        batch: list[object] = []
        for number in range(graphs):
            moment = now + timedelta(milliseconds=number)
            stamp = {"now": moment, "actor": executorid, "command": b""}
            graph = ProcessGraph.submit(
                "bench", workflow, initiatorid="", initiatorname="", **stamp
            )
            [processid] = graph.nodes
            graph.assign(processid, executor, 1, **stamp)
            if number >= LIVE:
                graph.close(processid, executorid, [], **stamp)
            batch.extend(graph.collect_events())
            if len(batch) >= 3 * GRAPHS_PER_BATCH:
                await append(app, log, batch)
                batch = []
        await append(app, log, batch)
    finally:
        await nc.close()


async def append(app: ColoniesApp, log: JetStreamLog, events: list[object]) -> None:
    if not events:
        return
    recorder = app.recorder
    assert isinstance(recorder, JetStreamApplicationRecorder)
    stored = [app.mapper.to_stored_event(event) for event in events]  # type: ignore[arg-type]
    await log.append(recorder.entries_for(stored))


def time_start(env: dict[str, str], log_file: Path) -> tuple[float, float, float]:
    """Seconds from starting ``colonies server`` to its ready line, its RSS (MB) then,
    and its RSS once it reported evicting the ended graphs."""
    started = time.perf_counter()
    with log_file.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "colonies_es.cli", "server", "--no-projector"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        while b"colonies engine ready" not in log_file.read_bytes():
            if process.poll() is not None:
                raise RuntimeError(log_file.read_text()[-2000:])
            time.sleep(0.01)
        seconds = time.perf_counter() - started
        ready = rss_mb(process.pid)
        deadline = time.monotonic() + 120
        while b"ended graphs left memory" not in log_file.read_bytes():
            if time.monotonic() > deadline:
                raise RuntimeError("the engine evicted nothing within 120 s")
            time.sleep(0.1)
        time.sleep(1.5)  # let the sweep finish and the allocator settle
        return seconds, ready, rss_mb(process.pid)
    finally:
        process.terminate()
        process.wait(30)


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    [kilobytes] = re.findall(r"VmRSS:\s+(\d+) kB", status)
    return int(kilobytes) / 1024
