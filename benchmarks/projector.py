"""The projector: rebuilding its view from the whole log, against a raw replay.

Two logs of real events (signed commands, sealed envelopes, made by the domain as in
:mod:`benchmarks.timetravel`) are written, each to a fresh server, after a colony's
events:

- *chains*: ``graphs`` chains of 100 processes, each assigned, logging 8 lines and
  closed (1,001 events per graph, one graph after the other). Long graphs, one in
  memory at a time: the cheap case.
- *workflows*: many small workflows (a -> b: submitted, each step assigned and closed,
  5 events a graph), :data:`CONCURRENT` of them running side by side: what a colony
  running short workflows writes. Every event touches another graph, and a graph's
  rows are written several times: the expensive case, and the one the target is
  judged on (both are printed).

Then, each run and for each log:

- ``raw_replay``: an ordered push consumer delivering every event message of the stream
  to a counting callback (nats-py, no decoding): the most a reader of the log can do;
- ``rebuild``: :func:`~colonies_es.projections.runner.run_projector` (what ``colonies
  projector`` runs, with its garbage collector's thresholds) on a new SQLite file, in
  this process, timed from the call until the view's committed position is the log's
  last sequence. It decodes, checks each seal, keeps graphs in memory and writes the
  view.

Each run also prints the CPU seconds per event of both (this process's, all threads, up
to the moment the view has caught up): on a machine shared with other work the CPU
ratio holds where the wall-clock ratio moves with the load (the rebuild's two threads
share one interpreter lock, so it loses more to a loaded machine than the one-threaded
replay), and the part of the rebuild's CPU spent by the view's thread, which runs
beside the threads sharing the interpreter lock (SQLite's commits and checkpoints, on
another core when there is one free).

Targets: ``rebuild / raw_replay`` >= 0.30 on both logs (``rebuild_workflows /
raw_replay_workflows`` for the small workflows). Run ``python -m benchmarks projector
[--quick]``.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import anyio
import nats
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from benchmarks.harness import (
    Options,
    Report,
    Sample,
    Stopwatch,
    Target,
    environment,
    nats_server,
    server_version,
)
from benchmarks.timetravel import COLONY, GRAPH_EVENTS, Clock, chain_graph, sealed_payloads
from colonies_es import crypto
from colonies_es.cli.projector import GC_THRESHOLDS
from colonies_es.domain import Colony, ProcessGraph
from colonies_es.models import Executor, Workflow, func_spec
from colonies_es.projections.runner import run_projector
from colonies_es.projections.view import UPSTREAM, WRITER_THREAD
from colonies_es.settings import Settings
from colonies_es.store.jetstream import JetStreamLog, StreamSpec

FULL_GRAPHS = 100
QUICK_GRAPHS = 10
FULL_WORKFLOWS = 20_000
QUICK_WORKFLOWS = 2_000
WORKFLOW_EVENTS = 5
"""A two-step workflow: submitted, then each step assigned and closed."""
CONCURRENT = 20
"""Small workflows running side by side (their events interleave in the log)."""
CATCH_UP_TIMEOUT = 600.0

TARGETS = [
    Target("rebuild", "raw_replay", 0.30),
    Target("rebuild_workflows", "raw_replay_workflows", 0.30),
]


def run(options: Options) -> Report:
    graphs = QUICK_GRAPHS if options.quick else FULL_GRAPHS
    workflows = QUICK_WORKFLOWS if options.quick else FULL_WORKFLOWS
    report = Report(
        group="projector",
        runs=options.runs,
        parameters={
            "graphs": graphs,
            "events_per_graph": GRAPH_EVENTS,
            "workflows": workflows,
            "events_per_workflow": WORKFLOW_EVENTS,
        },
        environment=environment(),
        targets=TARGETS,
    )
    print(f"  load average before: {_load()}", flush=True)
    seal_key = os.urandom(32)
    print(f"  making {graphs} chains of {GRAPH_EVENTS:,} events (signed, sealed)", flush=True)
    chains = _log_payloads(seal_key, chains=graphs)
    print(f"  making {workflows:,} workflows of {WORKFLOW_EVENTS} events", flush=True)
    small = _log_payloads(seal_key, workflows=workflows)
    with (
        nats_server() as chains_url,
        nats_server() as workflows_url,
        tempfile.TemporaryDirectory(prefix="colonies-bench-") as tmp,
    ):
        report.environment["nats_server"] = server_version(chains_url)
        logs = []
        for suffix, url, payloads in (
            ("", chains_url, chains),
            ("_workflows", workflows_url, small),
        ):
            events = asyncio.run(_write_log(url, payloads))
            report.parameters[f"events{suffix}"] = events
            logs.append((suffix, url, events))
        for number in range(1, options.runs + 1):  # interleaved
            for suffix, url, events in logs:
                what = "small workflows" if suffix else "chains"
                raw_cpu = time.process_time()
                raw = asyncio.run(_raw_replay(url, events))
                raw_cpu = (time.process_time() - raw_cpu) / events
                report.add(f"raw_replay{suffix}", f"raw: ordered consumer, {what}", "events/s", raw)
                db = Path(tmp) / f"view{suffix}-{number}.sqlite"
                rebuilt, rebuild_cpu, writer_cpu = anyio.run(
                    _rebuild, url, seal_key.hex(), db, events
                )
                rebuild_cpu /= events
                writer_cpu /= events
                label = f"projector rebuild, {what}"
                report.add(f"rebuild{suffix}", label, "events/s", rebuilt)
                report.parameters.setdefault(f"cpu_us_per_event{suffix}", []).append(
                    {
                        "raw_replay": raw_cpu * 1e6,
                        "rebuild": rebuild_cpu * 1e6,
                        "rebuild_writer_thread": writer_cpu * 1e6,
                    }
                )
                print(
                    f"  run {number}/{options.runs}, {what}: raw {raw.rate:,.0f}/s, "
                    f"rebuild {rebuilt.rate:,.0f}/s (ratio {rebuilt.rate / raw.rate:.2f}); "
                    f"CPU per event: raw {raw_cpu * 1e6:.1f} us, rebuild "
                    f"{rebuild_cpu * 1e6:.1f} us (ratio {raw_cpu / rebuild_cpu:.2f}; of which "
                    f"the view's thread {writer_cpu * 1e6:.1f} us, the rest "
                    f"{(rebuild_cpu - writer_cpu) * 1e6:.1f} us); "
                    f"load {_load()}",
                    flush=True,
                )
    report.environment["load_average_after"] = environment()["load_average"]
    print(f"  load average after: {_load()}", flush=True)
    return report


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def _log_payloads(
    seal_key: bytes, *, chains: int = 0, workflows: int = 0
) -> list[tuple[str, bytes]]:
    """(subject, sealed payload) of a colony, ``chains`` chains and ``workflows`` small
    workflows (:data:`CONCURRENT` at a time, their events interleaved), in log order."""
    owner, executor_key = crypto.new_private_key(), crypto.new_private_key()
    clock = Clock()
    colony = Colony.create(
        COLONY,
        crypto.id_from_private_key(owner),
        **clock.audit("add_colony", {}, crypto.new_private_key()),
    )
    executorid = crypto.id_from_private_key(executor_key)
    audit = clock.audit("add_executor", {}, owner)
    colony.add_executor(executorid, "ex-1", "python-executor", **audit)
    colony.approve_executor("ex-1", **clock.audit("approve_executor", {}, owner))
    executor = colony.executor_by_id(executorid)
    assert executor is not None
    payloads = [(f"colonies.ev.{COLONY}.colony", p) for p in sealed_payloads(colony, seal_key)]
    for _ in range(chains):
        graph = chain_graph(owner, executor, executor_key, clock)
        subject = f"colonies.ev.{graph.id}"
        payloads += [(subject, p) for p in sealed_payloads(graph, seal_key)]
    for start in range(0, workflows, CONCURRENT):
        running = [
            _small_workflow(owner, executor, executor_key, clock)
            for _ in range(min(CONCURRENT, workflows - start))
        ]
        each = [
            [(f"colonies.ev.{graph.id}", p) for p in sealed_payloads(graph, seal_key)]
            for graph in running
        ]
        for step in range(WORKFLOW_EVENTS):  # round robin: one event of each in turn
            payloads += [events[step] for events in each]
    return payloads


def _small_workflow(owner: str, executor: Executor, key: str, clock: Clock) -> ProcessGraph:
    """A two-step workflow (a -> b) run to SUCCESS: :data:`WORKFLOW_EVENTS` events."""
    first = func_spec(func="a", args=[1], colonyname=COLONY, executortype="python-executor")
    second = func_spec(func="b", args=[], colonyname=COLONY, executortype="python-executor")
    second.conditions.dependencies.append("a")
    workflow = Workflow(colonyname=COLONY, functionspecs=[first, second])
    graph = ProcessGraph.submit(
        COLONY,
        workflow,
        initiatorid=crypto.id_from_private_key(owner),
        initiatorname="colony owner",
        **clock.audit("submit_workflow", {"workflow": workflow}, owner),
    )
    for processid in graph.processids:
        graph.assign(processid, executor, 1, **clock.audit("claim", {"colonyname": COLONY}, key))
        audit = clock.audit("close", {"processid": processid, "out": [2]}, key)
        graph.close(processid, executor.executorid, [2], **audit)
    return graph


async def _write_log(url: str, payloads: list[tuple[str, bytes]]) -> int:
    """Writes the log to a new stream, each message with the header the engine's append
    stores it with (the sequence it expects its subject's last message at), so that a
    reader meets the messages the engine's log holds (a pull delivers them with their
    headers)."""
    nc = await nats.connect(url)
    try:
        spec = StreamSpec("COLONIES", ("colonies.ev.>", "colonies.trk.>"))
        await JetStreamLog(nc, "COLONIES", lambda m: None).ensure_stream(spec)
        js = nc.jetstream(publish_async_max_pending=1024)
        last: dict[str, int] = {}  # subject -> sequence of its last message
        acks = []
        for sequence, (subject, payload) in enumerate(payloads, start=1):
            expected = {"Nats-Expected-Last-Subject-Sequence": str(last.get(subject, 0))}
            last[subject] = sequence
            acks.append(await js.publish_async(subject, payload, headers=expected))
        await asyncio.gather(*acks)
        return int((await js.stream_info("COLONIES")).state.last_seq)
    finally:
        await nc.close()


async def _raw_replay(url: str, count: int) -> Sample:
    nc = await nats.connect(url)
    try:
        done = asyncio.Event()
        received = 0

        async def on_message(msg: Msg) -> None:
            nonlocal received
            received += 1
            if received == count:
                done.set()

        with Stopwatch() as watch:
            sub = await nc.jetstream().subscribe(
                "colonies.ev.>",
                stream="COLONIES",
                cb=on_message,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.ALL,
            )
            await asyncio.wait_for(done.wait(), CATCH_UP_TIMEOUT)
        await sub.unsubscribe()
        return Sample(count, watch.seconds)
    finally:
        await nc.close()


async def _rebuild(url: str, seal_key: str, db: Path, last: int) -> tuple[Sample, float, float]:
    """Runs the projector on a new view until it has committed ``last``, with the
    garbage collector's thresholds of ``colonies projector`` (with Python's defaults,
    full collections walk every cached graph: 56 against 43 us per event). Returns the
    wall time and this process's CPU seconds to that point: not the projector's stop,
    when freeing its thousands of cached graphs costs up to 10 us per event of the log;
    and the CPU seconds of the view's thread among them."""
    thresholds = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        return await _catch_up(url, seal_key, db, last)
    finally:
        gc.set_threshold(*thresholds)


