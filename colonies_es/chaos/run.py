"""The harness: a mixed workload on a real stack, faults at random points, then the checker.

:func:`run_chaos` starts a :class:`~.stack.ChaosStack` (nats-server with the shipped
``nats.conf`` or a variant, the engine, a projector, executors), makes a colony, and
submits workflows of every shape (:mod:`.workload`) from a thread while the main thread
injects ``rounds`` faults: each waits a random time, SIGKILLs one component (the engine,
an executor chosen at random, the projector or nats-server: every kind in turn, in a
random order each turn), keeps it down a random moment and starts it again, then
measures how long the system took to serve again.
Afterwards it stops submitting, waits until every graph has ended, starts a fresh
projector, and checks (:mod:`.checker`): the log against the journals, the results, the
killed projector's view against the fresh one, and the audit.

Every random choice comes from ``random.Random(seed)``: the same seed gives the same
schedule of faults (kinds, targets, waits, downtimes) and of workflow shapes. Timing on
a real machine still varies, so a replay reproduces the schedule, not every interleaving.

Recovery time, per kind of fault, is measured from the restart (the random downtime is
not counted) until the component does its job again:

- engine: it answers a command (``get_colony``);
- nats-server: it is ready and the engine answers a command through it;
- projector: its view has caught up with the log's last sequence at the restart;
- executor: it has registered again and takes work (its ready line).
"""

from __future__ import annotations

import asyncio
import random
import re
import statistics
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import nats.errors
from eventsourcing.persistence import OperationalError

from colonies_es import crypto
from colonies_es.chaos.checker import (
    CheckReport,
    check_audit,
    check_views,
    read_and_check,
    unfinished_graphs,
)
from colonies_es.chaos.journal import Journal, JournalingColonies, read_journals
from colonies_es.chaos.stack import ENGINE_COMMAND, ChaosStack, Keys, view_position
from colonies_es.chaos.workload import SHAPES, make_workflow
from colonies_es.client import Colonies, ColoniesConnectionError, ColoniesError
from colonies_es.projections.audit import Authorities
from colonies_es.states import ProcessState

__all__ = [
    "FAULT_KINDS",
    "ChaosResult",
    "Fault",
    "fault_schedule",
    "run_chaos",
    "shipped_nats_config",
]

FAULT_KINDS = ("engine", "executor", "projector", "nats")
DRAIN_TIMEOUT = 180.0
"""Seconds to wait, after the last fault, for every graph in the log to end (then the
checker reports those still running)."""
RECOVERY_TIMEOUT = 120.0


def shipped_nats_config() -> Path:
    """The ``nats.conf`` that ships with the package (``colonies dev`` runs with it)."""
    return Path(crypto.__file__).parent / "nats.conf"


def sync_always_config(directory: Path) -> Path:
    """The shipped ``nats.conf`` with ``sync_interval: always`` (fsync before each ack)."""
    text = shipped_nats_config().read_text()
    setting = 'sync_interval: "2m"'
    if setting not in text:
        raise RuntimeError(f"the shipped nats.conf no longer has {setting!r}")
    path = directory / "nats-sync-always.conf"
    path.write_text(text.replace(setting, "sync_interval: always"))
    return path


@dataclass(frozen=True)
class Fault:
    """One injected fault: what was killed, when (seconds into the run), how long it was
    kept down and how long it took to serve again after its restart."""

    kind: str
    target: str
    at: float
    downtime: float
    recovery: float


