"""A running function's ``add_child`` calls, sent together (DESIGN.md, "Fan-out and the
diamond", sixth session).

The seed's map adds its children one ``add_child`` at a time: one signed command, one
event and one round trip each, 1.5-2 ms a call. A function run by the executor may have
its calls coalesced instead, when nothing in it could tell the difference:

- the child process running the function decides which calls may wait
  (:func:`guarded_lines`, :func:`deferrable_call_site`): only those whose refusal the
  function's own code could not catch (no ``try`` or ``with`` around them), and it
  returns a :class:`DeferredProcess` for each;
- the executor queues them (:class:`QueuedChildren`) and sends them, in call order,
  before any other call of the function, when the queue is full, :data:`SEND_AFTER`
  after the first was queued, and when the function returns: runs of calls that are
  siblings (same graph, parent, ``childprocessid``, key, ``insert=False``) as one
  ``add_children``, any other call as its own ``add_child``;
- a refused batch wrote nothing; its calls are sent again one by one, so the children
  before the refused one are added and the later ones are not: the log a function that
  raised at the refused call leaves. The executor then ends the run as that uncaught
  error would have (:class:`Refused`).
"""

from __future__ import annotations

import ast
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from colonies_es.client import ColoniesConnectionError, ColoniesError
from colonies_es.models import FuncSpec, Process, encode

__all__ = [
    "BATCH_BYTES",
    "BATCH_CHILDREN",
    "SEND_AFTER",
    "DeferredProcess",
    "QueuedChildren",
    "Refused",
    "deferrable_call_site",
    "guarded_lines",
]

BATCH_CHILDREN = 250
"""Children queued before the executor sends them (one ``add_children`` when they are
siblings): the batch size the ``add_children`` fan-out measured best with."""

BATCH_BYTES = 256 * 1024
"""Bytes of encoded specs queued before the executor sends them. The engine refuses an
event that could not be read back in one reply (about 780 KB at NATS' default 1 MB
max_payload), and an ``add_children`` event holds the specs twice (the command and the
children); a batch refused for its size is sent again one call at a time, so this
bound is for speed, not correctness."""

SEND_AFTER = 0.1
"""Seconds a deferred call waits at most before the executor sends it (with whatever
was queued since): a function that adds children and then works on, or waits, has them
in its graph for everyone to see within this time, as it would with one call each. A map
adding children in a loop fills a batch long before (250 calls take about 10 ms)."""

CallSite = tuple[str, int, str]
"""(file name, line, function name) of a deferred call, for the error that refuses it."""


