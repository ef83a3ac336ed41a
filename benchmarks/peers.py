"""Side by side with the broker a Python user would pick instead: Celery + Redis.

Four workloads (issue 11), each run through this project and, in the same run, through
the peer's own harness (``../shared/peers/celery``: ``run.sh`` starts a private Redis and
a Celery worker with :data:`CONCURRENCY` prefork processes, ``bench.py`` runs the cases):

* **throughput**: 2,000 independent no-op tasks (``--quick``: 500), timed from the first
  submission to the last end. Here: ``submit_func_spec`` from the async client,
  :data:`SUBMIT_WINDOW` in flight, ends counted from the end notifications.
  Celery: ``noop.apply_async()`` each, then every result.
* **round trip**: one task at a time, 200 times (``--quick``: 50): ``submit_func_spec``
  then ``wait`` with the synchronous client, as a user's script does; p50 and p99.
  Celery: ``noop.delay().get()``.
* **fan-out**: 1,000 ``pair()`` (``--quick``: 200), each returning ``(1, 2)``, then one
  reduce summing everything (3,000). Here: the seed's dynamic map-reduce (``map`` adds the
  children with ``add_child``, the reduce is the graph's last node), timed from
  ``submit_workflow`` to ``wait(reduce)``. Celery: a chord of 1,000 ``pair()`` into
  ``total()``. Measured twice here: the seed's map (one ``add_child`` per pair, as code
  written for pycolonies does), and the same map with ``add_children`` (250 pairs per
  signed command: this project's addition, closer to Celery's chord, which sends its
  header in one call; a user writes it that way only when not bound to pycolonies' API).
  Each run prints where the time went (the map adding its children, the children running,
  the reduce).
* **diamond**: ``a -> {b, c} -> d`` (``a`` returns ``(1, 2)``, the others sum their
  input: ``d`` = 6), one after the other, median of 20 (``--quick``: 5) per run.
  Celery: ``a.s() | group(b.s(), c.s()) | d.s()``.

This project runs as a user runs it: ``colonies dev`` (NATS authorization on, the engine,
the projector, the gateway and :data:`CONCURRENCY` python executors, each its own OS
process running the functions' source), and the benchmark is a client with the
developer's credential from ``dev.env``. Every workload checks its results from the
log after its measurement (every process SUCCESS with the right output: the independent
tasks with ``get_process``, the graphs by replaying their own events), never skipped.

Each workload is measured ``--runs`` times on each side (median, min..max), the sides
taking turns (ours, then one repetition of the peer's, and again) so that a noisy minute
on a shared machine falls on both. The CPU seconds of every process of the stack are read
from ``/proc/<pid>/stat`` around each measurement; the target counts engine +
nats-server + executors (with their function runners) + this client, divided by the
processes run (the projector and the gateway are printed apart). Targets (PASS/MISS;
"n/a (quick)" in a ``--quick`` run, whose sizes differ from Celery's):

* throughput >= 1.0x Celery's;
* round trip p50 <= 1.25x Celery's;
* fan-out <= 1.0x the chord's time (each map); diamond <= 1.0x Celery's;
* whole-stack CPU <= 2.0 ms per process (in the throughput workload).

The peer is found with ``--peer-dir`` (or ``COLONIES_PEER_DIR``; default
``../shared/peers/celery`` next to the repository), its Python with ``CELERY_PYTHON`` or
the venv ``build/peers/celery-venv`` that ``--install-peer`` creates (it downloads
``celery[redis]`` from PyPI; a plain run never downloads). ``redis-server`` must be on the
PATH. Without the peer, this project's side is measured and the missing piece named.

Run ``python -m benchmarks peers [--quick] [--runs N] [--install-peer] [--no-peer]
[--layout EXECUTORSxFUNCTIONS] [--dev-option OPTION ...]`` (``--no-peer``: this project's
side only, to iterate on a change; ``--layout``: our python executors, by default ``1x4``,
one executor running :data:`CONCURRENCY` functions at a time, as Celery's one worker with
its :data:`CONCURRENCY` prefork children (like for like: one process taking the work, one
child per function running); ``--layout 4x1``, four executors of one function each, was
the default until the seventh session (``--one-executor``, now the default, is kept);
``--dev-option``: one more option for ``colonies dev``, e.g. ``--dev-option=--prefetch=0``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.engine import Check, percentile
from benchmarks.fanout_code import REDUCE, fanout_times, map_source
from benchmarks.harness import Options, Report, Sample, environment
from colonies_es.client import AsyncColonies, Colonies
from colonies_es.models import Process, Workflow, func_spec
from colonies_es.protocol import ENDED_PREFIX
from colonies_es.settings import Settings
from colonies_es.states import ProcessState

REPO_ROOT = Path(__file__).resolve().parent.parent
PEER_DIR_VARIABLE = "COLONIES_PEER_DIR"
DEFAULT_PEER_DIR = REPO_ROOT.parent / "shared" / "peers" / "celery"
"""The peer's harness, by default ``../shared/peers/celery`` next to the repository."""
CELERY_PYTHON_VARIABLE = "CELERY_PYTHON"
PEER_VENV = REPO_ROOT / "build" / "peers" / "celery-venv"
"""Where ``--install-peer`` makes the Celery venv (``build/`` is not committed)."""
PEER_REQUIREMENT = "celery[redis]"
INSTALL_HINT = (
    "apt-get install -y redis-server && python -m benchmarks peers --install-peer "
    f"(or {CELERY_PYTHON_VARIABLE}=<a python with {PEER_REQUIREMENT}>)"
)

