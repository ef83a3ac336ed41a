"""The `colonies` command as a real process when things go wrong (issue 10, findings 1,
2, 4 and 7): bounded time and one line when NATS is unreachable, no traceback when the
stack goes away or on SIGTERM, flags that override the file, and --wait that says what
it waits for."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from colonies_es.crypto import Crypto, new_private_key
from colonies_es.embedded import free_port
from tests.processes import wait_until
from tests.stack import Stack
from tests.test_cli_common import COLONIES_VARIABLES, Cli, colonies_script, stack_env

crypto = Crypto()
BOUND = 15.0
"""Seconds any command may take to give up on a dead NATS (it answers in well under 5)."""
LOG_READERS = (
    ("workflow", "history", "ab" * 32),
    ("workflow", "replay", "ab" * 32),
    ("workflow", "debug", "ab" * 32),
    ("audit", "verify"),
    ("audit", "export", "ab" * 32),
)


def script_env(**variables: str) -> dict[str, str]:
    """The test's environment without COLONIES_* variables, plus ``variables``."""
    env = {name: value for name, value in os.environ.items() if name not in COLONIES_VARIABLES}
    env.pop("COLONIES_EVENT_SEAL_KEY", None)
    env.update(variables)
    return env


def run_script(
    *args: str, env: dict[str, str], timeout: float = BOUND
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [colonies_script(), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


# --------------------------------------------------------------------------- 1: no hangs


@pytest.mark.parametrize("command", LOG_READERS, ids=" ".join)
def test_log_readers_end_at_once_with_one_line_when_nats_is_unreachable(
    command: tuple[str, ...],
) -> None:
    port = free_port()
    env = script_env(
        COLONIES_SERVER_HOST="127.0.0.1",
        COLONIES_SERVER_PORT=str(port),
        COLONIES_PRVKEY=new_private_key(),  # history is a member's signed query
    )
    started = time.monotonic()
    run = run_script(*command, env=env)
    assert time.monotonic() - started < BOUND
    assert run.returncode == 1, run.stderr
    assert run.stdout == ""
    assert run.stderr == (
        f"error: cannot reach NATS at nats://127.0.0.1:{port}: connection refused "
        "— is `colonies dev` running?\n"
    )


def test_the_log_reader_connect_is_bounded_and_quiet() -> None:
    """Below the CLI's probe: one attempt per server, no traceback per retry."""
    import asyncio

    from colonies_es.projections.history import connect

    port = free_port()
    started = time.monotonic()
    with pytest.raises(Exception) as raised:  # noqa: PT011 - nats-py's own error types
        asyncio.run(connect(f"nats://127.0.0.1:{port}"))
    assert time.monotonic() - started < BOUND
    assert "Traceback" not in str(raised.value)


# --------------------------------------------------------------------------- 2: no tracebacks


def _member(stack: Stack) -> tuple[dict[str, str], str]:
    colony = stack.new_colony()
    member = crypto.prvkey()
    stack.client.add_user(colony.name, crypto.id(member), "bob", colony.owner_prvkey)
    return stack_env(stack, colony, member), colony.name


def _spec_file(tmp_path: Path, executortype: str) -> Path:
    path = tmp_path / "wf.json"
    path.write_text(json.dumps([{"funcname": "f", "conditions": {"executortype": executortype}}]))
    return path


def test_submit_wait_ends_with_one_line_when_the_stack_goes_away(
    fresh_stack: Stack, tmp_path: Path
) -> None:
    env, _ = _member(fresh_stack)
    waiting = subprocess.Popen(
        [colonies_script(), "workflow", "submit", str(_spec_file(tmp_path, "nobody")), "--wait"],
        env=script_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        colonyname, key = env["COLONIES_COLONY_NAME"], env["COLONIES_PRVKEY"]
        client = fresh_stack.client
        wait_until(lambda: client.list_processes(colonyname, 1, -1, key) != [], 20, "submitted")
        fresh_stack.engine.kill()
        fresh_stack.nats.stop()
        out, err = waiting.communicate(timeout=60)
    finally:
        waiting.kill()
    assert waiting.returncode == 1
    assert "Traceback" not in out + err
    assert err.splitlines()[-1].startswith("error: "), err
    assert "is `colonies dev` running?" in err.splitlines()[-1]


def test_submit_wait_shows_progress_and_warns_of_an_unserved_type(
    stack: Stack, tmp_path: Path
) -> None:
    env, colonyname = _member(stack)
    run = Cli(env)("workflow", "submit", str(_spec_file(tmp_path, "nobody")), "--wait",
                   "--timeout", "1.5")  # fmt: skip
    assert run.exit_code == 1
    lines = run.stderr.splitlines()
    assert lines[0] == (
        f"warning: no approved executor of type 'nobody' in colony {colonyname}: its "
        "processes wait until one runs (colonies executor start --type nobody)"
    )
    assert "WAITING: 0 of 1 processes done: 1 WAITING" in lines
    assert lines[-1].startswith("error: workflow ")
    assert lines[-1].endswith("has not ended within 1.5 s (WAITING: 0 of 1 processes done: "
                              "1 WAITING); it keeps running")  # fmt: skip


def _executor(stack: Stack, colony_env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    env = script_env(**colony_env, COLONIES_PRVKEY=crypto.prvkey())
    return subprocess.Popen(
        [colonies_script(), "executor", "start", "--type", "robust", "--poll-timeout", "1", *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_executor_start_says_where_it_connects_and_that_it_serves_then_stops_on_sigterm(
    stack: Stack,
) -> None:
    colony = stack.new_colony()
    executor = _executor(stack, stack_env(stack, colony))
    try:
        assert executor.stdout is not None
        first = executor.stdout.readline()
        assert first == f"connecting to NATS at nats://127.0.0.1:{stack.nats.port}\n"
        assert " registered in colony " in executor.stdout.readline()
        assert executor.stdout.readline() == (
            f"serving: running robust work of colony {colony.name}, 1 at a time; "
            "Ctrl-C or SIGTERM stops\n"
        )
        executor.send_signal(signal.SIGTERM)
        out, err = executor.communicate(timeout=20)
    finally:
        executor.kill()
    assert executor.returncode == 0, err
    assert err == ""
    assert out.splitlines()[-1].endswith(" stopped")


def test_executor_start_reports_a_refused_connection_at_once() -> None:
    port = free_port()
    env = {
        "COLONIES_SERVER_HOST": "127.0.0.1",
        "COLONIES_SERVER_PORT": str(port),
        "COLONIES_COLONY_NAME": "c",
        "COLONIES_COLONY_PRVKEY": crypto.prvkey(),
    }
    started = time.monotonic()
    run = run_script(
        "executor", "start", "--type", "t", env=script_env(**env, COLONIES_PRVKEY=crypto.prvkey())
    )
    # At once: no retrying (a start-up on a loaded 2-core machine alone took 6-11 s).
    assert time.monotonic() - started < 20.0
    assert run.returncode == 1
    assert run.stderr == (
        f"error: cannot reach NATS at nats://127.0.0.1:{port}: connection refused "
        "— is `colonies dev` running?\n"
    )


def test_an_executor_whose_stack_went_away_stops_on_sigterm_without_a_traceback(
    fresh_stack: Stack,
) -> None:
    colony = fresh_stack.new_colony()
    executor = _executor(fresh_stack, stack_env(fresh_stack, colony), "--grace", "1")
    try:
        assert executor.stdout is not None
        for _ in range(3):
            executor.stdout.readline()  # connecting, registered, serving
        fresh_stack.engine.kill()
        fresh_stack.nats.stop()  # the executor's assign is in flight: the case to survive
        executor.send_signal(signal.SIGTERM)
        out, err = executor.communicate(timeout=40)
    finally:
        executor.kill()
    assert "Traceback" not in out + err, out + err
    assert executor.returncode == 0, err
    assert out.splitlines()[-1].endswith(" stopped")


# --------------------------------------------------------------------------- 4: flags win


def test_the_colony_flag_overrides_the_files_colonyname(stack: Stack, tmp_path: Path) -> None:
    env, colonyname = _member(stack)
    path = tmp_path / "wf.json"
    workflow: dict[str, Any] = {
        "colonyname": "dev",
        "functionspecs": [
            {"funcname": "f", "conditions": {"colonyname": "dev", "executortype": "t"}},
            {"funcname": "g", "conditions": {"executortype": "t", "dependencies": ["f"]}},
        ],
    }
    path.write_text(json.dumps(workflow))
    cli = Cli({**env, "COLONIES_COLONY_NAME": "dev"})
    shown = cli.json("workflow", "submit", str(path), "--colony", colonyname)
    assert shown["processgraph"]["colonyname"] == colonyname
    assert {p["spec"]["conditions"]["colonyname"] for p in shown["processes"]} == {colonyname}
    # Without the flag the file wins over the variable, as before.
    assert "colony 'dev'" in Cli({**env, "COLONIES_COLONY_NAME": colonyname}).error(
        "workflow", "submit", str(path)
    )
