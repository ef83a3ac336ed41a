"""Time travel on a real stack: a graph's state at each of its events, by replay.

The graph is the seed's map-reduce with a failing gen_nums_2 (``failed_map_reduce``, its
``add_child`` calls made at once): 14 events, from the submission to the failure that
cancels what still waited.
"""

from __future__ import annotations

from datetime import timedelta

import msgspec
import pytest

from colonies_es.domain import ProcessGraph
from colonies_es.models import encode
from colonies_es.projections.history import HistoryEntry
from colonies_es.projections.timetravel import (
    Nth,
    ReplayError,
    graph_state,
    parse_moment,
    replay,
    state_at,
)
from colonies_es.states import ProcessState
from tests.stack import ColonyHandle, Stack
from tests.test_history import cli, cli_json, cli_ok, failed_map_reduce, read_history

W, R, S, F, C = "WAITING", "RUNNING", "SUCCESS", "FAILED", "CANCELLED"
GENS = [f"gen_nums_{i}" for i in range(5)]


@pytest.fixture(scope="module")
def stack(stack_with_projector: Stack) -> Stack:
    """History, replay, debug and export read through a projector: the engine process
    runs one."""
    return stack_with_projector


def states(graph: ProcessGraph) -> tuple[str, dict[str, str]]:
    """The graph's state and each process's, by name."""
    return (
        ProcessState(graph.state).name,
        {node.nodename: ProcessState(node.state).name for node in graph.nodes.values()},
    )


def expected_states() -> list[tuple[str, dict[str, str]]]:
    """After each event of the failed map-reduce, in order."""
    steps = [(W, {"map": W, "reduce": W}), (R, {"map": R, "reduce": W})]
    nodes = {"map": R, "reduce": W}
    for name in GENS:  # map adds its children while it runs
        nodes = {**nodes, name: W}
        steps.append((R, nodes))
    nodes = {**nodes, "map": S}  # map closes: its children are ready
    steps.append((R, nodes))
    for name in GENS[:2]:
        nodes = {**nodes, name: R}
        steps.append((R, nodes))
        nodes = {**nodes, name: S}
        steps.append((R, nodes))
    steps.append((R, {**nodes, "gen_nums_2": R}))
    steps.append((F, {**nodes, "gen_nums_2": F, "gen_nums_3": C, "gen_nums_4": C, "reduce": C}))
    return steps


@pytest.fixture(scope="module")
def colony(stack: Stack) -> ColonyHandle:
    """The colony of the failed map-reduce (its owner reads its history)."""
    return stack.new_colony()


@pytest.fixture(scope="module")
def failed(
    stack: Stack, colony: ColonyHandle, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, list[HistoryEntry]]:
    """The failed map-reduce's id and history (one graph for the whole module)."""
    graphid = failed_map_reduce(
        stack, colony, tmp_path_factory.mktemp("never") / "fixed", at_once=True
    )
    return graphid, read_history(stack, graphid)


def test_replay_at_every_event_shows_the_graph_as_it_was(
    failed: tuple[str, list[HistoryEntry]],
) -> None:
    _, entries = failed

    assert [states(state_at(entries, Nth(n))) for n in range(1, len(entries) + 1)] == (
        expected_states()
    )
    after_map = state_at(entries, Nth(8))
    assert all(after_map.find_by_nodename(name).readytime is not None for name in GENS)  # type: ignore[union-attr]
    assert after_map.find_by_nodename("reduce").parents == [  # type: ignore[union-attr]
        after_map.find_by_nodename(name).processid  # type: ignore[union-attr]
        for name in GENS
    ]
    assert entries[2].summary == "map added gen_nums_0 (insert) before reduce"
    assert entries[3].summary == "map added gen_nums_1 before reduce"
    assert entries[7].summary.startswith("map closed: out=[]; ready: gen_nums_0, gen_nums_1,")
    assert entries[13].summary == (
        "gen_nums_2 failed (attempt 1): ValueError: no numbers for gen_nums_2; cancelled 3 "
        "waiting processes: reduce, gen_nums_3, gen_nums_4; graph FAILED"
    )


