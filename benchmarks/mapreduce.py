"""Dynamic map-reduce end to end: a map adding 1,000 children, run by 4 python executors.

The stack is the engine group's (:class:`benchmarks.engine.Stack`: an embedded nats-server
configured by :data:`~benchmarks.harness.NATS_CONFIG`, the engine as its own process) and
:data:`EXECUTORS` executors, each a separate OS process (multiprocessing, spawn) running a
real :class:`~colonies_es.executor.PythonExecutor` with the synchronous client: the
functions travel as source and run as users' functions do.

The workflow is the seed's map-reduce, scaled up: ``map`` adds :data:`CHILDREN` children
from inside (``add_child``, the first with ``insert=True``, the others with
``childprocessid=reduce``; the executor sends such calls together, siblings as one
``add_children``: :mod:`colonies_es.deferred_children`), child ``i`` returns ``(i, i)``,
and ``reduce`` gets the 2,000 numbers in the children's order. One run is timed from
``submit_workflow`` to ``wait(reduce)`` returning, in one colony served by the same
executors throughout (after an untimed warm-up of :data:`WARMUP_CHILDREN` children).
Each run also reports where the time went, from the timestamps the engine recorded:

* ``claim``: submission -> map assigned;
* ``map``: map assigned -> map closed (the add_child loop);
* ``children``: map closed -> reduce assigned (the children run by the executors);
* ``reduce``: reduce assigned -> reduce closed;

with the CPU seconds of the engine, the nats-server and the executors, and the bytes the
run added to the event stream.

Each run measures the same map twice: with ``add_child`` (as above, the seed's map) and
with ``add_children`` (this project's addition: the children 250 per signed command and
event, the first batch inserted before the reduce, the others beside it), so the two are
compared on the same stack, one right after the other.

Target (absolute, PASS/MISS): the median run within :data:`TARGET_SECONDS` seconds. The
engine's pid is printed for a profiler (``py-spy record -p PID``), and the load average
before and after (the machine may be shared).

Run ``python -m benchmarks mapreduce [--quick] [--runs N]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event
from typing import Any

import nats

from benchmarks.engine import Check, Stack
from benchmarks.fanout_code import REDUCE, fanout_times, map_source
from benchmarks.harness import (
    NATS_CONFIG,
    Options,
    Report,
    Sample,
    cpu_seconds,
    environment,
    server_version,
)
from colonies_es import func_spec
from colonies_es.client import Colonies
from colonies_es.executor import PythonExecutor
from colonies_es.models import Process, Workflow
from colonies_es.states import ProcessState

EXECUTORS = 4
EXECUTOR_TYPE = "bench-python"
CHILDREN = 1000
QUICK_CHILDREN = 200
WARMUP_CHILDREN = 20
TARGET_SECONDS = 5.0
RUN_TIMEOUT = 300.0
"""Seconds a run may take before the benchmark gives up."""

POLL_TIMEOUT = 0.5
"""Seconds an executor's ``assign`` waits; also how soon executors notice they should stop."""

STREAM = "COLONIES"

PAIR = "def pair(i, ctx={}):\n    return i, i\n"

MAP = map_source(PAIR, "[i]")
MAP_BATCH = map_source(PAIR, "[i]", batch=True)

MAPS = {"add_child": MAP, "add_children": MAP_BATCH}
"""The two maps each run measures, by the call that adds the children."""

PHASES = ("claim", "map", "children", "reduce")
PHASE_LABELS = {
    "claim": "submission -> map assigned",
    "map": "map's add_child loop (assigned -> closed)",
    "children": "children run (map closed -> reduce assigned)",
    "reduce": "reduce (assigned -> closed)",
}
PARTIES = ("engine", "nats-server", "executors", "submitter")


# ------------------------------------------------------------------------- report


@dataclass
class Run:
    """What one run of one map measured."""

    map: str
    """Which map (a key of :data:`MAPS`)."""
    seconds: float
    phases: dict[str, float]
    cpu: dict[str, float]
    """CPU seconds per party."""
    stream_bytes: int
    """Bytes the run added to the event stream."""

    def to_json(self) -> dict[str, Any]:
        return {
            "map": self.map,
            "seconds": self.seconds,
            "phases_s": self.phases,
            "cpu_s": self.cpu,
            "stream_bytes": self.stream_bytes,
        }


@dataclass
class MapReduceReport(Report):
    """The rate of :class:`Report` (children per second), plus each run's details and
    the absolute target."""

    details: list[Run] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    def median(self, value: str, map: str = "add_child") -> float:
        """The median over the runs of ``map`` of ``seconds``, a phase or a party's CPU
        seconds."""
        return statistics.median(_value(run, value) for run in self.details if run.map == map)

    def to_json(self) -> dict[str, Any]:
        document = super().to_json()
        document["details"] = [run.to_json() for run in self.details]
        document["checks"] = [check.to_json() for check in self.checks]
        return document


