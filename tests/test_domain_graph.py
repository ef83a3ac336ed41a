"""The process graph aggregate against SEMANTICS.md, without NATS."""

from __future__ import annotations

import ast
import itertools
import pathlib
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from eventsourcing.application import project_aggregate
from eventsourcing.persistence import Mapper

import colonies_es.domain
from colonies_es.domain import (
    EXEC_TIMEOUT_ERROR,
    WAIT_TIMEOUT_ERROR,
    AuditedEvent,
    BadRequest,
    Conflict,
    DomainError,
    ExecutionTimedOut,
    Forbidden,
    GraphCancelled,
    GraphEvent,
    GraphRemoved,
    GraphSubmitted,
    NotFound,
    OutputSet,
    ProcessAssigned,
    ProcessClosed,
    ProcessFailed,
    ProcessGraph,
    WaitTimedOut,
    graph_state,
)
from colonies_es.models import Executor, FuncSpec, Workflow, encode, func_spec
from colonies_es.states import ExecutorState, ProcessState
from colonies_es.store.codec import EventMapper, MsgspecTranscoder

WAITING, RUNNING, SUCCESS, FAILED, CANCELLED = (int(s) for s in ProcessState)

COLONY = "dev"
T0 = datetime(2025, 1, 15, 10, 30, tzinfo=UTC)
USER_ID = "a" * 64
ENGINE_ID = "e" * 64


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def counting_ids() -> Iterator[str]:
    """Readable ids: 000...001, 000...002, ..."""
    return (f"{n:064x}" for n in itertools.count(1))


def spec(name: str, *dependencies: str, **options: Any) -> FuncSpec:
    executortype = options.pop("executortype", "python-executor")
    made = func_spec(name, [], COLONY, executortype, **options)
    made.conditions.dependencies.extend(dependencies)
    return made


def workflow(*specs: FuncSpec) -> Workflow:
    return Workflow(colonyname=COLONY, functionspecs=list(specs))


def submit(*specs: FuncSpec, now: datetime = T0) -> ProcessGraph:
    return ProcessGraph.submit(
        COLONY,
        workflow(*specs),
        initiatorid=USER_ID,
        initiatorname="alice",
        now=now,
        actor=USER_ID,
        command=b'{"op":"submit_workflow"}',
        ids=counting_ids(),
    )


def executor(
    name: str = "worker-1",
    executortype: str = "python-executor",
    state: ExecutorState = ExecutorState.APPROVED,
    colonyname: str = COLONY,
) -> Executor:
    number = int.from_bytes(name.encode(), "big") % 16**60
    return Executor(
        executorid=f"{number:064x}",
        executorname=name,
        executortype=executortype,
        colonyname=colonyname,
        state=int(state),
    )


WORKER = executor("worker-1")
OTHER = executor("worker-2")


def pid(graph: ProcessGraph, nodename: str) -> str:
    node = graph.find_by_nodename(nodename)
    assert node is not None, nodename
    return node.processid


def assign(graph: ProcessGraph, nodename: str, by: Executor = WORKER, now: datetime = T0) -> str:
    processid = pid(graph, nodename)
    graph.assign(
        processid,
        by,
        graph.process(processid).attempt,
        now=now,
        actor=by.executorid,
        command=b"claim",
    )
    return processid


def close(
    graph: ProcessGraph,
    nodename: str,
    output: list[Any],
    by: Executor = WORKER,
    now: datetime = T0,
) -> None:
    graph.close(
        pid(graph, nodename), by.executorid, output, now=now, actor=by.executorid, command=b"close"
    )


def fail(
    graph: ProcessGraph,
    nodename: str,
    errors: list[str],
    by: Executor = WORKER,
    now: datetime = T0,
) -> None:
    graph.fail(
        pid(graph, nodename), by.executorid, errors, now=now, actor=by.executorid, command=b"fail"
    )


def run(graph: ProcessGraph, nodename: str, output: list[Any], now: datetime = T0) -> None:
    assign(graph, nodename, now=now)
    close(graph, nodename, output, now=now)


def last_event(graph: ProcessGraph) -> GraphEvent:
    event = graph.pending_events[-1]
    assert isinstance(event, GraphEvent)
    return event


def ready_names(event: GraphEvent) -> list[str]:
    return [ready["nodename"] for ready in event.ready]


def state_of(graph: ProcessGraph, nodename: str) -> int:
    return graph.process(pid(graph, nodename)).state


def refused(
    graph: ProcessGraph, error: type[DomainError], command: Callable[[], object]
) -> DomainError:
    """Run ``command``, expect ``error``, and check that nothing was triggered."""
    version, pending = graph.version, len(graph.pending_events)
    with pytest.raises(error) as caught:
        command()
    assert (graph.version, len(graph.pending_events)) == (version, pending)
    return caught.value


# --- submission ----------------------------------------------------------------------------


def test_submit_records_the_whole_graph_in_one_event_with_roots_ready() -> None:
    graph = submit(spec("gen_nums"), spec("sum_nums", "gen_nums"))

    (event,) = graph.pending_events
    assert isinstance(event, GraphSubmitted)
    gen, total = pid(graph, "gen_nums"), pid(graph, "sum_nums")
    assert graph.id == f"{COLONY}.graph.{graph.processgraphid}"
    assert re.fullmatch(r"[0-9a-f]{64}", graph.processgraphid)
    assert graph.processids == [gen, total]
    assert graph.rootprocessids == [gen]
    assert graph.state == WAITING
    assert graph.submissiontime == T0
    assert [p["processid"] for p in event.processes] == [gen, total]
    assert ready_names(event) == ["gen_nums"]
    assert event.ready[0]["input"] == []
    assert event.ready[0]["readytime"] == T0
    assert graph.process(gen).parents == []
    assert graph.process(gen).children == [total]
    assert graph.process(total).parents == [gen]
    assert graph.process(total).children == []
    assert graph.process(gen).is_ready
    assert not graph.process(total).is_ready


