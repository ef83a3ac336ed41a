"""The whole-log audit (``colonies audit verify``): 200,000 events in one process and
with its workers.

The log is what clients make: a colony created by the server owner, an executor and a
user added by the colony owner, then seed workflows (``gen_nums -> sum_nums``) submitted
by the user and run by the executor (each process claimed, logging a line, closed): 7
events a workflow. Every command is signed as the client signs it (ECDSA secp256k1 by
the caller's identity key, :func:`colonies_es.crypto.seal`), and every event is sealed;
the events are made by the domain's own aggregates and appended with the engine's
envelope encoding (as in :mod:`benchmarks.projector`).

Measured, each on a nats-py connection with the seal key (as ``colonies audit verify``
does, through :func:`~colonies_es.projections.audit.verify_log`):

- ``one_process``: ``workers=0``, everything checked in the auditing process;
- ``parallel``: the default, one worker per core, each auditing a share of the log's
  graphs (and every colony's events) while the auditing process reads the log.

Each run also prints the CPU seconds of the auditing process and of the workers (read
from the fork server's reaped children), and their peak RSS (sampled: the auditing
process's growth, the workers' sum): on a shared machine they hold where wall-clock
rates do not. From them it prints how long the audit would take on an idle machine
(:func:`idle_seconds`: the largest of the auditing process's CPU time, a worker's share
and the total divided by the cores). Each run must check
every event and find nothing (a benchmark that found something
would be measuring a broken log). Target: the whole log of 200,000 events in 20 s
(``parallel / target`` >= 1). Run ``python -m benchmarks audit [--quick]``.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from multiprocessing import forkserver
from pathlib import Path
from typing import Any

import nats
from eventsourcing.persistence import Mapper

from benchmarks.harness import (
    Options,
    Reference,
    Report,
    Sample,
    Target,
    environment,
    nats_server,
    server_version,
)
from colonies_es import crypto
from colonies_es.domain import AuditedEvent, Colony, ProcessGraph
from colonies_es.models import Colony as ColonyModel
from colonies_es.models import Executor, Workflow, func_spec
from colonies_es.projections.audit import AuditReport, Authorities, verify_log
from colonies_es.store.codec import MsgspecTranscoder, Sealer, encode_envelope
from colonies_es.store.jetstream import JetStreamLog, StreamSpec

COLONY = "audit-bench"
EVENTS_PER_WORKFLOW = 7
FULL_EVENTS = 200_000
QUICK_EVENTS = 20_000
TARGET_SECONDS = 20.0
WINDOW = 1024
"""Publishes in flight while writing the log."""

TARGETS = [
    Target("parallel", "target", 1.0),
    Target("parallel", "one_process"),
]


def run(options: Options) -> Report:
    events = QUICK_EVENTS if options.quick else FULL_EVENTS
    report = Report(
        group="audit",
        runs=options.runs,
        parameters={"events": events, "workers": os.cpu_count()},
        environment=environment(),
        targets=TARGETS,
    )
    print(f"  load average before: {_load()}", flush=True)
    seal_key = os.urandom(32)
    started = time.perf_counter()
    log = AuditLog.make(events, seal_key)
    print(
        f"  made {len(log.payloads):,} events (signed, sealed) "
        f"in {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    with nats_server() as url:
        report.environment["nats_server"] = server_version(url)
        asyncio.run(_write_log(url, log.payloads))
        for number in range(1, options.runs + 1):  # interleaved
            for key, workers, label in (
                ("one_process", 0, "verify_log, all in one process"),
                ("parallel", None, "verify_log, workers auditing shares (one per core)"),
            ):
                cpu, children = time.process_time(), _workers_cpu()
                with _PeakRss() as rss:
                    sample = asyncio.run(_audit(url, log, workers))
                cpu = time.process_time() - cpu
                time.sleep(0.5)  # the fork server reaps the workers: then their time counts
                children = _workers_cpu() - children
                report.add(key, label, "events/s", sample)
                report.parameters.setdefault(f"cpu_s_{key}", []).append([cpu, children])
                idle = idle_seconds(cpu, children, 0 if workers == 0 else os.cpu_count() or 1)
                report.parameters.setdefault(f"idle_s_{key}", []).append(idle)
                report.parameters.setdefault(f"rss_mb_{key}", []).append(
                    [rss.auditing_growth, rss.workers]
                )
                print(
                    f"  run {number}/{options.runs}: {key} {sample.seconds:.1f} s "
                    f"({sample.rate:,.0f} events/s); CPU: auditing process {cpu:.1f} s, "
                    f"workers {children:.1f} s; on an idle machine about {idle:.1f} s "
                    f"(target {TARGET_SECONDS:.0f} s); peak RSS: auditing process "
                    f"+{rss.auditing_growth:.0f} MB, workers {rss.workers:.0f} MB in all",
                    flush=True,
                )
    report.references["target"] = Reference(
        f"target: {FULL_EVENTS:,} events in {TARGET_SECONDS:.0f} s",
        "events/s",
        FULL_EVENTS / TARGET_SECONDS,
    )
    report.environment["load_average_after"] = environment()["load_average"]
    print(f"  load average after: {_load()}", flush=True)
    return report


def idle_seconds(auditing: float, workers: float, count: int) -> float:
    """About how long the audit takes on an idle machine with a core per process, from
    the CPU seconds it used: the auditing process and ``count`` workers sharing
    ``workers`` seconds evenly run side by side, on ``os.cpu_count()`` cores at most. A
    bound that holds on a shared machine, where wall-clock seconds measure the load."""
    cores = os.cpu_count() or 1
    if count == 0:
        return auditing + workers
    return max(auditing, workers / count, (auditing + workers) / cores)


def _workers_cpu() -> float:
    """CPU seconds of the processes multiprocessing's fork server started and reaped (the
    audit's workers, once they ended): its children's times."""
    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


class _PeakRss:
    """Samples, every 0.1 s while in its block, the RSS of this process (the auditing
    one, which also holds the benchmark's log: its growth is what the audit adds) and
    the sum of its workers' (the processes the fork server started), keeping the peaks
    in MB."""

    def __init__(self) -> None:
        self.auditing_growth = 0.0
        self.workers = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> _PeakRss:
        self._start = _rss_mb(os.getpid())
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._done.wait(0.1):
            self.auditing_growth = max(self.auditing_growth, _rss_mb(os.getpid()) - self._start)
            workers = sum(
                _rss_mb(worker) for server in _children(os.getpid()) for worker in _children(server)
            )
            self.workers = max(self.workers, workers)


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started (its main thread's children, from /proc)."""
    try:
        listed = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in listed.split()]