def _value(run: Run, value: str) -> float:
    if value == "seconds":
        return run.seconds
    if value in run.phases:
        return run.phases[value]
    return run.cpu[value]


# ------------------------------------------------------------------------- executors


def executor_main(
    url: str, colonyname: str, colony_prvkey: str, name: str, ready: Event, stop: Event
) -> None:
    """One executor process: a :class:`PythonExecutor` registered as ``name``, taking work
    until ``stop`` is set."""
    client = Colonies(servers=[url])
    executor = PythonExecutor(
        client,
        colonyname,
        colony_prvkey,
        executortype=EXECUTOR_TYPE,
        name=name,
        poll_timeout=POLL_TIMEOUT,
    )
    stopping = threading.Event()  # PythonExecutor.run waits on a threading.Event

    def relay() -> None:
        stop.wait()
        stopping.set()

    try:
        executor.register()
        ready.set()
        threading.Thread(target=relay, daemon=True).start()
        executor.run(stopping)
    finally:
        client.disconnect()


class Executors:
    """:data:`EXECUTORS` executor processes serving the colony while the block runs."""

    def __init__(self, url: str, colonyname: str, colony_prvkey: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._ready = [context.Event() for _ in range(EXECUTORS)]
        self._processes: list[SpawnProcess] = [
            context.Process(
                target=executor_main,
                args=(url, colonyname, colony_prvkey, f"ex{number}", ready, self._stop),
                name=f"bench-executor-{number}",
                daemon=False,  # an executor starts a child process per worker
            )
            for number, ready in enumerate(self._ready)
        ]

    def __enter__(self) -> Executors:
        for process in self._processes:
            process.start()
        deadline = time.monotonic() + 60
        for process, ready in zip(self._processes, self._ready, strict=True):
            while not ready.wait(0.1):
                if not process.is_alive() or time.monotonic() > deadline:
                    self._kill()
                    raise RuntimeError(f"executor {process.name} did not start")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for process in self._processes:
            process.join(POLL_TIMEOUT + 15)
        self._kill()

    def _kill(self) -> None:
        for process in self._processes:
            if process.is_alive():
                process.kill()
                process.join(5)

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self._processes if process.pid is not None]


# ------------------------------------------------------------------------- measurement


def workflow(colonyname: str, children: int, map: str = "add_child") -> Workflow:
    mapper = func_spec("map", [children], colonyname, EXECUTOR_TYPE, code=MAPS[map])
    reducer = func_spec("reduce", [], colonyname, EXECUTOR_TYPE, code=REDUCE)
    reducer.conditions.dependencies.append("map")
    return Workflow(colonyname=colonyname, functionspecs=[mapper, reducer])


def stream_bytes(url: str) -> int:
    """The bytes stored in the event stream now."""

    async def ask() -> int:
        nc = await nats.connect(url)
        try:
            return int((await nc.jetstream().stream_info(STREAM)).state.bytes)
        finally:
            await nc.close()

    return asyncio.run(ask())


def map_reduce(
    client: Colonies, colonyname: str, prvkey: str, children: int, map: str = "add_child"
) -> Process:
    """Submits the map-reduce, returns reduce once it ended; checks its input."""
    graph = client.submit_workflow(workflow(colonyname, children, map), prvkey)
    reduce = client.find_process("reduce", graph.processids, prvkey)
    _check(reduce is not None, "no reduce in the submitted graph")
    assert reduce is not None
    done = client.wait(reduce, RUN_TIMEOUT, prvkey)
    _check(done.state == ProcessState.SUCCESS, f"reduce ended {done.state}: {done.errors}")
    _check(
        done.input == [n for i in range(children) for n in (i, i)],
        f"reduce got {len(done.input)} numbers, not 0, 0, 1, 1, ... {children - 1}",
    )
    return done


def phases(client: Colonies, reduce: Process, prvkey: str) -> dict[str, float]:
    """Seconds of each phase, from the engine's timestamps."""
    times = fanout_times(client, reduce, prvkey)
    _check(times is not None, "missing timestamps")
    assert times is not None
    return {
        phase: (end - start).total_seconds()
        for phase, start, end in zip(PHASES, times, times[1:], strict=False)
    }


@contextlib.contextmanager
def measuring_cpu(pids: dict[str, list[int]]) -> Iterator[dict[str, float]]:
    """CPU seconds used over the block by each party, and by this process (submitter)."""
    used: dict[str, float] = {}
    start = {party: sum(map(cpu_seconds, ids)) for party, ids in pids.items()}
    own = time.process_time()
    yield used
    for party, ids in pids.items():
        used[party] = sum(map(cpu_seconds, ids)) - start[party]
    used["submitter"] = time.process_time() - own


