"""A function's child sends its process's close itself (colonies_es/child_close.py).

Real stack, real executor processes: the fast path is taken for a plain function and not
for one that prints or calls ``colonies``; a close whose reply is lost is sent again, the
same bytes, and the engine decides it once; a child killed between sending the close and
telling the executor loses nothing, and the process ends once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from colonies_es.child_close import ChildCloser
from colonies_es.client import AsyncColonies
from colonies_es.executor import PythonExecutor
from colonies_es.models import Process, attempt_of
from colonies_es.states import ProcessState
from tests.eventlog import read_events
from tests.processes import pid_alive, wait_until
from tests.stack import ColonyHandle, Stack
from tests.test_cli_cancel import ExecutorProcess
from tests.test_executor import colony, ended, running_executor, spec

__all__ = ["colony"]  # the fixture, shared with the executor's tests

ONE = "def one(ctx={}):\n    return 1\n"


def round_trips(stack: Stack, colony: ColonyHandle, code: str, funcname: str, n: int) -> None:
    for _ in range(n):
        process = stack.client.submit_func_spec(spec(colony, funcname, code), colony.owner_prvkey)
        assert ended(stack, colony, process).state == ProcessState.SUCCESS


def closed_by_children(executor: PythonExecutor, expected: int) -> None:
    wait_until(
        lambda: executor.closed_by_children >= expected, 5.0, f"{expected} closes by children"
    )
    assert executor.closed_by_children == expected


def test_a_plain_functions_child_closes_and_one_that_prints_or_calls_leaves_it_to_the_executor(
    stack: Stack, colony: ColonyHandle
) -> None:
    """An idle worker's child sends the close of a function that only returned (the
    first one excepted: the child connects after it); a function that printed or made a
    ``colonies`` call is closed by the executor, its log line and calls first."""
    printing = "def loud(ctx={}):\n    print('hello')\n    return 2\n"
    calling = (
        "def asks(ctx={}):\n"
        "    p = ctx['process']\n"
        "    colonies.add_log(p.processid, 'from asks', ctx['executor_prvkey'])\n"
        "    return 3\n"
    )
    with running_executor(stack, colony, poll_timeout=1.0) as executor:
        round_trips(stack, colony, ONE, "one", 4)
        # (counted once the reply came, which may be after the caller's wait returned)
        closed_by_children(executor, 3)  # the first child had no connection yet
        for code, funcname in ((printing, "loud"), (calling, "asks")):
            process = stack.client.submit_func_spec(
                spec(colony, funcname, code), colony.owner_prvkey
            )
            assert ended(stack, colony, process).state == ProcessState.SUCCESS
            logs = stack.client.get_process_log(
                colony.name, process.processid, 10, 0, colony.owner_prvkey
            )
            assert [log.message.strip() for log in logs] == [
                "hello" if funcname == "loud" else "from asks"
            ]
        assert executor.closed_by_children == 3
        round_trips(stack, colony, ONE, "one", 1)
        closed_by_children(executor, 4)
    with running_executor(stack, colony, poll_timeout=1.0, child_closes=False) as executor:
        round_trips(stack, colony, ONE, "one", 3)
        assert executor.closed_by_children == 0


def test_a_close_whose_reply_is_lost_is_sent_again_and_decided_once(
    stack: Stack, colony: ColonyHandle
) -> None:
    """The child's close goes out, its reply does not come back (here: sent to a subject
    nobody reads); the executor's client sends the same bytes again after an attempt's
    time and gets the engine's original reply, and the log holds one close."""
    executor = stack.new_executor(colony)
    process = stack.client.submit_func_spec(spec(colony, "one", ONE), colony.owner_prvkey)
    assigned = stack.client.claim(colony.name, executor)
    assert assigned.processid == process.processid
    closer = ChildCloser()

    async def close_lost_then_retried() -> tuple[Process | None, float]:
        async with AsyncColonies("127.0.0.1", stack.nats.port, timeout=1.0) as client:
            handle = await client.prepare_child_close(
                process.processid, executor, colony.name, attempt_of(assigned), 0.2
            )
            lost = handle.order._replace(reply="nobody.reads.this")
            await asyncio.to_thread(closer.connect, lost.access)  # it runs a loop of its own
            sent = await asyncio.to_thread(closer.send, lost, [1], executor)
            assert sent is not None
            started = time.monotonic()
            following = await client.finish_child_close(handle, [1], executor, sent)
            return following.next, time.monotonic() - started

    try:
        following, waited = asyncio.run(close_lost_then_retried())
    finally:
        closer.close()
    assert waited < 5.0
    assert following is None  # nothing else was ready for the claim it carried
    assert waited >= 0.5, "the reply came without the bytes being sent again?"
    done = stack.client.get_process(process.processid, colony.owner_prvkey)
    assert done.state == ProcessState.SUCCESS
    assert done.output == [1]
    closes = read_events(stack.nats.url).of_kind("ProcessClosed")
    assert [e for e in closes if e.processid == process.processid] != []
    assert len([e for e in closes if e.processid == process.processid]) == 1


