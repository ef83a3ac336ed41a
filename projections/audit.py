"""Audit: every event must trace to a signed command that allowed it (DESIGN.md, point 7).

Each event stores the signed command envelope it came from, byte for byte, and the id of
whoever caused it (``actor``). :class:`Auditor` re-checks the events in log order,
offline, with nothing but the log and two ids it must be told (:class:`Authorities`):

1. the message is one of this system's events, on its aggregate's subject, with the next
   version of that aggregate; with the seal key, sealed by the engine;
2. its command's signature verifies (:func:`colonies_es.crypto.authenticate`, or for a
   ColonyOS client's envelope :func:`colonies_es.colonyos.open_envelope`), its signer
   is the event's actor, its op can cause this kind of event (ProcessClosed ← close,
   ExecutionTimedOut ← expire_exec, ...), it was signed within ``max_skew`` seconds of
   the event, and no other event used it (except ``remove_all_*``, one command for many;
   a ColonyOS envelope has no time stamp or nonce, so these two checks skip it);
3. the signer was allowed to cause it at that point of the log: the server owner creates
   and removes colonies; the colony owner manages executors and users and removes all
   graphs; a member submits, cancels and removes; an APPROVED executor of the right type
   claims a ready process; only the executor holding a process closes, fails, sets output,
   adds children, attributes and logs; only the engine times processes out;
4. the event says what the command asked: the same process, output, errors, spec...

The state needed for 3 (who is a member, who holds which process) is rebuilt from the
events themselves. With the seal key, what the engine sealed is applied (it is what the
engine saw); without it, only the events that verify.

Cost: checking signatures is most of it (ECDSA secp256k1 for commands signed with the
identity's key, as clients sign; Ed25519 for session-signed ones, each session
certificate once per process).
They depend on nothing but the envelope, so :func:`verify_log` checks them in worker
processes (:func:`signatures_hold`, a chunk of the log at a time, one worker per core)
while this process reads the next chunk and decodes it; everything that depends on the
order of the log (1, 3, 4, and the rest of 2) stays in this process, in log order, so
findings are the same, reported the same way, whether signatures were checked here or
there.

:func:`export_lines` writes a history as JSON lines, for archiving or other tools.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Container, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import msgspec
from eventsourcing.persistence import Cipher, DataError
from nats.aio.client import Client as NATS

from colonies_es import colonyos, crypto
from colonies_es import protocol as p
from colonies_es.domain import (
    AttributeAdded,
    AuditedAggregate,
    AuditedEvent,
    BadRequest,
    ChildAdded,
    ChildrenAdded,
    Colony,
    ColonyCreated,
    ColonyRemoved,
    ExecutionTimedOut,
    ExecutorAdded,
    ExecutorApproved,
    ExecutorRejected,
    ExecutorRemoved,
    GraphCancelled,
    GraphRemoved,
    GraphRerun,
    GraphSubmitted,
    LogAdded,
    OutputSet,
    ProcessAssigned,
    ProcessClosed,
    ProcessFailed,
    ProcessGraph,
    UserAdded,
    WaitTimedOut,
    colony_aggregate_id,
)
from colonies_es.domain.submission import plan_workflow
from colonies_es.models import Workflow, to_dict
from colonies_es.projections.history import (
    PREFIX,
    EventSource,
    HistoryEntry,
    Untrusted,
    colony_subject,
    connect,
    decode_event,
    event_fields,
    graph_subject,
    open_log,
    sealer_of,
    topic_of,
)
from colonies_es.settings import NatsAccess
from colonies_es.states import ExecutorState, ProcessState
from colonies_es.store.codec import decode_envelope
from colonies_es.store.jetstream import JetStreamLog, StoredMessage

__all__ = [
    "CAUSES",
    "PARALLEL_FROM",
    "READ_CHUNK",
    "AuditProgress",
    "AuditReport",
    "Auditor",
    "Authorities",
    "Finding",
    "export_lines",
    "signatures_hold",
    "verify",
    "verify_graph",
    "verify_log",
]

CAUSES: dict[type[AuditedEvent], frozenset[str]] = {
    ColonyCreated: frozenset({"add_colony"}),
    ColonyRemoved: frozenset({"del_colony"}),
    ExecutorAdded: frozenset({"add_executor"}),
    ExecutorApproved: frozenset({"approve_executor"}),
    ExecutorRejected: frozenset({"reject_executor"}),
    ExecutorRemoved: frozenset({"remove_executor"}),
    UserAdded: frozenset({"add_user"}),
    GraphSubmitted: frozenset({"submit_workflow", "submit_func_spec"}),
    GraphRerun: frozenset({"rerun_processgraph"}),
    ProcessAssigned: frozenset({"claim"}),
    OutputSet: frozenset({"set_output"}),
    ProcessClosed: frozenset({"close"}),
    ProcessFailed: frozenset({"fail"}),
    ExecutionTimedOut: frozenset({"expire_exec"}),
    WaitTimedOut: frozenset({"expire_wait"}),
    GraphCancelled: frozenset({"cancel_processgraph"}),
    ChildAdded: frozenset({"add_child"}),
    ChildrenAdded: frozenset({"add_children"}),
    AttributeAdded: frozenset({"add_attribute"}),
    LogAdded: frozenset({"add_log"}),
    GraphRemoved: frozenset(
        {
            "remove_processgraph",
            "remove_process",
            "remove_all_processgraphs",
            "remove_all_processes",
        }
    ),
}
"""The ops whose commands may cause each kind of event."""

_decode_signed_command = msgspec.json.Decoder(crypto.SignedCommand).decode

_ONE_COMMAND_MANY_EVENTS = frozenset({"remove_all_processgraphs", "remove_all_processes"})
READ_CHUNK = 10_000
"""Messages read (and given to the workers) at a time."""

log = logging.getLogger("colonies.audit")


class _Expiry(msgspec.Struct):
    """The body of the engine's own ``expire_exec`` / ``expire_wait`` commands."""

    processid: str
    attempt: int = 0
    kind: str = ""


