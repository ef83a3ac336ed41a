"""The engine end to end: a real engine process and executor processes on a fresh nats-server.

The stack is the production one: an embedded nats-server (configured by
:data:`~benchmarks.harness.NATS_CONFIG`), the engine as its own process (``python -m
colonies_es.cli server``, as ``tests/stack.py`` starts it) and :data:`EXECUTORS` executors,
each a separate OS process (multiprocessing, spawn) running the loop of a no-op executor
with the synchronous client: ``assign(colonyname, timeout)`` then ``close(processid, [])``.
Every measurement gets a fresh colony (and fresh executors); the stack serves all of them.

Measured:

* **throughput**: ``processes`` no-op processes submitted one ``submit_func_spec`` each
  (:data:`SUBMIT_WINDOW` in flight), then as workflows of :data:`WORKFLOW_ROOTS` roots
  (each graph is one aggregate: its commands are serialised on it); timed from
  the first submission to the last end notification (``colonies.ended.<colony>.*``, with
  ``stats`` as the fallback). The CPU seconds of the engine, the nats-server and the
  executors per process are kept too: on a small machine they say who the bottleneck is.
* **claim latency**: with the executors idle and waiting, ``latency_samples`` processes
  submitted one at a time at ``latency_rate`` per second. Per process: ``starttime -
  submissiontime`` as the engine recorded them (a root is ready when submitted); the
  executor's view, from the engine recording the assignment (``starttime``) to
  ``assign`` returning in the executor (its claim was held by the engine: the reply is
  the assignment); and end to end, from the submitter calling ``submit_func_spec`` to
  ``assign`` returning in an executor (same machine, same wall clock).
* references: one client's sequential ``get_process`` round trips (a signed read-only
  command), raw ``nc.request`` echo round trips, and sequential ``js.publish`` with its
  PubAck (the store group's raw measurement).

Targets (absolute, printed by :func:`run` as PASS/MISS; "n/a" in a ``--quick`` run, which
does less work than they are defined for): throughput >= 500 processes/s, claim latency
p50 <= 5 ms and p99 <= 25 ms (ColonyOS publishes a 25 ms average assign latency), both as
the engine records it and as a client sees it (``submit`` called -> ``assign`` returned).
The engine's pid is printed so that a profiler can attach (``py-spy record -p``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.context import SpawnProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import nats
from nats.aio.msg import Msg

from benchmarks import store
from benchmarks.harness import (
    NATS_CONFIG,
    QUICK_NOTE,
    CpuMeter,
    Options,
    Report,
    Sample,
    Stopwatch,
    Target,
    cpu_line,
    environment,
    server_version,
)
from colonies_es import crypto
from colonies_es.client import AsyncColonies, Colonies, ColoniesError
from colonies_es.embedded import NatsServer
from colonies_es.models import Conditions, FuncSpec, Process, Workflow
from colonies_es.protocol import ENDED_PREFIX
from colonies_es.states import ProcessState

EXECUTORS = 4
EXECUTOR_TYPE = "bench"
SUBMIT_WINDOW = 32
"""``submit_func_spec`` calls in flight in the throughput measurement."""

WORKFLOW_ROOTS = 500
"""Roots per workflow in the workflow throughput measurement. One workflow of 2,000 roots
does not fit: its GraphSubmitted event (the signed command and every process) is about
900 bytes per root, 1.8 MB, over the server's max_payload of 1 MB."""

WARMUP = 20
"""Processes run (untimed) in each fresh colony before a measurement."""

ASSIGN_TIMEOUT = 0.5
"""Seconds an executor's ``assign`` waits; also how soon executors notice they should stop."""

ENGINE_READY = b"colonies engine ready"
END_TIMEOUT = 300.0
"""Seconds a measurement may wait for its processes to end before it gives up."""

IDLE_LATENCIES = ("claim", "ticket", "e2e")
"""The latencies measured with idle executors (the others are under the throughput load)."""