def guarded_lines(source: str) -> frozenset[int]:
    """The lines of ``source`` where an exception could be caught before it leaves the
    function: those of every ``try`` body (an ``except`` or a ``finally`` follows) and
    of every ``with`` body (a context manager may swallow it). Empty when the source does
    not parse (it will not compile either)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return frozenset()
    guarded: set[int] = set()
    guards: tuple[type[ast.AST], ...] = (ast.Try, ast.TryStar, ast.With, ast.AsyncWith)
    for node in ast.walk(tree):
        if isinstance(node, guards):
            body: list[ast.stmt] = node.body  # type: ignore[attr-defined]
            last = body[-1].end_lineno or body[-1].lineno
            guarded.update(range(body[0].lineno, last + 1))
    return frozenset(guarded)


def deferrable_call_site(
    frame: types.FrameType | None,
    filename: str,
    guarded: frozenset[int],
    entry: types.CodeType,
) -> CallSite | None:
    """Where a call made from ``frame`` happens, if its refusal could not be caught by
    the function: every frame from ``frame`` up to the one running ``entry`` (the code
    that called the function) must be the function's own source (``filename``) on a line
    outside ``guarded``. None otherwise: another module on the way (it may catch), a
    guarded line, or no ``entry`` frame at all (say a thread the function started)."""
    site: CallSite | None = None
    while frame is not None:
        code = frame.f_code
        if code is entry:
            return site
        if code.co_filename != filename or frame.f_lineno in guarded:
            return None
        if site is None:
            site = (filename, frame.f_lineno, code.co_name)
        frame = frame.f_back
    return None


class DeferredProcess:
    """What a deferred ``add_child`` returns: the engine's :class:`Process` for the new
    child, fetched the first time one of its attributes is read (or ``isinstance`` asks
    its class), which sends the calls queued before it. ``fetch`` is called once."""

    def __init__(self, fetch: Callable[[], Process]) -> None:
        self._fetch: Callable[[], Process] | None = fetch
        self._process: Process | None = None

    def _resolved(self) -> Process:
        if self._process is None:
            fetch, self._fetch = self._fetch, None
            assert fetch is not None
            self._process = fetch()
        return self._process

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._resolved(), name)

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # isinstance(child, Process) holds, as for add_child's
        return type(self._resolved())

    def __eq__(self, other: object) -> bool:
        other_process = other._resolved() if isinstance(other, DeferredProcess) else other
        return bool(self._resolved() == other_process)

    __hash__ = None  # type: ignore[assignment]  # as Process's

    def __repr__(self) -> str:
        return repr(self._resolved())

    def __reduce_ex__(self, protocol: Any) -> Any:  # passed to another call: the Process
        return self._resolved().__reduce_ex__(protocol)


@dataclass(frozen=True, slots=True)
class Refused:
    """A queued call the engine refused (or that could not be delivered): the run ends
    as if the function had raised ``error`` at ``site``."""

    error: Exception
    """A ColoniesError, a ColoniesConnectionError, or the RuntimeError a call made at once
    raises for a bad argument."""
    site: CallSite | None

    def errors(self) -> list[str]:
        """What ``fail`` reports: the line an uncaught error gives, then where it came
        from."""
        first = f"{type(self.error).__name__}: {self.error}"
        if self.site is None:
            return [first]
        filename, line, function = self.site
        return [
            first,
            f'  File "{filename}", line {line}, in {function}\n'
            f"add_child was refused; it had been sent after the function ran on "
            f"(its add_child calls are sent together), and nothing the function asked of "
            f"colonies after it was made\n",
        ]


@dataclass(slots=True)
class _Call:
    args: tuple[Any, ...]
    """add_child's seven arguments, in pycolonies' order."""
    site: CallSite | None

    def sibling_key(self) -> tuple[Any, ...] | None:
        """Equal for calls one ``add_children`` may carry; None: this one goes alone."""
        graph, parent, child, _, _, insert, prvkey = self.args
        return None if insert else (graph, parent, child or "", prvkey)


@dataclass
class QueuedChildren:
    """The deferred ``add_child`` calls of one function run, on the executor's side:
    :meth:`add` each as it comes, :meth:`send` before anything else of the run happens.
    ``client`` is the executor's :class:`~colonies_es.client.AsyncColonies` (or a
    subclass of it)."""

    client: Any
    _queued: list[_Call] = field(default_factory=list)
    _queued_bytes: int = 0
    _results: list[tuple[Process | str, str]] = field(default_factory=list)
    """What the calls sent so far added, in call order: a Process or an id, and the key
    the call was made with (to read the process)."""

    def add(self, args: tuple[Any, ...], site: CallSite | None) -> bool:
        """Queue a call of ``add_child(*args)``; True when the queue is full (send it)."""
        spec = args[3]
        self._queued.append(_Call(args, site))
        self._queued_bytes += len(encode(spec)) if isinstance(spec, FuncSpec) else 0
        return len(self._queued) >= BATCH_CHILDREN or self._queued_bytes >= BATCH_BYTES

    async def send(self) -> Refused | None:
        """Send the queued calls in order; None when the engine took them all. On a
        refusal the calls after the refused one are dropped (never sent)."""
        queued, self._queued, self._queued_bytes = self._queued, [], 0
        start = 0
        while start < len(queued):
            key = queued[start].sibling_key()
            end = start + 1
            while end < len(queued) and key is not None and queued[end].sibling_key() == key:
                end += 1
            refused = await self._send_run(queued[start:end])
            if refused is not None:
                return refused
            start = end
        return None

    async def _send_run(self, calls: list[_Call]) -> Refused | None:
        if len(calls) > 1:
            graph, parent, child, _, _, insert, prvkey = calls[0].args
            try:
                ids = await self.client.add_children(
                    graph,
                    parent,
                    child,
                    [call.args[3] for call in calls],
                    [call.args[4] for call in calls],
                    insert,
                    prvkey,
                )
            except ColoniesConnectionError as error:  # it may or may not have been taken
                return Refused(error, calls[0].site)
            except Exception:  # it wrote nothing: one by one, to add those before
                pass  # the refused one and to find why
            else:
                self._results.extend((added, prvkey) for added in ids)
                return None
        for call in calls:
            try:
                added = await self.client.add_child(*call.args)
            except (ColoniesError, ColoniesConnectionError) as error:
                return Refused(error, call.site)
            except Exception as error:  # a bad argument: what the call made at once raises
                return Refused(RuntimeError(f"{type(error).__name__}: {error}"), call.site)
            self._results.append((added, call.args[6]))
        return None

    async def result(self, index: int) -> Process:
        """The process the ``index``-th deferred call of the run added (sent by then)."""
        added, prvkey = self._results[index]
        if isinstance(added, str):
            added = await self.client.get_process(added, prvkey)
            self._results[index] = (added, prvkey)
        return added
