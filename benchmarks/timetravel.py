"""Time travel: replaying one graph costs its own length, not the log's.

Two graphs of 1,001 events each (a chain of 100 processes, each assigned, logging 8
lines and closed: real domain events with real signed commands, sealed) are written
into a log of 200,000 events, then, on a fresh server, into one of 400,000:

- the *running* graph, in the middle of the log, with ``CONCURRENT`` (20) events of
  other graphs between two of its own, as when it runs alongside other work;
- the *spread* graph, one event every 200 (400) of the log: a graph that lived as long
  as the whole log. A worst case, measured for information.

The rest of the log is events of other graphs, written with raw nats-py pipelined
publishes. Measured, each on a connected nats-py client and with the seal key (as a
reader would): ``read`` (the running graph's messages: ``JetStreamLog.read_subject``,
batched direct get), ``replay`` (:func:`graph_history` then :func:`state_at` its last
event: what ``colonies workflow replay`` does) and ``replay_spread``.

Targets: a replay within 100 ms in the 200,000-event log (``replay / target`` >= 1),
and no slower in the 400,000-event log (``replay_2x / replay`` >= 0.8, noise allowed).
Run ``python -m benchmarks.timetravel [--quick] [--runs N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import nats
from eventsourcing.persistence import Mapper
from nats.aio.client import Client as NATS

from benchmarks.harness import (
    Options,
    Reference,
    Report,
    Sample,
    Stopwatch,
    Target,
    environment,
    nats_server,
    print_report,
    server_version,
    write_json,
)
from colonies_es import crypto
from colonies_es.domain import AuditedEvent, Colony, ProcessGraph
from colonies_es.models import Executor, Workflow, func_spec
from colonies_es.projections.history import graph_history, graph_subject
from colonies_es.projections.timetravel import Nth, state_at
from colonies_es.store.codec import MsgspecTranscoder, Sealer, encode_envelope
from colonies_es.store.jetstream import JetStreamLog, StreamSpec

COLONY = "bench"
PROCESSES = 100
LOGS_PER_PROCESS = 8
GRAPH_EVENTS = 1 + PROCESSES * (LOGS_PER_PROCESS + 2)
"""Each process is assigned, logs 8 lines and is closed; with the submission, 1,001."""
CONCURRENT = 20
"""Events of other graphs between two events of the running graph."""
OTHER_GRAPHS = 1000
"""Other graphs the rest of the log belongs to."""
WINDOW = 1024
"""Publishes in flight while writing the log."""
REPLAYS_PER_RUN = 20
TARGET_MS = 100.0

TARGETS = [
    Target("replay", "target", 1.0),
    Target("replay_2x", "replay", 0.8),
    Target("replay", "read"),
    Target("replay_spread", "replay"),
]


@dataclass(frozen=True)
class Events:
    """The colony's and the two graphs' events, as sealed message payloads."""

    colony: list[bytes]
    running: list[bytes]
    running_id: str
    spread: list[bytes]
    spread_id: str


def run(options: Options) -> Report:
    sizes = (50_000, 100_000) if options.quick else (200_000, 400_000)
    report = Report(
        group="timetravel",
        runs=options.runs,
        parameters={
            "graph_events": GRAPH_EVENTS,
            "concurrent_events": CONCURRENT,
            "log_sizes": list(sizes),
            "replays_per_run": REPLAYS_PER_RUN,
        },
        environment=environment(),
    )
    seal_key = os.urandom(32)
    events = _events(seal_key)
    with contextlib.ExitStack() as servers:
        logs = []
        for size, suffix in zip(sizes, ("", "_2x"), strict=True):
            url = servers.enter_context(nats_server())
            print(f"writing a log of {size:,} events", flush=True)
            asyncio.run(_write_log(url, size, events))
            logs.append((url, size, suffix))
        report.environment["nats_server"] = server_version(url)
        for _ in range(options.runs):  # interleaved: a noisy moment spreads over both logs
            for url, size, suffix in logs:
                for key, what, measure in _measurements(url, events, seal_key):
                    sample = asyncio.run(measure())
                    report.add(key + suffix, f"{what}, log of {size:,}", "per s", sample)
    report.references["target"] = Reference(
        f"target: one replay in {TARGET_MS:.0f} ms", "per s", 1000 / TARGET_MS
    )
    report.quick = options.quick
    report.targets = TARGETS
    for key, rate in report.rates.items():
        if key.startswith(("read", "replay")):
            report.parameters[f"{key}_ms"] = 1000 / rate.median
    return report


# --------------------------------------------------------------------------- the events


def _events(seal_key: bytes) -> Events:
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
    running = chain_graph(owner, executor, executor_key, clock)
    spread = chain_graph(owner, executor, executor_key, clock)
    return Events(
        colony=sealed_payloads(colony, seal_key),
        running=sealed_payloads(running, seal_key),
        running_id=running.processgraphid,
        spread=sealed_payloads(spread, seal_key),
        spread_id=spread.processgraphid,
    )


def chain_graph(owner: str, executor: Executor, key: str, clock: Clock) -> ProcessGraph:
    """A chain of processes, each run to SUCCESS with a few lines of log."""
    specs = []
    for i in range(PROCESSES):
        spec = func_spec(
            func=f"step_{i}", args=[i], colonyname=COLONY, executortype="python-executor"
        )
        spec.conditions.dependencies.extend([f"step_{i - 1}"] if i else [])
        specs.append(spec)
    workflow = Workflow(colonyname=COLONY, functionspecs=specs)
    graph = ProcessGraph.submit(
        COLONY,
        workflow,
        initiatorid=crypto.id_from_private_key(owner),
        initiatorname="colony owner",
        **clock.audit("submit_workflow", {"workflow": workflow}, owner),
    )
    for processid in graph.processids:
        graph.assign(processid, executor, 1, **clock.audit("claim", {"colonyname": COLONY}, key))
        for line in range(LOGS_PER_PROCESS):
            message = f"step {processid[:8]}: line {line} of the executor's log"
            audit = clock.audit("add_log", {"processid": processid, "message": message}, key)
            graph.add_log(processid, executor.executorid, "ex-1", message, **audit)
        output = [len(graph.nodes[processid].input) + 1]
        audit = clock.audit("close", {"processid": processid, "out": output}, key)
        graph.close(processid, executor.executorid, output, **audit)
    return graph


class Clock:
    """Event times a millisecond apart, and the audit fields of each command."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def audit(self, op: str, body: object, prvkey: str) -> dict[str, Any]:
        self.now += timedelta(milliseconds=1)
        command = crypto.seal(op, body, prvkey, self.now.timestamp())
        return {"now": self.now, "actor": crypto.id_from_private_key(prvkey), "command": command}