TARGET_THROUGHPUT = 500.0
TARGET_P50_MS = 5.0
TARGET_P99_MS = 25.0


@dataclass(frozen=True)
class Sizes:
    processes: int
    """Processes per throughput measurement."""
    latency_samples: int
    latency_rate: float
    """Submissions per second in the latency measurement."""
    round_trips: int
    """Sequential round trips per reference measurement (get_process, echo)."""
    store: store.Sizes
    """For the raw ``js.publish`` measurement of the store group."""


FULL = Sizes(2000, 300, 50.0, 2000, store.FULL)
QUICK = Sizes(500, 100, 50.0, 500, store.QUICK)


# ------------------------------------------------------------------------- report


@dataclass
class Latency:
    """One measured latency: its samples (milliseconds) per run."""

    label: str
    runs: list[list[float]] = field(default_factory=list)

    def percentile(self, q: int) -> float:
        """The median over the runs of each run's ``q``-th percentile."""
        return statistics.median(percentile(samples, q) for samples in self.runs)

    def spread(self, q: int) -> tuple[float, float]:
        values = [percentile(samples, q) for samples in self.runs]
        return min(values), max(values)

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "unit": "ms",
            "p50": self.percentile(50),
            "p99": self.percentile(99),
            "runs": [
                {
                    "count": len(s),
                    "p50": percentile(s, 50),
                    "p90": percentile(s, 90),
                    "p99": percentile(s, 99),
                    "max": max(s),
                    "mean": statistics.fmean(s),
                }
                for s in self.runs
            ],
        }


def percentile(samples: Sequence[float], q: int) -> float:
    """The ``q``-th percentile (1..99) of ``samples``, interpolated."""
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1]


@dataclass(frozen=True)
class Check:
    """An absolute target: ``value`` (a rate or a latency) against ``limit``."""

    what: str
    value: float
    limit: float
    unit: str
    at_least: bool
    applies: bool = True
    """False in a ``--quick`` run: less work than the target is defined for."""

    @property
    def passed(self) -> bool:
        return self.value >= self.limit if self.at_least else self.value <= self.limit

    @property
    def result(self) -> str:
        if not self.applies:
            return QUICK_NOTE
        return "PASS" if self.passed else "MISS"

    def to_json(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "value": self.value,
            "target": f"{'>=' if self.at_least else '<='} {self.limit} {self.unit}",
            "result": self.result,
        }


@dataclass
class EngineReport(Report):
    """The rates of :class:`Report`, plus latencies, CPU costs and absolute targets."""

    latencies: dict[str, Latency] = field(default_factory=dict)
    cpu: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    """Per throughput measurement, per run: CPU milliseconds per process of each party."""
    checks: list[Check] = field(default_factory=list)

    def add_latency(self, key: str, label: str, samples_ms: list[float]) -> None:
        self.latencies.setdefault(key, Latency(label)).runs.append(samples_ms)

    def to_json(self) -> dict[str, Any]:
        document = super().to_json()
        document["latencies"] = {key: lat.to_json() for key, lat in self.latencies.items()}
        document["cpu_ms_per_process"] = self.cpu
        document["checks"] = [check.to_json() for check in self.checks]
        return document


TARGETS = [
    Target("tput_single", "raw_seq"),  # how far the engine is from one raw publish each
    Target("get_process", "raw_echo"),  # a signed command against a bare request/reply
]


