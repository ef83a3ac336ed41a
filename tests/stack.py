"""A real colonies-es stack for tests: nats-server, engine process, keys and colonies.

The engine runs as its own process (``python -m colonies_es.cli server``), exactly as in
production, so tests can SIGKILL and restart it. Its output goes to a log file; readiness
is its "engine ready" line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from colonies_es import crypto
from colonies_es.client import Colonies
from colonies_es.embedded import NatsServer
from colonies_es.engine import ColoniesApp
from colonies_es.settings import Settings

_READY_LINES = (b"colonies engine ready", b"projector ready on")


class EngineProcess:
    """``colonies server`` as a child process, with a projector beside it (its view in
    ``log_dir/view.sqlite``), as ``colonies server`` runs by default."""

    def __init__(
        self,
        nats_url: str,
        server_id: str,
        log_dir: Path,
        replicas: int = 1,
        *,
        projector: bool = True,
        extra_env: dict[str, str] | None = None,
        module: str = "colonies_es.cli",
    ) -> None:
        """``nats_url`` may list a cluster's nodes (comma separated); ``replicas`` is the
        log's replica count (3 on the ``nats_cluster`` fixture). ``projector=False`` runs
        the engine alone (``--no-projector``): for tests of a projector of their own,
        which must then be the only one answering queries and listings. ``extra_env``:
        more ``COLONIES_*`` settings (a NATS credential, a cipher key). ``module``: the
        program run as ``python -m`` (a test's patched engine, such as
        ``tests.unsure_engine``, run from the repository's root)."""
        self.module = module
        self.nats_url = nats_url
        self.replicas = replicas
        self.projector = projector
        self.extra_env = dict(extra_env or {})
        self.server_id = server_id
        self.engine_prvkey = crypto.new_private_key()
        self.seal_key = os.urandom(32).hex()
        self.log_dir = log_dir
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log_file(self) -> Path:
        return self.log_dir / f"engine-{self.starts}.log"

    def start(self, timeout: float = 30.0) -> EngineProcess:
        """Starts the engine (and the projector beside it, which answers listings) and
        waits until both are ready."""
        self.starts += 1
        log = self.log_file.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                self.module,
                "server",
                "--nats",
                self.nats_url,
                *(() if self.projector else ("--no-projector",)),
            ],
            env={
                **os.environ,
                "COLONIES_SERVER_ID": self.server_id,
                "COLONIES_ENGINE_PRVKEY": self.engine_prvkey,
                "COLONIES_EVENT_SEAL_KEY": self.seal_key,
                "COLONIES_STREAM_REPLICAS": str(self.replicas),
                "COLONIES_PROJECTOR_DB": str(self.log_dir / "view.sqlite"),
                **self.extra_env,
            },
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        ready = _READY_LINES if self.projector else _READY_LINES[:1]
        while not all(line in self.log_file.read_bytes() for line in ready):
            if self.process.poll() is not None:
                raise RuntimeError(f"engine exited: {self.log_file.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"engine not ready: {self.log_file.read_text()[-3000:]}")
            time.sleep(0.02)
        return self

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed, nothing said goodbye."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return "\n".join(
            (self.log_dir / f"engine-{n}.log").read_text(errors="replace")
            for n in range(1, self.starts + 1)
        )


@dataclass
class ColonyHandle:
    """A colony made for one test, with its owner's key."""

    name: str
    owner_prvkey: str
    executors: dict[str, str] = field(default_factory=dict)
    """executor name -> private key"""


