"""The read-side CLI's shared pieces, and the helpers its tests share.

:class:`Cli` runs the `colonies` app in-process (typer's CliRunner) with exactly the
``COLONIES_*`` variables a test gives, against a real stack; :class:`ThreadExecutor`
runs functions for a colony on a thread, through the client, as an executor would.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
import pytest
import typer
from typer.testing import CliRunner, Result

from colonies_es.cli.app import app
from colonies_es.cli.common import compact, one_id, short, when
from colonies_es.cli.workflow import load_workflow
from colonies_es.client import Colonies, ColoniesConnectionError, ColoniesError
from tests.stack import ColonyHandle, Stack

COLONIES_VARIABLES = (
    "COLONIES_SERVER_HOST",
    "COLONIES_SERVER_PORT",
    "COLONIES_SERVER_TLS",
    "COLONIES_COLONY_NAME",
    "COLONIES_PRVKEY",
    "COLONIES_COLONY_PRVKEY",
    "COLONIES_SERVER_PRVKEY",
    "COLONIES_EXECUTOR_NAME",
)
EXECUTOR_TYPE = "cli-test"
TRACEBACK = "(the second error: where it happened)"


@dataclass
class Cli:
    """The `colonies` command run in-process with ``env`` as its only COLONIES_* variables."""

    env: dict[str, str]

    def __call__(self, *args: str, **env: str | None) -> Result:
        variables: dict[str, str | None] = dict.fromkeys(COLONIES_VARIABLES)
        variables.update(self.env)
        variables.update(env)
        return CliRunner().invoke(app, list(args), env=variables, catch_exceptions=False)

    def ok(self, *args: str, **env: str | None) -> str:
        """Run, check it succeeded, return its stdout."""
        result = self(*args, **env)
        assert result.exit_code == 0, (result.stdout, result.stderr)
        return result.stdout

    def json(self, *args: str, **env: str | None) -> Any:
        return msgspec.json.decode(self.ok(*args, "--json", **env))

    def error(self, *args: str, status: int = 1, **env: str | None) -> str:
        """Run, check it failed with ``status`` and one line on stderr; return that line."""
        result = self(*args, **env)
        assert result.exit_code == status, (result.stdout, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("error: "), result.stderr
        return lines[0]


def colonies_script() -> str:
    """The `colonies` console script installed next to this python."""
    script = Path(sys.executable).parent / "colonies"
    assert script.exists(), f"{script} is missing: pip install -e ."
    return str(script)


def stack_env(stack: Stack, colony: ColonyHandle | None = None, prvkey: str = "") -> dict[str, str]:
    """The COLONIES_* variables for ``stack`` (and, when given, the colony and a member)."""
    env = {"COLONIES_SERVER_HOST": "127.0.0.1", "COLONIES_SERVER_PORT": str(stack.nats.port)}
    if colony is not None:
        env["COLONIES_COLONY_NAME"] = colony.name
        env["COLONIES_COLONY_PRVKEY"] = colony.owner_prvkey
    if prvkey:
        env["COLONIES_PRVKEY"] = prvkey
    return env


Function = Callable[[list[Any]], list[Any]]


@dataclass
class ThreadExecutor:
    """An approved executor of ``colony`` running ``functions`` (funcname -> function of
    the input, returning the output) on a thread with its own client. A function that
    raises fails the process with the exception's text."""

    stack: Stack
    colony: ColonyHandle
    functions: dict[str, Function]
    name: str = field(default_factory=lambda: f"cli-ex-{uuid.uuid4().hex[:6]}")
    done: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.prvkey = self.stack.new_executor(self.colony, EXECUTOR_TYPE, name=self.name)
        self.client = Colonies("127.0.0.1", self.stack.nats.port)
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def __enter__(self) -> ThreadExecutor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.client.disconnect()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                process = self.client.assign(self.colony.name, 0.5, self.prvkey)
            except (ColoniesError, ColoniesConnectionError):
                continue
            function = self.functions[process.spec.funcname]
            try:
                output = function(process.input or process.spec.args)
            except Exception as error:
                self._report(self.client.fail, process.processid, [repr(error), TRACEBACK])
            else:
                self._report(self.client.close, process.processid, output)
            self.done.append(process.processid)

    def _report(self, send: Callable[[str, Any, str], None], processid: str, data: Any) -> None:
        with contextlib.suppress(ColoniesError):  # refused once cancelled, as it should be
            send(processid, data, self.prvkey)


# --------------------------------------------------------------------------- helpers' tests


def test_times_print_in_utc_to_the_second() -> None:
    moment = datetime(2024, 1, 15, 12, 30, 0, 999, tzinfo=timezone(timedelta(hours=2)))
    assert when(moment) == "2024-01-15 10:30:00"
    assert when(None) == "-"


def test_values_are_compact_json_cut_with_an_ellipsis() -> None:
    assert compact([1, {"a": "b c"}]) == '[1,{"a":"b c"}]'
    assert compact("two\n  lines") == "two lines"
    assert short(list(range(100)), 10) == "[0,1,2,3,…"
    assert len(short("x" * 100, 10)) == 10


def test_an_id_comes_from_the_argument_or_the_flag_not_both_different() -> None:
    assert one_id("a", None, "--id") == "a"
    assert one_id(None, "b", "--id") == "b"
    assert one_id("c", "c", "--id") == "c"
    with pytest.raises(typer.Exit):
        one_id("a", "b", "--id")
    with pytest.raises(typer.Exit):
        one_id(None, None, "--id")


def test_a_spec_file_may_be_a_bare_list_and_takes_the_configured_colony(tmp_path: Path) -> None:
    path = tmp_path / "wf.json"
    path.write_text('[{"funcname": "a"}, {"funcname": "b", "conditions": {"dependencies": ["a"]}}]')
    workflow = load_workflow(path, "mine")
    assert workflow.colonyname == "mine"
    assert [s.nodename for s in workflow.functionspecs] == ["a", "b"]
    assert {s.conditions.colonyname for s in workflow.functionspecs} == {"mine"}
    path.write_text('{"colonyname": "theirs", "functionspecs": [{"funcname": "a"}]}')
    assert load_workflow(path, "mine").functionspecs[0].conditions.colonyname == "theirs"
