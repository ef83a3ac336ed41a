"""The events of a process graph: what the log says happened to a workflow.

One command on a graph triggers exactly one of these events, and the event states
everything the command changed, so a reader of the log (projector, history, audit,
engine) never re-runs a domain rule to know what happened:

- ``ready`` (every graph event): the processes this event made ready, each with its
  fixed input, attempt, priority and deadline (:class:`~.process.ReadyProcess`); the
  engine publishes them as work. Empty for most events.
- ``graphstate`` (every graph event): the graph's state after the event.
- ``cancelled`` (events that can end a graph): the processes this event cancelled, and
  ``cancelreason`` why.

The ``apply`` methods make these changes on the :class:`~.graph.ProcessGraph`; they
decide nothing. Data from users (specs, inputs, outputs, errors) is copied in, so the
aggregate never shares a list with an event. Specs travel as plain dicts
(``models.to_dict(spec)``, wire names).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, TypedDict

from colonies_es.domain.base import AuditedCreationEvent, AuditedEvent, clone, clone_as
from colonies_es.domain.process import Outcome, ProcessNode, ReadyProcess
from colonies_es.models import FuncSpec
from colonies_es.states import ProcessState

if TYPE_CHECKING:
    from datetime import datetime

    from colonies_es.domain.graph import ProcessGraph

__all__ = [
    "AttemptFailed",
    "AttributeAdded",
    "ChildAdded",
    "ChildrenAdded",
    "ExecutionTimedOut",
    "GraphCancelled",
    "GraphEvent",
    "GraphRemoved",
    "GraphRerun",
    "GraphSubmitted",
    "LogAdded",
    "OutputSet",
    "ProcessAssigned",
    "ProcessClosed",
    "ProcessFailed",
    "SubmittedProcess",
    "WaitTimedOut",
]

_ENDED = (ProcessState.SUCCESS, ProcessState.FAILED, ProcessState.CANCELLED)


class GraphEvent(AuditedEvent):
    """What every graph event carries besides its audit fields."""

    ready: list[ReadyProcess]
    """Processes this event made ready, in the order they became so."""
    graphstate: int
    """The graph's state after this event (a ProcessState code)."""

    def apply(self, aggregate: ProcessGraph) -> None:
        before = aggregate.states_of(self.state_changes())
        self.change_processes(aggregate)
        for ready in self.ready:
            aggregate.nodes[ready["processid"]].make_ready(ready)
        aggregate.recount(before)
        aggregate.state = self.graphstate
        if aggregate.endtime is None and self.graphstate in _ENDED:
            aggregate.endtime = self.timestamp

    def change_processes(self, aggregate: ProcessGraph) -> None:
        """The changes particular to this kind of event (before readiness and state)."""

    def state_changes(self) -> list[str]:
        """The processes (already in the graph) whose state this event may change: the
        graph keeps its counts of states from them (:meth:`ProcessGraph.recount`)."""
        return []


class SubmittedProcess(TypedDict):
    """A process as submitted: ``spec`` is the FuncSpec as a plain dict."""

    processid: str
    spec: dict[str, Any]
    parents: list[str]
    children: list[str]


class GraphSubmitted(AuditedCreationEvent, GraphEvent):
    """A workflow was submitted: every process exists, WAITING; the roots are ready
    (listed in ``ready``, with ``input=[]``). The submission time is the timestamp."""

    colonyname: str
    processgraphid: str
    initiatorid: str
    initiatorname: str
    processes: list[SubmittedProcess]
    """Every process, in the workflow's order."""
    rootprocessids: list[str]

    def apply(self, aggregate: ProcessGraph) -> None:
        super().apply(aggregate)
        aggregate.index_processes()

    def change_processes(self, aggregate: ProcessGraph) -> None:
        aggregate.colonyname = self.colonyname
        aggregate.processgraphid = self.processgraphid
        aggregate.initiatorid = self.initiatorid
        aggregate.initiatorname = self.initiatorname
        aggregate.rootprocessids = list(self.rootprocessids)
        for process in self.processes:
            aggregate.nodes[process["processid"]] = ProcessNode(
                processid=process["processid"],
                spec=clone_as(process["spec"], FuncSpec),
                parents=list(process["parents"]),
                children=list(process["children"]),
                submissiontime=self.timestamp,
            )


