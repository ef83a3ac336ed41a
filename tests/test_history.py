"""`colonies workflow history` on a real stack: one line per event, in order, from the log.

Workflows run on a real :class:`PythonExecutor` (named ``ex-1``) with the functions' source
sent as ``code``, as users send them. The other read-side test modules (time travel,
debug, audit) share this module's helpers.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from typer.testing import CliRunner, Result

from colonies_es import Workflow, crypto, func_spec
from colonies_es.cli.app import app
from colonies_es.client import Colonies, ColoniesError
from colonies_es.executor import PythonExecutor
from colonies_es.models import FuncSpec
from colonies_es.projections.history import HistoryEntry, history
from colonies_es.states import ProcessState
from tests.processes import wait_until
from tests.stack import ColonyHandle, Stack

WAIT = 30.0
"""Seconds a workflow may take to end before a test gives up."""

GEN_NUMS = "def gen_nums(ctx={}):\n    return 1, 2\n"
SUM_NUMS = "def sum_nums(n1, n2, ctx={}):\n    return n1 + n2\n"
FLAKY = """
def flaky(ctx={}):
    if ctx["process"].retries == 0:
        raise ValueError("the first try fails")
    return 7
"""

# The seed's map-reduce, where gen_nums_2 fails unless the file FIXED exists.
GEN_NUMS_CHILD = """import os

def gen_nums(ctx={}):
    if ctx["process"].spec.nodename == "gen_nums_2" and not os.path.exists(FIXED):
        raise ValueError("no numbers for gen_nums_2")
    return 1, 2
"""
MAP = """
def map(ctx={}):
    process = ctx["process"]
    prvkey = ctx["executor_prvkey"]
    graph = colonies.get_processgraph(process.processgraphid, prvkey)
    reduce = colonies.find_process("reduce", graph.processids, prvkey)
    for i in range(5):
        child = func_spec(
            func="gen_nums", args=[], colonyname=ctx["colonyname"],
            executortype="python-executor", code=CHILD,
        )
        colonies.add_child(
            process.processgraphid, process.processid, reduce.processid, child,
            f"gen_nums_{i}", i == 0, prvkey,
        )
"""
MAP_AT_ONCE = MAP.replace(
    """        colonies.add_child(
            process.processgraphid, process.processid, reduce.processid, child,
            f"gen_nums_{i}", i == 0, prvkey,
        )
""",
    """        try:  # made at once, each child its own event (else sent together)
            colonies.add_child(
                process.processgraphid, process.processid, reduce.processid, child,
                f"gen_nums_{i}", i == 0, prvkey,
            )
        except Exception:
            raise
""",
)
"""The same map with each ``add_child`` in a ``try``: the executor makes such calls at
once (:mod:`colonies_es.deferred_children`), so the log has one event per child, always
(the calls of MAP are sent together: in one or, on a stalled machine, more events)."""
assert MAP_AT_ONCE != MAP
REDUCE = "def reduce(*nums, ctx={}):\n    return sum(nums)\n"


# --- helpers (shared by the read side's test modules) --------------------------------------


@pytest.fixture(scope="module")
def stack(stack_with_projector: Stack) -> Stack:
    """History, replay, debug and export read through a projector: the engine process
    runs one."""
    return stack_with_projector


def spec(
    colony: ColonyHandle, funcname: str, code: str, deps: tuple[str, ...] = (), **options: Any
) -> FuncSpec:
    """A python-executor spec calling ``funcname`` defined in ``code``."""
    made = func_spec(funcname, [], colony.name, "python-executor", code=code, **options)
    made.conditions.dependencies.extend(deps)
    return made


@contextlib.contextmanager
def executor(stack: Stack, colony: ColonyHandle, name: str = "ex-1") -> Iterator[PythonExecutor]:
    """A python executor called ``name`` taking the colony's work until the block ends
    (the same identity each time in a colony, as an executor restarted). It claims one
    process at a time (no prefetch), so a graph's history is the one order a lone
    executor makes: the tests read it event by event."""
    client = Colonies("127.0.0.1", stack.nats.port)
    key = colony.executors.setdefault(name, crypto.new_private_key())
    running = PythonExecutor(
        client,
        colony.name,
        colony.owner_prvkey,
        name=name,
        prvkey=key,
        poll_timeout=0.5,
        prefetch=0,
    )
    running.register()
    stop = threading.Event()
    thread = threading.Thread(target=running.run, args=(stop,), name=name)
    thread.start()
    try:
        yield running
    finally:
        stop.set()
        thread.join(10)
        client.disconnect()
        assert not thread.is_alive(), "the executor did not stop"


def run_workflow(stack: Stack, colony: ColonyHandle, *specs: FuncSpec) -> str:
    """Submit a workflow, run it on ``ex-1`` until it ends; return its id."""
    workflow = Workflow(colonyname=colony.name, functionspecs=list(specs))
    with executor(stack, colony):
        graph = stack.client.submit_workflow(workflow, colony.owner_prvkey)
        wait_ended(stack, colony, graph.processgraphid)
    return graph.processgraphid


def wait_ended(stack: Stack, colony: ColonyHandle, processgraphid: str) -> int:
    """The graph's final state, once it has one."""
    ended = (ProcessState.SUCCESS, ProcessState.FAILED, ProcessState.CANCELLED)

    def state() -> int:
        return stack.client.get_processgraph(processgraphid, colony.owner_prvkey).state

    wait_until(lambda: state() in ended, WAIT, f"graph {processgraphid} ends")
    return state()


