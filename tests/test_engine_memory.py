"""Memory bounded by live work (issue 14.1) on a real stack.

Ended graphs leave the engine's memory (the engine logs how many) and everything about
them still answers: get, listings, stats, remove, rerun, history and time travel, also
after a restart with graphs still running. The slow test drives 20,000 single-process
graphs and 500 two-step workflows and reads the engine's RSS from /proc:
``pytest -m slow tests/test_engine_memory.py``.
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from colonies_es import Workflow, crypto, func_spec
from colonies_es.client import AsyncColonies
from colonies_es.domain import Colony, ProcessGraph, colony_aggregate_id
from colonies_es.models import FuncSpec, Process
from colonies_es.states import ProcessState
from tests.processes import wait_until
from tests.stack import ColonyHandle, EngineProcess, Stack, engine_app, start_stack, stop_stack

EXECUTOR_TYPE = "python-executor"


def single(colony: ColonyHandle, name: str = "job") -> FuncSpec:
    return func_spec(name, [], colony.name, EXECUTOR_TYPE)


def two_step(colony: ColonyHandle) -> Workflow:
    first = single(colony, "first")
    second = single(colony, "second")
    second.conditions.dependencies.append("first")
    return Workflow(colonyname=colony.name, functionspecs=[first, second])


def evicted_so_far(stack: Stack) -> int:
    """Ended graphs the engine reported leaving memory (its log, since its start)."""
    found = re.findall(r"memory: (\d+) ended graphs left memory", stack.engine.log())
    return sum(int(n) for n in found)


def run_one(stack: Stack, colony: ColonyHandle, executor: str, fail: bool = False) -> str:
    process = stack.client.assign(colony.name, 10, executor)
    if fail:
        stack.client.fail(process.processid, ["it broke"], executor)
    else:
        stack.client.close(process.processid, [1], executor)
    return process.processid


def test_ended_graphs_leave_memory_and_answer_from_the_log_also_after_a_restart(
    fresh_stack: Stack,
) -> None:
    stack = fresh_stack
    colony = stack.new_colony()
    executor = stack.new_executor(colony)
    owner = colony.owner_prvkey
    singles = [stack.client.submit_func_spec(single(colony), owner) for _ in range(20)]
    workflow = stack.client.submit_workflow(two_step(colony), owner)
    for number in range(22):  # the 20 singles and both steps; the last single fails
        run_one(stack, colony, executor, fail=number == 19)
    running = [stack.client.submit_func_spec(single(colony), owner) for _ in range(2)]
    held = [stack.client.assign(colony.name, 10, executor) for _ in running]

    wait_until(lambda: evicted_so_far(stack) == 21, 30, "21 ended graphs left memory")

    for process in singles:
        got = stack.client.get_process(process.processid, owner)
        assert got.state in (ProcessState.SUCCESS, ProcessState.FAILED)
    graph = stack.client.get_processgraph(workflow.processgraphid, owner)
    assert graph.state == ProcessState.SUCCESS
    succeeded = stack.client.list_processes(colony.name, 100, ProcessState.SUCCESS, owner)
    assert len(succeeded) == 21
    assert len(stack.client.list_processes(colony.name, 100, ProcessState.RUNNING, owner)) == 2
    stats = stack.client.stats(colony.name, owner)
    assert (stats.successfulprocesses, stats.failedprocesses, stats.runningprocesses) == (21, 1, 2)
    assert (stats.successfulworkflows, stats.failedworkflows) == (20, 1)
    history = stack.client.history(workflow.processgraphid, owner)
    assert len(history) == 5  # submitted, assigned, closed, assigned, closed
    then = stack.client.state_at(workflow.processgraphid, "#3", owner)
    assert then.processgraph.state == ProcessState.RUNNING

    # Removing and re-running evicted graphs brings them back just for that.
    stack.client.remove_process(singles[0].processid, owner)
    failed = stack.client.get_process(singles[19].processid, owner)
    rerun = stack.client.rerun_processgraph(failed.processgraphid, owner)
    stats = stack.client.stats(colony.name, owner)
    assert (stats.successfulprocesses, stats.failedprocesses, stats.waitingprocesses) == (20, 1, 1)

    stack.engine.kill()
    stack.engine.start()
    for process in held:
        stack.client.close(process.processid, [2], executor)
    run_one(stack, colony, executor)  # the rerun
    for process in running:
        assert stack.client.get_process(process.processid, owner).state == ProcessState.SUCCESS
    assert stack.client.get_processgraph(rerun.processgraphid, owner).state == ProcessState.SUCCESS
    assert stack.client.get_process(singles[5].processid, owner).output == [1]
    stats = stack.client.stats(colony.name, owner)
    assert (stats.successfulprocesses, stats.failedprocesses, stats.runningprocesses) == (23, 1, 0)
    wait_until(lambda: evicted_so_far(stack) >= 23, 30, "the restarted engine evicted")
    assert (
        stack.client.get_processgraph(workflow.processgraphid, owner).state == ProcessState.SUCCESS
    )
    assert len(stack.client.history(workflow.processgraphid, owner)) == 5
    then = stack.client.state_at(workflow.processgraphid, "#3", owner)
    assert then.processgraph.state == ProcessState.RUNNING


# --- the engine's RSS over 20,000 graphs (slow) ---------------------------------------------


def rss_mb(pid: int) -> float:
    """Resident set size of a process, from /proc (MB)."""
    status = Path(f"/proc/{pid}/status").read_text()
    [kilobytes] = re.findall(r"VmRSS:\s+(\d+) kB", status)
    return int(kilobytes) / 1024


async def drive(
    stack: Stack,
    colony: ColonyHandle,
    executor: str,
    singles: int,
    workflows: int,
    claims: int = 0,
) -> list[str]:
    """Submits and runs ``singles`` one-process graphs and ``workflows`` two-step ones,
    with 32 concurrent client loops (submit, claim, close), then runs ``claims`` more
    processes already submitted; returns the ids of the processes it closed."""
    closed: list[str] = []
    async with AsyncColonies("127.0.0.1", stack.nats.port, timeout=30) as client:
        owner = colony.owner_prvkey
        spec = single(colony)
        workflow = two_step(colony)
        todo = [("single", 1)] * singles + [("workflow", 2)] * workflows

        async def loop(share: list[tuple[str, int]]) -> None:
            for kind, steps in share:
                if kind == "single":
                    await client.submit_func_spec(spec, owner)
                else:
                    await client.submit_workflow(workflow, owner)
                for _ in range(steps):
                    process = await client.assign(colony.name, 30, executor)
                    await client.close(process.processid, [1], executor)
                    closed.append(process.processid)

        await asyncio.gather(*(loop(todo[n::32]) for n in range(32)))
        for _ in range(claims):
            process = await client.assign(colony.name, 30, executor)
            await client.close(process.processid, [1], executor)
            closed.append(process.processid)
    return closed


async def read_all(stack: Stack, processids: list[str], owner: str) -> list[Process]:
    """Every process, read from the engine (``get_process``) by 32 concurrent loops."""
    async with AsyncColonies("127.0.0.1", stack.nats.port, timeout=30) as client:
        found: dict[str, Process] = {}

        async def loop(share: list[str]) -> None:
            for processid in share:
                found[processid] = await client.get_process(processid, owner)

        await asyncio.gather(*(loop(processids[n::32]) for n in range(32)))
    return [found[processid] for processid in processids]


WARM_UP = 1200
"""Graphs run before the measurement: longer than the commands' window (2 s here) at this
machine's quiet rate (about 500 graphs/s), so that the window's high-water mark, which
follows the command rate, is reached before it (a warm-up of 300 left +5.4 to 6.2 MB
of that step in the measurement on a quiet machine, at the bound)."""


@pytest.mark.timeout(120)
def test_engine_memory_per_ended_graph_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default-run cut of the slow test below: RSS growth over 1,200 graphs after a
    warm-up of :data:`WARM_UP` graphs, at most 3 MB plus 1,000 bytes a graph (4.1 MB).
    Measured on a quiet machine: +0.4 to 1.2 MB (with a warm-up of 300, which left the
    commands' window's step in the measurement: +5.4 to 6.2 MB, also at the session's
    start). Keeping ended graphs (4.4 KB a process, issue 14: 5.3 MB over 1,200 graphs)
    would exceed it; the index of every process id (~370 bytes a graph) is ruled out
    exactly by tests/test_engine_state.py, and the slow test measures the 10 MB target."""
    monkeypatch.setenv("COLONIES_COMMAND_WINDOW", "1")  # the commands' window: 2 s
    stack = start_stack(tmp_path, projector=False)  # the engine's memory alone
    try:
        colony = stack.new_colony()
        executor = stack.new_executor(colony)
        assert stack.engine.process is not None
        pid = stack.engine.process.pid
        warm = asyncio.run(drive(stack, colony, executor, WARM_UP, 0))
        wait_until(lambda: evicted_so_far(stack) >= WARM_UP, 30, "the warm-up left memory")
        first = rss_mb(pid)
        measured = asyncio.run(drive(stack, colony, executor, 1200, 0))
        wait_until(lambda: evicted_so_far(stack) >= WARM_UP + 1200, 30, "all left memory")
        time.sleep(2.5)  # the commands' window (2 s) empties
        last = rss_mb(pid)
        allowed = 3.0 + len(measured) * 1000 / 2**20
        print(f"engine RSS {first:.1f} -> {last:.1f} MB (at most +{allowed:.1f} MB)")
        assert last - first < allowed, (first, last)
        read = asyncio.run(read_all(stack, warm[:50] + measured[-50:], colony.owner_prvkey))
        assert {process.state for process in read} == {ProcessState.SUCCESS}
    finally:
        stop_stack(stack)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_engine_memory_grows_less_than_10_mb_from_2000_to_20000_graphs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The engine remembers every command of the last 2 x COLONIES_COMMAND_WINDOW seconds
    # (replays, retries): memory bounded by time, not history, but its high-water mark
    # follows the command rate, and the allocator keeps what it reached. A 2 s window
    # keeps that mark small, so the growth measured is history's: +0.5 MB over 18,500
    # graphs, against +9.2 MB with a 10 s window in a run whose rate rose midway (a
    # tracemalloc probe of that run found no Python allocation growing with graphs).
    monkeypatch.setenv("COLONIES_COMMAND_WINDOW", "2")
    stack = start_stack(tmp_path, projector=False)  # the engine's memory alone
    try:
        check_memory(stack)
    finally:
        stop_stack(stack)


