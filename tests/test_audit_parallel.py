"""The whole-log audit by worker processes, each auditing a share of the log
(``verify_log``'s parallel path): a log long enough to start them, read in several
chunks, with one forged signature in the middle. The forgery is reported at its
sequence, exactly as the one-process audit reports it, and nothing else is. What the
shares cannot judge alone (a command used again in another share, an event copied onto
another graph's subject) makes the audit start again in one process, with the same
findings as the one-process audit. The workers of an auditing process that is killed
exit with it."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import nats
import pytest
from eventsourcing.persistence import Mapper

from benchmarks.audit import AuditLog, _write_log
from colonies_es import crypto
from colonies_es.domain import ProcessClosed
from colonies_es.embedded import NatsServer
from colonies_es.projections import audit
from colonies_es.projections.audit import AuditProgress, AuditReport, _share_of
from colonies_es.projections.history import decode_event
from colonies_es.store.codec import MsgspecTranscoder, Sealer, encode_envelope
from colonies_es.store.jetstream import StoredMessage

EVENTS = 5_600
"""Just over :data:`~colonies_es.projections.audit.PARALLEL_FROM`: workers are started."""


def with_forged_signature(log: AuditLog, index: int) -> None:
    """Replaces message ``index`` (a ProcessClosed) by the same event whose command's
    signature has one digit changed, sealed again: only its signature is wrong."""
    subject, payload = log.payloads[index]
    event = decode_event(StoredMessage(index + 1, subject, payload, 0))
    assert isinstance(event, ProcessClosed)
    signed = msgspec.json.decode(event.command, type=crypto.SignedCommand)
    digit = "1" if signed.signature[10] != "1" else "2"
    forged = signed.signature[:10] + digit + signed.signature[11:]
    command = msgspec.json.encode(msgspec.structs.replace(signed, signature=forged))
    stored = Mapper(transcoder=MsgspecTranscoder()).to_stored_event(
        dataclasses.replace(event, command=command)
    )
    log.payloads[index] = (subject, encode_envelope(stored, subject, Sealer(log.seal_key)))


def audit_log(url: str, log: AuditLog, workers: int, seen: list[AuditProgress]) -> AuditReport:
    async def run() -> AuditReport:
        nc = await nats.connect(url)
        try:
            return await audit.verify_log(
                nc, log.authorities, log.seal_key, workers=workers, progress=seen.append
            )
        finally:
            await nc.close()

    return asyncio.run(run())


def test_a_forged_signature_mid_log_is_reported_at_its_sequence_by_the_workers(
    nats_server_factory: Callable[..., NatsServer],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = AuditLog.make(EVENTS, os.urandom(32))
    middle = next(
        index
        for index in range(len(log.payloads) // 2, len(log.payloads))
        if log.payloads[index][0].startswith("colonies.ev.audit-bench.graph.")
        and isinstance(
            decode_event(StoredMessage(index + 1, *log.payloads[index], 0)), ProcessClosed
        )
    )
    with_forged_signature(log, middle)
    server = nats_server_factory()
    asyncio.run(_write_log(server.url, log.payloads))
    monkeypatch.setattr(audit, "READ_CHUNK", 1_000)  # several chunks: the read-ahead runs

    with caplog.at_level(logging.WARNING, logger="colonies.audit"):
        progress: list[AuditProgress] = []
        parallel = audit_log(server.url, log, 2, progress)
    alone = audit_log(server.url, log, 0, [])

    assert [(f.sequence, f.kind, f.reasons) for f in parallel.findings] == [
        (middle + 1, "ProcessClosed", ["its command does not verify: bad signature"])
    ]
    assert parallel == alone  # the same findings, the same count
    assert (parallel.workers, alone.workers) == (2, 0)
    assert parallel.checked == len(log.payloads)
    assert not caplog.records  # no worker failed: the workers' verdicts were used
    assert [p.checked for p in progress] == [
        min(n, len(log.payloads)) for n in range(1_000, len(log.payloads) + 1_000, 1_000)
    ]
    assert progress[-1].position == progress[-1].last == len(log.payloads)


def resealed(log: AuditLog, index: int, subject: str, command: bytes | None = None) -> None:
    """Message ``index`` on ``subject`` instead (with ``command`` if given), sealed for
    that subject with the log's key, as only the engine could."""
    event = decode_event(StoredMessage(index + 1, *log.payloads[index], 0))
    if command is not None:
        event = dataclasses.replace(event, command=command)
    stored = Mapper(transcoder=MsgspecTranscoder()).to_stored_event(event)
    log.payloads[index] = (subject, encode_envelope(stored, subject, Sealer(log.seal_key)))


