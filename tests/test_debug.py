"""Debugging failed graphs on a real stack: what failed and why, a recorded function run
again here, and the engine re-running a graph from its failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from colonies_es import crypto
from colonies_es.debug import debug_report, run_locally
from colonies_es.models import ProcessGraph, decode
from colonies_es.states import ProcessState
from tests.stack import ColonyHandle, Stack
from tests.test_history import (
    FLAKY,
    cli,
    cli_ok,
    executor,
    failed_map_reduce,
    read_history,
    run_workflow,
    seed,
    spec,
    wait_ended,
)


@pytest.fixture(scope="module")
def stack(stack_with_projector: Stack) -> Stack:
    """History, replay, debug and export read through a projector: the engine process
    runs one."""
    return stack_with_projector


@pytest.fixture
def colony(stack: Stack) -> ColonyHandle:
    return stack.new_colony()


def test_the_report_names_the_failed_node_its_attempts_path_and_what_it_cancelled(
    stack: Stack, colony: ColonyHandle, tmp_path: Path
) -> None:
    graphid = failed_map_reduce(stack, colony, tmp_path / "fixed")
    entries = read_history(stack, graphid)

    report = debug_report(entries)

    assert report.state == ProcessState.FAILED
    assert report.retried == []
    [failed] = report.failed
    assert failed.nodename == "gen_nums_2"
    assert failed.input == []
    assert failed.paths == [["map", "gen_nums_2"]]
    assert failed.cancelled == ["reduce", "gen_nums_3", "gen_nums_4"]
    assert failed.failure is entries[-1]
    [attempt] = failed.attempts
    assert (attempt.attempt, attempt.executorname, attempt.outcome) == (1, "ex-1", "failed")
    assert attempt.endtime is not None
    assert attempt.starttime <= attempt.endtime
    assert attempt.errors[0] == "ValueError: no numbers for gen_nums_2"
    assert 'raise ValueError("no numbers for gen_nums_2")' in attempt.errors[1]

    shown = cli_ok(stack, "workflow", "debug", graphid, prvkey=colony.owner_prvkey)
    for text in (
        "FAILED: gen_nums_2",
        "map → gen_nums_2",
        "ex-1",
        "ValueError: no numbers for gen_nums_2",
        'raise ValueError("no numbers for gen_nums_2")',
        "reduce, gen_nums_3, gen_nums_4",
        f"#{entries[-1].version} (sequence {entries[-1].sequence})",
    ):
        assert text in shown, text


def test_a_process_that_needed_a_retry_is_shown_with_both_attempts(
    stack: Stack, colony: ColonyHandle
) -> None:
    graphid = run_workflow(stack, colony, spec(colony, "flaky", FLAKY, maxretries=1))

    report = debug_report(read_history(stack, graphid))

    assert report.failed == []
    [retried] = report.retried
    assert [(a.attempt, a.outcome) for a in retried.attempts] == [(1, "failed"), (2, "success")]
    assert retried.attempts[0].errors[0] == "ValueError: the first try fails"
    shown = cli_ok(stack, "workflow", "debug", graphid, prvkey=colony.owner_prvkey)
    assert "0 failed, 1 retried" in shown
    assert "Retried: flaky" in shown
    assert "ValueError: the first try fails" in shown


def test_a_graph_where_nothing_failed_says_so(stack: Stack, colony: ColonyHandle) -> None:
    graphid = seed(stack, colony)

    assert f"Nothing failed in workflow {graphid}: it is SUCCESS" in cli_ok(
        stack, "workflow", "debug", graphid, prvkey=colony.owner_prvkey
    )


def test_rerun_runs_the_recorded_function_here_with_its_recorded_input(
    stack: Stack, colony: ColonyHandle, tmp_path: Path
) -> None:
    fixed = tmp_path / "fixed"
    graphid = failed_map_reduce(stack, colony, fixed)
    entries = read_history(stack, graphid)

    failing = cli(
        stack, "workflow", "debug", graphid, "--rerun", "gen_nums_2", prvkey=colony.owner_prvkey
    )
    assert failing.exit_code == 1
    assert "raised: ValueError: no numbers for gen_nums_2" in failing.stdout
    assert 'raise ValueError("no numbers for gen_nums_2")' in failing.stdout
    assert "returned: [1,2]" in cli_ok(
        stack, "workflow", "debug", graphid, "--rerun", "gen_nums_1", prvkey=colony.owner_prvkey
    )

    fixed.touch()  # the cause goes away: the same recorded function now succeeds here
    run = run_locally(entries, "gen_nums_2")
    assert run.succeeded
    assert run.output == [1, 2]

    for nodename, message in [
        ("reduce", "reduce never became ready: it has no recorded input to run with"),
        ("nope", "no process named 'nope' in the graph"),
    ]:
        result = cli(
            stack, "workflow", "debug", graphid, "--rerun", nodename, prvkey=colony.owner_prvkey
        )
        assert result.exit_code == 1
        assert result.stderr.startswith("error: ")
        assert message in result.stderr


def test_rerun_calls_the_function_with_its_input(stack: Stack, colony: ColonyHandle) -> None:
    graphid = seed(stack, colony)

    run = run_locally(read_history(stack, graphid), "sum_nums")

    assert (run.input, run.output, run.errors) == ([1, 2], [3], [])


def test_rerun_from_failed_runs_only_the_failure_and_what_depends_on_it(
    stack: Stack, colony: ColonyHandle, tmp_path: Path
) -> None:
    fixed = tmp_path / "fixed"
    graphid = failed_map_reduce(stack, colony, fixed)
    fixed.touch()
    key = ["--prvkey", colony.owner_prvkey]

    with executor(stack, colony, name="ex-2"):
        shown = cli_ok(stack, "workflow", "rerun", graphid, "--from-failed", "--json", *key)
        rerun = decode(shown, ProcessGraph)
        assert wait_ended(stack, colony, rerun.processgraphid) == ProcessState.SUCCESS

    entries = read_history(stack, rerun.processgraphid)
    assert entries[0].summary.startswith(
        f"re-ran graph {graphid}: 7 processes, 3 keeping their output (map, gen_nums_0, gen_nums_1)"
    )
    assigned = [e.summary.split()[0] for e in entries if e.kind == "ProcessAssigned"]
    assert assigned == ["gen_nums_2", "gen_nums_3", "gen_nums_4", "reduce"]
    assert entries[-1].summary == "reduce closed: out=[15]; graph SUCCESS"
    owner = crypto.id_from_private_key(colony.owner_prvkey)
    assert entries[0].actor == owner


def test_rerun_is_from_failed_by_default_and_needs_a_failed_graph(
    stack: Stack, colony: ColonyHandle
) -> None:
    graphid = seed(stack, colony)
    key = ["--prvkey", colony.owner_prvkey]

    for how in ([], ["--from-failed"]):
        refused = cli(stack, "workflow", "rerun", graphid, *how, *key)
        assert refused.exit_code == 1
        assert refused.stderr.startswith("error: cannot now: ")
