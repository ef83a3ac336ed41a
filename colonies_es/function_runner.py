"""Running an executor's functions in a child process that can be stopped at any moment.

Why a process and not a thread: a cancelled function must stop within a second of the
executor learning of it, whatever it is doing. Python cannot stop a thread from outside;
at best an exception is raised in it once it runs Python code again, which never happens
while it sleeps or waits in C. A child process can always be killed.

Why one persistent child per worker rather than one per function: starting a Python
process costs tens of milliseconds; a child that lives across functions costs only
sending the process (its JSON) and the result (well under a millisecond). Children are
forked from multiprocessing's fork server, which has imported this module once, so a
replacement for a killed child starts in a few milliseconds and inherits no thread of
the executor. A child keeps each source's compiled code (:data:`COMPILED_KEPT`).

Each child runs :func:`execute_function` (defined here, used by the executor too) and
sends back the output, the errors and what the function printed. The executor waits for
that on its event loop (:meth:`FunctionRunner.run` watches the pipe). The ``colonies``
the code sees is a :class:`ParentClient`: each of its calls is carried over the pipe and
made by the executor's own asynchronous client (its connection, its keys, and whatever
a subclass of it adds, such as a journal of acknowledged commands), one at a time,
except the ``add_child`` calls whose refusal the function could not catch: those cross
the pipe without waiting and the executor sends them together
(:mod:`~colonies_es.deferred_children`). Ctrl-C reaches the whole process group: the
child ignores it and the executor decides.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import contextlib
import contextvars
import gc
import inspect
import io
import linecache
import logging
import multiprocessing
import multiprocessing.connection
import pickle
import select
import signal
import sys
import traceback
import types
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import Any

import msgspec

from colonies_es.child_close import ChildCloser
from colonies_es.client import ColoniesConnectionError, ColoniesError
from colonies_es.client.async_client import CloseOrder
from colonies_es.deferred_children import (
    SEND_AFTER,
    DeferredProcess,
    QueuedChildren,
    Refused,
    deferrable_call_site,
    guarded_lines,
)
from colonies_es.models import FuncSpec, Process, decode, encode

__all__ = [
    "CloseJob",
    "FunctionFailed",
    "FunctionRunner",
    "ParentClient",
    "RunResult",
    "execute_function",
]

MAX_PRINTED = 64 * 1024
"""Characters of a function's printed output kept for the process log (the end is cut)."""

COMPILED_KEPT = 256
"""Sources whose compiled code a process running functions keeps (then it starts over)."""

log = logging.getLogger("colonies.executor")
_COMPILED: dict[tuple[str, str], tuple[types.CodeType, frozenset[int]]] = {}
"""(filename, source) -> its code and its guarded lines: what :func:`_compiled` keeps."""


@dataclass(frozen=True)
class _RunningFunction:
    """The function :func:`execute_function` runs in this thread, as far as deciding which
    of its ``add_child`` calls a :class:`ParentClient` may defer needs it."""

    filename: str
    guarded: frozenset[int]
    """Its guarded lines (:func:`~colonies_es.deferred_children.guarded_lines`)."""
    processid: str
    """Its process: only children of this process may wait (they cannot start before it
    ends, and it ends only after they are sent)."""
    children: frozenset[str]
    """Its process's children when it was assigned: the only processes a deferred call
    may make wait for the new child (``childprocessid``), since they wait for this
    process too; any other could become ready before the call is sent."""


CloseJob = tuple[CloseOrder, str]
"""A close the child is asked to send itself, and the executor's key to seal it with."""

_RUNNING: contextvars.ContextVar[_RunningFunction | None] = contextvars.ContextVar(
    "colonies_running_function", default=None
)
_warned_daemonic = False

_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["colonies_es.executor", "colonies_es.function_runner"])


class FunctionFailed(Exception):
    """The process cannot succeed; ``errors`` (never empty) is what ``fail`` reports.

    ``errors[0]`` is one line ("ValueError: bad input", or what was wrong with the code);
    ``errors[1]``, when there is one, shows where: the formatted traceback of what
    raised, or the line that does not compile.
    """

    def __init__(self, errors: list[str]) -> None:
        super().__init__(errors[0])
        self.errors = errors


