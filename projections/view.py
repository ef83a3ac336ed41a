"""The read model: SQLite tables the queries read, and the projector's position with them.

:class:`ReadModel` is an eventsourcing ``SQLiteTrackingRecorder`` (its ``tracking`` table
holds the position: the stream sequence of the last event applied, under the name of the
engine's application). :meth:`ReadModel.write` stores one batch of row changes *and* the
new position in one SQLite transaction: after a crash the view is exactly as of some
position, never in between, so the projector resumes from there and nothing is missed or
applied twice.

Tables (a row per thing; ``model`` columns hold the JSON of the client-facing model, as
the engine would answer it, so queries return stored bytes without re-encoding):

- ``colonies`` (name, ownerid, removed), ``executors`` (type, name, state), ``users``:
  who may read what.
- ``graphs``: a process graph per row (state, initiator, times, removed, ``seq`` = the
  stream sequence of its submission, which orders listings newest first).
- ``processes``: a process per row (graph, colony, nodename, funcname, executor type,
  state, priority, attempt, retries, assigned executor id and name, times, removed,
  ``seq``/``position`` = when and where in its graph it was created). Input, output,
  errors, parents and children are in ``model``.
- ``logs``: a ``LogAdded`` event per row, keyed by its stream sequence.
- ``aggregates``: the version of each aggregate the rows reflect, so the projector can
  rebuild an aggregate it no longer holds in memory from exactly those events.

Per-colony statistics are counted from ``graphs`` and ``processes`` (indexed by colony,
removed, state), so they can never disagree with the listings.

:class:`Snapshot` answers the queries of :mod:`projections.protocol` inside one read
transaction, with the membership checks: the caller must be the owner, an APPROVED
executor or a user of the colony; removed graphs (and their processes and logs) are
absent. Refusals raise :class:`~projections.protocol.QueryRefused`.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Collection, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from eventsourcing.persistence import Tracking
from eventsourcing.sqlite import SQLiteCursor, SQLiteDatastore, SQLiteTrackingRecorder

from colonies_es.models import Log, Statistics, encode
from colonies_es.projections.protocol import QueryRefused
from colonies_es.states import ExecutorState, ProcessState

__all__ = [
    "CHECKPOINT_AFTER_ROWS",
    "UPSTREAM",
    "WRITER_THREAD",
    "ColonyRow",
    "ExecutorRow",
    "GraphRow",
    "LogRow",
    "ProcessRow",
    "ReadModel",
    "Snapshot",
    "UserRow",
    "ViewChanges",
    "open_view",
]

log = logging.getLogger("colonies.projector")

UPSTREAM = "colonies"
"""The name the position is tracked under: the engine's application (``ColoniesApp.name``),
whose log the view follows."""


class ColonyRow(NamedTuple):
    name: str
    ownerid: str
    removed: bool


class ExecutorRow(NamedTuple):
    colonyname: str
    executorid: str
    executorname: str
    executortype: str
    state: int


class UserRow(NamedTuple):
    colonyname: str
    userid: str
    username: str


class GraphRow(NamedTuple):
    processgraphid: str
    colonyname: str
    seq: int
    """Stream sequence of its submission (ignored when the row exists)."""
    state: int
    initiatorid: str
    initiatorname: str
    submissiontime: str | None
    starttime: str | None
    endtime: str | None
    removed: bool
    model: bytes


class ProcessRow(NamedTuple):
    processid: str
    processgraphid: str
    colonyname: str
    seq: int
    """Stream sequence of the event that created it (ignored when the row exists)."""
    position: int
    """Its index in the graph's processes (ignored when the row exists)."""
    nodename: str
    funcname: str
    executortype: str
    state: int
    priority: int
    attempt: int
    retries: int
    assignedexecutorid: str
    submissiontime: str | None
    starttime: str | None
    endtime: str | None
    removed: bool
    model: bytes
    assignedexecutorname: str | None
    """The executor's name when this batch assigned the process to its current
    executor; None keeps the stored name (cleared when ``assignedexecutorid`` is)."""


class LogRow(NamedTuple):
    seq: int
    processid: str
    processgraphid: str
    colonyname: str
    executorname: str
    message: str
    timestamp: int


