"""The python executor on a real stack: seed workflows, the calling convention, failures,
concurrency, the `colonies executor start` command, and a NATS restart.

Functions travel as source, as users send them: the seed's functions are defined here and
sent with ``func_spec(func=...)``; the others as source text (``code=``).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from colonies_es import Workflow, func_spec
from colonies_es.chaos.journal import Journal, JournalingColonies, read_journals
from colonies_es.cli.dev_seed import MAP_CODE  # the seed's map, sent as text
from colonies_es.client import Colonies, ColoniesConnectionError, ColoniesError
from colonies_es.executor import FunctionFailed, PythonExecutor, execute_function
from colonies_es.models import FuncSpec, Process
from colonies_es.states import ProcessState
from tests.eventlog import command_payload, read_events
from tests.processes import wait_until
from tests.stack import ColonyHandle, Stack

# --- the seed's functions (seed/workflows-tutorial.md), sent as their source -------------


def gen_nums(ctx={}):  # type: ignore[no-untyped-def]  # noqa: B006 - the seed's signature
    return 1, 2


def sum_nums(n1, n2, ctx={}):  # type: ignore[no-untyped-def]  # noqa: B006
    return n1 + n2


def fetch_a(ctx={}):  # type: ignore[no-untyped-def]  # noqa: B006
    return {"source": "A", "value": 10}


def fetch_b(ctx={}):  # type: ignore[no-untyped-def]  # noqa: B006
    return {"source": "B", "value": 20}


def merge(a, b, ctx={}):  # type: ignore[no-untyped-def]  # noqa: B006
    return a["value"] + b["value"]


REDUCE = """
def reduce(*nums, ctx={}):
    total = 0
    for n in nums:
        total += n
    return total