def test_submit_makes_random_ids_by_default() -> None:
    graph = ProcessGraph.submit(
        COLONY,
        workflow(spec("a"), spec("b")),
        initiatorid=USER_ID,
        initiatorname="alice",
        now=T0,
        actor=USER_ID,
        command=b"",
    )
    ids = [graph.processgraphid, *graph.processids]
    assert all(re.fullmatch(r"[0-9a-f]{64}", value) for value in ids)
    assert len(set(ids)) == 3


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (["1" * 64], "ids ran out"),
        (["1" * 64, "P1"], "'P1' is not an id"),
        (["1" * 64, "1" * 64], "ids repeat"),
    ],
)
def test_given_ids_must_be_enough_distinct_ids(ids: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ProcessGraph.submit(
            COLONY,
            workflow(spec("a")),
            initiatorid=USER_ID,
            initiatorname="alice",
            now=T0,
            actor=USER_ID,
            command=b"",
            ids=iter(ids),
        )


def test_nodename_defaults_to_funcname() -> None:
    unnamed = FuncSpec(funcname="f", conditions=spec("x").conditions)
    unnamed.nodename = ""
    graph = submit(unnamed)
    assert graph.find_by_nodename("f") is not None


def test_parents_keep_the_order_of_dependencies() -> None:
    graph = submit(spec("a"), spec("b"), spec("c", "b", "a"))
    assert graph.process(pid(graph, "c")).parents == [pid(graph, "b"), pid(graph, "a")]


def _nameless() -> FuncSpec:
    nameless = spec("x")
    nameless.nodename = nameless.funcname = ""
    return nameless


def _for_colony(name: str) -> FuncSpec:
    other = spec("x")
    other.conditions.colonyname = name
    return other


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        pytest.param([], "the workflow has no functionspecs", id="no specs"),
        pytest.param([_nameless()], "functionspecs[0]: nodename is empty", id="empty nodename"),
        pytest.param(
            [spec("a"), spec("a")],
            "nodename 'a' is used twice (functionspecs[0] and functionspecs[1])",
            id="repeated nodename",
        ),
        pytest.param(
            [spec("a"), spec("b", "nope")],
            "'b' depends on 'nope', which is no node of the workflow",
            id="unknown dependency",
        ),
        pytest.param(
            [spec("a"), spec("b", "a", "a")], "'b' depends on 'a' twice", id="repeated dependency"
        ),
        pytest.param(
            [spec("a", "a")], "the dependencies form a cycle: a -> a", id="self dependency"
        ),
        pytest.param(
            [spec("a", "c"), spec("b", "a"), spec("c", "b"), spec("d")],
            "the dependencies form a cycle: a -> c -> b -> a",
            id="cycle",
        ),
        pytest.param(
            [spec("root"), spec("a", "root", "b"), spec("b", "a")],
            "the dependencies form a cycle: a -> b -> a",
            id="cycle below a root",
        ),
        pytest.param(
            [_for_colony("other")],
            "functionspecs[0] (x): conditions.colonyname 'other' "
            "is not the workflow's colony 'dev'",
            id="spec of another colony",
        ),
        pytest.param(
            [_for_colony("")],
            "conditions.colonyname '' is not the workflow's colony",
            id="spec without colony",
        ),
        pytest.param(
            [spec("x", executortype="")],
            "functionspecs[0] (x): conditions.executortype is empty",
            id="empty executortype",
        ),
        pytest.param(
            [spec("x", executortype="a.b")],
            "conditions.executortype 'a.b' is not valid",
            id="executortype not a subject token",
        ),
    ],
)
def test_submit_refuses_a_bad_workflow(specs: list[FuncSpec], message: str) -> None:
    with pytest.raises(BadRequest) as caught:
        submit(*specs)
    assert caught.value.status == 400
    assert message in str(caught.value)


def test_submit_refuses_a_workflow_for_another_colony_or_a_bad_colony_name() -> None:
    with pytest.raises(BadRequest, match="the workflow is for colony 'dev', not 'prod'"):
        ProcessGraph.submit(
            "prod",
            workflow(spec("a")),
            initiatorid=USER_ID,
            initiatorname="alice",
            now=T0,
            actor=USER_ID,
            command=b"",
        )
    with pytest.raises(BadRequest, match=r"colony name 'a\.b' is not valid"):
        ProcessGraph.submit(
            "a.b",
            Workflow(colonyname="a.b", functionspecs=[spec("a")]),
            initiatorid=USER_ID,
            initiatorname="alice",
            now=T0,
            actor=USER_ID,
            command=b"",
        )


def test_a_long_chain_is_checked_without_recursion() -> None:
    names = [f"n{i}" for i in range(3000)]
    specs = [spec(names[0])] + [spec(n, p) for p, n in itertools.pairwise(names)]
    graph = submit(*specs)
    assert len(graph.processids) == 3000
    specs[0].conditions.dependencies.append(names[-1])
    with pytest.raises(BadRequest, match="cycle"):
        submit(*specs)


def test_submit_copies_the_workflow() -> None:
    original = spec("a")
    original.args.append({"nested": [1]})
    graph = submit(original)
    original.args[0]["nested"].append(2)
    event = graph.pending_events[0]
    assert isinstance(event, GraphSubmitted)
    event.processes[0]["spec"]["args"][0]["nested"].append(3)
    assert graph.process(pid(graph, "a")).spec.args == [{"nested": [1]}]


# --- readiness and data flow ---------------------------------------------------------------