_BODIES: dict[str, type[msgspec.Struct]] = {**p.OPS, "expire_exec": _Expiry, "expire_wait": _Expiry}


@dataclass(frozen=True)
class Authorities:
    """The ids the log cannot tell by itself: the engine's (it signs timeouts) and the
    server owner's (it creates colonies). Events that need one left empty fail."""

    engine_id: str = ""
    server_id: str = ""


@dataclass(frozen=True)
class Finding:
    """A message that does not verify, and why."""

    sequence: int
    subject: str
    kind: str
    """The event's class name; empty when it is not an event."""
    reasons: list[str]


@dataclass
class AuditReport:
    """What an audit checked and found."""

    checked: int = 0
    findings: list[Finding] = field(default_factory=list)
    workers: int = field(default=0, compare=False)
    """Processes that checked signatures beside the auditing one (0: it checked them)."""

    @property
    def ok(self) -> bool:
        """True when every message checked verifies (and there was one)."""
        return self.checked > 0 and not self.findings


class Auditor:
    """Checks messages of the event log, given in log order, and keeps the state
    (colonies and graphs) they build; :attr:`report` says what was found."""

    def __init__(
        self,
        authorities: Authorities,
        seal_key: str | bytes | None = None,
        max_skew: float = crypto.DEFAULT_MAX_SKEW,
        prefix: str = PREFIX,
        unsealed: Container[int] | None = None,
        cipher: Cipher | None = None,
    ) -> None:
        """``unsealed``: the sequences of the messages a projector said the engine did not
        seal (``graph_events``), for an auditor without the seal key. ``cipher``: the
        log's, when it is encrypted at rest."""
        self.authorities = authorities
        self.cipher = cipher
        self.sealer = sealer_of(seal_key)
        self.unsealed = unsealed
        self.max_skew = max_skew
        self.events_prefix = f"{prefix}.ev."
        self.aggregates: dict[str, AuditedAggregate] = {}
        self.report = AuditReport()
        self.signatures: dict[int, bool] = {}
        """Sequence -> whether the signature of its event's command holds, when that was
        checked ahead (:func:`signatures_hold`, in other processes); the others are
        checked by :meth:`check`. Entries are used once."""
        self._commands: dict[str, int] = {}  # payload digest -> sequence of its first event

    def decode(self, message: StoredMessage) -> AuditedEvent | Untrusted:
        """The event ``message`` holds, or why it is not one (not raised: returned)."""
        try:
            return decode_event(message, cipher=self.cipher)
        except Untrusted as untrusted:
            return untrusted

    def check(
        self,
        message: StoredMessage,
        context: bool = False,
        decoded: AuditedEvent | Untrusted | None = None,
    ) -> None:
        """Checks one message (the next in log order) and applies it when trusted.

        A ``context`` message is read only for what it establishes (a colony's members,
        for the audit of one of its graphs): it is applied when trusted, but neither
        counted in :attr:`report` nor reported. ``decoded``: what :meth:`decode` gave
        for ``message``, if it was already called.
        """
        if context:
            saved, self.report = self.report, AuditReport()
            try:
                self.check(message, decoded=decoded)
            finally:
                self.report = saved
            return
        self.report.checked += 1
        event = self.decode(message) if decoded is None else decoded
        reasons = self._seal_reasons(message, is_event=not isinstance(event, Untrusted))
        if isinstance(event, Untrusted):
            self._found(message, "", [*reasons, event.reason])
            return
        before = self.aggregates.get(event.originator_id)
        expected = 1 if before is None else before.version + 1
        fits = event.originator_version == expected
        if message.subject != self.events_prefix + event.originator_id:
            reasons.append(f"it belongs to {event.originator_id}, not to its subject")
        if not fits:
            reasons.append(f"it is version {event.originator_version}, expected {expected}")
        command = self._command(message.sequence, event, reasons)
        if command is not None and fits:
            reasons.extend(self._allowed(event, command, before))
        seals_known = self.sealer is not None or self.unsealed is not None
        trusted = _UNSEALED not in reasons if seals_known else not reasons
        if trusted and fits:
            try:
                after = event.mutate(before)
            except Exception as error:
                reasons.append(f"it does not apply to its aggregate: {error}")
            else:
                if after is not None:
                    self.aggregates[event.originator_id] = after
        if reasons:
            self._found(message, type(event).__name__, reasons)

    def _found(self, message: StoredMessage, kind: str, reasons: list[str]) -> None:
        self.report.findings.append(Finding(message.sequence, message.subject, kind, reasons))

    def _seal_reasons(self, message: StoredMessage, is_event: bool) -> list[str]:
        """``is_event``: the message decoded as an event (so it is an envelope)."""
        if self.unsealed is not None and message.sequence in self.unsealed:
            return [_UNSEALED]
        if self.sealer is None:
            return []
        if not is_event:
            try:
                decode_envelope(message.payload)
            except DataError:
                return []  # decode_event says what it is
        return [] if self.sealer.is_sealed(message.subject, message.payload) else [_UNSEALED]

    # --- the command -------------------------------------------------------------------------

    def _command(
        self, sequence: int, event: AuditedEvent, reasons: list[str]
    ) -> tuple[crypto.VerifiedCommand, msgspec.Struct] | None:
        """The event's verified command and its body, or None (saying why in ``reasons``)."""
        if not event.command:
            reasons.append("it has no signed command")
            return None
        foreign = colonyos.is_colonyos_command(event.command)
        try:
            if foreign:
                command = colonyos.open_envelope(event.command)
            else:
                signed = _decode_signed_command(event.command)
                holds = self.signatures.pop(sequence, None)
                if holds is False:
                    raise crypto.CommandRejected(403, crypto.bad_signature_reason(signed))
                command = crypto.authenticate(signed, signature_checked=holds is True)
        except msgspec.DecodeError:
            reasons.append("its command is not a signed command envelope")
            return None
        except crypto.CommandRejected as rejected:
            reasons.append(f"its command does not verify: {rejected.message}")
            return None
        if command.caller_id != event.actor:
            reasons.append(f"its command is signed by {command.caller_id}, not by its actor")
        kind = type(event).__name__
        if command.op not in CAUSES.get(type(event), frozenset()):
            reasons.append(f"its command is {command.op!r}, which cannot cause {kind}")
            return None
        if not foreign:  # ColonyOS envelopes carry no time and no nonce: see colonyos
            drift = abs(command.ts - event.timestamp.timestamp())
            if drift > self.max_skew:
                reasons.append(f"its command was signed {drift:.0f} s away from the event's time")
            first = self._commands.setdefault(command.payload_digest, sequence)
            if first != sequence and command.op not in _ONE_COMMAND_MANY_EVENTS:
                reasons.append(f"its command was already used by the event at sequence {first}")
        try:
            body = command.decode_body(_BODIES[command.op])
        except crypto.CommandRejected as rejected:
            reasons.append(f"its command's body is malformed: {rejected.message}")
            return None
        return command, body

    # --- who may cause what ------------------------------------------------------------------

    def _allowed(
        self,
        event: AuditedEvent,
        command: tuple[crypto.VerifiedCommand, msgspec.Struct],
        before: AuditedAggregate | None,
    ) -> list[str]:
        signer, body = command[0].caller_id, command[1]
        colonyname = event.originator_id.split(".")[0]
        colony = self.aggregates.get(colony_aggregate_id(colonyname))
        if not isinstance(colony, Colony):
            colony = None
        if isinstance(event, ColonyCreated | ColonyRemoved | ExecutorAdded | UserAdded):
            return self._colony_rules(event, signer, body, colony)
        if isinstance(event, ExecutorApproved | ExecutorRejected | ExecutorRemoved):
            assert isinstance(body, p.ExecutorRef)
            return [
                *_owner(colony, signer),
                *_same("colony", colonyname, body.colonyname),
                *_same("executor name", event.executorname, body.executorname),
            ]
        if isinstance(event, GraphSubmitted):
            return [*_member(colony, signer), *_submitted(event, signer, body)]
        if not isinstance(before, ProcessGraph):
            return [f"its process graph {event.originator_id} does not exist"]
        return self._graph_rules(event, signer, body, before, colony)

    def _colony_rules(
        self, event: AuditedEvent, signer: str, body: msgspec.Struct, colony: Colony | None
    ) -> list[str]:
        if isinstance(event, ColonyCreated) and isinstance(body, p.AddColony):
            return [
                *self._authority(signer, self.authorities.server_id, "server owner", "--server-id"),
                *_same("colony name", event.name, body.colony.name),
                *_same("owner id", event.ownerid, body.colony.colonyid),
            ]
        if isinstance(event, ColonyRemoved) and isinstance(body, p.ColonyRef):
            return [
                *self._authority(signer, self.authorities.server_id, "server owner", "--server-id"),
                *_same("colony", event.originator_id.split(".")[0], body.colonyname),
            ]
        if isinstance(event, ExecutorAdded) and isinstance(body, p.AddExecutor):
            executor = body.executor
            return [
                *_owner(colony, signer),
                *_same("colony", event.originator_id.split(".")[0], executor.colonyname),
                *_same("executor id", event.executorid, executor.executorid),
                *_same("executor name", event.executorname, executor.executorname),
                *_same("executor type", event.executortype, executor.executortype),
            ]
        if isinstance(event, UserAdded) and isinstance(body, p.AddUser):
            return [
                *_owner(colony, signer),
                *_same("colony", event.originator_id.split(".")[0], body.colonyname),
                *_same("user id", event.userid, body.userid),
                *_same("user name", event.username, body.username),
            ]
        return ["its command does not fit the event"]

    def _graph_rules(
        self,
        event: AuditedEvent,
        signer: str,
        body: msgspec.Struct,
        graph: ProcessGraph,
        colony: Colony | None,
    ) -> list[str]:
        if isinstance(event, ProcessAssigned) and isinstance(body, p.Claim):
            return [
                *_same("colony", graph.colonyname, body.colonyname),
                *_claim(event, signer, graph, colony),
            ]
        if isinstance(event, ExecutionTimedOut | WaitTimedOut) and isinstance(body, _Expiry):
            engine = self._authority(signer, self.authorities.engine_id, "engine", "--engine-id")
            return [
                *engine,
                *_same("process", event.processid, body.processid),
                *_expired(event, graph, body),
            ]
        if isinstance(event, GraphCancelled) and isinstance(body, p.GraphRef):
            return [
                *_member(colony, signer),
                *_same("graph", graph.processgraphid, body.processgraphid),
            ]
        if isinstance(event, GraphRemoved):
            return _removed(graph, signer, body, colony)
        if isinstance(event, ChildAdded) and isinstance(body, p.AddChild):
            return [
                *_holder(graph, event.parentprocessid, signer),
                *_same("graph", graph.processgraphid, body.processgraphid),
                *_same("parent", event.parentprocessid, body.parentprocessid),
                *_same(
                    "child spec",
                    event.child["spec"],
                    {**to_dict(body.spec), "nodename": body.nodename},
                ),
            ]
        if isinstance(event, ChildrenAdded) and isinstance(body, p.AddChildren):
            return [
                *_holder(graph, event.parentprocessid, signer),
                *_same("graph", graph.processgraphid, body.processgraphid),
                *_same("parent", event.parentprocessid, body.parentprocessid),
                *_same(
                    "children's specs",
                    [child["spec"] for child in event.children],
                    [
                        {**to_dict(spec), "nodename": nodename}
                        for spec, nodename in zip(body.specs, body.nodenames, strict=False)
                    ],
                ),
            ]
        processid = getattr(event, "processid", "")
        held = [
            *_holder(graph, processid, signer),
            *_same("process", processid, getattr(body, "processid", None)),
        ]
        if isinstance(event, OutputSet) and isinstance(body, p.SetOutput):
            return [*held, *_same("output", event.output, list(body.out))]
        if isinstance(event, ProcessClosed) and isinstance(body, p.CloseProcess):
            kept = graph.nodes[processid].output if processid in graph.nodes else []
            return [*held, *_same("output", event.output, list(body.out) or kept)]
        if isinstance(event, ProcessFailed) and isinstance(body, p.FailProcess):
            return [*held, *_same("errors", event.errors, list(body.errors))]
        if isinstance(event, AttributeAdded) and isinstance(body, p.AddAttribute):
            return [*held, *_same("attribute", [event.key, event.value], [body.key, body.value])]
        if isinstance(event, LogAdded) and isinstance(body, p.AddLog):
            return [*held, *_same("message", event.message, body.message)]
        return ["its command does not fit the event"]

    @staticmethod
    def _authority(signer: str, expected: str, role: str, option: str) -> list[str]:
        if not expected:
            return [f"only the {role} may cause it, and its id is not given ({option})"]
        return [] if signer == expected else [f"signed by {signer}, not by the {role}"]