def read_history(
    stack: Stack, processgraphid: str, colonyname: str | None = None
) -> list[HistoryEntry]:
    """The graph's history read as a reader holding the engine's seal key would."""
    return history(stack.nats.url, processgraphid, colonyname, stack.engine.seal_key)


def cli(stack: Stack, *args: str, seal: bool = True, prvkey: str | None = None) -> Result:
    """``colonies ARGS`` in-process, configured for ``stack`` by COLONIES_* variables;
    ``prvkey``: the caller's key (a member's, for history, replay, debug and export)."""
    env = {
        "COLONIES_SERVER_HOST": "127.0.0.1",
        "COLONIES_SERVER_PORT": str(stack.nats.port),
        "COLONIES_EVENT_SEAL_KEY": stack.engine.seal_key if seal else None,
        "COLONIES_COLONY_NAME": None,
        "COLONIES_PRVKEY": prvkey,
        "COLONIES_ENGINE_ID": None,
        "COLONIES_SERVER_ID": None,
    }
    return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)


def cli_ok(stack: Stack, *args: str, **options: Any) -> str:
    result = cli(stack, *args, **options)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result.stdout


def cli_json(stack: Stack, *args: str, **options: Any) -> Any:
    return msgspec.json.decode(cli_ok(stack, *args, "--json", **options))


def seed(stack: Stack, colony: ColonyHandle) -> str:
    """The seed's workflow, gen_nums -> sum_nums, run to SUCCESS; returns its id."""
    return run_workflow(
        stack,
        colony,
        spec(colony, "gen_nums", GEN_NUMS),
        spec(colony, "sum_nums", SUM_NUMS, ("gen_nums",)),
    )


def failed_map_reduce(
    stack: Stack, colony: ColonyHandle, fixed: Path, at_once: bool = False
) -> str:
    """The seed's map-reduce where gen_nums_2 fails (while the file ``fixed`` does not
    exist): map, gen_nums_0 and gen_nums_1 succeed, gen_nums_3, gen_nums_4 and reduce are
    cancelled, the graph FAILS. Returns its id. ``at_once``: :data:`MAP_AT_ONCE`, one
    event per child."""
    child = GEN_NUMS_CHILD.replace("FIXED", repr(str(fixed)))
    return run_workflow(
        stack,
        colony,
        spec(colony, "map", (MAP_AT_ONCE if at_once else MAP).replace("CHILD", repr(child))),
        spec(colony, "reduce", REDUCE, ("map",)),
    )


@pytest.fixture
def colony(stack: Stack) -> ColonyHandle:
    return stack.new_colony()


# --- history -------------------------------------------------------------------------------


def test_the_seed_workflow_reads_as_what_happened_in_order(
    stack: Stack, colony: ColonyHandle
) -> None:
    graphid = seed(stack, colony)

    entries = read_history(stack, graphid)

    assert [entry.summary for entry in entries] == [
        "submitted 2 processes (gen_nums, sum_nums); ready: gen_nums",
        "gen_nums assigned to ex-1 (attempt 1); graph RUNNING",
        "gen_nums closed: out=[1, 2]; ready: sum_nums in=[1, 2]",
        "sum_nums assigned to ex-1 (attempt 1)",
        "sum_nums closed: out=[3]; graph SUCCESS",
    ]
    assert [entry.actorname for entry in entries] == ["colony owner"] + ["ex-1"] * 4
    assert [entry.version for entry in entries] == [1, 2, 3, 4, 5]
    sequences = [entry.sequence for entry in entries]
    assert sequences == sorted(sequences)
    assert [entry.time for entry in entries] == sorted(entry.time for entry in entries)
    assert entries[0].kind == "GraphSubmitted"
    assert entries[0].actor == crypto.id_from_private_key(colony.owner_prvkey)