CONCURRENCY = 4
"""Python executors of the dev stack, and Celery prefork worker processes."""
EXECUTOR_TYPE = "python-executor"
"""The type of the executors ``colonies dev`` runs."""
SUBMIT_WINDOW = 32
"""``submit_func_spec`` calls in flight in the throughput workload."""
ROUND_TRIP_PHASES = (
    "call -> submitted",
    "submitted -> assigned",
    "assigned -> closed",
    "closed -> wait returned",
    "submit reply",
)
"""Where a round trip's time goes: from the client's call to the submission the engine
recorded, to the process's start (assigned), to its end (closed), to ``wait`` returning
(the engine's timestamps and the client's clock: one machine); and, apart, the
``submit_func_spec`` reply as the client waits for it."""
LAST_EVENT = 2**62
"""A stream sequence after any graph's last event: time travel to it is the graph's end."""
DEV_READY = "colonies dev is running"
DEV_START_TIMEOUT = 180.0
"""Seconds ``colonies dev`` may take to start (the machine may be busy)."""
WORKLOAD_TIMEOUT = 300.0
"""Seconds one measurement may take before the benchmark gives up."""
PEER_TIMEOUT = 900.0
"""Seconds one run of the Celery side (``run.sh --reps 1``) may take."""

NOOP = "def noop(ctx={}):\n    return None\n"
PAIR = "def pair(ctx={}):\n    return 1, 2\n"
MAP = map_source(PAIR, "[]")
MAP_BATCH = map_source(PAIR, "[]", batch=True)
"""The same map with ``add_children`` (this project's addition, not in pycolonies), as the
seed's map does one by one. Celery's chord sends its header in one call."""
DIAMOND_A = "def a(ctx={}):\n    return 1, 2\n"
SUM_OF = "def {name}(*numbers, ctx={{}}):\n    return sum(numbers)\n"

PARTIES = ("engine", "nats-server", "executors", "client")
"""Who the CPU target counts."""
ALSO_RUNNING = ("projector", "gateway")
"""Processes of the dev stack the target does not count (printed apart)."""

TARGET_THROUGHPUT = 1.0
TARGET_ROUND_TRIP = 1.25
TARGET_FANOUT = 1.0
TARGET_DIAMOND = 1.0
TARGET_CPU_MS = 2.0


@dataclass(frozen=True)
class Sizes:
    tasks: int
    """Independent tasks in the throughput workload."""
    round_trips: int
    children: int
    """Pairs in the fan-out."""
    diamonds: int
    """Diamonds per run (their median is the run's figure)."""


FULL = Sizes(2000, 200, 1000, 20)
QUICK = Sizes(500, 50, 200, 5)


# ------------------------------------------------------------------------- figures


@dataclass(frozen=True)
class Figure:
    """One side's figure for one workload: the median over the runs, and the spread."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Figure:
        return cls(statistics.median(values), min(values), max(values))

    def to_json(self) -> dict[str, float]:
        return {"median": self.median, "min": self.low, "max": self.high}


@dataclass(frozen=True)
class Workload:
    """How a workload's figure reads and what the target asks of ours / Celery's."""

    key: str
    label: str
    unit: str
    higher_is_better: bool
    target: float
    """Limit of ours / Celery's: a minimum when higher is better, else a maximum."""


WORKLOADS = (
    Workload("throughput", "independent no-op tasks", "tasks/s", True, TARGET_THROUGHPUT),
    Workload("round_trip_p50", "one task round trip, p50", "ms", False, TARGET_ROUND_TRIP),
    Workload("round_trip_p99", "one task round trip, p99", "ms", False, 0.0),
    Workload("fanout", "fan-out + reduce (add_child map)", "s", False, TARGET_FANOUT),
    Workload("fanout_batch", "fan-out + reduce (add_children)", "s", False, TARGET_FANOUT),
    Workload("diamond", "diamond a -> {b, c} -> d, median", "ms", False, TARGET_DIAMOND),
)
"""The p99 has no target (0.0): it is printed for the record."""


@dataclass
class PeersReport(Report):
    """The rates of :class:`Report` (each side's, for the JSON), plus the side-by-side
    figures, the CPU per process and the targets."""

    ours_runs: dict[str, list[float]] = field(default_factory=dict)
    """Workload key -> our figure in each run."""
    celery_runs: dict[str, list[float]] = field(default_factory=dict)
    celery_missing: str = ""
    """Why the Celery side was not measured (empty when it was)."""
    celery_failures: list[str] = field(default_factory=list)
    """Runs of the Celery side that failed (the others still count)."""
    cpu_ms: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    """Per workload, per run: CPU milliseconds per process of each process of the stack."""
    celery_cpu_ms: list[dict[str, float]] = field(default_factory=list)
    """Celery's throughput case, per run: CPU ms per task of client, worker and redis."""
    checks: list[Check] = field(default_factory=list)
    loads: dict[str, list[list[float]]] = field(default_factory=dict)
    """Load average (1, 5, 15 min) at the start and end of each side, per run."""

    @property
    def ours(self) -> dict[str, Figure]:
        return {key: Figure.of(values) for key, values in self.ours_runs.items()}

    @property
    def celery(self) -> dict[str, Figure]:
        return {key: Figure.of(values) for key, values in self.celery_runs.items()}

    def to_json(self) -> dict[str, Any]:
        document = super().to_json()
        document["ours"] = {
            key: {**figure.to_json(), "runs": self.ours_runs[key]}
            for key, figure in self.ours.items()
        }
        document["celery"] = {
            key: {**figure.to_json(), "runs": self.celery_runs[key]}
            for key, figure in self.celery.items()
        }
        document["celery_missing"] = self.celery_missing
        document["celery_failures"] = self.celery_failures
        document["cpu_ms_per_process"] = self.cpu_ms
        document["celery_cpu_ms_per_task"] = self.celery_cpu_ms
        document["checks"] = [check.to_json() for check in self.checks]
        document["load_average"] = self.loads
        return document