def run(options: Options) -> Report:
    sizes = QUICK if options.quick else FULL
    report = EngineReport(
        group="engine",
        runs=options.runs,
        parameters={
            "processes": sizes.processes,
            "latency_samples": sizes.latency_samples,
            "latency_rate_per_s": sizes.latency_rate,
            "round_trips": sizes.round_trips,
            "executors": EXECUTORS,
            "submit_window": SUBMIT_WINDOW,
            "warmup_processes": WARMUP,
            "assign_timeout_s": ASSIGN_TIMEOUT,
        },
        environment={**environment(), "nats_config": str(NATS_CONFIG)},
        targets=TARGETS,
    )
    with Stack.started() as stack:
        report.environment["nats_server"] = server_version(stack.url)
        print(
            f"  engine pid {stack.engine_pid}, nats-server pid {stack.nats_pid} "
            f"(py-spy record -p {stack.engine_pid})",
            flush=True,
        )
        bench = EngineBenchmark(stack, sizes)
        for round_number in range(1, options.runs + 1):
            progress = f"run {round_number}/{options.runs}"
            for measurement in bench.measurements():
                measurement(report, progress)
    report.environment["load_average_after"] = environment()["load_average"]
    report.checks = checks(report, sizes)
    print_details(report)
    return report


def checks(report: EngineReport, sizes: Sizes) -> list[Check]:
    """The absolute targets; the claim latency both as the engine records it and as a
    client sees it (its ``submit`` called -> the executor's ``assign`` returned). In a
    quick run none applies."""
    claim, client = report.latencies["claim"], report.latencies["e2e"]
    applies = sizes != QUICK
    return [
        Check(
            f"throughput, {sizes.processes:,} submit_func_spec",
            report.rates["tput_single"].median,
            TARGET_THROUGHPUT,
            "processes/s",
            at_least=True,
            applies=applies,
        ),
        Check(
            f"throughput, {workflows_label(sizes.processes)}",
            report.rates["tput_workflow"].median,
            TARGET_THROUGHPUT,
            "processes/s",
            at_least=True,
            applies=applies,
        ),
        Check("claim latency p50", claim.percentile(50), TARGET_P50_MS, "ms", False, applies),
        Check("claim latency p99", claim.percentile(99), TARGET_P99_MS, "ms", False, applies),
        Check("claim p50, client", client.percentile(50), TARGET_P50_MS, "ms", False, applies),
        Check("claim p99, client", client.percentile(99), TARGET_P99_MS, "ms", False, applies),
    ]


def print_details(report: EngineReport) -> None:
    """The latencies, the CPU cost per process and the absolute targets (the rates follow,
    printed with the other groups')."""
    print()
    print(f"engine latencies: median of {report.runs} run(s) of each percentile")
    width = max(len(key) for key in report.latencies)
    header = (
        f"{'':<{width}}  {'measurement':<48} {'p50 ms':>7} {'p99 ms':>7} {'runs p99 min..max':>18}"
    )
    print(header)
    print("-" * len(header))
    idle_first = sorted(report.latencies.items(), key=lambda item: item[0] not in IDLE_LATENCIES)
    for key, latency in idle_first:
        low, high = latency.spread(99)
        print(
            f"{key:<{width}}  {latency.label:<48} {latency.percentile(50):>7.1f} "
            f"{latency.percentile(99):>7.1f} {f'{low:.1f}..{high:.1f}':>18}"
        )
    print()
    parties = ["engine", "nats-server", "executors", "submitter"]
    cores = report.environment.get("usable_cores") or os.cpu_count() or 1
    budget = 1000 * cores / TARGET_THROUGHPUT
    print(
        f"CPU ms per process, median of the runs ({TARGET_THROUGHPUT:.0f} processes/s on "
        f"{cores} cores leave {budget:.1f} ms for all of them)"
    )
    header = f"{'':<16}" + "".join(f"{party:>12}" for party in parties) + f"{'total':>12}"
    print(header)
    print("-" * len(header))
    for key, runs in report.cpu.items():
        values = [statistics.median(run[party] for run in runs) for party in parties]
        cells = "".join(f"{value:>12.2f}" for value in values)
        print(f"{key:<16}{cells}{sum(values):>12.2f}")
    print()
    header = f"{'engine target':<40} {'value':>12}  {'target':>18}  result"
    print(header)
    print("-" * len(header))
    for check in report.checks:
        value = f"{check.value:,.1f} {'ms' if check.unit == 'ms' else '/s'}"
        limit = f"{'>=' if check.at_least else '<='} {check.limit:g} {check.unit}"
        print(f"{check.what:<40} {value:>12}  {limit:>18}  {check.result}")
    before, after = (
        ", ".join(f"{value:.2f}" for value in report.environment.get(key) or ())
        for key in ("load_average", "load_average_after")
    )
    print(f"load average (1, 5, 15 min): {before} before, {after} after")


