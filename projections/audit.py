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
certificate once per process), then decoding events and commands.
Only a graph's own events and its colony's decide what is allowed in it, so
:func:`verify_log` splits a long log by aggregate: each worker process (one per core)
audits every colony's events and a share of the graphs (by a hash of the subject), in
log order, with its own :class:`Auditor`; this process reads the log, hands each worker
its share a chunk at a time, and merges the findings in log order. Two things cross the
shares: a command used by events of two shares, and an event on another aggregate's
subject. Neither happens in a log the engine wrote; when either is seen (or a worker
fails), the log is audited again in this process alone, so the findings are always
exactly those of the one-process audit.

Memory: an auditor of the whole log (one process or workers) keeps in memory the
colonies and the graphs running at that point of the log; an ended graph is kept as the
payloads of its events in a temporary file, rebuilt if a later event names it
(:class:`Aggregates`). What still grows with the log is one entry per command
(:func:`_digest`, about 100 bytes), needed to find a command used twice.

:func:`export_lines` writes a history as JSON lines, for archiving or other tools.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import json
import logging
import multiprocessing
import os
import sqlite3
import tempfile
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable, Container, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import IO, Any

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
    "SpillFailed",
    "export_lines",
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


def _digest(command: crypto.VerifiedCommand) -> bytes:
    """What tells a command from every other: the first 16 bytes of its payload's
    SHA3-256 (a collision in 2^64 commands; half the memory of the hex text)."""
    return bytes.fromhex(command.payload_digest[:32])


PLANS_KEPT = 1_024
"""Submitted workflows an auditor remembers the plan of (all are forgotten when full)."""
READ_CHUNK = 10_000
"""Messages read (and given to the workers) at a time."""

READ_PATIENCE = 30.0
"""Seconds a read of the log waits while JetStream does not answer (a cluster electing
the stream's leader after a node's loss) before the audit gives up."""

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
    """Worker processes that audited shares of the log (0: the auditing process did it
    all)."""

    @property
    def ok(self) -> bool:
        """True when every message checked verifies (and there was one)."""
        return self.checked > 0 and not self.findings


_ENDED_STATES = frozenset({ProcessState.SUCCESS, ProcessState.FAILED, ProcessState.CANCELLED})


