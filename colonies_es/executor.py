"""The python executor: takes work for its type, runs each function's source, reports.

A process submitted with :func:`~colonies_es.models.func_spec` carries its function's
source in ``spec.env["code"]``. :func:`execute_function` is the calling convention
(SEMANTICS.md, "Readiness and data flow"): run the source in a fresh namespace, call
``spec.funcname`` with the process's input, turn the return value into ``out``.

:class:`PythonExecutor` is one executor identity in one colony: it registers itself with
the colony owner's key, then its workers loop ``assign`` → run the function → close with
the output (or fail with the errors) until told to stop. A close also claims the
worker's next process in the same round trip (``close_and_claim``), held in the engine
until work comes as ``assign`` is, so a worker goes from one process to the next with
one request per process, busy or idle. Lost connections and
refusals are logged and retried; nothing a function does stops the executor.

Prefetch (``prefetch=N``, protocol.py "Prefetch"): while more work is ready than idle
executors take (the engine's hint), a worker claims up to N processes ahead while its
function runs, and a report's claim is a prefetch claim; when the function ends with a
process in hand, that one starts at once and the report goes out without its reply being
awaited (still retried, a refused close still becoming a fail). A process claimed ahead
waits at most :data:`PREFETCH_PATIENCE` behind a long function: then it starts in a
runner of its own (:class:`_Ahead`).

The workers are asyncio tasks on the client's own event loop (the synchronous client
runs one in a thread; :meth:`~colonies_es.client.Colonies.submit`). Each runs its
functions in a child process of its own (:class:`~colonies_es.function_runner.FunctionRunner`,
so that a cancelled function can be killed) and waits for it on the loop, as it waits on
NATS: the path assign → run → close crosses no thread. A function that runs longer
than :data:`WATCH_AFTER` seconds is watched (``wait`` on its process), and killed when
its process ends elsewhere (cancelled, timed out).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import logging
import multiprocessing
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import CancelledError
from dataclasses import dataclass
from typing import Any

from colonies_es.client import AsyncColonies, Colonies, ColoniesConnectionError, ColoniesError
from colonies_es.client.async_client import ChildClose, SealedClaim
from colonies_es.crypto import Crypto, id_from_private_key, new_private_key
from colonies_es.function_runner import FunctionFailed, FunctionRunner, execute_function
from colonies_es.models import Executor, Process, attempt_of, func_spec
from colonies_es.protocol import NextProcess
from colonies_es.states import ProcessState

__all__ = ["FunctionFailed", "PythonExecutor", "execute_function"]

log = logging.getLogger("colonies.executor")

BACKOFF_FIRST = 0.5
"""Seconds to wait after the first failed attempt to take work; doubled after each
failure in a row, up to :data:`BACKOFF_MAX`."""

BACKOFF_MAX = 5.0

REPORT_PATIENCE = 60.0
"""Seconds to keep trying to deliver a result (close or fail) while no engine answers."""

_STOP_CHECK = 1.0
"""Seconds between looks at the stop flag while serving: a Ctrl-C or SIGTERM whose
handler sets it runs on the main thread only between two of them at worst."""

WATCH_AFTER = 0.5
"""Seconds a function runs before the executor starts watching for its process to end
elsewhere (cancelled, timed out)."""
WATCH_SLICE = 5.0
"""Seconds of each wait for the end of a watched process."""

DEFAULT_PREFETCH = 4
"""Processes each worker claims ahead while its function runs (``PythonExecutor(prefetch=)``).
4, as Celery's ``worker_prefetch_multiplier``: at throughput more work in flight means
more messages per wake-up of every process (2,000 no-op tasks, 1x4: about 10% less CPU
per task than 2; DESIGN.md, "CPU per process", ninth session)."""

PREFETCH_PATIENCE = 0.2
"""Seconds a worker's function may run while processes it claimed ahead wait behind it:
then they start in runners of their own, and the worker claims nothing ahead until one
of its functions ends within this time again."""

_REGISTER_ATTEMPTS = 5
"""Tries of add_executor when the colony changed concurrently (409 with the name free)."""


class _EndWatcher:
    """Stops a running function when its process ends by someone else's doing
    (cancelled, timed out), learnt from ``wait`` on the process.

    Functions that end within :data:`WATCH_AFTER` seconds are never watched: the
    watching task starts only then, and :meth:`stop` (the function is over) cancels it.
    """

    def __init__(
        self, client: AsyncColonies, processid: str, prvkey: str, runner: FunctionRunner
    ) -> None:
        self._client = client
        self._processid = processid
        self._prvkey = prvkey
        self._runner = runner
        self._task: asyncio.Task[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(WATCH_AFTER, self._start)
        self.ended_as = ""
        """The state it ended in (``"CANCELLED"``...), once it did."""

    def _start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch())

    def stop(self) -> None:
        """The function is over: stop watching."""
        self._timer.cancel()
        if self._task is not None:
            self._task.cancel()

    async def _watch(self) -> None:
        while True:
            try:
                ended = await self._client.wait(self._processid, WATCH_SLICE, self._prvkey)
            except ColoniesError as error:
                if error.status == 408:
                    continue  # still running: wait again
                if error.status == 404:  # removed
                    self.ended_as = "removed"
                    self._runner.stop()
                return
            except ColoniesConnectionError:
                await asyncio.sleep(BACKOFF_FIRST)
                continue
            self.ended_as = ProcessState(ended.state).name
            self._runner.stop()
            return


@dataclass(frozen=True)
class _Running:
    funcname: str
    started: float  # time.monotonic()


@dataclass(frozen=True)
class _Ran:
    """What a function's run gave, to report."""

    output: list[Any]
    errors: list[str]
    printed: str
    duration: float  # seconds
    sent: bytes | None = None
    """The close its child sent itself (:mod:`~colonies_es.child_close`), as sent."""
    maybe_sent: bool = False
    """Its child was to send the close and died before saying whether it did."""
    ended_as: str = ""
    """When its function was stopped because its process ended (only reported when
    the child was to send the close): the state it ended in."""