def execute_function(process: Process, ctx: dict[str, Any], globals_: dict[str, Any]) -> list[Any]:
    """Run the function of ``process`` and return its output, ready for ``close``.

    The source in ``spec.env["code"]`` runs as a fresh module whose globals are a copy of
    ``globals_`` plus the builtins. Then ``spec.funcname`` is called as
    ``f(*args, ctx=ctx, **spec.kwargs)``, where ``args`` is ``process.input`` when it is
    non-empty, else ``spec.args``. The return value becomes the output: a tuple its
    items, None nothing, anything else a list of itself.

    Raises :class:`FunctionFailed` when there is no code, it does not compile, running
    it raises, it defines no callable ``spec.funcname``, the function raises (type,
    message and traceback, without the executor's own frames) or what it returns
    cannot be encoded as JSON. Nothing else escapes, ``SystemExit`` included.
    """
    spec = process.spec
    try:
        source = spec.decoded_code()
    except ValueError as error:
        raise FunctionFailed([f"cannot read the code of {spec.funcname}: {error}"]) from None
    if source is None:
        raise FunctionFailed([f'no code for {spec.funcname}: spec.env["code"] is missing'])
    filename = f"<colonies {spec.funcname}>"
    with _source_lines(filename, source):
        code, guarded = _compiled(source, filename, spec.funcname)
        namespace: dict[str, Any] = {
            **globals_,
            "__name__": "colonies_function",
            "__builtins__": builtins,
        }
        try:
            exec(code, namespace)
        except (Exception, SystemExit) as error:
            raise FunctionFailed(_raised(error, f"the code of {spec.funcname} raised ")) from None
        function = namespace.get(spec.funcname)
        if not callable(function):
            raise FunctionFailed(
                [f"the code defines no function named {spec.funcname!r}"]
                if function is None
                else [
                    f"{spec.funcname!r} in the code is not callable (a {type(function).__name__})"
                ]
            )
        args = process.input if process.input else spec.args
        running = _RUNNING.set(
            _RunningFunction(filename, guarded, process.processid, frozenset(process.children))
        )
        try:
            result = function(*args, ctx=ctx, **spec.kwargs)
        except (Exception, SystemExit) as error:
            raise FunctionFailed(_raised(error)) from None
        finally:
            _RUNNING.reset(running)
    return _output(result, spec.funcname)


_ENTRY = execute_function.__code__
"""The code that calls a function: where :func:`deferrable_call_site` stops looking."""


def _compiled(source: str, filename: str, funcname: str) -> tuple[types.CodeType, frozenset[int]]:
    """``source`` compiled as a module named ``filename``, and its guarded lines: from
    :data:`_COMPILED` when the same source ran before (a function's processes all carry
    the same code; compiling it again cost two thirds of a no-op's run, 65 of 94 us).
    Raises FunctionFailed when it does not compile."""
    key = (filename, source)
    compiled = _COMPILED.get(key)
    if compiled is None:
        try:
            code = compile(source, filename, "exec")
        except (SyntaxError, ValueError) as error:  # ValueError: null bytes in the source
            raise FunctionFailed(
                [f"the code of {funcname} does not compile: {error}", *_exception_only(error)]
            ) from None
        if len(_COMPILED) >= COMPILED_KEPT:
            _COMPILED.clear()
        compiled = _COMPILED[key] = (code, guarded_lines(source))
    return compiled


def _output(result: object, funcname: str) -> list[Any]:
    """The process output for a function's return value, checked to encode as JSON."""
    output = list(result) if isinstance(result, tuple) else [] if result is None else [result]
    output = [_encodable(item) for item in output]
    try:
        encode(output)
    except (TypeError, ValueError, msgspec.EncodeError) as error:
        raise FunctionFailed(
            [f"{funcname} returned a value that cannot be sent as JSON: {error}"]
        ) from None
    return output


def _encodable(item: object) -> object:
    """``item``, or the process a :class:`DeferredProcess` (what a deferred ``add_child``
    returns) stands for: the function may return it as it may return a Process."""
    return item._resolved() if isinstance(item, DeferredProcess) else item


def _raised(error: BaseException, prefix: str = "") -> list[str]:
    """``[one line, traceback]`` for an exception of the user's code, without the frames
    of this module (the caller of the user's code)."""
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    summary = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return [prefix + summary, "".join(traceback.format_exception(type(error), error, tb))]


def _exception_only(error: BaseException) -> list[str]:
    return ["".join(traceback.format_exception_only(type(error), error))]


@contextlib.contextmanager
def _source_lines(filename: str, source: str) -> Iterator[None]:
    """Let tracebacks formatted meanwhile show the lines of ``source`` for ``filename``."""
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    try:
        yield
    finally:
        linecache.cache.pop(filename, None)


