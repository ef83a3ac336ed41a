"""How history, audit and debug present seals and ids (issue 10, findings 8 and 9): seals
not checked are said so, a wrong seal key is told apart from a foreign message (both in
the whole-log audit: a workflow's events come sealed-checked from the projector), history
prints no line per ignored message, the graph id is positional everywhere, and debug
speaks JSON."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from colonies_es.cli.app import app
from tests.stack import ColonyHandle, Stack
from tests.test_audit import ids_options
from tests.test_history import cli, cli_json, cli_ok, colony, failed_map_reduce, seed

__all__ = ["colony"]  # the fixture, used by name

WRONG_KEY = os.urandom(32).hex()


def cli_with_key(stack: Stack, key: str, *args: str) -> Result:
    env = {
        "COLONIES_SERVER_HOST": "127.0.0.1",
        "COLONIES_SERVER_PORT": str(stack.nats.port),
        "COLONIES_EVENT_SEAL_KEY": key,
        "COLONIES_COLONY_NAME": None,
        "COLONIES_ENGINE_ID": None,
        "COLONIES_SERVER_ID": None,
    }
    return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)


@pytest.fixture(scope="module")
def stack(stack_with_projector: Stack) -> Stack:
    """A workflow's history and audit are read through a projector (graph_events)."""
    return stack_with_projector


def test_audit_without_a_seal_key_says_seals_were_not_checked(
    stack: Stack, colony: ColonyHandle
) -> None:
    """Seals are the whole-log audit's business (the projector checks them for one
    workflow's audit, with the log's key)."""
    seed(stack, colony)
    shown = cli_ok(stack, "audit", "verify", *ids_options(stack), seal=False)
    assert "events of the log verify" in shown
    assert "Seals were not checked (no --seal-key or COLONIES_EVENT_SEAL_KEY)" in shown
    sealed = cli_ok(stack, "audit", "verify", *ids_options(stack))
    assert "Seals were not checked" not in sealed
    assert cli_json(stack, "audit", "verify", *ids_options(stack), seal=False)["sealschecked"] is (
        False
    )


def test_a_wrong_seal_key_is_one_line_saying_so_not_a_report_of_tampering(
    stack: Stack, colony: ColonyHandle
) -> None:
    seed(stack, colony)
    audit = cli_with_key(stack, WRONG_KEY, "audit", "verify", *ids_options(stack))
    assert audit.exit_code == 1
    assert audit.stdout == ""
    assert re.fullmatch(
        r"error: the seal key verifies none of the \d+ events of the log: it is not "
        r"this log's seal key \(check --seal-key or COLONIES_EVENT_SEAL_KEY\)\n",
        audit.stderr,
    ), audit.stderr


def test_audit_verify_and_export_take_the_graph_id_as_argument(
    stack: Stack, colony: ColonyHandle, tmp_path: Path
) -> None:
    graphid = seed(stack, colony)
    key = colony.owner_prvkey
    report = cli_json(stack, "audit", "verify", graphid, *ids_options(stack), prvkey=key)
    assert report["checked"] == 5  # the graph's own events, not its colony's
    assert report["ok"] is True
    same = cli_json(
        stack, "audit", "verify", "--processgraphid", graphid, *ids_options(stack), prvkey=key
    )
    assert same["checked"] == 5
    path = tmp_path / "h.jsonl"
    assert cli_ok(stack, "audit", "export", graphid, "-o", str(path), prvkey=key) == (
        f"5 events written to {path}\n"
    )
    assert len(path.read_text().splitlines()) == 5


def test_debug_prints_json(stack: Stack, colony: ColonyHandle, tmp_path: Path) -> None:
    graphid = failed_map_reduce(stack, colony, tmp_path / "fixed")
    key = colony.owner_prvkey
    report = cli_json(stack, "workflow", "debug", graphid, prvkey=key)
    assert report["processgraphid"] == graphid
    [failed] = report["failed"]
    assert failed["nodename"] == "gen_nums_2"
    assert failed["attempts"][0]["outcome"] == "failed"
    assert failed["failure"]["summary"].startswith("gen_nums_2 failed")
    assert sorted(failed["cancelled"]) == ["gen_nums_3", "gen_nums_4", "reduce"]
    rerun = cli(stack, "workflow", "debug", graphid, "--rerun", "gen_nums_2", "--json", prvkey=key)
    assert rerun.exit_code == 1
    assert rerun.stdout.startswith("{")
