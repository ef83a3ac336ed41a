"""Colonies: the synchronous client, driving :class:`AsyncColonies` on a private loop thread.

There is one implementation of each operation, the coroutine of :class:`AsyncColonies`.
Each method here is made by :func:`_blocking` from that coroutine (same name, signature
and docstring, typed through ``ParamSpec``) and runs it to completion on an event loop
that this client owns in a background thread (:class:`~colonies_es.loop.LoopThread`).
So the client works the same from a plain script, from a thread of an executor, or from
code that already runs an event loop of its own. A method calls the coroutine of that name
on the asynchronous client :meth:`Colonies._new_async_client` made, so a subclass may
add to every operation in one place (the chaos journal does), for its synchronous callers
and for work started on the loop with :meth:`Colonies.submit` (the python executor) alike.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from collections.abc import Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any, Concatenate, Generic, ParamSpec, Self, TypeVar

from colonies_es.client.async_client import AsyncColonies, server_urls
from colonies_es.loop import LoopThread, wait_for_lock
from colonies_es.settings import Settings

__all__ = ["Colonies"]

CANCEL_GRACE = 2.0
"""Seconds an interrupted call waits for its cancelled operation to clean up."""

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


def _blocking(
    operation: Callable[Concatenate[AsyncColonies, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[Colonies, P], R]:
    """The blocking method of :class:`Colonies` that runs ``operation`` and returns its
    result (or raises its exception)."""

    name = operation.__name__

    def method(self: Colonies, /, *args: P.args, **kwargs: P.kwargs) -> R:
        # by name: a subclass of AsyncColonies made by _new_async_client is obeyed
        return self._run(lambda client: getattr(client, name)(*args, **kwargs))  # type: ignore[no-any-return]

    functools.update_wrapper(method, operation)
    method.__qualname__ = f"Colonies.{operation.__name__}"
    return method


class _Handoff(Generic[T]):
    """One operation crossing from a caller's thread to the client's loop: ``done`` is
    released once it ended (or was given up before it started)."""

    def __init__(self, coro: Coroutine[Any, Any, T]) -> None:
        self._coro = coro
        self._task: asyncio.Task[T] | None = None
        self._given_up = False
        self.done = threading.Lock()
        self.done.acquire()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the loop: run the operation (unless the caller gave up meanwhile)."""
        if self._given_up:
            self._coro.close()
            self.done.release()
            return
        self._task = loop.create_task(self._coro)
        self._task.add_done_callback(lambda _: self.done.release())

    def cancel(self) -> None:
        """On the loop: the caller gave up; cancel the operation."""
        self._given_up = True
        if self._task is not None:
            self._task.cancel()

    def result(self) -> T:
        """The operation's result, or its exception raised (once ``done``)."""
        task = self._task
        if task is None:
            raise concurrent.futures.CancelledError()
        try:
            return task.result()
        except asyncio.CancelledError:
            raise concurrent.futures.CancelledError() from None