class _Ahead:
    """One worker's work claimed ahead (prefetched): processes assigned to the executor
    and not started yet (:attr:`queue`), the prefetch claims awaiting their reply
    (:attr:`claims`) and the reports sent without awaiting theirs; and the held claim
    its next close will carry, sealed while it waits for work (:meth:`seal_claim_ahead`).

    Rules (DESIGN.md, "Executor prefetch"): claims ahead are sent only while the engine's
    last hint (:attr:`more`) said that work was left over for busy executors, and while
    the worker's functions end within :data:`PREFETCH_PATIENCE`; at most ``prefetch``
    processes are queued or claimed at once. A process still queued when the running
    function has run :data:`PREFETCH_PATIENCE` seconds starts at once in a runner of its
    own (:meth:`PythonExecutor._run_aside`), as does one that arrives after that.
    """

    def __init__(self, executor: PythonExecutor, client: AsyncColonies) -> None:
        self._executor = executor
        self._client = client
        self.queue: collections.deque[Process] = collections.deque()
        self.claims = 0
        self.more = 0
        """The engine's last hint (:attr:`NextProcess.more`): work left for busy executors."""
        self.short = True
        """The worker's last function ended within :data:`PREFETCH_PATIENCE`."""
        self._started = 0.0  # time.monotonic() when the running function started
        self._spilling = False  # the running function is past its patience
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._sealing: asyncio.Task[SealedClaim] | None = None

    def may_claim(self, stopping: asyncio.Event) -> bool:
        """Whether to claim ahead now (see the class's rules)."""
        return (
            self._executor.prefetch > 0 and self.more > 0 and self.short and not stopping.is_set()
        )

    def room(self) -> int:
        """How many more processes may be claimed ahead."""
        return self._executor.prefetch - len(self.queue) - self.claims

    def top_up(self) -> None:
        """Send prefetch claims until :meth:`room` is 0 (not awaiting their replies)."""
        for _ in range(self.room()):
            self.claims += 1
            self._spawn(self._claim_ahead())

    def function_started(self) -> asyncio.TimerHandle:
        """The worker starts a function: the timer that spills the queue to runners of
        their own once it has run :data:`PREFETCH_PATIENCE` seconds (to cancel when it
        ends)."""
        self._started = time.monotonic()
        return asyncio.get_running_loop().call_later(PREFETCH_PATIENCE, self._start_spilling)

    def function_ended(self) -> None:
        self._spilling = False
        self.short = time.monotonic() - self._started < PREFETCH_PATIENCE

    def report_aside(self, process: Process, ran: _Ran, carry: bool) -> None:
        """Report ``process`` without awaiting the reply; with ``carry`` the close
        carries a prefetch claim, whose process is queued when it comes."""
        if carry:
            self.claims += 1
        self._spawn(self._report(process, ran, carry))

    async def next_or_none(self) -> Process | None:
        """The next queued process: at once if one is queued, else once the claims in
        flight brought one; None when they all came back without."""
        while not self.queue and self.claims:
            self._changed.clear()
            await self._changed.wait()
        return self.queue.popleft() if self.queue else None

    async def settle(self) -> None:
        """Wait for the reports, claims and runs aside still in flight (not cancelled
        when this wait is: a report still gets through); a claim sealed ahead is dropped."""
        self.sealed_claim()
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    def seal_claim_ahead(self) -> None:
        """The worker's close is about to wait for work (it carries a held claim): seal
        meanwhile the held claim of the close after its next function, so that this one
        needs one signature after the function, not two (:meth:`sealed_claim`). The
        sealing runs two steps of the event loop later, once the close is written."""
        self.sealed_claim()
        task = asyncio.get_running_loop().create_task(self._seal_claim())
        task.add_done_callback(_retrieve)
        self._sealing = task

    def sealed_claim(self) -> SealedClaim | None:
        """The held claim sealed ahead (:meth:`seal_claim_ahead`) if it is ready, once;
        None when there is none yet (the close seals its own, as it did before)."""
        task, self._sealing = self._sealing, None
        if task is None or not task.done():
            if task is not None:
                task.cancel()
            return None
        if task.cancelled() or task.exception() is not None:
            return None
        return task.result()

    async def _seal_claim(self) -> SealedClaim:
        await asyncio.sleep(0)  # nats-py's flusher, woken by the close, writes it first
        executor = self._executor
        return await self._client.seal_held_claim(
            executor.colonyname, executor.poll_timeout, executor.prvkey
        )

    async def _claim_ahead(self) -> None:
        executor = self._executor
        following = None
        try:
            following = await self._client.prefetch_claim(executor.colonyname, executor.prvkey)
        except (ColoniesError, ColoniesConnectionError) as error:
            log.debug("claiming ahead: %s", error)
        finally:
            self._arrived(following)

    async def _report(self, process: Process, ran: _Ran, carry: bool) -> None:
        following = None
        try:
            hold = 0.0 if carry else None
            following = await self._executor._report(
                self._client, process, ran, hold=hold, prefetch=carry
            )
        finally:
            if carry:
                self._arrived(following)

    def _arrived(self, following: NextProcess | None) -> None:
        """The reply to a claim ahead came (None: it failed)."""
        self.claims -= 1
        if following is not None:
            self.more = following.more
            if following.next is not None:
                process = following.next
                self._executor._note_prefetched(process)
                self.queue.append(process)
                if self._spilling:
                    self._spill()
        self._changed.set()

    def _start_spilling(self) -> None:
        self._spilling = True
        self._spill()

    def _spill(self) -> None:
        while self.queue:
            process = self.queue.popleft()
            log.info(
                "%s %s would wait behind a function running %.1f s: running it in a runner "
                "of its own",
                process.spec.funcname,
                process.processid[:8],
                time.monotonic() - self._started,
            )
            self._spawn(self._executor._run_aside(self._client, process))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class PythonExecutor:
    """An executor of ``executortype`` in ``colonyname`` that runs Python functions.

    Its identity is ``prvkey`` (a fresh key unless given; ``executorid`` is its id) and
    ``executorname`` (``"<type>-<8 hex>"`` unless ``name`` is given). ``client`` is used
    for everything (the workers use the asynchronous client it drives, on its loop; the
    ``colonies`` global of the executed code has its calls made there too); it must
    reach the engine. ``colony_prvkey`` (the colony owner's key) is only used by
    :meth:`register`.

    :meth:`run` takes work with ``concurrency`` workers, each waiting up to
    ``poll_timeout`` seconds per ``assign`` and claiming up to ``prefetch`` processes
    ahead while its function runs (0: none; see the module); on stop, the processes
    claimed ahead are run, and a function still running ``grace`` seconds later is
    abandoned (its process is failed, as is one claimed ahead that never started).
    """

    def __init__(
        self,
        client: Colonies,
        colonyname: str,
        colony_prvkey: str,
        *,
        executortype: str = "python-executor",
        name: str | None = None,
        concurrency: int = 1,
        prvkey: str | None = None,
        poll_timeout: float = 5.0,
        grace: float = 30.0,
        prefetch: int = DEFAULT_PREFETCH,
        child_closes: bool = True,
    ) -> None:
        """Raises ValueError for a ``concurrency`` below 1, a ``poll_timeout`` that is not
        positive, a negative ``grace`` or ``prefetch``, or an invalid ``prvkey``."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        if prefetch < 0:
            raise ValueError(f"prefetch must not be negative, not {prefetch}")
        if poll_timeout <= 0:
            raise ValueError(f"poll_timeout must be positive, not {poll_timeout}")
        if grace < 0:
            raise ValueError(f"grace must not be negative, not {grace}")
        self.client = client
        self.colonyname = colonyname
        self.executortype = executortype
        self.concurrency = concurrency
        self.poll_timeout = poll_timeout
        self.grace = grace
        self.prefetch = prefetch
        self.child_closes = child_closes
        """Whether a function's child may send its process's close itself
        (:meth:`_child_close`)."""
        self.closed_by_children = 0
        """Closes the engine took that a function's child had sent itself."""
        self.reported = 0
        """Closes and fails the engine took."""
        self.prvkey = prvkey or new_private_key()
        self.executorid = id_from_private_key(self.prvkey)
        self.executorname = name or f"{executortype}-{secrets.token_hex(4)}"
        self._colony_prvkey = colony_prvkey
        self._child_globals = {"func_spec": func_spec, "Crypto": Crypto}
        self._runners: list[FunctionRunner] = []
        self._lock = threading.Lock()
        self._running: dict[str, _Running] = {}
        self._prefetched: dict[str, _Running] = {}  # claimed ahead, not started (when)
        self._trouble: str | None = None

    # ------------------------------------------------------------------ registration

    def register(self) -> None:
        """Register this executor in the colony and approve it, with the colony key.

        Registering the same id under the same name and type again (a restart) is fine.
        Raises :class:`ColoniesError` when the engine refuses (409: the name belongs to
        another executor) and :class:`ColoniesConnectionError` when it cannot be reached.
        """
        executor = Executor(
            executorid=self.executorid,
            executortype=self.executortype,
            executorname=self.executorname,
            colonyname=self.colonyname,
        )
        for attempt in range(1, _REGISTER_ATTEMPTS + 1):
            try:
                self.client.add_executor(executor, self._colony_prvkey)
                break
            except ColoniesError as error:
                if error.status != 409:
                    raise
                existing = self._executor_named(self.executorname)
                if existing == (self.executorid, self.executortype):
                    break  # registered already: a restart
                if existing is not None or attempt == _REGISTER_ATTEMPTS:
                    raise
        self.client.approve_executor(self.colonyname, self.executorname, self._colony_prvkey)
        log.info(
            "executor %s (%s) registered in colony %s, id %s",
            self.executorname,
            self.executortype,
            self.colonyname,
            self.executorid,
        )

    def _executor_named(self, name: str) -> tuple[str, str] | None:
        """(id, type) of the colony's executor called ``name``, None if there is none."""
        try:
            found = self.client.get_executor(self.colonyname, name, self._colony_prvkey)
        except ColoniesError as error:
            if error.status == 404:
                return None
            raise
        return found.executorid, found.executortype

    # ------------------------------------------------------------------ running

    def run(self, stop: threading.Event) -> None:
        """Take and run work with ``concurrency`` workers until ``stop`` is set.

        The workers are tasks on the client's event loop (:meth:`Colonies.submit`): each
        loops ``assign`` → run the function in its child process → close (claiming the
        next process), waiting on NATS and on its child without any thread hand-off. A
        lost connection or a refused ``assign`` is logged once and retried after a
        pause (0.5 s, doubling up to 5 s); this method only returns after ``stop``. Once
        it is set no new work is taken; it returns when every worker is done, within
        about ``poll_timeout`` seconds if no function is running. A function still
        running ``grace`` seconds after that is abandoned: its child is killed and its
        process failed ("the executor stopped").
        """
        stopping = asyncio.Event()
        serving = self.client.submit(lambda client: self._serve(client, stopping))
        while not stop.wait(_STOP_CHECK):  # a timeout, so that signal handlers get to run
            pass
        with self._lock:
            running = len(self._running)
        log.info(
            "stopping: taking no more work%s",
            f", waiting up to {self.grace:g} s for {running} running function(s)"
            if running
            else "",
        )
        with contextlib.suppress(RuntimeError):  # the client was disconnected meanwhile
            self.client.call_soon(stopping.set)
        with contextlib.suppress(CancelledError, concurrent.futures.TimeoutError):
            serving.result(self.poll_timeout + self.grace + REPORT_PATIENCE)
        self.close_runners()
        log.info(
            "stopped: %d processes reported, %d of them closed by their function's child",
            self.reported,
            self.closed_by_children,
        )

    async def _serve(self, client: AsyncColonies, stopping: asyncio.Event) -> None:
        """The workers, until ``stopping`` and they are done (or the grace is over)."""
        workers = [
            asyncio.create_task(self._work(client, stopping), name=f"{self.executorname}-{n}")
            for n in range(1, self.concurrency + 1)
        ]
        try:
            await stopping.wait()
            _, late = await asyncio.wait(workers, timeout=self.poll_timeout + self.grace)
            if late:
                with self._lock:
                    abandoned = dict(self._running)
                    queued = dict(self._prefetched)
                for worker in late:
                    worker.cancel()
                await asyncio.gather(*late, return_exceptions=True)
                self.close_runners()  # their functions end here
                await self._abandon(client, abandoned)
                await self._abandon(client, queued, started=False)
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _work(self, client: AsyncColonies, stopping: asyncio.Event) -> None:
        """One worker: take a process and run it, until ``stopping``; pause after a
        problem. It has a function runner (a child process) of its own."""
        runner = FunctionRunner(self.client, self._child_globals)
        with self._lock:
            self._runners.append(runner)
        pause = BACKOFF_FIRST
        while not stopping.is_set():
            try:
                problem = await self._take_and_run(client, runner, stopping)
            except Exception as error:  # a bug: say so loudly, keep the executor alive
                log.exception("unexpected error in %s", self.executorname)
                problem = (f"unexpected {type(error).__name__}", repr(error))
            if problem is None:
                pause = BACKOFF_FIRST
                continue
            self._trouble_seen(*problem, pause)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), pause)
            pause = min(pause * 2, BACKOFF_MAX)

    async def _take_and_run(
        self, client: AsyncColonies, runner: FunctionRunner, stopping: asyncio.Event
    ) -> tuple[str, str] | None:
        """Take a process and run it, and the next ones its reports (and prefetch claims)
        bring until none is ready or ``stopping`` is set; None when that went well or no
        work came, else the problem as (kind, message)."""
        started = time.monotonic()
        try:
            process = await client.assign(self.colonyname, self.poll_timeout, self.prvkey)
        except ColoniesError as error:
            # "No work" is a 404 when the wait is over (give or take a timer's slack); an
            # early 404 says something else, e.g. that this executor is not registered.
            if error.status == 404 and time.monotonic() - started >= 0.9 * self.poll_timeout:
                self._trouble_over()
                return None
            return f"refused {error.status}", f"cannot take work: {error} (status {error.status})"
        except ColoniesConnectionError as error:
            return "connection", f"lost the connection: {error}"
        self._trouble_over()
        ahead = _Ahead(self, client)
        try:
            following: Process | None = process
            while following is not None:
                following = await self._run_next(client, runner, following, ahead, stopping)
        finally:
            await ahead.settle()
        return None

    async def _run_next(
        self,
        client: AsyncColonies,
        runner: FunctionRunner,
        process: Process,
        ahead: _Ahead,
        stopping: asyncio.Event,
    ) -> Process | None:
        """Run ``process`` in ``runner`` and report it; the process to run next (None:
        back to ``assign``). While the function runs, processes are claimed ahead up to
        ``prefetch`` (:class:`_Ahead`); with one in hand when the function ends, its
        report is sent without awaiting the reply, carrying the next prefetch claim."""
        if ahead.may_claim(stopping):
            ahead.top_up()
        child_close = await self._child_close(client, process, ahead, stopping)
        patience = ahead.function_started() if self.prefetch else None
        try:
            ran = await self._execute(client, runner, process, child_close)
        finally:
            if patience is not None:
                patience.cancel()
                ahead.function_ended()
        if child_close is not None:
            assert ran is not None
            if not stopping.is_set():
                ahead.seal_claim_ahead()  # for the close after the next function
            following = await self._report_child_close(client, process, ran, child_close, stopping)
            if following is not None:
                ahead.more = following.more
                if following.next is not None:
                    return following.next
            return await ahead.next_or_none()
        if ran is None:  # stopped elsewhere: nothing to report
            return await ahead.next_or_none()
        if ahead.queue or ahead.claims:
            # The ended function's slot is free until the next one starts: room for one more.
            carry = ahead.may_claim(stopping) and ahead.room() + 1 > 0
            ahead.report_aside(process, ran, carry)
            return await ahead.next_or_none()
        hold = self.poll_timeout if not stopping.is_set() else None
        sealed = ahead.sealed_claim()
        if hold is not None:
            ahead.seal_claim_ahead()  # for the close after the next function, if one comes
        following = await self._report(client, process, ran, hold=hold, sealed=sealed)
        if following is not None:
            ahead.more = following.more
            return following.next
        return None

    async def _child_close(
        self, client: AsyncColonies, process: Process, ahead: _Ahead, stopping: asyncio.Event
    ) -> ChildClose | None:
        """The close ``process``'s child is to send itself (:mod:`~colonies_es.child_close`),
        carrying the held claim the worker's close would carry: only when the worker has
        nothing queued or claimed ahead (its close will wait for work: the round trip,
        the diamond) and is not stopping. A worker with work ahead reports from here, its
        closes batched with the other workers' in the executor's socket writes; so does
        every worker when ``child_closes`` is off. None: the executor closes."""
        if (
            not self.child_closes
            or ahead.queue
            or ahead.claims
            or stopping.is_set()
            or multiprocessing.current_process().daemon  # functions run in its threads
        ):
            return None
        try:
            return await client.prepare_child_close(
                process.processid,
                self.prvkey,
                self.colonyname,
                attempt_of(process),
                self.poll_timeout,
                sealed=ahead.sealed_claim(),
            )
        except (ColoniesError, ColoniesConnectionError) as error:
            log.debug("the close of %s stays with the executor: %s", process.processid[:8], error)
            return None

    async def _report_child_close(
        self,
        client: AsyncColonies,
        process: Process,
        ran: _Ran,
        child_close: ChildClose,
        stopping: asyncio.Event,
    ) -> NextProcess | None:
        """Report ``process``, whose child was to send its close (``child_close``): await
        the reply to the close it sent (sending the same bytes again if none comes), or
        report as :meth:`_report` does when it did not (without a claim once
        ``stopping``). The reply to the claim the close carried (None: none, or the
        report failed)."""
        if ran.ended_as:  # its process ended while it ran: by this close, or elsewhere
            if ran.ended_as == "SUCCESS" and (ran.sent is not None or ran.maybe_sent):
                return await self._reply_to_lost_close(client, process, child_close)
            client.drop_child_close(child_close)  # a close now would be refused: no claim
            return None
        if ran.errors:
            if not ran.maybe_sent:
                client.drop_child_close(child_close)  # the child sends no failure
                return await self._report(client, process, ran)
            # Its child died, maybe after sending the close: the fail finds out (refused,
            # 403, when the close was there first; the process ends once either way).
            fail = functools.partial(client.fail, attempt=attempt_of(process))
            problem = await self._deliver(fail, process.processid, ran.errors)
            line = f"{process.spec.funcname} {process.processid[:8]}"
            if isinstance(problem, ColoniesError) and problem.status == 403:
                log.info("%s SUCCESS: its child sent the close before it died", line)
                return await self._reply_to_lost_close(client, process, child_close)
            client.drop_child_close(child_close)
            if problem is None:
                log.info("%s FAILED: %s in %.3f s", line, ran.errors[0], ran.duration)
            else:
                log.warning("%s FAILED, but the engine did not take the report: %s", line, problem)
            return None
        if ran.sent is None and stopping.is_set():
            client.drop_child_close(child_close)
            return await self._report(client, process, ran)
        return await self._report(
            client, process, ran, hold=self.poll_timeout, child_close=child_close
        )

    async def _reply_to_lost_close(
        self, client: AsyncColonies, process: Process, child_close: ChildClose
    ) -> NextProcess | None:
        """The reply to the close ``process``'s child sent (the process ended SUCCESS by
        it) though the executor never got its bytes: the next process its claim took."""
        try:
            return await client.await_child_close(child_close, self.prvkey)
        except (ColoniesError, ColoniesConnectionError) as error:
            log.debug("no reply to the close of %s: %s", process.processid[:8], error)
            return None

    def _trouble_seen(self, kind: str, message: str, pause: float) -> None:
        """Log ``message`` as a warning unless a problem of this ``kind`` is already
        reported (workers share it: one line per outage, not one per attempt or worker);
        a repeat is logged at debug level."""
        with self._lock:
            repeat, self._trouble = kind == self._trouble, kind
        if repeat:
            log.debug("%s; next attempt in %.1f s", message, pause)
        else:
            log.warning("%s; retrying", message)

    def _trouble_over(self) -> None:
        with self._lock:
            problem, self._trouble = self._trouble, None
        if problem is not None:
            log.info("taking work again")

    def run_one(self, process: Process, take_next: bool = False) -> Process | None:
        """Run the assigned ``process`` and report it: close with the output, or fail
        with the errors (:func:`execute_function`). Logs one line with the outcome.

        With ``take_next`` the close also claims the next process for this executor
        (``close_and_claim``): returned assigned to it, to run next; None when none
        was ready (or the report was not a close that the engine took).

        Never raises for what the function does or how the report goes: while no engine
        answers or it answers 503, the report is retried for up to :data:`REPORT_PATIENCE`
        seconds; a close that is refused (or too large to send) becomes a fail with the
        reason, unless the process is no longer ours (403: timed out or cancelled
        meanwhile). Blocks; not to be called from the client's own loop.
        """
        runner = FunctionRunner(self.client, self._child_globals)
        try:
            return self.client._run(
                lambda client: self._run_one(client, runner, process, take_next)
            )
        finally:
            runner.close()

    async def _run_one(
        self, client: AsyncColonies, runner: FunctionRunner, process: Process, take_next: bool
    ) -> Process | None:
        """:meth:`run_one` on the loop, with ``runner``'s child; the claim a close carries
        (``take_next``) is answered at once."""
        ran = await self._execute(client, runner, process)
        if ran is None:
            return None
        following = await self._report(client, process, ran, hold=0.0 if take_next else None)
        return None if following is None else following.next

    async def _execute(
        self,
        client: AsyncColonies,
        runner: FunctionRunner,
        process: Process,
        child_close: ChildClose | None = None,
    ) -> _Ran | None:
        """Run the function of ``process`` in ``runner``'s child; None when it was stopped
        because its process ended elsewhere (cancelled, timed out: logged here), unless
        the child was to send the close (``child_close``): then what it ran is said with
        the state its process ended in (:attr:`_Ran.ended_as`)."""
        funcname = process.spec.funcname
        ctx: dict[str, Any] = {
            "process": process,
            "colonyname": self.colonyname,
            "executorid": self.executorid,
            "executor_prvkey": self.prvkey,
        }
        with self._lock:
            self._prefetched.pop(process.processid, None)
            self._running[process.processid] = _Running(funcname, time.monotonic())
        started = time.perf_counter()
        watcher = _EndWatcher(client, process.processid, self.prvkey, runner)
        try:
            close = None if child_close is None else (child_close.order, self.prvkey)
            result = await runner.run(process, ctx, client, close)
        finally:
            watcher.stop()
            duration = time.perf_counter() - started
            with self._lock:
                self._running.pop(process.processid, None)
        if result.stopped:
            log.info(
                "%s %s %s elsewhere: its function was stopped after %.3f s",
                funcname,
                process.processid[:8],
                watcher.ended_as,
                duration,
            )
            if child_close is None:
                return None
            return _Ran(
                [], [], "", duration, result.sent, result.maybe_sent, watcher.ended_as or "?"
            )
        return _Ran(
            result.output,
            result.errors,
            result.printed,
            duration,
            result.sent,
            result.maybe_sent,
        )

    async def _report(
        self,
        client: AsyncColonies,
        process: Process,
        ran: _Ran,
        hold: float | None = None,
        prefetch: bool = False,
        sealed: SealedClaim | None = None,
        child_close: ChildClose | None = None,
    ) -> NextProcess | None:
        """Close ``process`` with the output of its run, or fail it with the errors (a
        refused close becomes a fail, but for a 403: the process is no longer ours; a 503
        is retried, :meth:`_deliver`), and
        log the outcome. The close carries a claim unless ``hold`` is None: held up to
        ``hold`` seconds in the engine for work to come, as ``assign`` would (a worker's
        loop: one request per process when idle), or a prefetch claim (``prefetch``);
        ``sealed``, a held claim sealed ahead, is carried by the first attempt (a retry
        seals its own). The reply to that claim (None when there was none, or the close
        failed). When it brings a process to run, the outcome's log line is written one
        step of the event loop later (once that process is on its way to its runner).

        ``child_close``: the close its child was to send (with ``hold``), which the first
        attempt awaits (``ran.sent``) or sends now; a retry closes anew."""
        funcname = process.spec.funcname
        errors = ran.errors
        if ran.printed:
            await self._deliver_log(client, process.processid, ran.printed)
        outcome, problem, following = "SUCCESS", None, None
        attempt = attempt_of(process)
        if not errors:
            taken: list[NextProcess] = []
            carried = [sealed] if sealed is not None else []

            async def close(processid: str, output: list[Any], prvkey: str) -> None:
                if child_close is not None:
                    taken[:] = [
                        await client.finish_child_close(child_close, output, prvkey, ran.sent)
                    ]
                    return
                if hold is None:
                    await client.close(processid, output, prvkey, attempt=attempt)
                    return
                taken[:] = [
                    await client.close_and_next(
                        processid,
                        output,
                        prvkey,
                        self.colonyname,
                        attempt,
                        hold,
                        prefetch,
                        sealed=carried.pop() if carried else None,
                    )
                ]

            problem = await self._deliver(close, process.processid, ran.output)
            following = taken[0] if taken and problem is None else None
            if child_close is not None and ran.sent is not None and problem is None:
                self.closed_by_children += 1
            if isinstance(problem, ColoniesError) and problem.status != 403:
                errors = [f"the output of {funcname} was refused: {problem}"]
        if errors:
            outcome = f"FAILED: {errors[0]}"
            fail = functools.partial(client.fail, attempt=attempt)
            problem = await self._deliver(fail, process.processid, errors)
        line = f"{funcname} {process.processid[:8]} {outcome} in {ran.duration:.3f} s"
        if problem is None:
            self.reported += 1
        if problem is None and following is not None and following.next is not None:
            asyncio.get_running_loop().call_soon(log.info, "%s", line)
        elif problem is None:
            log.info("%s", line)
        else:
            log.warning("%s, but the engine did not take the report: %s", line, problem)
        return following

    async def _run_aside(self, client: AsyncColonies, process: Process) -> None:
        """Run a prefetched ``process`` that would wait too long behind its worker's
        function in a runner of its own (made for it, closed after), and report it."""
        runner = FunctionRunner(self.client, self._child_globals)
        with self._lock:
            self._runners.append(runner)
        try:
            await self._run_one(client, runner, process, take_next=False)
        finally:
            with self._lock:
                if runner in self._runners:
                    self._runners.remove(runner)
            await asyncio.to_thread(runner.close)

    def _note_prefetched(self, process: Process) -> None:
        with self._lock:
            self._prefetched[process.processid] = _Running(process.spec.funcname, time.monotonic())

    def close_runners(self) -> None:
        """Stop the child processes running functions (a function still running ends)."""
        with self._lock:
            runners, self._runners = self._runners, []
        for runner in runners:
            runner.close()

    async def _deliver_log(self, client: AsyncColonies, processid: str, printed: str) -> None:
        """Add what the function printed to the process's log (best effort)."""
        try:
            await client.add_log(processid, printed, self.prvkey)
        except (ColoniesError, ColoniesConnectionError) as error:
            log.warning("cannot add the printed output of %s to its log: %s", processid[:8], error)

    async def _deliver(
        self,
        report: Callable[[str, list[Any], str], Awaitable[None]],
        processid: str,
        data: list[Any],
    ) -> ColoniesError | ColoniesConnectionError | None:
        """Await ``report(processid, data, prvkey)``, again while no engine answers or
        the engine answers 503 (not now: it is behind the log, or its log did not answer
        its append), for up to :data:`REPORT_PATIENCE` seconds. None when the engine took
        it, else why not: its refusal, the last connection error or 503, or a 413 when the
        report is larger than NATS carries.

        Each try is a new command (``report`` seals its own). After a 503 whose append
        was stored after all, the next try finds the process no longer running (403):
        the log holds the report that was stored, once."""
        deadline = time.monotonic() + REPORT_PATIENCE
        pause = BACKOFF_FIRST
        while True:
            try:
                await report(processid, data, self.prvkey)
                return None
            except ColoniesError as error:
                if error.status == 413:  # the client found it over the NATS message limit
                    return ColoniesError(413, f"too large for NATS: {error}")
                if error.status != 503 or time.monotonic() + pause > deadline:
                    return error
                log.warning(
                    "the engine cannot take the report of %s now: %s; retrying",
                    processid[:8],
                    error,
                )
            except ColoniesConnectionError as error:
                if time.monotonic() + pause > deadline:
                    return error
                log.warning("cannot report %s yet: %s; retrying", processid[:8], error)
            await asyncio.sleep(pause)
            pause = min(pause * 2, BACKOFF_MAX)

    async def _abandon(
        self, client: AsyncColonies, running: dict[str, _Running], started: bool = True
    ) -> None:
        """Fail the ``running`` processes, whose function still ran after the grace
        period (they were stopped), or, not ``started``, that were claimed ahead and
        never ran."""
        for processid, entry in running.items():
            seconds = time.monotonic() - entry.started
            log.warning(
                "%s %s %s after %.0f s: failing it and stopping",
                entry.funcname,
                processid[:8],
                "still running" if started else "still waiting to run",
                seconds,
            )
            reason = (
                f"the executor stopped while {entry.funcname} was still running ({seconds:.0f} s)"
                if started
                else f"the executor stopped before it ran {entry.funcname}"
            )
            with contextlib.suppress(ColoniesError, ColoniesConnectionError):
                await client.fail(processid, [reason], self.prvkey)


def _retrieve(task: asyncio.Task[Any]) -> None:
    """A done callback that retrieves ``task``'s exception (a claim sealed ahead that
    nobody used failed: it is sealed again when needed), so asyncio does not log it."""
    if not task.cancelled():
        task.exception()