# ------------------------------------------------------------------------- the stack


@dataclass
class Colony:
    """A colony made for one measurement: its name, its owner's key, its executors' keys."""

    name: str
    owner_prvkey: str
    executor_prvkeys: list[str]


class Stack:
    """A fresh nats-server, the engine as a child process and an admin client."""

    def __init__(
        self,
        nats_server: NatsServer,
        engine: subprocess.Popen[bytes],
        admin: Colonies,
        server_prvkey: str,
    ) -> None:
        self.nats = nats_server
        self.engine = engine
        self.admin = admin
        self.server_prvkey = server_prvkey

    @property
    def url(self) -> str:
        return self.nats.url

    @property
    def engine_pid(self) -> int:
        return self.engine.pid

    @property
    def nats_pid(self) -> int:
        assert self.nats.pid is not None
        return self.nats.pid

    @classmethod
    @contextlib.contextmanager
    def started(cls) -> Iterator[Stack]:
        """The stack, stopped (and its files removed) afterwards."""
        with (
            tempfile.TemporaryDirectory(prefix="colonies-bench-engine-") as tmp,
            NatsServer(Path(tmp) / "jetstream", config=NATS_CONFIG) as server,
        ):
            server_prvkey = crypto.new_private_key()
            engine = start_engine(
                server.url, crypto.id_from_private_key(server_prvkey), Path(tmp) / "engine.log"
            )
            admin = Colonies(servers=[server.url])
            try:
                yield cls(server, engine, admin, server_prvkey)
            finally:
                admin.disconnect()
                engine.terminate()
                try:
                    engine.wait(15)
                except subprocess.TimeoutExpired:
                    engine.kill()
                    engine.wait(5)

    def new_colony(self, executors: int = EXECUTORS) -> Colony:
        """A fresh colony with ``executors`` approved executors of :data:`EXECUTOR_TYPE`."""
        name = f"bench{uuid.uuid4().hex[:10]}"
        owner = crypto.new_private_key()
        self.admin.add_colony(
            {"colonyid": crypto.id_from_private_key(owner), "name": name}, self.server_prvkey
        )
        keys = []
        for number in range(executors):
            key = crypto.new_private_key()
            executorname = f"ex{number}"
            executor = {
                "executorid": crypto.id_from_private_key(key),
                "executortype": EXECUTOR_TYPE,
                "executorname": executorname,
                "colonyname": name,
            }
            self.admin.add_executor(executor, owner)
            self.admin.approve_executor(name, executorname, owner)
            keys.append(key)
        return Colony(name, owner, keys)


def start_engine(
    nats_url: str,
    server_id: str,
    log_file: Path,
    timeout: float = 30.0,
    replicas: int = 1,
    metrics_port: int | None = None,
) -> subprocess.Popen[bytes]:
    """``colonies server`` as a child process, returned once it logged that it is ready;
    ``replicas`` is its streams' replica count (3 on a 3-node cluster); with
    ``metrics_port`` it serves its Prometheus metrics there."""
    metrics = [] if metrics_port is None else ["--metrics-port", str(metrics_port)]
    with log_file.open("wb") as log:
        engine = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "colonies_es.cli",
                "server",
                "--no-projector",
                "--nats",
                nats_url,
                *metrics,
            ],
            env={
                **os.environ,
                "COLONIES_SERVER_ID": server_id,
                "COLONIES_ENGINE_PRVKEY": crypto.new_private_key(),
                "COLONIES_STREAM_REPLICAS": str(replicas),
            },
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + timeout
    while ENGINE_READY not in log_file.read_bytes():
        if engine.poll() is not None or time.monotonic() > deadline:
            engine.kill()
            engine.wait(5)
            raise RuntimeError(f"the engine did not start: {log_file.read_text()[-3000:]}")
        time.sleep(0.02)
    return engine


