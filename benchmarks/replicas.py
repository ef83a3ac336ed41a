"""Engine replicas (issue 8): 1, 2 and 3 engines on one log, in the same run.

For each replica count a fresh stack: one nats-server (configured by
:data:`~benchmarks.harness.NATS_CONFIG`), that many ``colonies server`` processes in the
queue group and the engine group's executor processes. Measured on each (the engine
group's own code, :class:`benchmarks.engine.EngineBenchmark`):

* **throughput**: no-op processes, one ``submit_func_spec`` each, until all SUCCESS;
* **claim latency**: ``starttime - submissiontime`` as the engine recorded it (idle
  executors, paced submissions), p50 / p99;
* **follower lag** (2 and 3 replicas): after each ``submit_func_spec`` the same process
  is read with raw ``get_process`` requests that carry no ``Colonies-After`` (so the
  answering replica does not wait) until one finds it: the time from the submit's reply
  to that answer is how long the write took to reach the replica that answered (an upper
  bound of the follower's lag, request round trip included); about 1 in N samples hits
  the writer itself;
* **failover** (2 replicas): a client submits in a loop; the replica its commands go to
  (replica affinity: the one that answered it) is SIGKILLed; the time from the kill to
  the end of the first command sent at or after it that succeeds, and the longest command
  spanning the kill (a request the dead replica took is answered after the client's
  retry: half its timeout, :data:`CLIENT_TIMEOUT` / 2). The replica is restarted between
  kills.

Where a second replica's cost goes, per throughput run: the CPU milliseconds per
process of every engine replica together, of the nats-server and of the executors (read
from ``/proc/<pid>/stat`` before and after: robust on a shared machine, unlike wall
time), and the replicas' coordination counts summed over them (``conflicts``,
``catch_ups``, ``claim_races``, ``after_waits``, ``behind``...: what each means is in
:mod:`colonies_es.engine.counters`), scraped from each engine's metrics port.

Targets (issue 8): two replicas keep at least 85% of one engine's throughput (PASS/MISS
on the medians of the same run); failover p99 <= 2 s; follower lag p99 <= 50 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import statistics
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import nats

from benchmarks import engine
from benchmarks.harness import NATS_CONFIG, Options, Report, cpu_seconds, environment
from colonies_es import crypto
from colonies_es.client import AsyncColonies, Colonies
from colonies_es.embedded import NatsServer, free_port
from colonies_es.protocol import api_subject

CLIENT_TIMEOUT = 2.0
"""Seconds the failover loop's client waits for a reply (it retries after half)."""

TARGET_KEPT = 0.85
TARGET_FAILOVER_S = 2.0
TARGET_LAG_MS = 50.0


def run(options: Options) -> Report:
    sizes = engine.QUICK if options.quick else engine.FULL
    lag_samples = 100 if options.quick else 300
    failovers = 3 if options.quick else 8
    report = engine.EngineReport(
        group="replicas",
        runs=options.runs,
        parameters={
            "processes": sizes.processes,
            "latency_samples": sizes.latency_samples,
            "lag_samples": lag_samples,
            "failovers": failovers,
            "executors": engine.EXECUTORS,
        },
        environment={**environment(), "nats_config": str(NATS_CONFIG)},
    )
    lags: dict[int, list[float]] = {}
    failover: list[float] = []
    spans: list[float] = []
    costs: dict[int, list[Cost]] = {}
    for count in (1, 2, 3):
        with replica_stack(count) as (stack, engines):
            bench = engine.EngineBenchmark(stack, sizes)
            for round_number in range(1, options.runs + 1):
                progress = f"{count} replica(s) run {round_number}/{options.runs}"
                with Cost.measuring(stack, engines, sizes.processes) as cost:
                    bench.throughput_single(report, progress)
                cost.add_executors(report)
                costs.setdefault(count, []).append(cost)
                print(f"    {cost.line()}", flush=True)
                bench.claim_latency(report, progress)
            _suffix(report, count)
            if count > 1:
                lags[count] = asyncio.run(follower_lag(stack, lag_samples))
            if count == 2:
                failover, spans = measure_failovers(stack, engines, failovers)
    report.targets = []
    report.environment["load_average_after"] = environment()["load_average"]
    report.parameters["follower_lag_ms"] = lags
    report.parameters["failover_seconds"] = failover
    report.parameters["failover_longest_command_seconds"] = spans
    report.parameters["cost_per_process"] = {
        count: [cost.to_json() for cost in runs] for count, runs in costs.items()
    }
    print_summary(report, lags, failover, spans, costs)
    return report


