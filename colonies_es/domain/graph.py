"""The process graph aggregate: a submitted workflow and everything that happens to it.

A graph (aggregate id ``"<colonyname>.graph.<processgraphid>"``) holds its processes
(:class:`~.process.ProcessNode`), so every rule that spans processes (readiness, data
flow from parents to children, failure cancelling the rest, the graph's state) is
decided in one place, with one event per command. A single submitted function is a graph
of one process.

Commands check SEMANTICS.md's rules first and raise a
:class:`~colonies_es.domain.errors.DomainError` (triggering nothing) when one is broken;
otherwise they trigger exactly one event from :mod:`.graph_events`, which lists every
consequence. Each command takes keyword arguments ``now`` (the event's time: the domain
never reads the clock), ``actor`` and ``command`` (the audit fields). Who may call a
command (a member of the colony, the server...) is the engine's check, except what
depends on the graph itself: only the executor holding a process may close it, fail it
or set its output, and only an eligible executor may take it.

Once removed, a graph refuses every command with 404, but its queries still answer
(history is kept for audit).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from colonies_es.domain.base import (
    AuditedAggregate,
    clone,
    clone_as,
    graph_aggregate_id,
    is_id,
    new_graph_id,
    new_id,
    new_process_id,
)
from colonies_es.domain.errors import BadRequest, Conflict, Forbidden, NotFound
from colonies_es.domain.graph_events import (
    AttemptFailed,
    AttributeAdded,
    ChildAdded,
    ChildrenAdded,
    ExecutionTimedOut,
    GraphCancelled,
    GraphRemoved,
    GraphRerun,
    GraphSubmitted,
    LogAdded,
    OutputSet,
    ProcessAssigned,
    ProcessClosed,
    ProcessFailed,
    SubmittedProcess,
    WaitTimedOut,
)
from colonies_es.domain.process import Deadline, ProcessNode, ReadyProcess, readiness
from colonies_es.domain.submission import check_spec, plan_workflow
from colonies_es.models import (
    Attribute,
    Executor,
    FuncSpec,
    Process,
    Workflow,
    from_dict,
    to_dict,
)
from colonies_es.models import ProcessGraph as ProcessGraphModel
from colonies_es.states import ExecutorState, ProcessState

__all__ = ["EXEC_TIMEOUT_ERROR", "WAIT_TIMEOUT_ERROR", "ProcessGraph", "graph_ids", "graph_state"]

EXEC_TIMEOUT_ERROR = "maximum execution time exceeded"
WAIT_TIMEOUT_ERROR = "maximum waiting time exceeded"

_WAITING = int(ProcessState.WAITING)
_RUNNING = int(ProcessState.RUNNING)
_SUCCESS = int(ProcessState.SUCCESS)
_FAILED = int(ProcessState.FAILED)
_CANCELLED = int(ProcessState.CANCELLED)
_DAY_NS = 24 * 60 * 60 * 10**9
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def graph_state(states: Iterable[int]) -> int:
    """The state of a graph whose processes are in ``states`` (SEMANTICS.md, "Graph
    state"): any FAILED → FAILED; else any CANCELLED → CANCELLED; else all SUCCESS →
    SUCCESS; else any RUNNING or SUCCESS → RUNNING; else WAITING."""
    present = set(states)
    if _FAILED in present:
        return _FAILED
    if _CANCELLED in present:
        return _CANCELLED
    if present == {_SUCCESS}:
        return _SUCCESS
    if _RUNNING in present or _SUCCESS in present:
        return _RUNNING
    return _WAITING


class _CopyOnWriteNodes(dict[str, ProcessNode]):
    """The processes of a copied graph: shared with the original until taken by id.

    ``nodes[processid]`` (how events reach a process to change it) returns a process of
    this copy's own, copied on first access (:meth:`ProcessNode.own_copy`); iterating (``values()``,
    ``items()``) reads the shared processes and must not change them.
    """

    __slots__ = ("_owned",)

    def __init__(self, shared: dict[str, ProcessNode]) -> None:
        super().__init__(shared)
        self._owned: set[str] = set()

    def __getitem__(self, processid: str) -> ProcessNode:
        node = super().__getitem__(processid)
        if processid not in self._owned:
            node = node.own_copy()
            super().__setitem__(processid, node)
            self._owned.add(processid)
        return node

    def __setitem__(self, processid: str, node: ProcessNode) -> None:
        super().__setitem__(processid, node)
        self._owned.add(processid)


class ProcessGraph(AuditedAggregate):
    """A submitted workflow: its processes, their states and data, and its own state."""

    def __init__(self) -> None:
        self.colonyname = ""
        self.processgraphid = ""
        self.initiatorid = ""
        self.initiatorname = ""
        self.rootprocessids: list[str] = []
        self.nodes: dict[str, ProcessNode] = {}
        """Processes by id, in the workflow's order."""
        self.state = _WAITING
        self.starttime: datetime | None = None
        """When an executor first took one of its processes."""
        self.endtime: datetime | None = None
        """When it reached SUCCESS, FAILED or CANCELLED."""
        self.removed = False
        self.origin = ""
        """The graph this one re-runs (``rerun_from_failed``), or empty."""
        # Derived from the nodes by the events' apply (never decided on), so that a
        # decision reads what it needs without walking every process of the graph:
        self._state_counts = [0] * len(ProcessState)
        """How many processes are in each state (indexed by the state's code)."""
        self._parents_left: dict[str, int] = {}
        """Per process still waiting for a parent, how many of its parents have not
        succeeded yet (a process whose parents all succeeded has no entry, so that the
        dict stays as small as what still waits)."""
        self._by_nodename: dict[str, str] = {}
        """Process ids by nodename."""
        self._shared: set[str] = set()
        """Which of ``_parents_left`` and ``_by_nodename`` are shared with a copy (or with
        the graph this one was copied from): the first change of one copies it."""

    def copy(self) -> ProcessGraph:
        """An independent copy (no pending events): the scalars are shared, the map of
        processes copied (one C-level dict copy, about 3 µs per thousand processes, the
        only part that grows with the graph), each process cloned the first time the
        copy takes it by id (:class:`_CopyOnWriteNodes`, which is how every change
        reaches a process), and the counts kept beside the processes (parents left,
        names) shared until one side changes them. A decision on a graph of a thousand
        processes thus clones the few processes it touches and reads those counts
        instead of walking the thousand."""
        duplicate = object.__new__(ProcessGraph)
        duplicate.__dict__.update(self.__dict__)
        duplicate._pending_events = []
        duplicate.rootprocessids = list(self.rootprocessids)
        duplicate.nodes = _CopyOnWriteNodes(self.nodes)
        duplicate._state_counts = list(self._state_counts)
        self._shared = {"_parents_left", "_by_nodename"}
        duplicate._shared = set(self._shared)
        return duplicate

    # --- submission ----------------------------------------------------------------------

    @classmethod
    def submit(
        cls,
        colonyname: str,
        workflow: Workflow,
        *,
        initiatorid: str,
        initiatorname: str,
        now: datetime,
        actor: str,
        command: bytes,
        ids: Iterator[str] | None = None,
    ) -> ProcessGraph:
        """A new graph of ``workflow`` in colony ``colonyname`` (GraphSubmitted).

        Every process is recorded at once, WAITING; those without dependencies are
        ready with ``in=[]``. ``ids`` supplies fresh ids, the graph's first then one per
        spec in order. By default the graph's id is a :func:`~.base.new_graph_id` and
        its processes' ids derive from it (:func:`~.base.new_process_id`), so the graph
        of a process follows from its id; other ids (tests give some, logs written
        before kept random ones) are *legacy* ids the engine indexes. Raises BadRequest,
        triggering nothing, for a workflow SEMANTICS.md refuses (see
        :func:`.submission.plan_workflow`); the engine checks that the colony exists and
        the initiator is a member.
        """
        planned = plan_workflow(colonyname, workflow)
        fresh = _checked_ids(ids if ids is not None else graph_ids(), 1 + len(planned))
        processgraphid = fresh[0]
        processids = {node.nodename: pid for node, pid in zip(planned, fresh[1:], strict=True)}
        processes = [
            SubmittedProcess(
                processid=processids[node.nodename],
                spec=node.spec,
                parents=[processids[parent] for parent in node.parents],
                children=[processids[child] for child in node.children],
            )
            for node in planned
        ]
        roots = [process for process in processes if not process["parents"]]
        return cls._create_from(
            GraphSubmitted(
                **cls._creation_header(
                    graph_aggregate_id(colonyname, processgraphid),
                    now=now,
                    actor=actor,
                    command=command,
                ),
                originator_topic=cls._topic(),
                ready=[
                    readiness(root["processid"], from_dict(root["spec"], FuncSpec), 1, [], now)
                    for root in roots
                ],
                graphstate=_WAITING,
                colonyname=colonyname,
                processgraphid=processgraphid,
                initiatorid=initiatorid,
                initiatorname=initiatorname,
                processes=processes,
                rootprocessids=[root["processid"] for root in roots],
            )
        )

    @classmethod
    def rerun_from_failed(
        cls,
        failed: ProcessGraph,
        *,
        initiatorid: str,
        initiatorname: str,
        now: datetime,
        actor: str,
        command: bytes,
        ids: Iterator[str] | None = None,
    ) -> ProcessGraph:
        """A new graph re-running ``failed`` from its failure (GraphRerun): its processes
        and links (dynamically added ones included) under new ids; the ones that
        succeeded keep their recorded output and are not run again; the failed node and
        everything depending on it run (new ids as :meth:`submit` makes them, or from
        ``ids``). Raises Conflict unless ``failed`` FAILED."""
        if failed.state != _FAILED:
            raise Conflict(
                f"process graph {failed.processgraphid} is {_state_name(failed.state)}: "
                "only a FAILED graph can be re-run from its failure"
            )
        old_ids = list(failed.nodes)
        fresh = _checked_ids(ids if ids is not None else graph_ids(), 1 + len(old_ids))
        renamed = dict(zip(old_ids, fresh[1:], strict=True))
        processes = []
        completed: dict[str, list[Any]] = {}
        for old_id, node in failed.nodes.items():
            processes.append(
                SubmittedProcess(
                    processid=renamed[old_id],
                    spec=to_dict(node.spec),
                    parents=[renamed[p] for p in node.parents],
                    children=[renamed[c] for c in node.children],
                )
            )
            if node.state == _SUCCESS:
                completed[renamed[old_id]] = clone(node.output)
        ready = []
        for old_id, node in failed.nodes.items():
            new_id_ = renamed[old_id]
            if new_id_ in completed:
                continue
            if all(renamed[p] in completed for p in node.parents):
                input = [v for p in node.parents for v in failed.nodes[p].output]
                ready.append(readiness(new_id_, node.spec, 1, input, now))
        return cls._create_from(
            GraphRerun(
                **cls._creation_header(
                    graph_aggregate_id(failed.colonyname, fresh[0]),
                    now=now,
                    actor=actor,
                    command=command,
                ),
                originator_topic=cls._topic(),
                ready=ready,
                graphstate=_RUNNING if completed else _WAITING,
                colonyname=failed.colonyname,
                processgraphid=fresh[0],
                initiatorid=initiatorid,
                initiatorname=initiatorname,
                processes=processes,
                rootprocessids=[renamed[r] for r in failed.rootprocessids],
                origin=failed.processgraphid,
                completed=completed,
            )
        )

    # --- executors' commands -------------------------------------------------------------

    def assign(
        self,
        processid: str,
        executor: Executor,
        attempt: int,
        *,
        now: datetime,
        actor: str,
        command: bytes,
    ) -> None:
        """``executor`` takes attempt ``attempt`` of a ready process (ProcessAssigned).

        The process becomes RUNNING, started ``now``, with an execution deadline when
        its spec has a ``maxexectime``; the graph becomes RUNNING.
        Raises NotFound for an unknown process (or a removed graph); Forbidden when the
        executor may not run it (not APPROVED, another colony, another executor type,
        not among ``executornames``); Conflict when the process is not ready or is at
        another attempt: a duplicate or stale claim.
        """
        node = self._process(processid)
        if (
            executor.colonyname != self.colonyname
            or executor.state != ExecutorState.APPROVED
            or not node.may_run_on(executor.executortype, executor.executorname)
        ):
            raise Forbidden(
                f"executor {executor.executorname!r} may not run {_describe(node)}: it needs "
                f"an APPROVED executor of type {node.spec.conditions.executortype!r}"
                + _names_clause(node)
                + f" in colony {self.colonyname!r}"
            )
        if not node.is_ready:
            state = "not ready" if node.state == _WAITING else _state_name(node.state)
            raise Conflict(f"{_describe(node)} cannot be taken: it is {state}")
        if attempt != node.attempt:
            raise Conflict(
                f"the claim for attempt {attempt} of {_describe(node)} is stale: "
                f"the process is at attempt {node.attempt}"
            )
        self._trigger(
            ProcessAssigned(
                **self._next_header(now=now, actor=actor, command=command),
                ready=[],
                graphstate=self._state_after({processid: _RUNNING}),
                processid=processid,
                executorid=executor.executorid,
                attempt=attempt,
                execdeadline=node.exec_deadline(now),
            )
        )

    def set_output(
        self,
        processid: str,
        executorid: str,
        output: list[Any],
        *,
        now: datetime,
        actor: str,
        command: bytes,
        attempt: int = 0,
    ) -> None:
        """Set the output of a running process (OutputSet).

        Raises NotFound for an unknown process; Forbidden unless ``executorid`` holds it.
        """
        self._held_process(processid, executorid, attempt)
        self._trigger(
            OutputSet(
                **self._next_header(now=now, actor=actor, command=command),
                ready=[],
                graphstate=self.state,
                processid=processid,
                executorid=executorid,
                output=clone(output),
            )
        )

    def close(
        self,
        processid: str,
        executorid: str,
        output: list[Any],
        *,
        now: datetime,
        actor: str,
        command: bytes,
        attempt: int = 0,
    ) -> None:
        """A running process succeeded (ProcessClosed).

        A non-empty ``output`` becomes its output; an empty one keeps what
        :meth:`set_output` stored (as ColonyOS). Each child whose parents have all
        succeeded becomes ready, its input the concatenation of its parents' outputs in
        parents order, unless the graph already FAILED or was CANCELLED.
        Raises NotFound for an unknown process; Forbidden unless ``executorid`` holds it
        (a process released by a timeout, cancelled or failed is no longer held).
        """
        node = self._held_process(processid, executorid, attempt)
        final_output = clone(output) if output else clone(node.output)
        graphstate = self._state_after({processid: _SUCCESS})
        ready = []
        if graphstate not in (_FAILED, _CANCELLED):
            ready = self._children_ready(node, final_output, now)
        self._trigger(
            ProcessClosed(
                **self._next_header(now=now, actor=actor, command=command),
                ready=ready,
                graphstate=graphstate,
                processid=processid,
                executorid=executorid,
                attempt=node.attempt,
                output=final_output,
            )
        )

    def fail(
        self,
        processid: str,
        executorid: str,
        errors: list[str],
        *,
        now: datetime,
        actor: str,
        command: bytes,
        attempt: int = 0,
    ) -> None:
        """A running process failed with ``errors`` (ProcessFailed).

        With retries left (``maxretries > 0`` not used up) and the graph neither FAILED
        nor CANCELLED, the process is ready again for its next attempt, with the same
        input. Otherwise it FAILS, the graph FAILS, and every process still WAITING is
        CANCELLED with a reason naming the failed node; succeeded processes keep their
        output and running ones keep running. Raises NotFound for an unknown process;
        Forbidden unless ``executorid`` holds it.
        """
        node = self._held_process(processid, executorid, attempt)
        self._trigger(
            self._attempt_failed(ProcessFailed, node, errors, now=now, actor=actor, command=command)
        )

    def add_child(
        self,
        parentprocessid: str,
        executorid: str,
        spec: FuncSpec,
        nodename: str,
        *,
        insert: bool,
        childprocessid: str = "",
        now: datetime,
        actor: str,
        command: bytes,
        processid: str | None = None,
    ) -> str:
        """The executor holding ``parentprocessid`` adds a process named ``nodename``
        running ``spec`` as its child (ChildAdded); returns the new process's id.

        ``insert=True``: the new process takes the parent's place among the parents of
        each of the parent's children, and becomes the parent's only child
        (``childprocessid`` is ignored). ``insert=False``: it is added to the parent's
        children; a ``childprocessid`` also waits for it (keeping its other parents).
        Raises NotFound for an unknown parent or child; Forbidden unless ``executorid``
        holds the (RUNNING) parent; BadRequest for a bad spec; Conflict when the
        nodename is taken in the graph or the child cannot wait any more (not WAITING
        for its parents).
        """
        parent = self._held_process(parentprocessid, executorid)
        named = _renamed(spec, nodename)
        check_spec(self.colonyname, named, f"child {nodename!r}")
        if self.find_by_nodename(named.nodename) is not None:
            raise Conflict(f"nodename {named.nodename!r} is already used in this graph")
        new = processid if processid is not None else new_process_id(self.processgraphid)
        if new in self.nodes:
            raise Conflict(f"process {new} is already in process graph {self.processgraphid}")
        children = self._links_of_new(parent, insert, childprocessid)
        self._trigger(
            ChildAdded(
                **self._next_header(now=now, actor=actor, command=command),
                ready=[],
                graphstate=self.state,
                parentprocessid=parentprocessid,
                child=SubmittedProcess(
                    processid=new,
                    spec=to_dict(named),
                    parents=[parentprocessid],
                    children=children,
                ),
                insert=insert,
            )
        )
        return new

    def add_children(
        self,
        parentprocessid: str,
        executorid: str,
        children: list[tuple[FuncSpec, str]],
        *,
        insert: bool,
        childprocessid: str = "",
        now: datetime,
        actor: str,
        command: bytes,
        processids: list[str] | None = None,
    ) -> list[str]:
        """The executor holding ``parentprocessid`` adds several processes at once, each
        ``(spec, nodename)`` of ``children`` in order, as children of the parent
        (ChildrenAdded: one event, all or nothing); returns their ids, in order.

        What :meth:`add_child` does for one, for all of them together:
        ``insert=True``: together they take the parent's place among the parents of
        each of the parent's children (each of those waits for all of them, where it
        waited for the parent), and they become the parent's only children
        (``childprocessid`` is ignored): a map adding its pairs before the reduce.
        ``insert=False``: they are added to the parent's children; a
        ``childprocessid`` also waits for every one of them. With one child, this is
        exactly :meth:`add_child`. ``processids`` gives their ids (default: fresh ones).
        Raises as :meth:`add_child` does, for the first child that breaks a rule
        (nodenames must differ from each other too), and BadRequest for no children;
        nothing is added then.
        """
        if not children:
            raise BadRequest("add_children needs at least one child")
        parent = self._held_process(parentprocessid, executorid)
        links = self._links_of_new(parent, insert, childprocessid)
        fresh = processids or [new_process_id(self.processgraphid) for _ in children]
        if len(fresh) != len(children) or len(set(fresh)) != len(fresh):
            raise ValueError("add_children needs one distinct id per child")
        added: list[SubmittedProcess] = []
        names: set[str] = set()
        for index, ((spec, nodename), new) in enumerate(zip(children, fresh, strict=True)):
            named = _renamed(spec, nodename)
            check_spec(self.colonyname, named, f"children[{index}] {nodename!r}")
            if named.nodename in names or self.find_by_nodename(named.nodename) is not None:
                raise Conflict(f"nodename {named.nodename!r} is already used in this graph")
            if new in self.nodes:
                raise Conflict(f"process {new} is already in process graph {self.processgraphid}")
            names.add(named.nodename)
            added.append(
                SubmittedProcess(
                    processid=new, spec=to_dict(named), parents=[parentprocessid], children=links
                )
            )
        self._trigger(
            ChildrenAdded(
                **self._next_header(now=now, actor=actor, command=command),
                ready=[],
                graphstate=self.state,
                parentprocessid=parentprocessid,
                children=added,
                insert=insert,
            )
        )
        return fresh

    def add_attribute(
        self,
        processid: str,
        executorid: str,
        key: str,
        value: str,
        *,
        now: datetime,
        actor: str,
        command: bytes,
    ) -> str:
        """The executor holding a process attaches ``key``=``value`` to it
        (AttributeAdded); returns the attribute's id. Raises NotFound for an unknown
        process, Forbidden unless ``executorid`` holds it, BadRequest for an empty key."""
        self._held_process(processid, executorid)
        if not key:
            raise BadRequest("the attribute's key is empty")
        attributeid = new_id()
        self._trigger(
            AttributeAdded(
                **self._next_header(now=now, actor=actor, command=command),
                ready=[],
                graphstate=self.state,
                processid=processid,
                attributeid=attributeid,
                key=key,
                value=value,
            )
        )
        return attributeid

    def add_log(
        self,
        processid: str,
        executorid: str,
        executorname: str,
        message: str,
        *,
        now: datetime,
        actor: str,
        command: bytes,
    ) -> None:
        """The executor holding a process logs ``message`` (LogAdded). Raises NotFound
        for an unknown process, Forbidden unless ``executorid`` holds it."""
        self._held_process(processid, executorid)
        self._trigger(
            LogAdded(
                **self._next_header(now=now, actor=actor, command=command),
                ready=[],
                graphstate=self.state,
                processid=processid,
                executorname=executorname,
                message=message,
            )
        )

    # --- the engine's commands -----------------------------------------------------------

    def expire_exec(
        self, processid: str, attempt: int, *, now: datetime, actor: str, command: bytes
    ) -> None:
        """Attempt ``attempt`` of a process ran out of execution time (ExecutionTimedOut).

        The executor loses the process; the retry rule of :meth:`fail` applies, with
        the error "maximum execution time exceeded". Raises NotFound for an unknown
        process; Conflict when that attempt is no longer running or its deadline has not
        come (a stale timer).
        """
        node = self._process(processid)
        if not node.is_running or node.attempt != attempt:
            raise Conflict(f"attempt {attempt} of {_describe(node)} is not running")
        if node.execdeadline is None or now < node.execdeadline:
            raise Conflict(f"attempt {attempt} of {_describe(node)} has time left")
        self._trigger(
            self._attempt_failed(
                ExecutionTimedOut,
                node,
                [EXEC_TIMEOUT_ERROR],
                now=now,
                actor=actor,
                command=command,
            )
        )

    def expire_wait(self, processid: str, *, now: datetime, actor: str, command: bytes) -> None:
        """A ready process waited past its deadline without being taken (WaitTimedOut).

        It FAILS with "maximum waiting time exceeded", the graph FAILS and every process
        still WAITING is CANCELLED. Raises NotFound for an unknown process; Conflict when
        it is not waiting to be taken or its deadline has not come (a stale timer).
        """
        node = self._process(processid)
        if not node.is_ready:
            raise Conflict(f"{_describe(node)} is not waiting for an executor")
        if node.waitdeadline is None or now < node.waitdeadline:
            raise Conflict(f"{_describe(node)} has time left to be taken")
        self._trigger(
            WaitTimedOut(
                **self._next_header(now=now, actor=actor, command=command),
                ready=[],
                graphstate=_FAILED,
                processid=processid,
                attempt=node.attempt,
                errors=[WAIT_TIMEOUT_ERROR],
                cancelled=self._waiting_except(processid),
                cancelreason=_failure_reason(node),
            )
        )

    # --- the whole graph -----------------------------------------------------------------

    def cancel(self, *, now: datetime, actor: str, command: bytes) -> None:
        """Cancel the graph (GraphCancelled): its WAITING and RUNNING processes are
        CANCELLED, and so is the graph. Raises NotFound if it was removed, Conflict if it
        already ended (SUCCESS, FAILED or CANCELLED)."""
        self._check_not_removed()
        if self.state in (_SUCCESS, _FAILED, _CANCELLED):
            raise Conflict(
                f"process graph {self.processgraphid} already ended: it is "
                f"{_state_name(self.state)}"
            )
        cancelled = [pid for pid, node in self.nodes.items() if node.state in (_WAITING, _RUNNING)]
        self._trigger(
            GraphCancelled(
                **self._next_header(now=now, actor=actor, command=command),
                ready=[],
                graphstate=_CANCELLED,
                cancelled=cancelled,
                cancelreason="cancelled: the process graph was cancelled",
            )
        )

    def remove(self, *, now: datetime, actor: str, command: bytes) -> None:
        """Record that the graph is removed (GraphRemoved); the log keeps its history.
        Raises NotFound if it was already removed, Conflict while it is RUNNING."""
        self._check_not_removed()
        if self.state == _RUNNING:
            raise Conflict(f"process graph {self.processgraphid} is RUNNING: cancel it first")
        self._trigger(
            GraphRemoved(
                **self._next_header(now=now, actor=actor, command=command),
                ready=[],
                graphstate=self.state,
            )
        )

    # --- queries -------------------------------------------------------------------------

    @property
    def submissiontime(self) -> datetime:
        """When the workflow was submitted."""
        return self.created_on

    @property
    def processids(self) -> list[str]:
        """Ids of its processes, in the workflow's order."""
        return list(self.nodes)

    def process(self, processid: str) -> ProcessNode:
        """The process with this id (the aggregate's own object: read it, never change
        it; on a copy it is not cloned). Raises NotFound if the graph has no such
        process."""
        try:
            return self._look_at(processid)
        except KeyError:
            raise NotFound(
                f"process {processid} is not in process graph {self.processgraphid}"
            ) from None

    def find_by_nodename(self, nodename: str) -> ProcessNode | None:
        """The process named ``nodename``, or None (read it, never change it)."""
        processid = self._by_nodename.get(nodename)
        return None if processid is None else self._look_at(processid)

    def count_in(self, *states: int) -> int:
        """How many of its processes are in one of ``states`` (without walking them)."""
        return sum(self._state_counts[state] for state in set(states))

    def ready_processes(self) -> list[ReadyProcess]:
        """The processes ready to be taken, in the order to offer them: higher priority
        first, then earlier readiness. Empty once the graph is removed."""
        if self.removed:
            return []
        ready = [node.current_readiness() for node in self.nodes.values() if node.is_ready]
        return sorted(ready, key=lambda work: (-work["priority"], work["readytime"]))

    def deadlines(self) -> list[Deadline]:
        """The timers to arm now: wait deadlines of ready processes, execution deadlines
        of running ones. Empty once the graph is removed."""
        if self.removed:
            return []
        timers: list[Deadline] = []
        for node in self.nodes.values():
            if node.is_ready and node.waitdeadline is not None:
                timers.append(
                    Deadline(
                        processid=node.processid,
                        attempt=node.attempt,
                        kind="wait",
                        at=node.waitdeadline,
                    )
                )
            elif node.is_running and node.execdeadline is not None:
                timers.append(
                    Deadline(
                        processid=node.processid,
                        attempt=node.attempt,
                        kind="exec",
                        at=node.execdeadline,
                    )
                )
        return timers

    def process_model(self, processid: str, shared: bool = False) -> Process:
        """The process as clients see it (CLIENT_API.md). Raises NotFound if unknown.

        Its spec, input and output are copies, unless ``shared``: then they are the
        graph's own, for a caller that encodes the model at once and never changes it
        (a reply; the copies cost more than the encoding)."""
        node = self.process(processid)
        spec = node.spec if shared else clone_as(node.spec, FuncSpec)
        input = node.input if shared else clone(node.input)
        output = node.output if shared else clone(node.output)
        return Process(
            processid=node.processid,
            initiatorid=self.initiatorid,
            initiatorname=self.initiatorname,
            assignedexecutorid=node.assignedexecutorid,
            isassigned=bool(node.assignedexecutorid),
            state=node.state,
            prioritytime=_prioritytime(node),
            submissiontime=node.submissiontime,
            starttime=node.starttime,
            endtime=node.endtime,
            waitdeadline=node.waitdeadline,
            execdeadline=node.execdeadline,
            retries=node.retries,
            spec=spec,
            waitforparents=bool(node.parents) and node.readytime is None,
            parents=list(node.parents),
            children=list(node.children),
            processgraphid=self.processgraphid,
            input=input,
            output=output,
            errors=list(node.errors),
            attributes=[
                Attribute(
                    attributeid=attribute["attributeid"],
                    targetid=node.processid,
                    targetcolonyname=self.colonyname,
                    targetprocessgraphid=self.processgraphid,
                    attributetype=1,
                    key=attribute["key"],
                    value=attribute["value"],
                )
                for attribute in node.attributes
            ],
        )

    def to_model(self) -> ProcessGraphModel:
        """The graph as clients see it (CLIENT_API.md)."""
        return ProcessGraphModel(
            processgraphid=self.processgraphid,
            initiatorid=self.initiatorid,
            initiatorname=self.initiatorname,
            colonyname=self.colonyname,
            rootprocessids=list(self.rootprocessids),
            state=self.state,
            submissiontime=self.submissiontime,
            starttime=self.starttime,
            endtime=self.endtime,
            processids=self.processids,
        )

    # --- used by the events' apply -------------------------------------------------------

    def add_process(self, node: ProcessNode) -> None:
        """Adds a new process (WAITING), keeping the counts: its parents not succeeded
        yet. The processes that now wait for it count it themselves
        (:meth:`parent_added`)."""
        self.nodes[node.processid] = node
        self._own("_by_nodename")
        self._by_nodename[node.nodename] = node.processid
        self._state_counts[node.state] += 1
        left = sum(1 for pid in node.parents if self._look_at(pid).state != _SUCCESS)
        if left:
            self._own("_parents_left")
            self._parents_left[node.processid] = left

    def parent_added(self, processid: str, count: int = 1) -> None:
        """Process ``processid`` waits for ``count`` more (new, so not succeeded)
        parents."""
        self._own("_parents_left")
        self._parents_left[processid] = self._parents_left.get(processid, 0) + count

    def states_of(self, processids: Iterable[str]) -> list[tuple[str, int]]:
        """The current state of each of these processes (before an event changes them:
        hand the result to :meth:`recount` after)."""
        return [(pid, self._look_at(pid).state) for pid in processids]

    def recount(self, before: Iterable[tuple[str, int]]) -> None:
        """Updates the counts for the processes whose states were ``before``: the
        states they left and reached, and for each that succeeded, its children's
        parents left."""
        for processid, old in before:
            node = self._look_at(processid)
            if node.state == old:
                continue
            self._state_counts[old] -= 1
            self._state_counts[node.state] += 1
            if node.state == _SUCCESS and node.children:
                self._own("_parents_left")
                for child in node.children:
                    left = self._parents_left.pop(child) - 1
                    if left:
                        self._parents_left[child] = left

    def index_processes(self) -> None:
        """Computes the counts from every process (a graph just created)."""
        self._state_counts = [0] * len(ProcessState)
        self._by_nodename = {}
        for node in self.nodes.values():
            self._state_counts[node.state] += 1
            self._by_nodename[node.nodename] = node.processid
        self._parents_left = {}
        for node in self.nodes.values():
            left = sum(1 for pid in node.parents if self.nodes[pid].state != _SUCCESS)
            if left:
                self._parents_left[node.processid] = left
        self._shared = set()

    def _own(self, index: str) -> None:
        """Makes ``index`` (``"_parents_left"`` or ``"_by_nodename"``) this graph's own
        before it changes it (see :meth:`copy`)."""
        if index in self._shared:
            setattr(self, index, dict(getattr(self, index)))
            self._shared.discard(index)

    def cancel_processes(self, processids: Iterable[str], reason: str, now: datetime) -> None:
        """CANCEL these processes at ``now`` because of ``reason``."""
        for processid in processids:
            self.nodes[processid].cancel(reason, now)

    # --- helpers -------------------------------------------------------------------------

    def _check_not_removed(self) -> None:
        if self.removed:
            raise NotFound(f"process graph {self.processgraphid} was removed")

    def _process(self, processid: str) -> ProcessNode:
        """The process, for a command: NotFound if unknown or the graph was removed."""
        self._check_not_removed()
        return self.process(processid)

    def _held_process(self, processid: str, executorid: str, attempt: int = 0) -> ProcessNode:
        """The process, if ``executorid`` holds it (it is RUNNING, assigned to it) and,
        when ``attempt`` is not 0, for that attempt: a report of an attempt that timed out
        must not end the next one, even when the same executor took that one."""
        node = self._process(processid)
        if attempt and node.attempt != attempt:
            raise Forbidden(
                f"{_describe(node)} is at attempt {node.attempt}: "
                f"the report for attempt {attempt} came too late"
            )
        if not node.is_running:
            raise Forbidden(
                f"{_describe(node)} is {_state_name(node.state)}: "
                f"executor {executorid} does not hold it"
            )
        if node.assignedexecutorid != executorid:
            raise Forbidden(f"{_describe(node)} is held by another executor, not {executorid}")
        return node

    def _links_of_new(self, parent: ProcessNode, insert: bool, childprocessid: str) -> list[str]:
        """The processes that will wait for a process added under ``parent``: its
        children when inserting, else ``[childprocessid]`` (which must still wait for
        its parents: NotFound, Conflict) or none."""
        if insert:
            return list(parent.children)
        if not childprocessid:
            return []
        waiting = self._process(childprocessid)
        if waiting.state != _WAITING or waiting.readytime is not None:
            raise Conflict(
                f"{_describe(waiting)} cannot wait for a new process: it is "
                + ("ready" if waiting.state == _WAITING else _state_name(waiting.state))
            )
        return [childprocessid]

    def _state_after(self, changes: Mapping[str, int]) -> int:
        """The graph's state once the processes in ``changes`` are in their new state
        (from the counts: O(changes), not O(processes))."""
        counts = list(self._state_counts)
        for processid, state in changes.items():
            counts[self._look_at(processid).state] -= 1
            counts[state] += 1
        return graph_state(state for state, count in enumerate(counts) if count)

    def _waiting_except(self, processid: str) -> list[str]:
        return [
            pid for pid, node in self.nodes.items() if node.state == _WAITING and pid != processid
        ]

    def _look_at(self, processid: str) -> ProcessNode:
        """The process ``processid`` to read, never to change: on a copied graph it is
        not cloned (``self.nodes[processid]`` clones it, which made every close of a
        map's child clone all its siblings when checking the reduce's parents)."""
        return dict.__getitem__(self.nodes, processid)

    def _children_ready(
        self, node: ProcessNode, output: list[Any], now: datetime
    ) -> list[ReadyProcess]:
        """The children of ``node`` that become ready when it succeeds with ``output``:
        those whose only parent left is ``node`` (from the counts, so a close under a
        reduce of a thousand parents does not look at the thousand until the last)."""
        outputs = {node.processid: output}
        ready = []
        for child in (self._look_at(pid) for pid in node.children):
            if child.state != _WAITING or child.readytime is not None:
                continue
            if self._parents_left.get(child.processid) == 1:  # node itself, not SUCCESS yet
                parents = [self._look_at(pid) for pid in child.parents]
                input = [value for p in parents for value in outputs.get(p.processid, p.output)]
                ready.append(child.readiness(child.attempt, input, now))
        return ready

    def _attempt_failed(
        self,
        event_class: type[AttemptFailed],
        node: ProcessNode,
        errors: list[str],
        *,
        now: datetime,
        actor: str,
        command: bytes,
    ) -> AttemptFailed:
        """The event for a failed attempt of ``node``: a retry when allowed, else the
        process's and the graph's failure."""
        retried = node.retries_left() and self.state not in (_FAILED, _CANCELLED)
        if retried:
            ready = [node.readiness(node.attempt + 1, node.input, now)]
            cancelled: list[str] = []
            graphstate = self._state_after({node.processid: _WAITING})
        else:
            ready = []
            cancelled = self._waiting_except(node.processid)
            graphstate = _FAILED
        return event_class(
            **self._next_header(now=now, actor=actor, command=command),
            ready=ready,
            graphstate=graphstate,
            processid=node.processid,
            executorid=node.assignedexecutorid,
            attempt=node.attempt,
            errors=list(errors),
            retried=retried,
            cancelled=cancelled,
            cancelreason=_failure_reason(node) if cancelled else "",
        )


