"""Who runs next once a command's change is installed (``Aggregates.work_first``).

Proven on a real nats-server, with an engine application in this process beside the
stack's engine (a second replica), its commands handed to it as the service does:

- reply first: a lone submission that wakes a held claim answers before the claim's
  assignment is installed;
- work first: the same submission while the engine has other requests in hand yields
  to the woken claim first (counted, as reply first is);
- held waits first: a close that ends a process a ``wait_process`` is held for lets
  that request answer before the close itself is answered.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Coroutine
from typing import Any

from colonies_es import crypto
from colonies_es.engine.app import ColoniesApp, Outcome
from colonies_es.engine.counters import ReplicaCounters
from colonies_es.engine.held import held_reply, woken_claims
from colonies_es.models import func_spec
from colonies_es.protocol import Claim, CloseProcess, SubmitFuncSpec, WaitProcess
from tests.stack import Stack, engine_app
from tests.test_chained_writes import running_process, until


class Served:
    """A command handled in a task of its own, as the service does (its own context:
    the marks it sets are its own), noting the order in which commands finish."""

    def __init__(self, app: ColoniesApp, op: str, data: bytes, finished: list[str]) -> None:
        self.context = contextvars.copy_context()
        self.context.run(woken_claims.set, [])

        async def handle() -> Outcome:
            outcome = await app.handle(op, data, time.time())
            finished.append(op)
            return outcome

        coroutine: Coroutine[Any, Any, Outcome] = handle()
        self.task = asyncio.create_task(coroutine, context=self.context)

    async def outcome(self) -> Outcome:
        return await self.task

    @property
    def written_at_once(self) -> bool:
        return self.context.get(held_reply, False)


def submit_with_a_held_claim(
    stack: Stack, others_in_hand: int
) -> tuple[list[str], ReplicaCounters]:
    """A submission handed to an application that holds one claim (of an executor of
    the colony) and, as the service would count them, ``others_in_hand`` more requests
    being handled. Returns the order the two finished in and the application's
    counters."""
    colony = stack.new_colony()
    executor = stack.new_executor(colony)
    spec = func_spec("noop", [], colony.name, "python-executor")
    claim = crypto.seal("claim", Claim(colonyname=colony.name, wait=20), executor)
    submit = crypto.seal("submit_func_spec", SubmitFuncSpec(spec=spec), colony.owner_prvkey)
    app = engine_app(stack)
    try:

        async def run() -> list[str]:
            finished: list[str] = []
            app.aggregates.requests_in_hand = 2 + others_in_hand  # the claim, the submission
            claiming = Served(app, "claim", claim, finished)
            await until(lambda: app.aggregates.claims.asleep == 1)
            submitting = Served(app, "submit_func_spec", submit, finished)
            submitted, claimed = await submitting.outcome(), await claiming.outcome()
            assert (submitted.status, claimed.status) == (200, 200), (submitted, claimed)
            assert app.aggregates.claims.asleep == 0
            assert not submitting.written_at_once  # left to the flusher or the claim's write
            return finished

        return app.aggregates.store.connection.run(run()), app.counters
    finally:
        app.close()


def test_a_lone_submission_that_wakes_a_held_claim_replies_first(
    stack: Stack,
) -> None:
    finished, counters = submit_with_a_held_claim(stack, others_in_hand=0)
    assert finished == ["submit_func_spec", "claim"]
    assert (counters.reply_first, counters.work_first) == (1, 0)


def test_a_busy_engine_lets_the_woken_claim_go_first(
    stack: Stack,
) -> None:
    _, counters = submit_with_a_held_claim(stack, others_in_hand=3)
    assert (counters.reply_first, counters.work_first) == (0, 1)


def test_a_close_lets_the_wait_held_for_its_process_answer_first(stack: Stack) -> None:
    colony = stack.new_colony()
    executor = stack.new_executor(colony)
    processid = running_process(stack, colony, executor)
    wait = crypto.seal(
        "wait_process", WaitProcess(processid=processid, wait=20), colony.owner_prvkey
    )
    close = crypto.seal("close", CloseProcess(processid=processid, out=[1]), executor)
    app = engine_app(stack)
    try:

        async def run() -> list[str]:
            finished: list[str] = []
            waiting = Served(app, "wait_process", wait, finished)
            await until(lambda: app.aggregates.ends.asleep == 1)
            closing = Served(app, "close", close, finished)
            closed, waited = await closing.outcome(), await waiting.outcome()
            assert (closed.status, waited.status) == (200, 200), (closed, waited)
            assert b'"state":2' in waited.body  # SUCCESS
            assert waiting.written_at_once
            assert app.aggregates.ends.asleep == 0
            return finished

        assert app.aggregates.store.connection.run(run()) == ["wait_process", "close"]
    finally:
        app.close()
