"""The engine killed (SIGKILL) and restarted: work resumes from the log, nothing is lost or
written twice.

Each test has a stack of its own (``fresh_stack``). After a crash the log must still read
as a clean history: every aggregate's versions 1..n in order, one ``ProcessAssigned`` per
attempt, one ``ProcessClosed`` per process.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections import Counter, defaultdict

import msgspec
import nats
from nats.micro.request import ERROR_CODE_HEADER, ERROR_HEADER

from colonies_es import (
    Colonies,
    ColoniesConnectionError,
    ColoniesError,
    Workflow,
    crypto,
    func_spec,
)
from colonies_es.models import FuncSpec
from colonies_es.protocol import WORK_STREAM, api_subject
from colonies_es.states import ProcessState
from tests.eventlog import EventLog, read_events
from tests.processes import wait_until
from tests.stack import ColonyHandle, Stack

EXECUTOR_TYPE = "python-executor"


def crash_and_restart(stack: Stack) -> None:
    """SIGKILL the engine, then start it again and wait until it serves."""
    stack.engine.kill()
    stack.engine.start()


def node(colony: ColonyHandle, nodename: str, *dependencies: str, **options: object) -> FuncSpec:
    made = func_spec("step", [], colony.name, EXECUTOR_TYPE, **options)  # type: ignore[arg-type]
    made.nodename = nodename
    made.conditions.dependencies.extend(dependencies)
    return made


def assert_clean_history(log: EventLog, colony: ColonyHandle) -> None:
    """Versions contiguous, attempts assigned once each, processes closed at most once."""
    log.assert_versions_contiguous()
    attempts: dict[str, list[int]] = defaultdict(list)
    for event in log.of_kind("ProcessAssigned"):
        if event.aggregate_id.startswith(f"{colony.name}."):
            assert event.processid is not None
            attempts[event.processid].append(event.state["attempt"])
    for processid, numbers in attempts.items():
        assert numbers == list(range(1, len(numbers) + 1)), f"attempts of {processid}: {numbers}"
    closed = log.count_per_process("ProcessClosed")
    assert [pid for pid, count in closed.items() if count != 1] == []


# --- stopping ------------------------------------------------------------------------------------


def test_the_engine_stops_promptly_on_sigterm(fresh_stack: Stack) -> None:
    stack = fresh_stack
    stack.new_colony()  # the engine has served a command
    engine = stack.engine.process
    assert engine is not None

    started = time.monotonic()
    engine.terminate()
    engine.wait(30)
    took = time.monotonic() - started

    assert took < 3, f"the engine took {took:.1f} s to stop"
    assert "FlushTimeoutError" not in stack.engine.log()


# --- a workflow across crashes ---------------------------------------------------------------


def test_a_workflow_completes_with_the_same_result_across_engine_crashes(
    fresh_stack: Stack,
) -> None:
    stack = fresh_stack
    colony = stack.new_colony()
    executor = stack.new_executor(colony)
    workflow = Workflow(
        colonyname=colony.name,
        functionspecs=[
            node(colony, "n1"),
            node(colony, "n2", "n1"),
            node(colony, "n3", "n1"),
            node(colony, "n4", "n2", "n3"),
        ],
    )
    graph = stack.client.submit_workflow(workflow, colony.owner_prvkey)
    crash_and_restart(stack)  # n1 ready, unclaimed

    n1 = stack.client.assign(colony.name, 10, executor)
    crash_and_restart(stack)  # n1 assigned, not closed
    stack.client.close(n1.processid, [1], executor)

    middle = {}
    for _ in range(2):
        taken = stack.client.assign(colony.name, 10, executor)
        middle[taken.spec.nodename] = taken
    stack.client.close(middle["n3"].processid, [3], executor)
    crash_and_restart(stack)  # n3 done, n2 running
    stack.client.close(middle["n2"].processid, [2], executor)

    n4 = stack.client.assign(colony.name, 10, executor)
    assert n4.spec.nodename == "n4"
    assert n4.input == [2, 3]
    stack.client.close(n4.processid, [sum(n4.input)], executor)
    crash_and_restart(stack)

    assert stack.client.get_process(n4.processid, colony.owner_prvkey).output == [5]
    assert stack.client.get_processgraph(graph.processgraphid, colony.owner_prvkey).state == (
        ProcessState.SUCCESS
    )
    log = read_events(stack.nats.url)
    assert_clean_history(log, colony)
    kinds = Counter(e.kind for e in log.for_graph(colony.name, graph.processgraphid))
    assert kinds == {"GraphSubmitted": 1, "ProcessAssigned": 4, "ProcessClosed": 4}


def test_ready_work_gets_tickets_again_after_a_restart_in_priority_order(
    fresh_stack: Stack,
) -> None:
    stack = fresh_stack
    colony = stack.new_colony()
    executor = stack.new_executor(colony)
    names = {}
    for name, priority in [("p1", 1), ("p2", 2), ("p5a", 5), ("p5b", 5)]:
        process = stack.client.submit_func_spec(
            node(colony, name, priority=priority), colony.owner_prvkey
        )
        names[process.processid] = name
    stack.engine.kill()
    # The work stream is derived data: lose it altogether while the engine is down.
    asyncio.run(_delete_stream(stack.nats.url, WORK_STREAM))
    stack.engine.start()

    order = []
    for _ in range(4):
        process = stack.client.assign(colony.name, 10, executor)
        order.append(names[process.processid])
        stack.client.close(process.processid, [], executor)
    assert order == ["p5a", "p5b", "p2", "p1"]
    assert_clean_history(read_events(stack.nats.url), colony)


async def _delete_stream(url: str, name: str) -> None:
    nc = await nats.connect(url)
    try:
        await nc.jetstream().delete_stream(name)
    finally:
        await nc.close()


def test_a_close_sent_after_a_restart_is_accepted(fresh_stack: Stack) -> None:
    stack = fresh_stack
    colony = stack.new_colony()
    executor = stack.new_executor(colony)
    process = stack.client.submit_func_spec(node(colony, "job"), colony.owner_prvkey)
    running = stack.client.assign(colony.name, 10, executor)

    crash_and_restart(stack)
    stack.client.close(running.processid, ["after the crash"], executor)

    done = stack.client.get_process(process.processid, colony.owner_prvkey)
    assert done.state == ProcessState.SUCCESS
    assert done.output == ["after the crash"]
    assert_clean_history(read_events(stack.nats.url), colony)


# --- timers across a crash ---------------------------------------------------------------------


def test_deadlines_passed_while_the_engine_was_down_fire_once_after_restart(
    fresh_stack: Stack,
) -> None:
    stack = fresh_stack
    colony = stack.new_colony()
    first = stack.new_executor(colony)
    second = stack.new_executor(colony)
    unwanted = stack.client.submit_func_spec(
        func_spec("unwanted", [], colony.name, "nobody-has-this", maxwaittime=1),
        colony.owner_prvkey,
    )
    overrun = stack.client.submit_func_spec(
        node(colony, "overrun", maxexectime=1, maxretries=1), colony.owner_prvkey
    )
    attempt1 = stack.client.assign(colony.name, 10, first)
    assert attempt1.processid == overrun.processid
    deadline = attempt1.execdeadline
    assert deadline is not None

    stack.engine.kill()
    wait_until(lambda: time.time() > deadline.timestamp() + 0.5, 5, "both deadlines passed")
    stack.engine.start()

    attempt2 = stack.client.assign(colony.name, 10, second)
    assert attempt2.processid == overrun.processid
    assert attempt2.retries == 1
    assert attempt2.errors == ["maximum execution time exceeded"]
    stack.client.close(attempt2.processid, ["second time lucky"], second)
    failed = stack.client.wait(unwanted, 10, colony.owner_prvkey)
    assert failed.state == ProcessState.FAILED
    assert failed.errors == ["maximum waiting time exceeded"]
    crash_and_restart(stack)  # timers re-armed from the log must not fire again

    assert stack.client.get_process(overrun.processid, first).state == ProcessState.SUCCESS
    log = read_events(stack.nats.url)
    assert [(e.processid, e.state["attempt"]) for e in log.of_kind("ExecutionTimedOut")] == [
        (overrun.processid, 1)
    ]
    assert [e.processid for e in log.of_kind("WaitTimedOut")] == [unwanted.processid]
    assert_clean_history(log, colony)


# --- the replay guard across a crash ----------------------------------------------------------


async def _request_twice(
    url: str, op: str, sealed: bytes, stack: Stack
) -> list[tuple[str | None, str, bytes]]:
    nc = await nats.connect(url)
    try:
        answers = []
        for restart_first in (False, True):
            if restart_first:
                await asyncio.to_thread(crash_and_restart, stack)
            reply = await nc.request(api_subject(op), sealed, timeout=10)
            headers = reply.headers or {}
            answers.append(
                (headers.get(ERROR_CODE_HEADER), headers.get(ERROR_HEADER, ""), reply.data)
            )
        return answers
    finally:
        await nc.close()


def test_a_command_retried_after_a_restart_gets_its_original_reply(fresh_stack: Stack) -> None:
    """The restarted engine knows the command from the log: the retry is answered with
    the process the first try made, and nothing is applied twice (issue 8.4)."""
    stack = fresh_stack
    colony = stack.new_colony()
    body = {
        "spec": {
            "funcname": "job",
            "conditions": {"colonyname": colony.name, "executortype": EXECUTOR_TYPE},
        }
    }
    sealed = crypto.seal("submit_func_spec", body, colony.owner_prvkey)

    first, replayed = asyncio.run(_request_twice(stack.nats.url, "submit_func_spec", sealed, stack))

    assert first[:2] == (None, "")
    assert replayed[:2] == (None, ""), replayed
    made = msgspec.json.decode(first[2])["processid"]
    assert msgspec.json.decode(replayed[2])["processid"] == made
    [process] = stack.client.list_processes(colony.name, 10, -1, colony.owner_prvkey)
    assert process.processid == made


# --- crashes while executors are busy ----------------------------------------------------------

BUSY_PROCESSES = 60
BUSY_EXECUTORS = 4


class StubbornExecutor(threading.Thread):
    """Assigns and closes until told to stop, riding out engine crashes.

    A command lost in a crash is retried; a claim whose reply was lost leaves a process
    RUNNING with nobody working on it, which its ``maxexectime`` takes back.

    It records what the engine acknowledged, as (process id, attempt): ``claimed`` and
    ``closed``; and the closes it refused with 403 (``refused``). The test holds the log
    to them: an acknowledged write that is not in the log was lost.
    """

    def __init__(self, stack: Stack, colony: ColonyHandle, stop: threading.Event) -> None:
        super().__init__()
        self.prvkey = stack.new_executor(colony)
        self.executorid = crypto.id_from_private_key(self.prvkey)
        self.colony = colony
        self.port = stack.nats.port
        self.stop = stop
        self.claimed: list[tuple[str, int]] = []
        self.closed: list[tuple[str, int]] = []
        self.refused: list[tuple[str, int]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with Colonies("127.0.0.1", self.port, timeout=2.0) as client:
                while not self.stop.is_set():
                    try:
                        process = client.assign(self.colony.name, 0.5, self.prvkey)
                    except ColoniesConnectionError:
                        self.stop.wait(0.05)  # the engine is down: try again shortly
                        continue
                    except ColoniesError as error:
                        if error.status == 404:
                            continue
                        raise
                    attempt = (process.processid, process.retries + 1)
                    self.claimed.append(attempt)
                    self._close(client, attempt)
        except BaseException as error:
            self.error = error

    def _close(self, client: Colonies, attempt: tuple[str, int]) -> None:
        processid = attempt[0]
        while not self.stop.is_set():
            try:
                client.close(processid, [processid[:8]], self.prvkey)
            except ColoniesConnectionError:
                self.stop.wait(0.05)
                continue
            except ColoniesError as error:
                # 403: an earlier try was recorded before its reply was lost, or the
                # process was taken back by its execution deadline; the test checks which.
                if error.status != 403:
                    raise
                self.refused.append(attempt)
                return
            self.closed.append(attempt)
            return


def assert_acknowledged_in_log(log: EventLog, executors: list[StubbornExecutor]) -> None:
    """Every claim and close the engine acknowledged has exactly its event in the log,
    and every refused close is explained by it: the executor's own earlier try (its reply
    lost in a crash) or the attempt's execution timeout."""
    assigned = Counter(
        (e.processid, e.state["attempt"], e.state["executorid"])
        for e in log.of_kind("ProcessAssigned")
    )
    closed = Counter(
        (e.processid, e.state["attempt"], e.state["executorid"])
        for e in log.of_kind("ProcessClosed")
    )
    timed_out = {(e.processid, e.state["attempt"]) for e in log.of_kind("ExecutionTimedOut")}
    for executor in executors:
        for processid, attempt in executor.claimed:
            assert assigned[(processid, attempt, executor.executorid)] == 1, (
                f"acknowledged claim of {processid} attempt {attempt} not in the log"
            )
        for processid, attempt in executor.closed:
            assert closed[(processid, attempt, executor.executorid)] == 1, (
                f"acknowledged close of {processid} attempt {attempt} not in the log"
            )
        for processid, attempt in executor.refused:
            earlier_try = closed[(processid, attempt, executor.executorid)] == 1
            assert earlier_try or (processid, attempt) in timed_out, (
                f"close of {processid} attempt {attempt} refused with no reason in the log"
            )


