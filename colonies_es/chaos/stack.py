"""The stack the harness runs and breaks: a nats-server (or a cluster of them), the
engines, a projector and executors, each its own OS process that can be SIGKILLed and
started again.

Every component is started as in production (``colonies server``, ``colonies projector``,
the python executor) and is ready when it says so on its output (its "ready" line) or,
for nats-server, when :class:`~colonies_es.embedded.NatsServer` says so. The engine's
command line can be replaced (``engine_command``): the test of the checker runs a
deliberately broken engine that way, from the test suite, never from this package.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from colonies_es import crypto
from colonies_es.embedded import NatsServer
from colonies_es.embedded_cluster import NatsCluster
from colonies_es.projections.view import UPSTREAM

__all__ = ["ChaosStack", "ChildProcess", "Keys", "dump_view", "view_position"]

READY_TIMEOUT = 60.0
"""Seconds a component may take to say it is ready (a loaded machine, a long log)."""

ENGINE_COMMAND = (sys.executable, "-m", "colonies_es.cli", "server", "--no-projector")


class ChildProcess:
    """One component as a child process; its output goes to ``<log_dir>/<name>-<n>.log``
    (n counts the starts) and it is ready once that output contains ``ready_line``."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        env: dict[str, str],
        log_dir: Path,
        ready_line: str,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.env = env
        self.log_dir = log_dir
        self.ready_line = ready_line.encode()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log_file(self) -> Path:
        return self.log_dir / f"{self.name}-{self.starts}.log"

    def spawn(self) -> None:
        """Starts the process without waiting for it to be ready."""
        self.starts += 1
        with self.log_file.open("wb") as log:
            self.process = subprocess.Popen(
                self.command,
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Waits for the ready line; raises RuntimeError if the process exits first."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while self.ready_line not in self.log_file.read_bytes():
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.output_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready in {timeout} s: {self.output_tail()}")
            time.sleep(0.02)

    def start(self) -> None:
        self.spawn()
        self.wait_ready()

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed, nothing said goodbye."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def output_tail(self, chars: int = 3000) -> str:
        return self.log_file.read_text(errors="replace")[-chars:]


@dataclass(frozen=True)
class Keys:
    """The identities of one harness run."""

    server: str = field(default_factory=crypto.new_private_key)
    engine: str = field(default_factory=crypto.new_private_key)
    colony_owner: str = field(default_factory=crypto.new_private_key)
    seal_key: str = field(default_factory=lambda: os.urandom(32).hex())


class ChaosStack:
    """nats-server (with ``nats_config``; a cluster of ``nodes`` servers with streams of
    as many replicas when ``nodes`` > 1), ``engines`` engines in the queue group, a
    projector and ``executors`` executors, with their files under ``directory``."""

    def __init__(
        self,
        directory: Path,
        nats_config: Path,
        colonyname: str,
        executors: int,
        keys: Keys,
        engine_command: Sequence[str] = ENGINE_COMMAND,
        *,
        engines: int = 1,
        nodes: int = 1,
    ) -> None:
        self.directory = directory
        self.keys = keys
        self.colonyname = colonyname
        self.nats: list[NatsServer] = []
        self.cluster: NatsCluster | None = None
        if nodes > 1:
            self.cluster = NatsCluster(directory / "cluster", nodes, config=nats_config)
            self.nats = list(self.cluster.nodes)
        else:
            self.nats = [NatsServer(directory / "jetstream", config=nats_config)]
        self.replicas = nodes
        self.engine_command = list(engine_command)
        self.journal_dir = directory / "journals"
        self.journal_dir.mkdir(parents=True, exist_ok=True)
        self.view = directory / "view.sqlite"
        self.engines = [self._engine_process(n, engines) for n in range(1, engines + 1)]
        self.projector: ChildProcess | None = None
        self.executors: list[ChildProcess] = []
        self._executor_keys = [crypto.new_private_key() for _ in range(executors)]

    @property
    def url(self) -> str:
        """Every nats-server's client URL, comma separated."""
        return ",".join(node.url for node in self.nats)

    @property
    def servers(self) -> list[str]:
        return [node.url for node in self.nats]

    @property
    def journals(self) -> list[Path]:
        return sorted(self.journal_dir.glob("*.jsonl"))

    def start_nats(self) -> None:
        """Starts nats-server, or the cluster."""
        if self.cluster is not None:
            self.cluster.start(timeout=READY_TIMEOUT)
        else:
            self.nats[0].start(timeout=READY_TIMEOUT)

    def restart_nats(self, index: int) -> None:
        """Starts node ``index`` again after a kill (same port, same store)."""
        if self.cluster is not None:
            self.cluster.restart(index, timeout=READY_TIMEOUT)
        else:
            self.nats[index].start(timeout=READY_TIMEOUT)

    def _component_env(self) -> dict[str, str]:
        return {
            "COLONIES_EVENT_SEAL_KEY": self.keys.seal_key,
            "COLONIES_STREAM_REPLICAS": str(self.replicas),
        }

    def _engine_process(self, number: int, engines: int) -> ChildProcess:
        env = {
            **self._component_env(),
            "COLONIES_SERVER_ID": crypto.id_from_private_key(self.keys.server),
            "COLONIES_ENGINE_PRVKEY": self.keys.engine,
        }
        command = [*self.engine_command, "--nats", self.url]
        name = "engine" if engines == 1 else f"engine{number}"
        return ChildProcess(name, command, env, self.directory, "colonies engine ready")

    def start_engine(self, number: int = 1) -> None:
        """Starts engine ``number`` (1-based)."""
        self.engines[number - 1].start()

    def projector_process(self, db: Path, name: str) -> ChildProcess:
        """A projector writing its view to ``db`` (not started)."""
        command = [sys.executable, "-m", "colonies_es.cli", "projector", "--nats", self.url]
        command += ["--db", str(db), "--batch-size", "20"]
        return ChildProcess(
            name, command, self._component_env(), self.directory, "colonies projector ready"
        )

    def start_projector(self) -> None:
        self.projector = self.projector_process(self.view, "projector")
        self.projector.start()

    def start_executors(self) -> None:
        for number, key in enumerate(self._executor_keys, 1):
            name = f"chaos-{number}"
            command = [sys.executable, "-m", "colonies_es.chaos.worker", "--nats", self.url]
            command += ["--colony", self.colonyname, "--name", name]
            command += ["--journal", str(self.journal_dir / f"{name}.jsonl")]
            env = {"COLONIES_COLONY_PRVKEY": self.keys.colony_owner, "COLONIES_PRVKEY": key}
            executor = ChildProcess(name, command, env, self.directory, "chaos executor ready")
            self.executors.append(executor)
        for executor in self.executors:
            executor.spawn()
        for executor in self.executors:
            executor.wait_ready()

    def stop(self) -> None:
        """Stops everything, executors first, nats-server last."""
        for component in [*self.executors, self.projector, *self.engines]:
            if component is not None:
                component.stop()
        for node in reversed(self.nats):
            node.stop()


def view_position(db: Path) -> int:
    """The log position a projector's view has committed (0 before its first commit)."""
    if not db.exists():
        return 0
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        row = connection.execute(
            "SELECT notification_id FROM tracking WHERE application_name = ?", (UPSTREAM,)
        ).fetchone()
    except sqlite3.OperationalError:  # not created yet
        return 0
    finally:
        connection.close()
    return 0 if row is None else int(row[0])


def dump_view(db: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table of a view, sorted: two views are equal when these are."""
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        tables = [
            name
            for (name,) in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            )
        ]
        return {
            table: sorted(connection.execute(f'SELECT * FROM "{table}"').fetchall(), key=repr)
            for table in tables
        }
    finally:
        connection.close()
