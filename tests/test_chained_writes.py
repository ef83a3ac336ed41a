"""Chained writes on one aggregate (engine/aggregates.py, store/jetstream.py ``after``).

While one command's event is on its way to the log, a second command on the same graph
decides on that in-flight copy and sends its event chained to it (stored only if the
first is the stream's last message). Proven here on a real nats-server, with an engine
application in this process beside the stack's engine (a second replica):

- commands on one graph that arrive together are chained, each event stored once and
  carrying its own signed command, in contiguous versions;
- a chained write the server refuses (another message came in between) wrote nothing,
  and its command is decided again and stored once;
- a submission hands the process it makes ready to a claim held here before its own
  write is acknowledged (held.py, ``offer``): the assignment is chained to the
  submission, stored once, carrying the claim's own signed command.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import msgspec

from colonies_es import crypto
from colonies_es.engine.app import ColoniesApp
from colonies_es.models import Workflow, func_spec
from colonies_es.protocol import AddLog, Claim, SubmitFuncSpec
from tests.eventlog import read_events
from tests.stack import ColonyHandle, Stack, engine_app


@contextmanager
def replica_here(stack: Stack) -> Iterator[ColoniesApp]:
    """An engine application in this process, caught up with the stack's log."""
    made = engine_app(stack)
    try:
        yield made
    finally:
        made.close()


def running_process(stack: Stack, colony: ColonyHandle, executor: str) -> str:
    """The first process of a graph of two (the second waits for it), assigned to
    ``executor`` (RUNNING). Writes on a graph of one process are not named for chaining
    unless they offer work to a held claim (aggregates.py, ``_may_be_followed``)."""
    first = func_spec("first", [], colony.name, "python-executor")
    second = func_spec("second", [], colony.name, "python-executor")
    second.conditions.dependencies.append(first.nodename)
    workflow = Workflow(colonyname=colony.name, functionspecs=[first, second])
    graph = stack.client.submit_workflow(workflow, colony.owner_prvkey)
    assigned = stack.client.assign(colony.name, 10, executor)
    assert assigned.processid in graph.processids
    return assigned.processid


def add_log(processid: str, message: str, executor: str) -> bytes:
    return crypto.seal("add_log", AddLog(processid=processid, message=message), executor)


def handle_in_order(app: ColoniesApp, commands: list[bytes]) -> list[int]:
    """Hands the commands to the application as tasks started in this order (each runs
    up to its append before the next starts); their statuses."""

    async def run() -> list[int]:
        tasks = [asyncio.create_task(app.handle("add_log", data, time.time())) for data in commands]
        return [outcome.status for outcome in await asyncio.gather(*tasks)]

    return app.aggregates.store.connection.run(run())


async def until(condition: Callable[[], object], seconds: float = 20.0) -> None:
    """Returns once ``condition()`` is true (looked at every 10 ms), at most ``seconds``."""
    async with asyncio.timeout(seconds):
        while True:
            if condition():
                return
            await asyncio.sleep(0.01)


def stored_logs(stack: Stack, processid: str) -> list[tuple[int, str, crypto.SignedCommand]]:
    """(version, message, the signed command it carries) of each LogAdded event of
    ``processid``, read from the raw log."""
    return [
        (event.version, event.state["message"], signed(event.state["command"]))
        for event in read_events(stack.nats.url).of_kind("LogAdded")
        if event.state.get("processid") == processid
    ]


def signed(data: bytes) -> crypto.SignedCommand:
    return msgspec.json.decode(data, type=crypto.SignedCommand)


def test_commands_on_one_graph_are_chained_each_event_with_its_own_command(
    stack: Stack,
) -> None:
    colony = stack.new_colony()
    executor = stack.new_executor(colony)
    processid = running_process(stack, colony, executor)
    messages = [f"line {n}" for n in range(4)]
    commands = [add_log(processid, message, executor) for message in messages]

    with replica_here(stack) as app:
        assert handle_in_order(app, commands) == [200] * 4
        assert app.aggregates.counters.chained == 3  # all but the first
    stored = stored_logs(stack, processid)
    assert [message for _, message, _ in stored] == messages  # each once, in order
    versions = [version for version, _, _ in stored]
    assert versions == list(range(versions[0], versions[0] + 4))
    assert [command for _, _, command in stored] == [signed(data) for data in commands]


def test_a_chained_write_refused_writes_nothing_and_its_command_is_decided_again(
    stack: Stack,
) -> None:
    colony = stack.new_colony()
    executor = stack.new_executor(colony)
    first = running_process(stack, colony, executor)
    other = running_process(stack, colony, executor)
    on_first = [add_log(first, "a", executor), add_log(first, "b", executor)]
    between = add_log(other, "between", executor)

    # "a" is sent, then the other graph's line, then "b" chained to "a": the server
    # refuses "b" ("a" is no longer the stream's last message).
    with replica_here(stack) as app:
        assert handle_in_order(app, [on_first[0], between, on_first[1]]) == [200] * 3
        assert app.aggregates.counters.chains_broken == 1
        assert app.aggregates.counters.chained == 0
    stored = stored_logs(stack, first)
    assert [message for _, message, _ in stored] == ["a", "b"]  # "b" once, decided again
    assert [command for _, _, command in stored] == [signed(data) for data in on_first]
    assert stored[1][0] == stored[0][0] + 1
    assert [message for _, message, _ in stored_logs(stack, other)] == ["between"]


def test_a_submission_hands_its_process_to_a_held_claim_and_the_assignment_is_chained(
    stack: Stack,
) -> None:
    colony = stack.new_colony()
    executor = stack.new_executor(colony)
    spec = func_spec("noop", [], colony.name, "python-executor")
    claim = crypto.seal("claim", Claim(colonyname=colony.name, wait=20), executor)
    submit = crypto.seal("submit_func_spec", SubmitFuncSpec(spec=spec), colony.owner_prvkey)

    with replica_here(stack) as app:

        async def run() -> tuple[Any, Any]:
            claiming = asyncio.create_task(app.handle("claim", claim, time.time()))
            await until(lambda: app.aggregates.claims.waiting((colony.name, "python-executor")))
            submitted = await app.handle("submit_func_spec", submit, time.time())
            return submitted, await claiming

        submitted, claimed = app.aggregates.store.connection.run(run())
        assert (submitted.status, claimed.status) == (200, 200), (submitted, claimed)
        assert app.aggregates.counters.chained == 1  # the assignment, sent before the ack
        processid = msgspec.json.decode(submitted.body)["processid"]
        assert msgspec.json.decode(claimed.body)["processid"] == processid

    log = read_events(stack.nats.url)
    graph = next(e.aggregate_id for e in log.of_kind("ProcessAssigned") if e.processid == processid)
    events = [e for e in log if e.aggregate_id == graph]
    assert [e.kind for e in events] == ["GraphSubmitted", "ProcessAssigned"]
    assert events[1].sequence == events[0].sequence + 1
    assert [signed(e.state["command"]) for e in events] == [signed(submit), signed(claim)]
