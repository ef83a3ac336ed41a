"""Dynamic graphs in the domain: add_child (insert and append) and re-running a failed
graph from its failure, without NATS."""

from __future__ import annotations

import random
from typing import NoReturn

import pytest
from eventsourcing.application import project_aggregate

from colonies_es.domain import (
    ChildAdded,
    Conflict,
    DomainError,
    Forbidden,
    GraphRerun,
    ProcessGraph,
    ProcessNode,
    graph_state,
)
from tests.test_domain_graph import (
    FAILED,
    OTHER,
    SUCCESS,
    T0,
    USER_ID,
    WAITING,
    WORKER,
    assign,
    at,
    close,
    counting_ids,
    executor,
    fail,
    last_event,
    pid,
    ready_names,
    refused,
    run,
    spec,
    state_of,
    submit,
)


def add(graph: ProcessGraph, parent: str, name: str, insert: bool, child: str = "") -> str:
    return graph.add_child(
        pid(graph, parent),
        WORKER.executorid,
        spec("gen_nums"),
        name,
        insert=insert,
        childprocessid=pid(graph, child) if child else "",
        now=at(1),
        actor=WORKER.executorid,
        command=b"{}",
    )


def test_map_reduce_children_feed_reduce_in_order() -> None:
    graph = submit(spec("map"), spec("reduce", "map"))
    assign(graph, "map")
    insert = True
    for i in range(5):
        add(graph, "map", f"gen_nums_{i}", insert, "reduce")
        insert = False
    assert isinstance(last_event(graph), ChildAdded)
    reduce = graph.process(pid(graph, "reduce"))
    assert [graph.process(p).nodename for p in reduce.parents] == [
        f"gen_nums_{i}" for i in range(5)
    ]

    close(graph, "map", [])
    assert [r["nodename"] for r in last_event(graph).ready] == [f"gen_nums_{i}" for i in range(5)]
    for i in range(5):
        run(graph, f"gen_nums_{i}", [1, 2])
    assert graph.process(pid(graph, "reduce")).input == [1, 2] * 5


def test_insert_takes_over_the_parents_children_and_append_adds_beside_them() -> None:
    graph = submit(spec("n1"), spec("n2", "n1"), spec("n3", "n1"))
    assign(graph, "n1")
    n5 = add(graph, "n1", "n5", insert=False)
    assert graph.process(pid(graph, "n1")).children == [pid(graph, "n2"), pid(graph, "n3"), n5]
    n6 = add(graph, "n1", "n6", insert=True)
    assert graph.process(pid(graph, "n1")).children == [n6]
    assert graph.process(n6).children == [pid(graph, "n2"), pid(graph, "n3"), n5]
    assert graph.process(pid(graph, "n2")).parents == [n6]
    n7 = add(graph, "n1", "n7", insert=False, child="n3")
    assert graph.process(pid(graph, "n3")).parents == [n6, n7]
    assert graph.process(n7).children == [pid(graph, "n3")]


def test_add_child_checks_the_caller_the_parent_and_the_name() -> None:
    graph = submit(spec("n1"), spec("n2", "n1"))
    # The parent is not running yet: nobody holds it.
    refused(graph, Forbidden, lambda: add(graph, "n1", "x", False))
    assign(graph, "n1")
    refused(graph, Conflict, lambda: add(graph, "n1", "n2", False))
    other = executor("worker-2")
    refused(
        graph,
        Forbidden,
        lambda: graph.add_child(
            pid(graph, "n1"),
            other.executorid,
            spec("f"),
            "y",
            insert=False,
            now=T0,
            actor=other.executorid,
            command=b"",
        ),
    )


def test_rerun_from_failed_reuses_outputs_and_runs_the_failed_part() -> None:
    graph = submit(spec("a"), spec("b", "a"), spec("c", "b"), spec("d", "a"))
    run(graph, "a", [1])
    run(graph, "d", [4])
    assign(graph, "b")
    fail(graph, "b", ["boom"])
    assert graph.state == 3

    again = ProcessGraph.rerun_from_failed(
        graph,
        initiatorid=USER_ID,
        initiatorname="alice",
        now=at(5),
        actor=USER_ID,
        command=b"{}",
        ids=(f"{n:064x}" for n in range(100, 200)),
    )
    event = again.pending_events[-1]
    assert isinstance(event, GraphRerun)
    assert again.origin == graph.processgraphid
    assert state_of(again, "a") == SUCCESS
    assert state_of(again, "d") == SUCCESS
    assert again.process(pid(again, "a")).output == [1]
    assert state_of(again, "b") == WAITING
    assert [r["nodename"] for r in event.ready] == ["b"]
    assert event.ready[0]["input"] == [1]
    assert again.state == 1  # RUNNING: some processes already succeeded
    # Replaying the new graph's events rebuilds it.
    rebuilt = project_aggregate(None, again.collect_events())
    assert rebuilt is not None
    assert rebuilt.process(pid(rebuilt, "a")).output == [1]
    assert rebuilt.origin == graph.processgraphid


