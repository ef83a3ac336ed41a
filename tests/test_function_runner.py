"""Where an executor's functions run: a stoppable child process, or (in a daemonic
process, which may not start children) the calling thread."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from typing import Any

from colonies_es.function_runner import FunctionRunner, RunResult
from colonies_es.models import Process, func_spec

CODE = "def double(x, ctx=None):\n    return 2 * x\n"


def run(runner: FunctionRunner, process: Process, ctx: dict[str, Any] | None = None) -> RunResult:
    """The runner's run of ``process``, on an event loop of its own (no ``colonies``)."""
    return asyncio.run(runner.run(process, ctx or {}, None))


def _process() -> Process:
    spec = func_spec("double", [21], "c", "python-executor", code=CODE)
    return Process(processid="p" * 64, spec=spec)


def _run_in_this_process(results: Any) -> None:
    runner = FunctionRunner(None, {})
    try:
        outcome = run(runner, _process())
        results.put((outcome.output, outcome.errors))
    finally:
        runner.close()


def test_a_function_runs_in_a_child_process_and_returns_its_output() -> None:
    runner = FunctionRunner(None, {})
    try:
        outcome = run(runner, _process())
    finally:
        runner.close()
    assert (outcome.output, outcome.errors) == ([42], [])


def test_an_executor_in_a_daemonic_process_runs_functions_in_its_thread() -> None:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    daemon = context.Process(target=_run_in_this_process, args=(results,), daemon=True)
    daemon.start()
    try:
        assert results.get(timeout=60) == ([42], [])
    finally:
        daemon.join(10)
    assert daemon.exitcode == 0


def _spec_process(funcname: str, code: str, *args: Any) -> Process:
    return Process(processid="q" * 64, spec=func_spec(funcname, list(args), "c", "t", code=code))


def test_a_function_of_the_same_name_with_other_code_runs_its_own_code() -> None:
    """The child keeps compiled code per source: a changed function is not the old one."""
    runner = FunctionRunner(None, {})
    try:
        first = run(runner, _spec_process("f", "def f(ctx=None):\n    return 1\n"))
        again = run(runner, _spec_process("f", "def f(ctx=None):\n    return 1\n"))
        changed = run(runner, _spec_process("f", "def f(ctx=None):\n    return 2\n"))
        broken = run(runner, _spec_process("f", "def f(ctx=None):\n    return 1 +\n"))
    finally:
        runner.close()
    assert (first.output, again.output, changed.output) == ([1], [1], [2])
    assert broken.errors[0].startswith("the code of f does not compile"), broken.errors


def test_the_ctx_process_is_the_process_the_function_runs_for() -> None:
    """The process crosses to the child as JSON; ``ctx["process"]`` is that same process."""
    code = "def who(ctx=None):\n    return ctx['process'].processid, ctx['extra']\n"
    process = _spec_process("who", code)
    runner = FunctionRunner(None, {})
    try:
        outcome = run(runner, process, {"process": process, "extra": 7})
    finally:
        runner.close()
    assert outcome.output == ["q" * 64, 7], outcome.errors


class _Calls:
    """What a function's ``colonies`` calls reach in :meth:`FunctionRunner.run`."""

    async def add(self, a: int, b: int) -> int:
        return a + b


def test_run_awaits_the_child_and_its_calls_on_the_loop() -> None:
    code = "def calls(ctx=None):\n    return colonies.add(2, 3)\n"
    runner = FunctionRunner(None, {})

    async def with_calls() -> Any:
        return await runner.run(_spec_process("calls", code), {}, _Calls())

    try:
        outcome = asyncio.run(with_calls())
    finally:
        runner.close()
    assert (outcome.output, outcome.errors, outcome.stopped) == ([5], [], False)


def test_stop_kills_the_function_that_run_waits_for() -> None:
    code = "import time\n\ndef forever(ctx=None):\n    time.sleep(600)\n"
    runner = FunctionRunner(None, {})

    async def stopped_at_once() -> tuple[Any, float]:
        started = time.monotonic()
        asyncio.get_running_loop().call_later(0.3, runner.stop)
        outcome = await runner.run(_spec_process("forever", code), {}, _Calls())
        return outcome, time.monotonic() - started

    try:
        outcome, seconds = asyncio.run(stopped_at_once())
        after = run(runner, _process())  # a new child for the next function
    finally:
        runner.close()
    assert outcome.stopped
    assert seconds < 30
    assert after.output == [42]


def test_a_child_that_died_between_functions_is_replaced() -> None:
    runner = FunctionRunner(None, {})
    try:
        assert run(runner, _process()).output == [42]
        child = runner._child
        assert child is not None
        child.kill()  # from outside, while no function runs
        child.join(10)
        assert run(runner, _process()).output == [42]
    finally:
        runner.close()


def test_on_one_loop_the_pipe_stays_watched_and_a_dead_child_does_not_keep_it_busy() -> None:
    """The child's pipe is registered with the loop once for many functions; when the
    child dies between functions, its end of file is seen once (the loop does not spin
    on it) and the next function gets a new child."""
    runner = FunctionRunner(None, {})

    async def on_one_loop() -> tuple[list[Any], float, list[Any]]:
        loop = asyncio.get_running_loop()
        registered: list[int] = []
        add_reader = loop.add_reader

        def counted(fd: int, callback: Any, *args: Any) -> None:
            registered.append(fd)
            add_reader(fd, callback, *args)

        loop.add_reader = counted  # type: ignore[method-assign]
        outputs = []
        for _ in range(5):
            outputs.append((await runner.run(_process(), {}, None)).output)
            await asyncio.sleep(0)  # the loop looks at the pipe between functions
        assert len(registered) == 1, f"registered {len(registered)} times for 5 functions"
        child = runner._child
        assert child is not None
        child.kill()
        await asyncio.to_thread(child.join, 10)
        cpu = time.process_time()
        await asyncio.sleep(1.0)  # the pipe's end of file arrives meanwhile
        busy = time.process_time() - cpu
        after = (await runner.run(_process(), {}, None)).output
        return outputs, busy, after

    try:
        outputs, busy, after = asyncio.run(on_one_loop())
    finally:
        runner.close()
    assert outputs == [[42]] * 5
    assert busy < 0.1, f"the loop used {busy:.2f} s of CPU in 1 s with nothing to do"
    assert after == [42]


def test_the_loop_stays_free_while_a_function_runs_right_after_another() -> None:
    """Waiting for the child never blocks the loop, even when a run starts as soon as the
    previous one returned (a look at the pipe that the loop made before the previous
    result was read must not wake the new wait early and read in a blocking way)."""
    code = "import time\n\ndef nap(ctx=None):\n    time.sleep(0.6)\n    return 1\n"
    runner = FunctionRunner(None, {})

    async def back_to_back() -> tuple[list[Any], int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        first = await runner.run(_process(), {}, None)
        ticking = asyncio.create_task(ticker())
        second = await runner.run(_spec_process("nap", code), {}, None)
        ticking.cancel()
        return [first.output, second.output], ticks

    try:
        outputs, ticks = asyncio.run(back_to_back())
    finally:
        runner.close()
    assert outputs == [[42], [1]]
    assert ticks >= 3, f"the loop ticked {ticks} times in 0.6 s"