# ------------------------------------------------------------------------- executors


@dataclass(frozen=True)
class Assignment:
    """What an executor saw of one process it ran."""

    processid: str
    assigned_at: float
    """Wall clock (``time.time()``) when ``assign`` returned it."""
    ticket_to_assigned: float
    """Seconds from the engine recording the assignment to the executor having it (the
    reply to its held claim, or to the close that claimed it)."""
    close_seconds: float
    """Seconds the ``close`` round trip took."""


def executor_main(
    url: str,
    colonyname: str,
    prvkey: str,
    ready: Event,
    stop: Event,
    results: Queue[list[Assignment]],
) -> None:
    """A no-op executor process: assign, close, until ``stop``; then its observations go
    to ``results``."""
    client = Colonies(servers=[url])
    try:
        with contextlib.suppress(ColoniesError):  # connected, and the claimer is known
            client.assign(colonyname, 0.05, prvkey)
        ready.set()
        assignments: list[Assignment] = []
        process: Process | None = None
        while not stop.is_set():
            if process is None:
                try:
                    process = client.assign(colonyname, ASSIGN_TIMEOUT, prvkey)
                except ColoniesError as error:
                    if error.status == 404:
                        continue
                    raise
            assigned = time.perf_counter()
            assigned_at = time.time()
            assert process.starttime is not None
            recorded = process.starttime.timestamp()
            # The close claims the next process in the same round trip (as PythonExecutor).
            following = client.close_and_claim(process.processid, [], prvkey, colonyname)
            assignments.append(
                Assignment(
                    process.processid,
                    assigned_at,
                    assigned_at - recorded,
                    time.perf_counter() - assigned,
                )
            )
            process = following if not stop.is_set() else None
        results.put(assignments)
    finally:
        client.disconnect()


class Executors:
    """One executor process per executor key of the colony, serving it while the ``with``
    block runs; afterwards :attr:`assignments` holds what they saw."""

    def __init__(self, url: str, colony: Colony) -> None:
        context = multiprocessing.get_context("spawn")
        self._ready = [context.Event() for _ in colony.executor_prvkeys]
        self._stop = context.Event()
        self._results: Queue[list[Assignment]] = context.Queue()
        self._processes: list[SpawnProcess] = [
            context.Process(
                target=executor_main,
                args=(url, colony.name, key, ready, self._stop, self._results),
                name=f"bench-executor-{number}",
                daemon=False,  # an executor starts a child process per worker
            )
            for number, (key, ready) in enumerate(
                zip(colony.executor_prvkeys, self._ready, strict=True)
            )
        ]
        self.assignments: list[Assignment] = []

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
        try:
            for _ in self._processes:
                self.assignments.extend(self._results.get(timeout=30))
        except queue.Empty:
            self._kill()
            raise RuntimeError("an executor did not report") from None
        for process in self._processes:
            process.join(15)
        self._kill()

    def _kill(self) -> None:
        for process in self._processes:
            if process.is_alive():
                process.kill()
                process.join(5)

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self._processes if process.pid is not None]


# ------------------------------------------------------------------------- measurements


def noop_spec(colonyname: str, nodename: str = "noop") -> FuncSpec:
    return FuncSpec(
        nodename=nodename,
        funcname="noop",
        conditions=Conditions(colonyname=colonyname, executortype=EXECUTOR_TYPE),
    )