# ------------------------------------------------------------------------- the dev stack


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The direct children of process ``pid`` (Linux)."""
    found: list[int] = []
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                found += [int(child) for child in (task / "children").read_text().split()]
    return found


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    found = [pid]
    for child in children(pid):
        found += descendants(child)
    return found


def role_of(pid: int) -> str:
    """What a direct child of ``colonies dev`` is, from its command line."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except (FileNotFoundError, ProcessLookupError):
        return "gone"
    if "nats-server" in Path(argv[0]).name:
        return "nats-server"
    if "colonies_es.cli" in argv:
        command = argv[argv.index("colonies_es.cli") + 1]
        return {"server": "engine", "executor": "executors"}.get(command, command)
    return "other"


class DevStack:
    """``colonies dev`` as a user starts it, in a data directory of its own: NATS
    authorization on, :data:`CONCURRENCY` python executors (or one that runs
    :data:`CONCURRENCY` functions at a time), no web UI, free ports."""

    def __init__(self, process: subprocess.Popen[bytes], settings: Settings) -> None:
        self.process = process
        self.settings = settings
        """The developer's settings, read from ``dev.env``."""
        self.colonyname = settings.colony_name
        self.prvkey = settings.prvkey
        """The colony member's key (``COLONIES_PRVKEY``): submits and waits."""

    @classmethod
    @contextlib.contextmanager
    def started(
        cls,
        directory: Path,
        executors: int = CONCURRENCY,
        options: Sequence[str] = (),
        workers: int = 1,
        python: str = sys.executable,
    ) -> Iterator[DevStack]:
        """The stack, running until the block ends (then stopped as Ctrl-C stops it):
        ``executors`` of ``workers`` workers each; ``options``: more of ``colonies dev``'s;
        ``python``: the interpreter that runs it (and so the installed tree it imports)."""
        data_dir = directory / "dev"
        log_file = directory / "colonies-dev.log"
        command = [
            python,
            "-m",
            "colonies_es.cli",
            "dev",
            "--port",
            "0",
            "--gateway-port",
            "0",
            "--no-ui",
            "--executors",
            str(executors),
            "--concurrency",
            str(workers),
            "--data-dir",
            str(data_dir),
            *options,
        ]
        with log_file.open("wb") as log:
            process = subprocess.Popen(
                command,
                cwd=directory,  # the packaged nats.conf, not a ./nats.conf of the caller's
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + DEV_START_TIMEOUT
            while DEV_READY not in log_file.read_text(errors="replace"):
                if process.poll() is not None or time.monotonic() > deadline:
                    tail = log_file.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"colonies dev did not start:\n{tail}")
                time.sleep(0.1)
            yield cls(process, Settings.load(read_env_file(data_dir / "dev.env")))
        finally:
            stop(process)

    def client(self, timeout: float = 30.0) -> Colonies:
        return Colonies.from_settings(self.settings, timeout)

    def async_client(self, timeout: float = 30.0) -> AsyncColonies:
        access = self.settings.nats
        return AsyncColonies(
            servers=access.servers,
            timeout=timeout,
            nkey_file=access.nkey_file,
            tls_ca_file=access.tls_ca_file,
        )

    def pids(self) -> dict[str, list[int]]:
        """Each role's processes now (an executor with its function runners)."""
        roles: dict[str, list[int]] = {}
        for child in children(self.process.pid):
            roles.setdefault(role_of(child), []).extend(descendants(child))
        return roles

    def pid_line(self) -> str:
        return ", ".join(f"{role} {' '.join(map(str, pids))}" for role, pids in self.pids().items())


def read_env_file(path: Path) -> dict[str, str]:
    """The ``export NAME=value`` lines of a ``dev.env``."""
    variables: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            variables[name] = shlex.split(value)[0] if value else ""
    return variables


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (``colonies dev`` stops its stack in order), SIGKILL to its session if it
    does not exit within a minute."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


@dataclass
class CpuMeter:
    """CPU seconds used over a block by each role of the stack and by this process."""

    stack: DevStack
    used: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def measuring(self) -> Iterator[CpuMeter]:
        pids = self.stack.pids()
        start = {pid: cpu_seconds(pid) for role in pids.values() for pid in role}
        own = time.process_time()
        yield self
        self.used = {
            role: sum(cpu_seconds(pid) - start[pid] for pid in role_pids)
            for role, role_pids in pids.items()
        }
        self.used["client"] = time.process_time() - own

    def per_process_ms(self, processes: int) -> dict[str, float]:
        """Milliseconds of CPU per process run, per role, and ``total`` of :data:`PARTIES`."""
        per = {role: 1000 * seconds / processes for role, seconds in self.used.items()}
        per["total"] = sum(per.get(party, 0.0) for party in PARTIES)
        return per


# ------------------------------------------------------------------------- our workloads


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise RuntimeError(f"benchmark went wrong: {what}")


def check_process(process: Process, output: list[Any], what: str) -> None:
    """``process`` ended SUCCESS with ``output``, as the engine recorded it."""
    _check(
        process.state == ProcessState.SUCCESS,
        f"{what} {process.processid} ended in state {process.state}: {process.errors}",
    )
    _check(process.output == output, f"{what} returned {process.output!r}, not {output!r}")


