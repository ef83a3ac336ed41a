"""The engine's own listing ops once ended graphs have left its memory (issue 14.3).

``list_processes`` and ``get_processgraphs`` (the ColonyOS gateway's listings) answer
WAITING and RUNNING work from engine memory and forward every other listing to the
read model, sealed with the log's seal key, asking for a view at least as far as the
engine (read your writes). ``remove_all`` works through the colony's graphs as the log's
subjects list them, evicted ones included. Without a projector, a forwarded listing is
a clear 503; a forwarded listing the engine did not seal is refused.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from typing import Any

import nats
import pytest
from nats.micro.request import ERROR_CODE_HEADER, ERROR_HEADER

from colonies_es import crypto, func_spec
from colonies_es.models import FuncSpec
from colonies_es.protocol import FORWARDED_LIST_SUBJECT, api_subject
from colonies_es.states import ProcessState
from tests.eventlog import nothing_written
from tests.processes import wait_until
from tests.stack import ColonyHandle, Stack, start_stack, stop_stack

EXECUTOR_TYPE = "python-executor"


def single(colony: ColonyHandle) -> FuncSpec:
    return func_spec("job", [], colony.name, EXECUTOR_TYPE)


async def _request(url: str, subject: str, payload: bytes) -> tuple[int | None, str, Any]:
    nc = await nats.connect(url)
    try:
        reply = await nc.request(subject, payload, timeout=20)
    finally:
        await nc.close()
    headers = reply.headers or {}
    code = headers.get(ERROR_CODE_HEADER)
    body = json.loads(reply.data) if code is None else None
    return (None if code is None else int(code)), headers.get(ERROR_HEADER, ""), body


def engine_op(stack: Stack, op: str, body: dict[str, Any], prvkey: str) -> Any:
    """The engine's answer to a signed ``op`` (AssertionError with its refusal)."""
    status, message, answer = asyncio.run(
        _request(stack.nats.url, api_subject(op), crypto.seal(op, body, prvkey))
    )
    assert status is None, f"{op}: {status} {message}"
    return answer


def engine_refusal(stack: Stack, op: str, body: dict[str, Any], prvkey: str) -> tuple[int, str]:
    status, message, _ = asyncio.run(
        _request(stack.nats.url, api_subject(op), crypto.seal(op, body, prvkey))
    )
    assert status is not None, f"{op} was answered"
    return status, message


def evicted_so_far(stack: Stack) -> int:
    found = re.findall(r"memory: (\d+) ended graphs left memory", stack.engine.log())
    return sum(int(n) for n in found)


def test_listings_of_ended_work_come_from_the_read_model(stack: Stack) -> None:
    client = stack.client
    evicted_before = evicted_so_far(stack)
    colony = stack.new_colony()
    executor = stack.new_executor(colony)
    owner = colony.owner_prvkey
    ended = [client.submit_func_spec(single(colony), owner) for _ in range(4)]
    for number in range(4):
        process = client.assign(colony.name, 10, executor)
        if number == 3:
            client.fail(process.processid, ["broke"], executor)
        else:
            client.close(process.processid, [number], executor)
    waiting = client.submit_func_spec(single(colony), owner)
    wait_until(
        lambda: evicted_so_far(stack) >= evicted_before + 4, 30, "the 4 ended graphs evicted"
    )

    def listed(op: str, state: int, count: int = 100) -> list[str]:
        body = {"colonyname": colony.name, "count": count, "state": state}
        key = "processid" if op == "list_processes" else "processgraphid"
        return [item[key] for item in engine_op(stack, op, body, owner)]

    newest_first = [p.processid for p in reversed(ended[:3])]
    assert listed("list_processes", ProcessState.SUCCESS) == newest_first
    assert listed("list_processes", ProcessState.SUCCESS, count=2) == newest_first[:2]
    assert listed("list_processes", ProcessState.FAILED) == [ended[3].processid]
    assert listed("list_processes", ProcessState.WAITING) == [waiting.processid]  # memory
    assert listed("list_processes", -1) == [
        waiting.processid,
        *reversed([p.processid for p in ended]),
    ]
    graphs = [p.processgraphid for p in reversed(ended[:3])]
    assert listed("get_processgraphs", ProcessState.SUCCESS) == graphs

    # Read your writes: what the engine just wrote is in the forwarded answer.
    process = client.assign(colony.name, 10, executor)
    client.close(process.processid, [9], executor)
    assert listed("list_processes", ProcessState.SUCCESS)[0] == waiting.processid

    # Only members: the engine checks, before forwarding anything.
    stranger = crypto.new_private_key()
    body = {"colonyname": colony.name, "count": 10, "state": ProcessState.SUCCESS}
    assert engine_refusal(stack, "list_processes", body, stranger)[0] == 403

    # remove_all works through the log's subjects: evicted graphs are removed too.
    client.remove_all_processgraphs(colony.name, owner, ProcessState.SUCCESS)
    assert listed("list_processes", ProcessState.SUCCESS) == []
    assert listed("list_processes", ProcessState.FAILED) == [ended[3].processid]
    for removed in ended[:3]:
        with pytest.raises(Exception, match="does not exist"):
            client.get_process(removed.processid, owner)


def test_a_forged_forwarded_listing_is_refused(stack: Stack) -> None:
    colony = stack.new_colony()
    forged = json.dumps(
        {
            "what": "processes",
            "colonyname": colony.name,
            "state": None,
            "count": 10,
            "caller": crypto.id_from_private_key(colony.owner_prvkey),
            "after": 0,
            "wait": 1.0,
        }
    ).encode()
    status, message, _ = asyncio.run(_request(stack.nats.url, FORWARDED_LIST_SUBJECT, forged))
    assert status == 403, message
    assert "not sealed by the engine" in message


@pytest.fixture
def engine_alone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(tmp_path_factory.mktemp("alone"), projector=False)
    try:
        yield stack
    finally:
        stop_stack(stack)


def test_without_a_projector_a_listing_of_ended_work_is_a_clear_503(engine_alone: Stack) -> None:
    stack = engine_alone
    colony = stack.new_colony()
    owner = colony.owner_prvkey
    waiting = stack.client.submit_func_spec(single(colony), owner)
    body = {"colonyname": colony.name, "count": 10, "state": ProcessState.SUCCESS}
    with nothing_written(stack.nats.url):
        status, message = engine_refusal(stack, "list_processes", body, owner)
    assert status == 503
    assert message.startswith("no projector answers listings of ended graphs")
    body["state"] = ProcessState.WAITING  # live work needs no projector
    [listed] = engine_op(stack, "list_processes", body, owner)
    assert listed["processid"] == waiting.processid
