"""The parts of `colonies dev`: components that run, are watched, and stop in reverse order.

A :class:`DevStack` holds the started components. The embedded nats-server is a
:class:`NatsComponent` (with ``--cluster N``, the N nodes are one
:class:`ClusterComponent`); the engine and the executors are :class:`ChildProcess` es: a
``python -m colonies_es.cli ...`` command whose output is appended to a log file in the
data directory. Every wait has a deadline and gives up early when the user asks to stop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Protocol

from colonies_es.embedded import NatsServer, _die_with_parent_preexec
from colonies_es.embedded_cluster import NatsCluster

POLL_INTERVAL = 0.05  # seconds between two looks at a starting or running component


class DevError(Exception):
    """`colonies dev` cannot go on; the message is one line for the user."""


class Component(Protocol):
    """A running part of the development stack."""

    name: str

    def failure(self) -> str | None:
        """Return None while the component works, else one line saying what went wrong."""
        ...

    def stop(self) -> None:
        """Stop the component; must be bounded in time and safe to call twice."""
        ...


class NatsComponent:
    """The embedded nats-server as a stack component."""

    name = "nats-server"

    def __init__(self, server: NatsServer) -> None:
        self.server = server

    def failure(self) -> str | None:
        """Report the server's unexpected exit, pointing at its log."""
        if self.server.running:
            return None
        return f"nats-server exited unexpectedly (see {self.server.log_file})"

    def stop(self) -> None:
        """Stop the server gracefully (SIGTERM, then SIGKILL after a timeout)."""
        self.server.stop()


class ClusterComponent:
    """The nodes of an embedded JetStream cluster as one stack component."""

    name = "nats cluster"

    def __init__(self, cluster: NatsCluster) -> None:
        self.cluster = cluster

    def failure(self) -> str | None:
        """Report the first node that exited unexpectedly, pointing at its log.

        The cluster would survive one node's loss, but in development it is a fault
        worth stopping for."""
        for node in self.cluster.nodes:
            if not node.running:
                return f"a nats-server of the cluster exited unexpectedly (see {node.log_file})"
        return None

    def stop(self) -> None:
        """Stop every node gracefully (SIGTERM, then SIGKILL after a timeout)."""
        self.cluster.stop()


class ChildProcess:
    """A ``colonies`` command run by this process, its output appended to ``log_file``.

    It runs in a session of its own, so a Ctrl-C in the terminal reaches only
    `colonies dev`, which then stops it in order; on Linux it is killed if `colonies dev`
    dies without stopping it.
    """

    def __init__(
        self, name: str, args: Sequence[str], env: Mapping[str, str], log_file: Path
    ) -> None:
        self.name = name
        self.command = [sys.executable, "-m", "colonies_es.cli", *args]
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.log_file = log_file
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0  # where this run's output starts in the (appended) log

    @property
    def pid(self) -> int | None:
        """The process id, or None before :meth:`start`."""
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        """Start the command (it is not ready yet: see :func:`wait_until`)."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            self._log_offset = log.tell()
            self._process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                preexec_fn=_die_with_parent_preexec(os.getpid()),
            )

    def output(self) -> str:
        """What the process wrote to its log since it started."""
        with self.log_file.open("rb") as log:
            log.seek(self._log_offset)
            return log.read().decode(errors="replace")

    def failure(self) -> str | None:
        """Report the process's exit with its last output line, pointing at its log."""
        if self._process is None or self._process.poll() is None:
            return None
        said = _last_error(self.output())
        return (
            f"{self.name} exited unexpectedly (code {self._process.returncode})"
            f"{': ' + said.removeprefix('error: ') if said else ''} (see {self.log_file})"
        )

    def interrupt(self) -> None:
        """Sends SIGINT without waiting (:meth:`stop` then waits): several components
        asked at once stop in the time of the slowest, not of all of them in turn.

        SIGINT is the Ctrl-C the command would get in a terminal of its own (in its own
        session it does not get the user's): `colonies server` and `colonies executor`
        stop on it in order, and promptly.
        """
        process = self._process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGINT (see :meth:`interrupt`), then SIGKILL after ``timeout`` seconds;
        returns once it is reaped."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        self.interrupt()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)


def _last_error(output: str) -> str:
    """The line that best says why a ``colonies`` command stopped: its last ``error:``
    line (what the commands print when they give up), else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or [""])[-1]


def wait_until(
    ready: Callable[[], bool],
    *,
    watch: Sequence[Component],
    timeout: float,
    interrupted: Callable[[], bool],
    what: str,
    logs: str,
) -> bool:
    """Wait until ``ready()`` holds; return False if ``interrupted()`` came first.

    Raises :class:`DevError` with the failure of a ``watch`` ed component that stops
    working meanwhile, or, after ``timeout`` seconds, saying ``what`` was not ready and
    pointing at its ``logs``.
    """
    deadline = time.monotonic() + timeout
    while not ready():
        if interrupted():
            return False
        for component in watch:
            problem = component.failure()
            if problem is not None:
                raise DevError(problem)
        if time.monotonic() >= deadline:
            raise DevError(f"{what} not ready within {timeout:g} s (see {logs})")
        time.sleep(POLL_INTERVAL)
    return True


class DevStack:
    """Started components, stopped in reverse order of start."""

    def __init__(self, report: Callable[[str], None]) -> None:
        self.components: list[Component] = []
        self._report = report

    def add(self, component: Component) -> None:
        """Record a component that has started (it will be watched and stopped)."""
        self.components.append(component)

    def failure(self) -> str | None:
        """Return the first failure reported by a component, or None if all work."""
        for component in self.components:
            problem = component.failure()
            if problem is not None:
                return problem
        return None

    def stop(self) -> None:
        """Stop every component, last started first; a failing stop does not stop the rest.

        The processes started after the last engine (executors, gateway, projector) are
        interrupted together, then the engines together, then NATS: each layer still
        stops before what it needs (an executor's last close reaches an engine), but
        within a layer nobody waits for a neighbour's shutdown."""
        while self.components:
            layer = [self.components.pop()]
            while (
                self.components
                and _layer(self.components[-1]) == _layer(layer[0])
                and _layer(layer[0]) != "infrastructure"
            ):
                layer.append(self.components.pop())
            for component in layer:
                if isinstance(component, ChildProcess):
                    component.interrupt()
            for component in layer:
                try:
                    component.stop()
                except Exception as error:
                    self._report(f"stopping {component.name} failed: {error}")


def _layer(component: Component) -> str:
    """Which components may stop together (see :meth:`DevStack.stop`)."""
    if not isinstance(component, ChildProcess):
        return "infrastructure"  # NATS: stopped alone, last
    return "engine" if component.name.startswith("engine") else "client"


class StopSignals:
    """Turns SIGINT and SIGTERM into a flag instead of an exception, while active.

    A flag (rather than KeyboardInterrupt) lets shutdown run in order, even if the signal
    arrives in the middle of something, and repeats of the signal do not interrupt it.
    """

    def __init__(self) -> None:
        self.received: int | None = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    def __call__(self) -> bool:
        """True once a stop signal arrived."""
        return self.received is not None

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignals]:
        """Install the handlers for the duration of the block, then restore the old ones."""
        previous = {
            sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
