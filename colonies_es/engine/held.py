"""Requests an engine replica holds until something happens: claims waiting for work,
and ``wait_process`` requests waiting for a process to end (long polls).

:class:`HeldClaims`. An idle executor sends a ``claim`` with ``wait`` seconds
(protocol.py, "Work"). When no process is ready for it, the replica that received the
claim keeps it here instead of answering 404 at once; whenever a process becomes ready
(this replica's own decision, or another replica's through the follower: both go
through the ready index), the claim that has waited longest among those that may take it
is woken and tries to assign, with the graph's optimistic concurrency deciding between
replicas and claims that race. So work is pushed to a waiting executor in the reply to
its claim, without a ticket in between: a command whose decision made a process ready
and woke a claim here publishes no work ticket for it (:data:`woken_claims`; a claim
woken for nothing, whose claimer is gone, wakes the next one, and the service's
reconciler issues a ticket for what stays ready longer than its grace).

:class:`ProcessEnds`. A ``wait_process`` request for a process still running waits here
until the state sees the process end (``EngineState.on_ended``: this replica's decision
or another replica's event applied by the follower), then answers with the process.

Everything here runs on the engine's event loop (the hooks also run, with nothing held
yet, during the rebuild in its thread: they then have nothing to wake).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

from colonies_es.engine.ready import Key, ReadyProcess

__all__ = ["HeldClaim", "HeldClaims", "ProcessEnds", "held_reply", "woken_claims"]

woken_claims: ContextVar[list[Key] | None] = ContextVar("woken_claims", default=None)
"""Set by the service to an empty list around one command (each command is its own
task): the key of every held claim that command's decision woke, once per ready process
a claim of this replica will take. The service publishes no work ticket for those
(``Engine._apply``). Unset (None) elsewhere: the follower's and the timers' wakes spare
no ticket."""


held_reply: ContextVar[bool] = ContextVar("held_reply", default=False)
"""Set by an op whose request was held and then found what it waited for (a claim woken
for work, a ``wait_process`` for an end): its reply ends a hop of someone's critical
path, so the service writes it to the socket at once instead of when nats-py's flusher
task runs, after whatever else is due in that step of the event loop
(``nats_hot_path.write_now``). Each request is its own task, so the mark is the
request's. Requests answered without waiting never set it: at throughput, where
nothing waits, the flusher still batches every write."""


class _Asleep:
    """How many held requests of one kind wait and have not been woken yet: what the
    engine holds without having anything to do for it (``Aggregates.work_first``)."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


@dataclass(eq=False)
class HeldClaim:
    """One claim held by this replica: whose it is, and the event that wakes it."""

    executorname: str
    asleep: _Asleep = field(default_factory=_Asleep)
    """Its holder's count of claims waiting and not woken (:attr:`HeldClaims.asleep`)."""
    waiting: bool = False
    """True while it waits (a claim trying to assign is not woken for more work)."""
    woken: asyncio.Event = field(default_factory=asyncio.Event)
    offered: ReadyProcess | None = None
    """A process handed to it with the wake (:meth:`HeldClaims.offer`): made ready by a
    decision whose write may still be on its way to the log, so not in the ready index
    yet. The claim takes it first (:meth:`take_offer`)."""

    def take_offer(self) -> ReadyProcess | None:
        """The process offered with the last wake, once; None if none was."""
        offered, self.offered = self.offered, None
        return offered

    async def wait(self, seconds: float) -> None:
        """Wait until woken or ``seconds`` passed, whichever comes first."""
        self.waiting = True
        self.asleep.count += 1
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):  # no task of its own: woken in one step
                    await self.woken.wait()
        finally:
            self.waiting = False
            if not self.woken.is_set():  # not woken: timed out or cancelled
                self.asleep.count -= 1
            self.woken.clear()