"""

WAIT = 20.0
"""Seconds any single outcome may take before a test gives up."""


# --- helpers -------------------------------------------------------------------------------


def spec(colony: ColonyHandle, funcname: str, code: str, *args: Any, **kwargs: Any) -> FuncSpec:
    """A spec calling ``funcname`` defined in ``code``, for the python-executor type."""
    return func_spec(funcname, list(args), colony.name, "python-executor", code=code, kwargs=kwargs)


@contextlib.contextmanager
def running_executor(
    stack: Stack, colony: ColonyHandle, **options: Any
) -> Iterator[PythonExecutor]:
    """A registered PythonExecutor with its own client, running in a thread until the
    block ends; then it must stop within its poll timeout (plus slack)."""
    client = Colonies("127.0.0.1", stack.nats.port)
    options.setdefault("poll_timeout", 0.5)
    executor = PythonExecutor(client, colony.name, colony.owner_prvkey, **options)
    executor.register()
    stop = threading.Event()
    thread = threading.Thread(target=executor.run, args=(stop,), name="test-executor")
    thread.start()
    try:
        yield executor
    finally:
        stop.set()
        thread.join(executor.poll_timeout + 5)
        client.disconnect()
        assert not thread.is_alive(), "the executor did not stop"


def ended(stack: Stack, colony: ColonyHandle, process: Process | str) -> Process:
    """The process once it has ended (SUCCESS, FAILED or CANCELLED)."""
    return stack.client.wait(process, WAIT, colony.owner_prvkey)


def wait_running(stack: Stack, colony: ColonyHandle, process: Process) -> None:
    """Return once an executor has taken ``process``."""
    wait_until(
        lambda: (
            stack.client.get_process(process.processid, colony.owner_prvkey).state
            == ProcessState.RUNNING
        ),
        WAIT,
        f"{process.spec.funcname} runs",
    )


def node(stack: Stack, colony: ColonyHandle, graphid: str, nodename: str) -> Process:
    graph = stack.client.get_processgraph(graphid, colony.owner_prvkey)
    found = stack.client.find_process(nodename, graph.processids, colony.owner_prvkey)
    assert found is not None, f"no node {nodename!r} in graph {graphid}"
    return found


def graph_state(stack: Stack, colony: ColonyHandle, graphid: str) -> int:
    return stack.client.get_processgraph(graphid, colony.owner_prvkey).state


def run_alone(funcname: str, code: str, *args: Any, **kwargs: Any) -> list[Any]:
    """execute_function on a process made here (no engine: the calling convention only)."""
    process = Process(
        processid="0" * 64, spec=func_spec(funcname, list(args), "c", "t", code=code, kwargs=kwargs)
    )
    return execute_function(process, {"process": process}, {})


@pytest.fixture
def colony(stack: Stack) -> ColonyHandle:
    return stack.new_colony()


# --- the seed's workflows ------------------------------------------------------------------


def test_seed_workflow_gives_three(stack: Stack, colony: ColonyHandle) -> None:
    workflow = Workflow(colonyname=colony.name)
    workflow.functionspecs.append(
        func_spec(func=gen_nums, args=[], colonyname=colony.name, executortype="python-executor")
    )
    second = func_spec(
        func=sum_nums, args=[], colonyname=colony.name, executortype="python-executor"
    )
    second.conditions.dependencies.append("gen_nums")
    workflow.functionspecs.append(second)

    with running_executor(stack, colony):
        graph = stack.client.submit_workflow(workflow, colony.owner_prvkey)
        done = ended(stack, colony, node(stack, colony, graph.processgraphid, "sum_nums"))

    assert done.state == ProcessState.SUCCESS, done.errors
    assert done.input == [1, 2]
    assert done.output == [3]
    assert graph_state(stack, colony, graph.processgraphid) == ProcessState.SUCCESS


def test_multiple_dependencies_give_thirty(stack: Stack, colony: ColonyHandle) -> None:
    workflow = Workflow(colonyname=colony.name)
    for function in (fetch_a, fetch_b, merge):
        workflow.functionspecs.append(
            func_spec(
                func=function, args=[], colonyname=colony.name, executortype="python-executor"
            )
        )
    workflow.functionspecs[2].conditions.dependencies.extend(["fetch_a", "fetch_b"])

    with running_executor(stack, colony):
        graph = stack.client.submit_workflow(workflow, colony.owner_prvkey)
        done = ended(stack, colony, node(stack, colony, graph.processgraphid, "merge"))

    assert done.state == ProcessState.SUCCESS, done.errors
    assert done.output == [30]


def test_map_reduce_adds_children_from_inside_and_gives_fifteen(
    stack: Stack, colony: ColonyHandle
) -> None:
    workflow = Workflow(colonyname=colony.name)
    workflow.functionspecs.append(spec(colony, "map", MAP_CODE))
    reduce_spec = spec(colony, "reduce", REDUCE)
    reduce_spec.conditions.dependencies.append("map")
    workflow.functionspecs.append(reduce_spec)

    with running_executor(stack, colony, concurrency=2):
        graph = stack.client.submit_workflow(workflow, colony.owner_prvkey)
        done = ended(stack, colony, node(stack, colony, graph.processgraphid, "reduce"))

    assert done.state == ProcessState.SUCCESS, done.errors
    assert done.input == [1, 2] * 5
    assert done.output == [15]
    assert (
        len(stack.client.get_processgraph(graph.processgraphid, colony.owner_prvkey).processids)
        == 7
    )


# --- the calling convention ---------------------------------------------------------------


def test_none_becomes_empty_output_and_a_tuple_a_list(stack: Stack, colony: ColonyHandle) -> None:
    nothing = stack.client.submit_func_spec(
        spec(colony, "nothing", "def nothing(ctx={}):\n    return None\n"), colony.owner_prvkey
    )
    pair = stack.client.submit_func_spec(
        spec(colony, "pair", "def pair(ctx={}):\n    return 'a', [1, 2]\n"), colony.owner_prvkey
    )
    single = stack.client.submit_func_spec(
        spec(colony, "single", "def single(ctx={}):\n    return [1, 2]\n"), colony.owner_prvkey
    )
    with running_executor(stack, colony):
        outputs = [ended(stack, colony, p).output for p in (nothing, pair, single)]
    assert outputs == [[], ["a", [1, 2]], [[1, 2]]]


def test_args_and_kwargs_are_passed(stack: Stack, colony: ColonyHandle) -> None:
    code = "def scale(x, y, ctx={}, factor=1, offset=0):\n    return (x + y) * factor + offset\n"
    process = stack.client.submit_func_spec(
        spec(colony, "scale", code, 2, 3, factor=10, offset=1), colony.owner_prvkey
    )
    with running_executor(stack, colony):
        done = ended(stack, colony, process)
    assert done.state == ProcessState.SUCCESS, done.errors
    assert done.output == [51]


def test_code_sees_colonies_func_spec_crypto_and_its_ctx(
    stack: Stack, colony: ColonyHandle
) -> None:
    code = """