class SpillFailed(Exception):
    """The temporary files keeping ended graphs failed (a full disk, an unwritable
    temporary directory): the message says which directory and why."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(
            f"the audit's temporary files in {tempfile.gettempdir()} failed: {error} "
            "(TMPDIR chooses where they go)"
        )


@contextlib.contextmanager
def _spilling() -> Iterator[None]:
    """Turns a failure of the temporary files into :class:`SpillFailed`."""
    try:
        yield
    except (OSError, sqlite3.Error) as error:
        raise SpillFailed(error) from error


class Aggregates:
    """The aggregates an :class:`Auditor` built, by originator id, and how events are
    applied to them.

    With ``spill``, a process graph leaves memory as soon as an event leaves it ended
    (SUCCESS, FAILED or CANCELLED, or removed): what is kept of it is the payloads of the
    events applied to it, as the log holds them (no re-encoding), appended to a
    temporary file, and where they are in it, in a temporary SQLite index (both private
    to this process and deleted when closed: about the log's size on disk, nothing in
    memory). If a later event names it (a
    removal, or whatever else was appended to its subject), it is rebuilt by applying
    those events again, in order, as they were applied the first time: the aggregate is
    exactly the one memory would have held. Memory then holds the colonies, the graphs
    still running at that point of the log and a fixed-size filter of the ids written to
    the file, whatever the log's length. Without ``spill``, everything stays in memory
    (the audit of one graph).
    """

    def __init__(
        self, spill: bool = False, decode: Callable[[bytes], AuditedEvent] | None = None
    ) -> None:
        """``decode``: the event a payload holds (needed with ``spill``)."""
        self._resident: dict[str, AuditedAggregate] = {}
        self._decode = decode
        self._ended: sqlite3.Connection | None = None
        """Where each ended graph's payloads are in :attr:`_file` (offset, length)."""
        self._file: IO[bytes] | None = None
        self._applied: dict[str, list[bytes]] = {}
        """With ``spill``: the payloads of the events applied to each resident graph."""
        self._unwritten: dict[str, list[bytes]] = {}
        """Ended graphs' payloads not yet written to the file (written in batches)."""
        self._written = bytearray(_FILTER_BYTES if spill else 0)
        """Bits set from the hash of each id written: an id whose bits are not all set
        was never written, so looking for it in the file is spared (new graphs)."""
        if spill:
            with _spilling():
                self._open_files()
        self.spilled = 0
        """How many times an ended graph left memory."""

    def _open_files(self) -> None:
        self._ended = sqlite3.connect("", isolation_level=None)  # "": a temporary file
        self._ended.execute("PRAGMA journal_mode = OFF")
        self._ended.execute("PRAGMA synchronous = OFF")
        self._ended.execute(
            "CREATE TABLE ended (id TEXT PRIMARY KEY, offset INTEGER, length INTEGER) WITHOUT ROWID"
        )
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())

    @property
    def resident(self) -> int:
        """How many aggregates are in memory."""
        return len(self._resident)

    def get(self, originator_id: str) -> AuditedAggregate | None:
        """The aggregate, as the events applied to it left it; None if there is none."""
        aggregate = self._resident.get(originator_id)
        if aggregate is not None or self._ended is None:
            return aggregate
        payloads = self._payloads_of_ended(originator_id)
        if not payloads:
            return None
        assert self._decode is not None
        for payload in payloads:  # as apply() did the first time
            event = self._decode(payload)
            # One that raised left the aggregate as far as it changed it: so does this.
            with contextlib.suppress(Exception):
                aggregate = event.mutate(aggregate)
        return aggregate

    def apply(
        self, event: AuditedEvent, before: AuditedAggregate | None, payload: bytes
    ) -> Exception | None:
        """Applies ``event`` (of ``payload``) to ``before``, its aggregate as :meth:`get`
        gave it; returns the error if it does not apply (the aggregate stays as far as
        the event changed it, as in memory)."""
        error = None
        try:
            after = event.mutate(before)
        except Exception as raised:
            after, error = before, raised
        if after is None:
            return error
        originator_id = event.originator_id
        if self._ended is None or not isinstance(after, ProcessGraph):  # only graphs end
            self._resident[originator_id] = after
            return error
        applied = self._applied.get(originator_id)
        if applied is None:
            applied = self._payloads_of_ended(originator_id)
        applied.append(payload)
        if _ended(after):
            self._resident.pop(originator_id, None)
            self._applied.pop(originator_id, None)
            self._unwritten[originator_id] = applied
            if len(self._unwritten) >= _WRITE_BATCH:
                self.write()
            self.spilled += 1
        else:
            self._resident[originator_id] = after
            self._applied[originator_id] = applied
        return error

    def write(self) -> None:
        """Writes the ended graphs still in memory to the file."""
        if self._ended is None or self._file is None or not self._unwritten:
            return
        rows = []
        with _spilling():
            for key, payloads in self._unwritten.items():
                data = _encode(payloads)
                rows.append((key, self._file.tell(), len(data)))
                self._file.write(data)
            self._file.flush()
            self._ended.executemany("INSERT OR REPLACE INTO ended VALUES (?, ?, ?)", rows)
        for key in self._unwritten:
            for bit in _filter_bits(key):
                self._written[bit >> 3] |= 1 << (bit & 7)
        self._unwritten.clear()

    def close(self) -> None:
        """Deletes the file of ended graphs (the aggregates are not read after this)."""
        if self._ended is not None and self._file is not None:
            # They are discarded: a failure to flush them (a full disk) does not matter.
            with contextlib.suppress(OSError, sqlite3.Error):
                self._ended.close()
            with contextlib.suppress(OSError):
                self._file.close()

    def _payloads_of_ended(self, originator_id: str) -> list[bytes]:
        """The payloads of the events applied to an ended graph (empty: none)."""
        unwritten = self._unwritten.get(originator_id)
        if unwritten is not None:
            return list(unwritten)
        if self._ended is None or self._file is None:
            return []
        if not all(self._written[bit >> 3] >> (bit & 7) & 1 for bit in _filter_bits(originator_id)):
            return []  # never written: a new graph (nearly always), spared a look-up
        with _spilling():
            row = self._ended.execute(
                "SELECT offset, length FROM ended WHERE id = ?", (originator_id,)
            ).fetchone()
            if row is None:
                return []
            return _decode_payloads(os.pread(self._file.fileno(), row[1], row[0]))


_WRITE_BATCH = 256
"""Ended graphs written to the file in one statement."""
_FILTER_BYTES = 1 << 22
"""Size of the filter of ids written (4 MB: 2^25 bits; with 1M graphs written, one new
id in a few thousand is looked for in the file for nothing)."""
_decode_payloads = msgspec.msgpack.Decoder(list[bytes]).decode