def _renamed(spec: FuncSpec, nodename: str) -> FuncSpec:
    """A copy of ``spec`` named ``nodename`` (BadRequest if the name is empty)."""
    if not nodename:
        raise BadRequest("the new process's nodename is empty")
    copied = from_dict(to_dict(spec), FuncSpec)
    copied.nodename = nodename
    return copied


def _checked_ids(ids: Iterator[str], count: int) -> list[str]:
    """``count`` distinct ids taken from ``ids``. Raises ValueError (a programming error:
    ids come from the engine) for too few, malformed or repeated ids."""
    taken = []
    for _ in range(count):
        value = next(ids, None)
        if value is None:
            raise ValueError(f"ids ran out: {count} are needed")
        if not is_id(value):
            raise ValueError(f"{value!r} is not an id (64 lowercase hex characters)")
        taken.append(value)
    if len(set(taken)) != count:
        raise ValueError("ids repeat")
    return taken


def graph_ids(seed: str | None = None) -> Iterator[str]:
    """A new graph's id then ids for its processes, each telling the graph
    (:func:`~.base.new_graph_id`, :func:`~.base.new_process_id`); the graph's id is
    made from ``seed`` when given (the engine's: the replay key of the command)."""
    processgraphid = new_graph_id(seed)
    yield processgraphid
    while True:
        yield new_process_id(processgraphid)


def _describe(node: ProcessNode) -> str:
    return f"process {node.processid} ({node.nodename})"


def _state_name(state: int) -> str:
    return ProcessState(state).name


def _names_clause(node: ProcessNode) -> str:
    names = node.spec.conditions.executornames
    return f" named one of {names}" if names else ""


def _failure_reason(node: ProcessNode) -> str:
    return f"cancelled: process {node.nodename!r} ({node.processid}) failed"


def _prioritytime(node: ProcessNode) -> int:
    """ColonyOS' ordering key (unix ns, smaller first): the time the process became
    ready (or was submitted, until then) minus one day per priority point."""
    since = node.readytime if node.readytime is not None else node.submissiontime
    return (since - _EPOCH) // timedelta(microseconds=1) * 1000 - node.spec.priority * _DAY_NS