def look(ctx={}):
    me = colonies.get_process(ctx["process"].processid, ctx["executor_prvkey"])
    spec = func_spec("x", [], ctx["colonyname"], "t")
    return (me.state, me.assignedexecutorid, ctx["executorid"],
            Crypto().id(ctx["executor_prvkey"]), ctx["colonyname"], spec.funcname)
"""
    process = stack.client.submit_func_spec(spec(colony, "look", code), colony.owner_prvkey)
    with running_executor(stack, colony) as executor:
        done = ended(stack, colony, process)
    assert done.state == ProcessState.SUCCESS, done.errors
    me = executor.executorid
    assert done.output == [ProcessState.RUNNING, me, me, me, colony.name, "x"]


# --- failures ------------------------------------------------------------------------------


def test_a_raising_function_fails_with_type_message_and_traceback(
    stack: Stack, colony: ColonyHandle
) -> None:
    code = "def check(n, ctx={}):\n    if n < 0:\n        raise ValueError(f'negative: {n}')\n"
    process = stack.client.submit_func_spec(spec(colony, "check", code, -4), colony.owner_prvkey)
    with running_executor(stack, colony):
        done = ended(stack, colony, process)
    assert done.state == ProcessState.FAILED
    assert done.errors[0] == "ValueError: negative: -4"
    trace = done.errors[1]
    assert trace.startswith("Traceback (most recent call last):")
    assert ", line 3, in check" in trace
    assert "raise ValueError(f'negative: {n}')" in trace  # the source line, for a debugger
    assert "executor.py" not in trace  # the executor's own frames are left out


@pytest.mark.parametrize(
    ("funcname", "code", "error"),
    [
        ("absent", "def other(ctx={}):\n    pass\n", "the code defines no function named 'absent'"),
        ("broken", "def broken(ctx={}:\n    pass\n", "the code of broken does not compile"),
        (
            "obj",
            "def obj(ctx={}):\n    return object()\n",
            "obj returned a value that cannot be sent as JSON",
        ),
        ("bye", "import sys\ndef bye(ctx={}):\n    sys.exit(3)\n", "SystemExit: 3"),
        ("loads", "import no_such_module_here\n", "the code of loads raised ModuleNotFoundError"),
    ],
)
def test_bad_code_fails_the_process_and_the_executor_goes_on(
    stack: Stack, colony: ColonyHandle, funcname: str, code: str, error: str
) -> None:
    bad = stack.client.submit_func_spec(spec(colony, funcname, code), colony.owner_prvkey)
    good = stack.client.submit_func_spec(
        spec(colony, "ok", "def ok(ctx={}):\n    return 'ok'\n"), colony.owner_prvkey
    )
    with running_executor(stack, colony):
        failed, succeeded = ended(stack, colony, bad), ended(stack, colony, good)
    assert failed.state == ProcessState.FAILED
    assert failed.errors[0].startswith(error), failed.errors
    assert succeeded.output == ["ok"]


def test_an_output_too_large_for_nats_fails_the_process(stack: Stack, colony: ColonyHandle) -> None:
    code = "def big(ctx={}):\n    return 'x' * 2_000_000\n"  # NATS carries 1 MB
    process = stack.client.submit_func_spec(spec(colony, "big", code), colony.owner_prvkey)
    with running_executor(stack, colony):
        done = ended(stack, colony, process)
    assert done.state == ProcessState.FAILED
    assert done.errors[0].startswith("the output of big was refused: too large for NATS")


def test_a_process_without_code_fails_clearly(stack: Stack, colony: ColonyHandle) -> None:
    no_code = func_spec("remote_only", [], colony.name, "python-executor")
    process = stack.client.submit_func_spec(no_code, colony.owner_prvkey)
    with running_executor(stack, colony):
        done = ended(stack, colony, process)
    assert done.state == ProcessState.FAILED
    assert done.errors == ['no code for remote_only: spec.env["code"] is missing']


def test_execute_function_alone_follows_the_convention() -> None:
    assert run_alone("f", "def f(a, b, ctx={}, k=0):\n    return a, b, k\n", 1, 2, k=3) == [1, 2, 3]
    assert run_alone("f", "def f(ctx={}):\n    return ctx['process'].processid[:2]\n") == ["00"]
    with pytest.raises(FunctionFailed) as raised:
        run_alone("f", "def f(ctx={}):\n    return {(1, 2): 3}\n")
    assert "cannot be sent as JSON" in raised.value.errors[0]


# --- concurrency and stopping --------------------------------------------------------------


def test_concurrency_four_runs_four_functions_at_once(stack: Stack, colony: ColonyHandle) -> None:
    code = """