def check_memory(stack: Stack) -> None:
    colony = stack.new_colony()
    executor = stack.new_executor(colony)
    assert stack.engine.process is not None
    pid = stack.engine.process.pid

    first_process = stack.client.submit_func_spec(single(colony), colony.owner_prvkey).processid
    closed = asyncio.run(drive(stack, colony, executor, 1999, 0))
    closed += asyncio.run(drive(stack, colony, executor, 0, 0, claims=1))
    wait_until(lambda: evicted_so_far(stack) >= 2000, 30, "the first 2,000 left memory")
    first = rss_mb(pid)
    print(f"engine RSS {first:.1f} MB after 2,000 graphs", flush=True)
    for _ in range(9):
        closed += asyncio.run(drive(stack, colony, executor, 2000, 0))
        print(f"engine RSS {rss_mb(pid):.1f} MB", flush=True)
    closed += asyncio.run(drive(stack, colony, executor, 0, 500))
    wait_until(lambda: evicted_so_far(stack) >= 20500, 60, "all graphs left memory")
    last = rss_mb(pid)
    print(f"engine RSS after 2,000 graphs {first:.1f} MB, after 20,500 {last:.1f} MB")
    assert last - first < 10, (first, last)

    owner = colony.owner_prvkey
    assert first_process in closed
    assert len(closed) == 21_000
    started = time.monotonic()
    read = asyncio.run(read_all(stack, closed, owner))  # every ended graph, from the log
    assert {process.state for process in read} == {ProcessState.SUCCESS}
    print(
        f"read all {len(read)} processes in {time.monotonic() - started:.1f} s; "
        f"engine RSS then {rss_mb(pid):.1f} MB",
        flush=True,
    )
    oldest = read[closed.index(first_process)]
    # History and time travel are answered by a projector (after a membership check):
    # a second replica with one beside it serves them.
    reader = EngineProcess(stack.nats.url, stack.engine.server_id, stack.engine.log_dir / "r")
    reader.log_dir.mkdir()
    reader.seal_key = stack.engine.seal_key
    reader.start(timeout=300)
    try:
        assert len(stack.client.history(oldest.processgraphid, owner)) == 3
        then = stack.client.state_at(oldest.processgraphid, "#2", owner)
        assert then.processgraph.state == ProcessState.RUNNING
        graphs = {process.processgraphid for process in read}
        assert len(graphs) == 20_500
        for processgraphid in sorted(graphs)[::50]:  # 410 of them, across the history
            assert len(stack.client.history(processgraphid, owner)) in (3, 5)
            then = stack.client.state_at(processgraphid, "#2", owner)
            assert then.processgraph.state == ProcessState.RUNNING
    finally:
        reader.stop()


