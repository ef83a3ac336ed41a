"""The engine on one nats-server (R1) and on a 3-node JetStream cluster (R3), in the same
run, and what a stream leader's death costs.

For R1, then R3, a fresh stack: the nats-server(s) (configured by
:data:`~benchmarks.harness.NATS_CONFIG`), the engine process (``COLONIES_STREAM_REPLICAS``
1 or 3) and the engine group's executor processes. Measured on each (the engine group's
own measurements, :class:`benchmarks.engine.EngineBenchmark`):

* **raw**: sequential ``js.publish`` with its PubAck to a stream with that many replicas
  (the baseline of the ratios);
* **throughput**: no-op processes, one ``submit_func_spec`` each, until all SUCCESS;
* **claim latency**: ``starttime - submissiontime`` as the engine records it, idle
  executors, paced submissions (p50 / p99).

The clients talk to the first node; the engine gets every node's URL. CPU per process
counts the first node's nats-server only.

**Failover** (R3 only): a loop appends one message at a time; the nats-server leading the
stream is SIGKILLed; the time from the kill to the first append that succeeds after it is
the failover time. Measured raw (``js.publish`` to an R3 stream, the client connected to a
node that survives) and through the engine (``submit_func_spec`` in a loop, the engine
connected to all nodes). Between two kills the node is restarted and the stream is
current again on all three.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import nats.errors

from benchmarks import engine
from benchmarks.harness import NATS_CONFIG, Options, Report, Sample, Stopwatch, environment
from colonies_es import crypto
from colonies_es.client import AsyncColonies, Colonies, ColoniesConnectionError, ColoniesError
from colonies_es.embedded import NatsServer
from colonies_es.embedded_cluster import NatsCluster

LOG_STREAM = "COLONIES"
RAW_STREAM = "BENCH_RAW"
APPEND_TIMEOUT = 1.0
"""Seconds one append may take before the failover loop tries again."""
RECOVERY_TIMEOUT = 60.0


@dataclass(frozen=True)
class Sizes:
    engine: engine.Sizes
    raw_messages: int
    failovers: int


FULL = Sizes(engine.FULL, 2000, 5)
QUICK = Sizes(engine.QUICK, 500, 3)


def run(options: Options) -> Report:
    sizes = QUICK if options.quick else FULL
    report = engine.EngineReport(
        group="cluster",
        runs=options.runs,
        parameters={
            "processes": sizes.engine.processes,
            "latency_samples": sizes.engine.latency_samples,
            "raw_messages": sizes.raw_messages,
            "failovers": sizes.failovers,
            "executors": engine.EXECUTORS,
        },
        environment={**environment(), "nats_config": str(NATS_CONFIG)},
    )
    failover: dict[str, list[float]] = {}
    for replicas in (1, 3):
        with stack(replicas) as (bench_stack, cluster):
            bench = engine.EngineBenchmark(bench_stack, sizes.engine)
            for round_number in range(1, options.runs + 1):
                progress = f"R{replicas} run {round_number}/{options.runs}"
                raw = asyncio.run(raw_publish(bench_stack.url, replicas, sizes.raw_messages))
                report.add(f"raw_r{replicas}", f"raw js.publish+ack, R{replicas}", "msg/s", raw)
                print(
                    f"  {progress}  raw js.publish R{replicas}: {raw.rate:,.0f} msg/s", flush=True
                )
                bench.throughput_single(report, progress)
                bench.claim_latency(report, progress)
            _suffix(report, replicas)
            if cluster is not None:
                failover = measure_failovers(cluster, bench_stack, sizes.failovers)
    report.targets = []
    report.environment["load_average_after"] = environment()["load_average"]
    print_summary(report, failover)
    report.parameters["failover_seconds"] = failover
    return report


def _suffix(report: engine.EngineReport, replicas: int) -> None:
    """Renames the engine group's keys of this stack (``tput_single``, ``claim``...) with
    the replica count, so R1 and R3 sit side by side in one report."""
    for key in [k for k in report.rates if not k.endswith(("_r1", "_r3"))]:
        report.rates[f"{key}_r{replicas}"] = report.rates.pop(key)
    for key in [k for k in report.latencies if not k.endswith(("_r1", "_r3"))]:
        report.latencies[f"{key}_r{replicas}"] = report.latencies.pop(key)
    for key in [k for k in report.cpu if not k.endswith(("_r1", "_r3"))]:
        report.cpu[f"{key}_r{replicas}"] = report.cpu.pop(key)


# ------------------------------------------------------------------------- stacks


@contextlib.contextmanager
def stack(replicas: int) -> Iterator[tuple[engine.Stack, NatsCluster | None]]:
    """The engine group's stack on one nats-server (R1) or a 3-node cluster (R3)."""
    with tempfile.TemporaryDirectory(prefix="colonies-bench-cluster-") as tmp:
        cluster: NatsCluster | None = None
        if replicas == 1:
            single = NatsServer(Path(tmp) / "jetstream", config=NATS_CONFIG).start()
            first, urls = single, [single.url]
        else:
            cluster = NatsCluster(Path(tmp) / "cluster", 3, config=NATS_CONFIG).start()
            first, urls = cluster.nodes[0], cluster.urls
        server_prvkey = crypto.new_private_key()
        process = engine.start_engine(
            ",".join(urls),
            crypto.id_from_private_key(server_prvkey),
            Path(tmp) / "engine.log",
            replicas=replicas,
        )
        admin = Colonies(servers=urls)
        try:
            yield engine.Stack(first, process, admin, server_prvkey), cluster
        finally:
            admin.disconnect()
            process.terminate()
            process.wait(15)
            if cluster is not None:
                cluster.stop()
            else:
                first.stop()