def _filter_bits(originator_id: str) -> tuple[int, int]:
    """The two bits of the filter for ``originator_id`` (from its hash, which is stable
    within this process)."""
    digest = hash(originator_id)
    return digest & _FILTER_MASK, (digest >> 25) & _FILTER_MASK


_FILTER_MASK = _FILTER_BYTES * 8 - 1


def _ended(aggregate: AuditedAggregate) -> bool:
    return isinstance(aggregate, ProcessGraph) and (
        aggregate.state in _ENDED_STATES or aggregate.removed
    )


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
        spill: bool = False,
    ) -> None:
        """``unsealed``: the sequences of the messages a projector said the engine did not
        seal (``graph_events``), for an auditor without the seal key. ``cipher``: the
        log's, when it is encrypted at rest. ``spill``: keep ended graphs on disk, not
        in memory (:class:`Aggregates`), for an audit of a whole log."""
        self.authorities = authorities
        self.cipher = cipher
        self.sealer = sealer_of(seal_key)
        self.unsealed = unsealed
        self.max_skew = max_skew
        self.events_prefix = f"{prefix}.ev."
        self.aggregates = Aggregates(spill, self._decode_payload)
        self.report = AuditReport()
        self._commands: dict[bytes, int] = {}
        """Digest of each command seen (:func:`_digest`) -> the sequence of its first
        event (the op is the same for every use: the digest covers it)."""
        self._plans: dict[tuple[str, str, bytes], list[tuple[dict[str, Any], list[str]]] | str]
        self._plans = {}
        """What :meth:`_planned` found, by colony, op and body."""
        self.first_uses: list[tuple[bytes, int, str]] | None = None
        """When a list (None: not kept), (digest, sequence, op) of each command seen for
        the first time is added to it, in log order, for whoever reads and clears it (the
        workers of :func:`verify_log`)."""

    def decode(self, message: StoredMessage) -> AuditedEvent | Untrusted:
        """The event ``message`` holds, or why it is not one (not raised: returned)."""
        try:
            return decode_event(message, cipher=self.cipher)
        except Untrusted as untrusted:
            return untrusted

    def _decode_payload(self, payload: bytes) -> AuditedEvent:
        return decode_event(StoredMessage(0, "", payload, 0), cipher=self.cipher)

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
            error = self.aggregates.apply(event, before, message.payload)
            if error is not None:
                reasons.append(f"it does not apply to its aggregate: {error}")
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
                command = crypto.authenticate(_decode_signed_command(event.command))
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
            digest = _digest(command)
            first = self._commands.setdefault(digest, sequence)
            if first == sequence:
                if self.first_uses is not None:
                    self.first_uses.append((digest, sequence, command.op))
            elif command.op not in _ONE_COMMAND_MANY_EVENTS:
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
        # Tuples, not unions: isinstance with a union of event classes (ABC metaclass)
        # costs about 1.4 us a call, with a tuple 0.5.
        if isinstance(event, (ColonyCreated, ColonyRemoved, ExecutorAdded, UserAdded)):
            return self._colony_rules(event, signer, body, colony)
        if isinstance(event, (ExecutorApproved, ExecutorRejected, ExecutorRemoved)):
            assert isinstance(body, p.ExecutorRef)
            return [
                *_owner(colony, signer),
                *_same("colony", colonyname, body.colonyname),
                *_same("executor name", event.executorname, body.executorname),
            ]
        if isinstance(event, GraphSubmitted):
            return [*_member(colony, signer), *self._submitted(event, command[0], body)]
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
        if isinstance(event, (ExecutionTimedOut, WaitTimedOut)) and isinstance(body, _Expiry):
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

    def _submitted(
        self, event: GraphSubmitted, command: crypto.VerifiedCommand, body: msgspec.Struct
    ) -> list[str]:
        """Whether the graph recorded is the one the command submitted (or re-ran)."""
        reasons = _same("initiator", event.initiatorid, command.caller_id)
        if isinstance(event, GraphRerun) and isinstance(body, p.GraphRef):
            return [*reasons, *_same("origin", event.origin, body.processgraphid)]
        if not isinstance(body, p.SubmitWorkflow | p.SubmitFuncSpec):
            return [*reasons, "its command does not fit the event"]
        planned = self._planned(event.colonyname, command, body)
        if isinstance(planned, str):
            return [*reasons, f"its command's workflow is not valid: {planned}"]
        names = {pr["processid"]: pr["spec"].get("nodename") for pr in event.processes}
        recorded = [
            (pr["spec"], [names.get(pid) for pid in pr["parents"]]) for pr in event.processes
        ]
        if recorded != planned:
            reasons.append("its processes are not the ones the command submitted")
        return reasons

    def _planned(
        self,
        colonyname: str,
        command: crypto.VerifiedCommand,
        body: p.SubmitWorkflow | p.SubmitFuncSpec,
    ) -> list[tuple[dict[str, Any], list[str]]] | str:
        """The (spec, parents) of each process :func:`plan_workflow` makes of the
        command's workflow, or why it refuses it. A plan is a function of the colony and
        the command's body alone, and the same workflow is often submitted many times
        (a schedule, a loop of submits): plans are remembered by body (at most
        :data:`PLANS_KEPT`), which spares re-planning each (15-60 us)."""
        key = (colonyname, command.op, bytes(command.body))
        planned = self._plans.get(key)
        if planned is not None:
            return planned
        if isinstance(body, p.SubmitWorkflow):
            workflow = body.workflow
        else:
            workflow = Workflow(
                colonyname=body.spec.conditions.colonyname, functionspecs=[body.spec]
            )
        try:
            planned = [(node.spec, node.parents) for node in plan_workflow(colonyname, workflow)]
        except BadRequest as refused:
            planned = refused.message
        if len(self._plans) >= PLANS_KEPT:
            self._plans.clear()
        self._plans[key] = planned
        return planned

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

    ``workers`` processes (default: one per core; 0: none, as for a log shorter than
    :data:`PARALLEL_FROM` events) each audit a share of the log (see the module's
    docstring), a chunk of :data:`READ_CHUNK` messages at a time, while this process
    reads the next chunk. The report is the one a single :class:`Auditor` makes: when
    the shares cannot give exactly that (a command used in two shares, an event on
    another aggregate's subject) or a worker fails, this process audits the log again
    alone, saying why in a warning. ``progress`` is called after each chunk.
    """
    reader = open_log(source)
    head = await reader.last_message(f"{PREFIX}.ev.>")
    last = 0 if head is None else head.sequence
    count = (os.cpu_count() or 1) if workers is None else workers
    if last < PARALLEL_FROM:
        count = 0
    audit = _AuditSettings(authorities, seal_key, cipher, os.getpid())
    if count > 0:
        try:
            return await _audit_in_shares(reader, audit, count, last, progress)
        except _NotInShares as why:
            log.warning("auditing the log again in one process: %s", why)
    auditor = audit.auditor()
    try:
        async for messages in _chunks(reader):
            for message in messages:
                auditor.check(message)
            _tell(progress, auditor.report.checked, messages, last)
    finally:
        auditor.aggregates.close()
    return auditor.report


PARALLEL_FROM = 5_000
"""Logs shorter than this (in messages) are audited by one process: starting workers
would cost more than they save."""


@dataclass(frozen=True)
class _AuditSettings:
    """What every auditor of one audit is given (sent to the workers, so picklable)."""

    authorities: Authorities
    seal_key: str | bytes | None
    cipher: Cipher | None
    auditing_pid: int
    """The process that reads the log: its workers end when it is gone."""

    def auditor(self) -> Auditor:
        """An auditor of the whole log: ended graphs go to disk (:class:`Aggregates`)."""
        return Auditor(self.authorities, self.seal_key, cipher=self.cipher, spill=True)


class _NotInShares(Exception):
    """The log cannot be audited exactly in shares (the message says why)."""


class _Share(msgspec.Struct, array_like=True):
    """The messages of one chunk a worker audits, in log order."""

    messages: list[StoredMessage]
    context: list[int]
    """Sequences of the messages it only reads for what they establish (colonies' events
    that another worker reports)."""


class _ShareReport(msgspec.Struct, array_like=True):
    """What a worker found in its share of one chunk."""

    checked: int
    findings: list[tuple[int, str, str, list[str]]]
    """(sequence, subject, kind, reasons) of each finding, in log order."""
    first_uses: list[tuple[bytes, int, str]]
    """(digest, sequence, op) of each command this worker saw first in the chunk."""
    misplaced: list[int]
    """Sequences of events on another aggregate's subject."""


_encode = msgspec.msgpack.Encoder().encode
_decode_share = msgspec.msgpack.Decoder(_Share).decode
_decode_share_report = msgspec.msgpack.Decoder(_ShareReport).decode


def _share_of(subject: str, count: int) -> int | None:
    """The worker that audits the messages on ``subject``; None for a colony's (every
    worker reads them: its graphs' rules need the colony; worker 0 reports them)."""
    if subject.endswith(".colony"):
        return None
    return zlib.crc32(subject.encode()) % count


def _split(messages: list[StoredMessage], count: int) -> list[_Share]:
    shares = [_Share([], []) for _ in range(count)]
    for message in messages:
        owner = _share_of(message.subject, count)
        if owner is not None:
            shares[owner].messages.append(message)
            continue
        for index, share in enumerate(shares):
            share.messages.append(message)
            if index > 0:
                share.context.append(message.sequence)
    return shares


async def _audit_in_shares(
    reader: JetStreamLog,
    audit: _AuditSettings,
    count: int,
    last: int,
    progress: Callable[[AuditProgress], object] | None,
) -> AuditReport:
    """The whole-log audit by ``count`` workers; raises :class:`_NotInShares`.

    Each worker is handed its shares up to :data:`SHARES_AHEAD` chunks ahead, so it goes
    on with its next share as soon as it is done, whatever the others do."""
    report = AuditReport(workers=count)
    first_uses: dict[bytes, tuple[int, int]] = {}  # command digest -> (worker, sequence)
    handed: collections.deque[list[StoredMessage]] = collections.deque()
    async with _share_workers(count, audit) as workers:
        async for chunk in _chunks(reader):
            for worker, share in zip(workers, _split(chunk, count), strict=True):
                worker.hand(share)
            handed.append(chunk)
            if len(handed) > SHARES_AHEAD:
                await _merge(handed.popleft(), workers, report, first_uses, last, progress)
        while handed:
            await _merge(handed.popleft(), workers, report, first_uses, last, progress)
    return report


SHARES_AHEAD = 2
"""Chunks handed to the workers beyond the one whose reports are awaited."""


async def _merge(
    chunk: list[StoredMessage],
    workers: list[_Worker],
    report: AuditReport,
    first_uses: dict[bytes, tuple[int, int]],
    last: int,
    progress: Callable[[AuditProgress], object] | None,
) -> None:
    """Adds the workers' reports on their shares of ``chunk`` to ``report``, findings in
    log order; raises :class:`_NotInShares` for what the shares cannot judge alone."""
    shares = await asyncio.gather(*(worker.report() for worker in workers))
    found: list[Finding] = []
    for index, share in enumerate(shares):
        if share.misplaced:
            raise _NotInShares(
                f"the event at sequence {share.misplaced[0]} is on another aggregate's subject"
            )
        for digest, sequence, op in share.first_uses:
            other, seen = first_uses.setdefault(digest, (index, sequence))
            if other != index and op not in _ONE_COMMAND_MANY_EVENTS:
                raise _NotInShares(
                    f"the command of the event at sequence {max(sequence, seen)} "
                    "was used before by an event of another share"
                )
        report.checked += share.checked
        found += (Finding(*finding) for finding in share.findings)
    report.findings += sorted(found, key=lambda finding: finding.sequence)
    _tell(progress, report.checked, chunk, last)


class _Worker:
    """One worker process as the auditing process sees it: shares are handed to it in
    order (each sent once the one before is), its reports read in the same order, each
    in a thread of a pool that has one for every send and every read under way."""

    def __init__(self, connection: Connection, threads: ThreadPoolExecutor) -> None:
        self.connection = connection
        self.threads = threads
        self._sent: asyncio.Future[None] | None = None

    def hand(self, share: _Share) -> None:
        """Sends ``share`` after those handed before (not waiting for it)."""
        self._sent = asyncio.ensure_future(self._send(_encode(share), self._sent))

    async def _send(self, data: bytes, before: asyncio.Future[None] | None) -> None:
        if before is not None:
            await before
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self.threads, self.connection.send_bytes, data)
        except OSError as error:
            raise _NotInShares(f"a worker failed ({error!r})") from None

    async def report(self) -> _ShareReport:
        """The worker's report on the oldest share it has not reported on."""
        loop = asyncio.get_running_loop()
        try:
            data = await loop.run_in_executor(self.threads, self.connection.recv_bytes)
        except (EOFError, OSError) as error:
            raise _NotInShares(f"a worker failed ({error!r})") from None
        return _decode_share_report(data)

    async def sent(self) -> None:
        """Waits until what was handed is sent (or failed: then quietly)."""
        if self._sent is not None:
            with contextlib.suppress(_NotInShares):
                await self._sent