async def gather_windowed(calls: Sequence[Callable[[], Awaitable[Process]]]) -> list[Process]:
    """Runs ``calls`` with :data:`SUBMIT_WINDOW` in flight; results in order."""
    results: list[Process | None] = [None] * len(calls)
    numbers = itertools.count()

    async def worker() -> None:
        while (number := next(numbers)) < len(calls):
            results[number] = await calls[number]()

    await asyncio.gather(*(worker() for _ in range(min(SUBMIT_WINDOW, len(calls)))))
    return [result for result in results if result is not None]


@dataclass
class Measured:
    """One measurement of a workload on our side."""

    values: dict[str, float]
    """Workload key (:data:`WORKLOADS`) -> figure."""
    processes: int
    """Processes it ran (what the CPU is divided by)."""
    verify: Callable[[], None]
    """Checks every process of it from the engine's state; called after the CPU meter
    stopped (its round trips are not the workload's)."""
    note: str
    breakdown: Callable[[], str] | None = None
    """Where the time went, read from the engine's timestamps after the CPU meter
    stopped (printed after the note)."""


def _nothing_more() -> None:
    """For a workload whose every check was free (done on what ``wait`` returned)."""


class Workloads:
    """This project's side of the four workloads, on a running :class:`DevStack`."""

    def __init__(self, stack: DevStack, sizes: Sizes) -> None:
        self.stack = stack
        self.sizes = sizes
        self.client = stack.client()
        self.colonyname = stack.colonyname
        self.prvkey = stack.prvkey

    def close(self) -> None:
        self.client.disconnect()

    def all(self) -> list[tuple[str, Callable[[], Measured]]]:
        return [
            ("throughput", self.throughput),
            ("round_trip", self.round_trips),
            ("fanout", self.fanout),
            ("fanout_batch", partial(self.fanout, batch=True)),
            ("diamond", self.diamonds),
        ]

    def warm_up(self) -> None:
        """Untimed: a few of each, so every executor has started its function runner."""
        for measured in (
            self.throughput(4 * CONCURRENCY),
            self.round_trips(CONCURRENCY),
            self.fanout(2 * CONCURRENCY),
            self.fanout(2 * CONCURRENCY, batch=True),
            self.diamonds(CONCURRENCY),
        ):
            measured.verify()

    def _verify(self, processids: Sequence[str], expected: Callable[[Process], list[Any]]) -> None:
        """Every one of ``processids`` SUCCESS with ``expected(process)`` as its output
        (for processes submitted alone: one ``get_process`` each)."""

        async def every() -> list[Process]:
            async with self.stack.async_client() as client:
                return await gather_windowed(
                    [
                        partial(client.get_process, processid, self.prvkey)
                        for processid in processids
                    ]
                )

        processes = asyncio.run(every())
        _check(len(processes) == len(processids), f"{len(processes)} of {len(processids)} found")
        for process in processes:
            check_process(process, expected(process), process.spec.nodename)

    def _verify_graph(
        self, processgraphid: str, processes: int, expected: Callable[[Process], list[Any]]
    ) -> None:
        """The graph replayed from its own events in the log (time travel to its last
        event): ``processes`` processes, each SUCCESS with ``expected(process)``."""
        state = self.client.state_at(processgraphid, LAST_EVENT, self.prvkey)
        _check(len(state.processes) == processes, f"{len(state.processes)} processes in the log")
        for process in state.processes:
            check_process(process, expected(process), process.spec.nodename)

    # -- throughput

    def throughput(self, n: int | None = None) -> Measured:
        """:attr:`Sizes.tasks` independent no-op tasks, timed from the first submission to
        the last end."""
        count = self.sizes.tasks if n is None else n
        seconds, submit_seconds, submitted = asyncio.run(self._throughput(count))
        return Measured(
            {"throughput": count / seconds},
            count,
            lambda: self._verify(submitted, lambda process: []),
            f"{count / seconds:,.0f} tasks/s (submitting {submit_seconds:.2f} s of "
            f"{seconds:.2f} s)",
        )

    async def _throughput(self, n: int) -> tuple[float, float, list[str]]:
        spec = func_spec("noop", [], self.colonyname, EXECUTOR_TYPE, code=NOOP)
        ended: set[str] = set()
        all_ended = asyncio.Event()
        submitted: list[str] = []
        submitting_done = False

        async def on_end(msg: Any) -> None:
            # The set comparison only once as many ended as were submitted: it is
            # linear, and per notification it cost this client 9% of its CPU.
            ended.add(msg.data.decode())
            if submitting_done and len(ended) >= len(submitted) and ended.issuperset(submitted):
                all_ended.set()

        async with self.stack.async_client() as client:
            nc = await self.stack.settings.nats.connect("bench-peers-ends")
            try:
                await nc.subscribe(f"{ENDED_PREFIX}.{self.colonyname}.*", cb=on_end)
                await nc.flush()

                async def submit() -> Process:
                    process = await client.submit_func_spec(spec, self.prvkey)
                    submitted.append(process.processid)
                    return process

                started = time.perf_counter()
                await gather_windowed([submit] * n)
                submit_seconds = time.perf_counter() - started
                submitting_done = True
                await self._wait_all(client, submitted, ended, all_ended)
                seconds = time.perf_counter() - started
            finally:
                await nc.close()
        return seconds, submit_seconds, submitted

    async def _wait_all(
        self, client: AsyncColonies, submitted: list[str], ended: set[str], event: asyncio.Event
    ) -> None:
        """Until every submitted process ended. End notifications are at-most-once: when
        none came for 2 s, the engine is asked about the ones not seen to end."""
        deadline = time.monotonic() + WORKLOAD_TIMEOUT
        while not ended.issuperset(submitted):
            seen = len(ended)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), 2.0)
                return
            _check(time.monotonic() < deadline, f"{len(ended)} of {len(submitted)} ended")
            if len(ended) > seen:  # notifications still coming: none lost yet
                continue
            for processid in set(submitted) - ended:
                process = await client.get_process(processid, self.prvkey)
                if process.state in (ProcessState.SUCCESS, ProcessState.FAILED):
                    ended.add(processid)

    # -- round trip

    def round_trips(self, n: int | None = None) -> Measured:
        """``submit_func_spec`` + ``wait``, one task after the other; p50 and p99 (ms),
        and where the time went (:data:`ROUND_TRIP_PHASES`, medians, in the note)."""
        spec = func_spec("noop", [], self.colonyname, EXECUTOR_TYPE, code=NOOP)
        samples = []
        phases: dict[str, list[float]] = {phase: [] for phase in ROUND_TRIP_PHASES}
        for _ in range(self.sizes.round_trips if n is None else n):
            called = time.time()
            started = time.perf_counter()
            process = self.client.submit_func_spec(spec, self.prvkey)
            submitted = time.time()
            done = self.client.wait(process, WORKLOAD_TIMEOUT, self.prvkey)
            samples.append(1000 * (time.perf_counter() - started))
            returned = time.time()
            check_process(done, [], "noop")
            recorded = (done.submissiontime, done.starttime, done.endtime)
            _check(None not in recorded, f"a process ended without its times: {recorded}")
            moments = (called, *(moment.timestamp() for moment in recorded if moment), returned)
            for phase, start, end in zip(ROUND_TRIP_PHASES, moments, moments[1:], strict=False):
                phases[phase].append(1000 * (end - start))
            phases["submit reply"].append(1000 * (submitted - called))
        p50, p99 = percentile(samples, 50), percentile(samples, 99)
        where = ", ".join(f"{phase} {statistics.median(ms):.1f}" for phase, ms in phases.items())
        return Measured(
            {"round_trip_p50": p50, "round_trip_p99": p99},
            len(samples),
            _nothing_more,
            f"round trip p50 {p50:.2f} ms, p99 {p99:.2f} ms (medians, ms: {where})",
        )

    # -- fan-out

    def fanout(self, children: int | None = None, batch: bool = False) -> Measured:
        """Seconds from ``submit_workflow`` to ``wait(reduce)`` returning, for the map
        adding ``children`` pairs into the reduce: one ``add_child`` each, or all in one
        ``add_children`` (``batch``). The note splits the time at the map's start and
        end and the reduce's start (the engine's timestamps)."""
        count = self.sizes.children if children is None else children
        code = MAP_BATCH if batch else MAP
        mapper = func_spec("map", [count], self.colonyname, EXECUTOR_TYPE, code=code)
        reducer = func_spec("reduce", [], self.colonyname, EXECUTOR_TYPE, code=REDUCE)
        reducer.conditions.dependencies.append("map")
        workflow = Workflow(colonyname=self.colonyname, functionspecs=[mapper, reducer])
        started = time.perf_counter()
        graph = self.client.submit_workflow(workflow, self.prvkey)
        reduce = self.client.find_process("reduce", graph.processids, self.prvkey)
        _check(reduce is not None, "no reduce in the submitted graph")
        assert reduce is not None
        done = self.client.wait(reduce, WORKLOAD_TIMEOUT, self.prvkey)
        seconds = time.perf_counter() - started
        check_process(done, [3 * count], "reduce")
        outputs = {"map": [], "reduce": [3 * count], "pair": [1, 2]}

        return Measured(
            {"fanout_batch" if batch else "fanout": seconds},
            count + 2,
            partial(
                self._verify_graph,
                done.processgraphid,
                count + 2,
                lambda process: outputs[process.spec.funcname],
            ),
            f"fan-out {count:,} + reduce {seconds:.2f} s "
            f"({'add_children' if batch else 'add_child'} map)",
            partial(self._phases, done),
        )

    def _phases(self, reduce: Process) -> str:
        """Where a fan-out's time went, from the engine's timestamps: submission -> map
        started, the map's run (adding the children), map closed -> reduce started (the
        children run), the reduce's run."""
        times = fanout_times(self.client, reduce, self.prvkey)
        if times is None:
            return "timestamps missing"
        names = ("submitted -> map started", "map", "map closed -> reduce started", "reduce")
        spans = [
            f"{name} {(end - start).total_seconds():.2f}"
            for name, start, end in zip(names, times, times[1:], strict=False)
        ]
        return "seconds: " + ", ".join(spans)

    # -- diamond

    def diamonds(self, n: int | None = None) -> Measured:
        """Milliseconds of each diamond, from ``submit_workflow`` to ``wait(d)``; their
        median."""
        samples = []
        graphs: list[str] = []
        for _ in range(self.sizes.diamonds if n is None else n):
            started = time.perf_counter()
            graph = self.client.submit_workflow(self._diamond(), self.prvkey)
            last = self.client.find_process("d", graph.processids, self.prvkey)
            _check(last is not None, "no d in the submitted graph")
            assert last is not None
            done = self.client.wait(last, WORKLOAD_TIMEOUT, self.prvkey)
            samples.append(1000 * (time.perf_counter() - started))
            check_process(done, [6], "d")
            graphs.append(graph.processgraphid)
        outputs = {"a": [1, 2], "b": [3], "c": [3], "d": [6]}
        median = statistics.median(samples)

        def verify() -> None:
            for graph in graphs:
                self._verify_graph(graph, 4, lambda process: outputs[process.spec.nodename])

        return Measured(
            {"diamond": median},
            4 * len(graphs),
            verify,
            f"diamond median {median:.1f} ms ({min(samples):.1f}..{max(samples):.1f})",
            partial(self._diamond_hops, graphs, samples),
        )

    def _diamond_hops(self, graphs: Sequence[str], samples: Sequence[float]) -> str:
        """The diamond's critical path hop by hop (medians over the diamonds, ms), from
        the engine's timestamps: submitted -> a started (assignment), a's run, a closed ->
        the later of b and c started, their run, the later closed -> d started, d's run,
        and d closed -> ``wait`` returned (the client's total minus the rest)."""
        hops: dict[str, list[float]] = {}
        for graphid, total in zip(graphs, samples, strict=True):
            graph = self.client.get_processgraph(graphid, self.prvkey)
            processes = [self.client.get_process(pid, self.prvkey) for pid in graph.processids]
            nodes = {process.spec.nodename: process for process in processes}
            a, b, c, d = (nodes[name] for name in "abcd")
            later = max((b, c), key=lambda process: process.starttime or graph.submissiontime)
            last = max((b, c), key=lambda process: process.endtime or graph.submissiontime)
            moments = [
                ("submitted -> a", graph.submissiontime, a.starttime),
                ("a", a.starttime, a.endtime),
                ("a -> b,c", a.endtime, later.starttime),
                ("b,c", later.starttime, last.endtime),
                ("b,c -> d", last.endtime, d.starttime),
                ("d", d.starttime, d.endtime),
            ]
            engine_ms = 0.0
            for name, start, end in moments:
                if start is None or end is None:
                    return "diamond hops: timestamps missing"
                span = 1000 * (end - start).total_seconds()
                engine_ms += span
                hops.setdefault(name, []).append(span)
            hops.setdefault("rest (client)", []).append(total - engine_ms)
        return "diamond hops, median ms: " + ", ".join(
            f"{name} {statistics.median(values):.1f}" for name, values in hops.items()
        )

    def _diamond(self) -> Workflow:
        specs = [func_spec("a", [], self.colonyname, EXECUTOR_TYPE, code=DIAMOND_A)]
        for name, parents in (("b", ["a"]), ("c", ["a"]), ("d", ["b", "c"])):
            spec = func_spec(
                name, [], self.colonyname, EXECUTOR_TYPE, code=SUM_OF.format(name=name)
            )
            spec.conditions.dependencies.extend(parents)
            specs.append(spec)
        return Workflow(colonyname=self.colonyname, functionspecs=specs)