def closes_in_two_shares(log: AuditLog) -> tuple[int, int]:
    """Indices of two ProcessClosed messages of graphs two workers share out, in order."""
    first: dict[int | None, int] = {}
    for index, (subject, payload) in enumerate(log.payloads):
        event = decode_event(StoredMessage(index + 1, subject, payload, 0))
        if isinstance(event, ProcessClosed):
            first.setdefault(_share_of(subject, 2), index)
        if len(first) == 2:
            earlier, later = sorted(first.values())
            return earlier, later
    raise AssertionError("no two shares")


@pytest.mark.parametrize("tampering", ["command used again", "event on another subject"])
def test_what_the_shares_cannot_judge_alone_is_audited_again_in_one_process(
    tampering: str,
    nats_server_factory: Callable[..., NatsServer],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(audit, "PARALLEL_FROM", 500)  # a short log is enough
    monkeypatch.setattr(audit, "READ_CHUNK", 300)
    log = AuditLog.make(1_400, os.urandom(32))
    first, second = closes_in_two_shares(log)
    if tampering == "command used again":  # the first close's command, in the second's
        command = decode_event(StoredMessage(first + 1, *log.payloads[first], 0)).command
        resealed(log, second, log.payloads[second][0], command)
    else:  # the second close, copied onto the first's graph
        resealed(log, second, log.payloads[first][0])
    server = nats_server_factory()
    asyncio.run(_write_log(server.url, log.payloads))

    with caplog.at_level(logging.WARNING, logger="colonies.audit"):
        parallel = audit_log(server.url, log, 2, [])
    alone = audit_log(server.url, log, 0, [])

    assert [f.sequence for f in alone.findings] == [second + 1]
    assert parallel == alone
    assert [record.getMessage() for record in caplog.records] == [
        "auditing the log again in one process: "
        + (
            f"the command of the event at sequence {second + 1} was used before by an event "
            "of another share"
            if tampering == "command used again"
            else f"the event at sequence {second + 1} is on another aggregate's subject"
        )
    ]


AUDITOR = """
import asyncio, sys
import nats
from colonies_es.projections.audit import Authorities, verify_log

async def main() -> None:
    nc = await nats.connect(sys.argv[1])
    while True:  # until killed
        await verify_log(nc, Authorities(), workers=2)

if __name__ == "__main__":
    asyncio.run(main())
"""


def descendants(pid: int) -> set[int]:
    """The processes below ``pid`` (from /proc)."""
    children: dict[int, set[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()  # noqa: SIM115
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, set()).add(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), set()):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_workers_of_a_killed_audit_exit_with_it(
    nats_server_factory: Callable[..., NatsServer], tmp_path: Path
) -> None:
    log = AuditLog.make(EVENTS, os.urandom(32))
    server = nats_server_factory()
    asyncio.run(_write_log(server.url, log.payloads))
    script = tmp_path / "auditor.py"
    script.write_text(AUDITOR)
    auditor = subprocess.Popen([sys.executable, str(script), server.url])
    try:
        deadline = time.monotonic() + 60
        while len(workers := descendants(auditor.pid)) < 3:  # fork server and 2 workers
            assert auditor.poll() is None, "the auditor ended by itself"
            assert time.monotonic() < deadline, "no workers started"
            time.sleep(0.1)
    finally:
        auditor.kill()  # SIGKILL: it cannot shut its pool down
        auditor.wait(10)

    deadline = time.monotonic() + 15
    while left := [pid for pid in workers if alive(pid)]:
        assert time.monotonic() < deadline, f"still running: {left}"
        time.sleep(0.2)
