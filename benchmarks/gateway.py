"""The ColonyOS gateway with pycolonies clients and executors, beside the native client.

The stack of the engine group (a fresh nats-server, the engine as its own process) plus
``colonies gateway`` as its own process. Every measurement gets a fresh colony.

Measured, in the same run:

* **native throughput**: the engine group's ``submit_func_spec`` throughput (4 native
  executor processes, :data:`~benchmarks.engine.SUBMIT_WINDOW` submissions in flight).
* **gateway throughput**: the same number of no-op processes submitted by pycolonies
  (``submit_func_spec`` from :data:`SUBMIT_THREADS` threads) and run by 4 pycolonies
  executor processes (``assign`` long poll, then ``close``), all over HTTP through the
  gateway; timed from the first submission to the last end notification. Twice: with
  pycolonies as published (its default pure-Python secp256k1 signing, about 5 ms a
  signature here, three per process: submit, assign, close), and with pycolonies' signing
  replaced in the client processes by coincurve (the same signatures byte for byte, like
  pycolonies' own ``native_crypto=True``), which leaves the gateway's own cost.
* **assign latency**: with the pycolonies executors idle in ``assign``, processes
  submitted one at a time at ``latency_rate`` per second; ``starttime - submissiontime``
  as the engine recorded them, and end to end, from ``submit_func_spec`` called to
  ``assign`` returning in a pycolonies executor. The engine group's claim latency of the
  native executor is measured beside it.
* reference: raw sequential ``js.publish`` (the store group's raw measurement).

Targets: gateway throughput >= 60% of native; assign latency p50 <= 5 ms (ColonyOS
publishes 25 ms on average).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path

from benchmarks import engine
from benchmarks.engine import (
    EXECUTOR_TYPE,
    QUICK,
    TARGET_P50_MS,
    TARGET_P99_MS,
    WARMUP,
    Check,
    Colony,
    EndWatcher,
    EngineBenchmark,
    EngineReport,
    Sizes,
    Stack,
    percentile,
    print_details,
)
from benchmarks.harness import Options, Report, Sample, Stopwatch, Target, environment
from benchmarks.harness import server_version as nats_server_version
from colonies_es.client import AsyncColonies

SUBMIT_THREADS = 8
"""pycolonies is synchronous: the submitter runs this many threads of ``submit_func_spec``."""

ASSIGN_TIMEOUT = 10
"""Seconds of each pycolonies executor's ``assign`` long poll (an int, as ColonyOS takes;
pycolonies' own python executor example uses 10)."""

_READY = re.compile(rb"colonies gateway ready on http://[^:]+:(\d+)")

TARGETS = [
    Target("gw_tput", "tput_single", 0.6),
    Target("gw_tput_fast", "tput_single", 0.6),
    Target("tput_single", "raw_seq"),
]


def run(options: Options) -> Report:
    sizes = QUICK if options.quick else engine.FULL
    report = EngineReport(
        group="gateway",
        runs=options.runs,
        parameters={
            "processes": sizes.processes,
            "latency_samples": sizes.latency_samples,
            "latency_rate_per_s": sizes.latency_rate,
            "executors": engine.EXECUTORS,
            "submit_threads": SUBMIT_THREADS,
            "assign_timeout_s": ASSIGN_TIMEOUT,
        },
        environment=environment(),
        targets=TARGETS,
    )
    with Stack.started() as stack, gateway_started(stack.url) as (gateway, port):
        report.environment["nats_server"] = nats_server_version(stack.url)
        print(f"  engine pid {stack.engine_pid}, gateway pid {gateway.pid}", flush=True)
        native = EngineBenchmark(stack, sizes)
        bench = GatewayBenchmark(stack, port, gateway.pid, sizes)
        for round_number in range(1, options.runs + 1):
            progress = f"run {round_number}/{options.runs}"
            native.throughput_single(report, progress)
            bench.throughput(report, progress, fast_crypto=False)
            bench.throughput(report, progress, fast_crypto=True)
            native.claim_latency(report, progress)
            bench.assign_latency(report, progress)
            native.raw_publish(report, progress)
    report.environment["load_average_after"] = environment()["load_average"]
    applies = sizes != QUICK
    assign = report.latencies["gw_claim"]
    client = report.latencies["gw_e2e"]
    report.checks = [
        Check(what, latency.percentile(q), limit, "ms", False, applies)
        for what, latency, q, limit in (
            ("assign latency p50 (engine)", assign, 50, TARGET_P50_MS),
            ("assign latency p99 (engine)", assign, 99, TARGET_P99_MS),
            ("assign p50, pycolonies client", client, 50, TARGET_P50_MS),
            ("assign p99, pycolonies client", client, 99, TARGET_P99_MS),
        )
    ]
    print_details(report)
    return report