@contextlib.asynccontextmanager
async def _share_workers(count: int, audit: _AuditSettings) -> AsyncIterator[list[_Worker]]:
    """``count`` worker processes running :func:`_audit_shares`, each on a pipe, started
    by a fork server: this process has threads (NATS, the store), which a plain fork
    would copy in an unknown state. The fork server imports this module once (when this
    process starts it), so a worker starts without importing anything."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    pipes = [context.Pipe() for _ in range(count)]
    processes = [
        context.Process(
            target=_audit_shares, args=(theirs, audit), name=f"audit-worker-{index}", daemon=True
        )
        for index, (_, theirs) in enumerate(pipes)
    ]
    threads = ThreadPoolExecutor(2 * count, thread_name_prefix="audit-pipe")
    workers = [_Worker(ours, threads) for ours, _ in pipes]
    ended = False
    try:
        for process in processes:
            process.start()
        for _, theirs in pipes:
            theirs.close()
        yield workers
        ended = True
    finally:
        for worker in workers:
            if ended:
                with contextlib.suppress(OSError):
                    worker.connection.send_bytes(b"")  # the end
        for process in processes:
            if process.pid is None:
                continue
            if ended:  # else their work is of no use: end them now
                process.join(STOP_WORKERS)
            if process.is_alive():
                process.kill()
            process.join()
        for worker in workers:  # a send under way fails once its worker is gone
            await worker.sent()
            worker.connection.close()
        threads.shutdown(wait=True)


STOP_WORKERS = 5.0
"""Seconds a worker is given to end once told to (it is killed after)."""


def _audit_shares(connection: Connection, audit: _AuditSettings) -> None:
    """A worker: audits the shares it is sent, in order, with one :class:`Auditor`
    (so with the state its share builds), and answers each with a :class:`_ShareReport`;
    ends on an empty message or when the auditing process is gone."""
    _end_with(audit.auditing_pid)
    auditor = audit.auditor()
    auditor.first_uses = []
    # The collector runs once per share, not every few hundred allocations: a share
    # makes little cyclic garbage (aggregates have no cycles: refcounting frees those
    # written to disk), and what is left after it (the running graphs, the commands)
    # is frozen, out of later scans, which otherwise grow with it.
    gc.disable()
    try:
        while data := connection.recv_bytes():
            connection.send_bytes(_encode(_audit_share(auditor, _decode_share(data))))
            gc.collect()
            gc.freeze()
    except (EOFError, BrokenPipeError):  # the auditing process is gone
        pass
    except SpillFailed:  # no traceback: the auditing process, alone, says why
        os._exit(1)
    auditor.aggregates.close()


def _audit_share(auditor: Auditor, share: _Share) -> _ShareReport:
    context = set(share.context)
    checked = auditor.report.checked
    misplaced = []
    for message in share.messages:
        event = auditor.decode(message)
        subject = None if isinstance(event, Untrusted) else event.originator_id
        if subject is not None and message.subject != auditor.events_prefix + subject:
            misplaced.append(message.sequence)
        auditor.check(message, context=message.sequence in context, decoded=event)
    assert auditor.first_uses is not None
    first_uses = [use for use in auditor.first_uses if use[1] not in context]
    auditor.first_uses.clear()
    findings = [(f.sequence, f.subject, f.kind, f.reasons) for f in auditor.report.findings]
    auditor.report.findings.clear()
    return _ShareReport(auditor.report.checked - checked, findings, first_uses, misplaced)


def _end_with(auditor: int) -> None:
    """Makes this worker exit once the auditing process ``auditor`` is gone: killed, it
    could not tell its workers to end, and one busy with a share would go on."""

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


async def _chunks(reader: JetStreamLog) -> AsyncIterator[list[StoredMessage]]:
    """The log's event messages, :data:`READ_CHUNK` at a time, in order."""
    start = 1
    while True:
        messages = await reader.read_range(
            f"{PREFIX}.ev.>", start, READ_CHUNK, patience=READ_PATIENCE
        )
        if not messages:
            return
        yield messages
        if len(messages) < READ_CHUNK:
            return
        start = messages[-1].sequence + 1


def _tell(
    progress: Callable[[AuditProgress], object] | None,
    checked: int,
    chunk: list[StoredMessage],
    last: int,
) -> None:
    if progress is not None:
        progress(AuditProgress(checked, chunk[-1].sequence, last))


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
