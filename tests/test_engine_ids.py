"""Process ids that tell their graph (issue 14): no per-process index for ended graphs.

A graph's id is ``p + H(p)`` and each of its processes' ids ``p + r``, so the engine
finds the graph of a process from the id alone: in memory for live work, else from the
graph's own subject in the log. A crafted id (a real graph's prefix with another suffix,
an unknown prefix) finds nothing and writes nothing. Graphs with *legacy* ids (random,
as logs written before, or tests, have them) are still found through a map of just
those processes, also after a restart from a checkpoint.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from colonies_es import Workflow, crypto, func_spec
from colonies_es.client import ColoniesError
from colonies_es.domain import (
    Colony,
    ProcessGraph,
    colony_aggregate_id,
    derives_graph,
    graph_id_of_process,
    new_graph_id,
    new_id,
    new_process_id,
)
from colonies_es.models import Executor
from colonies_es.states import ProcessState
from tests.eventlog import nothing_written
from tests.processes import wait_until
from tests.stack import ColonyHandle, Stack, engine_app
from tests.test_domain_graph import executor

NOW = datetime(2026, 12, 6, tzinfo=UTC)
AUDIT: dict[str, Any] = {"now": NOW, "actor": "tester", "command": b""}


def workflow(colonyname: str, steps: int = 1, kind: str = "python-executor") -> Workflow:
    specs = [func_spec(f"step{n}", [], colonyname, kind) for n in range(steps)]
    for before, after in itertools.pairwise(specs):
        after.conditions.dependencies.append(before.nodename)
    return Workflow(colonyname=colonyname, functionspecs=specs)


# --- the ids themselves ---------------------------------------------------------------------


def test_a_new_graph_and_its_processes_have_ids_that_name_the_graph() -> None:
    graph = ProcessGraph.submit("c", workflow("c", 3), initiatorid="", initiatorname="", **AUDIT)
    assert derives_graph(graph.processgraphid)
    for processid in graph.nodes:
        assert graph_id_of_process(processid) == graph.processgraphid
    assert len(set(graph.nodes)) == 3


def test_a_rerun_and_a_child_get_ids_of_their_own_graph() -> None:
    graph = ProcessGraph.submit("c", workflow("c", 2), initiatorid="", initiatorname="", **AUDIT)
    executor = _executor()
    first = graph.rootprocessids[0]
    graph.assign(first, executor, 1, **AUDIT)
    child = graph.add_child(
        first, executor.executorid, func_spec("more", [], "c", "k"), "more", insert=False, **AUDIT
    )
    assert graph_id_of_process(child) == graph.processgraphid
    graph.fail(first, executor.executorid, ["no"], **AUDIT)
    rerun = ProcessGraph.rerun_from_failed(graph, initiatorid="", initiatorname="", **AUDIT)
    assert rerun.processgraphid != graph.processgraphid
    assert {graph_id_of_process(p) for p in rerun.nodes} == {rerun.processgraphid}


def test_crafted_and_malformed_ids_derive_to_no_real_graph() -> None:
    processgraphid = new_graph_id()
    assert not derives_graph(new_id())  # a random (legacy) id: 2**-128 odds
    assert not derives_graph(processgraphid[:32] + "0" * 32)
    crafted = processgraphid[:32] + os.urandom(16).hex()
    assert graph_id_of_process(crafted) == processgraphid  # the graph must still hold it
    assert graph_id_of_process("xyz") is None
    assert graph_id_of_process(processgraphid.upper()) is None
    assert new_process_id(processgraphid)[:32] == processgraphid[:32]


def test_a_child_id_that_repeats_is_refused() -> None:
    graph = ProcessGraph.submit("c", workflow("c"), initiatorid="", initiatorname="", **AUDIT)
    executor = _executor()
    [root] = graph.nodes
    graph.assign(root, executor, 1, **AUDIT)
    with pytest.raises(Exception, match="already in process graph"):
        graph.add_child(
            root,
            executor.executorid,
            func_spec("again", [], "c", "k"),
            "again",
            insert=False,
            processid=root,
            **AUDIT,
        )


def _executor() -> Executor:
    return executor(colonyname="c")


# --- on a real stack ------------------------------------------------------------------------


def refused(status: int, call: Callable[[], object]) -> str:
    """The message of the ColoniesError ``call`` raises, which must have ``status``."""
    with pytest.raises(ColoniesError) as raised:
        call()
    assert raised.value.status == status, raised.value
    return str(raised.value)


def test_a_crafted_process_id_finds_nothing_and_writes_nothing(stack: Stack) -> None:
    colony = stack.new_colony()
    executor = stack.new_executor(colony)
    owner = colony.owner_prvkey
    client = stack.client
    ended = client.submit_func_spec(workflow(colony.name).functionspecs[0], owner)
    assert graph_id_of_process(ended.processid) == ended.processgraphid
    process = client.assign(colony.name, 10, executor)
    client.close(process.processid, [1], executor)
    live = client.submit_func_spec(workflow(colony.name).functionspecs[0], owner)
    wait_until(
        lambda: "ended graphs left memory" in stack.engine.log(), 30, "the ended graph evicted"
    )
    crafted = [
        ended.processid[:32] + os.urandom(16).hex(),  # an evicted graph's prefix
        live.processid[:32] + os.urandom(16).hex(),  # a resident graph's prefix
        new_graph_id()[:32] + os.urandom(16).hex(),  # a graph that does not exist
        new_id(),  # a random (legacy-looking) id nobody has
    ]
    url = stack.nats.url
    with nothing_written(url):
        for processid in crafted:
            assert "does not exist" in refused(
                404, lambda p=processid: client.get_process(p, owner)
            )
            refused(404, lambda p=processid: client.close(p, [1], executor))
            refused(404, lambda p=processid: client.fail(p, ["x"], executor))
            refused(404, lambda p=processid: client.remove_process(p, owner))
            refused(404, lambda p=processid: client.add_log(p, "hello", executor))
        refused(404, lambda: client.get_process("not-an-id", owner))  # as before: 404
    # The real ones still answer, the evicted one from the log.
    assert client.get_process(ended.processid, owner).state == ProcessState.SUCCESS
    assert client.get_process(live.processid, owner).state == ProcessState.WAITING


def append_legacy_graph(stack: Stack, colony: ColonyHandle, steps: int) -> ProcessGraph:
    """Appends a graph with random (legacy) ids to the log, as an engine of before did."""
    app = engine_app(stack)
    try:
        assert isinstance(app.state.get(colony_aggregate_id(colony.name)), Colony)
        ownerid = crypto.id_from_private_key(colony.owner_prvkey)
        graph = ProcessGraph.submit(
            colony.name,
            workflow(colony.name, steps),
            initiatorid=ownerid,
            initiatorname="owner",
            now=datetime.now(UTC),
            actor=ownerid,
            command=b"",
            ids=iter([new_id() for _ in range(steps + 1)]),
        )
        app.aggregates.store.connection.run(app.aggregates.save_new(graph))
        return graph
    finally:
        app.close()


def test_legacy_ids_still_work_live_evicted_and_after_a_restart(fresh_stack: Stack) -> None:
    stack, client = fresh_stack, fresh_stack.client
    colony = stack.new_colony()
    executor = stack.new_executor(colony)
    owner = colony.owner_prvkey
    legacy = append_legacy_graph(stack, colony, 2)
    first, second = legacy.nodes
    assert graph_id_of_process(first) != legacy.processgraphid
    wait_until(lambda: _answers(lambda: client.get_process(first, owner)), 30, "the engine sees it")
    # The hot path on legacy ids: claim, a child (its id derives from the legacy graph's
    # prefix, not to the graph: the legacy map has it), close.
    claimed = client.assign(colony.name, 10, executor)
    assert claimed.processid == first
    child = client.add_child(
        legacy.processgraphid,
        first,
        None,
        func_spec("child", [], colony.name, "python-executor"),
        "child",
        False,
        executor,
    )
    assert graph_id_of_process(child.processid) != legacy.processgraphid
    client.close(first, [1], executor)
    for _ in range(2):
        process = client.assign(colony.name, 10, executor)
        client.close(process.processid, [2], executor)
    wait_until(lambda: _evicted(stack) >= 1, 30, "the legacy graph evicted")
    for processid in (first, second, child.processid):
        assert client.get_process(processid, owner).state == ProcessState.SUCCESS
    assert client.get_processgraph(legacy.processgraphid, owner).state == ProcessState.SUCCESS
    new = client.submit_func_spec(workflow(colony.name).functionspecs[0], owner)

    stack.engine.stop()  # writes a checkpoint: the legacy map is in it
    stack.engine.start()
    assert "started from the checkpoint" in stack.engine.log()
    for processid in (first, second, child.processid):
        assert client.get_process(processid, owner).state == ProcessState.SUCCESS
    crafted = first[:32] + os.urandom(16).hex()
    with nothing_written(stack.nats.url):
        refused(404, lambda: client.get_process(crafted, owner))
    process = client.assign(colony.name, 10, executor)
    assert process.processid == new.processid
    client.close(process.processid, [3], executor)
    assert client.get_process(new.processid, owner).output == [3]
    history = client.history(legacy.processgraphid, owner)
    assert len(history) == 8  # submitted; assigned, child, closed; 2 x (assigned, closed)


def _answers(call: Callable[[], object]) -> bool:
    try:
        call()
    except ColoniesError as error:
        if error.status == 404:
            return False
        raise
    return True


def _evicted(stack: Stack) -> int:
    found = re.findall(r"memory: (\d+) ended graphs left memory", stack.engine.log())
    return sum(int(n) for n in found)
