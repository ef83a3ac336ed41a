"""One process of a graph, as the graph aggregate keeps it.

A :class:`ProcessNode` is the state of a process: its spec, where it stands
(WAITING/RUNNING/SUCCESS/FAILED/CANCELLED), its place in the graph, its data, and the
history of its :class:`Attempt` runs. Its methods that change it are called only by the
graph's events (their ``apply``), so a process changes only by an event.

A WAITING process is *ready* once its ``readytime`` is set: all its parents succeeded
and its ``input`` is fixed. :class:`ReadyProcess` is how an event or a query tells the
engine about a ready process, with what the engine needs to publish and route it.

Attempts are numbered from 1; ``attempt`` is the number of the current attempt (or of
the next one while WAITING). A claim names the attempt it is for, so a stale or
duplicate claim can be told apart (SEMANTICS.md, "Assignment").
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal, TypedDict

import msgspec

from colonies_es.domain.base import clone
from colonies_es.models import FuncSpec
from colonies_es.states import ProcessState

__all__ = ["Attempt", "Deadline", "Outcome", "ProcessNode", "ReadyProcess", "readiness"]

Outcome = Literal["running", "success", "failed", "timed out", "cancelled"]
"""How an attempt ended (``"running"`` while it has not)."""


class Attempt(msgspec.Struct, kw_only=True):
    """One run of a process by one executor, from its assignment to its end."""

    attempt: int
    executorid: str
    starttime: datetime
    endtime: datetime | None = None
    errors: list[str] = []
    outcome: Outcome = "running"


class ReadyProcess(TypedDict):
    """A process ready to be taken: the work the engine publishes.

    ``input`` is the process's ``in`` (its parents' outputs, in parents order).
    ``waitdeadline`` is when it fails if nobody took it (None: no limit). The engine
    orders work by higher ``priority``, then earlier ``readytime``; ``attempt`` goes into
    the claim.
    """

    processid: str
    nodename: str
    executortype: str
    executornames: list[str]
    priority: int
    attempt: int
    readytime: datetime
    waitdeadline: datetime | None
    input: list[Any]


class Deadline(TypedDict):
    """A timer the engine arms: at ``at``, call ``expire_wait`` (kind ``"wait"``) or
    ``expire_exec`` (kind ``"exec"``) for that process and attempt."""

    processid: str
    attempt: int
    kind: Literal["wait", "exec"]
    at: datetime


class ProcessNode(msgspec.Struct, kw_only=True):
    """The state of one process of a graph."""

    processid: str
    spec: FuncSpec
    parents: list[str]
    """Ids of the processes it waits for, in the order of its dependencies."""
    children: list[str]
    """Ids of the processes waiting for it."""
    submissiontime: datetime
    state: int = int(ProcessState.WAITING)
    attempt: int = 1
    retries: int = 0
    input: list[Any] = []
    output: list[Any] = []
    errors: list[str] = []
    """Errors of every attempt, and why the process was cancelled, oldest first."""
    assignedexecutorid: str = ""
    """The executor of the current attempt; empty when none (released for a retry)."""
    readytime: datetime | None = None
    waitdeadline: datetime | None = None
    starttime: datetime | None = None
    execdeadline: datetime | None = None
    endtime: datetime | None = None
    attempts: list[Attempt] = []
    attributes: list[dict[str, str]] = []
    """Key/value notes added by the executor (``attributeid``, ``key``, ``value``)."""

    # --- reading -------------------------------------------------------------------------

    @property
    def nodename(self) -> str:
        """The process's name, unique within its graph."""
        return self.spec.nodename

    @property
    def is_ready(self) -> bool:
        """True when it is WAITING and may be taken now."""
        return self.state == ProcessState.WAITING and self.readytime is not None

    @property
    def is_running(self) -> bool:
        """True while an executor holds it."""
        return self.state == ProcessState.RUNNING

    def may_run_on(self, executortype: str, executorname: str) -> bool:
        """True if an executor of this type and name may take it (SEMANTICS.md,
        "Assignment"; whether the executor is APPROVED is the colony's to say)."""
        conditions = self.spec.conditions
        return executortype == conditions.executortype and (
            not conditions.executornames or executorname in conditions.executornames
        )

    def readiness(self, attempt: int, input: list[Any], now: datetime) -> ReadyProcess:
        """What making it ready at ``now`` for ``attempt`` with ``input`` records."""
        return readiness(self.processid, self.spec, attempt, input, now)

    def current_readiness(self) -> ReadyProcess:
        """Its readiness as recorded. Only meaningful when :attr:`is_ready`."""
        assert self.readytime is not None
        ready = readiness(self.processid, self.spec, self.attempt, self.input, self.readytime)
        ready["waitdeadline"] = self.waitdeadline
        return ready

    def exec_deadline(self, starttime: datetime) -> datetime | None:
        """When an attempt started at ``starttime`` runs out of time (None: no limit)."""
        return _deadline(starttime, self.spec.maxexectime)

    def retries_left(self) -> bool:
        """True if a failed attempt may be retried: ``maxretries > 0`` not yet used up."""
        return self.retries < self.spec.maxretries

    def own_copy(self) -> ProcessNode:
        """A copy that a copied graph may change without touching this one. Only what
        events change in place is copied (the links, the attempts, the attributes);
        the user's data (spec, input, output, errors) is shared, because events only
        ever replace it, never change it. Far cheaper than a deep clone for a process
        with many parents (a reduce under a thousand pairs)."""
        return msgspec.structs.replace(
            self,
            parents=list(self.parents),
            children=list(self.children),
            attempts=[msgspec.structs.replace(attempt) for attempt in self.attempts],
            attributes=list(self.attributes),
        )

    # --- changes, made only by events ----------------------------------------------------

    def make_ready(self, ready: ReadyProcess) -> None:
        """WAITING and ready, as ``ready`` records."""
        self.state = int(ProcessState.WAITING)
        self.attempt = ready["attempt"]
        self.readytime = ready["readytime"]
        self.waitdeadline = ready["waitdeadline"]
        self.input = clone(ready["input"])
        self.assignedexecutorid = ""
        self.starttime = None
        self.execdeadline = None

    def start(self, executorid: str, now: datetime, execdeadline: datetime | None) -> None:
        """RUNNING: ``executorid`` took the current attempt at ``now``."""
        self.state = int(ProcessState.RUNNING)
        self.assignedexecutorid = executorid
        self.starttime = now
        self.execdeadline = execdeadline
        self.attempts.append(Attempt(attempt=self.attempt, executorid=executorid, starttime=now))

    def set_output(self, output: list[Any]) -> None:
        """Its output is now ``output``."""
        self.output = clone(output)

    def succeed(self, output: list[Any], now: datetime) -> None:
        """SUCCESS at ``now`` with ``output``."""
        self.set_output(output)
        self._end_attempt("success", [], now)
        self._end(ProcessState.SUCCESS, now)

    def fail(self, outcome: Outcome, errors: list[str], now: datetime) -> None:
        """FAILED at ``now``: the current attempt (if any) ends with ``outcome``."""
        self._end_attempt(outcome, errors, now)
        self.errors = [*self.errors, *errors]
        self._end(ProcessState.FAILED, now)

    def release_for_retry(self, outcome: Outcome, errors: list[str], now: datetime) -> None:
        """The current attempt ended with ``outcome``; one more retry is used. The event
        makes the process ready again right after (:meth:`make_ready`)."""
        self._end_attempt(outcome, errors, now)
        self.errors = [*self.errors, *errors]
        self.retries += 1

    def cancel(self, reason: str, now: datetime) -> None:
        """CANCELLED at ``now`` for ``reason`` (kept in ``errors``)."""
        self._end_attempt("cancelled", [], now)
        self.errors = [*self.errors, reason]
        self._end(ProcessState.CANCELLED, now)

    def _end_attempt(self, outcome: Outcome, errors: list[str], now: datetime) -> None:
        if self.attempts and self.attempts[-1].outcome == "running":
            current = self.attempts[-1]
            current.outcome = outcome
            current.endtime = now
            current.errors = list(errors)

    def _end(self, state: ProcessState, now: datetime) -> None:
        self.state = int(state)
        self.endtime = now


def readiness(
    processid: str, spec: FuncSpec, attempt: int, input: list[Any], now: datetime
) -> ReadyProcess:
    """The readiness of process ``processid`` running ``spec``, made ready at ``now``
    for ``attempt`` with ``input``: its wait deadline counts from ``now``."""
    return ReadyProcess(
        processid=processid,
        nodename=spec.nodename,
        executortype=spec.conditions.executortype,
        executornames=list(spec.conditions.executornames),
        priority=spec.priority,
        attempt=attempt,
        readytime=now,
        waitdeadline=_deadline(now, spec.maxwaittime),
        input=clone(input),
    )


def _deadline(start: datetime, seconds: int) -> datetime | None:
    return start + timedelta(seconds=seconds) if seconds > 0 else None