def measure_ours(report: PeersReport, workloads: Workloads, progress: str) -> None:
    """One round of our four workloads, each under a CPU meter, then verified."""
    report.loads.setdefault("ours_before", []).append(load_average())
    for name, workload in workloads.all():
        meter = CpuMeter(workloads.stack)
        with meter.measuring():
            measured = workload()
        measured.verify()
        per_process = meter.per_process_ms(measured.processes)
        report.cpu_ms.setdefault(name, []).append(per_process)
        for key, value in measured.values.items():
            report.ours_runs.setdefault(key, []).append(value)
        print(
            f"  {progress}  ours: {measured.note}; CPU {per_process['total']:.2f} ms/process",
            flush=True,
        )
        if measured.breakdown is not None:
            print(f"  {' ' * len(progress)}    {measured.breakdown()}", flush=True)
    report.loads.setdefault("ours_after", []).append(load_average())


# ------------------------------------------------------------------------- the peer


@dataclass(frozen=True)
class Peer:
    """Where the peer's harness is and the Python that has Celery."""

    directory: Path
    python: str


def peer_directory(options: Options) -> Path:
    if options.peer_dir is not None:
        return options.peer_dir
    return Path(os.environ.get(PEER_DIR_VARIABLE) or DEFAULT_PEER_DIR)