def _suffix(report: engine.EngineReport, count: int) -> None:
    """Renames this stack's keys (``tput_single``, ``claim``...) with the replica count."""

    def fresh(keys: list[str]) -> list[str]:
        return [k for k in keys if not k.rsplit("_", 1)[-1].startswith("x")]

    for key in fresh(list(report.rates)):
        report.rates[f"{key}_x{count}"] = report.rates.pop(key)
    for key in fresh(list(report.latencies)):
        report.latencies[f"{key}_x{count}"] = report.latencies.pop(key)
    for key in fresh(list(report.cpu)):
        report.cpu[f"{key}_x{count}"] = report.cpu.pop(key)


# ------------------------------------------------------------------------- stacks


@contextlib.contextmanager
def replica_stack(count: int) -> Iterator[tuple[engine.Stack, list[Replica]]]:
    """A nats-server and ``count`` engine processes; the stack's engine is the first."""
    with tempfile.TemporaryDirectory(prefix="colonies-bench-replicas-") as tmp:
        server = NatsServer(Path(tmp) / "jetstream", config=NATS_CONFIG).start()
        server_prvkey = crypto.new_private_key()
        server_id = crypto.id_from_private_key(server_prvkey)
        replicas = [
            Replica(server.url, server_id, Path(tmp) / f"engine-{n}.log") for n in range(count)
        ]
        admin = Colonies(servers=[server.url])
        try:
            for replica in replicas:
                replica.start()
            first = replicas[0].process
            assert first is not None
            yield engine.Stack(server, first, admin, server_prvkey), replicas
        finally:
            admin.disconnect()
            for replica in replicas:
                replica.stop()
            server.stop()