async def _catch_up(url: str, seal_key: str, db: Path, last: int) -> tuple[Sample, float, float]:
    settings = Settings.load({}, nats_url=url, event_seal_key=seal_key, projector_db=str(db))
    started, cpu = time.perf_counter(), time.process_time()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(run_projector, settings)
        with anyio.fail_after(CATCH_UP_TIMEOUT), _PositionReader(db) as position:
            # The view's file is the projector's only outside signal of progress: poll it.
            while position() < last:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        writer = _writer_cpu()
        tasks.cancel_scope.cancel()
    return Sample(last, seconds), cpu, writer


def _writer_cpu() -> float:
    """CPU seconds of the view's thread (started by this rebuild, so all of its CPU is
    the rebuild's): the part of the rebuild's CPU that runs beside the threads sharing
    the interpreter lock."""
    return sum(
        time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
        for thread in threading.enumerate()
        if thread.name.startswith(WRITER_THREAD) and thread.ident is not None
    )


class _PositionReader:
    """Reads the position a view has committed, on one read-only connection opened once
    the file exists: the poll costs a query (tens of microseconds, in the caller's
    thread), not a connection and a worker thread each time, which counted 2-4 us per
    event of the rebuild's CPU in this process."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self._connection: sqlite3.Connection | None = None

    def __enter__(self) -> _PositionReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._connection is not None:
            self._connection.close()

    def __call__(self) -> int:
        if self._connection is None:
            if not self.db.exists():
                return 0
            self._connection = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        try:
            row = self._connection.execute(
                "SELECT notification_id FROM tracking WHERE application_name = ?", (UPSTREAM,)
            ).fetchone()
        except sqlite3.OperationalError:  # the tables are not created yet
            return 0
        return 0 if row is None else int(row[0])
