"""A retried claim is answered with the assignment its own event made, or with nothing.

A claim whose reply was lost (an engine killed after its append, NATS gone before the
reply got out) is sent again with the same signed bytes, and the engine answers the
retry from its replay mark (engine/replies.py). When the attempt that claim was given
ended meanwhile (it overran its ``maxexectime``, failed) and the process was retried
and assigned to another executor, the retry must not hand the claimer the *other*
executor's attempt: the claimer would run it and count it as its own (the chaos soak's
"lost acknowledged claim"). The retry is answered "nothing ready" instead, as a claim
that found no work, and writes nothing. Proven for the three ways a claim travels (on
its own, as a prefetch claim, inside a close), on the stack's engine and on a replica
that learnt of the claim from the log only; and that a retry of a claim whose attempt
is still live gets that attempt, as before.

Each attempt here ends with the executor's own ``fail`` (the engine ends an overrun
attempt the same way, by releasing it for a retry), which costs no waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import msgspec
import nats
from nats.micro.request import ERROR_CODE_HEADER, ERROR_HEADER

from colonies_es import crypto
from colonies_es.chaos.run import CLAIM_OVER_LINE
from colonies_es.engine.app import ColoniesApp
from colonies_es.models import Process, attempt_of, func_spec
from colonies_es.protocol import (
    NOTHING_READY,
    Claim,
    CloseProcess,
    NextProcess,
    api_subject,
)
from tests.eventlog import nothing_written, read_events
from tests.stack import ColonyHandle, Stack, engine_app


def send(stack: Stack, op: str, sealed: bytes) -> tuple[int, bytes, str]:
    """Sends the signed bytes ``sealed`` to the engine as ``op``, as a client's attempt
    (or its retry) does: the reply's status (200 when it is not an error), body and
    error message."""

    async def request() -> tuple[int, bytes, str]:
        nc = await nats.connect(stack.nats.url)
        try:
            reply = await nc.request(api_subject(op), sealed, timeout=20)
        finally:
            await nc.close()
        headers = reply.headers or {}
        return int(headers.get(ERROR_CODE_HEADER, 200)), reply.data, headers.get(ERROR_HEADER, "")

    return asyncio.run(request())


def send_to_new_replica(stack: Stack, op: str, sealed: bytes) -> tuple[int, bytes, str]:
    """:func:`send`, answered by an engine application started in this process beside
    the stack's engine: a replica that knows the commands before it from the log only."""
    replica: ColoniesApp = engine_app(stack)

    async def handle() -> tuple[int, bytes, str]:
        outcome = await replica.handle(op, sealed, time.time())
        return outcome.status, outcome.body, outcome.message

    try:
        return replica.aggregates.store.connection.run(handle())
    finally:
        replica.close()


def ready_process(stack: Stack, colony: ColonyHandle) -> str:
    """A process of its own graph, ready, which may be retried."""
    spec = func_spec("flaky", [], colony.name, "python-executor", maxretries=3)
    return stack.client.submit_func_spec(spec, colony.owner_prvkey).processid


def taken_over(stack: Stack, colony: ColonyHandle, process: Process, first: str) -> Process:
    """Ends attempt 1 of ``process`` (held by ``first``) and lets a second executor
    take attempt 2; returns that attempt as the second executor got it."""
    assert (attempt_of(process), process.assignedexecutorid) == (
        1,
        crypto.id_from_private_key(first),
    )
    stack.client.fail(process.processid, ["the executor went quiet"], first, attempt=1)
    second = stack.new_executor(colony)
    retried = stack.client.assign(colony.name, 10, second)
    assert retried.processid == process.processid
    assert (attempt_of(retried), retried.assignedexecutorid) == (
        2,
        crypto.id_from_private_key(second),
    )
    return retried


def assignments(stack: Stack, processid: str) -> list[tuple[int, str]]:
    """(attempt, executor id) of every ProcessAssigned of ``processid`` in the log."""
    return [
        (event.state["attempt"], event.state["executorid"])
        for event in read_events(stack.nats.url).of_kind("ProcessAssigned")
        if event.processid == processid
    ]


