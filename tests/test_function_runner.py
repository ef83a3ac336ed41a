"""Where an executor's functions run: a stoppable child process, or (in a daemonic
process, which may not start children) the calling thread."""

from __future__ import annotations

import multiprocessing
from typing import Any

from colonies_es.function_runner import FunctionRunner
from colonies_es.models import Process, func_spec

CODE = "def double(x, ctx=None):\n    return 2 * x\n"


def _process() -> Process:
    spec = func_spec("double", [21], "c", "python-executor", code=CODE)
    return Process(processid="p" * 64, spec=spec)


def _run_in_this_process(results: Any) -> None:
    runner = FunctionRunner(None, {})
    try:
        outcome = runner.run(_process(), {}, lambda: False)
        results.put((outcome.output, outcome.errors))
    finally:
        runner.close()


def test_a_function_runs_in_a_child_process_and_returns_its_output() -> None:
    runner = FunctionRunner(None, {})
    try:
        outcome = runner.run(_process(), {}, lambda: False)
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