import time

def nap(seconds, ctx={}):
    started = time.time()
    time.sleep(seconds)
    return started, time.time()
"""
    naps = [
        stack.client.submit_func_spec(spec(colony, "nap", code, 1.0), colony.owner_prvkey)
        for _ in range(4)
    ]
    with running_executor(stack, colony, concurrency=4):
        done = [ended(stack, colony, p) for p in naps]
    assert all(p.state == ProcessState.SUCCESS for p in done), [p.errors for p in done]
    starts = [p.output[0] for p in done]
    ends = [p.output[1] for p in done]
    assert max(starts) < min(ends), "the four naps did not all overlap"


def test_eight_workers_share_one_client_and_run_each_process_once(
    stack: Stack, colony: ColonyHandle
) -> None:
    code = "def square(x, ctx={}):\n    return x * x, ctx['process'].processid\n"
    processes = [
        stack.client.submit_func_spec(spec(colony, "square", code, n), colony.owner_prvkey)
        for n in range(100)
    ]
    with running_executor(stack, colony, concurrency=8):
        done = [ended(stack, colony, p) for p in processes]
    assert [p.output for p in done] == [[n * n, p.processid] for n, p in enumerate(processes)]
    assert all(p.retries == 0 for p in done)


def test_an_idle_executors_close_carries_the_claim_it_sealed_while_it_waited(
    stack: Stack, colony: ColonyHandle
) -> None:
    """An idle worker's close carries a held claim sealed while it waited for the reply
    to its previous close (one signature after a function, not two): in a run of round
    trips, the claim that brings process n+1 was signed before process n was submitted.
    Sealing races the engine's answer, so most, not all, of the claims must show it."""
    code = "def one(ctx={}):\n    return 1\n"
    rounds = 8
    with running_executor(stack, colony, poll_timeout=1.0):
        submitted = []
        for _ in range(rounds):
            process = stack.client.submit_func_spec(spec(colony, "one", code), colony.owner_prvkey)
            assert ended(stack, colony, process).output == [1]
            submitted.append(process)
    log = read_events(stack.nats.url)
    signed_at: dict[str, float] = {}
    for event in log.of_kind("ProcessAssigned"):
        signed_at[event.processid or ""] = command_payload(event.state["command"])["ts"]
    ahead = [
        signed_at[following.processid] < before.submissiontime.timestamp()
        for before, following in itertools.pairwise(submitted[1:])
    ]
    assert sum(ahead) >= len(ahead) // 2, ahead


def test_stop_lets_a_running_function_finish(stack: Stack, colony: ColonyHandle) -> None:
    code = "import time\ndef nap(s, ctx={}):\n    time.sleep(s)\n    return 'rested'\n"
    process = stack.client.submit_func_spec(spec(colony, "nap", code, 1.5), colony.owner_prvkey)
    with running_executor(stack, colony):
        wait_running(stack, colony, process)
    # The block's end stopped the executor and waited for it: the nap was finished first.
    done = stack.client.get_process(process.processid, colony.owner_prvkey)
    assert done.state == ProcessState.SUCCESS
    assert done.output == ["rested"]


def test_a_function_running_past_the_grace_period_is_failed(
    stack: Stack, colony: ColonyHandle
) -> None:
    code = "import time\ndef stuck(ctx={}):\n    time.sleep(3)\n"
    process = stack.client.submit_func_spec(spec(colony, "stuck", code), colony.owner_prvkey)
    client = Colonies("127.0.0.1", stack.nats.port)
    executor = PythonExecutor(client, colony.name, colony.owner_prvkey, poll_timeout=0.5, grace=0.2)
    executor.register()
    stop = threading.Event()
    thread = threading.Thread(target=executor.run, args=(stop,))
    thread.start()
    wait_running(stack, colony, process)
    stop.set()
    thread.join(0.5 + 0.2 + 2)
    assert not thread.is_alive(), "run() did not return after the grace period"
    done = stack.client.get_process(process.processid, colony.owner_prvkey)
    assert done.state == ProcessState.FAILED
    assert done.errors[0].startswith("the executor stopped while stuck was still running")
    # The abandoned function was killed with its child process: nothing of it is left.
    assert executor._runners == []
    assert not any(t.name.startswith(executor.executorname) for t in threading.enumerate())
    client.disconnect()


