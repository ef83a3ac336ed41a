"""What a whole-log audit keeps in memory: the graphs still running, not the log.

An auditor that spills (``Auditor(..., spill=True)``, as ``verify_log`` makes them,
one process or workers) lets an ended graph leave memory and keeps only the payloads of
the events applied to it, in a temporary file. When a later event names such a graph
(an honest removal, or something forged onto its subject), the graph is rebuilt from
them, so the findings are exactly those of an auditor keeping everything in memory.
When those files fail (a full disk), the audit ends with one line saying so.
Plans of submitted workflows are remembered by command body, which must not hide a
graph that differs from its command. Offline: the log's real signed and sealed
messages, given to the auditors in log order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import resource
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable

import pytest
from eventsourcing.persistence import Mapper

from benchmarks.audit import AuditLog, _Clock, _write_log, _Writer
from colonies_es import crypto
from colonies_es.domain import GraphSubmitted, ProcessClosed, ProcessGraph
from colonies_es.embedded import NatsServer
from colonies_es.projections import audit
from colonies_es.projections.audit import Auditor
from colonies_es.projections.history import decode_event
from colonies_es.store.codec import MsgspecTranscoder, Sealer, encode_envelope
from colonies_es.store.jetstream import StoredMessage


def messages_of(log: AuditLog) -> list[StoredMessage]:
    return [
        StoredMessage(i + 1, subject, payload, 0)
        for i, (subject, payload) in enumerate(log.payloads)
    ]


def audited(log: AuditLog, spill: bool) -> Auditor:
    auditor = Auditor(log.authorities, log.seal_key, spill=spill)
    for message in messages_of(log):
        auditor.check(message)
    return auditor


def sealed_copy(log: AuditLog, event: object, subject: str, **changes: object) -> tuple[str, bytes]:
    """``event`` with ``changes``, sealed for ``subject`` with the log's key (as only the
    engine could: the audit, not the seal, must catch it)."""
    changed = dataclasses.replace(event, **changes)  # type: ignore[type-var]
    stored = Mapper(transcoder=MsgspecTranscoder()).to_stored_event(changed)
    return subject, encode_envelope(stored, subject, Sealer(log.seal_key))


@pytest.mark.parametrize("batch", [8, 1_000])
def test_ended_graphs_leave_memory_and_are_rebuilt_exactly_when_named_again(
    batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``batch``: ended graphs written to the file at a time (1,000: none is written, the
    200 graphs stay in the batch in memory; 8: they are read back from the file)."""
    monkeypatch.setattr(audit, "_WRITE_BATCH", batch)
    log = AuditLog.make(1_400, os.urandom(32))
    events = [decode_event(message) for message in messages_of(log)]
    submitted = [(i, e) for i, e in enumerate(events) if isinstance(e, GraphSubmitted)]
    closes = [(i, e) for i, e in enumerate(events) if isinstance(e, ProcessClosed)]

    # The first graph, long ended, is removed by the user who submitted it: honest.
    first = submitted[0][1]
    graph = audited(log, spill=False).aggregates.get(first.originator_id)
    assert isinstance(graph, ProcessGraph)
    body = {"processgraphid": first.processgraphid}
    graph.remove(**_Clock().audit("remove_processgraph", body, log.keys["user"]))
    log.payloads += _Writer(log.seal_key).payloads(graph)
    removal = len(log.payloads)
    # The second graph's last close, appended again as its next version: the executor
    # no longer held that process, and its command was used already.
    index, close = closes[3]
    subject = log.payloads[index][0]
    assert close.originator_version == 7  # the graph's last event: it ended
    log.payloads.append(
        sealed_copy(log, close, subject, originator_version=close.originator_version + 1)
    )
    forged_close = len(log.payloads)
    # The third graph submitted again under its own id: it exists (version 7).
    index, again = submitted[2]
    log.payloads.append(sealed_copy(log, again, log.payloads[index][0]))
    forged_submit = len(log.payloads)

    whole = audited(log, spill=False)
    spilled = audited(log, spill=True)

    assert spilled.report == whole.report
    found = {finding.sequence: finding.reasons for finding in whole.report.findings}
    assert sorted(found) == [forged_close, forged_submit], found
    assert removal not in found
    executor = crypto.id_from_private_key(log.keys["executor"])
    assert found[forged_close] == [  # as the graph was when it ended: rebuilt from the file
        f"its command was already used by the event at sequence {closes[3][0] + 1}",
        f"{executor} did not hold sum_nums (it was SUCCESS, assigned to {executor})",
    ]
    assert found[forged_submit] == [
        "it is version 1, expected 8",
        f"its command was already used by the event at sequence {submitted[2][0] + 1}",
    ]
    graphs = len(submitted)
    assert whole.aggregates.resident == graphs + 1  # every graph and the colony
    assert spilled.aggregates.resident == 1  # the colony: every graph had ended
    assert spilled.aggregates.spilled >= graphs + 1  # the removed one left twice


def test_a_remembered_plan_still_finds_a_graph_that_is_not_the_submitted_one() -> None:
    """Every workflow of the log is the same (one body): its plan is made once and
    remembered; a graph recorded with other processes for that very command is found."""
    log = AuditLog.make(700, os.urandom(32))
    events = [decode_event(message) for message in messages_of(log)]
    index, submitted = next(
        (i, e) for i, e in enumerate(events) if isinstance(e, GraphSubmitted) and i > 40
    )
    processes = [dict(process) for process in submitted.processes]
    processes[0]["spec"] = {**processes[0]["spec"], "args": ["not", "submitted"]}
    subject = log.payloads[index][0]
    other = subject.replace(submitted.processgraphid[:8], "0" * 8)
    log.payloads.append(
        sealed_copy(
            log,
            submitted,
            other,
            originator_id=other.removeprefix("colonies.ev."),
            processgraphid=other.rsplit(".", 1)[1],
            processes=processes,
        )
    )

    auditor = audited(log, spill=True)

    assert [(f.sequence, f.reasons) for f in auditor.report.findings] == [
        (
            len(log.payloads),
            [
                f"its command was already used by the event at sequence {index + 1}",
                "its processes are not the ones the command submitted",
            ],
        )
    ]
    assert len(auditor._plans) == 1


def limited_file_size() -> None:
    """In the child: files may not grow past 1 MB (a write beyond fails with EFBIG
    instead of killing the process with SIGXFSZ): a full disk, as the audit sees it."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))


def test_temporary_files_that_fail_end_the_audit_with_one_line(
    nats_server_factory: Callable[..., NatsServer],
) -> None:
    log = AuditLog.make(2_100, os.urandom(32))  # 300 graphs: a batch is written
    server = nats_server_factory()
    asyncio.run(_write_log(server.url, log.payloads))
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLONIES_")}
    command = [sys.executable, "-m", "colonies_es.cli", "audit", "verify", "--port"]
    command += [str(server.port), "--seal-key", log.seal_key.hex()]
    command += ["--server-id", log.authorities.server_id]

    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=120, preexec_fn=limited_file_size
    )

    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if "temporary files" in line]
    assert len(lines) == 1, done.stderr
    assert f"the audit's temporary files in {tempfile.gettempdir()} failed" in lines[0]
    assert "File too large" in lines[0]