@contextlib.contextmanager
def gateway_started(nats_url: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``colonies gateway`` on a free port, as a child process."""
    with tempfile.TemporaryDirectory(prefix="colonies-bench-gateway-") as tmp:
        log_file = Path(tmp) / "gateway.log"
        with log_file.open("wb") as log:
            gateway = subprocess.Popen(
                [
                    *(sys.executable, "-m", "colonies_es.cli", "gateway"),
                    *("--nats", nats_url, "--port", "0"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 30
            while (found := _READY.search(log_file.read_bytes())) is None:
                if gateway.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the gateway did not start: {log_file.read_text()}")
                time.sleep(0.02)
            yield gateway, int(found.group(1))
        finally:
            gateway.terminate()
            try:
                gateway.wait(15)
            except subprocess.TimeoutExpired:
                gateway.kill()
                gateway.wait(5)


_PURE_PYTHON_SIGN: list[object] = []


def pycolonies_signing(fast: bool) -> None:
    """Make pycolonies sign in this process with coincurve (``fast``: the same
    deterministic low-s signatures) or with its own pure-Python code."""
    import crypto as pycolonies_crypto  # pycolonies' own top-level module

    from colonies_es import colonyos

    if not _PURE_PYTHON_SIGN:
        _PURE_PYTHON_SIGN.append(pycolonies_crypto.Crypto.sign)

    def sign(self: object, data: str, prvkey: str) -> str:
        return colonyos.sign(data, prvkey)

    pycolonies_crypto.Crypto.sign = sign if fast else _PURE_PYTHON_SIGN[0]


# ------------------------------------------------------------------------- executors


def pycolonies_executor_main(
    port: int,
    colonyname: str,
    prvkey: str,
    fast_crypto: bool,
    ready: Event,
    stop: Event,
    results: Queue[list[tuple[str, float]]],
) -> None:
    """A no-op pycolonies executor process: assign, close, until ``stop``; then (process
    id, wall clock when ``assign`` returned it) of each process go to ``results``."""
    pycolonies_signing(fast_crypto)
    from pycolonies import Colonies as PyColonies

    client = PyColonies("127.0.0.1", port)
    ready.set()
    assigned: list[tuple[str, float]] = []
    while not stop.is_set():
        try:
            process = client.assign(colonyname, ASSIGN_TIMEOUT, prvkey)
        except Exception as error:
            if "No process available" in str(error):
                continue
            raise
        assigned.append((process.processid, time.time()))
        client.close(process.processid, [], prvkey)
    results.put(assigned)


class PyExecutors:
    """One pycolonies executor process per executor key of the colony, serving it while the
    ``with`` block runs; afterwards :attr:`assigned` holds what they ran, and when."""

    def __init__(self, port: int, colony: Colony, fast_crypto: bool) -> None:
        context = multiprocessing.get_context("spawn")
        self._ready = [context.Event() for _ in colony.executor_prvkeys]
        self._stop = context.Event()
        self._results: Queue[list[tuple[str, float]]] = context.Queue()
        self._processes: list[SpawnProcess] = [
            context.Process(
                target=pycolonies_executor_main,
                args=(port, colony.name, key, fast_crypto, ready, self._stop, self._results),
                name=f"bench-pycolonies-{number}",
                daemon=True,
            )
            for number, (key, ready) in enumerate(
                zip(colony.executor_prvkeys, self._ready, strict=True)
            )
        ]
        self.assigned: dict[str, float] = {}

    def __enter__(self) -> PyExecutors:
        for process in self._processes:
            process.start()
        for process, ready in zip(self._processes, self._ready, strict=True):
            if not ready.wait(60):
                self._kill()
                raise RuntimeError(f"executor {process.name} did not start")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        try:
            for _ in self._processes:
                self.assigned.update(self._results.get(timeout=30))
        except queue.Empty:
            self._kill()
            raise RuntimeError("a pycolonies executor did not report") from None
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


@dataclass
class GatewayBenchmark:
    stack: Stack
    port: int
    gateway_pid: int
    sizes: Sizes

    def _submitter(self, colony: Colony, fast_crypto: bool) -> object:
        """A pycolonies client and a no-op spec for the colony."""
        pycolonies_signing(fast_crypto)
        from pycolonies import Colonies as PyColonies
        from pycolonies import func_spec

        client = PyColonies("127.0.0.1", self.port)
        spec = func_spec("noop", [], colony.name, EXECUTOR_TYPE)
        return lambda: client.submit_func_spec(spec, colony.owner_prvkey)

    def throughput(self, report: EngineReport, progress: str, fast_crypto: bool) -> None:
        n = self.sizes.processes
        colony = self.stack.new_colony()
        submit = self._submitter(colony, fast_crypto)
        assert callable(submit)

        async def measure() -> Sample:
            client = AsyncColonies(servers=[self.stack.url])
            watcher = EndWatcher(self.stack.url, colony)
            loop = asyncio.get_running_loop()
            async with client, watcher.listening():
                with ThreadPoolExecutor(SUBMIT_THREADS) as pool:
                    await asyncio.gather(
                        *(loop.run_in_executor(pool, submit) for _ in range(WARMUP))
                    )
                    await watcher.wait_for(client, WARMUP)
                    with meter.measuring(), Stopwatch() as watch:
                        await asyncio.gather(
                            *(loop.run_in_executor(pool, submit) for _ in range(n))
                        )
                        await watcher.wait_for(client, WARMUP + n)
            return Sample(n, watch.seconds)

        with PyExecutors(self.port, colony, fast_crypto) as executors:
            meter = engine.CpuMeter(
                {
                    "engine": [self.stack.engine_pid],
                    "nats-server": [self.stack.nats_pid],
                    "executors": executors.pids,
                    "gateway": [self.gateway_pid],
                }
            )
            sample = asyncio.run(measure())
        key = "gw_tput_fast" if fast_crypto else "gw_tput"
        signing = "coincurve signing" if fast_crypto else "pycolonies as published"
        label = f"gateway: {n:,} pycolonies processes ({signing})"
        report.add(key, label, "proc/s", sample)
        per_process = {party: 1000 * cpu / n for party, cpu in meter.used.items()}
        report.cpu.setdefault(key, []).append(per_process)
        costs = ", ".join(f"{party} {ms:.1f}" for party, ms in per_process.items())
        print(f"  {progress}  {label:<48} {sample.rate:>10,.0f} proc/s", flush=True)
        print(f"      CPU ms per process: {costs}", flush=True)

    def assign_latency(self, report: EngineReport, progress: str) -> None:
        colony = self.stack.new_colony()
        n, rate = self.sizes.latency_samples, self.sizes.latency_rate
        submit = self._submitter(colony, fast_crypto=True)
        assert callable(submit)
        submitted: dict[str, float] = {}

        def paced() -> None:
            next_at = time.monotonic()
            for _ in range(n):
                time.sleep(max(0.0, next_at - time.monotonic()))
                next_at += 1 / rate
                called = time.time()
                submitted[submit().processid] = called

        with PyExecutors(self.port, colony, fast_crypto=True) as executors:
            for _ in range(WARMUP):
                submit()
            time.sleep(1.0)  # the warm-up ran; the executors wait in assign again
            worker = threading.Thread(target=paced)
            worker.start()
            worker.join()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                stats = self.stack.admin.stats(colony.name, colony.owner_prvkey)
                if stats.successfulprocesses >= WARMUP + n:
                    break
                time.sleep(0.2)
        claim, e2e = [], []
        for processid, called in submitted.items():
            process = self.stack.admin.get_process(processid, colony.owner_prvkey)
            assert process.starttime is not None
            assert process.submissiontime is not None
            claim.append(1000 * (process.starttime - process.submissiontime).total_seconds())
            e2e.append(1000 * (executors.assigned[processid] - called))
        report.add_latency("gw_claim", "gateway: starttime - submissiontime (engine)", claim)
        report.add_latency("gw_e2e", "gateway: submit called -> pycolonies assign returns", e2e)
        print(
            f"  {progress}  gateway assign latency p50 {percentile(claim, 50):.1f} ms, "
            f"p99 {percentile(claim, 99):.1f} ms; end to end p50 {percentile(e2e, 50):.1f} ms",
            flush=True,
        )