def test_only_a_failed_graph_can_be_rerun() -> None:
    graph = submit(spec("a"))
    refused(
        graph,
        Conflict,
        lambda: ProcessGraph.rerun_from_failed(
            graph,
            initiatorid=USER_ID,
            initiatorname="",
            now=T0,
            actor=USER_ID,
            command=b"",
            ids=counting_ids(),
        ),
    )


def test_a_decision_on_a_copy_clones_only_the_processes_it_changes() -> None:
    """Closing the last child of a wide map on a copy (as the engine decides) must not
    clone its siblings while it checks whether the reduce is ready: that made every
    close cost O(children), a whole map-reduce O(children²)."""
    graph = submit(spec("map"), spec("reduce", "map"))
    assign(graph, "map")
    children = [f"gen_nums_{i}" for i in range(50)]
    for i, name in enumerate(children):
        add(graph, "map", name, i == 0, "reduce")
    close(graph, "map", [])
    for name in children[:-1]:
        run(graph, name, [1])
    assign(graph, children[-1])
    graph.collect_events()

    draft = graph.copy()
    close(draft, children[-1], [1])

    assert draft.process(pid(draft, "reduce")).is_ready
    changed = [p for p, node in draft.nodes.items() if dict.get(graph.nodes, p) is not node]
    assert sorted(changed) == sorted([pid(graph, children[-1]), pid(graph, "reduce")])


class _NoWalk(dict[str, ProcessNode]):
    """The processes of a graph, refusing to be walked: a decision that iterates them
    (the cost of the graph, not of what changes) fails the test."""

    def _walked(self, *args: object) -> NoReturn:
        raise AssertionError("a decision walked every process of the graph")

    __iter__ = values = items = keys = _walked  # type: ignore[assignment]


def test_decisions_on_a_wide_graph_never_walk_its_processes() -> None:
    """add_child, assign and close on a map of 300 children (and the reduce's readiness
    after the last) read counts kept beside the processes, not the processes: each
    decision costs what it changes, not the size of the graph."""
    graph = submit(spec("map"), spec("reduce", "map"))
    assign(graph, "map")
    graph.collect_events()
    graph.nodes = _NoWalk(graph.nodes)
    children = [f"pair_{i}" for i in range(300)]
    for i, name in enumerate(children):
        add(graph, "map", name, i == 0, "reduce")
    close(graph, "map", [])
    assert len(last_event(graph).ready) == 300
    for name in children:
        run(graph, name, [1, 2])
    assert state_of(graph, "reduce") == WAITING
    assert graph.process(pid(graph, "reduce")).is_ready
    assert graph.process(pid(graph, "reduce")).input == [1, 2] * 300
    run(graph, "reduce", [900])
    assert graph.state == SUCCESS
    assert graph.count_in(SUCCESS) == 302


def _counts_from_scratch(graph: ProcessGraph) -> tuple[list[int], int]:
    states = [node.state for node in graph.nodes.values()]
    return [states.count(state) for state in range(5)], graph_state(states)


@pytest.mark.parametrize("seed", range(4))
def test_kept_counts_match_the_processes_through_random_runs(seed: int) -> None:
    """Through a random schedule on a wide map (children added, run in random order,
    some failing with a retry, one failing for good in half the seeds), the counts a
    decision reads equal a walk of the processes, and so does a replay of the log."""
    rng = random.Random(seed)
    graph = submit(spec("map"), spec("reduce", "map"), spec("after", "reduce"))
    assign(graph, "map")
    names = [f"pair_{i}" for i in range(60)]
    for i, name in enumerate(names):
        graph.add_child(
            pid(graph, "map"),
            WORKER.executorid,
            spec("pair", maxretries=1),
            name,
            insert=i == 0,
            childprocessid="" if i == 0 else pid(graph, "reduce"),
            now=at(1),
            actor=WORKER.executorid,
            command=b"{}",
        )
    close(graph, "map", [])
    pending = list(names)
    rng.shuffle(pending)
    for name in pending:
        if graph.process(pid(graph, name)).state != WAITING:
            continue  # cancelled by a failure
        assign(graph, name)
        roll = rng.random()
        if roll < 0.1:
            fail(graph, name, ["once"])  # retried: ready again
            assign(graph, name)
        if roll < 0.02 and seed % 2:
            fail(graph, name, ["for good"])
        else:
            close(graph, name, [1])
        counts, state = _counts_from_scratch(graph)
        assert [graph.count_in(s) for s in range(5)] == counts
        assert graph.state == state
    replayed = project_aggregate(None, graph.collect_events())
    assert isinstance(replayed, ProcessGraph)
    assert [replayed.count_in(s) for s in range(5)] == _counts_from_scratch(graph)[0]
    reduce = graph.process(pid(graph, "reduce"))
    assert reduce.is_ready == (graph.count_in(FAILED) == 0)
    assert graph.find_by_nodename("pair_7") is graph.process(pid(graph, "pair_7"))
    assert graph.find_by_nodename("pair_999") is None