_UNSEALED = "not sealed by the engine (no valid seal): appended to the stream by someone else"


def _same(what: str, recorded: Any, commanded: Any) -> list[str]:
    if recorded == commanded:
        return []
    return [f"its {what} {_short(recorded)} is not the command's {_short(commanded)}"]


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _member(colony: Colony | None, signer: str) -> list[str]:
    if colony is None:
        return ["its colony does not exist"]
    return [] if colony.is_member(signer) else [f"{signer} is not a member of colony {colony.name}"]


def _owner(colony: Colony | None, signer: str) -> list[str]:
    if colony is None:
        return ["its colony does not exist"]
    return (
        [] if signer == colony.ownerid else [f"{signer} is not the owner of colony {colony.name}"]
    )


def _holder(graph: ProcessGraph, processid: str, signer: str) -> list[str]:
    """Why ``signer`` did not hold the process (RUNNING, assigned to it), if it did not."""
    node = graph.nodes.get(processid)
    if node is None:
        return [f"process {processid} is not in the graph"]
    if node.is_running and node.assignedexecutorid == signer:
        return []
    state = ProcessState(node.state).name
    holder = node.assignedexecutorid or "nobody"
    return [f"{signer} did not hold {node.nodename} (it was {state}, assigned to {holder})"]


def _claim(
    event: ProcessAssigned, signer: str, graph: ProcessGraph, colony: Colony | None
) -> list[str]:
    executor = colony.executors.get(signer) if colony is not None else None
    if executor is None or executor.state != ExecutorState.APPROVED:
        return [f"{signer} is not an APPROVED executor of the colony"]
    node = graph.nodes.get(event.processid)
    if node is None:
        return [f"process {event.processid} is not in the graph"]
    reasons = _same("executor", event.executorid, signer)
    if not node.may_run_on(executor.executortype, executor.executorname):
        reasons.append(f"executor {executor.executorname} may not run {node.nodename}")
    if not node.is_ready or node.attempt != event.attempt:
        reasons.append(f"{node.nodename} was not ready for attempt {event.attempt}")
    return reasons