def assert_nothing_for_the_claimer(answer: tuple[int, bytes, str]) -> None:
    status, body, message = answer
    assert (status, message.startswith(NOTHING_READY)) == (404, True), (status, body, message)
    assert "ended" in message, message


def test_a_retried_claim_whose_attempt_was_taken_over_gets_nothing(stack: Stack) -> None:
    colony = stack.new_colony()
    first = stack.new_executor(colony)
    processid = ready_process(stack, colony)
    claim = crypto.seal("claim", Claim(colonyname=colony.name), first)
    status, body, message = send(stack, "claim", claim)
    assert status == 200, message
    process = msgspec.json.decode(body, type=Process)
    assert process.processid == processid
    retried = taken_over(stack, colony, process, first)

    with nothing_written(stack.nats.url, colony=colony.name):
        assert_nothing_for_the_claimer(send(stack, "claim", claim))
        # A replica that knows the claim from the log only (its rebuild) answers alike.
        assert_nothing_for_the_claimer(send_to_new_replica(stack, "claim", claim))
    # The engine says so in its log, in the words the chaos harness counts.
    assert CLAIM_OVER_LINE.decode() in stack.engine.log()
    assert assignments(stack, processid) == [
        (1, crypto.id_from_private_key(first)),
        (2, retried.assignedexecutorid),
    ]


def test_a_retried_prefetch_claim_whose_attempt_was_taken_over_gets_nothing(
    stack: Stack,
) -> None:
    colony = stack.new_colony()
    first = stack.new_executor(colony)
    processid = ready_process(stack, colony)
    claim = crypto.seal("claim", Claim(colonyname=colony.name, prefetch=True), first)
    status, body, message = send(stack, "claim", claim)
    assert status == 200, message
    taken = msgspec.json.decode(body, type=NextProcess).next
    assert taken is not None
    assert taken.processid == processid
    taken_over(stack, colony, taken, first)

    with nothing_written(stack.nats.url, colony=colony.name):
        assert_nothing_for_the_claimer(send(stack, "claim", claim))
    assert len(assignments(stack, processid)) == 2


def test_a_retried_close_whose_claim_was_taken_over_brings_no_next_process(
    stack: Stack,
) -> None:
    """The executor sends a close's bytes again (its child's close, unanswered): the
    close is answered as done, and the claim it carried brings nothing."""
    colony = stack.new_colony()
    first = stack.new_executor(colony)
    ready_process(stack, colony)
    closing = stack.client.assign(colony.name, 10, first)
    processid = ready_process(stack, colony)
    claim = crypto.seal("claim", Claim(colonyname=colony.name), first)
    body = CloseProcess(processid=closing.processid, out=[1], attempt=1, claim=claim)
    close = crypto.seal("close", body, first)
    status, reply, message = send(stack, "close", close)
    assert status == 200, message
    taken = msgspec.json.decode(reply, type=NextProcess).next
    assert taken is not None
    assert taken.processid == processid
    taken_over(stack, colony, taken, first)

    with nothing_written(stack.nats.url, colony=colony.name):
        status, reply, message = send(stack, "close", close)
    assert status == 200, message
    assert msgspec.json.decode(reply, type=NextProcess) == NextProcess()
    assert len(assignments(stack, processid)) == 2


def test_a_retried_claim_whose_attempt_is_live_gets_that_attempt(stack: Stack) -> None:
    """Sent again to the engine that decided it, and to a replica that knows it from
    the log only: the same process and attempt, assigned to the claimer, once."""
    colony = stack.new_colony()
    first = stack.new_executor(colony)
    processid = ready_process(stack, colony)
    claim = crypto.seal("claim", Claim(colonyname=colony.name), first)
    answers: list[Sequence[object]] = []
    for sender in (send, send, send_to_new_replica):
        status, body, message = sender(stack, "claim", claim)
        assert status == 200, message
        process = msgspec.json.decode(body, type=Process)
        answers.append((process.processid, attempt_of(process), process.assignedexecutorid))
    assert answers == [(processid, 1, crypto.id_from_private_key(first))] * 3
    assert assignments(stack, processid) == [(1, crypto.id_from_private_key(first))]