async def raw_publish(url: str, replicas: int, count: int) -> Sample:
    """Sequential ``js.publish`` (each waits for its PubAck) of event-sized messages to a
    fresh file stream with ``replicas`` replicas."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(name=RAW_STREAM, subjects=["bench.raw.>"], num_replicas=replicas)
        payload = b"x" * 600
        for _ in range(50):
            await js.publish("bench.raw.warmup", payload)
        with Stopwatch() as watch:
            for number in range(count):
                await js.publish(f"bench.raw.{number % 100}", payload)
        await js.delete_stream(RAW_STREAM)
        return Sample(count, watch.seconds)
    finally:
        await nc.close()


# ------------------------------------------------------------------------- failover


def measure_failovers(
    cluster: NatsCluster, bench_stack: engine.Stack, kills: int
) -> dict[str, list[float]]:
    """``kills`` times each: the leader of the raw stream, then of the engine's log,
    killed mid-loop; seconds from the kill to the next successful append."""
    asyncio.run(_create_raw_stream(cluster.urls[0]))
    colony = bench_stack.new_colony(executors=0)
    found: dict[str, list[float]] = {"raw": [], "engine": []}
    for number in range(1, kills + 1):
        found["raw"].append(_failover(cluster, RAW_STREAM, _raw_appender))
        found["engine"].append(
            _failover(cluster, LOG_STREAM, _engine_appender(colony.name, colony.owner_prvkey))
        )
        print(
            f"  failover {number}/{kills}: raw {found['raw'][-1]:.2f} s, "
            f"engine {found['engine'][-1]:.2f} s",
            flush=True,
        )
    return found


Append = Callable[[], Awaitable[None]]
Appender = Callable[[list[str]], Awaitable[tuple[Append, Callable[[], Awaitable[None]]]]]
"""Given the surviving nodes' URLs: one append, and how to close what it opened."""


async def _create_raw_stream(url: str) -> None:
    nc = await nats.connect(url)
    try:
        await nc.jetstream().add_stream(name=RAW_STREAM, subjects=["bench.raw.>"], num_replicas=3)
    finally:
        await nc.close()


async def _raw_appender(urls: list[str]) -> tuple[Append, Callable[[], Awaitable[None]]]:
    nc = await nats.connect(urls)
    js = nc.jetstream()

    async def append() -> None:
        await js.publish("bench.raw.failover", b"x" * 600, timeout=APPEND_TIMEOUT)

    return append, nc.close