class Replica:
    """One ``colonies server`` of the queue group, restartable."""

    def __init__(self, url: str, server_id: str, log_file: Path) -> None:
        self.url = url
        self.server_id = server_id
        self.log_file = log_file
        self.metrics_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = engine.start_engine(
            self.url, self.server_id, self.log_file, metrics_port=self.metrics_port
        )

    def name(self) -> str:
        """Its replica name (``Colonies-Replica``), from its log's ready line."""
        for line in reversed(self.log_file.read_text(errors="replace").splitlines()):
            if "engine ready on" in line and "(replica " in line:
                return line.rsplit("(replica ", 1)[1].rstrip(")")
        raise RuntimeError(f"{self.log_file} names no replica")

    def counters(self) -> dict[str, float]:
        """Its ``colonies_replica_total{what}`` counts, scraped from its metrics port."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        found: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith('colonies_replica_total{what="'):
                labels, _, value = line.rpartition(" ")
                found[labels.split('"')[1]] = float(value)
        return found

    def cpu_seconds(self) -> float:
        assert self.process is not None
        return cpu_seconds(self.process.pid)

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


# ------------------------------------------------------------------------- cost


@dataclasses.dataclass
class Cost:
    """What one throughput run of ``processes`` cost: CPU milliseconds per process of all
    engine replicas together, of the nats-server and of the executors, and the replicas'
    coordination counts (summed over them) per process."""

    processes: int
    engines_ms: float = 0.0
    per_engine_ms: list[float] = dataclasses.field(default_factory=list)
    nats_ms: float = 0.0
    executors_ms: float = 0.0
    counts: dict[str, float] = dataclasses.field(default_factory=dict)

    @classmethod
    @contextlib.contextmanager
    def measuring(
        cls, stack: engine.Stack, replicas: list[Replica], processes: int
    ) -> Iterator[Cost]:
        """Measures the block (a throughput run; its warm-up and its colony's set-up
        are counted too, a few percent). The executors' CPU is the engine group's own
        meter of the same run (its executors live only inside the run)."""
        cost = cls(processes)
        engines_before = [replica.cpu_seconds() for replica in replicas]
        nats_before = cpu_seconds(stack.nats_pid)
        counts_before = [replica.counters() for replica in replicas]
        yield cost
        per_engine = [
            replica.cpu_seconds() - before
            for replica, before in zip(replicas, engines_before, strict=True)
        ]
        cost.per_engine_ms = [1000 * cpu / processes for cpu in per_engine]
        cost.engines_ms = sum(cost.per_engine_ms)
        cost.nats_ms = 1000 * (cpu_seconds(stack.nats_pid) - nats_before) / processes
        for replica, before in zip(replicas, counts_before, strict=True):
            for what, value in replica.counters().items():
                per_process = (value - before.get(what, 0.0)) / processes
                cost.counts[what] = cost.counts.get(what, 0.0) + per_process

    def add_executors(self, report: engine.EngineReport) -> None:
        """Takes the executors' CPU from the engine group's meter of the last run."""
        self.executors_ms = report.cpu["single"][-1]["executors"]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def line(self) -> str:
        engines = " + ".join(f"{ms:.2f}" for ms in self.per_engine_ms)
        counts = ", ".join(
            f"{what} {value:.2f}" for what, value in self.counts.items() if value >= 0.005
        )
        return (
            f"CPU ms/process: engines {self.engines_ms:.2f} ({engines}), nats-server "
            f"{self.nats_ms:.2f}; per process: {counts or 'no coordination'}"
        )


# ------------------------------------------------------------------------- follower lag


async def follower_lag(stack: engine.Stack, samples: int) -> list[float]:
    """Milliseconds from a submit's reply until a replica answering without waiting
    (no ``Colonies-After``) finds the process."""
    colony = stack.new_colony(executors=0)
    lags = []
    async with AsyncColonies(servers=[stack.url]) as client:
        nc = await nats.connect(stack.url)
        try:
            for _ in range(samples):
                process = await client.submit_func_spec(
                    engine.noop_spec(colony.name), colony.owner_prvkey
                )
                written = time.perf_counter()
                body = {"processid": process.processid}
                while True:
                    sealed = crypto.seal("get_process", body, colony.owner_prvkey)
                    reply = await nc.request(api_subject("get_process"), sealed, timeout=5)
                    if not (reply.headers or {}).get("Nats-Service-Error-Code"):
                        break
                lags.append((time.perf_counter() - written) * 1000)
                assert msgspec.json.decode(reply.data)["processid"] == process.processid
        finally:
            await nc.close()
    return lags


# ------------------------------------------------------------------------- failover


def measure_failovers(
    stack: engine.Stack, replicas: list[Replica], kills: int
) -> tuple[list[float], list[float]]:
    """Per kill: seconds to the first success after it, and the longest command."""
    colony = stack.new_colony(executors=0)
    recovered: list[float] = []
    longest: list[float] = []
    for number in range(kills):
        first, span, victim = asyncio.run(_submit_through_kill(stack.url, colony, replicas))
        recovered.append(first)
        longest.append(span)
        victim.start()
        print(f"  failover {number + 1}/{kills}: {first:.2f} s (longest command {span:.2f} s)")
    return recovered, longest


async def _submit_through_kill(
    url: str, colony: engine.Colony, replicas: list[Replica]
) -> tuple[float, float, Replica]:
    """Kills the replica the client's commands go to, half a second into a submit loop."""
    async with AsyncColonies(servers=[url], timeout=CLIENT_TIMEOUT) as client:
        victim: Replica | None = None
        killed_at: float | None = None
        first_after: float | None = None
        longest = 0.0
        started = time.perf_counter()
        while first_after is None or time.perf_counter() - first_after < 0.5:
            sent = time.perf_counter()
            if killed_at is None and sent - started > 0.5:
                [victim] = [r for r in replicas if r.name() == client.replica]
                victim.kill()
                killed_at = time.perf_counter()
                sent = killed_at
            await client.submit_func_spec(engine.noop_spec(colony.name), colony.owner_prvkey)
            done = time.perf_counter()
            if killed_at is not None:
                longest = max(longest, done - sent)
                if first_after is None:
                    first_after = done
        assert killed_at is not None
        assert victim is not None
        return first_after - killed_at, longest, victim


