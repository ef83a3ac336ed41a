"""The wire protocol between clients, executors and the engine: subjects, ops and bodies.

Commands
    A client seals a command with :func:`colonies_es.crypto.seal` (op name, body, nonce,
    time stamp, signature) and sends it as a NATS request to ``colonies.api.<op>``. The
    engine serves these subjects as a ``nats.micro`` service in the queue group
    ``colonies-engine``. The reply to a success is the JSON of the result (a model, a list
    of models, or ``{}``); the reply to a refusal carries the micro error headers
    ``Nats-Service-Error-Code`` (the status: 400, 403, 404, 409, 500) and
    ``Nats-Service-Error`` (one readable line), and an empty body.

Read-your-writes and retries
    Several engines may serve the queue group; each follows the event log. Every reply
    carries the header ``Colonies-Sequence``: the stream sequence it wrote, or up to
    which the answering engine had applied the log. A client sends the highest sequence
    it has seen in ``Colonies-After``; an engine that has not applied the log that far
    waits (bounded, then 503) before deciding. A command retried with the same signed
    bytes gets its original reply, whichever engine answers.

Replica affinity
    Each engine replica also answers ``colonies.api.replica.<replica>.<op>``, the same
    ops for itself alone, and names itself in the header ``Colonies-Replica`` of its
    replies and of the work tickets it publishes. A client sends its next command to
    the replica that named itself last (the one that wrote what the client acts on
    next: the close goes to the replica that assigned the process, which also decides
    the claim the close carries; an executor's held claims go to the replica that
    answered its last command, which learns of work other replicas make ready through
    its follower), with ``Colonies-After`` set to
    the highest sequence it saw from *other* replicas: that replica has everything it
    told the client itself, so nothing is waited for, and two replicas do not race for
    one graph. When that replica does not answer (no responders, or no reply in time)
    the client forgets it and sends the same signed bytes to the queue group, with the
    highest sequence it has seen. Affinity is an optimisation: every replica can still
    answer every command.

Work
    An executor takes work with the signed ``claim`` command: the engine assigns, at that
    moment, the best ready process the executor may take (highest priority, then earliest
    readiness, ``executornames`` respected), recording the assignment with optimistic
    concurrency on the graph, so that a process is assigned once per attempt whatever the
    number of claims and engine replicas racing for it. A claim that finds nothing for
    its caller answers 404 (:data:`NOTHING_READY`) unless it says it may ``wait``: then
    the replica that received it holds it (engine/held.py) up to that many seconds (at
    most :data:`MAX_CLAIM_WAIT`) and answers it with the first such process that becomes
    ready meanwhile, whichever replica's event made it ready (each follows the log).
    Before assigning work that came while it held the claim, the engine asks the
    claimer's connection, on the claim's ``alive`` subject in the claimer's own inbox,
    whether the claim still waits ("1"); a caller that gave up ("0") or is gone (no
    responder) is given nothing. ``assign`` is a loop of such claims. One round trip per
    process for an idle executor: the reply to its claim is the assignment.

    An executor does not go back to claiming: its ``close`` carries a second sealed
    command, a ``claim`` (:attr:`CloseProcess.claim`), which the engine decides as its own
    command (signature, role, replay key, event) once the close succeeded; the reply is a
    :class:`NextProcess`, the next assignment or none. That claim may ``wait`` (and name
    its ``alive`` subject) like any other: the engine then holds it, and the close's
    reply, until work comes or the wait is over, so an idle executor too sends one
    request per process. What the close itself causes does not wait for its claim: the
    engine publishes the close's end notification and tickets, and answers the
    ``wait_process`` requests held for the closed process, before it decides the claim
    (whose signature it checks while the close's event is being appended).

    Work tickets remain for clients that pull (the ColonyOS gateway's long poll): for
    every process that becomes ready the engine publishes a :class:`WorkTicket` to the
    JetStream stream ``COLONIES_WORK`` on ``colonies.work.<colony>.<executortype>``, with
    the ``Colonies-Sequence`` of the event that made the work ready; a ticket says "there
    is work for your type", not which process. Executors of a type share the durable
    pull consumer :func:`work_consumer`. The engine keeps as many tickets waiting as there
    are ready processes: it re-issues missing ones and removes the surplus left by work
    that was claimed without a ticket.

Prefetch
    A busy executor may claim its next process while its function runs, so that it
    starts as soon as the function ends: a claim with ``prefetch`` (alone, or carried by
    a close). The engine never holds it and never makes it queue behind another claim:
    it assigns the best ready process that no claim is assigning, unless a claim this
    replica holds waits and may take that process (an idle executor is served first;
    work a held claim was woken for counts as being assigned from the moment the claim
    wakes, through the ``alive`` question); else 404 (:data:`NOTHING_READY`). Its reply
    is a :class:`NextProcess` whose ``more`` says how many processes of the claimer's
    type are still ready beyond what the claims held here will take; a close's reply
    carries the same hint for the claim it carried. An executor claims ahead only while
    that hint is positive, so an executor that keeps up with the work sends no prefetch
    claims. A prefetched process is assigned (RUNNING, its ``maxexectime`` counting) from
    the moment of its claim: it is the executor's to run, or to give up by failing it.
    Each replica applies the rule to the claims it holds; a prefetch claim on one replica
    may take a process an idle executor waits for on another (the same race two held
    claims on two replicas run, decided by the graph's optimistic concurrency).

Notifications
    When a process ends (SUCCESS, FAILED, CANCELLED) the engine publishes its id on
    ``colonies.ended.<colony>.<processid>`` (core NATS, no persistence; any client may
    listen, so it carries no output). ``wait`` does not use it: it sends ``wait_process``
    (:class:`WaitProcess`), which the engine holds until it applies the event that ends
    the process and answers with the process (outputs included, to a member of its
    colony only): one round trip.
"""