class EndWatcher:
    """Counts the end notifications of a colony's processes (``colonies.ended.<colony>.*``)."""

    def __init__(self, url: str, colony: Colony) -> None:
        self._url = url
        self._colony = colony
        self.ended = 0
        self._enough = asyncio.Event()
        self._expected = 0

    async def _on_end(self, msg: Msg) -> None:
        self.ended += 1
        if self.ended >= self._expected:
            self._enough.set()

    @contextlib.asynccontextmanager
    async def listening(self) -> AsyncIterator[EndWatcher]:
        nc = await nats.connect(self._url)
        try:
            await nc.subscribe(f"{ENDED_PREFIX}.{self._colony.name}.*", cb=self._on_end)
            yield self
        finally:
            await nc.close()

    async def wait_for(self, client: AsyncColonies, expected: int) -> None:
        """Until ``expected`` processes of the colony ended (counting from the start).

        End notifications are at-most-once; when none came for a while, the colony's
        ``stats`` decide."""
        self._expected = expected
        if self.ended >= expected:
            return
        self._enough.clear()
        deadline = time.monotonic() + END_TIMEOUT
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._enough.wait(), 2.0)
                return
            stats = await client.stats(self._colony.name, self._colony.owner_prvkey)
            if stats.successfulprocesses + stats.failedprocesses >= expected:
                return
        raise RuntimeError(f"only {self.ended} of {expected} processes ended")


Measurement = Callable[[EngineReport, str], None]