# --- a restart with 20,000 ended graphs and 50 running (slow) -------------------------------


def append_ended_graphs(
    stack: Stack, colony: ColonyHandle, executorname: str, count: int
) -> list[str]:
    """Appends ``count`` finished single-process graphs to the stack's log through the
    engine's own code path (domain, mapper, sealed entries, atomic batches of 300
    graphs), as an engine that ran them would have; returns their process ids."""
    app = engine_app(stack)
    try:
        recorder = app.aggregates.store
        found = app.state.get(colony_aggregate_id(colony.name))
        assert isinstance(found, Colony)
        executor = found.executor_by_name(executorname)
        assert executor is not None
        ownerid = crypto.id_from_private_key(colony.owner_prvkey)
        workflow = Workflow(colonyname=colony.name, functionspecs=[single(colony)])
        processids: list[str] = []
        batch: list[Any] = []
        for number in range(count):
            moment = datetime.now(UTC)
            graph = ProcessGraph.submit(
                colony.name,
                workflow,
                initiatorid=ownerid,
                initiatorname="owner",
                now=moment,
                actor=ownerid,
                command=b"",
            )
            [processid] = graph.nodes
            stamp = {"now": moment, "actor": executor.executorid, "command": b""}
            graph.assign(processid, executor, 1, **stamp)
            graph.close(processid, executor.executorid, [number], **stamp)
            batch.extend(graph.collect_events())
            processids.append(processid)
            if len(batch) >= 900 or number == count - 1:
                stored = [app.mapper.to_stored_event(event) for event in batch]
                recorder.connection.run(recorder.log.append(recorder.entries_for(stored)))
                batch = []
        return processids
    finally:
        app.close()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_restart_with_20000_ended_and_50_running_graphs(fresh_stack: Stack) -> None:
    stack, client = fresh_stack, fresh_stack.client
    colony = stack.new_colony()
    executor = stack.new_executor(colony, name="worker")
    owner = colony.owner_prvkey
    ended = append_ended_graphs(stack, colony, "worker", 20_000)
    wait_until(lambda: evicted_so_far(stack) >= 20_000, 300, "the engine followed and evicted them")
    running = [client.submit_func_spec(single(colony), owner) for _ in range(50)]
    for _ in running:
        client.assign(colony.name, 10, executor)

    stack.engine.stop()  # a clean stop writes a checkpoint
    started = time.monotonic()
    stack.engine.start(timeout=300)
    print(f"engine ready again in {time.monotonic() - started:.2f} s (20,050 graphs)")
    assert "started from the checkpoint" in stack.engine.log()
    for process in running:
        client.close(process.processid, ["done"], executor)
    for process in running:
        assert client.get_process(process.processid, owner).state == ProcessState.SUCCESS
    read = asyncio.run(read_all(stack, ended, owner))
    assert [process.output for process in read] == [[n] for n in range(20_000)]
    for processid in ended[::1000]:
        graph = read[ended.index(processid)].processgraphid
        assert len(client.history(graph, owner)) == 3
        assert client.state_at(graph, "#2", owner).processgraph.state == ProcessState.RUNNING