def test_seed_workflow_gen_nums_feeds_sum_nums() -> None:
    graph = submit(spec("gen_nums"), spec("sum_nums", "gen_nums"))
    assign(graph, "gen_nums", now=at(1))
    assert graph.state == RUNNING
    assert graph.starttime == at(1)

    close(graph, "gen_nums", [1, 2], now=at(2))

    event = last_event(graph)
    assert isinstance(event, ProcessClosed)
    assert event.output == [1, 2]
    assert ready_names(event) == ["sum_nums"]
    assert event.ready[0]["input"] == [1, 2]
    assert event.ready[0]["readytime"] == at(2)
    total = graph.process(pid(graph, "sum_nums"))
    assert total.is_ready
    assert total.input == [1, 2]
    assert graph.state == RUNNING

    run(graph, "sum_nums", [3], now=at(3))
    assert graph.state == SUCCESS
    assert graph.endtime == at(3)
    assert graph.process_model(total.processid).output == [3]


@pytest.mark.parametrize("first", ["n2", "n3"])
def test_diamond_input_follows_dependency_order_whoever_closes_first(first: str) -> None:
    graph = submit(spec("n1"), spec("n2", "n1"), spec("n3", "n1"), spec("n4", "n2", "n3"))
    run(graph, "n1", ["x"])
    assert ready_names(last_event(graph)) == ["n2", "n3"]
    assert [r["input"] for r in last_event(graph).ready] == [["x"], ["x"]]
    outputs: dict[str, list[Any]] = {"n2": [2, "two"], "n3": [3]}
    second = "n3" if first == "n2" else "n2"

    run(graph, first, outputs[first])
    assert last_event(graph).ready == []
    assert not graph.process(pid(graph, "n4")).is_ready

    run(graph, second, outputs[second])
    event = last_event(graph)
    assert isinstance(event, ProcessClosed)
    assert ready_names(event) == ["n4"]
    assert event.ready[0]["input"] == [2, "two", 3]
    assert graph.process(pid(graph, "n4")).input == [2, "two", 3]


def test_ready_processes_are_offered_by_priority_then_readiness() -> None:
    graph = submit(
        spec("low", priority=1),
        spec("high", priority=5),
        spec("first"),
        spec("later", "first", priority=1),
    )
    run(graph, "first", [], now=at(10))
    assert [work["nodename"] for work in graph.ready_processes()] == ["high", "low", "later"]


def test_a_process_waits_for_all_its_parents() -> None:
    graph = submit(spec("a"), spec("b"), spec("c", "a", "b"))
    run(graph, "a", [1])
    assert not graph.process(pid(graph, "c")).is_ready
    assert graph.process_model(pid(graph, "c")).waitforparents
    run(graph, "b", [2])
    assert graph.process(pid(graph, "c")).is_ready
    assert not graph.process_model(pid(graph, "c")).waitforparents


# --- assignment ----------------------------------------------------------------------------


def test_assign_records_executor_start_attempt_and_deadline() -> None:
    graph = submit(spec("a", maxexectime=30))
    processid = assign(graph, "a", now=at(5))

    event = last_event(graph)
    assert isinstance(event, ProcessAssigned)
    assert (event.processid, event.executorid, event.attempt) == (processid, WORKER.executorid, 1)
    assert event.execdeadline == at(35)
    assert event.graphstate == RUNNING
    node = graph.process(processid)
    assert (node.state, node.assignedexecutorid, node.starttime) == (
        RUNNING,
        WORKER.executorid,
        at(5),
    )
    assert node.attempts[0].executorid == WORKER.executorid
    assert node.attempts[0].outcome == "running"


def test_a_duplicate_claim_is_a_conflict() -> None:
    graph = submit(spec("a"))
    assign(graph, "a")
    error = refused(
        graph,
        Conflict,
        lambda: graph.assign(pid(graph, "a"), OTHER, 1, now=T0, actor="", command=b""),
    )
    assert error.status == 409
    assert "cannot be taken: it is RUNNING" in str(error)


def test_a_stale_claim_for_an_earlier_attempt_is_a_conflict() -> None:
    graph = submit(spec("a", maxretries=2))
    assign(graph, "a")
    fail(graph, "a", ["boom"])
    assert graph.process(pid(graph, "a")).attempt == 2
    error = refused(
        graph,
        Conflict,
        lambda: graph.assign(pid(graph, "a"), WORKER, 1, now=T0, actor="", command=b""),
    )
    assert "attempt 1" in str(error)
    assert "at attempt 2" in str(error)


def test_a_process_whose_parents_have_not_succeeded_cannot_be_taken() -> None:
    graph = submit(spec("a"), spec("b", "a"))
    refused(
        graph,
        Conflict,
        lambda: graph.assign(pid(graph, "b"), WORKER, 1, now=T0, actor="", command=b""),
    )


@pytest.mark.parametrize(
    "claimer",
    [
        executor("w", executortype="container-executor"),
        executor("w", state=ExecutorState.PENDING),
        executor("w", state=ExecutorState.REJECTED),
        executor("w", colonyname="elsewhere"),
        executor("not-listed"),
    ],
    ids=["other type", "pending", "rejected", "other colony", "not in executornames"],
)
def test_only_an_eligible_executor_may_take_a_process(claimer: Executor) -> None:
    graph = submit(spec("a", executorname="w"))
    error = refused(
        graph,
        Forbidden,
        lambda: graph.assign(pid(graph, "a"), claimer, 1, now=T0, actor="", command=b""),
    )
    assert error.status == 403


def test_executornames_admit_the_named_executor() -> None:
    graph = submit(spec("a", executorname="worker-2"))
    assign(graph, "a", by=OTHER)
    assert graph.process(pid(graph, "a")).assignedexecutorid == OTHER.executorid


# --- completion ----------------------------------------------------------------------------