@dataclass
class ViewChanges:
    """The rows one batch of events changed."""

    colonies: list[ColonyRow] = field(default_factory=list)
    members: dict[str, tuple[list[ExecutorRow], list[UserRow]]] = field(default_factory=dict)
    """Colony name -> all its executors and users now (they replace the stored ones)."""
    graphs: list[GraphRow] = field(default_factory=list)
    processes: list[ProcessRow] = field(default_factory=list)
    logs: list[LogRow] = field(default_factory=list)
    versions: list[tuple[str, int]] = field(default_factory=list)
    """(aggregate id, version) of every aggregate whose rows are written."""


_TABLES = [
    """CREATE TABLE IF NOT EXISTS colonies (
        name TEXT PRIMARY KEY, ownerid TEXT NOT NULL, removed INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS executors (
        colonyname TEXT NOT NULL, executorid TEXT NOT NULL, executorname TEXT NOT NULL,
        executortype TEXT NOT NULL, state INTEGER NOT NULL,
        PRIMARY KEY (colonyname, executorid)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS users (
        colonyname TEXT NOT NULL, userid TEXT NOT NULL, username TEXT NOT NULL,
        PRIMARY KEY (colonyname, userid)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS graphs (
        processgraphid TEXT PRIMARY KEY, colonyname TEXT NOT NULL, seq INTEGER NOT NULL,
        state INTEGER NOT NULL, initiatorid TEXT NOT NULL, initiatorname TEXT NOT NULL,
        submissiontime TEXT, starttime TEXT, endtime TEXT, removed INTEGER NOT NULL,
        model BLOB NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS graphs_listed ON graphs (colonyname, removed, seq)",
    "CREATE INDEX IF NOT EXISTS graphs_by_state ON graphs (colonyname, removed, state, seq)",
    """CREATE TABLE IF NOT EXISTS processes (
        processid TEXT PRIMARY KEY, processgraphid TEXT NOT NULL, colonyname TEXT NOT NULL,
        seq INTEGER NOT NULL, position INTEGER NOT NULL, nodename TEXT NOT NULL,
        funcname TEXT NOT NULL, executortype TEXT NOT NULL, state INTEGER NOT NULL,
        priority INTEGER NOT NULL, attempt INTEGER NOT NULL, retries INTEGER NOT NULL,
        assignedexecutorid TEXT NOT NULL, assignedexecutorname TEXT NOT NULL,
        submissiontime TEXT, starttime TEXT, endtime TEXT, removed INTEGER NOT NULL,
        model BLOB NOT NULL)""",
    """CREATE INDEX IF NOT EXISTS processes_listed
        ON processes (colonyname, removed, seq, position)""",
    """CREATE INDEX IF NOT EXISTS processes_by_state
        ON processes (colonyname, removed, state, seq, position)""",
    "CREATE INDEX IF NOT EXISTS processes_of_graph ON processes (processgraphid, position)",
    """CREATE TABLE IF NOT EXISTS logs (
        seq INTEGER PRIMARY KEY, processid TEXT NOT NULL, processgraphid TEXT NOT NULL,
        colonyname TEXT NOT NULL, executorname TEXT NOT NULL, message TEXT NOT NULL,
        timestamp INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS logs_of_process ON logs (processid, seq)",
    """CREATE TABLE IF NOT EXISTS aggregates (
        aggregate_id TEXT PRIMARY KEY, version INTEGER NOT NULL) WITHOUT ROWID""",
]

_UPSERT_COLONY = """INSERT INTO colonies VALUES (?, ?, ?)
    ON CONFLICT (name) DO UPDATE SET ownerid = excluded.ownerid, removed = excluded.removed"""

_UPSERT_GRAPH = """INSERT INTO graphs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (processgraphid) DO UPDATE SET
        state = excluded.state, starttime = excluded.starttime, endtime = excluded.endtime,
        removed = excluded.removed, model = excluded.model"""

_UPSERT_PROCESS = """INSERT INTO processes VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9,
        ?10, ?11, ?12, ?13, COALESCE(?19, ''), ?14, ?15, ?16, ?17, ?18)
    ON CONFLICT (processid) DO UPDATE SET
        state = excluded.state, attempt = excluded.attempt, retries = excluded.retries,
        assignedexecutorid = excluded.assignedexecutorid,
        assignedexecutorname = CASE WHEN excluded.assignedexecutorid = ''
            THEN '' ELSE COALESCE(?19, processes.assignedexecutorname) END,
        starttime = excluded.starttime, endtime = excluded.endtime,
        removed = excluded.removed, model = excluded.model"""
"""A :class:`ProcessRow` (parameters numbered in its field order): the executor's name
kept while the process has an assigned executor, set by the batch that assigned it
(``?19``), cleared with the assignment."""

_UPSERT_VERSION = """INSERT INTO aggregates VALUES (?, ?)
    ON CONFLICT (aggregate_id) DO UPDATE SET version = excluded.version"""

WRITER_CACHE_KIB = 16_384
"""The projector's connection keeps up to this many KiB of pages (SQLite's default is
2,000): a batch of a log of many small graphs touches pages all over the tables'
random-id indexes, and a bigger cache writes fewer of them out before the commit (a
rebuild of 20,000 small workflows: about 13 -> 11 us of SQLite CPU per event)."""

CHECKPOINT_AFTER_ROWS = 1_000
"""Rows written between two checkpoints of the WAL into the database file (about what
SQLite's own ``wal_autocheckpoint`` of 1,000 pages amounts to for a live view; a
rebuild's commits of thousands of rows each ask for one)."""

WRITER_THREAD = "colonies-view-writer"
"""The name of the thread that commits the view's writes (:meth:`ReadModel.start_write`)."""

_IDS_PER_QUERY = 500
"""Ids in one ``IN (...)`` of :meth:`ReadModel.versions_of` (SQLite allows 32,766
parameters)."""


def open_view(path: str | Path) -> ReadModel:
    """The read model in the SQLite file ``path`` (created with its tables if missing)."""
    view = ReadModel(SQLiteDatastore(str(path), originator_id_type="text"))
    view.create_table()
    return view


class ReadModel(SQLiteTrackingRecorder):
    """The view's tables and its position, written together.

    Queries read through the datastore's pool (:meth:`snapshot`, :meth:`position`, any
    thread). The projector's writes go through a connection of their own, in WAL mode
    with ``synchronous=NORMAL`` (a commit is not flushed to disk at once; a power cut
    may lose the last commits, rows and position together, and they are projected
    again), and its look-ups (:meth:`version_of`) through another, to be used from one
    thread at a time.

    A write's statements run in the caller's thread; its COMMIT (SQLite writing the
    transaction's pages to the WAL) runs in a thread of the view's own (started with
    the first write, stopped by :meth:`close`): :meth:`start_write` returns once the
    statements are done, so that the projector applies the next events meanwhile, and
    :meth:`finish_write` waits for the commit. The ``sqlite3`` module runs a COMMIT as
    one call without the interpreter lock, so it takes another core when there is one.
    The same thread checkpoints the WAL into the database file once
    :data:`CHECKPOINT_AFTER_ROWS` rows were written since the last, after the commit is
    reported (SQLite's ``wal_autocheckpoint`` would do it inside the commit that crosses
    1,000 pages: during a rebuild, every commit).
    """

    def __init__(self, datastore: SQLiteDatastore) -> None:
        super().__init__(datastore)
        self._writer: sqlite3.Connection | None = None
        self._lookups: sqlite3.Connection | None = None
        self._checkpointing: sqlite3.Connection | None = None
        """The view's thread's connection for checkpoints."""
        self._commits: ThreadPoolExecutor | None = None
        self._committed: Future[None] | None = None
        """The commit in flight, if any."""
        self._rows_since_checkpoint = 0
        self.checkpoints = 0
        """Checkpoints of the WAL made by the view's thread (failed ones not counted)."""

    def construct_create_table_statements(self) -> list[str]:
        return [*super().construct_create_table_statements(), *_TABLES]

    def position(self) -> int:
        """The stream sequence of the last event the view reflects (0: none yet)."""
        return self.max_tracking_id(UPSTREAM) or 0

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self.datastore.pool.db_name,
            isolation_level=None,  # transactions are begun explicitly
            check_same_thread=False,
            timeout=30,
        )
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    def _connection(self) -> sqlite3.Connection:
        """The connection of :meth:`version_of` and :meth:`versions_of`: it reads what
        is committed."""
        if self._lookups is None:
            self._lookups = self._connect()
        return self._lookups

    def write(self, changes: ViewChanges, position: int) -> None:
        """Stores ``changes`` and moves the position to ``position``, atomically.

        Raises eventsourcing's ``IntegrityError`` (and writes nothing) when ``position``
        is not after the stored one: a batch is never applied twice.
        """
        self.start_write(changes, position)
        self.finish_write()

    def start_write(self, changes: ViewChanges, position: int) -> None:
        """:meth:`write`, returning before the commit (:meth:`finish_write` waits for
        it). Raises what the statements raised (and then nothing is in flight). One
        write at a time: a second start before the first is finished raises
        RuntimeError."""
        if self._committed is not None:
            raise RuntimeError("a write is in flight: finish_write() first")
        if self._writer is None:
            self._writer = self._connect()
            self._writer.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
            self._writer.execute("PRAGMA wal_autocheckpoint=0")  # see _checkpoint
            self._commits = ThreadPoolExecutor(1, thread_name_prefix=WRITER_THREAD)
        assert self._commits is not None
        connection = self._writer
        connection.execute("BEGIN IMMEDIATE")
        try:
            self._write(SQLiteCursor(connection.cursor()), changes, position)
        except BaseException:
            connection.rollback()
            raise
        self._committed = self._commits.submit(self._commit, connection)
        self._rows_since_checkpoint += (
            len(changes.graphs) + len(changes.processes) + len(changes.logs) + len(changes.versions)
        )
        if self._rows_since_checkpoint >= CHECKPOINT_AFTER_ROWS:
            self._rows_since_checkpoint = 0
            self._commits.submit(self._checkpoint)

    def finish_write(self) -> bool:
        """Waits for the commit in flight, if any (True if there was one); raises what it
        raised, and then nothing of that write was stored."""
        committed, self._committed = self._committed, None
        if committed is None:
            return False
        committed.result()
        return True

    @staticmethod
    def _commit(connection: sqlite3.Connection) -> None:
        """The write's COMMIT, in the view's thread (rolled back if it fails)."""
        try:
            connection.commit()
        except BaseException:
            connection.rollback()
            raise

    def _checkpoint(self) -> None:
        """Copies the WAL's committed pages into the database file and flushes it, in
        the view's thread on a connection of its own (the writer's may be in the next
        write's statements), without waiting for readers or the writer. A failure is
        logged: the WAL grows until a checkpoint succeeds; nothing committed is lost."""
        if self._checkpointing is None:
            self._checkpointing = self._connect()
        try:
            self._checkpointing.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as error:
            log.warning("checkpointing the view's WAL failed: %s", error)
        else:
            self.checkpoints += 1

    def _write(self, c: SQLiteCursor, changes: ViewChanges, position: int) -> None:
        c.executemany(_UPSERT_COLONY, changes.colonies)
        for colonyname, (executors, users) in changes.members.items():
            c.execute("DELETE FROM executors WHERE colonyname = ?", (colonyname,))
            c.execute("DELETE FROM users WHERE colonyname = ?", (colonyname,))
            c.executemany("INSERT INTO executors VALUES (?, ?, ?, ?, ?)", executors)
            c.executemany("INSERT INTO users VALUES (?, ?, ?)", users)
        c.executemany(_UPSERT_GRAPH, changes.graphs)
        c.executemany(_UPSERT_PROCESS, changes.processes)
        c.executemany("INSERT INTO logs VALUES (?, ?, ?, ?, ?, ?, ?)", changes.logs)
        c.executemany(_UPSERT_VERSION, changes.versions)
        self._insert_tracking(c, Tracking(UPSTREAM, position))

    def version_of(self, aggregate_id: str) -> int | None:
        """The version of the aggregate the rows reflect, or None if it has no rows."""
        row = (
            self._connection()
            .execute("SELECT version FROM aggregates WHERE aggregate_id = ?", (aggregate_id,))
            .fetchone()
        )
        return None if row is None else int(row[0])

    def aggregate_ids(self) -> Iterator[str]:
        """The ids of every aggregate the view holds rows of."""
        for (aggregate_id,) in self._connection().execute("SELECT aggregate_id FROM aggregates"):
            yield aggregate_id

    def versions_of(self, aggregate_ids: Collection[str]) -> dict[str, int]:
        """:meth:`version_of` of many aggregates in one query: those with rows only."""
        found: dict[str, int] = {}
        ids = list(aggregate_ids)
        connection = self._connection()
        for start in range(0, len(ids), _IDS_PER_QUERY):
            chunk = ids[start : start + _IDS_PER_QUERY]
            marks = ",".join("?" * len(chunk))
            rows = connection.execute(
                f"SELECT aggregate_id, version FROM aggregates WHERE aggregate_id IN ({marks})",
                chunk,
            )
            found.update((aggregate_id, int(version)) for aggregate_id, version in rows)
        return found

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        """A consistent view of the tables (one read transaction) to answer queries from."""
        with self.datastore.transaction(commit=False) as c:
            yield Snapshot(c)

    def close(self) -> None:
        """Waits for the commit in flight (without raising what it raised), stops the
        view's thread and closes the database connections."""
        if self._commits is not None:
            with contextlib.suppress(Exception):
                self.finish_write()
            self._commits.shutdown()
            self._commits = None
        for connection in (self._writer, self._lookups, self._checkpointing):
            if connection is not None:
                connection.close()
        self._writer = self._lookups = self._checkpointing = None
        self.datastore.close()