@dataclass
class ChaosResult:
    """A run's figures and the checker's report."""

    seed: int
    sync: str
    minutes: float = 0.0
    faults: list[Fault] = field(default_factory=list)
    submitted: int = 0
    submit_failures: int = 0
    check: CheckReport = field(default_factory=CheckReport)
    resent: dict[str, int] = field(default_factory=dict)
    """Per op, the commands the executors sent again with the same bytes (no reply in
    an attempt's time, or their NATS connection was cut), read from their logs."""
    claims_over: int = 0
    """Retried claims the engines answered "nothing ready" because the attempt the claim
    took was over by then (DESIGN.md, fault injection, ninth session), from their logs:
    how often a run met the race that once handed a claimer another executor's attempt."""
    outputs_refused: int = 0
    """Function outputs whose close the engine refused (other than 403), which the
    executors then reported as failures, from their logs (e.g. a 503 from an engine
    behind the log after a nats-server restart: the function's success is lost)."""

    @property
    def ok(self) -> bool:
        return self.check.ok

    def recovery(self) -> dict[str, tuple[int, float, float]]:
        """Per fault kind: (count, p50, p99) of the recovery time in seconds."""
        times: dict[str, list[float]] = defaultdict(list)
        for fault in self.faults:
            times[fault.kind].append(fault.recovery)
        return {kind: (len(v), _percentile(v, 50), _percentile(v, 99)) for kind, v in times.items()}

    def summary(self) -> str:
        """The report a person reads: counts, recovery times, then every anomaly."""
        check = self.check
        lines = [
            f"chaos seed {self.seed} (replay: --seed {self.seed}), sync_interval {self.sync}",
            f"ran {self.minutes:.1f} min: {len(self.faults)} faults "
            f"({len(self.faults) / max(self.minutes, 1e-9):.1f}/min), "
            f"{self.submitted} workflows acknowledged, {self.submit_failures} submissions "
            "without an answer",
            f"log: {check.events} events, {check.graphs} graphs, "
            f"{check.graphs_succeeded} ended SUCCESS; audit checked {check.audited} events",
            "acknowledged: "
            + ", ".join(f"{op} {count}" for op, count in check.acknowledged.items())
            + f" (total {sum(check.acknowledged.values())}; "
            f"{check.torn_journal_lines} torn journal lines)",
            "resent with the same bytes: "
            + (", ".join(f"{op} {count}" for op, count in sorted(self.resent.items())) or "none")
            + f"; retried claims whose attempt was over: {self.claims_over}; "
            f"outputs refused and failed instead: {self.outputs_refused}",
            "recovery after restart (s):",
        ]
        for kind, (count, p50, p99) in sorted(self.recovery().items()):
            lines.append(f"  {kind:<9} {count:>4} faults  p50 {p50:6.2f}  p99 {p99:6.2f}")
        lines.append(f"anomalies: {len(check.anomalies)}")
        lines.extend(f"  {anomaly}" for anomaly in check.anomalies)
        return "\n".join(lines)