def test_close_by_another_executor_is_forbidden() -> None:
    graph = submit(spec("a"))
    assign(graph, "a")
    error = refused(graph, Forbidden, lambda: close(graph, "a", [1], by=OTHER))
    assert "held by another executor" in str(error)
    refused(graph, Forbidden, lambda: fail(graph, "a", ["x"], by=OTHER))
    refused(
        graph,
        Forbidden,
        lambda: graph.set_output(
            pid(graph, "a"), OTHER.executorid, [1], now=T0, actor="", command=b""
        ),
    )


def test_close_of_a_waiting_process_is_forbidden() -> None:
    graph = submit(spec("a"))
    refused(graph, Forbidden, lambda: close(graph, "a", [1]))


def test_close_after_fail_is_forbidden() -> None:
    graph = submit(spec("a"))
    assign(graph, "a")
    fail(graph, "a", ["boom"])
    error = refused(graph, Forbidden, lambda: close(graph, "a", [1]))
    assert "is FAILED" in str(error)


def test_close_after_cancel_is_forbidden() -> None:
    graph = submit(spec("a"))
    assign(graph, "a")
    graph.cancel(now=T0, actor=USER_ID, command=b"")
    error = refused(graph, Forbidden, lambda: close(graph, "a", [1]))
    assert "is CANCELLED" in str(error)


def test_close_twice_is_forbidden() -> None:
    graph = submit(spec("a"))
    run(graph, "a", [1])
    refused(graph, Forbidden, lambda: close(graph, "a", [2]))
    assert graph.process(pid(graph, "a")).output == [1]


def test_set_output_then_close_without_output_keeps_it() -> None:
    graph = submit(spec("a"), spec("b", "a"))
    processid = assign(graph, "a")
    graph.set_output(
        processid, WORKER.executorid, [7], now=T0, actor=WORKER.executorid, command=b""
    )
    event = last_event(graph)
    assert isinstance(event, OutputSet)
    assert event.output == [7]
    assert graph.process(processid).state == RUNNING

    close(graph, "a", [])
    closed = last_event(graph)
    assert isinstance(closed, ProcessClosed)
    assert closed.output == [7]
    assert closed.ready[0]["input"] == [7]


def test_close_output_replaces_the_output_set_before() -> None:
    graph = submit(spec("a"))
    processid = assign(graph, "a")
    graph.set_output(processid, WORKER.executorid, [7], now=T0, actor="", command=b"")
    close(graph, "a", [8])
    assert graph.process(processid).output == [8]


def test_outputs_are_copied_in() -> None:
    graph = submit(spec("a"))
    output: list[Any] = [{"k": [1]}]
    run(graph, "a", output)
    output[0]["k"].append(2)
    assert graph.process(pid(graph, "a")).output == [{"k": [1]}]
    closed = last_event(graph)
    assert isinstance(closed, ProcessClosed)
    assert closed.output == [{"k": [1]}]


# --- retries -------------------------------------------------------------------------------


def test_fails_twice_then_succeeds_with_three_retries() -> None:
    graph = submit(spec("a", maxretries=3), spec("b", "a"))
    processid = pid(graph, "a")
    for attempt, error in enumerate(["first failure", "second failure"], start=1):
        assign(graph, "a", now=at(attempt))
        fail(graph, "a", [error], now=at(attempt + 0.5))
        event = last_event(graph)
        assert isinstance(event, ProcessFailed)
        assert event.retried
        assert event.attempt == attempt
        assert ready_names(event) == ["a"]
        assert event.ready[0]["attempt"] == attempt + 1
        assert event.cancelled == []
        assert graph.process(processid).state == WAITING

    run(graph, "a", [1], now=at(3))

    node = graph.process(processid)
    assert node.state == SUCCESS
    assert node.retries == 2
    assert node.errors == ["first failure", "second failure"]
    assert [(a.attempt, a.outcome, a.errors) for a in node.attempts] == [
        (1, "failed", ["first failure"]),
        (2, "failed", ["second failure"]),
        (3, "success", []),
    ]
    assert graph.process(pid(graph, "b")).is_ready
    assert graph.process_model(processid).retries == 2


def test_with_one_retry_the_second_failure_fails_the_process_and_the_graph() -> None:
    graph = submit(spec("a", maxretries=1))
    assign(graph, "a")
    fail(graph, "a", ["first"])
    assign(graph, "a")
    fail(graph, "a", ["second"])

    event = last_event(graph)
    assert isinstance(event, ProcessFailed)
    assert not event.retried
    assert event.graphstate == FAILED
    node = graph.process(pid(graph, "a"))
    assert node.state == FAILED
    assert node.errors == ["first", "second"]
    assert node.retries == 1
    assert graph.state == FAILED


@pytest.mark.parametrize("maxretries", [0, -1])
def test_no_retry_when_maxretries_is_zero_or_minus_one(maxretries: int) -> None:
    graph = submit(spec("a", maxretries=maxretries))
    assign(graph, "a")
    fail(graph, "a", ["boom"])
    assert state_of(graph, "a") == FAILED
    assert graph.state == FAILED


def test_a_retried_process_keeps_its_input() -> None:
    graph = submit(spec("a"), spec("b", "a", maxretries=1))
    run(graph, "a", [4])
    assign(graph, "b")
    fail(graph, "b", ["x"])
    assert last_event(graph).ready[0]["input"] == [4]
    assert graph.process(pid(graph, "b")).input == [4]


# --- failure of the graph ------------------------------------------------------------------