def test_a_failed_attempt_and_its_retry_are_both_in_the_history(
    stack: Stack, colony: ColonyHandle
) -> None:
    graphid = run_workflow(stack, colony, spec(colony, "flaky", FLAKY, maxretries=1))

    summaries = [entry.summary for entry in read_history(stack, graphid)]

    assert summaries == [
        "submitted 1 process (flaky); ready: flaky",
        "flaky assigned to ex-1 (attempt 1); graph RUNNING",
        "flaky failed (attempt 1): ValueError: the first try fails; retried; graph WAITING",
        "flaky assigned to ex-1 (attempt 2); graph RUNNING",
        "flaky closed: out=[7]; graph SUCCESS",
    ]


def test_the_colony_is_optional_and_a_wrong_one_finds_nothing(
    stack: Stack, colony: ColonyHandle
) -> None:
    graphid = seed(stack, colony)

    assert len(read_history(stack, graphid, colony.name)) == 5
    assert read_history(stack, graphid, stack.new_colony().name) == []


def test_cli_history_prints_one_row_per_event_and_json_with_the_events(
    stack: Stack, colony: ColonyHandle
) -> None:
    graphid = seed(stack, colony)
    entries = read_history(stack, graphid)

    table = cli_ok(stack, "workflow", "history", graphid, prvkey=colony.owner_prvkey)
    rows = [line for line in table.splitlines() if "ex-1" in line or "colony owner" in line]
    assert len(rows) == 5
    for row, entry in zip(rows, entries, strict=True):
        assert str(entry.sequence) in row
        assert entry.summary in row

    shown = cli_json(
        stack, "workflow", "history", "--processgraphid", graphid, prvkey=colony.owner_prvkey
    )
    assert [item["summary"] for item in shown] == [entry.summary for entry in entries]
    assert [item["kind"] for item in shown] == [
        "GraphSubmitted",
        "ProcessAssigned",
        "ProcessClosed",
        "ProcessAssigned",
        "ProcessClosed",
    ]
    assert shown[2]["event"]["output"] == [1, 2]
    assert shown[2]["event"]["ready"][0]["input"] == [1, 2]
    assert shown[0]["actor"] == crypto.id_from_private_key(colony.owner_prvkey)


def test_cli_history_of_an_unknown_graph_is_a_one_line_error(stack: Stack) -> None:
    key = stack.new_colony().owner_prvkey
    result = cli(stack, "workflow", "history", "0" * 64, prvkey=key)

    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: process graph {'0' * 64} does not exist"


def test_only_members_read_a_graph_history_and_time_travel(
    stack: Stack, colony: ColonyHandle
) -> None:
    """History and time travel are signed queries answered after the membership check
    of get_processgraph: a member of another colony gets 403 (issue 9.2)."""
    graphid = seed(stack, colony)
    outsider = stack.new_colony().owner_prvkey

    assert [e.summary for e in stack.client.history(graphid, colony.owner_prvkey)] == [
        e.summary for e in read_history(stack, graphid)
    ]
    assert stack.client.state_at(graphid, "#5", colony.owner_prvkey).processgraph.state == 2
    for read in (
        lambda: stack.client.history(graphid, outsider),
        lambda: stack.client.state_at(graphid, "#1", outsider),
    ):
        with pytest.raises(ColoniesError) as refused:
            read()
        assert refused.value.status == 403
    for command in ("history", "replay", "debug"):
        result = cli(stack, "workflow", command, graphid, prvkey=outsider)
        assert result.exit_code == 1, command
        assert result.stderr.startswith("error: "), (command, result.stderr)
        assert "not a member of colony" in result.stderr, (command, result.stderr)
    no_key = cli(stack, "workflow", "history", graphid)
    assert no_key.exit_code == 2
    assert "COLONIES_PRVKEY" in no_key.stderr
