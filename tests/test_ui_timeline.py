"""The web UI's timeline (colonies_es/ui/timeline.py), from the domain's own events,
without NATS: per-event states agree with time travel, edges follow add_child."""

from __future__ import annotations

import asyncio
from typing import Any

from colonies_es.domain import GraphEvent, ProcessGraph
from colonies_es.projections.history import HistoryEntry
from colonies_es.projections.timetravel import Nth, state_at
from colonies_es.ui.reader import KeyedLocks
from colonies_es.ui.timeline import TimelineBuilder, moment_index
from tests.test_domain_dynamic import _add_all, add
from tests.test_domain_graph import assign, close, fail, pid, run, spec, submit


def _entries(graph: ProcessGraph, first_sequence: int = 10) -> list[HistoryEntry]:
    """The graph's events as a history, on stream sequences 10, 12, 14... (the log
    interleaves other subjects)."""
    events = [e for e in graph.collect_events() if isinstance(e, GraphEvent)]
    return [
        HistoryEntry(
            sequence=first_sequence + 2 * number,
            time=event.timestamp,
            subject="colonies.ev.dev.graph.x",
            event=event,
            actorname="",
            summary=type(event).__name__,
        )
        for number, event in enumerate(events)
    ]


def _map_reduce_that_fails() -> ProcessGraph:
    """map adds 3 children before reduce (the first with insert), one child fails."""
    graph = submit(spec("map"), spec("reduce", "map"))
    assign(graph, "map")
    for i in range(3):
        add(graph, "map", f"gen_nums_{i}", i == 0, "" if i == 0 else "reduce")
    close(graph, "map", [])
    run(graph, "gen_nums_0", [1, 2])
    assign(graph, "gen_nums_1")
    fail(graph, "gen_nums_1", ["ValueError: no"])
    return graph


def _states_at(builder: TimelineBuilder, index: int) -> dict[str, int]:
    """The states the page computes at event ``index``: each node's last change."""
    states: dict[str, int] = {}
    for event in builder.events[: index + 1]:
        for node, state in event["changes"]:
            states[builder.nodes[node]["id"]] = state
    return states


def test_every_step_shows_the_states_time_travel_gives() -> None:
    entries = _entries(_map_reduce_that_fails())
    builder = TimelineBuilder()
    assert builder.extend(entries) == len(entries)
    for index in range(len(entries)):
        replayed = state_at(entries, Nth(index + 1))
        expected = {processid: node.state for processid, node in replayed.nodes.items()}
        assert _states_at(builder, index) == expected, f"after event {index + 1}"
        born = {node["id"] for node in builder.nodes if node["born"] <= index}
        assert born == set(replayed.nodes)
        assert builder.events[index]["graphstate"] == replayed.state


def test_edges_follow_add_child_insert_and_append() -> None:
    graph = _map_reduce_that_fails()
    builder = TimelineBuilder()
    builder.extend(_entries(graph))
    names = [node["name"] for node in builder.nodes]
    edges = {(names[e["from"]], names[e["to"]]): e for e in builder.edges}
    first_child = next(i for i, e in enumerate(builder.events) if e["kind"] == "ChildAdded")
    # map -> reduce came with the workflow; the inserted child took it over
    assert edges[("map", "reduce")]["kind"] == "dependency"
    assert edges[("map", "reduce")]["born"] == 0
    assert edges[("map", "reduce")]["died"] == first_child
    for i in range(3):
        assert edges[("map", f"gen_nums_{i}")]["kind"] == "add_child"
        assert edges[(f"gen_nums_{i}", "reduce")]["died"] is None
    assert {name for name, _ in edges} == {"map", "gen_nums_0", "gen_nums_1", "gen_nums_2"}
    kinds = {node["name"]: node["kind"] for node in builder.nodes}
    assert kinds == {
        "map": "submitted",
        "reduce": "submitted",
        **{f"gen_nums_{i}": "child" for i in range(3)},
    }
    assert builder.to_json()["processgraphid"] == graph.processgraphid


def test_children_added_at_once_beside_the_first_are_linked_to_the_reduce() -> None:
    """The seed's map as the executor sends it: the first child inserted, the others in
    one ChildrenAdded with the reduce waiting for each (the reduce, an older process,
    gains parents born in the same event)."""
    graph = submit(spec("map"), spec("reduce", "map"))
    assign(graph, "map")
    add(graph, "map", "pair_0", True)
    _add_all(graph, ["pair_1", "pair_2"], insert=False, child="reduce")
    builder = TimelineBuilder()
    builder.extend(_entries(graph))
    names = [node["name"] for node in builder.nodes]
    live = {(names[e["from"]], names[e["to"]]) for e in builder.edges if e["died"] is None}
    assert live == {
        *{("map", f"pair_{i}") for i in range(3)},
        *{(f"pair_{i}", "reduce") for i in range(3)},
    }
    added_at_once = builder.events[-1]
    assert added_at_once["kind"] == "ChildrenAdded"
    assert {names[node] for node, _ in added_at_once["changes"]} == {"pair_1", "pair_2"}


