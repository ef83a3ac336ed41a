"""What every benchmark group shares: a fresh nats-server, timing, and the report.

A group measures *rates* (things per second), each several times, and reports the median.
It may declare *targets*: a rate divided by a baseline rate must reach a minimum (the store's
recorder against raw nats-py, say). :func:`print_report` prints the table,
:func:`write_json` keeps the numbers with the environment they were measured in.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import colonies_es

RESULTS_DIR = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Options:
    """How a group should run: ``quick`` shrinks the work, ``runs`` repeats each rate.
    ``peer_dir``, ``install_peer``, ``no_peer``, ``layout`` and
    ``dev_options`` concern the peers group only (see :mod:`benchmarks.peers`)."""

    quick: bool = False
    runs: int = 3
    peer_dir: Path | None = None
    install_peer: bool = False
    no_peer: bool = False
    layout: tuple[int, int] | None = None
    """(executors, functions each) of the dev stack; None: the group's default."""
    dev_options: tuple[str, ...] = ()
    """More of ``colonies dev``'s options for the stack."""


@dataclass(frozen=True)
class Sample:
    """``count`` things done in ``seconds``."""

    count: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.count / self.seconds


class Stopwatch:
    """``with Stopwatch() as watch: ...`` then ``watch.seconds``."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = 0.0

    def __enter__(self) -> Stopwatch:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.seconds = time.perf_counter() - self._start


def time_calls(fn: Callable[[int], object], seconds: float, warmup: int = 50) -> Sample:
    """Calls ``fn(0), fn(1), ...`` for about ``seconds`` after ``warmup`` untimed calls."""
    for i in range(warmup):
        fn(i)
    calls = 0
    with Stopwatch() as watch:
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            for _ in range(100):
                fn(calls)
                calls += 1
    return Sample(calls, watch.seconds)


@dataclass
class Rate:
    """One measured throughput: a sample per run."""

    label: str
    unit: str
    samples: list[Sample] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(sample.rate for sample in self.samples)

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "unit": self.unit,
            "median": self.median,
            "runs": [
                {"rate": s.rate, "count": s.count, "seconds": s.seconds} for s in self.samples
            ],
        }


@dataclass(frozen=True)
class Target:
    """``rate / baseline`` (of the medians) should be at least ``minimum``; without a
    minimum the ratio is only reported (to explain another one)."""

    rate: str
    baseline: str
    minimum: float | None = None


@dataclass(frozen=True)
class Reference:
    """A fixed rate a measured one is compared with (a target, never a measurement): it
    is printed and stored apart from the rates."""

    label: str
    unit: str
    value: float


QUICK_NOTE = "n/a (quick)"
"""The result of a target in a ``--quick`` run: less work than the target is defined for."""


@dataclass
class Report:
    """What one group measured. Rates are keyed by short names; targets refer to them
    (or to a :class:`Reference`, a fixed value). In a ``quick`` report no target
    applies: results read :data:`QUICK_NOTE`."""

    group: str
    runs: int
    parameters: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    rates: dict[str, Rate] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    references: dict[str, Reference] = field(default_factory=dict)
    quick: bool = False

    def add(self, key: str, label: str, unit: str, sample: Sample) -> None:
        """Records one run of the rate ``key`` (declared on first use)."""
        self.rates.setdefault(key, Rate(label, unit)).samples.append(sample)

    def value(self, key: str) -> float:
        """The median of a measured rate, or a reference's fixed value."""
        return self.rates[key].median if key in self.rates else self.references[key].value

    def ratio(self, target: Target) -> float:
        return self.value(target.rate) / self.value(target.baseline)

    def result(self, target: Target) -> str:
        """PASS or MISS, "-" for a ratio without a minimum, :data:`QUICK_NOTE` in a quick
        run."""
        if target.minimum is None:
            return "-"
        if self.quick:
            return QUICK_NOTE
        return "PASS" if self.ratio(target) >= target.minimum else "MISS"

    def measured(self, target: Target) -> bool:
        known = self.rates.keys() | self.references.keys()
        return target.rate in known and target.baseline in known

    def to_json(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "runs": self.runs,
            "parameters": self.parameters,
            "environment": self.environment,
            "quick": self.quick,
            "rates": {key: rate.to_json() for key, rate in self.rates.items()},
            "references": {
                key: {"label": ref.label, "unit": ref.unit, "value": ref.value, "measured": False}
                for key, ref in self.references.items()
            },
            "targets": [
                {
                    "rate": t.rate,
                    "baseline": t.baseline,
                    "ratio": self.ratio(t),
                    "minimum": t.minimum,
                    "result": self.result(t),
                }
                for t in self.targets
                if self.measured(t)
            ],
        }


# ------------------------------------------------------------------------- nats-server


NATS_CONFIG = Path(colonies_es.__file__).parent / "nats.conf"
"""The server configuration the project ships (``colonies dev`` runs with it)."""


@contextlib.contextmanager
def nats_server() -> Iterator[str]:
    """A fresh embedded nats-server (configured by :data:`NATS_CONFIG`) with its
    JetStream store in a temporary directory.

    Yields its URL; the server and its files are gone afterwards.
    """
    from colonies_es.embedded import NatsServer  # only the groups that need a server load it

    with (
        tempfile.TemporaryDirectory(prefix="colonies-bench-") as tmp,
        NatsServer(Path(tmp) / "jetstream", config=NATS_CONFIG) as server,
    ):
        yield server.url


