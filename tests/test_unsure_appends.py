"""A command whose append the event log did not answer (503) is neither lost nor failed.

The engine cannot know whether such an append was stored. It answers 503, and:

- a retry of the *same signed bytes* (a client resends them when no reply came in time,
  a function's child's close is awaited and resent that way) is answered once this
  replica has applied the log to its end: from the event's replay mark when it was
  stored, else by deciding the command anew, never with the first 503 again (before,
  the 503 was remembered as a refusal and repeated until the command went stale);
- the executor reports a close answered 503 again (a new command) instead of failing a
  process whose function succeeded (before, any refusal but a 403 became a fail: the
  chaos soaks' "outputs refused and failed instead").

The log's failure is injected into one append (the real one is skipped or made before
the error): in the engine process by ``tests/unsure_engine.py``, in the replica of this
process by replacing its log's ``append``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.persistence import OperationalError

from colonies_es import crypto
from colonies_es.client import Colonies
from colonies_es.engine.app import ColoniesApp, Outcome
from colonies_es.executor import PythonExecutor
from colonies_es.models import attempt_of, func_spec
from colonies_es.protocol import CloseProcess
from colonies_es.states import ProcessState
from colonies_es.store.jetstream import Entry
from tests.eventlog import read_events
from tests.stack import ColonyHandle, Stack, engine_app, start_stack, stop_stack

REPO = Path(__file__).resolve().parent.parent

ADD = "def add(a, b, ctx={}):\n    return a + b\n"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A nats-server and ``tests.unsure_engine``: its log fails the first append of each
    graph's close, without storing it."""
    running = start_stack(
        tmp_path_factory.mktemp("unsure"),
        projector=False,
        extra_env={"PYTHONPATH": str(REPO)},
        module="tests.unsure_engine",
    )
    yield running
    stop_stack(running)


def running_process(stack: Stack, colony: ColonyHandle, executor: str) -> Any:
    """A process of its own graph without retries, assigned to ``executor``."""
    spec = func_spec("add", [2, 3], colony.name, "python-executor", code=ADD, maxretries=0)
    submitted = stack.client.submit_func_spec(spec, colony.owner_prvkey)
    process = stack.client.assign(colony.name, 10, executor)
    assert process.processid == submitted.processid
    return process


def closes_of(stack: Stack, processid: str) -> list[Any]:
    return [
        e for e in read_events(stack.nats.url).of_kind("ProcessClosed") if e.processid == processid
    ]


def test_the_executor_reports_a_close_answered_503_again_and_it_ends_success(
    stack: Stack,
) -> None:
    colony = stack.new_colony()
    client = Colonies("127.0.0.1", stack.nats.port)
    try:
        executor = PythonExecutor(client, colony.name, colony.owner_prvkey, poll_timeout=0.5)
        executor.register()
        process = running_process(stack, colony, executor.prvkey)
        executor.run_one(process)
    finally:
        client.disconnect()
    ended = stack.client.get_process(process.processid, colony.owner_prvkey)
    assert "FAILED APPEND" in stack.engine.log()  # the first close was answered 503
    assert (ended.state, ended.output, ended.errors) == (ProcessState.SUCCESS, [5], [])
    assert len(closes_of(stack, process.processid)) == 1
    assert not [
        e
        for e in read_events(stack.nats.url).of_kind("ProcessFailed")
        if e.processid == process.processid
    ]


@pytest.mark.parametrize("stored", [False, True], ids=["not-stored", "stored"])
def test_the_same_bytes_sent_again_after_a_503_are_decided_once(stack: Stack, stored: bool) -> None:
    colony = stack.new_colony()
    executor = stack.new_executor(colony)
    process = running_process(stack, colony, executor)
    close = crypto.seal(
        "close",
        CloseProcess(processid=process.processid, out=[5], attempt=attempt_of(process)),
        executor,
    )
    replica: ColoniesApp = engine_app(stack)
    log = replica.aggregates.log
    real_append = log.append
    failures = []

    async def append_unanswered_once(entries: Sequence[Entry], **kwargs: Any) -> list[int]:
        if failures:
            return await real_append(entries, **kwargs)
        failures.append(entries)
        if stored:
            await real_append(entries, **kwargs)
        raise OperationalError("append: the log did not answer (a test's fault)")

    log.append = append_unanswered_once  # type: ignore[method-assign]

    async def start_following() -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(replica.follow())

    async def send() -> Outcome:
        return await replica.handle("close", close, time.time())

    connection = replica.aggregates.store.connection
    following = connection.run(start_following())
    try:
        first = connection.run(send())
        again = connection.run(send())  # the same bytes
    finally:
        connection.loop.loop.call_soon_threadsafe(following.cancel)
        replica.close()
    assert (first.status, "event log is unavailable" in first.message) == (503, True)
    assert (again.status, again.message) == (200, "")
    assert len(closes_of(stack, process.processid)) == 1
    ended = stack.client.get_process(process.processid, colony.owner_prvkey)
    assert (ended.state, ended.output) == (ProcessState.SUCCESS, [5])