def test_a_journaling_client_records_what_the_executor_and_its_caller_do(
    stack: Stack, colony: ColonyHandle, tmp_path: Path
) -> None:
    """A subclass of the client (the chaos journal) is obeyed by the synchronous methods
    and by the executor's workers, which use the asynchronous client it drives."""
    journal = Journal(tmp_path / "journal")
    client = JournalingColonies(journal, "127.0.0.1", stack.nats.port)
    workflow = Workflow(
        colonyname=colony.name,
        functionspecs=[spec(colony, "one", "def one(ctx={}):\n    return 1\n")],
    )
    graph = client.submit_workflow(workflow, colony.owner_prvkey)  # a synchronous call
    executor = PythonExecutor(client, colony.name, colony.owner_prvkey, poll_timeout=0.5)
    executor.register()
    stop = threading.Event()
    thread = threading.Thread(target=executor.run, args=(stop,))
    thread.start()
    try:
        [processid] = graph.processids
        assert ended(stack, colony, processid).output == [1]
    finally:
        stop.set()
        thread.join(5)
        client.disconnect()
        journal.close()
    records, _ = read_journals([tmp_path / "journal"])
    ops = [(r["op"], r.get("process") or r.get("graph")) for r in records]
    assert ops == [
        ("submit", graph.processgraphid),
        ("claim", processid),
        ("close", processid),
    ], ops
    assert {r["executor"] for r in records[1:]} == {executor.executorid}


# --- registration -------------------------------------------------------------------------


def test_registering_again_with_the_same_identity_is_fine(
    stack: Stack, colony: ColonyHandle
) -> None:
    first = PythonExecutor(stack.client, colony.name, colony.owner_prvkey)
    first.register()
    again = PythonExecutor(
        stack.client, colony.name, colony.owner_prvkey, name=first.executorname, prvkey=first.prvkey
    )
    again.register()
    assert first.executorname.startswith("python-executor-")
    registered = stack.client.get_executor(colony.name, first.executorname, colony.owner_prvkey)
    assert registered.executorid == first.executorid
    assert registered.state == 1  # APPROVED

    impostor = PythonExecutor(
        stack.client, colony.name, colony.owner_prvkey, name=first.executorname
    )
    with pytest.raises(ColoniesError) as refused:
        impostor.register()
    assert refused.value.status == 409


def test_executors_get_unique_names(stack: Stack, colony: ColonyHandle) -> None:
    names = {
        PythonExecutor(
            stack.client, colony.name, colony.owner_prvkey, executortype="gpu"
        ).executorname
        for _ in range(20)
    }
    assert len(names) == 20
    assert all(name.startswith("gpu-") and len(name) == len("gpu-") + 8 for name in names)


# --- `colonies executor start` -------------------------------------------------------------