def _expired(
    event: ExecutionTimedOut | WaitTimedOut, graph: ProcessGraph, body: _Expiry
) -> list[str]:
    node = graph.nodes.get(event.processid)
    if node is None:
        return [f"process {event.processid} is not in the graph"]
    if isinstance(event, ExecutionTimedOut):
        running = node.is_running and node.attempt == event.attempt == body.attempt
        return [] if running else [f"attempt {event.attempt} of {node.nodename} was not running"]
    return [] if node.is_ready else [f"{node.nodename} was not waiting for an executor"]


def _removed(
    graph: ProcessGraph, signer: str, body: msgspec.Struct, colony: Colony | None
) -> list[str]:
    if isinstance(body, p.GraphRef):
        return [
            *_member(colony, signer),
            *_same("graph", graph.processgraphid, body.processgraphid),
        ]
    if isinstance(body, p.ProcessRef):
        inside = body.processid in graph.nodes
        return [
            *_member(colony, signer),
            *([] if inside else [f"process {body.processid} is not in the graph"]),
        ]
    if isinstance(body, p.RemoveAll):
        return [*_owner(colony, signer), *_same("colony", graph.colonyname, body.colonyname)]
    return ["its command does not fit the event"]


def _submitted(event: GraphSubmitted, signer: str, body: msgspec.Struct) -> list[str]:
    """Whether the graph recorded is the one the command submitted (or re-ran)."""
    reasons = _same("initiator", event.initiatorid, signer)
    if isinstance(event, GraphRerun) and isinstance(body, p.GraphRef):
        return [*reasons, *_same("origin", event.origin, body.processgraphid)]
    if isinstance(body, p.SubmitWorkflow):
        workflow = body.workflow
    elif isinstance(body, p.SubmitFuncSpec):
        workflow = Workflow(colonyname=body.spec.conditions.colonyname, functionspecs=[body.spec])
    else:
        return [*reasons, "its command does not fit the event"]
    try:
        planned = plan_workflow(event.colonyname, workflow)
    except BadRequest as refused:
        return [*reasons, f"its command's workflow is not valid: {refused.message}"]
    names = {process["processid"]: process["spec"].get("nodename") for process in event.processes}
    recorded = [(pr["spec"], [names.get(pid) for pid in pr["parents"]]) for pr in event.processes]
    commanded = [(node.spec, node.parents) for node in planned]
    if recorded != commanded:
        reasons.append("its processes are not the ones the command submitted")
    return reasons


