"""`colonies audit verify|export` on a real stack: clean histories verify; events appended
to the stream by someone bypassing the engine, tampered commands and tampered contents
are reported (and, with the seal key, ignored by the engine, history and replay)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import nats
import pytest
from eventsourcing.persistence import Mapper

from colonies_es import Workflow, crypto, func_spec
from colonies_es.debug import rerun_from_failed
from colonies_es.domain import AuditedEvent, ProcessClosed
from colonies_es.projections.audit import AuditReport, Authorities, Finding, verify
from colonies_es.projections.history import HistoryEntry
from colonies_es.projections.timetravel import Nth, state_at
from colonies_es.states import ProcessState
from colonies_es.store.codec import MsgspecTranscoder, encode_envelope
from tests.stack import ColonyHandle, Stack
from tests.test_history import (
    GEN_NUMS,
    SUM_NUMS,
    cli,
    cli_ok,
    executor,
    failed_map_reduce,
    read_history,
    run_workflow,
    seed,
    spec,
    wait_ended,
)

CHATTY = """
def chatty(ctx={}):
    me, key = ctx["process"].processid, ctx["executor_prvkey"]
    colonies.add_log(me, "hello from chatty", key)
    colonies.add_attribute(me, "mood", "talkative", key)
    colonies.set_output(me, ["partial"], key)
"""
SLOW = "import time\n\ndef slow(ctx={}):\n    time.sleep(3)\n"


@pytest.fixture(scope="module")
def stack(stack_with_projector: Stack) -> Stack:
    """History, replay, debug and export read through a projector: the engine process
    runs one."""
    return stack_with_projector


def authorities(stack: Stack) -> Authorities:
    engine_id = crypto.id_from_private_key(stack.engine.engine_prvkey)
    return Authorities(engine_id=engine_id, server_id=stack.engine.server_id)


def audit(stack: Stack, processgraphid: str | None, seal: bool = True) -> AuditReport:
    key = stack.engine.seal_key if seal else None
    return verify(stack.nats.url, authorities(stack), processgraphid, seal_key=key)


def ids_options(stack: Stack) -> list[str]:
    ids = authorities(stack)
    return ["--engine-id", ids.engine_id, "--server-id", ids.server_id]


def publish(stack: Stack, subject: str, payload: bytes) -> int:
    """Append straight to the stream with nats-py, as a client bypassing the engine
    would; returns the message's sequence."""

    async def send() -> int:
        nc = await nats.connect(stack.nats.url)
        try:
            return (await nc.jetstream().publish(subject, payload)).seq
        finally:
            await nc.close()

    return asyncio.run(send())


def forge(stack: Stack, subject: str, event: AuditedEvent) -> int:
    """Append ``event`` as a well-formed but unsealed event message on ``subject``."""
    mapper: Mapper[str] = Mapper(transcoder=MsgspecTranscoder())
    stored = mapper.to_stored_event(event)
    return publish(stack, subject, encode_envelope(stored, subject))


def only(report: AuditReport) -> Finding:
    assert len(report.findings) == 1, report.findings
    return report.findings[0]


def never_taken(stack: Stack, colony: ColonyHandle) -> str:
    """A graph whose only process no executor can take: the engine fails it when its
    waiting time runs out (WaitTimedOut). Returns its id once FAILED."""
    lonely = func_spec("lonely", [], colony.name, "nobody", maxwaittime=1)
    workflow = Workflow(colonyname=colony.name, functionspecs=[lonely])
    graphid = stack.client.submit_workflow(workflow, colony.owner_prvkey).processgraphid
    assert wait_ended(stack, colony, graphid) == ProcessState.FAILED
    return graphid


@pytest.fixture
def colony(stack: Stack) -> ColonyHandle:
    return stack.new_colony()


