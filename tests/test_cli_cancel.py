"""Cancelling reaches the function (issue 10, finding 6), and what a function prints
reaches the process log (finding 5): a real `colonies executor start` process runs the
functions, the CLI cancels and reads the log."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from colonies_es import Workflow
from colonies_es.crypto import Crypto
from colonies_es.states import ProcessState
from tests.processes import pid_alive, wait_until
from tests.stack import ColonyHandle, Stack
from tests.test_cli_common import COLONIES_VARIABLES, Cli, colonies_script, stack_env
from tests.test_history import spec, wait_ended

crypto = Crypto()
SLEEPER = """
import os, time

def sleeper(ctx={}):
    with open(PIDFILE, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(30)
    return "woke up"
"""
CHATTY = """
def chatty(ctx={}):
    print("hello from chatty")
    return 7
"""


class ExecutorProcess:
    """`colonies executor start` as a child process, its output in a file."""

    def __init__(self, stack: Stack, colony: ColonyHandle, log: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k not in COLONIES_VARIABLES}
        env.update(stack_env(stack, colony, crypto.prvkey()))
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [colonies_script(), "executor", "start", "--type", "python-executor",
                 "--poll-timeout", "1", "--grace", "2"],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_until(lambda: "serving:" in self.text(), 30, "the executor serves")

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@pytest.fixture
def running(stack: Stack, tmp_path: Path) -> Iterator[tuple[ColonyHandle, ExecutorProcess]]:
    colony = stack.new_colony()
    executor = ExecutorProcess(stack, colony, tmp_path / "executor.log")
    yield colony, executor
    executor.stop()


def test_cancel_stops_the_running_function_and_frees_the_executor(
    stack: Stack, running: tuple[ColonyHandle, ExecutorProcess], tmp_path: Path
) -> None:
    colony, executor = running
    pidfile = tmp_path / "sleeper.pid"
    code = SLEEPER.replace("PIDFILE", repr(str(pidfile)))
    slow = Workflow(colonyname=colony.name, functionspecs=[spec(colony, "sleeper", code)])
    graph = stack.client.submit_workflow(slow, colony.owner_prvkey)
    wait_until(lambda: pidfile.exists() and pidfile.read_text() != "", 30, "the function runs")
    function_pid = int(pidfile.read_text())
    assert pid_alive(function_pid)

    cli = Cli(stack_env(stack, colony, colony.owner_prvkey))
    cancelled_at = time.monotonic()
    cli.ok("workflow", "cancel", graph.processgraphid[:12])
    # The function's process is gone within a second or so of the cancel (the executor
    # learns it from the engine's end notification): not after its 30 s sleep.
    wait_until(lambda: not pid_alive(function_pid), 10, "the function is stopped")
    stopped_after = time.monotonic() - cancelled_at
    assert stopped_after < 5, stopped_after
    wait_until(lambda: "CANCELLED elsewhere: its function was stopped" in executor.text(), 10,
               "the executor says so")  # fmt: skip

    # The executor is free at once: the next workflow runs now, not in 30 s.
    quick = Workflow(colonyname=colony.name, functionspecs=[spec(colony, "chatty", CHATTY)])
    started = time.monotonic()
    after = stack.client.submit_workflow(quick, colony.owner_prvkey)
    assert wait_ended(stack, colony, after.processgraphid) == ProcessState.SUCCESS
    assert time.monotonic() - started < 15


def test_what_a_function_prints_is_in_its_process_log(
    stack: Stack, running: tuple[ColonyHandle, ExecutorProcess]
) -> None:
    colony, executor = running
    quick = Workflow(colonyname=colony.name, functionspecs=[spec(colony, "chatty", CHATTY)])
    graph = stack.client.submit_workflow(quick, colony.owner_prvkey)
    assert wait_ended(stack, colony, graph.processgraphid) == ProcessState.SUCCESS
    processid = stack.client.get_processgraph(graph.processgraphid, colony.owner_prvkey).processids[
        0
    ]
    cli = Cli(stack_env(stack, colony, colony.owner_prvkey))
    out = cli.ok("log", "get", processid[:12])
    assert out.rstrip().endswith("hello from chatty"), out
    assert "hello from chatty" not in executor.text()  # the process log, not the executor's
