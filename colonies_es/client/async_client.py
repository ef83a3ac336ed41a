"""AsyncColonies: every operation of the pycolonies client, as a coroutine, over NATS.

Names, argument order and results follow pycolonies (CLIENT_API.md): the signing key is
the last required positional argument, and results are the models of
:mod:`colonies_es.models`. Each operation is one signed command to the engine
(:class:`~colonies_es.client.connection.Connection`); ``assign``, ``wait`` and
``find_process`` combine commands with NATS subscriptions on the client side. The
listings (``get_processgraphs``, ``list_processes``) are queries of the projectors' read
model instead (:mod:`~colonies_es.client.read_side`), from a view that has applied the log
at least up to its last event at the time of the call: a listing sees every write this
client saw acknowledged before it, without the engine holding ended graphs in memory.

Every operation may raise :class:`ColoniesError` (the engine refused: ``.status`` and
message) or :class:`ColoniesConnectionError` (NATS unreachable, no engine, no reply in
time); listings also when no projector answers, and ``ColoniesError`` 408 when the
projector's view did not catch up in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import astuple, dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple, Self, TypeVar

import msgspec

from colonies_es import protocol as p
from colonies_es.client.connection import ATTEMPTS, Connection, Prepared
from colonies_es.client.errors import ColoniesError, NoEngineAnswering
from colonies_es.client.read_side import ReadSide
from colonies_es.models import (
    Attribute,
    Colony,
    Executor,
    FuncSpec,
    Log,
    ModelValidationError,
    Process,
    ProcessGraph,
    Statistics,
    Workflow,
    decode,
    from_dict,
)
from colonies_es.projections.protocol import ListGraphs, ListProcesses
from colonies_es.settings import NatsAccess
from colonies_es.states import ProcessState

if TYPE_CHECKING:
    from colonies_es.projections.graph_events import FetchedEvents
    from colonies_es.projections.history import HistoryEntry
    from colonies_es.projections.timetravel import GraphState

__all__ = [
    "ENDED_STATES",
    "AsyncColonies",
    "ChildClose",
    "CloseOrder",
    "SealedClaim",
    "server_urls",
]

T = TypeVar("T")

ENDED_STATES = frozenset({ProcessState.SUCCESS, ProcessState.FAILED, ProcessState.CANCELLED})
"""Process states ``wait`` returns on."""


SEALED_CLAIM_FRESH = 0.5
"""Seconds a claim sealed ahead (:meth:`AsyncColonies.seal_held_claim`) may be carried
by a close: an engine reads the log's end before deciding a command signed more than a
second ago (it may be a retry, ``RETRY_AGE``), which a fresher claim spares it."""


@dataclass(frozen=True)
class SealedClaim:
    """A held claim sealed ahead of the close that will carry it
    (:meth:`AsyncColonies.seal_held_claim`)."""

    colonyname: str
    wait: float
    """Seconds the engine may hold it."""
    alive: str
    """Where the engine asks whether it still waits (answered "1" only while a close
    carrying it awaits its reply)."""
    data: bytes
    """The sealed command."""
    sealed_at: float
    """``time.monotonic()`` when it was sealed."""


class CloseOrder(NamedTuple):
    """What a function's child needs to send its process's close itself (it crosses the
    pipe with each job: a tuple of plain values, a tenth of a dataclass's pickling cost;
    :mod:`colonies_es.child_close`): where to, with which reply subject and headers, the
    claim the close carries, and until when that claim is fresh enough
    (``time.monotonic()``, the clock every process of the machine shares) to be sent;
    ``access``: the servers, credential file and CA file of the executor's connection
    (:class:`~colonies_es.settings.NatsAccess`'s fields)."""

    subject: str
    reply: str
    headers: dict[str, str]
    processid: str
    attempt: int
    claim: bytes
    fresh_until: float
    access: tuple[tuple[str, ...], str, str]


class ChildClose:
    """The executor's side of a close its function's child sends itself
    (:meth:`AsyncColonies.prepare_child_close`)."""

    def __init__(
        self,
        order: CloseOrder,
        sealed: SealedClaim,
        prepared: Prepared,
        awaiting: contextlib.ExitStack,
    ) -> None:
        self.order = order
        """What the child is handed."""
        self.sealed: SealedClaim | None = sealed
        """The claim inside, while no close carrying it may have been sent."""
        self.prepared: Prepared | None = prepared
        """Its reply's reservation, until awaited or dropped."""
        self.awaiting = awaiting
        self.colonyname = sealed.colonyname
        self.wait = sealed.wait


_BEHIND_PAUSE = 0.2
"""Seconds ``wait`` and ``assign`` pause before asking again when an engine answered 503:
it has not applied the log as far as this client has seen yet (it lost NATS for a moment)."""


def server_urls(host: str, port: int, tls: bool, servers: Sequence[str] | None) -> list[str]:
    """The NATS URLs to use: ``servers`` when given, else ``nats://host:port``
    (``tls://`` when ``tls``)."""
    if servers:
        return list(servers)
    return [f"{'tls' if tls else 'nats'}://{host}:{port}"]


class AsyncColonies:
    """The asyncio colonies client.

    It connects on the first call (or on :meth:`connect`) and keeps one NATS connection,
    which reconnects by itself if the server goes away. Use it as ``async with
    AsyncColonies(...) as client:`` or call :meth:`disconnect` when done. One instance
    serves any number of concurrent calls, within one event loop.
    """

    def __init__(
        self,
        host: str = "localhost",
        port: int = 4222,
        tls: bool = False,
        *,
        servers: Sequence[str] | None = None,
        timeout: float = 10.0,
        nkey_file: str = "",
        tls_ca_file: str = "",
        affinity: bool = True,
    ) -> None:
        """Talk to the engine through NATS at ``host:port`` (or the URLs in ``servers``).

        ``timeout`` (seconds) bounds connecting and every command's reply; ``assign``
        and ``wait`` take their own waiting time on top. ``nkey_file`` is the caller's
        NATS credential (a file with an nkey seed) where NATS authorization is on;
        ``tls_ca_file`` the CA (PEM) the server's TLS certificate must chain to.
        With ``affinity`` (the default) commands go to the engine replica that holds
        what the client acts on (protocol.py, "Replica affinity"); without, each goes
        to whichever replica of the queue group takes it (to spread one client's load).
        """
        urls = server_urls(host, port, tls, servers)
        access = NatsAccess(tuple(urls), nkey_file, tls_ca_file)
        self._connection = Connection(urls, timeout, access, affinity=affinity)
        self._engines_find = True
        """False once the engines turned out to be older than ``find_process``."""
        self._read_side = ReadSide(self._connection)

    @property
    def url(self) -> str:
        """The NATS server address(es) this client talks to."""
        return self._connection.url

    @property
    def replica(self) -> str | None:
        """The engine replica this client's next command goes to (``Colonies-Replica``);
        None: whichever replica of the queue group takes it."""
        return self._connection.affinity.preferred

    async def connect(self) -> None:
        """Connect now rather than on the first call; raises ColoniesConnectionError."""
        await self._connection.nats()

    async def disconnect(self) -> None:
        """Close the connection. A later call connects again."""
        await self._connection.close()

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.disconnect()

    async def _call(
        self, op: str, body: msgspec.Struct, prvkey: str, result: type[T], held: float = 0.0
    ) -> T:
        """Send the command and decode its reply as ``result`` (``held``: seconds the
        engine may hold it, see :meth:`Connection.command`)."""
        data = await self._connection.command(op, body, prvkey, held)
        return self._decoded(op, data, result)

    @staticmethod
    def _decoded(op: str, data: bytes, result: type[T]) -> T:
        """``data`` (the reply to ``op``) decoded as ``result``; 500 if it is not one."""
        try:
            return decode(data, result)
        except ModelValidationError as error:
            raise ColoniesError(500, f"unreadable reply to {op!r}: {error}") from error

    async def _send(self, op: str, body: msgspec.Struct, prvkey: str) -> None:
        """Send the command; its reply carries nothing."""
        await self._connection.command(op, body, prvkey)

    # ------------------------------------------------------------------ colonies

    async def add_colony(self, colony: Colony | Mapping[str, Any], prvkey: str) -> Colony:
        """Create a colony (``{"colonyid": ..., "name": ...}``); server owner only."""
        return await self._call(
            "add_colony", p.AddColony(colony=_model(colony, Colony)), prvkey, Colony
        )

    async def del_colony(self, colonyname: str, prvkey: str) -> None:
        """Delete a colony; server owner only."""
        await self._send("del_colony", p.ColonyRef(colonyname=colonyname), prvkey)

    async def list_colonies(self, prvkey: str) -> list[Colony]:
        """Every colony; server owner only."""
        return await self._call("list_colonies", p.Empty(), prvkey, list[Colony])

    async def get_colony(self, colonyname: str, prvkey: str) -> Colony:
        """The colony named ``colonyname``."""
        return await self._call("get_colony", p.ColonyRef(colonyname=colonyname), prvkey, Colony)

    async def stats(self, colonyname: str, prvkey: str) -> Statistics:
        """Counts of the colony's processes and workflows per state."""
        return await self._call("stats", p.ColonyRef(colonyname=colonyname), prvkey, Statistics)

    # ------------------------------------------------------------------ executors and users

    async def add_executor(self, executor: Executor | Mapping[str, Any], prvkey: str) -> Executor:
        """Register an executor (``executorid``, ``executortype``, ``executorname``,
        ``colonyname``) as PENDING; colony owner only."""
        body = p.AddExecutor(executor=_model(executor, Executor))
        return await self._call("add_executor", body, prvkey, Executor)

    async def approve_executor(self, colonyname: str, executorname: str, prvkey: str) -> None:
        """Let the executor take work; colony owner only."""
        await self._send("approve_executor", _executor_ref(colonyname, executorname), prvkey)

    async def reject_executor(self, colonyname: str, executorname: str, prvkey: str) -> None:
        """Stop the executor from taking work; colony owner only."""
        await self._send("reject_executor", _executor_ref(colonyname, executorname), prvkey)

    async def remove_executor(self, colonyname: str, executorname: str, prvkey: str) -> None:
        """Unregister the executor; colony owner only."""
        await self._send("remove_executor", _executor_ref(colonyname, executorname), prvkey)

    async def list_executors(self, colonyname: str, prvkey: str) -> list[Executor]:
        """The colony's executors."""
        body = p.ColonyRef(colonyname=colonyname)
        return await self._call("list_executors", body, prvkey, list[Executor])

    async def get_executor(self, colonyname: str, executorname: str, prvkey: str) -> Executor:
        """The executor named ``executorname`` in the colony."""
        body = _executor_ref(colonyname, executorname)
        return await self._call("get_executor", body, prvkey, Executor)

    async def whoami(self, colonyname: str, prvkey: str) -> Executor:
        """The executor record of the key's owner in the colony (404 if it has none)."""
        return await self._call("whoami", p.ColonyRef(colonyname=colonyname), prvkey, Executor)

    async def add_user(self, colonyname: str, userid: str, username: str, prvkey: str) -> None:
        """Make the identity ``userid`` a member of the colony (it may submit, read and
        list) under ``username``; colony owner only."""
        body = p.AddUser(colonyname=colonyname, userid=userid, username=username)
        await self._send("add_user", body, prvkey)

    # ------------------------------------------------------------------ processes

    async def submit_func_spec(self, spec: FuncSpec, prvkey: str) -> Process:
        """Submit one function call; it is ready at once. Returns the WAITING process."""
        return await self._call("submit_func_spec", p.SubmitFuncSpec(spec=spec), prvkey, Process)

    async def claim(self, colonyname: str, prvkey: str) -> Process:
        """Take the best ready process the caller (an executor) may run, now.

        Raises ColoniesError 404 when there is none. Executors normally call
        :meth:`assign`, which lets the engine hold the claim until work comes.
        """
        return await self._call("claim", p.Claim(colonyname=colonyname), prvkey, Process)

    async def assign(self, colonyname: str, timeout: float, prvkey: str) -> Process:  # noqa: ASYNC109
        """Wait up to ``timeout`` seconds for a process the caller may run; return it
        RUNNING and assigned to the caller.

        The caller must be an approved executor of the colony. The wait happens in the
        engine: each claim is held there up to :data:`~colonies_es.protocol.MAX_CLAIM_WAIT`
        seconds and answered with the first process of the caller's type that becomes
        ready (protocol.py, "Work"); a claim this call abandons (cancelled, Ctrl-C) is
        given nothing. Raises ColoniesError 404 ``"no process available within <timeout>
        s"`` when nothing came in time, as ColonyOS does.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            wait = min(max(deadline - loop.time(), 0.0), p.MAX_CLAIM_WAIT)
            try:
                async with self._connection.claiming() as alive:
                    body = p.Claim(colonyname=colonyname, wait=wait, alive=alive)
                    return await self._call("claim", body, prvkey, Process, held=wait)
            except ColoniesError as error:
                if error.status == 503 and loop.time() < deadline:  # an engine behind the log
                    await asyncio.sleep(_BEHIND_PAUSE)
                    continue
                if error.status != 404 or not error.message.startswith(p.NOTHING_READY):
                    raise
            if loop.time() >= deadline:
                raise ColoniesError(404, f"no process available within {timeout} s")

    async def close(
        self, processid: str, output: Sequence[Any], prvkey: str, attempt: int = 0
    ) -> None:
        """Finish the process with ``output`` (SUCCESS); assigned executor only. With
        ``attempt`` (:func:`~colonies_es.models.attempt_of`) it is refused (403) once that
        attempt is over, even if the same executor holds the next one."""
        body = p.CloseProcess(processid=processid, out=list(output), attempt=attempt)
        await self._send("close", body, prvkey)

    async def close_and_claim(
        self,
        processid: str,
        output: Sequence[Any],
        prvkey: str,
        colonyname: str,
        attempt: int = 0,
        wait: float = 0.0,
    ) -> Process | None:
        """:meth:`close`, and in the same round trip :meth:`claim` the next process the
        caller may run in ``colonyname``: it is returned assigned to the caller, or None
        when nothing is ready (then :meth:`assign` waits for work). The claim is decided
        only once the close succeeded; a refused close raises as :meth:`close` does.

        With ``wait`` (seconds, at most :data:`~colonies_es.protocol.MAX_CLAIM_WAIT`)
        the engine holds the claim until work comes, as :meth:`assign` does: the reply,
        and so this call, then comes when a process is assigned to the caller or the
        wait is over (None). An idle executor sends one request per process that way."""
        return (
            await self.close_and_next(processid, output, prvkey, colonyname, attempt, wait)
        ).next

    async def close_and_next(
        self,
        processid: str,
        output: Sequence[Any],
        prvkey: str,
        colonyname: str,
        attempt: int = 0,
        wait: float = 0.0,
        prefetch: bool = False,
        sealed: SealedClaim | None = None,
    ) -> p.NextProcess:
        """:meth:`close_and_claim`, answered with the whole
        :class:`~colonies_es.protocol.NextProcess` (the next process and the hint
        ``more``). With ``prefetch`` the claim is a prefetch claim
        (:meth:`prefetch_claim`: the caller is busy; ``wait`` is then ignored).

        ``sealed``: the held claim to carry, sealed ahead by :meth:`seal_held_claim`
        with the same ``prvkey``; used once, and only when it is the claim this call
        would make (same colony and ``wait``) and still fresh, else a new one is sealed.
        """
        wait = 0.0 if prefetch else min(max(wait, 0.0), p.MAX_CLAIM_WAIT)
        if wait == 0:
            body = p.Claim(colonyname=colonyname, prefetch=prefetch)
            claim = self._connection.seal("claim", body, prvkey)
            close = p.CloseProcess(
                processid=processid, out=list(output), attempt=attempt, claim=claim
            )
            return await self._call("close", close, prvkey, p.NextProcess)
        if sealed is None or not self._fits(sealed, colonyname, wait):
            sealed = await self.seal_held_claim(colonyname, wait, prvkey)
        budget = wait + self._connection.timeout / ATTEMPTS  # the close's, then the hold
        with self._connection.awaiting(sealed.alive):
            close = p.CloseProcess(
                processid=processid, out=list(output), attempt=attempt, claim=sealed.data
            )
            return await self._call("close", close, prvkey, p.NextProcess, held=budget)

    async def prepare_child_close(
        self,
        processid: str,
        prvkey: str,
        colonyname: str,
        attempt: int,
        wait: float,
        sealed: SealedClaim | None = None,
    ) -> ChildClose:
        """Everything a function's child needs to send the close of ``processid`` itself
        (:class:`ChildClose`; its :attr:`~ChildClose.order` crosses the pipe), carrying a
        held claim as :meth:`close_and_next` with ``wait`` (``sealed`` if it fits, else
        one sealed now) whose reply comes to this client: :meth:`finish_child_close`
        awaits it, and must follow. From now on the claim's ``alive`` subject is
        answered "1" (until :meth:`finish_child_close`)."""
        wait = min(max(wait, 0.0), p.MAX_CLAIM_WAIT)
        if sealed is None or not self._fits(sealed, colonyname, wait):
            sealed = await self.seal_held_claim(colonyname, wait, prvkey)
        budget = wait + self._connection.timeout / ATTEMPTS  # the close's, then the hold
        prepared = await self._connection.prepare("close", held=budget)
        awaiting = contextlib.ExitStack()
        awaiting.enter_context(self._connection.awaiting(sealed.alive))
        order = CloseOrder(
            subject=prepared.subject,
            reply=prepared.reply,
            headers=prepared.headers,
            processid=processid,
            attempt=attempt,
            claim=sealed.data,
            fresh_until=sealed.sealed_at + SEALED_CLAIM_FRESH,
            access=astuple(self._connection.access),
        )
        return ChildClose(order, sealed, prepared, awaiting)

    async def finish_child_close(
        self, handle: ChildClose, output: Sequence[Any], prvkey: str, sent: bytes | None
    ) -> p.NextProcess:
        """The reply to the close ``handle`` prepared (:meth:`prepare_child_close`).

        ``sent``: the close's bytes as the child published them; awaited here, and sent
        again (the same bytes) when no reply comes in time. ``None``: the child did not
        send it; this sends the close now with ``output`` (:meth:`close_and_next`,
        carrying the claim sealed for it, which was never sent). A second call (a
        retried report) closes anew, as :meth:`close_and_next` does. Raises as
        :meth:`close_and_next`."""
        prepared, handle.prepared = handle.prepared, None
        order = handle.order
        if prepared is None or sent is None:
            if prepared is not None:
                self._connection.discard(prepared)
            handle.awaiting.close()
            sealed, handle.sealed = handle.sealed, None
            return await self.close_and_next(
                order.processid,
                output,
                prvkey,
                sealed.colonyname if sealed is not None else handle.colonyname,
                order.attempt,
                handle.wait,
                sealed=sealed,
            )
        handle.sealed = None  # inside the close the child sent: never in another one
        try:
            data = await self._connection.complete(prepared, sent)
        finally:
            handle.awaiting.close()
        return self._decoded("close", data, p.NextProcess)

    async def await_child_close(self, handle: ChildClose, prvkey: str) -> p.NextProcess:
        """The reply to the close ``handle`` prepared, which the child may have sent
        before it died (nothing is sent from here; ColoniesConnectionError when no
        reply comes within the claim's hold and an attempt's time). ``prvkey``: the
        caller's (a subclass may note what it took)."""
        prepared, handle.prepared = handle.prepared, None
        handle.sealed = None
        try:
            if prepared is None:
                return p.NextProcess()
            data = await self._connection.complete(prepared, None)
        finally:
            handle.awaiting.close()
        return self._decoded("close", data, p.NextProcess)

    def drop_child_close(self, handle: ChildClose) -> None:
        """The close ``handle`` prepared was not sent and will not be (or its reply
        cannot bring anything): stop awaiting it."""
        prepared, handle.prepared = handle.prepared, None
        handle.sealed = None
        if prepared is not None:
            self._connection.discard(prepared)
        handle.awaiting.close()

    def _fits(self, sealed: SealedClaim, colonyname: str, wait: float) -> bool:
        """Whether ``sealed`` is the held claim a close would carry now: same colony and
        wait, sealed less than :data:`SEALED_CLAIM_FRESH` seconds ago, and its ``alive``
        subject still answered by this connection."""
        return (
            sealed.colonyname == colonyname
            and sealed.wait == wait
            and time.monotonic() - sealed.sealed_at < SEALED_CLAIM_FRESH
            and self._connection.answers_at(sealed.alive)
        )

    async def seal_held_claim(self, colonyname: str, wait: float, prvkey: str) -> SealedClaim:
        """A claim for the next process the caller may run in ``colonyname``, held up to
        ``wait`` seconds, sealed now for a :meth:`close_and_next` to carry later (its
        ``sealed``): an executor seals it while it waits for work, so that the close
        after its next function needs one signature, not two. Still good for
        :data:`SEALED_CLAIM_FRESH` seconds (then :meth:`close_and_next` seals another)."""
        wait = min(max(wait, 0.0), p.MAX_CLAIM_WAIT)
        alive = await self._connection.alive_subject()
        body = p.Claim(colonyname=colonyname, wait=wait, alive=alive)
        data = self._connection.seal("claim", body, prvkey)
        return SealedClaim(colonyname, wait, alive, data, time.monotonic())

    async def prefetch_claim(self, colonyname: str, prvkey: str) -> p.NextProcess:
        """Claim, now, a process for the caller (an executor) to run once it is done with
        what it runs: the engine assigns one only if no claim it holds for an idle
        executor may take it (protocol.py, "Prefetch"). Returns the
        :class:`~colonies_es.protocol.NextProcess`: the process assigned to the caller
        (RUNNING from now on: its ``maxexectime`` counts), or None, and the hint ``more``."""
        body = p.Claim(colonyname=colonyname, prefetch=True)
        try:
            return await self._call("claim", body, prvkey, p.NextProcess)
        except ColoniesError as error:
            if error.status == 404 and error.message.startswith(p.NOTHING_READY):
                return p.NextProcess()
            raise

    async def fail(
        self, processid: str, errors: Sequence[str], prvkey: str, attempt: int = 0
    ) -> None:
        """Fail the process with ``errors`` (retried if it has retries left); ``attempt``
        as for :meth:`close`."""
        body = p.FailProcess(processid=processid, errors=list(errors), attempt=attempt)
        await self._send("fail", body, prvkey)

    async def set_output(
        self, processid: str, arr: Sequence[Any], prvkey: str, attempt: int = 0
    ) -> None:
        """Record the output of a still RUNNING process; assigned executor only;
        ``attempt`` as for :meth:`close`."""
        body = p.SetOutput(processid=processid, out=list(arr), attempt=attempt)
        await self._send("set_output", body, prvkey)

    async def get_process(self, processid: str, prvkey: str) -> Process:
        """The process as it is now."""
        return await self._call("get_process", p.ProcessRef(processid=processid), prvkey, Process)

    async def list_processes(
        self, colonyname: str, count: int, state: int, prvkey: str
    ) -> list[Process]:
        """Up to ``count`` of the colony's processes in ``state`` (every state when it
        is negative), newest first: from the read model, including every write seen
        before the call."""
        body = ListProcesses(colonyname=colonyname, count=count, state=state)
        return await self._read_side.query("list_processes", body, prvkey, list[Process])

    async def remove_process(self, processid: str, prvkey: str) -> None:
        """Remove the process from listings and gets (its history stays)."""
        await self._send("remove_process", p.ProcessRef(processid=processid), prvkey)

    async def remove_all_processes(self, colonyname: str, prvkey: str, state: int = -1) -> None:
        """Remove the colony's processes, only those in ``state`` unless it is -1."""
        body = p.RemoveAll(colonyname=colonyname, state=None if state == -1 else state)
        await self._send("remove_all_processes", body, prvkey)

    async def wait(self, process: Process | str, timeout: float, prvkey: str) -> Process:  # noqa: ASYNC109
        """Wait up to ``timeout`` seconds for the process (or process id) to end; return
        it as it ended (SUCCESS, FAILED or CANCELLED).

        The engine holds the request until the process ends (``wait_process``, up to
        :data:`~colonies_es.protocol.MAX_CLAIM_WAIT` seconds at a time) and answers with
        it: one round trip, whatever the wait. Raises ColoniesError 408 when it is still
        running after ``timeout`` seconds.
        """
        processid = process if isinstance(process, str) else process.processid
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            wait = min(max(deadline - loop.time(), 0.0), p.MAX_CLAIM_WAIT)
            body = p.WaitProcess(processid=processid, wait=wait)
            try:
                current = await self._call("wait_process", body, prvkey, Process, held=wait)
            except ColoniesError as error:
                # 503: the engine that answered has not applied the log as far as this
                # client has seen yet (it lost NATS for a moment): ask again.
                if error.status != 503 or loop.time() >= deadline:
                    raise
                await asyncio.sleep(_BEHIND_PAUSE)
                continue
            if current.state in ENDED_STATES:
                return current
            if loop.time() >= deadline:
                raise ColoniesError(408, f"process {processid} did not end within {timeout} s")

    async def add_log(self, processid: str, logmsg: str, prvkey: str) -> None:
        """Append a log message to the process; assigned executor only."""
        await self._send("add_log", p.AddLog(processid=processid, message=logmsg), prvkey)

    async def get_process_log(
        self, colonyname: str, processid: str, count: int, since: int, prvkey: str
    ) -> list[Log]:
        """Up to ``count`` log messages of the process written after ``since`` (unix ns)."""
        body = p.GetLogs(colonyname=colonyname, processid=processid, count=count, since=since)
        return await self._call("get_process_log", body, prvkey, list[Log])

    async def add_attribute(self, processid: str, key: str, value: str, prvkey: str) -> Attribute:
        """Attach ``key = value`` to the process; assigned executor only."""
        body = p.AddAttribute(processid=processid, key=key, value=value)
        return await self._call("add_attribute", body, prvkey, Attribute)

    # ------------------------------------------------------------------ workflows

    async def submit_workflow(self, workflow: Workflow, prvkey: str) -> ProcessGraph:
        """Submit a DAG of function calls at once (all or nothing); returns the graph."""
        body = p.SubmitWorkflow(workflow=workflow)
        return await self._call("submit_workflow", body, prvkey, ProcessGraph)

    async def get_processgraph(self, processgraphid: str, prvkey: str) -> ProcessGraph:
        """The process graph as it is now."""
        body = p.GraphRef(processgraphid=processgraphid)
        return await self._call("get_processgraph", body, prvkey, ProcessGraph)

    async def get_processgraphs(
        self, colonyname: str, count: int, prvkey: str, state: int | None = None
    ) -> list[ProcessGraph]:
        """Up to ``count`` of the colony's graphs, only those in ``state`` if given,
        newest first: from the read model, including every write seen before the call."""
        body = ListGraphs(colonyname=colonyname, count=count, state=state)
        return await self._read_side.query("list_graphs", body, prvkey, list[ProcessGraph])

    async def remove_processgraph(self, processgraphid: str, prvkey: str) -> None:
        """Remove the graph and its processes from listings (not RUNNING graphs)."""
        body = p.GraphRef(processgraphid=processgraphid)
        await self._send("remove_processgraph", body, prvkey)

    async def remove_all_processgraphs(
        self, colonyname: str, prvkey: str, state: int | None = None
    ) -> None:
        """Remove the colony's graphs, only those in ``state`` if given; colony owner."""
        body = p.RemoveAll(colonyname=colonyname, state=state)
        await self._send("remove_all_processgraphs", body, prvkey)

    async def cancel_processgraph(self, processgraphid: str, prvkey: str) -> None:
        """Cancel the graph: its WAITING and RUNNING processes become CANCELLED."""
        body = p.GraphRef(processgraphid=processgraphid)
        await self._send("cancel_processgraph", body, prvkey)

    async def rerun_processgraph(self, processgraphid: str, prvkey: str) -> ProcessGraph:
        """Re-run a FAILED graph from its failure, as a new graph: processes that
        succeeded keep their outputs and do not run again; the failed one and everything
        after it run. Returns the new graph (409 unless the graph FAILED)."""
        body = p.GraphRef(processgraphid=processgraphid)
        return await self._call("rerun_processgraph", body, prvkey, ProcessGraph)

    async def history(
        self, processgraphid: str, prvkey: str, seal_key: str | None = None
    ) -> list[HistoryEntry]:
        """Every event of the graph, in order: stream sequence, time, actor, what happened
        (``colonies workflow history``). A projector reads them from the log and hands
        them over only to a member of the graph's colony (the signed query
        ``graph_events``): 403 for anyone else, 404 for no such graph. The projector
        gives only the events the engine sealed, decrypted when the log is encrypted, so
        ``seal_key`` is not needed (kept for compatibility; ignored)."""
        from colonies_es.projections.history import graph_history

        events = await self.graph_events(processgraphid, prvkey)
        entries: list[HistoryEntry] = await graph_history(events, None, processgraphid)
        return entries

    async def graph_events(self, processgraphid: str, prvkey: str) -> FetchedEvents:
        """The graph's events and its colony's, as a projector gives them to a member
        (``graph_events``), readable by ``graph_history`` and ``verify_graph``."""
        from colonies_es.projections.graph_events import FetchedEvents
        from colonies_es.projections.protocol import (
            GetGraphEvents,
            GraphEvents,
            query_subject,
            signed_op,
        )

        events: list[Any] = []
        start = 0
        while True:
            body = GetGraphEvents(processgraphid=processgraphid, start=start)
            data = await self._connection.request(
                query_subject("graph_events"), signed_op("graph_events"), body, prvkey
            )
            page = decode(data, GraphEvents)
            events += page.events
            if not page.more or not page.events:
                return FetchedEvents(events)
            start = page.events[-1].sequence + 1

    async def state_at(
        self, processgraphid: str, at: int | str, prvkey: str, seal_key: str | None = None
    ) -> GraphState:
        """The graph and its processes as they were at ``at``: a stream sequence
        (``1234``), an ISO time, or ``"#N"`` (after its N-th event); rebuilt from the
        graph's own events (``colonies workflow replay``)."""
        from colonies_es.projections.timetravel import graph_state, parse_moment, state_at

        entries = await self.history(processgraphid, prvkey, seal_key)
        moment = parse_moment(at) if isinstance(at, str) else at
        state: GraphState = graph_state(state_at(entries, moment))
        return state

    async def find_process(
        self, nodename: str, processids: Sequence[str], prvkey: str
    ) -> Process | None:
        """The first of ``processids`` whose spec's nodename is ``nodename``, or None (one
        request; refused as ``get_process`` would refuse one of those before it)."""
        if self._engines_find:
            body = p.FindProcess(nodename=nodename, processids=list(processids))
            try:
                data = await self._connection.command("find_process", body, prvkey)
            except NoEngineAnswering:  # maybe engines older than this op: read each in turn
                pass
            else:
                return None if data == b"null" else self._decoded("find_process", data, Process)
        for processid in processids:
            process = await self.get_process(processid, prvkey)
            self._engines_find = False  # engines answer, not this op: no need to ask again
            if process.spec.nodename == nodename:
                return process
        return None

    async def add_child(
        self,
        processgraphid: str,
        parentprocessid: str,
        childprocessid: str | None,
        funcspec: FuncSpec,
        nodename: str,
        insert: bool,
        prvkey: str,
    ) -> Process:
        """Add a process named ``nodename`` under the RUNNING parent (SEMANTICS.md,
        "Dynamic graphs"): ``insert`` puts it between the parent and its children,
        otherwise it becomes a new child that ``childprocessid`` (if any) also waits
        for. Assigned executor of the parent only. Returns the new process."""
        body = p.AddChild(
            processgraphid=processgraphid,
            parentprocessid=parentprocessid,
            childprocessid=childprocessid or "",
            spec=funcspec,
            nodename=nodename,
            insert=insert,
        )
        return await self._call("add_child", body, prvkey, Process)

    async def add_children(
        self,
        processgraphid: str,
        parentprocessid: str,
        childprocessid: str | None,
        funcspecs: Sequence[FuncSpec],
        nodenames: Sequence[str],
        insert: bool,
        prvkey: str,
    ) -> list[str]:
        """Add several processes under the RUNNING parent in one signed command, all
        or nothing: ``funcspecs[i]`` named ``nodenames[i]``. Not in pycolonies (an
        addition; :meth:`add_child` is unchanged). ``insert`` puts them all between
        the parent and its children (a map's pairs before its reduce), otherwise they
        become new children that ``childprocessid`` (if any) also waits for. With one
        spec it is :meth:`add_child`. Returns the new process ids, in order. The
        engine refuses (400) a batch whose event could not be read back in one reply
        (about 3/4 of the server's max_payload: at the default 1 MB, about 800 small
        specs): add more in several calls, the first with ``insert`` and the next beside
        them (``insert=False``, ``childprocessid`` the process they all feed)."""
        body = p.AddChildren(
            processgraphid=processgraphid,
            parentprocessid=parentprocessid,
            childprocessid=childprocessid or "",
            specs=list(funcspecs),
            nodenames=list(nodenames),
            insert=insert,
        )
        return await self._call("add_children", body, prvkey, list[str])


def _model(value: T | Mapping[str, Any], model: type[T]) -> T:
    """``value`` itself if it is a ``model``, else the model built from the dict."""
    if isinstance(value, model):
        return value
    assert isinstance(value, Mapping)
    return from_dict(value, model)


def _executor_ref(colonyname: str, executorname: str) -> p.ExecutorRef:
    return p.ExecutorRef(colonyname=colonyname, executorname=executorname)