class CommandOutput:
    """A child process's combined output, read from the file it writes to."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def text(self) -> str:
        return self.path.read_text(errors="replace")

    def wait_for(self, needle: str, process: subprocess.Popen[bytes]) -> None:
        def seen() -> bool:
            if process.poll() is not None and needle not in self.text():
                raise AssertionError(
                    f"exited {process.returncode} before {needle!r}:\n{self.text()}"
                )
            return needle in self.text()

        wait_until(seen, WAIT, f"{needle!r} is printed")


def executor_env(stack: Stack, colony: ColonyHandle) -> dict[str, str]:
    return {
        **os.environ,
        "COLONIES_SERVER_HOST": "127.0.0.1",
        "COLONIES_SERVER_PORT": str(stack.nats.port),
        "COLONIES_COLONY_NAME": colony.name,
        "COLONIES_COLONY_PRVKEY": colony.owner_prvkey,
        "COLONIES_PRVKEY": colony.owner_prvkey,
    }


def start_command(
    env: dict[str, str], log: Path, *args: str
) -> tuple[subprocess.Popen[bytes], CommandOutput]:
    """`colonies executor start ARGS` as a child process, its output going to ``log``."""
    return start([sys.executable, "-m", "colonies_es.cli", "executor", "start", *args], env, log)


def start(
    argv: list[str], env: dict[str, str], log: Path
) -> tuple[subprocess.Popen[bytes], CommandOutput]:
    with log.open("wb") as out:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    return process, CommandOutput(log)


def test_executor_start_registers_runs_and_stops_on_sigterm(
    stack: Stack, colony: ColonyHandle, tmp_path: Path
) -> None:
    command, output = start_command(
        executor_env(stack, colony),
        tmp_path / "executor.log",
        "--type",
        "cli-python",
        "--name",
        "cli-one",
        "--poll-timeout",
        "0.5",
    )
    try:
        output.wait_for(
            f"executor cli-one (cli-python) registered in colony {colony.name}, id ", command
        )
        code = "import time\ndef slow_add(a, b, ctx={}):\n    time.sleep(1)\n    return a + b\n"
        process = stack.client.submit_func_spec(
            func_spec("slow_add", [2, 3], colony.name, "cli-python", code=code), colony.owner_prvkey
        )
        wait_running(stack, colony, process)
        command.send_signal(signal.SIGTERM)  # while slow_add runs: it may finish first
        assert command.wait(WAIT) == 0, output.text()
    finally:
        if command.poll() is None:
            command.kill()
    done = stack.client.get_process(process.processid, colony.owner_prvkey)
    assert done.state == ProcessState.SUCCESS
    assert done.output == [5]
    text = output.text()
    assert f"slow_add {process.processid[:8]} SUCCESS in " in text
    assert "Traceback" not in text


def test_the_example_executor_runs_work_and_stops_on_ctrl_c(
    stack: Stack, colony: ColonyHandle, tmp_path: Path
) -> None:
    example = Path(__file__).parent.parent / "examples" / "python_executor.py"
    command, output = start(
        [sys.executable, str(example), "example-python"],
        executor_env(stack, colony),
        tmp_path / "example.log",
    )
    try:
        output.wait_for("(example-python) registered in colony", command)
        process = stack.client.submit_func_spec(
            func_spec("twice", [21], colony.name, "example-python", code=TWICE),
            colony.owner_prvkey,
        )
        assert ended(stack, colony, process).output == [42]
        command.send_signal(signal.SIGINT)
        assert command.wait(WAIT) == 0, output.text()
    finally:
        if command.poll() is None:
            command.kill()
    assert "Traceback" not in output.text()


TWICE = "def twice(x, ctx={}):\n    return 2 * x\n"


def test_executor_start_without_the_colony_key_says_so_in_one_line(
    stack: Stack, colony: ColonyHandle, tmp_path: Path
) -> None:
    env = executor_env(stack, colony)
    del env["COLONIES_COLONY_PRVKEY"]
    command, output = start_command(env, tmp_path / "out.log", "--type", "t")
    assert command.wait(WAIT) == 2
    assert output.text().strip().splitlines() == [
        "error: missing environment variable: COLONIES_COLONY_PRVKEY "
        "(the executor registers itself with the colony owner's key)"
    ]


def test_executor_start_without_an_engine_says_so_in_one_line(
    nats_url: str, tmp_path: Path
) -> None:
    port = nats_url.rsplit(":", 1)[1]  # a NATS server where no engine answers
    env = {
        **os.environ,
        "COLONIES_SERVER_HOST": "127.0.0.1",
        "COLONIES_SERVER_PORT": port,
        "COLONIES_COLONY_NAME": "nowhere",
        "COLONIES_COLONY_PRVKEY": "1" * 64,
        "COLONIES_PRVKEY": "1" * 64,
    }
    command, output = start_command(env, tmp_path / "out.log", "--type", "t", "--name", "lonely")
    assert command.wait(WAIT) == 1
    lines = output.text().strip().splitlines()
    assert lines[0] == f"connecting to NATS at nats://127.0.0.1:{port}"
    assert len(lines) == 2, lines
    assert lines[1].startswith("error: cannot register executor lonely: no colonies engine")


# --- lost connections ----------------------------------------------------------------------


def retry(call: Callable[[], Any], what: str) -> Any:
    """``call()``, retried while the connection is being re-established."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            return call()
        except ColoniesConnectionError:
            if time.monotonic() > deadline:
                raise AssertionError(f"no connection for {what} within {WAIT} s") from None


def logged(caplog: pytest.LogCaptureFixture, text: str, level: int = logging.INFO) -> int:
    """How many of the executor's log lines at ``level`` or above contain ``text``."""
    return sum(
        text in record.getMessage()
        for record in caplog.records
        if record.name == "colonies.executor" and record.levelno >= level
    )


