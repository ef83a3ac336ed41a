"""What authorization, TLS and encryption at rest cost: the same workload with each on and
off, in one run.

Configurations (each a fresh nats-server and ``colonies server`` process):

- ``plain``: no authorization, no TLS, no cipher (the baseline);
- ``auth``: NATS authorization, every connection with its role's nkey;
- ``tls``: NATS over TLS only, verified against the stack's CA;
- ``cipher``: event payloads encrypted (AES-GCM) in the stream;
- ``all``: the three together (what ``colonies dev --tls`` with a cipher key runs).

In each: raw JetStream (acknowledged publishes, 64 in flight, the engine's credential)
and the engine end to end: N no-op processes submitted at once, four executors (each its
own connection and identity, in this process) assigning and closing until all are done:
processes per second, and the ``assign`` round trip (claim latency) while work waits.
Targets: each option costs at most 10% of the plain throughput.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness import NATS_CONFIG, Options, Report, Sample, Target, environment
from colonies_es import crypto
from colonies_es.client import AsyncColonies, ColoniesError
from colonies_es.embedded import NatsServer
from colonies_es.encryption import new_cipher_key
from colonies_es.models import Conditions, FuncSpec
from colonies_es.nats_auth import (
    Credential,
    client_permissions,
    engine_permissions,
    executor_permissions,
    new_seed,
    public_key,
    render_accounts,
    write_seed,
)
from colonies_es.settings import NatsAccess
from colonies_es.tls import make_dev_tls, tls_block

CONFIGS = {
    "plain": (False, False, False),
    "auth": (True, False, False),
    "tls": (False, True, False),
    "cipher": (False, False, True),
    "all": (True, True, True),
}
"""Name -> (authorization, TLS, cipher)."""
EXECUTORS = 4
EXECUTOR_TYPE = "bench"
COLONY = "benchsec"
ENGINE_READY = b"colonies engine ready"


@dataclass
class SecureStack:
    """A nats-server and an engine process configured as one of :data:`CONFIGS`."""

    access: dict[str, NatsAccess]
    """Credential name (engine, client, executor) -> how it reaches NATS."""
    server_prvkey: str
    engine: subprocess.Popen[bytes]


@contextlib.contextmanager
def secure_stack(name: str, directory: Path) -> Iterator[SecureStack]:
    auth, tls, cipher = CONFIGS[name]
    config_text = NATS_CONFIG.read_text()
    seeds: dict[str, Path] = {}
    if auth:
        for role in ("engine", "client", "executor"):
            seeds[role] = write_seed(directory / f"{role}.nk", new_seed())
        public = {role: public_key(path.read_text()) for role, path in seeds.items()}
        credentials = [
            Credential("engine", public["engine"], engine_permissions()),
            Credential("client", public["client"], client_permissions(public["client"])),
            Credential(
                "executor",
                public["executor"],
                executor_permissions(public["executor"], [(COLONY, EXECUTOR_TYPE)]),
            ),
        ]
        config_text += "\n" + render_accounts(credentials)
    ca = ""
    if tls:
        files = make_dev_tls(directory / "tls")
        config_text += "\n" + tls_block(files)
        ca = str(files.ca)
    config = directory / "nats.conf"
    config.write_text(config_text)
    with NatsServer(directory / "jetstream", config=config) as server:
        url = server.url.replace("nats://", "tls://") if tls else server.url
        access = {
            role: NatsAccess((url,), str(seeds.get(role, "")), ca)
            for role in ("engine", "client", "executor")
        }
        server_prvkey = crypto.new_private_key()
        env = {
            **os.environ,
            "COLONIES_NATS_URL": url,
            "COLONIES_SERVER_ID": crypto.id_from_private_key(server_prvkey),
            "COLONIES_ENGINE_PRVKEY": crypto.new_private_key(),
            "COLONIES_EVENT_SEAL_KEY": os.urandom(32).hex(),
            "COLONIES_NATS_NKEY_FILE": access["engine"].nkey_file,
            "COLONIES_TLS_CA_FILE": ca,
            "COLONIES_CIPHER_KEY": new_cipher_key() if cipher else "",
        }
        log_file = directory / "engine.log"
        with log_file.open("wb") as log:
            engine = subprocess.Popen(
                [sys.executable, "-m", "colonies_es.cli", "server", "--no-projector"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=directory,
            )
        try:
            deadline = time.monotonic() + 60
            while ENGINE_READY not in log_file.read_bytes():
                if engine.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"engine did not start: {log_file.read_text()[-2000:]}")
                time.sleep(0.05)
            yield SecureStack(access, server_prvkey, engine)
        finally:
            engine.terminate()
            try:
                engine.wait(15)
            except subprocess.TimeoutExpired:
                engine.kill()


def _client(access: NatsAccess) -> AsyncColonies:
    return AsyncColonies(
        servers=access.servers,
        nkey_file=access.nkey_file,
        tls_ca_file=access.tls_ca_file,
        timeout=30,
    )


async def raw_jetstream(access: NatsAccess, count: int) -> Sample:
    """Acknowledged JetStream publishes, 64 in flight, on a stream of its own."""
    nc = await access.connect("bench raw")
    try:
        js = nc.jetstream()
        stream = f"RAW{uuid.uuid4().hex[:8]}"
        await js.add_stream(name=stream, subjects=[f"raw.{stream}.>"])
        payload = os.urandom(300)
        semaphore = asyncio.Semaphore(64)

        async def publish(number: int) -> None:
            async with semaphore:
                await js.publish(f"raw.{stream}.{number % 100}", payload)

        started = time.perf_counter()
        await asyncio.gather(*(publish(n) for n in range(count)))
        seconds = time.perf_counter() - started
        await js.delete_stream(stream)
        return Sample(count, seconds)
    finally:
        await nc.close()


async def end_to_end(stack: SecureStack, count: int) -> tuple[Sample, list[float]]:
    """``count`` no-op processes through the engine and four executors: the rate, and
    every ``assign`` round trip (seconds) that found work."""
    admin = _client(stack.access["client"])
    owner = crypto.new_private_key()
    colony = COLONY  # one run per stack: executor credentials name this colony
    await admin.add_colony(
        {"colonyid": crypto.id_from_private_key(owner), "name": colony}, stack.server_prvkey
    )
    keys = []
    for number in range(EXECUTORS):
        key = crypto.new_private_key()
        await admin.add_executor(
            {
                "executorid": crypto.id_from_private_key(key),
                "executortype": EXECUTOR_TYPE,
                "executorname": f"ex{number}",
                "colonyname": colony,
            },
            owner,
        )
        await admin.approve_executor(colony, f"ex{number}", owner)
        keys.append(key)
    spec = FuncSpec(
        nodename="noop",
        funcname="noop",
        conditions=Conditions(colonyname=colony, executortype=EXECUTOR_TYPE),
    )
    executors = [_client(stack.access["executor"]) for _ in keys]
    latencies: list[float] = []
    done = 0

    async def execute(client: AsyncColonies, key: str) -> None:
        nonlocal done
        while done < count:
            started = time.perf_counter()
            try:
                process = await client.assign(colony, 2, key)
            except ColoniesError as error:
                if error.status == 404:
                    continue
                raise
            latencies.append(time.perf_counter() - started)
            await client.close(process.processid, [], key)
            done += 1

    try:
        for client, key in zip(executors, keys, strict=True):  # bind the work consumers
            with contextlib.suppress(ColoniesError):
                await client.assign(colony, 0.05, key)
        started = time.perf_counter()
        submitting = asyncio.gather(*(admin.submit_func_spec(spec, owner) for _ in range(count)))
        await asyncio.gather(
            submitting, *(execute(c, k) for c, k in zip(executors, keys, strict=True))
        )
        return Sample(count, time.perf_counter() - started), latencies
    finally:
        for client in [admin, *executors]:
            await client.disconnect()


def run(options: Options) -> Report:
    # asyncio warns once per TLS connection closed by the server ("returning true from
    # eof_received() has no effect when using ssl"): noise in the table.
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    count = 200 if options.quick else 1000
    raw_count = 2000 if options.quick else 10000
    report = Report(
        group="security",
        runs=options.runs,
        parameters={"processes": count, "raw_publishes": raw_count, "executors": EXECUTORS},
        environment=environment(),
    )
    latency: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for run_number in range(options.runs):
        for name in CONFIGS:  # interleaved, so load changes hit every configuration
            with (
                tempfile.TemporaryDirectory(prefix=f"colonies-bench-{name}-") as tmp,
                secure_stack(name, Path(tmp)) as stack,
            ):
                raw = asyncio.run(raw_jetstream(stack.access["engine"], raw_count))
                flow, claims = asyncio.run(end_to_end(stack, count))
            report.add(f"raw_{name}", f"raw JetStream publishes, {name}", "msg/s", raw)
            report.add(f"flow_{name}", f"processes end to end, {name}", "proc/s", flow)
            latency[name] += claims
            print(
                f"  run {run_number + 1} {name}: raw {raw.rate:,.0f} msg/s, "
                f"{flow.rate:,.0f} proc/s, claim p50 {_ms(claims, 50)} p99 {_ms(claims, 99)}",
                flush=True,
            )
    report.parameters["claim_latency_ms"] = {
        name: {"p50": _ms(samples, 50), "p99": _ms(samples, 99)}
        for name, samples in latency.items()
    }
    for name in CONFIGS:
        if name != "plain":
            report.targets.append(Target(f"flow_{name}", "flow_plain", 0.9))
            report.targets.append(Target(f"raw_{name}", "raw_plain"))
    report.targets.append(Target("flow_plain", "raw_plain"))
    print("  claim latency (assign round trip while work waits), ms:")
    for name, values in report.parameters["claim_latency_ms"].items():
        print(f"    {name:7} p50 {values['p50']:>7}  p99 {values['p99']:>7}")
    return report


def _ms(samples: list[float], q: int) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    if q == 50:
        return round(statistics.median(ordered) * 1000, 2)
    index = min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))
    return round(ordered[index] * 1000, 2)