# --- reading and verifying ---------------------------------------------------------------


async def verify_graph(
    source: EventSource,
    processgraphid: str,
    authorities: Authorities,
    colonyname: str | None = None,
    seal_key: str | bytes | None = None,
    unsealed: Container[int] | None = None,
) -> AuditReport:
    """Audits a graph's events. Its colony's events are read too, for who was allowed
    what, but only the graph's are counted and reported. ``unsealed``: see
    :class:`Auditor`."""
    reader = open_log(source)
    messages = await reader.read_subject(graph_subject(colonyname, processgraphid))
    context: list[StoredMessage] = []
    if messages:
        colony = colonyname or messages[0].subject.split(".")[-3]
        context = await reader.read_subject(colony_subject(colony))
    auditor = Auditor(authorities, seal_key, unsealed=unsealed)
    in_context = {message.sequence for message in context}
    for message in sorted(messages + context, key=lambda m: m.sequence):
        auditor.check(message, context=message.sequence in in_context)
    return auditor.report


@dataclass(frozen=True)
class AuditProgress:
    """How far a whole-log audit is (given to its ``progress`` callback after each chunk)."""

    checked: int
    """Messages checked so far."""
    position: int
    """The stream sequence of the last one."""
    last: int
    """The log's last sequence when the audit began (the end of the audit)."""