def server_version(url: str) -> str:
    """The version the server at ``url`` announces."""
    import asyncio

    import nats

    async def ask() -> str:
        nc = await nats.connect(url)
        try:
            version = nc.connected_server_version
            release = f"{version.major}.{version.minor}.{version.patch}"
            return f"{release}-{version.prerelease}" if version.prerelease else release
        finally:
            await nc.close()

    return asyncio.run(ask())


# ------------------------------------------------------------------------- CPU


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (all its threads; Linux).

    Read from ``/proc/<pid>/stat`` (utime and stime): it counts the CPU the process got,
    not the time it waited for it, so it holds on a shared, loaded machine where wall
    clock rates do not."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuMeter:
    """CPU seconds used over a block by each party (the processes of ``pids``) and by
    this process (the ``own`` party: the client driving the load).

    ``with meter.measuring(): ...`` then :meth:`per_unit` (milliseconds per process, say)
    and :func:`cpu_line` to print it. Reusable by any group: name the parties, give their
    pids (a party of several processes is their sum)."""

    pids: dict[str, list[int]]
    own: str = "submitter"
    used: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def measuring(self) -> Iterator[CpuMeter]:
        start = self._now()
        own = time.process_time()
        yield self
        end = self._now()
        self.used = {party: end[party] - start[party] for party in self.pids}
        self.used[self.own] = time.process_time() - own

    def per_unit(self, units: int) -> dict[str, float]:
        """CPU milliseconds per unit of work of each party, for ``units`` done in the block."""
        return {party: 1000 * seconds / units for party, seconds in self.used.items()}

    def _now(self) -> dict[str, float]:
        return {party: sum(map(cpu_seconds, pids)) for party, pids in self.pids.items()}


def cpu_line(per_unit: dict[str, float], unit: str = "process") -> str:
    """``cpu ms/process: engine 1.70, nats-server 1.00, ..., total 4.30``: one line a
    reader (or a grep) finds in a group's output."""
    parts = ", ".join(f"{party} {ms:.2f}" for party, ms in per_unit.items())
    return f"cpu ms/{unit}: {parts}, total {sum(per_unit.values()):.2f}"


# ------------------------------------------------------------------------- environment


def environment() -> dict[str, Any]:
    """Where the numbers come from: interpreter, libraries, machine, load, commit."""
    return {
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "packages": {name: _version(name) for name in ("nats-py", "msgspec", "eventsourcing")},
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "git_commit": _git_commit(),
    }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or None


def _git_commit() -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return done.stdout.strip()
    return None


# ------------------------------------------------------------------------- output


def print_report(report: Report) -> None:
    """The rates (median, spread over the runs), then the ratios and their targets."""
    env = report.environment
    packages = env.get("packages", {})
    print()
    versions = [f"Python {env.get('python')}", f"nats-py {packages.get('nats-py')}"]
    if "nats_server" in env:
        versions.append(f"nats-server {env['nats_server']}")
    cores = f"{env.get('usable_cores')} cores ({env.get('cpu_model')})"
    print(f"{report.group}: median of {report.runs} run(s); {', '.join(versions)}; {cores}")
    width = max((len(key) for key in [*report.rates, *report.references]), default=0)
    header = f"{'':<{width}}  {'measurement':<48} {'median':>10} {'unit':<8} {'runs min..max':>15}"
    print(header)
    print("-" * len(header))
    for key, rate in report.rates.items():
        rates = [s.rate for s in rate.samples]
        spread = f"{_short(min(rates))}..{_short(max(rates))}"
        print(f"{key:<{width}}  {rate.label:<48} {rate.median:>10,.0f} {rate.unit:<8} {spread:>15}")
    for key, reference in report.references.items():
        value = f"{reference.value:>10,.0f} {reference.unit:<8}"
        print(f"{key:<{width}}  {reference.label:<48} {value} {'(not measured)':>15}")
    targets = [t for t in report.targets if report.measured(t)]
    if not targets:
        return
    print()
    if report.quick:
        print("quick run: less work than the targets are defined for; they do not apply")
    header = f"{'ratio of medians':<32} {'value':>6}  {'target':>7}  result"
    print(header)
    print("-" * len(header))
    for target in targets:
        minimum = "" if target.minimum is None else f">= {target.minimum:.2f}"
        name = f"{target.rate} / {target.baseline}"
        print(f"{name:<32} {report.ratio(target):>6.2f}  {minimum:>7}  {report.result(target)}")


def _short(value: float) -> str:
    return f"{value / 1000:.1f}k" if value >= 1000 else f"{value:.0f}"


def write_json(reports: list[Report], path: Path | None = None) -> Path:
    """Writes the reports to ``path`` (default ``results/<groups>-<timestamp>.json``)."""
    created = dt.datetime.now(dt.UTC)
    if path is None:
        name = "-".join(report.group for report in reports)
        path = RESULTS_DIR / f"{name}-{created.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "created": created.isoformat(),
        "groups": {report.group: report.to_json() for report in reports},
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def parse_layout(text: str) -> tuple[int, int]:
    """``"4x2"`` -> (4, 2): executors, functions each (both at least 1); an argparse
    ``type`` (the peers group's and ``benchmarks.paired``'s ``--layout``)."""
    executors, _, functions = text.lower().partition("x")
    try:
        layout = int(executors), int(functions)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not EXECUTORSxFUNCTIONS, e.g. 4x2") from None
    if min(layout) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: both numbers must be at least 1")
    return layout
