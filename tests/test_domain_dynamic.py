"""Dynamic graphs in the domain: add_child (insert and append) and re-running a failed
graph from its failure, without NATS."""

from __future__ import annotations

from eventsourcing.application import project_aggregate

from colonies_es.domain import ChildAdded, Conflict, Forbidden, GraphRerun, ProcessGraph
from tests.test_domain_graph import (
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
