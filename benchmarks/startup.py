"""An engine's start-up and memory against the length of the log (issues 8.5, 14.2, 14).

Each run gets a fresh nats-server and a log written with the engine's own code path (the
domain's aggregates, eventsourcing's mapper, the store's sealed entries, appended in
atomic batches through :class:`JetStreamLog`): one colony with an executor, then graphs
of one process each submitted, assigned and closed (three events a graph), the first
:data:`LIVE` left running. While it writes, the benchmark applies every event to an
:class:`~colonies_es.engine.state.EngineState` as a follower does (sweeping ended graphs
out), and once all but the last :data:`TAIL_GRAPHS` graphs are in, stores that state's
checkpoint with the engine's :class:`~colonies_es.engine.checkpoint.CheckpointStore`, as
a running replica would; the tail follows the checkpoint in the log.

Then ``colonies server`` is started (``--runs`` times, the median reported; with
checkpoint writes off, so that every start finds the same checkpoint and tail) and timed
from the process start to its "engine ready" line; it must say it started from the
checkpoint. Its RSS is read from /proc once ready, and again once its sweep has evicted
the tail's ended graphs. For logs up to :data:`REPLAY_UP_TO` events the checkpoint stream
is then deleted and the engine started again the same way: the whole-log replay, the
start-up before checkpoints, measured in the same run.

Runs: logs of 10k, 100k and 1M events (start-up), and of 10k, 100k and 1M finished
processes (RSS; 1,000 more graphs live); ``--quick`` leaves out the 1M runs.
Targets (issues 8 and 14): start-up <= 5 s at 1M events with 1,000 graphs live; RSS
flat within 50 MB from 10k to 1M finished processes.

The read side's memory (issue 14.4): on the logs of up to :data:`PROJECTOR_UP_TO`
finished processes, a ``colonies projector`` builds its view from the whole log and its
RSS is read once it has caught up (its view is on disk; it keeps at most 10,000 graphs
in memory).
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
import nats.js.errors

from benchmarks.harness import NATS_CONFIG, Options, Report, cpu_seconds, environment
from colonies_es import crypto
from colonies_es.domain import AuditedEvent, Colony, ProcessGraph
from colonies_es.embedded import NatsServer
from colonies_es.engine import ColoniesApp
from colonies_es.engine.checkpoint import Checkpoint, CheckpointStore
from colonies_es.engine.state import EngineState
from colonies_es.models import Workflow, func_spec
from colonies_es.settings import Settings
from colonies_es.store import JetStreamApplicationRecorder
from colonies_es.store.codec import Sealer
from colonies_es.store.jetstream import JetStreamLog

LIVE = 1000
"""Graphs left running (assigned, not closed) in every log."""

TAIL_GRAPHS = 300
"""Finished graphs appended after the checkpoint (900 events the engine replays)."""

GRAPHS_PER_BATCH = 300
"""Graphs appended per atomic batch (3 events each: under the server's 1,000)."""

COLONY_EVENTS = 3
"""The colony's events: created, executor added, executor approved."""

REPLAY_UP_TO = 310_000
"""Logs up to this many events are also timed with the whole-log replay."""

PROJECTOR_UP_TO = 100_000
"""Logs of up to this many finished processes also get a projector's RSS measured."""

STARTUP_TARGET = 5.0
RSS_TARGET_MB = 50.0


@dataclass(frozen=True)
class Run:
    """One log: ``finished`` closed graphs plus :data:`LIVE` running ones."""

    name: str
    finished: int

    @property
    def events(self) -> int:
        return COLONY_EVENTS + 2 * LIVE + 3 * self.finished


def _for_events(events: int) -> Run:
    return Run(f"{events:,} events", (events - COLONY_EVENTS - 2 * LIVE) // 3)


def _for_finished(finished: int) -> Run:
    return Run(f"{finished:,} finished processes", finished)


@dataclass(frozen=True)
class Measured:
    events: int
    checkpoint_mb: float
    startup: float
    startup_cpu: float
    rss_ready: float
    rss_swept: float
    replay: float | None
    replay_rss: float | None
    projector_rss: float | None = None


def run(options: Options) -> Report:
    sizes = [10_000, 100_000] if options.quick else [10_000, 100_000, 1_000_000]
    runs = [_for_events(n) for n in sizes] + [_for_finished(n) for n in sizes]
    report = Report(
        group="startup",
        runs=options.runs,
        parameters={"runs": [r.name for r in runs], "live_graphs": LIVE, "tail": TAIL_GRAPHS},
        environment={**environment(), "nats_config": str(NATS_CONFIG)},
    )
    print(f"  load average before: {os.getloadavg()}", flush=True)
    results: dict[str, Measured] = {}
    for one in runs:
        measured = measure(one, options.runs)
        results[one.name] = measured
        replay = (
            f"; whole-log replay {measured.replay:.2f} s, RSS {measured.replay_rss:.0f} MB"
            if measured.replay is not None
            else ""
        )
        if measured.projector_rss is not None:
            replay += f"; a projector built its view: RSS {measured.projector_rss:.0f} MB"
            report.parameters[f"projector_rss_mb_{one.name}"] = measured.projector_rss
        print(
            f"  {one.name} ({measured.events:,} events, checkpoint "
            f"{measured.checkpoint_mb:.1f} MB): ready in {measured.startup:.2f} s "
            f"({measured.startup_cpu:.2f} s of CPU), RSS "
            f"{measured.rss_ready:.0f} MB when ready, {measured.rss_swept:.0f} MB after the "
            f"sweep{replay}",
            flush=True,
        )
        report.parameters[f"startup_seconds_{one.name}"] = measured.startup
        report.parameters[f"startup_cpu_seconds_{one.name}"] = measured.startup_cpu
        report.parameters[f"rss_mb_{one.name}"] = [measured.rss_ready, measured.rss_swept]
        report.parameters[f"checkpoint_mb_{one.name}"] = measured.checkpoint_mb
        if measured.replay is not None:
            report.parameters[f"replay_seconds_{one.name}"] = measured.replay
    print(f"  load average after: {os.getloadavg()}", flush=True)
    _verdicts(results, sizes[-1])
    report.environment["load_average_after"] = environment()["load_average"]
    return report


def _verdicts(results: dict[str, Measured], largest: int) -> None:
    """PASS/MISS against the targets (n/a with --quick, which stops at 100k; the RSS
    growth per finished process is printed with what it makes at 1M)."""
    quick = largest != 1_000_000
    at = results[_for_events(largest).name]
    verdict = "n/a (--quick)" if quick else "PASS" if at.startup <= STARTUP_TARGET else "MISS"
    print(
        f"  start-up at {largest:,} events: {at.startup:.2f} s; target <= {STARTUP_TARGET} s "
        f"at 1M events: {verdict}",
        flush=True,
    )
    low, high = _for_finished(10_000), _for_finished(largest)
    grown = results[high.name].rss_swept - results[low.name].rss_swept
    per_process = grown * 1e6 / (high.finished - low.finished)
    verdict = "n/a (--quick)" if quick else "PASS" if grown <= RSS_TARGET_MB else "MISS"
    print(
        f"  RSS from 10k to {largest:,} finished processes: +{grown:.0f} MB "
        f"({per_process:.0f} bytes a finished process, +{per_process * 990_000 / 1e6:.0f} MB "
        f"from 10k to 1M at that rate); target +{RSS_TARGET_MB:.0f} MB to 1M: {verdict}",
        flush=True,
    )


def measure(one: Run, runs: int) -> Measured:
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
            timed_env = {**env, "COLONIES_CHECKPOINT_EVENTS": "0"}  # every start alike
            # The writer waits up to a minute for each append: a long log on a busy machine
            # once took more than the default 5 s (nats-server compacting its files).
            store_env = {**settings.store_env(), "JETSTREAM_TIMEOUT": "60"}
            app = ColoniesApp(store_env, server_id=settings.server_id, engine_prvkey=engine_prvkey)
            try:
                size = asyncio.run(build_log(app, server.url, one, Sealer(bytes.fromhex(seal_key))))
            finally:
                app.close()
            starts = [
                time_start(timed_env, Path(tmp) / f"engine-{n}.log", "started from the checkpoint")
                for n in range(runs)
            ]
            startup = statistics.median(start[0] for start in starts)
            ready = statistics.median(start[1] for start in starts)
            swept = statistics.median(start[2] for start in starts)
            startup_cpu = statistics.median(start[3] for start in starts)
            replay = replay_rss = None
            if one.events <= REPLAY_UP_TO:
                asyncio.run(_drop_checkpoints(server.url))
                replays = [
                    time_start(timed_env, Path(tmp) / f"replay-{n}.log", "replaying the whole log")
                    for n in range(runs)
                ]
                replay = statistics.median(r[0] for r in replays)
                replay_rss = statistics.median(r[1] for r in replays)
            projector = None
            if one.name.endswith("finished processes") and one.finished <= PROJECTOR_UP_TO:
                projector = projector_rss(env, Path(tmp))
            return Measured(
                one.events,
                size / 1e6,
                startup,
                startup_cpu,
                ready,
                swept,
                replay,
                replay_rss,
                projector,
            )
        finally:
            server.stop()


async def build_log(app: ColoniesApp, url: str, one: Run, sealer: Sealer) -> int:
    """Appends the run's log through the engine's own code path, with a checkpoint
    before the last :data:`TAIL_GRAPHS` graphs; returns the checkpoint's size in bytes."""
    recorder = app.recorder
    assert isinstance(recorder, JetStreamApplicationRecorder)
    nc = await nats.connect(url)
    log: JetStreamLog = recorder.log.rebound(nc)
    mirror = EngineState()
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
        await append(app, log, mirror, list(colony.collect_events()))  # type: ignore[arg-type]
        executor = colony.executor_by_name("ex")
        assert executor is not None
        spec = func_spec("noop", [], "bench", "noop")
        workflow = Workflow(colonyname="bench", functionspecs=[spec])
        graphs = LIVE + one.finished
        checkpoint_at = graphs - TAIL_GRAPHS
        size = 0
        batch: list[AuditedEvent] = []
        for number in range(graphs):
            if number == checkpoint_at:
                await append(app, log, mirror, batch)
                batch = []
                size = await write_checkpoint(nc, mirror, sealer)
            moment = now + timedelta(milliseconds=number)
            stamp = {"now": moment, "actor": executorid, "command": b""}
            graph = ProcessGraph.submit(
                "bench", workflow, initiatorid="", initiatorname="", **stamp
            )
            [processid] = graph.nodes
            graph.assign(processid, executor, 1, **stamp)
            if number >= LIVE:
                graph.close(processid, executorid, [], **stamp)
            batch.extend(graph.collect_events())  # type: ignore[arg-type]
            if len(batch) >= 3 * GRAPHS_PER_BATCH:
                await append(app, log, mirror, batch)
                batch = []
        await append(app, log, mirror, batch)
        return size
    finally:
        await nc.close()


async def append(
    app: ColoniesApp, log: JetStreamLog, mirror: EngineState, events: list[AuditedEvent]
) -> None:
    """Appends ``events`` and applies them to ``mirror`` as the follower would."""
    if not events:
        return
    recorder = app.recorder
    assert isinstance(recorder, JetStreamApplicationRecorder)
    stored = [app.mapper.to_stored_event(event) for event in events]
    sequences = await log.append(recorder.entries_for(stored))
    for event, sequence in zip(events, sequences, strict=True):
        mirror.apply(event, sequence)
    mirror.advance(sequences[-1])
    mirror.sweep(lambda _: False)


async def write_checkpoint(nc: nats.NATS, mirror: EngineState, sealer: Sealer) -> int:
    """Stores ``mirror``'s checkpoint as an engine would; returns its size in bytes."""
    store = CheckpointStore(nc, sealer=sealer)
    if not await store.write(Checkpoint(mirror.capture()(), []), "benchmark"):
        raise RuntimeError("the checkpoint was not written")
    found = await store.head()
    assert found is not None
    return found[0].size


async def _drop_checkpoints(url: str) -> None:
    nc = await nats.connect(url)
    try:
        await nc.jetstream().delete_stream("COLONIES_CHECKPOINTS")
    except nats.js.errors.NotFoundError:
        pass
    finally:
        await nc.close()


def time_start(
    env: dict[str, str], log_file: Path, expected: str
) -> tuple[float, float, float, float]:
    """Seconds from starting ``colonies server`` to its ready line (which must follow a
    line containing ``expected``), its RSS (MB) then, and once it evicted ended graphs,
    and the CPU seconds it had used when ready (what the load does not change)."""
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
        cpu = cpu_seconds(process.pid)
        ready = rss_mb(process.pid)
        if expected.encode() not in log_file.read_bytes():
            raise RuntimeError(f"the engine did not say {expected!r}:\n{log_file.read_text()}")
        deadline = time.monotonic() + 300
        while b"ended graphs left memory" not in log_file.read_bytes():
            if time.monotonic() > deadline:
                raise RuntimeError("the engine evicted nothing within 300 s")
            time.sleep(0.1)
        time.sleep(1.5)  # let the sweep finish and the allocator settle
        return seconds, ready, rss_mb(process.pid), cpu
    finally:
        process.terminate()
        process.wait(60)


def projector_rss(env: dict[str, str], directory: Path) -> float:
    """A new projector's RSS (MB) once it has built its view from the whole log."""
    log_file = directory / "projector.log"
    with log_file.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "colonies_es.cli", "projector", "--db", str(directory / "v.db")],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 1800
        while b"caught up with the log" not in log_file.read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(log_file.read_text()[-2000:])
            time.sleep(0.2)
        time.sleep(1.5)
        return rss_mb(process.pid)
    finally:
        process.terminate()
        process.wait(60)


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    [kilobytes] = re.findall(r"VmRSS:\s+(\d+) kB", status)
    return int(kilobytes) / 1024