def _engine_appender(colonyname: str, prvkey: str) -> Appender:
    async def open_client(urls: list[str]) -> tuple[Append, Callable[[], Awaitable[None]]]:
        client = AsyncColonies(servers=urls, timeout=APPEND_TIMEOUT)

        async def append() -> None:
            await client.submit_func_spec(engine.noop_spec(colonyname), prvkey)

        return append, client.disconnect

    return open_client


def _failover(cluster: NatsCluster, stream: str, appender: Appender) -> float:
    """Kills the leader of ``stream`` while appending in a loop through the other nodes;
    returns the seconds from the kill to the first append that succeeded after it. Then
    restarts the node and waits until the stream is current on every node."""
    leader = cluster.stream_leader(stream)
    survivors = [url for index, url in enumerate(cluster.urls) if index != leader]
    seconds = asyncio.run(_append_through_kill(cluster, leader, survivors, appender))
    cluster.restart(leader)
    deadline = time.monotonic() + RECOVERY_TIMEOUT
    while not all(peer["current"] for peer in cluster.stream_info(stream)["cluster"]["replicas"]):
        if time.monotonic() > deadline:
            raise RuntimeError(f"stream {stream} did not catch up after the restart")
        time.sleep(0.2)
    return seconds


async def _settled(append: Append, successes: int = 20) -> None:
    """Appends until ``successes`` in a row succeeded (the cluster is settled after the
    previous restart and the loop is running before the kill)."""
    deadline = time.monotonic() + RECOVERY_TIMEOUT
    in_a_row = 0
    while in_a_row < successes:
        if time.monotonic() > deadline:
            raise RuntimeError(f"appends did not settle within {RECOVERY_TIMEOUT:g} s")
        try:
            await append()
        except (nats.errors.Error, ColoniesConnectionError, ColoniesError, TimeoutError):
            in_a_row = 0
            await asyncio.sleep(0.1)
            continue
        in_a_row += 1


async def _append_through_kill(
    cluster: NatsCluster, leader: int, survivors: list[str], appender: Appender
) -> float:
    append, close = await appender(survivors)
    loop = asyncio.get_running_loop()
    try:
        await _settled(append)
        await loop.run_in_executor(None, cluster.kill, leader)
        killed_at = time.monotonic()
        while time.monotonic() - killed_at < RECOVERY_TIMEOUT:
            try:
                await append()
            except (nats.errors.Error, ColoniesConnectionError, ColoniesError, TimeoutError):
                await asyncio.sleep(0.01)
                continue
            return time.monotonic() - killed_at
        raise RuntimeError(f"no append succeeded within {RECOVERY_TIMEOUT:g} s of the kill")
    finally:
        await close()


# ------------------------------------------------------------------------- summary


def print_summary(report: engine.EngineReport, failover: dict[str, list[float]]) -> None:
    def median(key: str) -> float:
        return report.rates[key].median if key in report.rates else float("nan")

    def latency(key: str, q: int) -> float:
        lat = report.latencies.get(key)
        return lat.percentile(q) if lat is not None else float("nan")

    print("\n  R1 vs R3 (medians)")
    for key, what in (("raw", "raw js.publish+ack"), ("tput_single", "engine throughput")):
        r1, r3 = median(f"{key}_r1"), median(f"{key}_r3")
        print(f"    {what:<28} R1 {r1:>8,.0f}/s   R3 {r3:>8,.0f}/s   R3/R1 {r3 / r1:.2f}")
    for q in (50, 99):
        r1, r3 = latency("claim_r1", q), latency("claim_r3", q)
        print(f"    claim latency p{q:<2}            R1 {r1:>7.1f} ms   R3 {r3:>7.1f} ms")
    print(
        f"    engine/raw, R1 {median('tput_single_r1') / median('raw_r1'):.2f}; "
        f"R3 {median('tput_single_r3') / median('raw_r3'):.2f}"
    )
    for kind, seconds in failover.items():
        if seconds:
            print(
                f"    failover ({kind}): median {statistics.median(seconds):.2f} s, "
                f"max {max(seconds):.2f} s over {len(seconds)} leader kills"
            )
