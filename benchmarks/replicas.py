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
* **failover** (2 replicas): a client submits in a loop; one replica is SIGKILLed; the
  time from the kill to the end of the first command sent at or after it that succeeds,
  and the longest command spanning the kill (a request the dead replica took is answered
  after the client's retry: half its timeout, :data:`CLIENT_TIMEOUT` / 2). The replica
  is restarted between kills.

CPU per process counts the first replica only. Targets (issue 8): two replicas keep at
least 85% of one engine's throughput; failover p99 <= 2 s; follower lag p99 <= 50 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import nats

from benchmarks import engine
from benchmarks.harness import NATS_CONFIG, Options, Report, environment
from colonies_es import crypto
from colonies_es.client import AsyncColonies, Colonies
from colonies_es.embedded import NatsServer
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
    for count in (1, 2, 3):
        with replica_stack(count) as (stack, engines):
            bench = engine.EngineBenchmark(stack, sizes)
            for round_number in range(1, options.runs + 1):
                progress = f"{count} replica(s) run {round_number}/{options.runs}"
                bench.throughput_single(report, progress)
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
    print_summary(report, lags, failover, spans)
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
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = engine.start_engine(self.url, self.server_id, self.log_file)

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
        victim = replicas[1 + number % (len(replicas) - 1)]
        first, span = asyncio.run(_submit_through_kill(stack.url, colony, victim))
        recovered.append(first)
        longest.append(span)
        victim.start()
        print(f"  failover {number + 1}/{kills}: {first:.2f} s (longest command {span:.2f} s)")
    return recovered, longest


async def _submit_through_kill(
    url: str, colony: engine.Colony, victim: Replica
) -> tuple[float, float]:
    async with AsyncColonies(servers=[url], timeout=CLIENT_TIMEOUT) as client:
        killed_at: float | None = None
        first_after: float | None = None
        longest = 0.0
        started = time.perf_counter()
        while first_after is None or time.perf_counter() - first_after < 0.5:
            sent = time.perf_counter()
            if killed_at is None and sent - started > 0.5:
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
        return first_after - killed_at, longest


# ------------------------------------------------------------------------- summary


def print_summary(
    report: engine.EngineReport,
    lags: dict[int, list[float]],
    failover: list[float],
    spans: list[float],
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