async def verify_log(
    source: NATS | JetStreamLog,
    authorities: Authorities,
    seal_key: str | bytes | None = None,
    cipher: Cipher | None = None,
    *,
    workers: int | None = None,
    progress: Callable[[AuditProgress], object] | None = None,
) -> AuditReport:
    """Audits every event of the log (``cipher``: the log's, when it is encrypted); it
    reads the stream itself, so ``source`` is a NATS connection or the store's log.

    Signatures are checked by ``workers`` processes (default: one per core; 0: all in
    this process, as for a log shorter than :data:`PARALLEL_FROM` events), a chunk of
    :data:`READ_CHUNK` messages ahead of the checks of order and permissions, which
    stay here, in log order: the report is the same either way. A worker that fails
    leaves its signatures to this process. ``progress`` is called after each chunk.
    """
    reader = open_log(source)
    auditor = Auditor(authorities, seal_key, cipher=cipher)
    head = await reader.last_message(f"{PREFIX}.ev.>")
    last = 0 if head is None else head.sequence
    count = (os.cpu_count() or 1) if workers is None else workers
    if last < PARALLEL_FROM:
        count = 0
    auditor.report.workers = count
    with _signature_workers(count) as pool:
        previous: _Chunk | None = None
        async for chunk in _read_ahead(reader, auditor, pool, count):
            if previous is not None:
                await previous.check(auditor, last, progress)
            previous = chunk
        if previous is not None:
            await previous.check(auditor, last, progress)
    return auditor.report