def test_a_failure_cancels_waiting_processes_and_keeps_successes() -> None:
    graph = submit(
        spec("ok"),
        spec("bad"),
        spec("busy"),
        spec("after_ok", "ok"),
        spec("after_bad", "bad"),
        spec("after_busy", "busy"),
    )
    run(graph, "ok", ["kept"])
    assign(graph, "busy", by=OTHER)
    assign(graph, "bad")

    fail(graph, "bad", ["it broke"], now=at(9))

    event = last_event(graph)
    assert isinstance(event, ProcessFailed)
    assert event.graphstate == FAILED
    cancelled = [pid(graph, n) for n in ("after_ok", "after_bad", "after_busy")]
    assert event.cancelled == cancelled
    assert "'bad'" in event.cancelreason
    assert pid(graph, "bad") in event.cancelreason
    for processid in cancelled:
        node = graph.process(processid)
        assert node.state == CANCELLED
        assert node.endtime == at(9)
        assert node.errors == [event.cancelreason]
    assert state_of(graph, "ok") == SUCCESS
    assert graph.process(pid(graph, "ok")).output == ["kept"]
    assert state_of(graph, "busy") == RUNNING
    assert graph.state == FAILED
    assert graph.endtime == at(9)


def test_a_process_running_when_the_graph_failed_may_still_close_but_nothing_starts() -> None:
    graph = submit(spec("bad"), spec("busy"), spec("next", "busy"))
    assign(graph, "busy", by=OTHER)
    assign(graph, "bad")
    fail(graph, "bad", ["x"])

    close(graph, "busy", [5], by=OTHER)

    event = last_event(graph)
    assert isinstance(event, ProcessClosed)
    assert event.ready == []
    assert event.graphstate == FAILED
    assert state_of(graph, "busy") == SUCCESS
    assert graph.process(pid(graph, "busy")).output == [5]
    assert state_of(graph, "next") == CANCELLED
    assert graph.ready_processes() == []


def test_a_failure_in_a_failed_graph_is_not_retried() -> None:
    graph = submit(spec("bad"), spec("busy", maxretries=3))
    assign(graph, "busy", by=OTHER)
    assign(graph, "bad")
    fail(graph, "bad", ["x"])
    fail(graph, "busy", ["y"], by=OTHER)
    event = last_event(graph)
    assert isinstance(event, ProcessFailed)
    assert not event.retried
    assert event.cancelled == []
    assert event.cancelreason == ""
    assert state_of(graph, "busy") == FAILED


# --- timeouts ------------------------------------------------------------------------------


def test_exec_timeout_releases_the_process_for_a_retry() -> None:
    graph = submit(spec("a", maxexectime=10, maxretries=1))
    processid = assign(graph, "a", now=at(0))

    graph.expire_exec(processid, 1, now=at(10), actor=ENGINE_ID, command=b"")

    event = last_event(graph)
    assert isinstance(event, ExecutionTimedOut)
    assert event.actor == ENGINE_ID
    assert event.retried
    assert event.errors == [EXEC_TIMEOUT_ERROR]
    assert event.executorid == WORKER.executorid
    node = graph.process(processid)
    assert node.state == WAITING
    assert node.attempt == 2
    assert node.assignedexecutorid == ""
    assert node.attempts[0].outcome == "timed out"
    assert node.errors == [EXEC_TIMEOUT_ERROR]
    error = refused(graph, Forbidden, lambda: close(graph, "a", [1]))
    assert error.status == 403


def test_a_report_for_an_attempt_that_timed_out_cannot_end_the_next_one() -> None:
    """The same executor may take the retry of an attempt it overran: its late close or
    fail for the old attempt is refused (and writes nothing), its report for the current
    attempt is taken, and a report naming no attempt (ColonyOS clients) still works."""
    graph = submit(spec("a", maxexectime=10, maxretries=2))
    processid = assign(graph, "a", now=at(0))
    graph.expire_exec(processid, 1, now=at(10), actor=ENGINE_ID, command=b"")
    assign(graph, "a", now=at(11))
    me = WORKER.executorid

    late_close = refused(
        graph,
        Forbidden,
        lambda: graph.close(processid, me, [1], now=at(12), actor=me, command=b"", attempt=1),
    )
    assert "attempt 2" in late_close.message
    assert late_close.message.endswith("the report for attempt 1 came too late")
    refused(
        graph,
        Forbidden,
        lambda: graph.fail(processid, me, ["x"], now=at(12), actor=me, command=b"", attempt=1),
    )
    refused(
        graph,
        Forbidden,
        lambda: graph.set_output(processid, me, [1], now=at(12), actor=me, command=b"", attempt=1),
    )

    graph.close(processid, me, [2], now=at(13), actor=me, command=b"", attempt=2)
    assert state_of(graph, "a") == SUCCESS
    assert graph.process(processid).output == [2]


def test_a_report_naming_no_attempt_ends_the_attempt_the_executor_holds() -> None:
    graph = submit(spec("a", maxexectime=10, maxretries=2))
    processid = assign(graph, "a", now=at(0))
    graph.expire_exec(processid, 1, now=at(10), actor=ENGINE_ID, command=b"")
    assign(graph, "a", now=at(11))
    close(graph, "a", [3])
    assert state_of(graph, "a") == SUCCESS


def test_exec_timeout_without_retries_fails_the_process() -> None:
    graph = submit(spec("a", maxexectime=10), spec("b", "a"))
    processid = assign(graph, "a", now=at(0))
    graph.expire_exec(processid, 1, now=at(11), actor=ENGINE_ID, command=b"")
    assert state_of(graph, "a") == FAILED
    assert graph.process(processid).errors == [EXEC_TIMEOUT_ERROR]
    assert state_of(graph, "b") == CANCELLED
    assert graph.state == FAILED