def test_a_child_killed_between_sending_the_close_and_telling_loses_nothing(
    stack: Stack, colony: ColonyHandle, caplog: pytest.LogCaptureFixture
) -> None:
    """The function patches its own child so that it dies (``os._exit``) right after
    sending the close, before the executor hears of it: the process ends once, and the
    executor goes on running work in a new child. Nearly always the close gets there
    first: SUCCESS, the executor's fail after the child's death refused, and the claim
    the close carried brings the next process. The executor's fail travels on another
    connection, though, and may reach the engine first (once in many runs at load 5):
    then the process ends FAILED by it, once, and the child's close is refused."""
    dies = (
        "import os\n"
        "import colonies_es.function_runner as runner\n"
        "def dies(ctx={}):\n"
        "    send = runner._send\n"
        "    def die_after_sending(conn, message):\n"
        "        if message[0] == 'done' and message[4] is not None:\n"
        "            os._exit(7)\n"
        "        send(conn, message)\n"
        "    runner._send = die_after_sending\n"
        "    return 'sent'\n"
    )
    caplog.set_level(logging.INFO, "colonies.executor")
    with running_executor(stack, colony, poll_timeout=2.0) as executor:
        round_trips(stack, colony, ONE, "one", 2)  # the child is connected
        victim = stack.client.submit_func_spec(spec(colony, "dies", dies), colony.owner_prvkey)
        done = ended(stack, colony, victim)
        after = stack.client.submit_func_spec(spec(colony, "one", ONE), colony.owner_prvkey)
        assert ended(stack, colony, after).output == [1]
        assert executor.closed_by_children >= 1
    log = read_events(stack.nats.url)
    ends = [
        e.kind
        for e in log
        if e.processid == victim.processid and e.kind in ("ProcessClosed", "ProcessFailed")
    ]
    if done.state == ProcessState.FAILED:  # the executor's fail got there first
        assert ends == ["ProcessFailed"]
        return
    assert done.state == ProcessState.SUCCESS
    assert done.output == ["sent"]
    assert ends == ["ProcessClosed"]
    told = f"dies {victim.processid[:8]} SUCCESS: its child sent the close before it died"
    assert told in caplog.messages
    assert not [e for e in log.of_kind("AttemptFailed") if e.processid == victim.processid]


KILLS_ITS_EXECUTOR = """
import os, signal, time

def kills_its_executor(ctx={}):
    with open(PIDFILE, "w") as f:
        f.write(str(os.getpid()))
    fork_server = os.getppid()  # the child's parent; the executor is the fork server's
    with open(f"/proc/{fork_server}/stat") as f:
        executor = int(f.read().rsplit(")", 1)[1].split()[1])
    os.kill(executor, signal.SIGKILL)
    time.sleep(0.05)
    return "orphan"
"""


def test_a_child_whose_executor_died_during_the_function_does_not_send_the_close(
    stack: Stack, colony: ColonyHandle, tmp_path: Path
) -> None:
    """A crash kills the executor's pid, not its function's child: the function (here
    killing its own executor, so the moment is exact) returns to an orphan, which must
    not send the close: the claim inside would take work for a requester that is gone.
    The process stays RUNNING, as a dead executor's running process always did."""
    pidfile = tmp_path / "child.pid"
    executor = ExecutorProcess(stack, colony, tmp_path / "executor.log")
    try:
        round_trips(stack, colony, ONE, "one", 2)  # the child is connected
        code = KILLS_ITS_EXECUTOR.replace("PIDFILE", repr(str(pidfile)))
        victim = stack.client.submit_func_spec(
            spec(colony, "kills_its_executor", code), colony.owner_prvkey
        )
        wait_until(lambda: executor.process.poll() is not None, 30, "the executor is killed")
        wait_until(lambda: pidfile.exists() and pidfile.read_text() != "", 5, "the child's pid")
        child = int(pidfile.read_text())
        wait_until(lambda: not pid_alive(child), 10, "the orphaned child exits")
    finally:
        executor.stop()
    deadline = time.monotonic() + 1.0  # a close sent before the child exited lands in ms
    while time.monotonic() < deadline:
        now = stack.client.get_process(victim.processid, colony.owner_prvkey)
        assert now.state == ProcessState.RUNNING, "the orphan sent the close"
        time.sleep(0.1)
    closes = read_events(stack.nats.url).of_kind("ProcessClosed")
    assert not [e for e in closes if e.processid == victim.processid]