def find_peer(options: Options) -> Peer | str:
    """The peer, or one line saying what is missing. With ``options.install_peer`` and no
    ``CELERY_PYTHON``, makes :data:`PEER_VENV` (downloading from PyPI) if it is not there."""
    if options.no_peer:
        return "--no-peer"
    directory = peer_directory(options)
    if not (directory / "run.sh").is_file():
        return f"no run.sh in {directory} (--peer-dir or {PEER_DIR_VARIABLE})"
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        return "redis-server is not on the PATH"
    python = os.environ.get(CELERY_PYTHON_VARIABLE, "")
    venv_python = PEER_VENV / "bin" / "python"
    if not python:
        if not venv_python.exists() and options.install_peer:
            install_peer()
        if not venv_python.exists():
            return f"no Celery venv ({CELERY_PYTHON_VARIABLE} unset, {PEER_VENV} absent)"
        python = str(venv_python)
    probe = subprocess.run(
        [python, "-c", "import celery, redis"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return f"{python} cannot import celery and redis: {last}"
    return Peer(directory, python)


def install_peer() -> None:
    """Makes :data:`PEER_VENV` with :data:`PEER_REQUIREMENT`, as the peer's README says."""
    print(f"  installing the peer: {PEER_REQUIREMENT} from PyPI into {PEER_VENV}", flush=True)
    PEER_VENV.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    pip = [str(PEER_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, PEER_REQUIREMENT], check=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


CELERY_CASES = {
    "throughput": ("throughput_2000", "tasks_per_s"),
    "round_trip_p50": ("latency_200", "p50_ms"),
    "round_trip_p99": ("latency_200", "p99_ms"),
    "fanout": ("chord_1000", "seconds"),
    "fanout_batch": ("chord_1000", "seconds"),
    "diamond": ("diamond", "median_ms"),
}
"""Workload key -> the peer's case and figure (``bench.py``'s JSON)."""
CELERY_TASKS = 2000
"""Tasks of the peer's throughput case."""
CELERY_CHILDREN = 1000
"""Header tasks of the peer's chord."""


def measure_celery(report: PeersReport, peer: Peer, progress: str) -> None:
    """One round of the peer's side: its ``run.sh`` with ``--reps 1`` (a private Redis on
    a free port, its worker, its cases), read back from the JSON it writes."""
    report.loads.setdefault("celery_before", []).append(load_average())
    with tempfile.TemporaryDirectory(prefix="colonies-bench-celery-") as out:
        command = ["bash", str(peer.directory / "run.sh"), out]
        command += ["--concurrency", str(CONCURRENCY), "--reps", "1"]
        env = {
            **os.environ,
            CELERY_PYTHON_VARIABLE: peer.python,
            "BENCH_REDIS_PORT": str(free_port()),
        }
        done = subprocess.run(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=PEER_TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            tail = "\n".join(done.stdout.splitlines()[-30:])
            raise RuntimeError(f"the Celery side failed (exit {done.returncode}):\n{tail}")
        document = json.loads((Path(out) / f"results-c{CONCURRENCY}.json").read_text())
    report.environment["celery"] = {
        key: document["meta"].get(key)
        for key in ("celery", "kombu", "redis_py", "redis_server", "python", "concurrency")
    }
    results = document["results"]
    figures = {
        key: float(results[case]["summary"][value]["median"])
        for key, (case, value) in CELERY_CASES.items()
    }
    for key, value in figures.items():
        report.celery_runs.setdefault(key, []).append(value)
    (used,) = results["throughput_2000"]["cpu_s"]
    per_task = {party: 1000 * cpu / CELERY_TASKS for party, cpu in used.items()}
    per_task["total"] = sum(per_task.values())
    report.celery_cpu_ms.append(per_task)
    print(
        f"  {progress}  Celery: {figures['throughput']:,.0f} tasks/s (CPU "
        f"{per_task['total']:.2f} ms/task); round trip p50 {figures['round_trip_p50']:.2f} ms, "
        f"p99 {figures['round_trip_p99']:.2f} ms; chord of 1,000 {figures['fanout']:.2f} s; "
        f"diamond median {figures['diamond']:.1f} ms",
        flush=True,
    )
    report.loads.setdefault("celery_after", []).append(load_average())


# ------------------------------------------------------------------------- run, report


def ratio(report: PeersReport, key: str) -> float:
    return report.ours[key].median / report.celery[key].median


def checks(report: PeersReport, quick: bool) -> list[Check]:
    """The issue's targets: each workload's ratio to Celery (when measured), and the CPU
    per process (always)."""
    found: list[Check] = []
    if report.celery:
        for workload in WORKLOADS:
            if workload.target:
                found.append(
                    Check(
                        f"{workload.label}: ours / Celery",
                        ratio(report, workload.key),
                        workload.target,
                        "x",
                        at_least=workload.higher_is_better,
                        applies=not quick,
                    )
                )
    cpu = statistics.median(run["total"] for run in report.cpu_ms["throughput"])
    found.append(
        Check(
            "whole-stack CPU per process (throughput)",
            cpu,
            TARGET_CPU_MS,
            "ms",
            False,
            applies=not quick,
        )
    )
    return found


def run(options: Options) -> Report:
    sizes = QUICK if options.quick else FULL
    # Celery's layout by default: one process taking work for CONCURRENCY children.
    executors, workers = options.layout or (1, CONCURRENCY)
    report = PeersReport(
        group="peers",
        runs=options.runs,
        parameters={
            "tasks": sizes.tasks,
            "round_trips": sizes.round_trips,
            "children": sizes.children,
            "diamonds_per_run": sizes.diamonds,
            "concurrency": CONCURRENCY,
            "submit_window": SUBMIT_WINDOW,
            "stack": "colonies dev (NATS authorization on), python executors",
            "executors": f"{executors} x {workers}",
            "dev_options": " ".join(options.dev_options),
        },
        environment=environment(),
    )
    peer = find_peer(options)
    if isinstance(peer, str):
        report.celery_missing = peer
        print(f"  Celery side not measured: {peer}", flush=True)
    else:
        print(f"  Celery + Redis: {peer.directory}/run.sh with {peer.python}", flush=True)
    with (
        tempfile.TemporaryDirectory(prefix="colonies-bench-peers-") as tmp,
        DevStack.started(
            Path(tmp), executors=executors, workers=workers, options=options.dev_options
        ) as stack,
    ):
        authorization = bool(stack.settings.nats.nkey_file)
        report.parameters["nats_authorization"] = authorization
        print(
            f"  colonies dev (NATS authorization {'on' if authorization else 'OFF'}): "
            f"{stack.pid_line()} (py-spy record -p PID)",
            flush=True,
        )
        workloads = Workloads(stack, sizes)
        try:
            workloads.warm_up()
            for number in range(1, options.runs + 1):  # the sides take turns
                progress = f"run {number}/{options.runs}"
                measure_ours(report, workloads, progress)
                if isinstance(peer, Peer):
                    try:
                        measure_celery(report, peer, progress)
                    except (
                        RuntimeError,
                        OSError,
                        ValueError,
                        KeyError,
                        subprocess.SubprocessError,
                    ) as error:
                        failure = f"run {number} failed: {error}"
                        report.celery_failures.append(failure)
                        print(f"  {progress}  Celery: {failure}", flush=True)
            if isinstance(peer, Peer) and not report.celery_runs:
                report.celery_missing = "every run failed (see above)"
        finally:
            workloads.close()
    report.environment["load_average_after"] = load_average()
    add_rates(report, sizes)
    report.quick = options.quick
    report.checks = checks(report, options.quick)
    print_details(report)
    return report


def add_rates(report: PeersReport, sizes: Sizes) -> None:
    """Each side's figures as :class:`Report` rates (the common table and JSON); a time
    becomes its inverse (per second)."""
    sides = (
        ("", report.ours_runs, sizes.tasks, sizes.children),
        ("celery_", report.celery_runs, CELERY_TASKS, CELERY_CHILDREN),
    )
    for prefix, runs, tasks, children in sides:
        who = "Celery" if prefix else "ours"
        for value in runs.get("throughput", []):
            sample = Sample(tasks, tasks / value)
            report.add(f"{prefix}tput", f"{who}: {tasks:,} tasks", "task/s", sample)
        for value in runs.get("round_trip_p50", []):
            sample = Sample(1, value / 1000)
            report.add(f"{prefix}rtt", f"{who}: round trip, 1/p50", "1/s", sample)
        for value in runs.get("fanout", []):
            sample = Sample(children, value)
            report.add(f"{prefix}fanout", f"{who}: fan-out {children:,} + reduce", "pair/s", sample)
        if not prefix:  # Celery's chord is the same case for both fan-outs
            for value in runs.get("fanout_batch", []):
                sample = Sample(children, value)
                label = f"{who}: fan-out {children:,} (add_children) + reduce"
                report.add("fanout_batch", label, "pair/s", sample)
        for value in runs.get("diamond", []):
            sample = Sample(1, value / 1000)
            report.add(f"{prefix}diamond", f"{who}: diamond, 1/median", "1/s", sample)


def _figure(figure: Figure | None, unit: str) -> str:
    if figure is None:
        return "-"
    digits = 0 if unit == "tasks/s" else 2 if unit == "s" else 1
    return f"{figure.median:,.{digits}f} ({figure.low:,.{digits}f}..{figure.high:,.{digits}f})"


def print_details(report: PeersReport) -> None:
    """Both sides and their ratio per workload, the CPU per process, the targets, the
    load average."""
    sizes = report.parameters
    print()
    print(
        f"peers: median of {report.runs} run(s) (min..max); python executors "
        f"{sizes['executors']} (executors x functions each) / {sizes['concurrency']} prefork "
        f"workers; {sizes['tasks']:,} tasks, {sizes['round_trips']} round trips, "
        f"fan-out {sizes['children']:,}, {sizes['diamonds_per_run']} diamonds per run"
    )
    header = (
        f"{'workload':<34} {'unit':<8} {'this project':>24} {'Celery + Redis':>24} "
        f"{'ours/Celery':>11}"
    )
    print(header)
    print("-" * len(header))
    for workload in WORKLOADS:
        ours, theirs = report.ours.get(workload.key), report.celery.get(workload.key)
        times = f"{ratio(report, workload.key):.2f}" if ours and theirs else "-"
        print(
            f"{workload.label:<34} {workload.unit:<8} {_figure(ours, workload.unit):>24} "
            f"{_figure(theirs, workload.unit):>24} {times:>11}"
        )
    if report.quick and report.celery:
        print("--quick: this project ran less work than Celery's fixed sizes; ratios indicative")
    for failure in report.celery_failures:
        print(f"Celery {failure.splitlines()[0]}")
    if report.celery_missing:
        print(f"Celery side not measured: {report.celery_missing}")
        if report.celery_missing != "--no-peer" and not report.celery_failures:
            print(f"  to install the peer: {INSTALL_HINT}")
    print()
    print("CPU ms per process (median of the runs); the target counts " + " + ".join(PARTIES))
    header = f"{'workload':<16}" + "".join(
        f"{role:>12}" for role in [*PARTIES, "total", *ALSO_RUNNING]
    )
    print(header)
    print("-" * len(header))
    for key, per_run in report.cpu_ms.items():
        cells = "".join(
            f"{statistics.median(run.get(role, 0.0) for run in per_run):>12.2f}"
            for role in [*PARTIES, "total", *ALSO_RUNNING]
        )
        print(f"{key:<16}{cells}")
    if report.celery_cpu_ms:
        cpu = ", ".join(
            f"{party} {statistics.median(run[party] for run in report.celery_cpu_ms):.2f}"
            for party in report.celery_cpu_ms[0]
        )
        print(f"Celery, 2,000 tasks: {cpu} ms per task")
    print()
    header = f"{'peers target':<50} {'value':>8}  {'target':>9}  result"
    print(header)
    print("-" * len(header))
    for check in report.checks:
        limit = f"{'>=' if check.at_least else '<='} {check.limit:g}{check.unit}"
        print(f"{check.what:<50} {check.value:>7.2f}{check.unit:<1}  {limit:>9}  {check.result}")
    print(f"load average (1 min) at the start and end of each side, per run: {loads(report)}")


def loads(report: PeersReport) -> str:
    """``ours 3.1->3.4, Celery 3.4->3.2; ...`` per run."""
    runs = []
    for number, (before, after) in enumerate(
        zip(report.loads.get("ours_before", []), report.loads.get("ours_after", []), strict=True)
    ):
        text = f"ours {before[0]:.2f}->{after[0]:.2f}"
        if len(report.loads.get("celery_after", [])) > number:
            start, end = report.loads["celery_before"][number], report.loads["celery_after"][number]
            text += f", Celery {start[0]:.2f}->{end[0]:.2f}"
        runs.append(text)
    return "; ".join(runs)