ECHO = "def echo(x, ctx={}):\n    return x\n"


def assert_closed_once_in_log(stack: Stack, outputs: dict[str, list[Any]]) -> None:
    """Re-read from the raw log after a nats-server crash: a clean history, and each
    process closed exactly once with its output (the close acknowledged before the
    crash included)."""
    log = read_events(stack.nats.url)
    log.assert_versions_contiguous()
    for processid, output in outputs.items():
        assert log.closed_outputs(processid) == [output], processid


def test_the_executor_goes_on_after_a_nats_restart(fresh_stack: Stack) -> None:
    stack = fresh_stack
    colony = stack.new_colony()
    with running_executor(stack, colony, concurrency=2):
        before = stack.client.submit_func_spec(spec(colony, "echo", ECHO, 1), colony.owner_prvkey)
        assert ended(stack, colony, before).output == [1]

        stack.nats.kill()
        stack.nats.start()

        after = retry(
            lambda: stack.client.submit_func_spec(
                spec(colony, "echo", ECHO, 2), colony.owner_prvkey
            ),
            "submitting after the restart",
        )
        done = retry(lambda: ended(stack, colony, after), "waiting after the restart")
    assert done.output == [2]
    assert_closed_once_in_log(stack, {before.processid: [1], after.processid: [2]})


def test_the_executor_goes_on_after_a_nats_and_engine_restart(fresh_stack: Stack) -> None:
    """The executor's side of a NATS restart: its connection comes back and it finds the
    work consumer again (recreated by the restarted engine)."""
    stack = fresh_stack
    colony = stack.new_colony()
    with running_executor(stack, colony, concurrency=2):
        before = stack.client.submit_func_spec(spec(colony, "echo", ECHO, 1), colony.owner_prvkey)
        assert ended(stack, colony, before).output == [1]

        stack.nats.kill()
        stack.nats.start()
        stack.engine.stop()
        stack.engine.start()

        after = retry(
            lambda: stack.client.submit_func_spec(
                spec(colony, "echo", ECHO, 2), colony.owner_prvkey
            ),
            "submitting after the restart",
        )
        done = retry(lambda: ended(stack, colony, after), "waiting after the restart")
    assert done.output == [2]
    assert_closed_once_in_log(stack, {before.processid: [1], after.processid: [2]})


def test_a_result_finished_during_an_outage_is_delivered_afterwards(
    fresh_stack: Stack, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "colonies.executor")
    stack = fresh_stack
    colony = stack.new_colony()
    release = tmp_path / "release"
    code = (
        "import os, time\n"
        "def held(path, ctx={}):\n"
        "    while not os.path.exists(path):\n"
        "        time.sleep(0.01)\n"
        "    return 'kept'\n"
    )
    process = stack.client.submit_func_spec(
        spec(colony, "held", code, str(release)), colony.owner_prvkey
    )
    with running_executor(stack, colony):
        wait_running(stack, colony, process)
        stack.engine.stop()  # no engine answers the close now
        release.touch()
        wait_until(lambda: logged(caplog, "cannot report") > 0, WAIT, "the close is retried")
        stack.engine.start()
        done = ended(stack, colony, process)
    assert done.state == ProcessState.SUCCESS, done.errors
    assert done.output == ["kept"]


def test_an_executor_reports_a_missing_engine_once_and_waits_for_it(
    fresh_stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "colonies.executor")
    stack = fresh_stack
    colony = stack.new_colony()
    process = stack.client.submit_func_spec(spec(colony, "echo", ECHO, 3), colony.owner_prvkey)
    client = Colonies("127.0.0.1", stack.nats.port)
    executor = PythonExecutor(client, colony.name, colony.owner_prvkey, concurrency=2)
    executor.register()
    stack.engine.stop()
    stop = threading.Event()
    thread = threading.Thread(target=executor.run, args=(stop,))
    thread.start()
    try:
        wait_until(
            lambda: logged(caplog, "next attempt in", logging.DEBUG) >= 4,
            WAIT,
            "several attempts failed",
        )
        stack.engine.start()
        done = retry(lambda: ended(stack, colony, process), "waiting for the echo")
    finally:
        stop.set()
        thread.join(executor.poll_timeout + 5)
        client.disconnect()
    assert done.output == [3]
    assert logged(caplog, "lost the connection") == 1  # one line for the whole outage
    assert logged(caplog, "taking work again") == 1
