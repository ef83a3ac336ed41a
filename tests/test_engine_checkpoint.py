"""Start-up from a checkpoint (issues 8.5 and 14.2) on a real stack.

One scenario (the module's fixture) runs a log with two colonies and their executors,
ended graphs the engine evicted, a failed one, one failed and waiting for its retry, a
two-step workflow half done, a running process with a deadline, a ready one with a
waiting deadline and a dynamic graph (add_child) in flight; the engine stops (writing
its checkpoint), starts again from it, and the scenario goes on (the log after the
checkpoint: retries, completions, a removal of an evicted graph, a new executor), then
the engine is killed (no checkpoint at the end).

- The restarted engine completes the running workflows and answers get and history of
  ended graphs.
- The state derived from the checkpoint and the log after it equals, field by field,
  the state derived by replaying the whole log (in-process applications on the same
  stream).
- A forged checkpoint head (another seal key) is refused: the whole log is replayed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import nats
import pytest

from colonies_es import Workflow, func_spec
from colonies_es.domain import ProcessGraph
from colonies_es.engine import ColoniesApp, follower
from colonies_es.engine.checkpoint import Checkpoint, CheckpointStore
from colonies_es.engine.state import EngineState, LiveState
from colonies_es.models import FuncSpec
from colonies_es.states import ProcessState
from colonies_es.store.codec import Sealer
from tests.processes import wait_until
from tests.stack import ColonyHandle, Stack, engine_app, start_stack, stop_stack

pytestmark = pytest.mark.timeout(180)


def spec(colony: ColonyHandle, kind: str, name: str = "job", **limits: int) -> FuncSpec:
    return func_spec(name, [], colony.name, kind, **limits)


def evicted_so_far(stack: Stack) -> int:
    found = re.findall(r"memory: (\d+) ended graphs left memory", stack.engine.log())
    return sum(int(n) for n in found)


@dataclass
class Scenario:
    stack: Stack
    checkpoint_at: int
    observed: dict[str, Any]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    stack = start_stack(tmp_path_factory.mktemp("checkpoint"))
    try:
        yield run_scenario(stack)
    finally:
        stop_stack(stack)


def run_scenario(stack: Stack) -> Scenario:
    client = stack.client
    alpha, beta = stack.new_colony(), stack.new_colony()
    owner = alpha.owner_prvkey
    worker = stack.new_executor(alpha, "work")
    retrier = stack.new_executor(alpha, "retry")
    holder = stack.new_executor(alpha, "hold")
    mapper = stack.new_executor(alpha, "map")
    beta_worker = stack.new_executor(beta, "work")

    def run(kind_key: str, colony: ColonyHandle, fail: bool = False) -> str:
        process = client.assign(colony.name, 10, kind_key)
        if fail:
            client.fail(process.processid, ["it broke"], kind_key)
        else:
            client.close(process.processid, [1], kind_key)
        return process.processid

    singles = []
    for _ in range(6):
        singles.append(client.submit_func_spec(spec(alpha, "work"), owner))
        run(worker, alpha)
    failed = client.submit_func_spec(spec(alpha, "work", maxretries=0), owner)
    run(worker, alpha, fail=True)
    retrying = client.submit_func_spec(spec(alpha, "retry", maxretries=2), owner)
    run(retrier, alpha, fail=True)  # back to WAITING for its second attempt
    held = client.submit_func_spec(spec(alpha, "hold", maxexectime=600), owner)
    client.assign(alpha.name, 10, holder)
    idle = client.submit_func_spec(spec(alpha, "idle", maxwaittime=600), owner)
    reduce_spec = spec(alpha, "work", "reduce")
    reduce_spec.conditions.dependencies.append("map")
    mapped = client.submit_workflow(
        Workflow(colonyname=alpha.name, functionspecs=[spec(alpha, "map", "map"), reduce_spec]),
        owner,
    )
    map_process = client.assign(alpha.name, 10, mapper)
    client.add_child(
        mapped.processgraphid,
        map_process.processid,
        None,
        spec(alpha, "work", "gen"),
        "gen",
        True,
        mapper,
    )
    client.submit_func_spec(spec(beta, "work"), beta.owner_prvkey)
    run(beta_worker, beta)
    second = spec(alpha, "work", "second")
    second.conditions.dependencies.append("first")
    two_step = client.submit_workflow(
        Workflow(colonyname=alpha.name, functionspecs=[spec(alpha, "work", "first"), second]),
        owner,
    )
    run(worker, alpha)  # "first": "second" is ready
    wait_until(lambda: evicted_so_far(stack) >= 8, 30, "the 8 ended graphs left memory")

    stack.engine.stop()
    [written] = re.findall(r"checkpoint written at sequence (\d+)", stack.engine.log())
    stack.engine.start()
    assert f"started from the checkpoint at sequence {written}" in stack.engine.log()

    # The log after the checkpoint, written by the engine that started from it.
    observed: dict[str, Any] = {}
    run(retrier, alpha)  # the retry's second attempt succeeds
    run(worker, alpha)  # "second"
    client.close(held.processid, [2], holder)
    client.close(map_process.processid, [3], mapper)
    run(worker, alpha)  # "gen", inserted between map and reduce
    run(worker, alpha)  # "reduce"
    client.remove_processgraph(singles[0].processgraphid, owner)  # an evicted graph
    fresh = client.submit_func_spec(spec(alpha, "idle"), owner)
    stack.new_executor(beta, "work", approve=False)
    observed["states"] = {
        name: client.get_processgraph(graph.processgraphid, owner).state
        for name, graph in [
            ("retrying", retrying),
            ("held", held),
            ("two_step", two_step),
            ("mapped", mapped),
            ("ended", singles[1]),
            ("failed", failed),
            ("idle", idle),
            ("fresh", fresh),
        ]
    }
    observed["ended_output"] = client.get_process(singles[1].processid, owner).output
    observed["ended_history"] = len(client.history(singles[1].processgraphid, owner))
    observed["inputs"] = [
        client.get_process(processid, owner).input
        for processid in client.get_processgraph(mapped.processgraphid, owner).processids
    ]
    stack.engine.kill()  # no checkpoint at the end: the log after it stays to be applied
    return Scenario(stack, int(written), observed)


def test_an_engine_started_from_a_checkpoint_completes_running_work_and_reads_ended_graphs(
    scenario: Scenario,
) -> None:
    states = scenario.observed["states"]
    for name in ("retrying", "held", "two_step", "mapped", "ended"):
        assert states[name] == ProcessState.SUCCESS, name
    assert states["failed"] == ProcessState.FAILED
    assert states["idle"] == states["fresh"] == ProcessState.WAITING
    assert scenario.observed["ended_output"] == [1]
    assert scenario.observed["ended_history"] == 3  # submitted, assigned, closed
    assert [3] in scenario.observed["inputs"]  # gen got map's output


async def _forge_head(stack: Stack, sequence: int) -> None:
    """A checkpoint newer than the real one, sealed with another key."""
    nc = await nats.connect(stack.engine.nats_url)
    try:
        forger = CheckpointStore(nc, sealer=Sealer(os.urandom(32)))
        assert await forger.write(Checkpoint(LiveState(sequence, [], [], {}), []), "forger")
    finally:
        await nc.close()


def test_the_state_from_a_checkpoint_and_the_log_after_it_equals_the_whole_replay(
    scenario: Scenario, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both equal, field by field, a whole replay that evicts ended graphs on the way
    (every 2 events here), where the removal of an evicted graph reads it back from its
    subject."""
    caplog.set_level(logging.INFO, "colonies.engine")
    from_checkpoint = engine_app(scenario.stack)
    try:
        assert f"started from the checkpoint at sequence {scenario.checkpoint_at}" in caplog.text
        caplog.clear()
        asyncio.run(_forge_head(scenario.stack, from_checkpoint.state.applied))
        replayed = engine_app(scenario.stack)
        try:
            assert "replaying the whole log: no usable checkpoint" in caplog.text
            assert "fails the seal check" in caplog.text
            _assert_same_state(replayed, from_checkpoint)
        finally:
            replayed.close()
        caplog.clear()
        monkeypatch.setattr(follower, "REPLAY_EVICTS_EVERY", 2)
        evicting = engine_app(scenario.stack)
        try:
            [on_the_way] = re.findall(r"(\d+) ended graphs left memory on the way", caplog.text)
            assert int(on_the_way) >= 8
            assert evicting.counters.catch_ups >= 1  # the removed graph, evicted before
            _assert_same_state(evicting, from_checkpoint)
        finally:
            evicting.close()
    finally:
        from_checkpoint.close()