def _rss_mb(pid: int) -> float:
    """The resident set of process ``pid`` in MB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


class AuditLog:
    """The log's messages, and the two ids an auditor must be told."""

    def __init__(self, payloads: list[tuple[str, bytes]], authorities: Authorities) -> None:
        self.payloads = payloads
        self.authorities = authorities
        self.seal_key = b""
        self.keys: dict[str, str] = {}
        """The private keys that signed its commands: "user" (submits), "executor"."""

    @classmethod
    def make(cls, events: int, seal_key: bytes) -> AuditLog:
        """About ``events`` events (whole workflows), sealed with ``seal_key``."""
        server, owner, user, executor_key = (crypto.new_private_key() for _ in range(4))
        clock = _Clock()
        ownerid = crypto.id_from_private_key(owner)
        colony = Colony.create(
            COLONY,
            ownerid,
            **clock.audit(
                "add_colony", {"colony": ColonyModel(colonyid=ownerid, name=COLONY)}, server
            ),
        )
        executor = Executor(
            executorid=crypto.id_from_private_key(executor_key),
            executortype="python-executor",
            executorname="ex-1",
            colonyname=COLONY,
        )
        colony.add_executor(
            executor.executorid,
            executor.executorname,
            executor.executortype,
            **clock.audit("add_executor", {"executor": executor}, owner),
        )
        ref = {"colonyname": COLONY, "executorname": executor.executorname}
        colony.approve_executor(
            executor.executorname, **clock.audit("approve_executor", ref, owner)
        )
        userid = crypto.id_from_private_key(user)
        added = {"colonyname": COLONY, "userid": userid, "username": "user-1"}
        colony.add_user(userid, "user-1", **clock.audit("add_user", added, owner))
        approved = colony.executor_by_id(executor.executorid)
        assert approved is not None
        log = cls([], Authorities(server_id=crypto.id_from_private_key(server)))
        log.seal_key = seal_key
        log.keys = {"user": user, "executor": executor_key}
        writer = _Writer(seal_key)
        log.payloads += writer.payloads(colony)
        for _ in range(max(1, events // EVENTS_PER_WORKFLOW)):
            log.payloads += writer.payloads(
                _seed_workflow(userid, user, approved, executor_key, clock)
            )
        return log


def _seed_workflow(
    userid: str, user: str, executor: Executor, executor_key: str, clock: _Clock
) -> ProcessGraph:
    """gen_nums -> sum_nums, submitted by the user and run to SUCCESS by the executor."""
    gen = func_spec("gen_nums", [], COLONY, "python-executor")
    total = func_spec("sum_nums", [], COLONY, "python-executor")
    total.conditions.dependencies.append("gen_nums")
    workflow = Workflow(colonyname=COLONY, functionspecs=[gen, total])
    graph = ProcessGraph.submit(
        COLONY,
        workflow,
        initiatorid=userid,
        initiatorname="user-1",
        **clock.audit("submit_workflow", {"workflow": workflow}, user),
    )
    for processid, output in zip(graph.processids, ([1, 2], [3]), strict=True):
        graph.assign(
            processid, executor, 1, **clock.audit("claim", {"colonyname": COLONY}, executor_key)
        )
        message = f"{graph.nodes[processid].nodename} ran"
        body = {"processid": processid, "message": message}
        graph.add_log(
            processid,
            executor.executorid,
            "ex-1",
            message,
            **clock.audit("add_log", body, executor_key),
        )
        body = {"processid": processid, "out": output}
        graph.close(
            processid, executor.executorid, output, **clock.audit("close", body, executor_key)
        )
    return graph


class _Clock:
    """Event times a millisecond apart, and each command signed as the client signs it."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC) - timedelta(days=1)

    def audit(self, op: str, body: object, prvkey: str) -> dict[str, Any]:
        self.now += timedelta(milliseconds=1)
        command = crypto.seal(op, body, prvkey, self.now.timestamp())
        return {"now": self.now, "actor": crypto.id_from_private_key(prvkey), "command": command}


class _Writer:
    """Stored, sealed envelopes of an aggregate's new events (the engine's encoding)."""

    def __init__(self, seal_key: bytes) -> None:
        self.mapper: Mapper[str] = Mapper(transcoder=MsgspecTranscoder())
        self.sealer = Sealer(seal_key)

    def payloads(self, aggregate: Colony | ProcessGraph) -> list[tuple[str, bytes]]:
        out = []
        for event in aggregate.collect_events():
            assert isinstance(event, AuditedEvent)
            subject = f"colonies.ev.{event.originator_id}"
            stored = self.mapper.to_stored_event(event)
            out.append((subject, encode_envelope(stored, subject, self.sealer)))
        return out


async def _write_log(url: str, payloads: list[tuple[str, bytes]]) -> None:
    nc = await nats.connect(url)
    try:
        spec = StreamSpec("COLONIES", ("colonies.ev.>", "colonies.trk.>"))
        await JetStreamLog(nc, "COLONIES", lambda m: None).ensure_stream(spec)
        js = nc.jetstream(publish_async_max_pending=WINDOW)
        acks = [await js.publish_async(subject, payload) for subject, payload in payloads]
        await asyncio.gather(*acks)
    finally:
        await nc.close()


async def _audit(url: str, log: AuditLog, workers: int | None) -> Sample:
    nc = await nats.connect(url)
    try:
        started = time.perf_counter()
        report: AuditReport = await verify_log(nc, log.authorities, log.seal_key, workers=workers)
        seconds = time.perf_counter() - started
    finally:
        await nc.close()
    if report.checked != len(log.payloads) or report.findings:
        first = report.findings[0] if report.findings else None
        raise RuntimeError(
            f"the audit checked {report.checked} of {len(log.payloads)} events and found "
            f"{len(report.findings)} (first: {first})"
        )
    return Sample(report.checked, seconds)