@dataclass
class Stack:
    """A nats-server, an engine, a connected client and the server owner's key."""

    nats: NatsServer
    engine: EngineProcess
    client: Colonies
    server_prvkey: str

    def new_colony(self) -> ColonyHandle:
        """A fresh colony (unique name) owned by a fresh key."""
        name = f"c{uuid.uuid4().hex[:10]}"
        owner = crypto.new_private_key()
        self.client.add_colony(
            {"colonyid": crypto.id_from_private_key(owner), "name": name}, self.server_prvkey
        )
        return ColonyHandle(name, owner)

    def new_executor(
        self,
        colony: ColonyHandle,
        executortype: str = "python-executor",
        name: str | None = None,
        approve: bool = True,
    ) -> str:
        """Registers (and approves) an executor; returns its private key."""
        key = crypto.new_private_key()
        executorname = name or f"ex-{uuid.uuid4().hex[:8]}"
        self.client.add_executor(
            {
                "executorid": crypto.id_from_private_key(key),
                "executortype": executortype,
                "executorname": executorname,
                "colonyname": colony.name,
            },
            colony.owner_prvkey,
        )
        if approve:
            self.client.approve_executor(colony.name, executorname, colony.owner_prvkey)
        colony.executors[executorname] = key
        return key


@dataclass
class Replicas(Stack):
    """A stack served by several engine replicas (one queue group, one log, one seal key).

    ``engine`` is the first replica; ``engines`` all of them, in start order."""

    engines: list[EngineProcess] = field(default_factory=list)


def start_replicas(directory: Path, count: int) -> Replicas:
    """A nats-server and ``count`` engine processes sharing its log (each its own key)."""
    server = NatsServer(directory / "nats").start()
    server_prvkey = crypto.new_private_key()
    server_id = crypto.id_from_private_key(server_prvkey)
    engines: list[EngineProcess] = []
    try:
        for number in range(count):
            log_dir = directory / f"replica-{number}"
            log_dir.mkdir()
            # One projector (beside the first replica) answers the listings: more would
            # only cost CPU.
            engine = EngineProcess(server.url, server_id, log_dir, projector=not engines)
            if engines:
                engine.seal_key = engines[0].seal_key
            engines.append(engine.start())
    except BaseException:
        for engine in engines:
            engine.kill()
        server.stop()
        raise
    # Without affinity the stack's client sends each command to whichever replica takes
    # it, so that the tests go through every replica (executors keep theirs).
    client = Colonies("127.0.0.1", server.port, affinity=False)
    return Replicas(server, engines[0], client, server_prvkey, engines)


def stop_replicas(replicas: Replicas) -> None:
    replicas.client.disconnect()
    for engine in replicas.engines:
        engine.stop()
    replicas.nats.stop()


def start_stack(
    directory: Path,
    *,
    projector: bool = True,
    extra_env: dict[str, str] | None = None,
    module: str = "colonies_es.cli",
) -> Stack:
    """A nats-server and an engine process (with a projector beside it unless
    ``projector`` is False; ``extra_env`` and ``module`` as :class:`EngineProcess`
    takes them) in ``directory``, and a client."""
    server = NatsServer(directory / "nats").start()
    server_prvkey = crypto.new_private_key()
    engine = EngineProcess(
        server.url,
        crypto.id_from_private_key(server_prvkey),
        directory,
        projector=projector,
        extra_env=extra_env,
        module=module,
    )
    try:
        engine.start()
    except BaseException:
        server.stop()
        raise
    return Stack(server, engine, Colonies("127.0.0.1", server.port), server_prvkey)


def stop_stack(stack: Stack) -> None:
    """Stops what :func:`start_stack` started."""
    stack.client.disconnect()
    stack.engine.stop()
    stack.nats.stop()


def engine_app(stack: Stack) -> ColoniesApp:
    """An engine application in this process on the stack's log, caught up with it as an
    engine is before serving: to append events through the engine's own code path (as
    an old engine, or a long history, would have) or to compare its state."""
    engine = stack.engine
    settings = Settings.load(
        {
            "COLONIES_NATS_URL": engine.nats_url,
            "COLONIES_SERVER_ID": engine.server_id,
            "COLONIES_EVENT_SEAL_KEY": engine.seal_key,
        }
    )
    app = ColoniesApp(
        settings.store_env(), server_id=engine.server_id, engine_prvkey=crypto.new_private_key()
    )
    app.aggregates.store.connection.run(app.catch_up_with_log())
    return app