# ------------------------------------------------------------------------- summary


def print_summary(
    report: engine.EngineReport,
    lags: dict[int, list[float]],
    failover: list[float],
    spans: list[float],
    costs: dict[int, list[Cost]],
) -> None:
    def median(key: str) -> float:
        return report.rates[key].median if key in report.rates else float("nan")

    def latency(key: str, q: int) -> float:
        found = report.latencies.get(key)
        return found.percentile(q) if found is not None else float("nan")

    one = median("tput_single_x1")
    print("\n  replicas (medians)")
    for count in (1, 2, 3):
        rate = median(f"tput_single_x{count}")
        print(
            f"    {count} replica(s): {rate:>7,.0f} proc/s ({rate / one:.2f} of one)   "
            f"claim p50 {latency(f'claim_x{count}', 50):.1f} ms  "
            f"p99 {latency(f'claim_x{count}', 99):.1f} ms"
        )
    kept = median("tput_single_x2") / one
    verdict = "PASS" if kept >= TARGET_KEPT else "MISS"
    print(f"    2 replicas keep {kept:.2f} of one engine (target >= {TARGET_KEPT}): {verdict}")
    print_costs(costs)
    for count, samples in lags.items():
        p99 = engine.percentile(samples, 99)
        verdict = "PASS" if p99 <= TARGET_LAG_MS else "MISS"
        print(
            f"    follower lag, {count} replicas: p50 {engine.percentile(samples, 50):.1f} ms, "
            f"p99 {p99:.1f} ms (target <= {TARGET_LAG_MS:.0f}): {verdict}"
        )
    if failover:
        p99 = engine.percentile(failover, 99)
        verdict = "PASS" if p99 <= TARGET_FAILOVER_S else "MISS"
        print(
            f"    failover (kill -> first success): p50 {statistics.median(failover):.2f} s, "
            f"p99 {p99:.2f} s (target <= {TARGET_FAILOVER_S:.0f} s): {verdict}; longest "
            f"command across the kill {max(spans):.2f} s"
        )


def print_costs(costs: dict[int, list[Cost]]) -> None:
    """Medians of the CPU per process and of the coordination counts, and what the CPU
    alone allows on this machine: a run needing ``total`` CPU ms per process cannot go
    faster than ``cores * 1000 / total`` processes per second, whatever the replicas do."""
    cores = os.cpu_count() or 1
    print(f"\n  where the time goes (medians; CPU ms per process; {cores} cores)")
    ceilings: dict[int, float] = {}
    for count, runs in costs.items():
        engines_ms = statistics.median(c.engines_ms for c in runs)
        nats_ms = statistics.median(c.nats_ms for c in runs)
        executors_ms = statistics.median(c.executors_ms for c in runs)
        total = engines_ms + nats_ms + executors_ms
        ceilings[count] = cores * 1000 / total
        names = sorted({what for c in runs for what in c.counts})
        counts = ", ".join(
            f"{what} {statistics.median(c.counts.get(what, 0.0) for c in runs):.3f}"
            for what in names
        )
        print(
            f"    {count} replica(s): engines {engines_ms:.2f} + nats-server {nats_ms:.2f} + "
            f"executors {executors_ms:.2f} = {total:.2f} ms -> CPU ceiling "
            f"{ceilings[count]:,.0f} proc/s ({ceilings[count] / ceilings[1]:.2f} of one)"
        )
        print(f"      per process: {counts}")