class GraphRerun(GraphSubmitted):
    """A new graph re-running a failed one (``origin``): the same processes and links
    under new ids; those that succeeded there are SUCCESS here from the start, with their
    recorded output (``completed``: new process id -> output), and the processes whose
    parents all completed are ready (in ``ready``)."""

    origin: str
    """The process graph id it re-runs."""
    completed: dict[str, list[Any]]

    def change_processes(self, aggregate: ProcessGraph) -> None:
        super().change_processes(aggregate)
        aggregate.origin = self.origin
        for processid, output in self.completed.items():
            aggregate.nodes[processid].succeed(clone(output), self.timestamp)


class ProcessAssigned(GraphEvent):
    """An executor took attempt ``attempt`` of a ready process: it is RUNNING, started
    at the timestamp, and runs out of time at ``execdeadline`` (None: no limit)."""

    processid: str
    executorid: str
    attempt: int
    execdeadline: datetime | None

    def state_changes(self) -> list[str]:
        return [self.processid]

    def change_processes(self, aggregate: ProcessGraph) -> None:
        aggregate.nodes[self.processid].start(self.executorid, self.timestamp, self.execdeadline)
        if aggregate.starttime is None:
            aggregate.starttime = self.timestamp


class OutputSet(GraphEvent):
    """The executor running a process set its output (it keeps running)."""

    processid: str
    executorid: str
    output: list[Any]

    def change_processes(self, aggregate: ProcessGraph) -> None:
        aggregate.nodes[self.processid].set_output(self.output)


class ProcessClosed(GraphEvent):
    """A process succeeded with ``output`` (its final output). ``ready`` lists its
    children that became ready, each with its input."""

    processid: str
    executorid: str
    attempt: int
    output: list[Any]

    def state_changes(self) -> list[str]:
        return [self.processid]

    def change_processes(self, aggregate: ProcessGraph) -> None:
        aggregate.nodes[self.processid].succeed(self.output, self.timestamp)


class AttemptFailed(GraphEvent):
    """An attempt failed: either ``retried`` (the process is ready again, in ``ready``,
    with the next attempt number) or the process FAILED, and then every process still
    WAITING in the graph is ``cancelled`` because of ``cancelreason``."""

    processid: str
    executorid: str
    attempt: int
    errors: list[str]
    """This attempt's errors."""
    retried: bool
    cancelled: list[str]
    cancelreason: str

    outcome: ClassVar[Outcome] = "failed"
    """How the attempt ended, by kind of event (not a field)."""

    def state_changes(self) -> list[str]:
        return [self.processid, *self.cancelled]

    def change_processes(self, aggregate: ProcessGraph) -> None:
        node = aggregate.nodes[self.processid]
        if self.retried:
            node.release_for_retry(self.outcome, self.errors, self.timestamp)
        else:
            node.fail(self.outcome, self.errors, self.timestamp)
        aggregate.cancel_processes(self.cancelled, self.cancelreason, self.timestamp)


class ProcessFailed(AttemptFailed):
    """The executor running a process reported its failure with ``errors``."""


class ExecutionTimedOut(AttemptFailed):
    """A running attempt ran out of time (``maxexectime``); the executor lost the
    process. Caused by the engine: ``actor`` is the engine's id."""

    outcome = "timed out"


class WaitTimedOut(GraphEvent):
    """A ready process waited longer than ``maxwaittime`` without being taken: it
    FAILED with ``errors``, and the processes still WAITING are ``cancelled``. Caused by
    the engine: ``actor`` is the engine's id."""

    processid: str
    attempt: int
    errors: list[str]
    cancelled: list[str]
    cancelreason: str

    def state_changes(self) -> list[str]:
        return [self.processid, *self.cancelled]

    def change_processes(self, aggregate: ProcessGraph) -> None:
        aggregate.nodes[self.processid].fail("failed", self.errors, self.timestamp)
        aggregate.cancel_processes(self.cancelled, self.cancelreason, self.timestamp)


class GraphCancelled(GraphEvent):
    """The graph was cancelled: its WAITING and RUNNING processes, ``cancelled``, are
    CANCELLED because of ``cancelreason``."""

    cancelled: list[str]
    cancelreason: str

    def state_changes(self) -> list[str]:
        return list(self.cancelled)

    def change_processes(self, aggregate: ProcessGraph) -> None:
        aggregate.cancel_processes(self.cancelled, self.cancelreason, self.timestamp)