def test_extending_applies_only_what_is_new() -> None:
    entries = _entries(_map_reduce_that_fails())
    builder = TimelineBuilder()
    assert builder.extend(entries[:4]) == 4
    assert builder.extend(entries) == len(entries) - 4  # a re-read history, whole
    assert builder.extend(entries) == 0
    whole = TimelineBuilder()
    whole.extend(entries)
    assert builder.to_json() == whole.to_json()
    assert builder.last_sequence == entries[-1].sequence


def test_a_sequence_between_events_opens_the_event_before_it() -> None:
    entries = _entries(submit(spec("a"), spec("b", "a")), first_sequence=10)
    graph_entries = entries + _entries_after(entries)
    assert moment_index(graph_entries, 9) == -1
    assert moment_index(graph_entries, 10) == 0
    assert moment_index(graph_entries, 11) == 0
    assert moment_index(graph_entries, 10_000) == len(graph_entries) - 1


def _entries_after(entries: list[HistoryEntry]) -> list[HistoryEntry]:
    graph = state_at(entries, Nth(len(entries)))
    assign(graph, "a")
    close(graph, "a", [1])
    return _entries(graph, first_sequence=entries[-1].sequence + 2)


def test_the_failure_cancels_waiting_processes_in_the_timeline() -> None:
    graph = _map_reduce_that_fails()
    builder = TimelineBuilder()
    builder.extend(_entries(graph))
    last = builder.events[-1]
    changed = {builder.nodes[node]["id"]: state for node, state in last["changes"]}
    assert changed[pid(graph, "gen_nums_1")] == 3  # FAILED
    assert changed[pid(graph, "reduce")] == 4  # CANCELLED with it
    assert last["graphstate"] == 3


def test_the_packed_document_unpacks_to_the_timeline() -> None:
    builder = TimelineBuilder()
    builder.extend(_entries(_map_reduce_that_fails()))
    packed = builder.to_json()
    kinds, actors = packed["kinds"], packed["actors"]
    unpacked_events = [
        {
            "seq": seq,
            "us": us,
            "kind": kinds[kind],
            "actor": actors[actor][0],
            "actorname": actors[actor][1],
            "summary": summary,
            "graphstate": graphstate,
            "changes": changes,
        }
        for seq, us, kind, actor, summary, graphstate, changes in packed["events"]
    ]
    assert unpacked_events == builder.events
    unpacked_edges = [
        {"from": a, "to": b, "born": born, "died": died, "kind": ("dependency", "add_child")[c]}
        for a, b, born, died, c in packed["edges"]
    ]
    assert unpacked_edges == builder.edges
    assert len(kinds) == len(set(kinds)) < len(packed["events"])


def _unpack(packed: dict[str, Any], base: dict[str, list[Any]] | None) -> dict[str, list[Any]]:
    """What the page does with an answer (app.js ``load``): the whole timeline, or what
    follows ``base``."""
    have = (
        base if base is not None and "from" in packed else {"nodes": [], "edges": [], "events": []}
    )
    nodes = have["nodes"] + packed["nodes"]
    edges = [dict(edge) for edge in have["edges"]] + [
        {"from": a, "to": b, "born": born, "died": died, "kind": kind}
        for a, b, born, died, kind in packed["edges"]
    ]
    for number, died in packed.get("died", []):
        edges[number]["died"] = died
    return {"nodes": nodes, "edges": edges, "events": have["events"] + packed["events"]}


def test_a_page_following_a_graph_gets_only_what_follows_what_it_has() -> None:
    entries = _entries(_map_reduce_that_fails())
    whole = TimelineBuilder()
    whole.extend(entries)
    following = TimelineBuilder()
    page = None
    for cut in (1, 3, 4, 7, len(entries)):  # the first ChildAdded (insert) removes an edge
        following.extend(entries[:cut])
        since = (len(page["events"]), len(page["nodes"]), len(page["edges"])) if page else (0, 0, 0)
        answer = following.to_json(*since)
        if page is not None:
            assert answer["from"] == dict(zip(("events", "nodes", "edges"), since, strict=True))
            assert len(answer["events"]) == cut - since[0]
        page = _unpack(answer, page)
    assert page == _unpack(whole.to_json(), None)
    assert any(edge["died"] is not None for edge in page["edges"])


async def test_keyed_locks_serialise_one_key_and_forget_it_when_released() -> None:
    locks = KeyedLocks()
    order: list[str] = []
    inside = asyncio.Event()
    release = asyncio.Event()

    async def first() -> None:
        async with locks.hold("g1"):
            order.append("first in")
            inside.set()
            await release.wait()
            order.append("first out")

    async def second() -> None:
        async with locks.hold("g1"):
            order.append("second in")

    async def other_graph() -> None:
        async with locks.hold("g2"):  # another key: not blocked by g1's holder
            order.append("other in")

    holder = asyncio.create_task(first())
    await inside.wait()
    waiter = asyncio.create_task(second())
    await asyncio.wait_for(other_graph(), timeout=5)
    assert len(locks) == 1  # g1, held and waited for; g2 forgotten once released
    release.set()
    await asyncio.wait_for(asyncio.gather(holder, waiter), timeout=5)

    assert order == ["first in", "other in", "first out", "second in"]
    assert len(locks) == 0