def test_crashes_while_executors_work_lose_and_duplicate_nothing(fresh_stack: Stack) -> None:
    stack = fresh_stack
    colony = stack.new_colony()
    submitted = {
        stack.client.submit_func_spec(
            node(colony, f"job{i}", maxexectime=2, maxretries=20), colony.owner_prvkey
        ).processid
        for i in range(BUSY_PROCESSES)
    }
    stop = threading.Event()
    executors = [StubbornExecutor(stack, colony, stop) for _ in range(BUSY_EXECUTORS)]
    for executor in executors:
        executor.start()

    def closed_at_least(count: int) -> bool:
        return sum(len(e.closed) for e in executors) >= count

    try:
        for share in (BUSY_PROCESSES // 4, BUSY_PROCESSES // 2):
            wait_until(functools.partial(closed_at_least, share), 30, f"{share} processes closed")
            crash_and_restart(stack)

        def all_succeeded() -> bool:
            done = stack.client.list_processes(
                colony.name, 2 * BUSY_PROCESSES, ProcessState.SUCCESS, colony.owner_prvkey
            )
            return len(done) == BUSY_PROCESSES

        wait_until(all_succeeded, 40, "every process succeeded")
    finally:
        stop.set()
        for executor in executors:
            executor.join(10)
    assert [e.error for e in executors if e.error] == []

    log = read_events(stack.nats.url)
    assert_clean_history(log, colony)
    assert_acknowledged_in_log(log, executors)
    assert sum(len(e.closed) for e in executors) > 0
    closes = log.count_per_process("ProcessClosed")
    assert set(closes) == submitted
    for processid in submitted:
        attempts = [e for e in log.of_kind("ProcessAssigned") if e.processid == processid]
        timeouts = [e for e in log.of_kind("ExecutionTimedOut") if e.processid == processid]
        assert len(attempts) == len(timeouts) + 1, processid