def _add_all(
    graph: ProcessGraph, names: list[str], insert: bool, child: str = "", by: str = ""
) -> list[str]:
    return graph.add_children(
        pid(graph, "map"),
        by or WORKER.executorid,
        [(spec("pair"), name) for name in names],
        insert=insert,
        childprocessid=pid(graph, child) if child else "",
        now=at(1),
        actor=WORKER.executorid,
        command=b"{}",
    )


def test_add_children_inserts_them_all_before_the_reduce_in_one_event() -> None:
    """A map adding its pairs at once: one ChildrenAdded, the reduce waits for all of
    them in order (and no longer for the map), and gets their outputs in that order."""
    graph = submit(spec("map"), spec("reduce", "map"), spec("after", "reduce"))
    assign(graph, "map")
    graph.collect_events()
    names = [f"pair_{i}" for i in range(5)]
    ids = _add_all(graph, names, insert=True)
    assert [type(e).__name__ for e in graph.collect_events()] == ["ChildrenAdded"]
    assert graph.process(pid(graph, "map")).children == ids
    assert graph.process(pid(graph, "reduce")).parents == ids
    assert [graph.process(i).nodename for i in ids] == names
    close(graph, "map", [])
    assert ready_names(last_event(graph)) == names
    for i, name in enumerate(reversed(names)):
        run(graph, name, [i])
    assert graph.process(pid(graph, "reduce")).input == [4, 3, 2, 1, 0]


def test_add_children_appends_beside_and_makes_childprocessid_wait_for_each() -> None:
    graph = submit(spec("map"), spec("reduce", "map"))
    assign(graph, "map")
    ids = _add_all(graph, ["a", "b"], insert=False, child="reduce")
    reduce = graph.process(pid(graph, "reduce"))
    assert reduce.parents == [pid(graph, "map"), *ids]
    assert graph.process(pid(graph, "map")).children == [pid(graph, "reduce"), *ids]
    close(graph, "map", [7])
    assert not graph.process(pid(graph, "reduce")).is_ready
    run(graph, "a", [1])
    run(graph, "b", [2])
    assert graph.process(pid(graph, "reduce")).input == [7, 1, 2]


def test_one_child_at_once_is_add_child() -> None:
    """add_children of one spec builds the same graph as add_child (ids aside)."""
    shapes = []
    for batch in (True, False):
        graph = submit(spec("map"), spec("reduce", "map"), spec("other", "map"))
        assign(graph, "map")
        if batch:
            _add_all(graph, ["x"], insert=True)
        else:
            add(graph, "map", "x", True)
        name = {p: n.nodename for p, n in graph.nodes.items()}
        shapes.append(
            {
                n.nodename: ([name[p] for p in n.parents], [name[c] for c in n.children])
                for n in graph.nodes.values()
            }
        )
    assert shapes[0] == shapes[1]


@pytest.mark.parametrize(
    ("names", "by", "status", "message"),
    [
        (["a", "b", "a"], "", 409, "nodename 'a' is already used"),
        (["a", "reduce"], "", 409, "nodename 'reduce' is already used"),
        (["a", ""], "", 400, "nodename is empty"),
        ([], "", 400, "at least one child"),
        (["a"], OTHER.executorid, 403, "held by another executor"),
    ],
)
def test_add_children_is_all_or_nothing(
    names: list[str], by: str, status: int, message: str
) -> None:
    """A batch with one bad child adds none: the graph and its event list stay as they
    were, and the error names the rule."""
    graph = submit(spec("map"), spec("reduce", "map"))
    assign(graph, "map")
    graph.collect_events()
    before = dict(graph.nodes)
    with pytest.raises(DomainError) as refused:
        _add_all(graph, names, insert=True, by=by)
    assert refused.value.status == status
    assert message in refused.value.message
    assert graph.collect_events() == []
    assert graph.nodes == before
    assert graph.find_by_nodename("a") is None
