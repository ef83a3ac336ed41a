"""The whole-log audit with signature workers (``verify_log``'s parallel path): a log
long enough to start them, read in several chunks, with one forged signature in the
middle. The forgery is reported at its sequence, exactly as the one-process audit
reports it, and nothing else is. The workers of an auditing process that is killed
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
from colonies_es.projections.audit import AuditProgress, AuditReport, signatures_hold
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


def test_the_workers_verdicts_are_the_signature_checks() -> None:
    key = crypto.new_private_key()
    good = crypto.seal("close", {"processid": "p"}, key)
    signed = msgspec.json.decode(good, type=crypto.SignedCommand)
    bad = msgspec.json.encode(msgspec.structs.replace(signed, payload=signed.payload + b" "))

    colonyos = b'{"payloadtype": "submitfuncspecmsg", "payload": "", "signature": ""}'

    assert signatures_hold([good, bad, b"not a command", colonyos]) == [True, False, None, None]


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