class Colonies:
    """The synchronous colonies client: pycolonies' ``Colonies``, over NATS.

    Every method blocks until the engine has answered and takes the same arguments as
    its :class:`AsyncColonies` twin. The connection opens on the first call and stays
    open until :meth:`disconnect` (or the end of a ``with`` block); a call after that
    connects again. Safe to share between threads.
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
        """Talk to the engine through NATS at ``host:port`` (or the URLs in ``servers``);
        ``timeout`` bounds connecting and each reply, in seconds. ``nkey_file`` is the
        caller's NATS credential (a file with an nkey seed) where NATS authorization is on;
        ``tls_ca_file`` the CA (PEM) the server's TLS certificate must chain to.
        ``affinity``: as :class:`AsyncColonies`."""
        self._servers = server_urls(host, port, tls, servers)
        self._timeout = timeout
        self._nkey_file = nkey_file
        self._tls_ca_file = tls_ca_file
        self._affinity = affinity
        self._lock = threading.Lock()
        self._loop: LoopThread | None = None
        self._client: AsyncColonies | None = None

    @classmethod
    def from_settings(cls, settings: Settings, timeout: float = 10.0) -> Colonies:
        """A client reaching NATS as ``settings`` say (servers, credential, TLS)."""
        access = settings.nats
        return cls(
            servers=access.servers,
            timeout=timeout,
            nkey_file=access.nkey_file,
            tls_ca_file=access.tls_ca_file,
        )

    def _run(self, call: Callable[[AsyncColonies], Coroutine[Any, Any, T]]) -> T:
        """Run ``call(async_client)`` on the loop thread (started if needed), wait for it.

        The caller sleeps on a plain lock that the operation's task releases when it is
        done: one wake-up each way, without ``run_coroutine_threadsafe``'s two chained
        futures (about 0.15 ms less per call on a loaded 2-core machine).

        If the wait is interrupted (Ctrl-C), the operation is cancelled too, and given up
        to :data:`CANCEL_GRACE` seconds to clean up before the interruption propagates:
        an ``assign`` abandoned by its caller must not claim a process afterwards. An
        operation cancelled under its caller (:meth:`disconnect` from another thread)
        raises ``concurrent.futures.CancelledError``.
        """
        loop, client = self._started()
        handoff = _Handoff(call(client))
        loop.loop.call_soon_threadsafe(handoff.start, loop.loop)
        try:
            wait_for_lock(handoff.done)
        except BaseException:
            loop.loop.call_soon_threadsafe(handoff.cancel)
            handoff.done.acquire(timeout=CANCEL_GRACE)
            raise
        return handoff.result()

    def _started(self) -> tuple[LoopThread, AsyncColonies]:
        """The loop thread and the asynchronous client, started if needed."""
        with self._lock:
            if self._loop is None or self._client is None:
                self._loop = LoopThread(name="colonies-client")
                self._client = self._new_async_client()
            return self._loop, self._client

    def submit(
        self, call: Callable[[AsyncColonies], Coroutine[Any, Any, T]]
    ) -> concurrent.futures.Future[T]:
        """Start ``call(async_client)`` on this client's loop and return at once: its
        future. For long-running work that lives on the loop (an executor's workers),
        using the asynchronous client this one drives; :meth:`disconnect` cancels it."""
        loop, client = self._started()
        return asyncio.run_coroutine_threadsafe(call(client), loop.loop)

    def call_soon(self, callback: Callable[[], object]) -> None:
        """Run ``callback()`` on this client's loop, from any thread (e.g. to tell work
        started with :meth:`submit` to stop). Raises RuntimeError when the loop is not
        running (never started, or disconnected)."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("the client's loop is not running")
        loop.loop.call_soon_threadsafe(callback)

    def _new_async_client(self) -> AsyncColonies:
        """The asynchronous client this one drives (made on the first call, and again
        after :meth:`disconnect`)."""
        return AsyncColonies(
            servers=self._servers,
            timeout=self._timeout,
            nkey_file=self._nkey_file,
            tls_ca_file=self._tls_ca_file,
            affinity=self._affinity,
        )

    @property
    def url(self) -> str:
        """The NATS server address(es) this client talks to."""
        return ", ".join(self._servers)

    def connect(self) -> None:
        """Connect now rather than on the first call; raises ColoniesConnectionError."""
        self._run(AsyncColonies.connect)

    def disconnect(self) -> None:
        """Close the connection and stop the loop thread. A later call starts both again."""
        with self._lock:
            loop, client = self._loop, self._client
            self._loop = self._client = None
        if loop is None or client is None:
            return
        try:
            loop.run(client.disconnect())
            loop.run(loop.loop.shutdown_default_executor())  # the thread resolving names
        finally:
            loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.disconnect()

    # Colonies
    add_colony = _blocking(AsyncColonies.add_colony)
    del_colony = _blocking(AsyncColonies.del_colony)
    list_colonies = _blocking(AsyncColonies.list_colonies)
    get_colony = _blocking(AsyncColonies.get_colony)
    stats = _blocking(AsyncColonies.stats)
    # Executors and users
    add_executor = _blocking(AsyncColonies.add_executor)
    approve_executor = _blocking(AsyncColonies.approve_executor)
    reject_executor = _blocking(AsyncColonies.reject_executor)
    remove_executor = _blocking(AsyncColonies.remove_executor)
    list_executors = _blocking(AsyncColonies.list_executors)
    get_executor = _blocking(AsyncColonies.get_executor)
    whoami = _blocking(AsyncColonies.whoami)
    add_user = _blocking(AsyncColonies.add_user)
    # Processes
    submit_func_spec = _blocking(AsyncColonies.submit_func_spec)
    claim = _blocking(AsyncColonies.claim)
    assign = _blocking(AsyncColonies.assign)
    close = _blocking(AsyncColonies.close)
    close_and_claim = _blocking(AsyncColonies.close_and_claim)
    close_and_next = _blocking(AsyncColonies.close_and_next)
    prefetch_claim = _blocking(AsyncColonies.prefetch_claim)
    fail = _blocking(AsyncColonies.fail)
    set_output = _blocking(AsyncColonies.set_output)
    get_process = _blocking(AsyncColonies.get_process)
    list_processes = _blocking(AsyncColonies.list_processes)
    remove_process = _blocking(AsyncColonies.remove_process)
    remove_all_processes = _blocking(AsyncColonies.remove_all_processes)
    wait = _blocking(AsyncColonies.wait)
    add_log = _blocking(AsyncColonies.add_log)
    get_process_log = _blocking(AsyncColonies.get_process_log)
    add_attribute = _blocking(AsyncColonies.add_attribute)
    # Workflows
    submit_workflow = _blocking(AsyncColonies.submit_workflow)
    get_processgraph = _blocking(AsyncColonies.get_processgraph)
    get_processgraphs = _blocking(AsyncColonies.get_processgraphs)
    remove_processgraph = _blocking(AsyncColonies.remove_processgraph)
    remove_all_processgraphs = _blocking(AsyncColonies.remove_all_processgraphs)
    cancel_processgraph = _blocking(AsyncColonies.cancel_processgraph)
    rerun_processgraph = _blocking(AsyncColonies.rerun_processgraph)
    find_process = _blocking(AsyncColonies.find_process)
    history = _blocking(AsyncColonies.history)
    graph_events = _blocking(AsyncColonies.graph_events)
    state_at = _blocking(AsyncColonies.state_at)
    add_child = _blocking(AsyncColonies.add_child)
    add_children = _blocking(AsyncColonies.add_children)
