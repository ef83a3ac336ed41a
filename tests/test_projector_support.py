"""Support for the projector's tests (named ``test_projector_*`` to live beside them; it
holds no tests).

- :class:`ProjectorProcess`: ``colonies projector`` as a child process, as in production,
  so tests can SIGTERM or SIGKILL it; ready when it prints its ready line.
- :func:`dump_view`: every row of a view's SQLite file, in key order, to compare views;
  :func:`wait_for_view`: wait until one projector's file has committed a position (with
  several projectors in the queue group, a query may be answered by any of them).
- :func:`answers`: every query's answer for some colonies, to compare what clients see.
- :func:`run_seed`: the seed workflow (gen_nums -> sum_nums), run by the test as the
  executor: assign, log, close.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from colonies_es import Workflow, func_spec
from colonies_es.client.queries import QueryClient
from colonies_es.models import ProcessGraph
from colonies_es.projections.view import UPSTREAM
from colonies_es.states import ProcessState
from tests.stack import ColonyHandle, Stack

EXECUTOR_TYPE = "python-executor"

VIEW_TABLES = {
    "colonies": "name",
    "executors": "colonyname, executorid",
    "users": "colonyname, userid",
    "graphs": "processgraphid",
    "processes": "processid",
    "logs": "seq",
    "aggregates": "aggregate_id",
    "tracking": "application_name",
}
"""Every table of the view, with its key."""


class ProjectorProcess:
    """``colonies projector`` as a child process writing its view to ``db``. As a
    context manager, it is killed (if still running) when the block ends."""

    def __init__(
        self,
        nats_url: str,
        db: Path,
        seal_key: str | None,
        log_dir: Path,
        batch_size: int | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        """``extra_env``: more ``COLONIES_*`` settings (a NATS credential, a cipher key)."""
        self.nats_url = nats_url
        self.extra_env = dict(extra_env or {})
        self.db = db
        self.seal_key = seal_key
        self.log_dir = log_dir
        self.batch_size = batch_size
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log_file(self) -> Path:
        return self.log_dir / f"projector-{self.db.stem}-{self.starts}.log"

    def start(self, timeout: float = 30.0) -> ProjectorProcess:
        """Starts the projector and waits for its ready line."""
        self.starts += 1
        command = [sys.executable, "-m", "colonies_es.cli", "projector"]
        command += ["--nats", self.nats_url, "--db", str(self.db)]
        if self.batch_size is not None:
            command += ["--batch-size", str(self.batch_size)]
        env = {k: v for k, v in os.environ.items() if k != "COLONIES_EVENT_SEAL_KEY"}
        if self.seal_key is not None:
            env["COLONIES_EVENT_SEAL_KEY"] = self.seal_key
        env.update(self.extra_env)
        with self.log_file.open("wb") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while b"colonies projector ready" not in self.log_file.read_bytes():
            if self.process.poll() is not None:
                raise RuntimeError(f"projector exited: {self.output()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"projector not ready: {self.output()[-3000:]}")
            time.sleep(0.02)
        return self

    def __enter__(self) -> ProjectorProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()

    def output(self) -> str:
        return self.log_file.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: a crash, nothing committed after the last commit."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM, and it must exit cleanly (status 0) within 15 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                code = self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"projector did not stop: {self.output()[-3000:]}") from None
            assert code == 0, f"projector exited with {code}: {self.output()[-3000:]}"


def dump_view(db: Path, tables: Iterable[str] = VIEW_TABLES) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the view's tables, in key order."""
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {
            table: connection.execute(
                f"SELECT * FROM {table} ORDER BY {VIEW_TABLES[table]}"
            ).fetchall()
            for table in tables
        }
    finally:
        connection.close()


def view_position(db: Path) -> int:
    """The position stored in a view's file (0 before its first commit)."""
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = connection.execute(
            "SELECT notification_id FROM tracking WHERE application_name = ?", (UPSTREAM,)
        ).fetchone()
    finally:
        connection.close()
    return 0 if row is None else int(row[0])


def wait_for_view(db: Path, position: int, timeout: float = 60.0) -> None:
    """Waits until the view in ``db`` has committed ``position``."""
    deadline = time.monotonic() + timeout
    while view_position(db) < position:
        if time.monotonic() > deadline:
            raise AssertionError(f"{db.name} at {view_position(db)}, not {position}")
        time.sleep(0.02)


def delete_view(db: Path) -> None:
    """Removes a view's SQLite file and its WAL files."""
    for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        path.unlink(missing_ok=True)


def caught_up(query: QueryClient, timeout: float = 20.0) -> int:
    """Waits until the answering projector has applied the whole log; its position."""
    return query.wait_for_position(query.log_position(), timeout)


def answers(query_of: dict[str, QueryClient]) -> dict[str, Any]:
    """Every query's answer for each colony (name -> a member's client): listings (all,
    per state, counted), stats, every graph, every process and its logs."""
    found: dict[str, Any] = {}
    for colonyname, query in sorted(query_of.items()):
        graphs = query.list_graphs(colonyname, 10_000)
        processes = query.list_processes(colonyname, 10_000)
        found[colonyname] = {
            "graphs": graphs,
            "processes": processes,
            "graphs by state": {s: query.list_graphs(colonyname, 1000, s) for s in ProcessState},
            "processes by state": {
                s: query.list_processes(colonyname, 1000, s) for s in ProcessState
            },
            "two newest graphs": query.list_graphs(colonyname, 2),
            "stats": query.stats(colonyname),
            "graph views": {g.processgraphid: query.get_graph(g.processgraphid) for g in graphs},
            "process": {p.processid: query.get_process(p.processid) for p in processes},
            "logs": {p.processid: query.logs(p.processid, 0) for p in processes},
        }
    return found


def seed_workflow(colonyname: str) -> Workflow:
    """The seed's workflow: gen_nums, then sum_nums of its output."""
    workflow = Workflow(colonyname=colonyname)
    workflow.functionspecs.append(func_spec("gen_nums", [], colonyname, EXECUTOR_TYPE))
    sum_nums = func_spec("sum_nums", [], colonyname, EXECUTOR_TYPE)
    sum_nums.conditions.dependencies.append("gen_nums")
    workflow.functionspecs.append(sum_nums)
    return workflow


def run_seed(stack: Stack, colony: ColonyHandle, executor: str) -> ProcessGraph:
    """Submits the seed workflow and runs it to SUCCESS as the executor ``executor``:
    gen_nums logs a line and returns (1, 2), sum_nums gets [1, 2] and returns 3."""
    client = stack.client
    graph = client.submit_workflow(seed_workflow(colony.name), colony.owner_prvkey)
    gen_nums = client.assign(colony.name, 10, executor)
    client.add_log(gen_nums.processid, "generating", executor)
    client.close(gen_nums.processid, [1, 2], executor)
    sum_nums = client.assign(colony.name, 10, executor)
    assert sum_nums.input == [1, 2]
    client.close(sum_nums.processid, [3], executor)
    return graph