def _json_array(items: Iterable[bytes]) -> bytes:
    return b"[" + b",".join(items) + b"]"


def _state_filter(state: int | None) -> tuple[str, list[int]]:
    """The SQL condition (and its parameters) of a listing's state: none for all."""
    return ("", []) if state is None or state < 0 else ("AND state = ?", [state])


_COUNTED = {
    int(ProcessState.WAITING): "waiting",
    int(ProcessState.RUNNING): "running",
    int(ProcessState.SUCCESS): "successful",
    int(ProcessState.FAILED): "failed",
}


class Snapshot:
    """The queries, answered from one read transaction as one caller (an id).

    Each method returns the reply's JSON bytes or raises ``QueryRefused``: 404 when the
    colony does not exist (or was removed) or the graph or process does not exist (or
    was removed), 403 when ``caller`` is not a member of the colony.
    """

    def __init__(self, cursor: SQLiteCursor) -> None:
        self._c = cursor

    def _one(self, sql: str, *params: Any) -> sqlite3.Row | None:
        self._c.execute(sql, params)
        row: sqlite3.Row | None = self._c.fetchone()
        return row

    def _all(self, sql: str, *params: Any) -> list[sqlite3.Row]:
        self._c.execute(sql, params)
        rows: list[sqlite3.Row] = self._c.fetchall()
        return rows

    def check_member(self, colonyname: str, caller: str) -> None:
        """Returns if ``caller`` is the owner, an APPROVED executor or a user of the
        colony; raises 404 if the colony does not exist, 403 if it is not a member."""
        colony = self._one("SELECT ownerid, removed FROM colonies WHERE name = ?", colonyname)
        if colony is None or colony["removed"]:
            raise QueryRefused(404, f"colony {colonyname!r} does not exist")
        if caller == colony["ownerid"]:
            return
        member = self._one(
            "SELECT 1 FROM users WHERE colonyname = ? AND userid = ? UNION ALL "
            "SELECT 1 FROM executors WHERE colonyname = ? AND executorid = ? AND state = ?",
            colonyname,
            caller,
            colonyname,
            caller,
            int(ExecutorState.APPROVED),
        )
        if member is None:
            raise QueryRefused(403, f"the caller is not a member of colony {colonyname!r}")

    def get_graph(self, processgraphid: str, caller: str) -> bytes:
        """``GraphView``: the graph, its processes in graph order, the names of their
        assigned executors."""
        graph = self._one(
            "SELECT colonyname, model FROM graphs WHERE processgraphid = ? AND removed = 0",
            processgraphid,
        )
        if graph is None:
            raise QueryRefused(404, f"process graph {processgraphid} does not exist")
        self.check_member(graph["colonyname"], caller)
        processes = self._all(
            "SELECT model, processid, assignedexecutorname FROM processes "
            "WHERE processgraphid = ? ORDER BY position",
            processgraphid,
        )
        names = {row[1]: row[2] for row in processes if row[2]}
        return b'{"graph":%b,"processes":%b,"executornames":%b}' % (
            graph["model"],
            _json_array(row[0] for row in processes),
            encode(names),
        )

    def list_graphs(self, colonyname: str, state: int | None, count: int, caller: str) -> bytes:
        """The colony's graphs (in ``state``, if given), newest first, at most ``count``."""
        self.check_member(colonyname, caller)
        by_state, params = _state_filter(state)
        rows = self._all(
            f"SELECT model FROM graphs WHERE colonyname = ? AND removed = 0 {by_state} "
            "ORDER BY seq DESC LIMIT ?",
            colonyname,
            *params,
            max(count, 0),
        )
        return _json_array(row[0] for row in rows)

    def list_processes(self, colonyname: str, state: int | None, count: int, caller: str) -> bytes:
        """The colony's processes (in ``state``, if given), newest first, at most
        ``count``; processes created together come in reverse graph order."""
        self.check_member(colonyname, caller)
        by_state, params = _state_filter(state)
        rows = self._all(
            f"SELECT model FROM processes WHERE colonyname = ? AND removed = 0 {by_state} "
            "ORDER BY seq DESC, position DESC LIMIT ?",
            colonyname,
            *params,
            max(count, 0),
        )
        return _json_array(row[0] for row in rows)

    def _process_colony(self, processid: str) -> sqlite3.Row:
        row = self._one(
            "SELECT colonyname, model FROM processes WHERE processid = ? AND removed = 0",
            processid,
        )
        if row is None:
            raise QueryRefused(404, f"process {processid} does not exist")
        return row

    def get_process(self, processid: str, caller: str) -> bytes:
        """One ``Process``."""
        row = self._process_colony(processid)
        self.check_member(row["colonyname"], caller)
        model: bytes = row["model"]
        return model

    def stats(self, colonyname: str, caller: str) -> bytes:
        """``Statistics`` of the colony: its executors, and its graphs and processes not
        removed, per state (CANCELLED ones are not counted, as in the engine)."""
        self.check_member(colonyname, caller)
        stats = Statistics(colonies=1)
        executors = self._one("SELECT COUNT(*) FROM executors WHERE colonyname = ?", colonyname)
        stats.executors = int(executors[0]) if executors is not None else 0
        for table, suffix in (("graphs", "workflows"), ("processes", "processes")):
            counts = self._all(
                f"SELECT state, COUNT(*) FROM {table} "
                "WHERE colonyname = ? AND removed = 0 GROUP BY state",
                colonyname,
            )
            for state, number in counts:
                kind = _COUNTED.get(state)
                if kind is not None:
                    setattr(stats, f"{kind}{suffix}", number)
        return encode(stats)

    def logs(self, processid: str, count: int, since: int, caller: str) -> bytes:
        """``[Log, ...]`` of the process with a timestamp after ``since``, oldest first:
        the last ``count`` of them, or all when ``count`` <= 0."""
        self.check_member(self._process_colony(processid)["colonyname"], caller)
        rows = self._all(
            "SELECT processid, colonyname, executorname, message, timestamp FROM logs "
            "WHERE processid = ? AND timestamp > ? ORDER BY seq DESC LIMIT ?",
            processid,
            since,
            count if count > 0 else -1,
        )
        return encode(
            [
                Log(
                    processid=row[0],
                    colonyname=row[1],
                    executorname=row[2],
                    message=row[3],
                    timestamp=row[4],
                )
                for row in reversed(rows)
            ]
        )