class EngineBenchmark:
    def __init__(self, stack: Stack, sizes: Sizes) -> None:
        self.stack = stack
        self.sizes = sizes
        self._store = store.StoreBenchmark(stack.url, sizes.store)

    def measurements(self) -> list[Measurement]:
        return [
            self.throughput_single,
            self.throughput_workflow,
            self.claim_latency,
            self.get_process,
            self.raw_echo,
            self.raw_publish,
        ]

    def _client(self) -> AsyncColonies:
        return AsyncColonies(servers=[self.stack.url])

    # -- throughput

    def throughput_single(self, report: EngineReport, progress: str) -> None:
        n = self.sizes.processes
        label = f"engine: {n:,} submit_func_spec -> all SUCCESS"
        sample, submitted = self._throughput(
            lambda c, cl: submit_each(c, cl, n), n, report, "single"
        )
        report.add("tput_single", label, "proc/s", sample)
        report.add(
            "submit_single", "  of which submitting (executors running)", "proc/s", submitted
        )
        print(f"  {progress}  {label:<48} {sample.rate:>10,.0f} proc/s", flush=True)
        print(f"    {cpu_line(report.cpu['single'][-1])}", flush=True)

    def throughput_workflow(self, report: EngineReport, progress: str) -> None:
        n = self.sizes.processes
        label = f"engine: {workflows_label(n)} -> all SUCCESS"
        sample, submitted = self._throughput(
            lambda c, cl: submit_workflows(c, cl, n), n, report, "workflow"
        )
        report.add("tput_workflow", label, "proc/s", sample)
        report.add(
            "submit_workflow", "  of which submitting (one command each)", "proc/s", submitted
        )
        print(f"  {progress}  {label:<48} {sample.rate:>10,.0f} proc/s", flush=True)
        print(f"    {cpu_line(report.cpu['workflow'][-1])}", flush=True)

    def _throughput(
        self,
        submit: Callable[[AsyncColonies, Colony], Awaitable[None]],
        n: int,
        report: EngineReport,
        cpu_key: str,
    ) -> tuple[Sample, Sample]:
        """Runs ``submit`` in a fresh colony served by the executors; times it and the
        end of its ``n`` processes."""
        colony = self.stack.new_colony()

        async def measure() -> tuple[Sample, Sample]:
            client = self._client()
            watcher = EndWatcher(self.stack.url, colony)
            async with client, watcher.listening():
                await submit_each(client, colony, WARMUP)
                await watcher.wait_for(client, WARMUP)
                with meter.measuring(), Stopwatch() as watch:
                    with Stopwatch() as submitting:
                        await submit(client, colony)
                    await watcher.wait_for(client, WARMUP + n)
                stats = await client.stats(colony.name, colony.owner_prvkey)
                _check(stats.successfulprocesses == WARMUP + n, f"stats say {stats}")
            return Sample(n, watch.seconds), Sample(n, submitting.seconds)

        with Executors(self.stack.url, colony) as executors:
            meter = CpuMeter(
                {
                    "engine": [self.stack.engine_pid],
                    "nats-server": [self.stack.nats_pid],
                    "executors": executors.pids,
                }
            )
            samples = asyncio.run(measure())
        per_process = meter.per_unit(n)
        report.cpu.setdefault(cpu_key, []).append(per_process)
        assignments = executors.assignments
        report.add_latency(
            f"{cpu_key}_ticket",
            f"{cpu_key}, loaded: assignment recorded -> executor has it",
            [1000 * a.ticket_to_assigned for a in assignments],
        )
        report.add_latency(
            f"{cpu_key}_close",
            f"{cpu_key}, loaded: close (and claim) round trip",
            [1000 * a.close_seconds for a in assignments],
        )
        return samples

    # -- claim latency

    def claim_latency(self, report: EngineReport, progress: str) -> None:
        colony = self.stack.new_colony()
        n, rate = self.sizes.latency_samples, self.sizes.latency_rate

        async def measure() -> tuple[dict[str, float], list[Process]]:
            client = self._client()
            watcher = EndWatcher(self.stack.url, colony)
            async with client, watcher.listening():
                await submit_each(client, colony, WARMUP)
                await watcher.wait_for(client, WARMUP)
                submitted = await submit_paced(client, colony, n, rate)
                await watcher.wait_for(client, WARMUP + n)
                # One get per process: listings come from a projector, which this
                # benchmark of the engine alone does not run.
                ended = [
                    await client.get_process(processid, colony.owner_prvkey)
                    for processid in submitted
                ]
            return submitted, [p for p in ended if p.state == ProcessState.SUCCESS]

        with Executors(self.stack.url, colony) as executors:
            submitted, processes = asyncio.run(measure())
        _check(len(processes) == n, f"{len(processes)} of {n} measured processes ended")
        claim = []
        for process in processes:
            assert process.starttime is not None
            assert process.submissiontime is not None
            claim.append(1000 * (process.starttime - process.submissiontime).total_seconds())
        seen = [a for a in executors.assignments if a.processid in submitted]
        _check(len(seen) == n, f"the executors ran {len(seen)} of {n} measured processes")
        ticket = [1000 * a.ticket_to_assigned for a in seen]
        e2e = [1000 * (a.assigned_at - submitted[a.processid]) for a in seen]
        report.add_latency("claim", "claim: starttime - submissiontime (engine)", claim)
        report.add_latency("ticket", "executor: assignment recorded -> has it", ticket)
        report.add_latency("e2e", "end to end: submit called -> assign returns", e2e)
        print(
            f"  {progress}  claim latency p50 {percentile(claim, 50):.1f} ms, "
            f"p99 {percentile(claim, 99):.1f} ms; recorded->executor p50 "
            f"{percentile(ticket, 50):.1f} ms; end to end p50 {percentile(e2e, 50):.1f} ms",
            flush=True,
        )

    # -- references

    def get_process(self, report: EngineReport, progress: str) -> None:
        colony = self.stack.new_colony(executors=0)
        count = self.sizes.round_trips

        async def measure() -> Sample:
            client = self._client()
            async with client:
                process = await client.submit_func_spec(noop_spec(colony.name), colony.owner_prvkey)
                for _ in range(WARMUP):
                    await client.get_process(process.processid, colony.owner_prvkey)
                with Stopwatch() as watch:
                    for _ in range(count):
                        await client.get_process(process.processid, colony.owner_prvkey)
            return Sample(count, watch.seconds)

        sample = asyncio.run(measure())
        label = "engine: get_process round trips, sequential"
        report.add("get_process", label, "calls/s", sample)
        print(f"  {progress}  {label:<48} {sample.rate:>10,.0f} calls/s", flush=True)

    def raw_echo(self, report: EngineReport, progress: str) -> None:
        """``nc.request`` round trips to a responder on another connection; the payload is
        the size of a signed ``get_process`` command."""
        count = self.sizes.round_trips
        payload = crypto.seal(
            "get_process", {"processid": uuid.uuid4().hex * 2}, crypto.new_private_key()
        )

        async def measure() -> Sample:
            responder = await nats.connect(self.stack.url)
            requester = await nats.connect(self.stack.url)
            try:

                async def echo(msg: Msg) -> None:
                    await msg.respond(msg.data)

                await responder.subscribe("bench.echo", cb=echo)
                await responder.flush()
                for _ in range(WARMUP):
                    await requester.request("bench.echo", payload, timeout=5)
                with Stopwatch() as watch:
                    for _ in range(count):
                        await requester.request("bench.echo", payload, timeout=5)
                return Sample(count, watch.seconds)
            finally:
                await requester.close()
                await responder.close()

        sample = asyncio.run(measure())
        label = "raw: nc.request echo round trips, sequential"
        report.add("raw_echo", label, "msgs/s", sample)
        print(f"  {progress}  {label:<48} {sample.rate:>10,.0f} msgs/s", flush=True)

    def raw_publish(self, report: EngineReport, progress: str) -> None:
        sample = self._store.raw_sequential()
        label = "raw: js.publish, sequential"
        report.add("raw_seq", label, "msgs/s", sample)
        print(f"  {progress}  {label:<48} {sample.rate:>10,.0f} msgs/s", flush=True)