def test_clean_histories_verify_engine_timeouts_and_reruns_included(
    stack: Stack, colony: ColonyHandle, tmp_path: Path
) -> None:
    graphs = [
        seed(stack, colony),
        run_workflow(stack, colony, spec(colony, "chatty", CHATTY)),
        run_workflow(stack, colony, spec(colony, "slow", SLOW, maxexectime=1)),
        never_taken(stack, colony),
    ]
    lonely = stack.client.submit_workflow(
        Workflow(colonyname=colony.name, functionspecs=[spec(colony, "gen_nums", GEN_NUMS)]),
        colony.owner_prvkey,
    )
    stack.client.cancel_processgraph(lonely.processgraphid, colony.owner_prvkey)
    stack.client.remove_processgraph(lonely.processgraphid, colony.owner_prvkey)
    failed = failed_map_reduce(stack, colony, tmp_path / "fixed")
    (tmp_path / "fixed").touch()
    with executor(stack, colony, name="ex-2"):
        rerun = rerun_from_failed(stack.client, failed, colony.owner_prvkey)
        wait_ended(stack, colony, rerun.processgraphid)
    graphs += [lonely.processgraphid, failed, rerun.processgraphid]
    kinds = {e.kind for graphid in graphs for e in read_history(stack, graphid)}
    assert {"ExecutionTimedOut", "WaitTimedOut", "GraphRerun", "ChildAdded"} <= kinds
    assert {"LogAdded", "AttributeAdded", "OutputSet", "GraphCancelled", "GraphRemoved"} <= kinds

    for graphid in graphs:
        report = audit(stack, graphid)
        assert report.ok, (graphid, report.findings)
        assert audit(stack, graphid, seal=False).ok

    shown = cli_ok(
        stack,
        "audit",
        "verify",
        "--processgraphid",
        graphs[0],
        *ids_options(stack),
        prvkey=colony.owner_prvkey,
    )
    assert f"events of workflow {graphs[0]} verify" in shown


def test_timeouts_need_the_engine_id_to_verify(stack: Stack, colony: ColonyHandle) -> None:
    graphid = never_taken(stack, colony)
    timeout = read_history(stack, graphid)[-1]
    assert timeout.kind == "WaitTimedOut"

    no_engine = Authorities(server_id=stack.engine.server_id)
    report = verify(stack.nats.url, no_engine, graphid, seal_key=stack.engine.seal_key)

    finding = only(report)
    assert (finding.sequence, finding.kind) == (timeout.sequence, "WaitTimedOut")
    assert finding.reasons == [
        "only the engine may cause it, and its id is not given (--engine-id)"
    ]


def test_an_event_appended_by_a_client_bypassing_the_engine_is_reported_and_ignored(
    stack: Stack, colony: ColonyHandle
) -> None:
    executor_key = stack.new_executor(colony, name="ex-1")
    workflow = Workflow(
        colonyname=colony.name,
        functionspecs=[
            spec(colony, "gen_nums", GEN_NUMS),
            spec(colony, "sum_nums", SUM_NUMS, ("gen_nums",)),
        ],
    )
    graph = stack.client.submit_workflow(workflow, colony.owner_prvkey)
    gen_nums = stack.client.assign(colony.name, 10, executor_key)
    before = read_history(stack, graph.processgraphid)
    attacker = crypto.new_private_key()
    attacker_id = crypto.id_from_private_key(attacker)
    body = {"processid": gen_nums.processid, "out": [999]}
    forged = forge(
        stack,
        before[-1].subject,
        ProcessClosed(
            originator_id=before[-1].event.originator_id,
            originator_version=before[-1].version + 1,
            timestamp=datetime.now(UTC),
            actor=attacker_id,
            command=crypto.seal("close", body, attacker),
            ready=[],
            graphstate=int(ProcessState.RUNNING),
            processid=gen_nums.processid,
            executorid=attacker_id,
            attempt=1,
            output=[999],
        ),
    )

    # History and replay (with the seal key) do not see it; the engine neither: the real
    # executor still holds gen_nums and the workflow runs on with the real output.
    assert read_history(stack, graph.processgraphid) == before
    stack.client.close(gen_nums.processid, [1, 2], executor_key)
    sum_nums = stack.client.assign(colony.name, 10, executor_key)
    assert sum_nums.input == [1, 2]
    stack.client.close(sum_nums.processid, [3], executor_key)
    after = read_history(stack, graph.processgraphid)
    assert [e.summary for e in after][-1] == "sum_nums closed: out=[3]; graph SUCCESS"
    assert forged not in [e.sequence for e in after]
    assert state_at(after, Nth(len(after))).state == ProcessState.SUCCESS

    finding = only(audit(stack, graph.processgraphid))
    assert (finding.sequence, finding.kind) == (forged, "ProcessClosed")
    assert finding.reasons[0].startswith("not sealed by the engine")
    assert f"{attacker_id} did not hold gen_nums (it was RUNNING, assigned to " in (
        "; ".join(finding.reasons)
    )
    without_key = only(audit(stack, graph.processgraphid, seal=False))
    assert without_key.sequence == forged
    assert not any("sealed" in reason for reason in without_key.reasons)

    result = cli(
        stack,
        "audit",
        "verify",
        "--processgraphid",
        graph.processgraphid,
        *ids_options(stack),
        prvkey=colony.owner_prvkey,
    )
    assert result.exit_code == 1
    assert f"{forged}  {before[-1].subject}  ProcessClosed: not sealed" in result.stdout
    # The graph's 5 and the forged one: its colony's events are read, not counted.
    assert "1 of 6 events of workflow" in result.stdout