from __future__ import annotations

import re

import msgspec

from colonies_es.models import Colony, Executor, FuncSpec, Process, Workflow

API_PREFIX = "colonies.api"
ENGINE_QUEUE_GROUP = "colonies-engine"
WORK_STREAM = "COLONIES_WORK"
WORK_PREFIX = "colonies.work"
ENDED_PREFIX = "colonies.ended"
SEQUENCE_HEADER = "Colonies-Sequence"
"""Reply (and work ticket) header: the stream sequence the reply reflects."""
AFTER_HEADER = "Colonies-After"
"""Command header: the highest stream sequence the client has seen (sent to one replica
directly: the highest it has seen from the others)."""
REPLICA_HEADER = "Colonies-Replica"
"""Reply (and work ticket) header: the engine replica that answered (published)."""
REPLICA_PREFIX = f"{API_PREFIX}.replica"

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""Colony names and executor types: they become NATS subject tokens and consumer names."""


def api_subject(op: str) -> str:
    return f"{API_PREFIX}.{op}"


def replica_subject(replica: str, op: str) -> str:
    """Where one engine replica alone answers ``op`` (see "Replica affinity")."""
    return f"{REPLICA_PREFIX}.{replica}.{op}"


def work_subject(colonyname: str, executortype: str) -> str:
    return f"{WORK_PREFIX}.{colonyname}.{executortype}"


def work_consumer(colonyname: str, executortype: str) -> str:
    """The durable consumer shared by the executors of one type in one colony."""
    return f"work_{colonyname}_{executortype}"


def ended_subject(colonyname: str, processid: str) -> str:
    return f"{ENDED_PREFIX}.{colonyname}.{processid}"


def alive_subject(inbox: str, token: str) -> str:
    """Where a client answers whether its claim ``token`` still waits: under its own
    inbox (``inbox`` is a fresh inbox of its connection), so only it may listen there."""
    return f"{inbox}.alive.{token}"


NOTHING_READY = "no process ready"
"""How the engine's 404 to a claim begins when nothing is ready for the claimer (the 404
that ``assign`` waits through and claims again)."""

MAX_CLAIM_WAIT = 10.0
"""Seconds an engine holds a claim at most (:attr:`Claim.wait`); a longer ``assign``
sends claims one after another."""


class WorkTicket(msgspec.Struct, frozen=True):
    """There is ready work for executors of this type in this colony: come and claim it."""

    colonyname: str
    executortype: str


# ------------------------------------------------------------------ command bodies
# One Struct per op; the op name is the key of OPS. Field names follow pycolonies.


class AddColony(msgspec.Struct, kw_only=True):
    colony: Colony


class ColonyRef(msgspec.Struct, kw_only=True):
    colonyname: str


class AddExecutor(msgspec.Struct, kw_only=True):
    executor: Executor


class ExecutorRef(msgspec.Struct, kw_only=True):
    colonyname: str
    executorname: str


class AddUser(msgspec.Struct, kw_only=True):
    colonyname: str
    userid: str
    username: str


class SubmitFuncSpec(msgspec.Struct, kw_only=True):
    spec: FuncSpec


class SubmitWorkflow(msgspec.Struct, kw_only=True):
    workflow: Workflow


class Claim(msgspec.Struct, kw_only=True):
    """Assign me the best ready process of my type ("Work" above)."""

    colonyname: str
    wait: float = 0.0
    """Seconds the engine may hold the claim while nothing is ready for the caller (a
    long poll, at most :data:`MAX_CLAIM_WAIT`); 0: answer at once."""
    alive: str = ""
    """Where the engine asks, before it assigns work that came while it held the claim,
    whether the caller still wants it (:func:`alive_subject`); empty: it does not ask."""
    prefetch: bool = False
    """The caller is busy and claims work to start when it is done ("Prefetch"): never
    held (``wait`` is ignored), answered with a :class:`NextProcess`, and given a process
    only when no claim the engine holds may take it."""


class CloseProcess(msgspec.Struct, kw_only=True):
    processid: str
    out: list[object] = msgspec.field(default_factory=list)
    attempt: int = 0
    """The attempt the report is for; 0 (ColonyOS clients): whichever the caller holds."""
    claim: bytes = b""
    """A ``claim`` command sealed by the same caller, decided once the close is: the
    reply is then a :class:`NextProcess` (empty: the reply is ``{}``)."""


class FailProcess(msgspec.Struct, kw_only=True):
    processid: str
    errors: list[str] = msgspec.field(default_factory=list)
    attempt: int = 0
    """As :attr:`CloseProcess.attempt`."""


class NextProcess(msgspec.Struct, kw_only=True):
    """The reply to a close that carried a claim, and to a prefetch claim: the process
    assigned to the caller by that claim, or None when nothing was ready for it
    (``refused`` says why when a carried claim was refused for another reason)."""

    next: Process | None = None
    refused: str = ""
    more: int = 0
    """A hint: how many processes of the caller's type were still ready, beyond what
    the claims the deciding engine held would take, once this one was assigned (0 when
    none, or not counted)."""


class SetOutput(msgspec.Struct, kw_only=True):
    processid: str
    out: list[object] = msgspec.field(default_factory=list)
    attempt: int = 0
    """As :attr:`CloseProcess.attempt`."""


class ProcessRef(msgspec.Struct, kw_only=True):
    processid: str


class FindProcess(msgspec.Struct, kw_only=True):
    """The first of ``processids`` whose spec's nodename is ``nodename`` (pycolonies'
    ``find_process``, which reads each process in turn), in one request."""

    nodename: str
    processids: list[str]


class WaitProcess(msgspec.Struct, kw_only=True):
    """The process once it has ended, or as it is after ``wait`` seconds (at most
    :data:`MAX_CLAIM_WAIT`): the engine holds the request meanwhile."""

    processid: str
    wait: float = 0.0


class ListQuery(msgspec.Struct, kw_only=True):
    colonyname: str
    count: int = 100
    state: int | None = None


FORWARDED_LIST = "forwarded_list"
"""The read-model query by which the engine forwards the listings it does not answer
from memory (:mod:`colonies_es.engine.read_model`)."""
FORWARDED_LIST_SUBJECT = f"colonies.q.{FORWARDED_LIST}"
"""Its subject, among the read model's queries (``colonies.q.<op>``)."""