def test_a_stale_or_early_exec_timer_is_a_conflict() -> None:
    graph = submit(spec("a", maxexectime=10, maxretries=1))
    processid = assign(graph, "a", now=at(0))
    refused(
        graph,
        Conflict,
        lambda: graph.expire_exec(processid, 1, now=at(9), actor=ENGINE_ID, command=b""),
    )
    refused(
        graph,
        Conflict,
        lambda: graph.expire_exec(processid, 2, now=at(10), actor=ENGINE_ID, command=b""),
    )
    close(graph, "a", [1])
    refused(
        graph,
        Conflict,
        lambda: graph.expire_exec(processid, 1, now=at(10), actor=ENGINE_ID, command=b""),
    )


def test_wait_timeout_counts_from_readiness_and_fails_the_graph() -> None:
    graph = submit(spec("a"), spec("b", "a", maxwaittime=5), spec("c", "b"))
    run(graph, "a", [], now=at(100))  # b became ready at 100, long after submission
    b = pid(graph, "b")
    assert graph.process(b).waitdeadline == at(105)
    refused(
        graph, Conflict, lambda: graph.expire_wait(b, now=at(104), actor=ENGINE_ID, command=b"")
    )

    graph.expire_wait(b, now=at(105), actor=ENGINE_ID, command=b"")

    event = last_event(graph)
    assert isinstance(event, WaitTimedOut)
    assert event.errors == [WAIT_TIMEOUT_ERROR]
    assert event.cancelled == [pid(graph, "c")]
    assert state_of(graph, "b") == FAILED
    assert graph.process(b).errors == [WAIT_TIMEOUT_ERROR]
    assert state_of(graph, "c") == CANCELLED
    assert graph.state == FAILED


def test_a_wait_timer_for_a_taken_process_is_a_conflict() -> None:
    graph = submit(spec("a", maxwaittime=5))
    processid = assign(graph, "a", now=at(1))
    refused(
        graph,
        Conflict,
        lambda: graph.expire_wait(processid, now=at(6), actor=ENGINE_ID, command=b""),
    )


def test_deadlines_lists_the_timers_to_arm() -> None:
    graph = submit(spec("a", maxwaittime=5), spec("b", maxexectime=7), spec("c"))
    assign(graph, "b", now=at(1))
    assert graph.deadlines() == [
        {"processid": pid(graph, "a"), "attempt": 1, "kind": "wait", "at": at(5)},
        {"processid": pid(graph, "b"), "attempt": 1, "kind": "exec", "at": at(8)},
    ]


# --- cancel and remove ---------------------------------------------------------------------


def test_cancel_cancels_waiting_and_running_processes() -> None:
    graph = submit(spec("done"), spec("busy"), spec("waiting", "busy"))
    run(graph, "done", [1])
    assign(graph, "busy")

    graph.cancel(now=at(3), actor=USER_ID, command=b"cancel")

    event = last_event(graph)
    assert isinstance(event, GraphCancelled)
    assert event.cancelled == [pid(graph, "busy"), pid(graph, "waiting")]
    assert event.graphstate == CANCELLED
    assert state_of(graph, "done") == SUCCESS
    assert state_of(graph, "busy") == CANCELLED
    assert graph.process(pid(graph, "busy")).attempts[-1].outcome == "cancelled"
    assert state_of(graph, "waiting") == CANCELLED
    assert graph.state == CANCELLED
    assert graph.endtime == at(3)
    assert graph.ready_processes() == []


def test_cancel_of_an_ended_graph_is_a_conflict() -> None:
    graph = submit(spec("a"))
    graph.cancel(now=T0, actor=USER_ID, command=b"")
    error = refused(graph, Conflict, lambda: graph.cancel(now=T0, actor=USER_ID, command=b""))
    assert "already ended: it is CANCELLED" in str(error)
    done = submit(spec("a"))
    run(done, "a", [])
    refused(done, Conflict, lambda: done.cancel(now=T0, actor=USER_ID, command=b""))


def test_remove_is_refused_while_running() -> None:
    graph = submit(spec("a"))
    assign(graph, "a")
    error = refused(graph, Conflict, lambda: graph.remove(now=T0, actor=USER_ID, command=b""))
    assert error.status == 409


def test_remove_records_the_removal_and_later_commands_are_not_found() -> None:
    graph = submit(spec("a", maxwaittime=5), spec("b", "a"))
    graph.remove(now=at(1), actor=USER_ID, command=b"remove")

    assert isinstance(last_event(graph), GraphRemoved)
    assert graph.removed
    assert graph.ready_processes() == []
    assert graph.deadlines() == []
    assert graph.to_model().processids == graph.processids  # history stays readable
    a = pid(graph, "a")
    for command in (
        lambda: graph.assign(a, WORKER, 1, now=T0, actor="", command=b""),
        lambda: graph.cancel(now=T0, actor="", command=b""),
        lambda: graph.remove(now=T0, actor="", command=b""),
        lambda: graph.expire_wait(a, now=at(9), actor="", command=b""),
    ):
        assert refused(graph, NotFound, command).status == 404


def test_remove_of_a_finished_graph() -> None:
    graph = submit(spec("a"))
    run(graph, "a", [])
    graph.remove(now=T0, actor=USER_ID, command=b"")
    assert graph.removed
    assert graph.state == SUCCESS


# --- graph state ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ([WAITING, WAITING], WAITING),
        ([WAITING, RUNNING], RUNNING),
        ([WAITING, SUCCESS], RUNNING),
        ([SUCCESS, SUCCESS], SUCCESS),
        ([SUCCESS, CANCELLED, RUNNING], CANCELLED),
        ([CANCELLED, FAILED, SUCCESS], FAILED),
        ([FAILED, RUNNING], FAILED),
    ],
)
def test_graph_state_rule(states: list[int], expected: int) -> None:
    assert graph_state(states) == expected


def test_a_retry_of_the_only_started_process_puts_the_graph_back_to_waiting() -> None:
    graph = submit(spec("a", maxretries=1), spec("b"))
    assign(graph, "a")
    fail(graph, "a", ["x"])
    assert graph.state == WAITING