@dataclass
class RunResult:
    """What became of one function run."""

    output: list[Any] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    """Empty when it succeeded; else what ``fail`` reports (see FunctionFailed)."""
    printed: str = ""
    """What it wrote to stdout and stderr (at most :data:`MAX_PRINTED` characters)."""
    stopped: bool = False
    """True when it was stopped (:meth:`FunctionRunner.stop`) before it ended."""
    sent: bytes | None = None
    """The close the child sent itself (:mod:`~colonies_es.child_close`), as sent; None
    when it did not."""
    maybe_sent: bool = False
    """True when the child was asked to send the close and died (or was killed) before
    saying whether it did."""


class FunctionRunner:
    """A child process that runs functions one at a time, for one worker (a task).

    ``globals_`` are the names the functions' code sees besides ``colonies``; ``client``
    is the ``colonies`` of a function run in a daemonic process (see :meth:`run`). One
    runner per worker: it runs one function at a time.
    """

    def __init__(self, client: Any, globals_: dict[str, Any]) -> None:
        self._client = client
        self._globals = globals_
        self._child: BaseProcess | None = None
        self._conn: multiprocessing.connection.Connection | None = None
        self._stopped = False  # stop() was called during run
        self._watched: tuple[asyncio.AbstractEventLoop, int] | None = None
        """(loop, fd) where the child's pipe is watched for reading (:meth:`_receive`)."""
        self._receiving: asyncio.Future[Any] | None = None
        """What :meth:`_receive` awaits while it waits."""
        self._unclaimed: collections.deque[Any] = collections.deque()
        """Messages that came while nothing waited (a run that was cancelled)."""

    async def run(
        self, process: Process, ctx: dict[str, Any], calls: Any, close: CloseJob | None = None
    ) -> RunResult:
        """Run the function of ``process`` in the child (started if needed) and return
        its result, waiting for it on the caller's event loop (no thread of its own).
        The function's ``colonies`` calls are made with ``calls`` (an
        :class:`~colonies_es.client.AsyncColonies`: its coroutines are awaited here).
        :meth:`stop`, from another task, kills the child at once: the result then says
        ``stopped``. A child that dies on its own (a crash, ``os._exit``) fails the run
        with its exit code. Cancelling the call leaves the function running (stop or
        :meth:`close` the runner).

        ``close`` (an order and the executor's key): the child sends the process's close
        itself when the function succeeded without printing or calling ``colonies`` and
        it can (:mod:`~colonies_es.child_close`); the result's ``sent`` then holds it, and
        ``maybe_sent`` says when the child died before telling.

        In a daemonic process (say an executor inside a ``multiprocessing.Process(daemon=
        True)``), which may not start children, the function runs in a thread of the
        loop's default executor instead, with the runner's ``client`` as its
        ``colonies``: it then cannot be stopped and what it prints is not captured."""
        if multiprocessing.current_process().daemon:
            return await asyncio.to_thread(self._run_here, process, ctx)
        job = _job(process, ctx, close)
        if not self.started:  # starting a child blocks (seconds, the first time): not here
            await asyncio.to_thread(self.start)
        conn = self._connection()
        self._stopped = False
        try:
            _send(conn, job)
        except OSError:  # the child died since its last function (EPIPE): a new one
            self._reap()
            await asyncio.to_thread(self.start)
            conn = self._connection()
            _send(conn, job)
        queued = QueuedChildren(calls)  # its deferred add_child calls
        timer: asyncio.TimerHandle | None = None  # sends them SEND_AFTER after the first

        async def send_queued() -> Refused | None:
            nonlocal timer
            if timer is not None:
                timer.cancel()
                timer = None
            return await queued.send()

        try:
            while True:
                try:
                    message = await self._receive(conn)
                    if self._stopped:  # its process ended: what it still sends is moot
                        raise EOFError
                    if message[0] == "defer":  # an add_child that may wait (ParentClient)
                        if queued.add(message[1], message[2]):
                            refused = await send_queued()
                            if refused is not None:
                                return self._refused(refused)
                        elif timer is None:  # seen by others soon, even if the function waits
                            loop = asyncio.get_running_loop()
                            timer = loop.call_later(SEND_AFTER, self._deliver, _SEND_QUEUED)
                        continue
                    if message is _SEND_QUEUED or message[0] == "call":
                        refused = await send_queued()  # what it asked before goes first
                        if refused is not None:
                            return self._refused(refused)
                        if message is _SEND_QUEUED:
                            continue
                        if message[1] == DEFERRED_RESULT:
                            _send(conn, await _outcome(queued.result(*message[2])))
                        else:
                            _send(conn, await _call_async(calls, *message[1:]))
                        continue
                except (EOFError, OSError):
                    code = self._reap()
                    maybe_sent = close is not None
                    if self._stopped:
                        return RunResult(stopped=True, maybe_sent=maybe_sent)
                    funcname = process.spec.funcname
                    return RunResult(
                        errors=[f"the process running {funcname} died (exit code {code})"],
                        maybe_sent=maybe_sent,
                    )
                _, output, errors, printed, sent = message
                refused = await send_queued()  # made before it returned (or raised)
                if self._stopped:  # its process was cancelled or timed out meanwhile
                    return RunResult(stopped=True, sent=sent)
                if refused is not None:
                    return RunResult(errors=refused.errors(), printed=printed)
                return RunResult(output=output, errors=errors, printed=printed, sent=sent)
        finally:
            if timer is not None:
                timer.cancel()

    def _refused(self, refused: Refused) -> RunResult:
        """End a run whose deferred call was refused while the function still runs: it
        stops there, as the uncaught error would have stopped it (a run stopped meanwhile
        is reported stopped: its process had ended, which is why the engine refused)."""
        self.kill()
        if self._stopped:
            return RunResult(stopped=True)
        return RunResult(errors=refused.errors())

    async def _receive(self, conn: multiprocessing.connection.Connection) -> Any:
        """The child's next message; EOFError (or OSError) once its end is closed.

        The pipe stays registered with the loop from one function to the next (adding
        and removing the reader for each message cost two system calls and a tenth of
        the executor's work per process), and each message is read as soon as the loop
        sees it (:meth:`_on_readable`): read later, by the task it wakes, the loop's
        next look at the pipe would still find it readable. An end of file seen while
        nothing waits (the child died between functions) unregisters the pipe."""
        if self._unclaimed:
            return self._unclaimed.popleft()
        loop = asyncio.get_running_loop()
        fd = conn.fileno()
        if self._watched != (loop, fd):
            self._unwatch()
            loop.add_reader(fd, self._on_readable, conn)
            self._watched = (loop, fd)
        received = self._receiving = loop.create_future()
        try:
            return await received
        finally:
            self._receiving = None

    def _on_readable(self, conn: multiprocessing.connection.Connection) -> None:
        try:
            message = conn.recv()
        except (EOFError, OSError) as error:
            self._unwatch()  # not again and again
            received = self._receiving
            if received is not None and not received.done():
                received.set_exception(error)
            return
        self._deliver(message)

    def _deliver(self, message: Any) -> None:
        """Give ``message`` to :meth:`_receive`: now if it waits, else when next called."""
        received = self._receiving
        if received is not None and not received.done():
            received.set_result(message)
        else:
            self._unclaimed.append(message)

    def _unwatch(self) -> None:
        """Stop watching the pipe, before it is closed: at once on the watching loop's
        own thread, else through that loop (nothing registered on it in between)."""
        watched, self._watched = self._watched, None
        if watched is None:
            return
        loop, fd = watched
        if loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            loop.remove_reader(fd)
        else:
            with contextlib.suppress(RuntimeError):  # it closed meanwhile
                loop.call_soon_threadsafe(loop.remove_reader, fd)

    @property
    def started(self) -> bool:
        """Whether the child is there: started, and its pipe not found closed. (Not
        asked of the OS, which costs a system call per function: a child that died
        since is found by :meth:`run` when it sends to it.)"""
        return self._child is not None and self._conn is not None

    def start(self) -> None:
        """Start the child now, so that the first function does not wait for it (nothing
        in a daemonic process, where functions run in the caller's thread). Blocks: the
        first child of a process starts multiprocessing's fork server, which imports the
        executor (a second or more on a busy machine); later ones take milliseconds."""
        if not multiprocessing.current_process().daemon:
            self._connection()

    def stop(self) -> None:
        """Kill the child of a :meth:`run` in progress: it returns ``stopped``."""
        self._stopped = True
        if self._child is not None and self._child.is_alive():
            self._child.kill()

    def _run_here(self, process: Process, ctx: dict[str, Any]) -> RunResult:
        global _warned_daemonic
        if not _warned_daemonic:
            _warned_daemonic = True
            log.warning(
                "this executor runs in a daemonic process, which may not start children: "
                "functions run in its threads and a cancelled one runs to its end"
            )
        try:
            output = execute_function(process, ctx, {**self._globals, "colonies": self._client})
        except FunctionFailed as failure:
            return RunResult(errors=failure.errors)
        return RunResult(output=output)

    def kill(self) -> None:
        """Stop the child at once (a function it runs ends there); the next run starts
        a new one."""
        if self._child is not None and self._child.is_alive():
            self._child.kill()
        self._reap()

    def close(self) -> None:
        """Stop the child, whatever it is doing."""
        self.kill()

    def _connection(self) -> multiprocessing.connection.Connection:
        if not self.started:
            self._reap()
            parent, child = _CONTEXT.Pipe()
            process = _CONTEXT.Process(
                target=_serve,
                args=(child, self._globals),
                name="colonies-function",
                daemon=True,
            )
            try:
                process.start()
            except BaseException:
                parent.close()
                raise
            finally:
                child.close()
            self._child, self._conn = process, parent
        assert self._conn is not None
        return self._conn

    def _reap(self) -> int | None:
        """Forget the child (waiting for it to be gone); its exit code."""
        child, conn = self._child, self._conn
        self._child = self._conn = None
        self._unwatch()
        self._unclaimed.clear()
        if conn is not None:
            conn.close()
        if child is None:
            return None
        child.join(5)
        code = child.exitcode
        with contextlib.suppress(ValueError):
            child.close()
        return code