PARALLEL_FROM = 5_000
"""Logs shorter than this (in messages) are audited by one process: starting workers
would cost more than they save."""


def signatures_hold(commands: Sequence[bytes]) -> list[bool | None]:
    """For each stored command (an event's ``command``): whether its signature holds
    (:func:`colonies_es.crypto.signature_holds`); None when it is not one of this
    system's signed command envelopes (a ColonyOS client's is checked by the auditor
    itself; what is neither, the auditor says). Pure: :func:`verify_log` runs it in
    worker processes."""
    verdicts: list[bool | None] = []
    for data in commands:
        if colonyos.is_colonyos_command(data):
            verdicts.append(None)
            continue
        try:
            signed = _decode_signed_command(data)
        except (msgspec.DecodeError, RecursionError):
            verdicts.append(None)
        else:
            verdicts.append(crypto.signature_holds(signed))
    return verdicts


@contextlib.contextmanager
def _signature_workers(count: int) -> Iterator[ProcessPoolExecutor | None]:
    """``count`` worker processes (None for 0), from a fork server: this process has
    threads (NATS, the store), which a plain fork would copy in an unknown state."""
    if count <= 0:
        yield None
        return
    pool = ProcessPoolExecutor(
        count,
        mp_context=multiprocessing.get_context("forkserver"),
        initializer=_end_with,
        initargs=(os.getpid(),),
    )
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _end_with(auditor: int) -> None:
    """Makes this worker exit once the auditing process ``auditor`` is gone: killed, it
    could not shut its pool down, and a worker waiting for work would wait forever."""

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(auditor, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:  # it exists (under another user: not ours, but alive)
                pass

    threading.Thread(target=watch, name="audit-worker-watch", daemon=True).start()


@dataclass
class _Chunk:
    """Messages read and decoded, whose signatures are being checked by the workers."""

    messages: list[StoredMessage]
    decoded: list[AuditedEvent | Untrusted]
    verdicts: list[tuple[list[int], asyncio.Future[list[bool | None]]]]
    """(sequences, the workers' answer for their commands, in the same order)."""

    async def check(
        self,
        auditor: Auditor,
        last: int,
        progress: Callable[[AuditProgress], object] | None,
    ) -> None:
        """Hands the workers' verdicts to ``auditor``, then checks the messages in order."""
        for sequences, answer in self.verdicts:
            try:
                verdicts = await answer
            except Exception as error:  # a worker died: this process checks them
                log.warning("checking signatures in a worker failed (%r): checking here", error)
                continue
            for sequence, verdict in zip(sequences, verdicts, strict=True):
                if verdict is not None:
                    auditor.signatures[sequence] = verdict
        for message, decoded in zip(self.messages, self.decoded, strict=True):
            auditor.check(message, decoded=decoded)
        if progress is not None:
            progress(AuditProgress(auditor.report.checked, self.messages[-1].sequence, last))


async def _read_ahead(
    reader: JetStreamLog, auditor: Auditor, pool: ProcessPoolExecutor | None, workers: int
) -> AsyncIterator[_Chunk]:
    """The log in chunks, each decoded and its signatures handed to ``pool`` (if any)."""
    loop = asyncio.get_running_loop()
    start = 1
    while True:
        messages = await reader.read_range(f"{PREFIX}.ev.>", start, READ_CHUNK)
        if not messages:
            return
        decoded = [auditor.decode(message) for message in messages]
        verdicts: list[tuple[list[int], asyncio.Future[list[bool | None]]]] = []
        if pool is not None:
            signed = [
                (message.sequence, event.command)
                for message, event in zip(messages, decoded, strict=True)
                if not isinstance(event, Untrusted) and event.command
            ]
            share = -(-len(signed) // workers) or 1
            for first in range(0, len(signed), share):
                part = signed[first : first + share]
                answer = loop.run_in_executor(pool, signatures_hold, [c for _, c in part])
                verdicts.append(([sequence for sequence, _ in part], answer))
        yield _Chunk(messages, decoded, verdicts)
        if len(messages) < READ_CHUNK:
            return
        start = messages[-1].sequence + 1


def verify(
    url: str | NatsAccess,
    authorities: Authorities,
    processgraphid: str | None = None,
    colonyname: str | None = None,
    seal_key: str | bytes | None = None,
    cipher: Cipher | None = None,
    *,
    workers: int | None = None,
    progress: Callable[[AuditProgress], object] | None = None,
) -> AuditReport:
    """:func:`verify_graph` (or, without ``processgraphid``, :func:`verify_log`, with
    its ``workers`` and ``progress``) for plain code, on the log at the NATS ``url`` (or
    as a NatsAccess says); ``cipher``: the log's, for the whole log when it is
    encrypted."""

    async def audit() -> AuditReport:
        nc = await connect(url)
        try:
            if processgraphid is None:
                return await verify_log(
                    nc, authorities, seal_key, cipher, workers=workers, progress=progress
                )
            return await verify_graph(nc, processgraphid, authorities, colonyname, seal_key)
        finally:
            await nc.close()

    return asyncio.run(audit())


def export_lines(entries: Sequence[HistoryEntry]) -> Iterator[str]:
    """A history as JSON lines, one event each: sequence, time, subject, topic, kind,
    version, actor, actorname, summary, the event's ``fields`` and its signed
    ``command`` envelope (base64 of its exact bytes)."""
    for entry in entries:
        fields = event_fields(entry.event)
        command = fields.pop("command")
        yield json.dumps(
            {
                "sequence": entry.sequence,
                "time": entry.time.isoformat(),
                "subject": entry.subject,
                "topic": topic_of(entry.event),
                "kind": entry.kind,
                "version": entry.version,
                "actor": entry.actor,
                "actorname": entry.actorname,
                "summary": entry.summary,
                "fields": fields,
                "command": command,
            }
        )
