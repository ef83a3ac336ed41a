"""`colonies workflow ...` and `colonies process ...` on the real stack.

Each test has a colony of its own with a member user; workflows run on a
:class:`ThreadExecutor` (the client on a thread) when the test starts one.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

from colonies_es.cli.workflow import GraphDetails
from colonies_es.client import Colonies
from colonies_es.crypto import Crypto
from colonies_es.models import Process, ProcessGraph, decode, encode
from colonies_es.states import ProcessState
from tests.stack import ColonyHandle, Stack
from tests.test_cli_common import EXECUTOR_TYPE, TRACEBACK, Cli, ThreadExecutor, stack_env

crypto = Crypto()


@dataclass
class Member:
    """A test's colony, a member's key, and the CLI configured for both."""

    stack: Stack
    colony: ColonyHandle
    prvkey: str
    cli: Cli
    directory: Path

    @property
    def client(self) -> Colonies:
        return self.stack.client

    def spec_file(self, *specs: dict[str, Any], colonyname: str | None = "") -> Path:
        """A workflow file of ``specs`` (a bare list when ``colonyname`` is None)."""
        document: Any = list(specs)
        if colonyname is not None:
            document = {"colonyname": colonyname or self.colony.name, "functionspecs": document}
        path = self.directory / f"wf-{time.monotonic_ns()}.json"
        path.write_text(json.dumps(document))
        return path

    def submit(self, *specs: dict[str, Any]) -> str:
        """Submit through the CLI; return the id of the graph it shows."""
        out = self.cli.ok("workflow", "submit", str(self.spec_file(*specs)), "--json")
        graphid: str = decode(out, GraphDetails).processgraph.processgraphid
        return graphid

    def executor(self, **functions: Callable[[list[Any]], list[Any]]) -> ThreadExecutor:
        return ThreadExecutor(self.stack, self.colony, functions)

    def wait_for(self, graphid: str, state: ProcessState, timeout: float = 20) -> ProcessGraph:
        deadline = time.monotonic() + timeout
        while True:
            graph = self.client.get_processgraph(graphid, self.prvkey)
            if graph.state == state:
                return graph
            assert time.monotonic() < deadline, f"graph is {ProcessState(graph.state).name}"
            time.sleep(0.05)


@pytest.fixture
def member(stack: Stack, tmp_path: Path) -> Member:
    colony = stack.new_colony()
    prvkey = crypto.prvkey()
    stack.client.add_user(colony.name, crypto.id(prvkey), "alice", colony.owner_prvkey)
    return Member(stack, colony, prvkey, Cli(stack_env(stack, colony, prvkey)), tmp_path)


def node(funcname: str, *dependencies: str, **fields: Any) -> dict[str, Any]:
    """A function spec for the test executors."""
    conditions = {"executortype": EXECUTOR_TYPE, "dependencies": list(dependencies)}
    return {"funcname": funcname, "conditions": conditions, **fields}


SEED = (node("gen_nums", maxexectime=100, maxwaittime=100), node("sum_nums", "gen_nums"))
SEED_FUNCTIONS: dict[str, Callable[[list[Any]], list[Any]]] = {
    "gen_nums": lambda _: [1, 2],
    "sum_nums": lambda numbers: [sum(numbers)],
}


def graph_ids(listing: str) -> list[str]:
    """The 64-hex ids in a table, top to bottom."""
    return [word for word in listing.split() if len(word) == 64 and word.isalnum()]


# --------------------------------------------------------------------------- submit


def test_submit_prints_the_graph_id_and_its_waiting_nodes(member: Member) -> None:
    out = member.cli.ok("workflow", "submit", str(member.spec_file(*SEED)))
    graphid = out.split()[1]
    assert out.startswith(f"Workflow {graphid} submitted")
    graph = member.client.get_processgraph(graphid, member.prvkey)
    assert graph.state == ProcessState.WAITING
    assert len(graph.processids) == 2
    for text in ("gen_nums", "sum_nums", "WAITING", member.colony.name, "alice", "╭"):
        assert text in out
    assert graph_ids(member.cli.ok("workflow", "psw", "--wide")) == [graphid]
    for running_or_ended in ("ps", "pss", "psf"):
        assert graphid not in member.cli.ok("workflow", running_or_ended, "--wide")


def test_submit_wait_runs_the_seed_workflow_to_success(member: Member) -> None:
    with member.executor(**SEED_FUNCTIONS) as executor:
        out = member.cli.ok("workflow", "submit", str(member.spec_file(*SEED)), "--wait")
    graphid = out.split()[1]
    summary, nodes = out.split("NODENAME")
    assert "SUCCESS" in summary
    rows = {line.split("│")[1].strip(): line for line in nodes.splitlines() if "_nums" in line}
    assert set(rows) == {"gen_nums", "sum_nums"}
    assert "[1,2]" in rows["gen_nums"]
    assert "[3]" in rows["sum_nums"]
    assert executor.name in rows["sum_nums"]
    assert "SUCCESS" in rows["sum_nums"]
    assert graph_ids(member.cli.ok("workflow", "pss", "--wide")) == [graphid]
    assert graphid not in member.cli.ok("workflow", "psw", "--wide")


def test_a_bare_list_of_specs_goes_to_the_configured_colony(member: Member) -> None:
    path = member.spec_file(*SEED, colonyname=None)
    shown = decode(member.cli.ok("workflow", "submit", str(path), "--json"), GraphDetails)
    assert shown.processgraph.colonyname == member.colony.name
    assert [p.spec.conditions.colonyname for p in shown.processes] == [member.colony.name] * 2


def test_submit_wait_reports_a_failed_workflow_with_status_1(member: Member) -> None:
    def boom(_: list[Any]) -> list[Any]:
        raise ValueError("no luck")

    with member.executor(boom=boom, **SEED_FUNCTIONS):
        result = member.cli("workflow", "submit", str(member.spec_file(node("boom"))), "--wait")
    assert result.exit_code == 1
    graphid = result.stdout.split()[1]
    assert result.stderr.splitlines()[-1] == f"error: workflow {graphid} ended FAILED"
    process = member.client.get_processgraph(graphid, member.prvkey).processids[0]
    assert f"ValueError('no luck') (all of it: colonies process get {process[:12]})" in (
        result.stdout
    )
    assert graph_ids(member.cli.ok("workflow", "psf", "--wide")) == [graphid]
    failed = member.cli.json("process", "psf")
    assert [p["errors"] for p in failed] == [["ValueError('no luck')", TRACEBACK]]
    details = member.cli.ok("process", "get", failed[0]["processid"])
    assert "ValueError('no luck')" in details
    assert TRACEBACK in details


def test_a_file_the_engine_refuses_gives_its_reason(member: Member) -> None:
    cycle = member.spec_file(node("a", "b"), node("b", "a"))
    line = member.cli.error("workflow", "submit", str(cycle))
    assert line.startswith("error: refused: ")
    assert "cycle" in line
    not_json = member.directory / "broken.json"
    not_json.write_text("{nope")
    assert member.cli.error("workflow", "submit", str(not_json)).startswith(
        f"error: cannot read {not_json}: "
    )
    assert member.client.get_processgraphs(member.colony.name, 10, member.prvkey) == []


# --------------------------------------------------------------------------- listings and get


def test_listings_are_newest_first_and_count_limits_them(member: Member) -> None:
    submitted = [member.submit(*SEED) for _ in range(3)]
    assert graph_ids(member.cli.ok("workflow", "psw", "--wide")) == submitted[::-1]
    assert graph_ids(member.cli.ok("workflow", "psw", "--wide", "--count", "2")) == submitted[:0:-1]
    listed = member.cli.json("workflow", "psw", "--count", "2")
    expected = member.client.get_processgraphs(
        member.colony.name, 2, member.prvkey, state=ProcessState.WAITING
    )
    assert listed == msgspec.json.decode(encode(expected))
    processes = decode(
        member.cli.ok("process", "psw", "--wide", "--count", "4", "--json"), list[Process]
    )
    assert processes == member.client.list_processes(
        member.colony.name, 4, ProcessState.WAITING, member.prvkey
    )
    table = member.cli.ok("process", "psw", "--wide", "--count", "4")
    assert graph_ids(table) == [p.processid for p in processes]
    assert "sum_nums" in table
    assert EXECUTOR_TYPE in table


def test_a_running_workflow_is_listed_by_ps_and_can_be_cancelled(member: Member) -> None:
    release = threading.Event()

    def block(_: list[Any]) -> list[Any]:
        release.wait(20)
        return ["late"]

    with member.executor(block=block) as executor:
        graphid = member.submit(node("block"), node("after", "block"))
        member.wait_for(graphid, ProcessState.RUNNING)
        listing = member.cli.ok("workflow", "ps", "--wide")
        assert graph_ids(listing) == [graphid]
        assert "RUNNING" in listing
        running = member.cli.ok("process", "ps", "--wide")
        assert "block" in running
        assert executor.name in running
        line = member.cli.error("workflow", "remove", graphid)
        assert line.startswith("error: cannot now: ")
        assert member.cli.ok("workflow", "cancel", "--processgraphid", graphid) == (
            f"Workflow {graphid} cancelled\n"
        )
        release.set()
    graph = member.client.get_processgraph(graphid, member.prvkey)
    assert graph.state == ProcessState.CANCELLED
    assert graphid not in member.cli.ok("workflow", "ps", "--wide")
    shown = member.cli.ok("workflow", "get", graphid)
    assert shown.count("CANCELLED") == 3  # the graph and both nodes


def test_get_shows_the_graph_and_json_matches_the_clients_view(member: Member) -> None:
    with member.executor(**SEED_FUNCTIONS):
        graphid = member.submit(*SEED)
        member.wait_for(graphid, ProcessState.SUCCESS)
    by_flag = member.cli.ok("workflow", "get", "--processgraphid", graphid)
    assert by_flag == member.cli.ok("workflow", "get", graphid)
    for text in (graphid, "SUCCESS", "gen_nums", "sum_nums", "[1,2]", "[3]", "alice"):
        assert text in by_flag
    shown = decode(member.cli.ok("workflow", "get", graphid, "--json"), GraphDetails)
    graph = member.client.get_processgraph(graphid, member.prvkey)
    assert shown.processgraph == graph
    assert shown.processes == [
        member.client.get_process(p, member.prvkey) for p in graph.processids
    ]


def test_process_get_shows_every_attribute(member: Member) -> None:
    with member.executor(**SEED_FUNCTIONS):
        graphid = member.submit(*SEED)
        graph = member.wait_for(graphid, ProcessState.SUCCESS)
    process = member.client.find_process("sum_nums", graph.processids, member.prvkey)
    assert process is not None
    shown = member.cli.ok("process", "get", "--processid", process.processid)
    for text in (process.processid, graphid, "sum_nums", "SUCCESS", "[1,2]", "[3]", "gen_nums"):
        assert text in shown
    assert process.parents[0] in shown
    as_json = decode(member.cli.ok("process", "get", process.processid, "--json"), Process)
    assert as_json == process


# --------------------------------------------------------------------------- removal


def test_remove_and_removeall_take_workflows_out_of_listings(member: Member) -> None:
    first, second, third = (member.submit(*SEED) for _ in range(3))
    assert member.cli.ok("workflow", "remove", "--processgraphid", first) == (
        f"Workflow {first} removed\n"
    )
    assert graph_ids(member.cli.ok("workflow", "psw", "--wide")) == [third, second]
    assert member.cli.error("workflow", "get", first) == (
        f"error: process graph {first} does not exist"
    )
    member_only = member.cli.error("workflow", "removeall", COLONIES_COLONY_PRVKEY=member.prvkey)
    assert member_only.startswith("error: not allowed: ")
    assert len(graph_ids(member.cli.ok("workflow", "psw", "--wide"))) == 2
    member.cli.ok("workflow", "removeall", "--state", "successful")
    assert len(graph_ids(member.cli.ok("workflow", "psw", "--wide"))) == 2
    out = member.cli.ok("workflow", "removeall", "--state", "waiting")
    assert out.startswith("Removed the waiting workflows")
    assert (
        member.cli.ok("workflow", "psw", "--wide")
        == f"No waiting workflows in colony {member.colony.name}\n"
    )
    assert member.cli.json("workflow", "psw") == []