def _percentile(values: Sequence[float], q: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


class _Submitter(threading.Thread):
    """Submits workflows of every shape in turn (a random order each turn), at most
    ``in_flight`` unfinished at once, journaling each acknowledged one, until told to
    stop. Rides out crashes."""

    def __init__(
        self, stack: ChaosStack, journal: Journal, rng: random.Random, in_flight: int
    ) -> None:
        super().__init__(name="chaos-submitter", daemon=True)
        self.stack = stack
        self.client = JournalingColonies(journal, servers=stack.servers, timeout=3.0)
        self.shapes = random.Random(rng.getrandbits(64))  # its own stream, from the seed
        self.in_flight = in_flight
        self.stop = threading.Event()
        self.submitted: list[str] = []
        self.failures = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        owner = self.stack.keys.colony_owner
        colony = self.stack.colonyname
        try:
            for shape in self._shapes():
                while not self.stop.is_set() and self._unfinished() >= self.in_flight:
                    self.stop.wait(0.2)
                if self.stop.is_set():
                    return
                try:
                    graph = self.client.submit_workflow(make_workflow(shape, colony), owner)
                except (ColoniesConnectionError, ColoniesError):
                    self.failures += 1
                    self.stop.wait(0.3)
                    continue
                self.submitted.append(graph.processgraphid)
        except BaseException as error:  # reported by the harness
            self.error = error
        finally:
            self.client.disconnect()

    def _shapes(self) -> Iterator[str]:
        """Every shape in turn, in a random order each turn (so that a few submissions
        cover them all)."""
        while True:
            turn = list(SHAPES)
            self.shapes.shuffle(turn)
            yield from turn

    def _unfinished(self) -> int:
        owner = self.stack.keys.colony_owner
        try:
            count = 0
            for state in (ProcessState.WAITING, ProcessState.RUNNING):
                count += len(
                    self.client.get_processgraphs(self.stack.colonyname, 100, owner, state)
                )
            return count
        except (ColoniesConnectionError, ColoniesError):
            return self.in_flight  # cannot tell while the engine is down: wait


def run_chaos(
    rounds: int,
    seed: int | None = None,
    *,
    sync: str = "default",
    executors: int = 2,
    in_flight: int = 6,
    interval: tuple[float, float] = (1.0, 4.0),
    downtime: tuple[float, float] = (0.0, 1.0),
    kinds: Sequence[str] = FAULT_KINDS,
    duration: float = 0.0,
    engines: int = 1,
    nodes: int = 1,
    directory: Path | None = None,
    engine_command: Sequence[str] = ENGINE_COMMAND,
    progress: Callable[[str], Any] = print,
) -> ChaosResult:
    """Runs the workload under ``rounds`` faults of ``kinds`` and checks the log.

    ``sync`` is ``"default"`` (the shipped nats.conf) or ``"always"`` (the same with
    ``sync_interval: always``). Faults come every ``interval`` seconds (a random time
    in that range) and keep their component down for ``downtime`` seconds; workflows
    are submitted until the last fault, and for at least ``duration`` seconds. ``engines``
    engines serve the queue group (an engine fault kills each in turn); with ``nodes`` > 1
    NATS is a cluster of that many nodes with streams of as many replicas (a nats fault
    kills a node chosen at random). Files (logs,
    journals, the server's store) go to ``directory``, a temporary one if None.
    """
    if seed is None:
        seed = random.SystemRandom().randrange(1, 2**31)
    unknown = set(kinds) - set(FAULT_KINDS)
    if unknown or sync not in ("default", "always"):
        raise ValueError(f"unknown fault kinds {sorted(unknown)} or sync {sync!r}")
    progress(f"chaos seed {seed} (replay: --seed {seed})")
    with tempfile.TemporaryDirectory(prefix="colonies-chaos-") as tmp:
        base = directory or Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        config = shipped_nats_config() if sync == "default" else sync_always_config(base)
        rng = random.Random(seed)
        stack = ChaosStack(
            base,
            config,
            f"chaos{seed}",
            executors,
            Keys(),
            engine_command=engine_command,
            engines=engines,
            nodes=nodes,
        )
        result = ChaosResult(seed, sync)
        try:
            _run(
                stack, rng, rounds, in_flight, interval, downtime, kinds, duration, result, progress
            )
        finally:
            stack.stop()
        return result


def _run(
    stack: ChaosStack,
    rng: random.Random,
    rounds: int,
    in_flight: int,
    interval: tuple[float, float],
    downtime: tuple[float, float],
    kinds: Sequence[str],
    duration: float,
    result: ChaosResult,
    progress: Callable[[str], Any],
) -> None:
    stack.start_nats()
    stack.start_engine(1)
    prober = Colonies(servers=stack.servers, timeout=2.0)
    try:
        _add_colony(prober, stack)
        for number in range(2, len(stack.engines) + 1):  # replicas, once the colony exists
            stack.start_engine(number)
        stack.start_projector()
        stack.start_executors()
        journal = Journal(stack.journal_dir / "submitter.jsonl")
        submitter = _Submitter(stack, journal, rng, in_flight)
        started = time.monotonic()
        submitter.start()
        try:
            schedule = fault_schedule(rng, kinds, rounds)
            for number, kind in enumerate(schedule, 1):
                time.sleep(rng.uniform(*interval))
                elapsed = time.monotonic() - started
                turn = schedule[:number].count(kind) - 1
                fault = _inject(stack, prober, rng, kind, turn, downtime, elapsed)
                result.faults.append(fault)
                progress(
                    f"fault {number}/{rounds}: {fault.target} killed at {fault.at:.1f} s, down "
                    f"{fault.downtime:.2f} s, serving again {fault.recovery:.2f} s after restart"
                )
            time.sleep(max(0.0, duration - (time.monotonic() - started)))
        finally:
            submitter.stop.set()
            submitter.join(30)
            journal.close()
        if submitter.error is not None:
            raise submitter.error
        result.submitted = len(submitter.submitted)
        result.submit_failures = submitter.failures
        progress("faults done: waiting for every graph to end")
        _drain(stack)
        result.minutes = (time.monotonic() - started) / 60
        for component in [*stack.executors, *stack.engines]:  # the log is still from here
            component.stop()
        result.resent, result.claims_over, result.outputs_refused = _retries_logged(stack.directory)
        result.check = _check(stack, progress)
    finally:
        prober.disconnect()


def _add_colony(client: Colonies, stack: ChaosStack) -> None:
    owner_id = crypto.id_from_private_key(stack.keys.colony_owner)
    client.add_colony({"colonyid": owner_id, "name": stack.colonyname}, stack.keys.server)


def fault_schedule(rng: random.Random, kinds: Sequence[str], rounds: int) -> list[str]:
    """The kind of each fault: every kind in turn, in a random order each turn, so that
    a run of ``len(kinds)`` rounds hits every component."""
    schedule: list[str] = []
    while len(schedule) < rounds:
        turn = list(kinds)
        rng.shuffle(turn)
        schedule.extend(turn)
    return schedule[:rounds]


def _inject(
    stack: ChaosStack,
    prober: Colonies,
    rng: random.Random,
    kind: str,
    turn: int,
    downtime: tuple[float, float],
    at: float,
) -> Fault:
    """Kills a component of ``kind`` (an executor chosen at random), keeps it down a
    random moment, restarts it and measures its recovery."""
    down = rng.uniform(*downtime)
    if kind == "engine":
        engine = stack.engines[turn % len(stack.engines)]  # every replica in turn
        engine.kill()
        time.sleep(down)
        restarted = time.monotonic()
        engine.start()
        _until_engine_answers(prober, stack)
        return Fault(kind, engine.name, at, down, time.monotonic() - restarted)
    if kind == "executor":
        executor = rng.choice(stack.executors)
        executor.kill()
        time.sleep(down)
        restarted = time.monotonic()
        executor.start()
        return Fault(kind, executor.name, at, down, time.monotonic() - restarted)
    if kind == "projector":
        assert stack.projector is not None
        stack.projector.kill()
        time.sleep(down)
        restarted = time.monotonic()
        target = _last_sequence(stack.servers)
        stack.projector.start()
        _until(lambda: view_position(stack.view) >= target, "the projector caught up")
        return Fault(kind, "projector", at, down, time.monotonic() - restarted)
    node = rng.randrange(len(stack.nats))
    stack.nats[node].kill()
    time.sleep(down)
    restarted = time.monotonic()
    stack.restart_nats(node)
    _until_engine_answers(prober, stack)
    name = "nats-server" if len(stack.nats) == 1 else f"nats-node-{node + 1}"
    return Fault(kind, name, at, down, time.monotonic() - restarted)


def _until(condition: Callable[[], bool], what: str, timeout: float = RECOVERY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not recovered in {timeout} s: waiting until {what}")
        time.sleep(0.05)


def _until_engine_answers(prober: Colonies, stack: ChaosStack) -> None:
    def answers() -> bool:
        try:
            prober.get_colony(stack.colonyname, stack.keys.colony_owner)
        except (ColoniesConnectionError, ColoniesError):
            return False
        return True

    _until(answers, "the engine answers")


def _last_sequence(servers: list[str]) -> int:
    """The log's last sequence, asked again while a cluster that just lost a node elects
    the stream's leader (its API times out or says it is unavailable meanwhile)."""

    async def ask() -> int:
        nc = await nats.connect(servers)
        deadline = time.monotonic() + 60
        try:
            while True:
                try:
                    return int((await nc.jetstream().stream_info("COLONIES")).state.last_seq)
                except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError):
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)
        finally:
            await nc.close()

    return asyncio.run(ask())