class HeldClaims:
    """The claims this replica holds, per (colony, executor type), oldest first."""

    def __init__(self) -> None:
        self._held: dict[Key, list[HeldClaim]] = {}
        self._asleep = _Asleep()

    @property
    def asleep(self) -> int:
        """Claims held here that wait and have not been woken (O(1))."""
        return self._asleep.count

    @contextlib.contextmanager
    def holding(self, key: Key, executorname: str) -> Iterator[HeldClaim]:
        """Hold a claim of ``executorname`` (of ``key``) for the duration of the block."""
        claim = HeldClaim(executorname, self._asleep)
        held = self._held.setdefault(key, [])
        held.append(claim)
        try:
            yield claim
        finally:
            held.remove(claim)
            if not held:
                del self._held[key]

    def wake(self, key: Key, executornames: tuple[str, ...] = ()) -> bool:
        """A process of ``key`` became ready, for any executor or only those named in
        ``executornames``: wake the longest-waiting claim that may take it and is not
        woken already (one claim per ready process). True if one was woken; it is then
        noted in :data:`woken_claims` when the caller set that."""
        claim = self._next_to_wake(key, executornames)
        if claim is None:
            return False
        self._wake(key, claim)
        return True

    def offer(self, key: Key, ready: ReadyProcess) -> bool:
        """:meth:`wake` for a process a decision made ready whose write is still in
        flight, handed over with the wake: the claim decides its assignment on that
        decision's copy and chains its write to it (aggregates.py), instead of waiting
        for the write to be installed and the ready index to have it. True if a claim
        was offered it (and noted in :data:`woken_claims`)."""
        claim = self._next_to_wake(key, ready.executornames)
        if claim is None:
            return False
        claim.offered = ready
        self._wake(key, claim)
        return True

    def _next_to_wake(self, key: Key, executornames: tuple[str, ...]) -> HeldClaim | None:
        for claim in self._held.get(key, ()):
            if not claim.waiting or claim.woken.is_set():
                continue
            if executornames and claim.executorname not in executornames:
                continue
            return claim
        return None

    def _wake(self, key: Key, claim: HeldClaim) -> None:
        claim.woken.set()  # only ever a waiting claim not woken yet (_next_to_wake)
        self._asleep.count -= 1
        noted = woken_claims.get()
        if noted is not None:
            noted.append(key)

    def holds_any(self) -> bool:
        """True if any claim is held here."""
        return bool(self._held)

    def waiting_for(self, key: Key, executornames: tuple[str, ...] = ()) -> bool:
        """True if a claim held here waits (woken or not) and may take a process of
        ``key`` for any executor, or only those in ``executornames``: a prefetch claim
        then leaves the process to it (protocol.py, "Prefetch")."""
        return any(
            claim.waiting and (not executornames or claim.executorname in executornames)
            for claim in self._held.get(key, ())
        )

    def waiting(self, key: Key) -> int:
        """Claims of ``key`` held here that wait."""
        return sum(claim.waiting for claim in self._held.get(key, ()))

    def counts(self) -> dict[Key, int]:
        """Claims waiting per key (the metrics' waiting executors)."""
        return {
            key: waiting
            for key, claims in self._held.items()
            if (waiting := sum(claim.waiting for claim in claims))
        }


class ProcessEnds:
    """The ``wait_process`` requests this replica holds, per process."""

    def __init__(self) -> None:
        self._waiting: dict[str, list[asyncio.Event]] = {}
        self.asleep = 0
        """Requests held here whose process has not ended yet (O(1))."""

    async def wait(self, processid: str, seconds: float) -> None:
        """Wait until :meth:`ended` is called for ``processid``, at most ``seconds``."""
        ended = asyncio.Event()
        waiting = self._waiting.setdefault(processid, [])
        waiting.append(ended)
        self.asleep += 1
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):  # woken in one step of the loop
                    await ended.wait()
        finally:
            if not ended.is_set():
                self.asleep -= 1
            waiting.remove(ended)
            if not waiting:
                del self._waiting[processid]

    def awaited(self, processid: str) -> bool:
        """True while requests held here wait (or were just woken) for ``processid``."""
        return processid in self._waiting

    def ended(self, processid: str) -> None:
        """The process ended: wake whoever waits for it."""
        for ended in self._waiting.get(processid, ()):
            if not ended.is_set():
                ended.set()
                self.asleep -= 1