class ChildAdded(GraphEvent):
    """The executor running ``parentprocessid`` added ``child``, a new process WAITING
    for it (dynamic graphs, e.g. map-reduce). ``child["children"]`` are the processes
    whose parents change:

    - ``insert``: the parent's children; in their parents the new process takes the
      parent's place, and it becomes the parent's only child;
    - otherwise: ``[childprocessid]`` (or none), which also waits for the new process
      (appended to its parents); the new process is appended to the parent's children.

    Only the change is recorded, so the event's size does not grow with the graph.
    """

    parentprocessid: str
    child: SubmittedProcess
    insert: bool

    def change_processes(self, aggregate: ProcessGraph) -> None:
        new = self.child["processid"]
        aggregate.add_process(
            ProcessNode(
                processid=new,
                spec=clone_as(self.child["spec"], FuncSpec),
                parents=list(self.child["parents"]),
                children=list(self.child["children"]),
                submissiontime=self.timestamp,
            )
        )
        parent = aggregate.nodes[self.parentprocessid]
        if self.insert:
            # The parent (RUNNING: its executor adds) gives its place to the new
            # process (WAITING): its children's parents left stay as they were.
            parent.children = [new]
            for processid in self.child["children"]:
                node = aggregate.nodes[processid]
                node.parents = [new if p == self.parentprocessid else p for p in node.parents]
        else:
            parent.children.append(new)  # parent is this graph's own clone
            for processid in self.child["children"]:
                aggregate.nodes[processid].parents.append(new)
                aggregate.parent_added(processid)


class ChildrenAdded(GraphEvent):
    """The executor running ``parentprocessid`` added ``children`` at once (one
    signed ``add_children`` command), each a new process WAITING for it. Every one
    lists in ``children`` the same processes whose parents change:

    - ``insert``: the parent's children; in their parents the new processes (in order)
      take the parent's place, and they become the parent's only children;
    - otherwise: ``[childprocessid]`` (or none), which also waits for every new process
      (appended to its parents); the new processes are appended to the parent's
      children.

    With one child this is what :class:`ChildAdded` records. Only the change is recorded.
    """

    parentprocessid: str
    children: list[SubmittedProcess]
    insert: bool

    def change_processes(self, aggregate: ProcessGraph) -> None:
        new = [child["processid"] for child in self.children]
        for child in self.children:
            aggregate.add_process(
                ProcessNode(
                    processid=child["processid"],
                    spec=clone_as(child["spec"], FuncSpec),
                    parents=list(child["parents"]),
                    children=list(child["children"]),
                    submissiontime=self.timestamp,
                )
            )
        waiting = self.children[0]["children"] if self.children else []
        parent = aggregate.nodes[self.parentprocessid]
        if self.insert:
            # The parent (RUNNING: its executor adds) gives its place to the new
            # processes (WAITING): one parent left becomes len(new).
            parent.children = list(new)
            for processid in waiting:
                node = aggregate.nodes[processid]
                at = node.parents.index(self.parentprocessid)
                node.parents[at : at + 1] = new
                aggregate.parent_added(processid, len(new) - 1)
        else:
            parent.children.extend(new)  # parent is this graph's own clone
            for processid in waiting:
                aggregate.nodes[processid].parents.extend(new)
                aggregate.parent_added(processid, len(new))


class AttributeAdded(GraphEvent):
    """The executor running a process attached a key/value attribute to it."""

    processid: str
    attributeid: str
    key: str
    value: str

    def change_processes(self, aggregate: ProcessGraph) -> None:
        aggregate.nodes[self.processid].attributes.append(
            {"attributeid": self.attributeid, "key": self.key, "value": self.value}
        )


class LogAdded(GraphEvent):
    """The executor running a process logged ``message``. Logs are kept in the log only:
    the aggregate does not hold them (they are read back from the graph's events)."""

    processid: str
    executorname: str
    message: str


class GraphRemoved(GraphEvent):
    """The graph was removed: it leaves listings and takes no more commands; its
    history stays in the log."""

    def change_processes(self, aggregate: ProcessGraph) -> None:
        aggregate.removed = True