# --- queries -------------------------------------------------------------------------------


def test_process_model_fills_every_client_attribute() -> None:
    graph = submit(
        spec("gen", priority=2, maxwaittime=60, maxexectime=30),
        spec("sum", "gen"),
        now=at(0),
    )
    gen = assign(graph, "gen", now=at(1))
    model = graph.process_model(gen)
    assert model.processid == gen
    assert (model.initiatorid, model.initiatorname) == (USER_ID, "alice")
    assert (model.assignedexecutorid, model.isassigned) == (WORKER.executorid, True)
    assert model.state == RUNNING
    assert model.prioritytime == (int(at(0).timestamp()) * 10**9 - 2 * 24 * 3600 * 10**9)
    assert (model.submissiontime, model.starttime, model.endtime) == (at(0), at(1), None)
    assert (model.waitdeadline, model.execdeadline) == (at(60), at(31))
    assert model.retries == 0
    assert model.spec.nodename == "gen"
    assert model.spec.priority == 2
    assert (model.parents, model.children) == ([], [pid(graph, "sum")])
    assert not model.waitforparents
    assert model.processgraphid == graph.processgraphid
    assert (model.input, model.output, model.errors) == ([], [], [])
    child = graph.process_model(pid(graph, "sum"))
    assert child.waitforparents
    assert not child.isassigned
    assert child.parents == [gen]


def test_process_model_is_a_copy() -> None:
    graph = submit(spec("a"))
    model = graph.process_model(pid(graph, "a"))
    model.spec.args.append(1)
    model.parents.append("x")
    assert graph.process(pid(graph, "a")).spec.args == []


def test_a_shared_process_model_encodes_as_the_copy() -> None:
    """``shared=True`` (replies, the projector's rows) gives the same model, holding the
    aggregate's own spec and data instead of copies."""
    graph = submit(spec("gen"), spec("sum", "gen"), now=at(0))
    run(graph, "gen", [1, {"two": [2]}], now=at(1))
    total = assign(graph, "sum", now=at(2))
    for processid in (pid(graph, "gen"), total):
        copied = graph.process_model(processid)
        shared = graph.process_model(processid, shared=True)
        assert encode(shared) == encode(copied)
        node = graph.process(processid)
        assert (shared.spec, shared.input) == (node.spec, node.input)
        assert shared.spec is node.spec
        assert shared.input is node.input
        assert copied.spec is not node.spec
        assert copied.input is not node.input


def test_to_model_describes_the_graph() -> None:
    graph = submit(spec("a"), spec("b", "a"), now=at(0))
    run(graph, "a", [], now=at(1))
    run(graph, "b", [], now=at(2))
    model = graph.to_model()
    assert model.processgraphid == graph.processgraphid
    assert (model.initiatorid, model.initiatorname, model.colonyname) == (USER_ID, "alice", COLONY)
    assert model.rootprocessids == [pid(graph, "a")]
    assert model.processids == graph.processids
    assert model.state == SUCCESS
    assert (model.submissiontime, model.starttime, model.endtime) == (at(0), at(1), at(2))


def test_unknown_process_is_not_found() -> None:
    graph = submit(spec("a"))
    with pytest.raises(NotFound):
        graph.process("0" * 64)
    assert graph.find_by_nodename("nope") is None
    refused(
        graph,
        NotFound,
        lambda: graph.close("0" * 64, WORKER.executorid, [], now=T0, actor="", command=b""),
    )


def test_now_must_be_timezone_aware() -> None:
    graph = submit(spec("a"))
    with pytest.raises(ValueError, match="timezone-aware"):
        graph.cancel(now=datetime(2025, 1, 1), actor="", command=b"")


# --- events: one per command, audited, replayable, storable --------------------------------


def _scenario() -> ProcessGraph:
    """A graph that went through every kind of event."""
    graph = submit(
        spec("n1", maxexectime=5, maxretries=2),
        spec("n2", "n1", maxwaittime=3),
        spec("n3", "n1"),
        spec("n4", "n2", "n3"),
    )
    n1 = assign(graph, "n1", now=at(1))
    graph.expire_exec(n1, 1, now=at(6), actor=ENGINE_ID, command=b"")
    assign(graph, "n1", now=at(7))
    fail(graph, "n1", ["flaky"], now=at(8))
    assign(graph, "n1", now=at(9))
    graph.set_output(
        n1, WORKER.executorid, [{"a": 1}], now=at(9), actor=WORKER.executorid, command=b"s"
    )
    close(graph, "n1", [], now=at(10))
    assign(graph, "n3", now=at(11))
    graph.expire_wait(pid(graph, "n2"), now=at(13), actor=ENGINE_ID, command=b"")
    close(graph, "n3", [2.5, None, b"raw", at(0)], now=at(14))
    graph.remove(now=at(15), actor=USER_ID, command=b"remove")
    return graph


def test_each_command_triggers_exactly_one_event() -> None:
    graph = submit(spec("a"), spec("b", "a"))
    commands: list[Callable[[], object]] = [
        lambda: assign(graph, "a"),
        lambda: graph.set_output(
            pid(graph, "a"), WORKER.executorid, [1], now=T0, actor="", command=b""
        ),
        lambda: close(graph, "a", [1]),
        lambda: graph.cancel(now=T0, actor=USER_ID, command=b""),
        lambda: graph.remove(now=T0, actor=USER_ID, command=b""),
    ]
    for command in commands:
        before = len(graph.pending_events)
        command()
        assert len(graph.pending_events) == before + 1
        assert graph.version == len(graph.pending_events)