def _assert_same_state(expected: ColoniesApp, actual: ColoniesApp) -> None:
    """Compares the two applications' derived state, field by field."""
    mine, theirs = expected.state, actual.state
    for state in (mine, theirs):
        state.sweep(lambda _: False)
    assert theirs.applied == mine.applied
    assert set(theirs.aggregates) == set(mine.aggregates)
    for aggregate_id, aggregate in mine.aggregates.items():
        assert vars(theirs.aggregates[aggregate_id]) == vars(aggregate), aggregate_id
    assert any(isinstance(a, ProcessGraph) for a in mine.aggregates.values())
    assert theirs._legacy_graph_of == mine._legacy_graph_of
    assert set(theirs._colony_names) == set(mine._colony_names)
    assert theirs._evicted_counts == mine._evicted_counts
    assert sum(sum(totals) for totals in mine._evicted_counts.values()) > 0
    assert theirs._ending == mine._ending
    assert theirs.last_heard == mine.last_heard
    assert _ready(theirs) == _ready(mine)
    assert len(_ready(mine)) == 2  # the idle processes
    assert _deadlines(theirs) == _deadlines(mine)
    assert _deadlines(mine)  # the idle process's waiting limit
    assert theirs._loaded.keys() == mine._loaded.keys()
    for colonyname in mine.colony_names():
        assert theirs.pending_processes(colonyname) == mine.pending_processes(colonyname)
        assert {g.id for g in theirs.resident_graphs(colonyname)} == {
            g.id for g in mine.resident_graphs(colonyname)
        }
    assert dict(actual.seen.guard._seen) == dict(expected.seen.guard._seen)
    assert dict(actual.seen.replies.applied()) == dict(expected.seen.replies.applied())
    assert len(expected.seen.replies.applied()) > 10


def _ready(state: EngineState) -> dict[str, Any]:
    return {
        processid: (key, entry.sort_key[:2], entry.graph_id, entry.attempt, entry.executornames)
        for processid, (key, entry) in state.ready._live.items()
    }


def _deadlines(state: EngineState) -> set[tuple[float, str, int, str]]:
    """The timers that still mean something (stale ones are dropped when they fire)."""
    found = set()
    for timer in state._timers:
        graph = state.aggregates.get(timer.graph_id)
        if not isinstance(graph, ProcessGraph):
            continue
        node = graph.nodes[timer.processid]
        due = node.waitdeadline if timer.kind == "wait" else node.execdeadline
        live = node.is_ready if timer.kind == "wait" else node.is_running
        if (
            live
            and due is not None
            and due.timestamp() == timer.at
            and node.attempt == timer.attempt
        ):
            found.add((timer.at, timer.processid, timer.attempt, timer.kind))
    return found
