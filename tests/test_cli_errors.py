"""The read-side CLI's failures are one readable line and a non-zero exit, never a
traceback; every command explains itself with --help; and the installed `colonies`
script works as a real process."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import typer

from colonies_es.cli.app import app
from colonies_es.cli.workflow import GraphDetails
from colonies_es.crypto import Crypto
from colonies_es.embedded import NatsServer, free_port
from colonies_es.models import decode
from colonies_es.states import ProcessState
from tests.stack import Stack
from tests.test_cli_common import (
    COLONIES_VARIABLES,
    EXECUTOR_TYPE,
    Cli,
    ThreadExecutor,
    colonies_script,
    stack_env,
)

crypto = Crypto()
READ_COMMANDS = (
    ("workflow", "ps"),
    ("workflow", "psw"),
    ("workflow", "pss"),
    ("workflow", "psf"),
    ("process", "ps"),
    ("process", "psw"),
    ("process", "pss"),
    ("process", "psf"),
    ("executor", "ls"),
)
MY_GROUPS = ("workflow", "process", "colony", "key")
MY_EXECUTOR_COMMANDS = ("ls", "approve", "reject")


def member_env(stack: Stack) -> dict[str, str]:
    colony = stack.new_colony()
    return stack_env(stack, colony, stack.new_executor(colony))


# --------------------------------------------------------------------------- connection


@pytest.mark.parametrize("command", READ_COMMANDS, ids=" ".join)
def test_a_dead_nats_port_is_one_line_naming_the_address(command: tuple[str, ...]) -> None:
    port = free_port()
    cli = Cli({"COLONIES_COLONY_NAME": "c", "COLONIES_PRVKEY": crypto.prvkey()})
    line = cli.error(*command, "--host", "127.0.0.1", "--port", str(port))
    assert line == (
        f"error: cannot reach NATS at nats://127.0.0.1:{port}: connection refused "
        "— is `colonies dev` running?"
    )


def test_nats_without_a_stack_says_no_projector_answers_a_listing(
    nats_server_factory: Callable[..., NatsServer],
) -> None:
    server = nats_server_factory()
    cli = Cli(
        {
            "COLONIES_SERVER_HOST": "127.0.0.1",
            "COLONIES_SERVER_PORT": str(server.port),
            "COLONIES_COLONY_NAME": "c",
            "COLONIES_PRVKEY": crypto.prvkey(),
        }
    )
    # Listings come from the read model (a projector), not from the engine.
    assert cli.error("workflow", "ps") == (
        f"error: no projector is answering on nats://127.0.0.1:{server.port} (listings come "
        "from the read model: run `colonies projector`, or `colonies server` without "
        "--no-projector) — is `colonies dev` running?"
    )


# --------------------------------------------------------------------------- configuration


def test_missing_configuration_names_the_variable_and_the_flag(stack: Stack) -> None:
    env = member_env(stack)
    cli = Cli(env)
    assert cli.error("workflow", "ps", status=2, COLONIES_PRVKEY=None) == (
        "error: no private key: set COLONIES_PRVKEY or pass --prvkey"
    )
    assert cli.error("process", "psw", status=2, COLONIES_COLONY_NAME=None) == (
        "error: no colony: set COLONIES_COLONY_NAME or pass --colony"
    )
    assert cli.error("workflow", "removeall", status=2, COLONIES_COLONY_PRVKEY=None) == (
        "error: no colony owner key: set COLONIES_COLONY_PRVKEY or pass --colony-prvkey"
    )
    line = cli.error("workflow", "ps", status=2, COLONIES_PRVKEY="not-a-key")
    assert line.startswith("error: the private key (COLONIES_PRVKEY or --prvkey) is not valid")


def test_flags_override_the_variables(stack: Stack) -> None:
    env = member_env(stack)
    wrong = Cli({**env, "COLONIES_SERVER_PORT": str(free_port()), "COLONIES_COLONY_NAME": "x"})
    out = wrong.ok(
        "workflow", "ps", "--port", env["COLONIES_SERVER_PORT"],
        "--colony", env["COLONIES_COLONY_NAME"],
    )  # fmt: skip
    assert out == f"No running workflows in colony {env['COLONIES_COLONY_NAME']}\n"
    assert wrong.error("workflow", "ps", "--port", env["COLONIES_SERVER_PORT"]) == (
        "error: colony 'x' does not exist"
    )


def test_a_bad_port_variable_is_a_usage_error() -> None:
    result = Cli({"COLONIES_SERVER_PORT": "http"})("workflow", "ps")
    assert result.exit_code == 2
    assert "COLONIES_SERVER_PORT" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


# --------------------------------------------------------------------------- refusals


def test_a_non_member_is_refused_with_403(stack: Stack) -> None:
    env = member_env(stack)
    cli = Cli({**env, "COLONIES_PRVKEY": crypto.prvkey()})
    for command in READ_COMMANDS:
        assert cli.error(*command) == (
            f"error: not allowed: the caller is not a member of colony "
            f"{env['COLONIES_COLONY_NAME']!r} (the key comes from COLONIES_PRVKEY or --prvkey)"
        )


def test_unknown_ids_are_404(stack: Stack) -> None:
    cli = Cli(member_env(stack))
    unknown = "ab" * 32
    expected = f"error: process graph {unknown} does not exist"
    for command in ("get", "remove", "cancel"):
        assert cli.error("workflow", command, unknown) == expected
    assert cli.error("process", "get", unknown) == f"error: process {unknown} does not exist"


def test_two_different_ids_or_none_are_refused() -> None:
    cli = Cli({})
    assert cli.error("workflow", "get", status=2) == (
        "error: no id given: pass it as an argument or with --processgraphid"
    )
    assert cli.error("process", "get", "a", "--processid", "b", status=2) == (
        "error: two different ids given: a and --processid b"
    )


def test_a_typo_gets_typers_usage_error() -> None:
    result = Cli({})("workflow", "pz")
    assert result.exit_code == 2
    assert "No such command 'pz'" in result.stderr


# --------------------------------------------------------------------------- help


def _my_commands() -> list[list[str]]:
    root = typer.main.get_command(app)
    paths: list[list[str]] = [[group] for group in MY_GROUPS]
    for group in MY_GROUPS:
        subcommands = root.commands[group].commands  # type: ignore[attr-defined]
        paths += [[group, name] for name in subcommands]
    paths += [["executor", name] for name in MY_EXECUTOR_COMMANDS]
    return paths


def test_every_command_explains_itself() -> None:
    cli = Cli({})
    commands = _my_commands()
    assert ["workflow", "removeall"] in commands
    assert ["key", "generate"] in commands
    for path in commands:
        out = cli.ok(*path, "--help")
        assert f"Usage: root {' '.join(path)}" in out, path
        if len(path) == 2 and path[1] not in ("generate",):
            assert "COLONIES_SERVER_HOST" in out, path  # where the connection comes from


def _all_commands() -> list[tuple[list[str], str]]:
    """(path, help text) of every command and group of the app, the root's included."""
    found: list[tuple[list[str], str]] = []

    def walk(command: Any, path: list[str]) -> None:
        found.append((path, command.help or ""))
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