def _send(conn: multiprocessing.connection.Connection, message: object) -> None:
    """Send ``message`` to the other end of the pipe, which reads it with ``recv``: a
    plain pickle (``conn.send`` makes a ``ForkingPickler``, which copies the copyreg
    table for each message: 2.1 against 0.4 us for a job; what crosses here is data,
    never a socket or a file descriptor for which its reducers are there)."""
    conn.send_bytes(pickle.dumps(message, pickle.HIGHEST_PROTOCOL))


_SEND_QUEUED = ("send queued",)
"""What :meth:`FunctionRunner.run` receives, beside the child's messages, when the first
of the deferred calls it queued has waited :data:`SEND_AFTER` seconds."""

DEFERRED_RESULT = "_deferred_result"
"""The call a :class:`~colonies_es.deferred_children.DeferredProcess` makes to become the
process its ``add_child`` added (a name no client method has: they never start with _)."""


async def _call_async(
    client: Any, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, ...]:
    """A call of the child's :class:`ParentClient` made with ``client`` (awaited if it is
    a coroutine): ``("ok", result)`` or ``("error", kind, status, message)``."""

    async def call() -> Any:
        if method.startswith("_"):
            raise AttributeError(method)
        result = getattr(client, method)(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    return await _outcome(call())


async def _outcome(result: Awaitable[Any]) -> tuple[Any, ...]:
    """``("ok", what result gives)`` or ``("error", kind, status, message)``: what
    :class:`ParentClient` reads back."""
    try:
        return ("ok", await result)
    except ColoniesError as error:
        return ("error", "refused", error.status, error.message)
    except ColoniesConnectionError as error:
        return ("error", "connection", 0, str(error))
    except Exception as error:  # e.g. a TypeError of a bad call: the function's to see
        return ("error", "other", 0, f"{type(error).__name__}: {error}")


class ParentClient:
    """The ``colonies`` client a function sees in the child: every method call is made
    by the executor's client, over the pipe (one at a time; the function waits), except
    the ``add_child`` calls that may be deferred (:meth:`add_child`)."""

    def __init__(self, conn: multiprocessing.connection.Connection) -> None:
        self._conn = conn
        self._deferred = 0
        """add_child calls deferred in the current run."""
        self.used = False
        """Whether the current run made a call (deferred or not)."""

    def new_run(self) -> None:
        """A new function starts: its deferred calls are counted from 0 again."""
        self._deferred = 0
        self.used = False

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("_"):
            raise AttributeError(method)
        return lambda *args, **kwargs: self._call(method, args, kwargs)

    def _call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.used = True
        _send(self._conn, ("call", method, args, kwargs))
        answer = self._conn.recv()
        if answer[0] == "ok":
            return answer[1]
        _, kind, status, message = answer
        if kind == "refused":
            raise ColoniesError(status, message)
        if kind == "connection":
            raise ColoniesConnectionError(message)
        raise RuntimeError(message)

    def add_child(
        self,
        processgraphid: str,
        parentprocessid: str,
        childprocessid: str | None,
        funcspec: FuncSpec,
        nodename: str,
        insert: bool,
        prvkey: str,
    ) -> Process | DeferredProcess:
        """pycolonies' ``add_child``. When the function's own code could not catch its
        refusal (no ``try`` or ``with`` around the call in any of its frames), the call
        is deferred (and only when it adds a child to the function's own process, which
        the new child and any ``childprocessid`` among that process's children wait for
        anyway): the executor sends it with the calls that follow, as one
        ``add_children`` (DESIGN.md, "Fan-out and the diamond", sixth session), and
        this returns a :class:`DeferredProcess` that becomes the new process when used.
        Otherwise it is made at once, as every other call is."""
        args = (processgraphid, parentprocessid, childprocessid, funcspec, nodename, insert, prvkey)
        running = _RUNNING.get()
        site = None
        if (
            running is not None
            and isinstance(funcspec, FuncSpec)
            and parentprocessid == running.processid
            and (insert or not childprocessid or childprocessid in running.children)
        ):
            site = deferrable_call_site(sys._getframe(1), running.filename, running.guarded, _ENTRY)
        if site is None:
            return self._call("add_child", args, {})  # type: ignore[no-any-return]
        self.used = True
        _send(self._conn, ("defer", args, site))
        index = self._deferred
        self._deferred += 1
        return DeferredProcess(lambda: self._call(DEFERRED_RESULT, (index,), {}))


def _serve(conn: multiprocessing.connection.Connection, globals_: dict[str, Any]) -> None:
    """The child's loop: run each (process, ctx) received, send back the result.

    What the child inherited from the fork server (the executor's modules) is frozen
    out of the collector's sight (``gc.freeze``): each function's fresh module is a
    reference cycle (its functions point back at its globals), so collections come
    regularly, and they walked all of it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    gc.freeze()
    client = ParentClient(conn)
    names = {**globals_, "colonies": client}
    closer = ChildCloser()
    while True:
        try:
            closer.wait_for(conn)
            process, ctx, close = _unpack_job(conn.recv())
        except (EOFError, OSError):
            closer.close()
            return
        client.new_run()
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            try:
                output, errors = execute_function(process, ctx, names), []
            except FunctionFailed as failure:
                output, errors = [], failure.errors
        text = printed.getvalue()
        if len(text) > MAX_PRINTED:
            text = text[: MAX_PRINTED - 40] + "\n... (cut: the function printed more)\n"
        sent = None
        if (
            close is not None
            and not errors
            and not text
            and not client.used
            and not _executor_gone(conn)
        ):
            order, prvkey = close
            sent = closer.send(order, output, prvkey)
        _send(conn, ("done", output, errors, text, sent))
        if close is not None:  # for the next close, off this one's critical path
            closer.connect(close[0].access)


def _executor_gone(conn: multiprocessing.connection.Connection) -> bool:
    """True when the executor's end of the pipe has something to read. During a run that
    made no ``colonies`` call the executor writes nothing there, so that is its end closed:
    the executor died (a crash kills its pid, not its function's child). Its close is then
    not sent from here: the claim inside would take a process for a requester that is
    gone, and the process waits for its ``maxexectime`` as a dead executor's always did."""
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    return bool(poller.poll(0))


_Job = tuple[bytes, dict[str, Any], bool, "CloseJob | None"]


def _job(process: Process, ctx: dict[str, Any], close: CloseJob | None) -> _Job:
    """What the child is sent to run ``process`` with ``ctx``: the process as its JSON
    (a tenth of the cost of pickling the model: 2.6 against 40 us to make, and as much
    saved in the child), the rest of ``ctx`` pickled as usual, whether
    ``ctx["process"]`` is the process itself (the executor's ctx: then it is not sent
    twice), and ``close`` (see :meth:`FunctionRunner.run`)."""
    rest = dict(ctx)
    same = rest.get("process") is process
    if same:
        del rest["process"]
    return encode(process), rest, same, close


def _unpack_job(job: _Job) -> tuple[Process, dict[str, Any], CloseJob | None]:
    """The (process, ctx, close) that :func:`_job` packed."""
    data, ctx, same, close = job
    process = decode(data, Process)
    return process, {**ctx, "process": process} if same else ctx, close
