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
from pathlib import Path

import pytest

from colonies_es import Workflow, func_spec
from colonies_es.client import AsyncColonies
from colonies_es.models import FuncSpec
from colonies_es.states import ProcessState
from tests.processes import wait_until
from tests.stack import ColonyHandle, EngineProcess, Stack, start_stack, stop_stack

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
) -> None:
    """Submits and runs ``singles`` one-process graphs and ``workflows`` two-step ones,
    with 32 concurrent client loops (submit, claim, close), then runs ``claims`` more
    processes already submitted."""
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

        await asyncio.gather(*(loop(todo[n::32]) for n in range(32)))
        for _ in range(claims):
            process = await client.assign(colony.name, 30, executor)
            await client.close(process.processid, [1], executor)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_engine_memory_grows_less_than_10_mb_from_2000_to_20000_graphs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The engine remembers every command of the last 2 x COLONIES_COMMAND_WINDOW seconds
    # (replays, retries): memory bounded by time, not history. A 10 s window fills
    # before the first reading, so the growth measured is history's alone.
    monkeypatch.setenv("COLONIES_COMMAND_WINDOW", "10")
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
    asyncio.run(drive(stack, colony, executor, 1999, 0))
    asyncio.run(drive(stack, colony, executor, 0, 0, claims=1))
    wait_until(lambda: evicted_so_far(stack) >= 2000, 30, "the first 2,000 left memory")
    first = rss_mb(pid)
    print(f"engine RSS {first:.1f} MB after 2,000 graphs", flush=True)
    for _ in range(9):
        asyncio.run(drive(stack, colony, executor, 2000, 0))
        print(f"engine RSS {rss_mb(pid):.1f} MB", flush=True)
    asyncio.run(drive(stack, colony, executor, 0, 500))
    wait_until(lambda: evicted_so_far(stack) >= 20500, 60, "all graphs left memory")
    last = rss_mb(pid)
    print(f"engine RSS after 2,000 graphs {first:.1f} MB, after 20,500 {last:.1f} MB")
    assert last - first < 10, (first, last)

    owner = colony.owner_prvkey
    oldest = stack.client.get_process(first_process, owner)
    assert oldest.state == ProcessState.SUCCESS
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
    finally:
        reader.stop()