def test_help_texts_wrap_to_the_terminal_without_breaking_sentences_or_bool_metavars() -> None:
    """Each paragraph of a help text shows on one line of a wide terminal (the source's
    line breaks are gone), and flags show no `<bool>` type."""
    cli = Cli({})
    for path, text in _all_commands():
        out = cli(*path, "--help", COLUMNS="2000").stdout
        shown = [" ".join(line.strip(" │").split()) for line in out.splitlines()]
        for paragraph in text.split("\n\n"):
            for item in paragraph.splitlines():
                words = " ".join(item.split())
                if words and "[" not in words:  # rich markup is rendered differently
                    assert words in shown, (path, words)
        assert "<bool>" not in out, path


# --------------------------------------------------------------------------- a real process


def test_the_colonies_script_submits_and_waits_for_a_workflow(stack: Stack, tmp_path: Path) -> None:
    colony = stack.new_colony()
    member = crypto.prvkey()
    stack.client.add_user(colony.name, crypto.id(member), "bob", colony.owner_prvkey)
    specs = [
        {"funcname": "gen_nums", "conditions": {"executortype": EXECUTOR_TYPE}},
        {
            "funcname": "sum_nums",
            "conditions": {"executortype": EXECUTOR_TYPE, "dependencies": ["gen_nums"]},
        },
    ]
    spec_file = tmp_path / "seed.json"
    spec_file.write_text(json.dumps(specs))
    env = {name: value for name, value in os.environ.items() if name not in COLONIES_VARIABLES}
    env.update(stack_env(stack, colony, member))
    functions = {"gen_nums": lambda _: [1, 2], "sum_nums": lambda nums: [sum(nums)]}
    with ThreadExecutor(stack, colony, functions):
        run = subprocess.run(
            [colonies_script(), "workflow", "submit", str(spec_file), "--wait", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert run.returncode == 0, run.stderr
    shown = decode(run.stdout, GraphDetails)
    assert shown.processgraph.state == ProcessState.SUCCESS
    assert [p.output for p in shown.processes] == [[1, 2], [3]]

    env["COLONIES_SERVER_PORT"] = str(free_port())
    dead = subprocess.run(
        [colonies_script(), "workflow", "psw"], env=env, capture_output=True, text=True
    )
    assert dead.returncode == 1
    assert dead.stdout == ""
    assert dead.stderr.startswith("error: cannot reach NATS at nats://127.0.0.1:")
    assert dead.stderr.count("\n") == 1
