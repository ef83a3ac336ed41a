"""What the web UI shows, read as one identity: the person running ``colonies ui``.

Every read goes through the same signed, membership-checked paths as the CLI, signed with
that person's key (:class:`Identity`):

- listings, stats and logs: the read model's queries (:class:`QueryClient`);
- a graph and its executors: the engine's commands (``get_processgraph``,
  ``list_executors``), and the re-run of a failed graph (``rerun_processgraph``);
- a graph's history (timeline, node details at a moment, audit): the client's
  ``history``, only after ``get_processgraph`` has said the caller is a member of the
  graph's colony, so a page never shows a graph its user could not get from the CLI.

Failures are :class:`ColoniesError` (``.status``: 403 not a member, 404 no such graph,
409 a graph that did not fail cannot be re-run...) and :class:`ColoniesConnectionError`
(NATS, the engine or the projector unreachable); the server turns them into pages.

Timelines (:mod:`colonies_es.ui.timeline`) are kept for the few graphs viewed last and
extended with the events that followed, so opening a graph again, or following a running
one, replays only what is new; a direct get of the graph's last message tells whether
there is anything new before its history is read again.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
import nats.errors
from eventsourcing.persistence import OperationalError
from nats.aio.client import Client as NATS

from colonies_es.client import AsyncColonies, ColoniesConnectionError, ColoniesError
from colonies_es.client.queries import QueryClient
from colonies_es.debug import debug_report
from colonies_es.models import ProcessGraph, Statistics, to_dict
from colonies_es.projections.audit import Authorities, verify_graph
from colonies_es.projections.history import HistoryEntry, graph_subject, open_log
from colonies_es.projections.timetravel import Nth, ReplayError, state_at
from colonies_es.settings import NatsAccess, SettingsError
from colonies_es.states import ProcessState
from colonies_es.ui.timeline import TimelineBuilder, moment_index

__all__ = ["PAGE_SIZE", "SCAN_LIMIT", "Identity", "Reader"]

log = logging.getLogger("colonies.ui")

PAGE_SIZE = 25
"""Graphs per page of the graph list."""
SCAN_LIMIT = 500
"""The newest graphs (and processes) a search looks through."""
RECENT = 10
"""Graphs on the overview."""
_TIMELINES_KEPT = 8
_FOLLOW_SETTLE = 0.2
"""Seconds a follower waits after an event for more before it reads them all at once."""

STATE_FILTERS = {
    "waiting": ProcessState.WAITING,
    "running": ProcessState.RUNNING,
    "successful": ProcessState.SUCCESS,
    "failed": ProcessState.FAILED,
}
"""The graph list's filters, as the CLI's psw, ps, pss and psf."""


@dataclass(frozen=True)
class Timeline:
    """A graph's timeline at one moment: its JSON (:meth:`TimelineBuilder.to_json`) and
    the history entries it was built from."""

    data: dict[str, Any]
    entries: list[HistoryEntry]


@dataclass(frozen=True)
class Identity:
    """How to reach NATS (servers, this client's NATS credential, TLS) and who reads:
    the key, the default colony, the log's seal key and the two ids the audit needs
    (empty when unknown)."""

    nats: NatsAccess
    prvkey: str
    colonyname: str
    seal_key: str | None = None
    engine_id: str = ""
    server_id: str = ""


class KeyedLocks:
    """One asyncio lock per key, kept only while someone holds or waits for it (so a
    long-running UI keeps no lock per graph ever viewed)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            users = self._locks[key][1] - 1
            if users:
                self._locks[key] = (lock, users)
            else:
                del self._locks[key]

    def __len__(self) -> int:
        return len(self._locks)


class Reader:
    """The UI's reads and its one command, as :class:`Identity` (module docstring).

    Use from one event loop; :meth:`close` when done.
    """

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        access = identity.nats
        self.client = AsyncColonies(
            servers=access.servers, nkey_file=access.nkey_file, tls_ca_file=access.tls_ca_file
        )
        self.queries = QueryClient(
            identity.prvkey,
            servers=access.servers,
            nkey_file=access.nkey_file,
            tls_ca_file=access.tls_ca_file,
        )
        self._nc: NATS | None = None
        self._timelines: OrderedDict[str, TimelineBuilder] = OrderedDict()
        self._refreshing = KeyedLocks()
        self._warming: set[asyncio.Task[None]] = set()
        """Timelines being built ahead of the page's request (:meth:`warm`)."""

    # ------------------------------------------------------------------ colony pages

    async def overview(self, colonyname: str) -> dict[str, Any]:
        """The colony's counts by state, its newest graphs and its executors, each with
        its last activity: the latest of when it was last heard from and when it last
        started or ended one of the colony's newest :data:`SCAN_LIMIT` processes."""
        stats: Statistics = await self._query(self.queries.stats, colonyname)
        recent = await self._query(self.queries.list_graphs, colonyname, RECENT)
        processes = await self._query(self.queries.list_processes, colonyname, SCAN_LIMIT)
        executors = await self.client.list_executors(colonyname, self.identity.prvkey)
        active: dict[str, datetime] = {}
        for process in processes:
            moments = [m for m in (process.starttime, process.endtime) if m is not None]
            if process.assignedexecutorid and moments:
                latest = max([*moments, active.get(process.assignedexecutorid, max(moments))])
                active[process.assignedexecutorid] = latest
        rows = []
        for executor in executors:
            moments = [
                m for m in (executor.lastheardfromtime, active.get(executor.executorid)) if m
            ]
            row = to_dict(executor)
            row["lastactivity"] = max(moments).isoformat() if moments else None
            rows.append(row)
        return {
            "colonyname": colonyname,
            "stats": to_dict(stats),
            "graphs": [_graph_row(graph) for graph in recent],
            "executors": rows,
        }

    async def check_member(self, colonyname: str) -> None:
        """Raises ColoniesError(403) unless the caller is a member of the colony (one
        query: its stats)."""
        await self._query(self.queries.stats, colonyname)

    async def graph_list(
        self, colonyname: str, state: str = "", search: str = "", page: int = 0
    ) -> dict[str, Any]:
        """One page of the colony's graphs, newest first: only those in ``state`` (a key
        of :data:`STATE_FILTERS`, empty for all) whose id starts with ``search`` or that
        have a process whose node name contains it. Raises ColoniesError(400) for an
        unknown state."""
        if state and state not in STATE_FILTERS:
            raise ColoniesError(400, f"unknown state {state!r}: {', '.join(STATE_FILTERS)}")
        code = STATE_FILTERS.get(state)
        page = max(page, 0)
        search = search.strip().lower()
        wanted = SCAN_LIMIT if search else min((page + 1) * PAGE_SIZE + 1, SCAN_LIMIT)
        graphs: list[ProcessGraph] = await self._query(
            self.queries.list_graphs, colonyname, wanted, code
        )
        if search:
            named = await self._graphs_with_node(colonyname, search)
            graphs = [
                g
                for g in graphs
                if g.processgraphid.startswith(search) or g.processgraphid in named
            ]
        shown = graphs[page * PAGE_SIZE : (page + 1) * PAGE_SIZE]
        return {
            "colonyname": colonyname,
            "state": state,
            "search": search,
            "page": page,
            "more": len(graphs) > (page + 1) * PAGE_SIZE,
            "scanned": wanted,
            "graphs": [_graph_row(graph) for graph in shown],
        }

    async def _graphs_with_node(self, colonyname: str, search: str) -> set[str]:
        processes = await self._query(self.queries.list_processes, colonyname, SCAN_LIMIT)
        return {p.processgraphid for p in processes if search in p.spec.nodename.lower()}

    # ------------------------------------------------------------------ one graph

    async def graph(self, processgraphid: str) -> ProcessGraph:
        """The graph, from the engine: raises ColoniesError(403) when the caller is not a
        member of its colony, 404 when there is no such graph. Every read of a graph's
        history passes here first."""
        return await self.client.get_processgraph(processgraphid, self.identity.prvkey)

    async def timeline(
        self, processgraphid: str, since: tuple[int, int, int] = (0, 0, 0)
    ) -> Timeline:
        """The graph's timeline, extended with every event recorded so far; its JSON
        holds only what follows ``since`` (counts of events, nodes and edges:
        :meth:`TimelineBuilder.to_json`)."""
        graph = await self.graph(processgraphid)
        async with self._refreshing.hold(processgraphid):
            builder = self._timelines.pop(processgraphid, None) or TimelineBuilder()
            unchanged = builder.graph is not None and (
                await self._last_sequence(graph) == builder.last_sequence
            )
            entries = (
                [] if unchanged else await self._history(processgraphid, builder.last_sequence)
            )
            if not entries and builder.graph is None:
                raise ColoniesError(404, f"process graph {processgraphid} has no events")
            await asyncio.to_thread(builder.extend, entries)  # CPU work: off the event loop
            self._timelines[processgraphid] = builder
            while len(self._timelines) > _TIMELINES_KEPT:
                self._timelines.popitem(last=False)
            # taken under the lock: a later refresh (in a worker thread) does not change it
            return Timeline(builder.to_json(*since), list(builder.entries))

    def warm(self, processgraphid: str) -> None:
        """Starts building the graph's timeline now, while the browser loads the page
        that will ask for it (its request then waits for this one). The task is the
        reader's: :meth:`close` cancels it; a failure is the page's request's to report."""
        task = asyncio.get_running_loop().create_task(self._warm(processgraphid))
        self._warming.add(task)
        task.add_done_callback(self._warming.discard)

    async def _warm(self, processgraphid: str) -> None:
        try:
            await self.timeline(processgraphid)
        except (ColoniesError, ColoniesConnectionError, ReplayError) as error:
            log.info("timeline of %s not built ahead: %s", processgraphid, error)

    async def timeline_json(
        self, processgraphid: str, since: tuple[int, int, int] = (0, 0, 0)
    ) -> dict[str, Any]:
        """:meth:`timeline` as JSON, with the failure's details when the graph FAILED."""
        timeline = await self.timeline(processgraphid, since)
        data = timeline.data
        data["failed"] = []
        if data["state"] == ProcessState.FAILED:
            report = await asyncio.to_thread(debug_report, timeline.entries)
            data["failed"] = [
                {
                    "processid": process.processid,
                    "nodename": process.nodename,
                    "errors": process.errors,
                    "failedat": process.failure.sequence if process.failure else None,
                    "cancelled": process.cancelled,
                }
                for process in report.failed
            ]
        return data

    async def process_at(
        self, processgraphid: str, processid: str, sequence: int | None
    ) -> dict[str, Any]:
        """A process as it was after the last event at or before stream ``sequence``
        (None: now): its spec, input, output, errors, attempts with executors and
        times, and its logs (as they are now). Raises ColoniesError(404) for a process
        the graph did not have then."""
        entries = (await self.timeline(processgraphid)).entries
        index = len(entries) - 1 if sequence is None else moment_index(entries, sequence)
        if index < 0:
            raise ColoniesError(404, f"the graph did not exist yet at sequence {sequence}")
        try:
            graph = await asyncio.to_thread(state_at, entries, Nth(index + 1))
        except ReplayError as error:
            raise ColoniesError(500, str(error)) from None
        node = graph.nodes.get(processid)
        if node is None:
            raise ColoniesError(404, f"no process {processid} in the graph at that moment")
        names = {entry.actor: entry.actorname for entry in entries if entry.actorname}
        logs = await self._query(self.queries.logs, processid, 200)
        return {
            "at": entries[index].sequence,
            "process": to_dict(graph.process_model(processid)),
            "attempts": [
                {
                    "attempt": attempt.attempt,
                    "executorid": attempt.executorid,
                    "executorname": names.get(attempt.executorid, ""),
                    "starttime": attempt.starttime.isoformat(),
                    "endtime": attempt.endtime.isoformat() if attempt.endtime else None,
                    "outcome": attempt.outcome,
                    "errors": list(attempt.errors),
                }
                for attempt in node.attempts
            ],
            "logs": [to_dict(log) for log in logs],
        }

    async def audit(self, processgraphid: str) -> dict[str, Any]:
        """The audit verdict of the graph's events (and its colony's): how many were
        checked, and each that does not verify with why."""
        graph = await self.graph(processgraphid)
        authorities = Authorities(self.identity.engine_id, self.identity.server_id)
        nc = await self._nats()
        report = await verify_graph(
            nc, processgraphid, authorities, graph.colonyname, self.identity.seal_key
        )
        return {
            "checked": report.checked,
            "ok": report.ok,
            "findings": [msgspec.to_builtins(vars(f)) for f in report.findings],
            "authorities": {
                "engine_id": bool(self.identity.engine_id),
                "server_id": bool(self.identity.server_id),
            },
        }

    async def rerun(self, processgraphid: str) -> ProcessGraph:
        """A new graph re-running the FAILED graph from its failure (the engine's
        ``rerun_processgraph``); it records this one as its origin."""
        return await self.client.rerun_processgraph(processgraphid, self.identity.prvkey)

    async def follow(self, processgraphid: str, idle: float) -> AsyncGenerator[int | None, None]:
        """Yields the graph's last stream sequence at once, then each time it gets new
        events (after letting a burst settle), and None after ``idle`` seconds without
        any; until the caller stops iterating. Checks membership first."""
        graph = await self.graph(processgraphid)
        nc = await self._nats()
        subject = graph_subject(graph.colonyname, processgraphid)
        changed = asyncio.Event()

        async def notify(_msg: Any) -> None:
            changed.set()

        subscription = await nc.subscribe(subject, cb=notify)
        try:
            changed.set()  # events recorded before the subscription: read them once
            while True:
                try:
                    await asyncio.wait_for(changed.wait(), idle)
                except TimeoutError:
                    yield None
                    continue
                await asyncio.sleep(_FOLLOW_SETTLE)
                changed.clear()
                timeline = await self.timeline(processgraphid)
                yield timeline.entries[-1].sequence
        finally:
            await subscription.unsubscribe()

    # ------------------------------------------------------------------ plumbing

    async def _history(self, processgraphid: str, after: int) -> list[HistoryEntry]:
        entries = await self.client.history(
            processgraphid, self.identity.prvkey, self.identity.seal_key
        )
        return [entry for entry in entries if entry.sequence > after]

    async def _last_sequence(self, graph: ProcessGraph) -> int | None:
        """The stream sequence of the graph's last message (one direct get), so that an
        unchanged graph's history is not read again; None when it cannot be read."""
        subject = graph_subject(graph.colonyname, graph.processgraphid)
        try:
            last = await open_log(await self._nats()).last_message(subject)
        except (OperationalError, ColoniesConnectionError, nats.errors.Error) as error:
            log.warning("cannot read the last event of %s: %s", subject, error)
            return None
        return last.sequence if last is not None else None

    async def _query(self, method: Any, *args: Any) -> Any:
        """A call of the (thread-safe, blocking) query client, off the event loop."""
        return await asyncio.to_thread(method, *args)

    async def _nats(self) -> NATS:
        """The UI's own NATS connection (live updates, audit), opened on first use."""
        if self._nc is not None and not self._nc.is_closed:
            return self._nc
        access = self.identity.nats
        try:
            nc: NATS = await access.connect(
                "colonies-ui", connect_timeout=5, max_reconnect_attempts=-1
            )
        except (OSError, nats.errors.Error, SettingsError) as error:
            raise ColoniesConnectionError(f"cannot reach NATS at {access.url}: {error}") from error
        self._nc = nc
        return nc

    async def close(self) -> None:
        """Stops the timelines being built ahead, closes the connections and the query
        client's thread."""
        for task in list(self._warming):
            task.cancel()
        await asyncio.gather(*self._warming, return_exceptions=True)
        await self.client.disconnect()
        if self._nc is not None:
            await self._nc.close()
        await asyncio.to_thread(self.queries.close)


def _graph_row(graph: ProcessGraph) -> dict[str, Any]:
    """A graph as the lists show it."""
    return {
        "processgraphid": graph.processgraphid,
        "state": graph.state,
        "processes": len(graph.processids),
        "submissiontime": graph.submissiontime.isoformat() if graph.submissiontime else None,
        "endtime": graph.endtime.isoformat() if graph.endtime else None,
    }