def _drain(stack: ChaosStack) -> None:
    """Waits until every graph in the log has ended, read from the log itself (an
    engine's answer could lag behind it).

    Gives up after :data:`DRAIN_TIMEOUT` seconds: the checker reports the graphs still
    running as anomalies.
    """
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while True:
        try:
            if not unfinished_graphs(stack.servers, stack.keys.seal_key):
                return
        except (OperationalError, nats.errors.Error, OSError):
            pass  # the log could not be read just now (a node coming back): look again
        if time.monotonic() > deadline:
            return
        time.sleep(1.0)


RESENT_LINE = re.compile(rb"(?:no reply to|came back: sending) '(\w+)'")
"""How the client logs a command it sends again (``client/connection.py``)."""
CLAIM_OVER_LINE = b"a retried claim of executor"
"""How the engine logs a retried claim whose attempt was over (``engine/app.py``)."""
OUTPUT_REFUSED_LINE = re.compile(rb"the output of \w+ was refused")
"""How the executor logs an output whose close was refused (``executor.py``)."""


def _retries_logged(directory: Path) -> tuple[dict[str, int], int, int]:
    """What the executors' logs say they sent again (per op), how many retried claims
    the engines' logs say found their attempt over, and how many outputs the executors'
    logs say were refused (and so reported as failures)."""
    resent: Counter[str] = Counter()
    refused = 0
    for path in directory.glob("chaos-*.log"):
        text = path.read_bytes()
        resent.update(op.decode() for op in RESENT_LINE.findall(text))
        refused += len(OUTPUT_REFUSED_LINE.findall(text))
    over = sum(path.read_bytes().count(CLAIM_OVER_LINE) for path in directory.glob("engine*.log"))
    return dict(resent), over, refused


def _check(stack: ChaosStack, progress: Callable[[str], Any]) -> CheckReport:
    """The checker, once the log is still: journals, results, views, audit."""
    records, torn = read_journals(stack.journals)
    progress(f"checking the log against {len(records)} acknowledged commands")
    report = read_and_check(stack.servers, stack.keys.seal_key, records)
    report.torn_journal_lines = torn
    end = _last_sequence(stack.servers)
    fresh = stack.projector_process(stack.directory / "fresh.sqlite", "fresh-projector")
    fresh.start()
    try:
        _until(lambda: view_position(stack.view) >= end, "the projector reached the end")
        _until(lambda: view_position(fresh.log_dir / "fresh.sqlite") >= end, "the rebuild")
        assert stack.projector is not None
        stack.projector.stop()
        fresh.stop()
        check_views(stack.view, stack.directory / "fresh.sqlite", report)
    finally:
        fresh.kill()
    authorities = Authorities(
        engine_id=crypto.id_from_private_key(stack.keys.engine),
        server_id=crypto.id_from_private_key(stack.keys.server),
    )
    check_audit(stack.servers, authorities, stack.keys.seal_key, report)
    return report