def test_cli_step_prints_every_state_in_order(
    stack: Stack, colony: ColonyHandle, failed: tuple[str, list[HistoryEntry]]
) -> None:
    graphid, entries = failed

    steps = cli_json(stack, "workflow", "replay", graphid, "--step", prvkey=colony.owner_prvkey)

    assert [step["event"] for step in steps] == list(range(1, 15))
    assert [step["sequence"] for step in steps] == [entry.sequence for entry in entries]
    shown = [
        (
            ProcessState(step["processgraph"]["state"]).name,
            {p["spec"]["nodename"]: ProcessState(p["state"]).name for p in step["processes"]},
        )
        for step in steps
    ]
    assert shown == expected_states()

    table = cli_ok(
        stack, "workflow", "replay", graphid, "--step", "--at", "#3", prvkey=colony.owner_prvkey
    )
    assert table.count("ProcessGraph ID") == 3
    assert "#3" in table
    assert entries[2].summary in table


def test_a_sequence_a_time_and_an_event_number_name_the_same_moment(
    stack: Stack, colony: ColonyHandle, failed: tuple[str, list[HistoryEntry]]
) -> None:
    graphid, entries = failed
    for n in (1, 8, 14):
        entry = entries[n - 1]
        forms = [f"#{n}", str(entry.sequence), entry.time.isoformat()]
        if n < len(entries):  # any sequence before the next event's
            forms.append(str(entries[n].sequence - 1))
        by_api = {encode(graph_state(state_at(entries, parse_moment(form)))) for form in forms}
        assert len(by_api) == 1, forms
        by_cli = [
            cli_json(stack, "workflow", "replay", graphid, "--at", form, prvkey=colony.owner_prvkey)
            for form in forms
        ]
        assert all(shown == by_cli[0] for shown in by_cli), forms
        assert by_cli[0]["event"] == n
        assert msgspec.json.encode(by_cli[0]["processgraph"]) == msgspec.json.encode(
            msgspec.json.decode(encode(graph_state(state_at(entries, Nth(n))).processgraph))
        )


def test_without_at_replay_shows_the_last_state_like_workflow_get(
    stack: Stack, colony: ColonyHandle, failed: tuple[str, list[HistoryEntry]]
) -> None:
    graphid, _ = failed

    shown = cli_ok(stack, "workflow", "replay", graphid, prvkey=colony.owner_prvkey)

    for text in ("#14", "NODENAME", "gen_nums_2", "FAILED", "CANCELLED", "no numbers for"):
        assert text in shown


def test_moments_outside_the_history_are_one_line_errors(
    stack: Stack, colony: ColonyHandle, failed: tuple[str, list[HistoryEntry]]
) -> None:
    graphid, entries = failed
    before = (entries[0].time - timedelta(seconds=1)).isoformat()

    for at, status, message in [
        ("#15", 1, "#15: the graph has 14 events"),
        (str(entries[0].sequence - 1), 1, "the graph did not exist yet at sequence"),
        (before, 1, "the graph did not exist yet at"),
        ("#0", 2, "after '#' comes an event number, from 1"),
        ("yesterday", 2, "is neither a stream sequence"),
    ]:
        result = cli(stack, "workflow", "replay", graphid, "--at", at, prvkey=colony.owner_prvkey)
        assert result.exit_code == status, (at, result.stdout, result.stderr)
        assert result.stderr.startswith("error: "), at
        assert message in result.stderr, (at, result.stderr)


def test_events_alone_replay_by_number_or_time_not_by_sequence(
    failed: tuple[str, list[HistoryEntry]],
) -> None:
    _, entries = failed
    events = [entry.event for entry in entries]

    assert states(state_at(events, Nth(8))) == expected_states()[7]
    assert states(state_at(events, events[1].timestamp)) == expected_states()[1]
    with pytest.raises(ReplayError, match="give a time or #N"):
        state_at(events, entries[3].sequence)


def test_replay_from_python_takes_a_client_or_a_url(
    stack: Stack, failed: tuple[str, list[HistoryEntry]]
) -> None:
    graphid, entries = failed

    by_client = replay(stack.client, graphid, "#8", seal_key=stack.engine.seal_key)
    by_url = replay(stack.nats.url, graphid, Nth(8), seal_key=stack.engine.seal_key)

    assert encode(by_client) == encode(by_url) == encode(graph_state(state_at(entries, Nth(8))))
    assert by_client.processgraph.state == ProcessState.RUNNING
    with pytest.raises(ReplayError, match="has no events"):
        replay(stack.nats.url, "0" * 64, "#1")