async def submit_each(client: AsyncColonies, colony: Colony, n: int) -> None:
    """``n`` no-op processes, one ``submit_func_spec`` each, :data:`SUBMIT_WINDOW` at once."""
    numbers = itertools.count()
    spec = noop_spec(colony.name)

    async def submitter() -> None:
        while next(numbers) < n:
            await client.submit_func_spec(spec, colony.owner_prvkey)

    await asyncio.gather(*(submitter() for _ in range(min(SUBMIT_WINDOW, n))))


async def submit_workflows(client: AsyncColonies, colony: Colony, n: int) -> None:
    """``n`` independent no-op processes (all roots) in workflows of :data:`WORKFLOW_ROOTS`,
    submitted one after the other."""
    for first in range(0, n, WORKFLOW_ROOTS):
        roots = range(first, min(n, first + WORKFLOW_ROOTS))
        specs = [noop_spec(colony.name, f"p{number}") for number in roots]
        workflow = Workflow(colonyname=colony.name, functionspecs=specs)
        await client.submit_workflow(workflow, colony.owner_prvkey)


def workflows_label(n: int) -> str:
    count = -(-n // WORKFLOW_ROOTS)
    roots = min(n, WORKFLOW_ROOTS)
    return f"{count} workflow{'s' if count > 1 else ''} of {roots:,} roots"


async def submit_paced(
    client: AsyncColonies, colony: Colony, n: int, rate: float
) -> dict[str, float]:
    """``n`` processes submitted one at a time, ``rate`` per second; returns, per process
    id, the wall clock time at which its ``submit_func_spec`` was called."""
    loop = asyncio.get_running_loop()
    spec = noop_spec(colony.name)
    submitted: dict[str, float] = {}
    next_at = loop.time()
    for _ in range(n):
        await asyncio.sleep(max(0.0, next_at - loop.time()))
        next_at += 1 / rate
        called = time.time()
        process = await client.submit_func_spec(spec, colony.owner_prvkey)
        submitted[process.processid] = called
    return submitted


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise RuntimeError(f"benchmark went wrong: {what}")