def test_tampered_commands_and_contents_are_reported(stack: Stack, colony: ColonyHandle) -> None:
    graphid = seed(stack, colony)
    entries = read_history(stack, graphid)
    closed: HistoryEntry = entries[2]
    assert isinstance(closed.event, ProcessClosed)
    next_version = len(entries) + 1
    signed = msgspec.json.decode(closed.event.command, type=crypto.SignedCommand)
    tampered_command = msgspec.json.encode(
        msgspec.structs.replace(signed, payload=signed.payload.replace(b"[1,2]", b"[9,9]"))
    )
    someone = crypto.id_from_private_key(crypto.new_private_key())
    forged = {
        "content": forge(
            stack,
            closed.subject,
            dataclasses.replace(closed.event, originator_version=next_version, output=[999]),
        ),
        "command": forge(
            stack,
            closed.subject,
            dataclasses.replace(
                closed.event, originator_version=next_version, command=tampered_command
            ),
        ),
        "actor": forge(
            stack,
            closed.subject,
            dataclasses.replace(closed.event, originator_version=next_version, actor=someone),
        ),
    }

    report = audit(stack, graphid)

    reasons = {f.sequence: "; ".join(f.reasons) for f in report.findings}
    assert sorted(reasons) == sorted(forged.values())
    content = reasons[forged["content"]]
    assert "its output [999] is not the command's [1, 2]" in content
    assert f"its command was already used by the event at sequence {closed.sequence}" in content
    assert "did not hold gen_nums (it was SUCCESS" in content
    assert "its command does not verify: bad signature" in reasons[forged["command"]]
    assert "not by its actor" in reasons[forged["actor"]]
    assert read_history(stack, graphid) == entries


def test_export_writes_the_history_as_json_lines(
    stack: Stack, colony: ColonyHandle, tmp_path: Path
) -> None:
    graphid = seed(stack, colony)
    entries = read_history(stack, graphid)
    path = tmp_path / "history.jsonl"

    export = ("audit", "export", "--processgraphid", graphid)
    cli_ok(stack, *export, "-o", str(path), prvkey=colony.owner_prvkey)

    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["sequence"] for line in lines] == [entry.sequence for entry in entries]
    assert [line["summary"] for line in lines] == [entry.summary for entry in entries]
    assert lines[0]["topic"] == "colonies_es.domain.graph_events:GraphSubmitted"
    assert lines[2]["fields"]["output"] == [1, 2]
    for line in lines:
        envelope = msgspec.json.decode(base64.b64decode(line["command"]), type=crypto.SignedCommand)
        assert crypto.authenticate(envelope).caller_id == line["actor"]
        assert datetime.fromisoformat(line["time"]) == next(
            e.time for e in entries if e.sequence == line["sequence"]
        )
    assert cli_ok(stack, *export, prvkey=colony.owner_prvkey) == path.read_text()


def test_the_whole_log_verifies_until_something_else_is_appended(fresh_stack: Stack) -> None:
    stack = fresh_stack
    seed(stack, stack.new_colony())

    clean = cli(stack, "audit", "verify", *ids_options(stack))
    assert clean.exit_code == 0, clean.output
    assert "events of the log verify" in clean.stdout
    checked = re.search(r"^All (\d+) events of the log verify", clean.stdout, re.MULTILINE)
    assert checked is not None
    events = f"{int(checked[1]):,}"
    summary = rf"^audit: {events} events in [\d.]+ s \([\d,]+ events/s, in one process\)$"
    assert re.search(summary, clean.stderr, re.MULTILINE), clean.stderr

    garbage = publish(stack, f"colonies.ev.x.graph.{'0' * 64}", b"not an event")
    result = cli(stack, "audit", "verify", *ids_options(stack))
    assert result.exit_code == 1
    assert f"{garbage}  colonies.ev.x.graph.{'0' * 64}  -: not an event envelope" in result.stdout

    no_server_id = cli(stack, "audit", "verify", "--engine-id", authorities(stack).engine_id)
    assert no_server_id.exit_code == 1
    assert "only the server owner may cause it, and its id is not given (--server-id)" in (
        no_server_id.stdout
    )