def sealed_payloads(aggregate: Colony | ProcessGraph, seal_key: bytes) -> list[bytes]:
    mapper: Mapper[str] = Mapper(transcoder=MsgspecTranscoder())
    sealer = Sealer(seal_key)
    payloads = []
    for event in aggregate.collect_events():
        assert isinstance(event, AuditedEvent)
        stored = mapper.to_stored_event(event)
        payloads.append(encode_envelope(stored, f"colonies.ev.{event.originator_id}", sealer))
    return payloads


# --------------------------------------------------------------------------- the log


def _layout(size: int, events: Events) -> Iterator[tuple[str, bytes]]:
    """(subject, payload) of every message of a log of ``size``, in order."""
    yield from ((f"colonies.ev.{COLONY}.colony", p) for p in events.colony)
    rest = size - len(events.colony)
    window = GRAPH_EVENTS * (CONCURRENT + 1)
    first = (rest - window) // 2
    assert first >= 0, f"a log of {size} events cannot hold the running graph's {window}"
    running = {first + k * (CONCURRENT + 1): p for k, p in enumerate(events.running)}
    spread: dict[int, bytes] = {}
    for k, payload in enumerate(events.spread):
        at = k * rest // GRAPH_EVENTS
        while at in running or at in spread:
            at += 1
        spread[at] = payload
    filler = events.running[-2]  # a log line: the typical event
    running_subject = graph_subject(COLONY, events.running_id)
    spread_subject = graph_subject(COLONY, events.spread_id)
    for position in range(rest):
        if position in running:
            yield running_subject, running[position]
        elif position in spread:
            yield spread_subject, spread[position]
        else:
            yield f"colonies.ev.other.graph.{position % OTHER_GRAPHS:064x}", filler


async def _write_log(url: str, size: int, events: Events) -> None:
    """A fresh ``COLONIES`` stream of ``size`` events, laid out by :func:`_layout`."""
    nc = await nats.connect(url)
    try:
        spec = StreamSpec("COLONIES", ("colonies.ev.>", "colonies.trk.>"))
        await JetStreamLog(nc, "COLONIES", lambda m: None).ensure_stream(spec)
        js = nc.jetstream(publish_async_max_pending=WINDOW)
        acks = []
        for subject, payload in _layout(size, events):
            acks.append(await js.publish_async(subject, payload))
            if len(acks) >= 50_000:
                await asyncio.gather(*acks)
                acks = []
        await asyncio.gather(*acks)
        stored = (await js.stream_info("COLONIES")).state.messages
        assert stored == size, f"{stored} messages stored, {size} written"
    finally:
        await nc.close()


# --------------------------------------------------------------------------- measurements

Measure = Callable[[], Coroutine[Any, Any, Sample]]


def _measurements(url: str, events: Events, seal_key: bytes) -> list[tuple[str, str, Measure]]:
    async def repeat(once: Callable[[NATS], Coroutine[Any, Any, None]]) -> Sample:
        nc = await nats.connect(url)
        try:
            await once(nc)  # warm-up
            with Stopwatch() as watch:
                for _ in range(REPLAYS_PER_RUN):
                    await once(nc)
            return Sample(REPLAYS_PER_RUN, watch.seconds)
        finally:
            await nc.close()

    async def read(nc: NATS) -> None:
        log = JetStreamLog(nc, "COLONIES", lambda m: None)
        messages = await log.read_subject(graph_subject(COLONY, events.running_id))
        assert len(messages) == GRAPH_EVENTS

    def replay(processgraphid: str) -> Callable[[NATS], Coroutine[Any, Any, None]]:
        async def once(nc: NATS) -> None:
            history = await graph_history(nc, COLONY, processgraphid, seal_key)
            assert state_at(history, Nth(GRAPH_EVENTS)).state == 2

        return once

    return [
        ("read", "read the running graph's messages", lambda: repeat(read)),
        ("replay", "replay the running graph", lambda: repeat(replay(events.running_id))),
        ("replay_spread", "replay the spread graph", lambda: repeat(replay(events.spread_id))),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.timetravel")
    parser.add_argument("--quick", action="store_true", help="logs of 50,000 and 100,000")
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement")
    args = parser.parse_args()
    report = run(Options(quick=args.quick, runs=args.runs))
    print_report(report)
    print()
    for key, value in report.parameters.items():
        if key.endswith("_ms"):
            print(f"{key:<24} {value:7.1f} ms")
    print(f"\nresults written to {write_json([report])}")


if __name__ == "__main__":
    main()