class ForwardedList(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A listing the engine forwards to the read model for ``caller``, whom the engine
    has found a member of the colony. Not signed by the caller: sealed with the log's
    seal key (when there is one), which the projector checks."""

    what: str
    """``"graphs"`` or ``"processes"``."""
    colonyname: str
    state: int | None
    count: int
    caller: str
    after: int
    """The answer must reflect the log up to this stream sequence (what the engine has
    applied or written)."""
    wait: float
    """Seconds the projector may wait for its view to get there."""


class RemoveAll(msgspec.Struct, kw_only=True):
    colonyname: str
    state: int | None = None


class AddLog(msgspec.Struct, kw_only=True):
    processid: str
    message: str


class GetLogs(msgspec.Struct, kw_only=True):
    colonyname: str
    processid: str
    count: int = 100
    since: int = 0


class AddAttribute(msgspec.Struct, kw_only=True):
    processid: str
    key: str
    value: str


class GraphRef(msgspec.Struct, kw_only=True):
    processgraphid: str


class AddChild(msgspec.Struct, kw_only=True):
    processgraphid: str
    parentprocessid: str
    childprocessid: str = ""
    spec: FuncSpec
    nodename: str
    insert: bool = False


class AddChildren(msgspec.Struct, kw_only=True):
    """Several children of a running parent in one command (``add_children``): the
    i-th runs ``specs[i]`` as ``nodenames[i]``; ``insert`` and ``childprocessid`` as in
    :class:`AddChild`, for all of them together."""

    processgraphid: str
    parentprocessid: str
    childprocessid: str = ""
    specs: list[FuncSpec]
    nodenames: list[str]
    insert: bool = False


class Empty(msgspec.Struct):
    pass


OPS: dict[str, type[msgspec.Struct]] = {
    "add_colony": AddColony,
    "del_colony": ColonyRef,
    "list_colonies": Empty,
    "get_colony": ColonyRef,
    "stats": ColonyRef,
    "add_executor": AddExecutor,
    "approve_executor": ExecutorRef,
    "reject_executor": ExecutorRef,
    "remove_executor": ExecutorRef,
    "list_executors": ColonyRef,
    "get_executor": ExecutorRef,
    "whoami": ColonyRef,
    "add_user": AddUser,
    "submit_func_spec": SubmitFuncSpec,
    "submit_workflow": SubmitWorkflow,
    "claim": Claim,
    "close": CloseProcess,
    "fail": FailProcess,
    "set_output": SetOutput,
    "get_process": ProcessRef,
    "find_process": FindProcess,
    "wait_process": WaitProcess,
    "list_processes": ListQuery,
    "remove_process": ProcessRef,
    "remove_all_processes": RemoveAll,
    "add_log": AddLog,
    "get_process_log": GetLogs,
    "add_attribute": AddAttribute,
    "get_processgraph": GraphRef,
    "get_processgraphs": ListQuery,
    "remove_processgraph": GraphRef,
    "remove_all_processgraphs": RemoveAll,
    "cancel_processgraph": GraphRef,
    "rerun_processgraph": GraphRef,
    "add_child": AddChild,
    "add_children": AddChildren,
}
"""Every op the engine serves, with the type of its body."""