def test_every_event_carries_actor_and_command() -> None:
    graph = _scenario()
    events = graph.collect_events()
    assert [type(e).__name__ for e in events] == [
        "GraphSubmitted",
        "ProcessAssigned",
        "ExecutionTimedOut",
        "ProcessAssigned",
        "ProcessFailed",
        "ProcessAssigned",
        "OutputSet",
        "ProcessClosed",
        "ProcessAssigned",
        "WaitTimedOut",
        "ProcessClosed",
        "GraphRemoved",
    ]
    audit = [(e.actor, e.command) for e in events if isinstance(e, AuditedEvent)]
    assert audit == [
        (USER_ID, b'{"op":"submit_workflow"}'),
        (WORKER.executorid, b"claim"),
        (ENGINE_ID, b""),
        (WORKER.executorid, b"claim"),
        (WORKER.executorid, b"fail"),
        (WORKER.executorid, b"claim"),
        (WORKER.executorid, b"s"),
        (WORKER.executorid, b"close"),
        (WORKER.executorid, b"claim"),
        (ENGINE_ID, b""),
        (WORKER.executorid, b"close"),
        (USER_ID, b"remove"),
    ]
    assert all(isinstance(e, GraphEvent) for e in events)


def test_replaying_the_events_rebuilds_an_equal_graph() -> None:
    graph = _scenario()
    events = graph.collect_events()
    rebuilt = project_aggregate(None, events)
    assert rebuilt == graph
    assert isinstance(rebuilt, ProcessGraph)
    assert rebuilt.process_model(pid(graph, "n1")) == graph.process_model(pid(graph, "n1"))


def test_replaying_the_first_events_gives_the_state_at_that_time() -> None:
    graph = submit(spec("a"), spec("b", "a"))
    run(graph, "a", [1])
    events = graph.collect_events()
    halfway = project_aggregate(None, events[:2])
    assert isinstance(halfway, ProcessGraph)
    assert halfway.state == RUNNING
    assert halfway.version == 2
    assert halfway.process(pid(graph, "a")).state == RUNNING


def test_events_round_trip_through_the_store_transcoder() -> None:
    transcoder = MsgspecTranscoder()
    for event in _scenario().collect_events():
        state = dict(event.__dict__)
        assert transcoder.decode(transcoder.encode(state)) == state


def test_replaying_stored_events_rebuilds_an_equal_graph() -> None:
    graph = _scenario()
    mapper: Mapper[str] = Mapper(transcoder=MsgspecTranscoder())
    stored = [mapper.to_stored_event(event) for event in graph.collect_events()]
    assert [s.originator_id for s in stored] == [graph.id] * len(stored)
    reloaded = [mapper.to_domain_event(s) for s in stored]
    assert project_aggregate(None, reloaded) == graph


def test_event_fields_are_plain_data() -> None:
    plain = (str, int, float, bool, type(None), bytes, datetime)

    def check(value: object, where: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                assert isinstance(key, str), where
                check(item, f"{where}.{key}")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                check(item, f"{where}[{index}]")
        else:
            assert isinstance(value, plain), f"{where} is a {type(value).__name__}"
            if isinstance(value, datetime):  # what plain_state promises the store
                assert value.tzinfo is UTC, f"{where} is not in UTC: {value!r}"

    for event in _scenario().collect_events():
        assert event.plain_state
        check(event.__dict__, type(event).__name__)


def test_the_store_writes_plain_events_as_the_transcoder_does_without_walking_them() -> None:
    careful: Mapper[str] = Mapper(transcoder=MsgspecTranscoder())
    direct = EventMapper(transcoder=MsgspecTranscoder())
    graph = _scenario()
    events = graph.collect_events()
    again = submit(spec("a"), spec("b", "a"))
    east = timezone(timedelta(hours=2))  # another offset: the event holds the same moment in UTC
    again.cancel(now=at(3).astimezone(east), actor=USER_ID, command=b"cancel")
    events += again.collect_events()
    assert events[-1].timestamp == at(3)
    assert events[-1].timestamp.tzinfo is UTC
    for event in events:
        assert direct.to_stored_event(event) == careful.to_stored_event(event), type(event)


def test_events_do_not_share_data_with_the_graph() -> None:
    graph = submit(spec("a"), spec("b", "a"))
    run(graph, "a", [[1]])
    closed = last_event(graph)
    assert isinstance(closed, ProcessClosed)
    graph.process(pid(graph, "b")).input[0].append(2)
    graph.process(pid(graph, "a")).output[0].append(3)
    assert closed.ready[0]["input"] == [[1]]
    assert closed.output == [[1]]


# --- purity --------------------------------------------------------------------------------


def test_the_domain_imports_nothing_from_nats_or_the_store() -> None:
    package = pathlib.Path(colonies_es.domain.__file__).parent
    for module in package.glob("*.py"):
        tree = ast.parse(module.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not name.startswith(("nats", "colonies_es.store", "colonies_es.client")), (
                    f"{module.name} imports {name}"
                )


def test_a_copy_decides_without_touching_the_original() -> None:
    """The engine decides on a copy: the original keeps its state and version, and the
    copy equals a deep copy of the original before the decision."""
    graph = submit(spec("gen"), spec("sum", "gen"))
    graph.collect_events()
    before = graph.to_model()
    draft = graph.copy()
    assert draft.to_model() == before
    assert draft.pending_events == []
    draft.assign(pid(draft, "gen"), WORKER, 1, now=at(1), actor=WORKER.executorid, command=b"")
    draft.close(pid(draft, "gen"), WORKER.executorid, [1, 2], now=at(2), actor="", command=b"")
    assert graph.to_model() == before
    assert graph.version == 1
    assert draft.version == 3
    assert draft.process(pid(draft, "sum")).input == [1, 2]
    assert graph.process(pid(graph, "sum")).input == []
    assert len(graph.pending_events) == 0