def run(options: Options) -> Report:
    children = QUICK_CHILDREN if options.quick else CHILDREN
    report = MapReduceReport(
        group="mapreduce",
        runs=options.runs,
        parameters={
            "children": children,
            "executors": EXECUTORS,
            "executor": "PythonExecutor, concurrency 1, one OS process each",
            "warmup_children": WARMUP_CHILDREN,
            "poll_timeout_s": POLL_TIMEOUT,
            "target_seconds": TARGET_SECONDS,
        },
        environment={**environment(), "nats_config": str(NATS_CONFIG)},
    )
    labels = {map: f"map-reduce ({map}), {children:,} children -> reduce SUCCESS" for map in MAPS}
    with Stack.started() as stack:
        report.environment["nats_server"] = server_version(stack.url)
        print(
            f"  engine pid {stack.engine_pid}, nats-server pid {stack.nats_pid} "
            f"(py-spy record -p {stack.engine_pid})",
            flush=True,
        )
        colony = stack.new_colony(executors=0)
        client = Colonies(servers=[stack.url], timeout=30.0)
        try:
            with Executors(stack.url, colony.name, colony.owner_prvkey) as executors:
                for map in MAPS:
                    map_reduce(client, colony.name, colony.owner_prvkey, WARMUP_CHILDREN, map)
                pids = {
                    "engine": [stack.engine_pid],
                    "nats-server": [stack.nats_pid],
                    "executors": executors.pids,
                }
                for number, map in itertools.product(range(1, options.runs + 1), MAPS):
                    bytes_before = stream_bytes(stack.url)
                    with measuring_cpu(pids) as cpu:
                        started = time.perf_counter()
                        reduce = map_reduce(client, colony.name, colony.owner_prvkey, children, map)
                        seconds = time.perf_counter() - started
                    measured = Run(
                        map,
                        seconds,
                        phases(client, reduce, colony.owner_prvkey),
                        cpu,
                        stream_bytes(stack.url) - bytes_before,
                    )
                    report.details.append(measured)
                    key = "children" if map == "add_child" else "children_batch"
                    report.add(key, labels[map], "child/s", Sample(children, seconds))
                    print(
                        f"  run {number}/{options.runs}  {map:<12} {describe(measured)}",
                        flush=True,
                    )
        finally:
            client.disconnect()
    report.environment["load_average_after"] = environment()["load_average"]
    report.checks = [
        Check(
            labels[map],
            report.median("seconds", map),
            TARGET_SECONDS,
            "s",
            at_least=False,
            applies=not options.quick,
        )
        for map in MAPS
    ]
    print_details(report)
    return report


def describe(run: Run) -> str:
    steps = ", ".join(f"{phase} {run.phases[phase]:.2f}" for phase in PHASES)
    cpu = ", ".join(f"{party} {run.cpu[party]:.2f}" for party in PARTIES)
    return f"{run.seconds:.2f} s ({steps}); CPU s: {cpu}; stream +{run.stream_bytes / 1e6:.1f} MB"


def print_details(report: MapReduceReport) -> None:
    """Where the time went (medians over the runs), the target, the load average."""
    print()
    print(f"mapreduce: median of {report.runs} run(s), seconds (min..max)")
    header = f"{'phase':<44}" + "".join(f"{map:>22}" for map in MAPS)
    print(header)
    print("-" * len(header))
    for phase in PHASES:
        cells = ""
        for map in MAPS:
            values = [run.phases[phase] for run in report.details if run.map == map]
            figure = f"{report.median(phase, map):.2f} ({min(values):.2f}..{max(values):.2f})"
            cells += f"{figure:>22}"
        print(f"{PHASE_LABELS[phase]:<44}{cells}")
    print()
    for map in MAPS:
        cpu = ", ".join(f"{party} {report.median(party, map):.2f}" for party in PARTIES)
        mine = [run.stream_bytes for run in report.details if run.map == map]
        megabytes = statistics.median(mine) / 1e6
        print(f"{map}: CPU seconds per run (median) {cpu}; event stream {megabytes:.1f} MB")
    print()
    for check in report.checks:
        result = check.result
        print(f"{check.what}: {check.value:.2f} s (target <= {check.limit:g} s)  {result}")
    before, after = (
        ", ".join(f"{value:.2f}" for value in report.environment.get(key) or ())
        for key in ("load_average", "load_average_after")
    )
    print(f"load average (1, 5, 15 min): {before} before, {after} after")


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise RuntimeError(f"benchmark went wrong: {what}")
