"""The engine's critical path, message by message: one round trip and one diamond.

``python -m benchmarks.critpath [--rounds N] [--executors N] [--no-tap]`` starts
``colonies dev`` as :mod:`benchmarks.peers` does (``--no-auth``, the nats-server's
monitoring port on), then runs ``--rounds`` round trips (the synchronous client's
``submit_func_spec`` then ``wait``) and as many diamonds (``a -> {b, c} -> d``), one
after the other, and prints:

* **messages per process**: the nats-server's ``/varz`` ``in_msgs`` and ``out_msgs``
  over the whole workload, divided by the processes run (what every publisher sent into
  the server, and what the server delivered to every subscriber, the log's readers
  included);
* **the timeline** of the median round trip and diamond: every message a tap (a
  subscriber on ``>`` in a thread of this process) saw between the call and ``wait``
  returning, as ``ms since the call`` and what it was (a command, its reply, a log
  append and its ack, an "alive?" question, a work ticket, an end notification); with
  ``--no-tap`` the timeline is skipped (the tap adds a delivery per message).

The tap's clock is this process's, so the timeline is one machine's ordering of what the
server relayed, not when each party sent it. Counts of the same kind per process are
the means over the workload.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import nats

from benchmarks.peers import (
    DIAMOND_A,
    EXECUTOR_TYPE,
    NOOP,
    SUM_OF,
    DevStack,
    children,
    free_port,
    load_average,
    role_of,
)
from colonies_es.client import Colonies
from colonies_es.models import Workflow, func_spec
from colonies_es.settings import Settings


@dataclass
class Seen:
    """One message the tap saw: when (ns, this process's perf counter), its subject,
    the reply subject it names, and its size."""

    at: int
    subject: str
    reply: str
    size: int


class Tap:
    """A subscriber on ``>`` in a process of its own (``python -m benchmarks.critpath
    --tap URL FILE``): it records every message it sees with the monotonic clock, which
    all processes of the machine share, and writes them to FILE when stopped."""

    def __init__(self, url: str, directory: Path) -> None:
        self.file = directory / "tap.json"
        ready = directory / "tap.ready"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.critpath", "--tap", url, str(self.file)],
            stdin=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while not ready.exists():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("the tap did not subscribe")
            time.sleep(0.05)
        self.seen: list[Seen] = []

    def stop(self) -> None:
        """Stops the tap and reads what it saw."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(30)
        self.seen = [Seen(*row) for row in json.loads(self.file.read_text())]

    def between(self, start: int, end: int) -> list[Seen]:
        return [seen for seen in self.seen if start <= seen.at <= end]


async def run_tap(url: str, file: Path) -> None:
    """The tap's process: records until its stdin closes."""
    seen: list[tuple[int, str, str, int]] = []
    nc = await nats.connect(url, name="critpath tap")

    async def record(msg: nats.aio.msg.Msg) -> None:
        seen.append((time.perf_counter_ns(), msg.subject, msg.reply, len(msg.data)))

    await nc.subscribe(">", cb=record)
    await nc.flush()
    file.with_name("tap.ready").touch()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await nc.close()
    await asyncio.to_thread(file.write_text, json.dumps(seen))


def describe(messages: list[Seen], requests: dict[str, str]) -> Iterator[str]:
    """What each message is, in words (``requests``: reply subject -> what asked)."""
    for seen in messages:
        subject = seen.subject
        if subject.startswith("colonies.api.replica."):
            what = f"command {subject.split('.')[4]} (to a replica)"
        elif subject.startswith("colonies.api."):
            what = f"command {subject.split('.', 2)[2]}"
        elif ".alive." in subject:
            what = "alive? (engine -> claimer)"
        elif subject.startswith("colonies.ev."):
            what = "log append"
        elif subject.startswith("colonies.work."):
            what = "work ticket"
        elif subject.startswith("colonies.ended."):
            what = "end notification"
        elif subject.startswith("$JS.ACK"):
            what = "JetStream ack (of a delivery)"
        elif subject.startswith("$JS.API"):
            what = "JetStream API " + ".".join(subject.split(".")[2:4])
        elif subject in requests:
            what = f"reply to {requests[subject]}"
        else:
            what = f"other ({subject.split('.')[0]})"
        if seen.reply:
            requests[seen.reply] = what
        yield what


@contextmanager
def dev_stack(directory: Path, executors: int) -> Iterator[tuple[Settings, int, dict[str, int]]]:
    """``colonies dev --no-auth`` with the nats-server's monitoring port on: the
    developer's settings, that port and the pid of a process of each role (engine,
    nats-server, ...)."""
    http_port = free_port()
    packaged = (resources.files("colonies_es") / "nats.conf").read_text()
    config = directory / "nats.conf"
    config.write_text(f"{packaged}\nhttp: 127.0.0.1:{http_port}\n")
    with DevStack.started(
        directory, executors=executors, options=["--no-auth", "--config", str(config)]
    ) as stack:
        roles = {role_of(pid): pid for pid in children(stack.process.pid)}
        yield stack.settings, http_port, roles


def user_system(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def varz(port: int) -> tuple[int, int]:
    """The server's (in_msgs, out_msgs) so far."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/varz", timeout=5) as answer:
        data = json.load(answer)
    return int(data["in_msgs"]), int(data["out_msgs"])


def diamond(colonyname: str) -> Workflow:
    specs = [func_spec("a", [], colonyname, EXECUTOR_TYPE, code=DIAMOND_A)]
    for name, parents in (("b", ["a"]), ("c", ["a"]), ("d", ["b", "c"])):
        spec = func_spec(name, [], colonyname, EXECUTOR_TYPE, code=SUM_OF.format(name=name))
        spec.conditions.dependencies.extend(parents)
        specs.append(spec)
    return Workflow(colonyname=colonyname, functionspecs=specs)


Windows = dict[str, tuple[list[tuple[int, int]], int]]
"""Per workload: the (start, end) of each run (monotonic ns) and processes per run."""


def measure(
    client: Colonies, settings: Settings, http_port: int, roles: dict[str, int], rounds: int
) -> Windows:
    """Runs the round trips, then the diamonds; prints their medians and messages per
    process (/varz); returns when each ran."""
    colonyname, prvkey = settings.colony_name, settings.prvkey
    spec = func_spec("noop", [], colonyname, EXECUTOR_TYPE, code=NOOP)

    def round_trip() -> None:
        process = client.submit_func_spec(spec, prvkey)
        done = client.wait(process, 30, prvkey)
        assert done.state == 2, done  # SUCCESS

    def one_diamond() -> None:
        graph = client.submit_workflow(diamond(colonyname), prvkey)
        last = client.find_process("d", graph.processids, prvkey)
        assert last is not None
        done = client.wait(last, 30, prvkey)
        assert done.state == 2, done
        assert done.output == [6], done

    measured: Windows = {}
    for name, work, processes in (("round trip", round_trip, 1), ("diamond", one_diamond, 4)):
        for _ in range(5):  # warm up
            work()
        time.sleep(0.5)
        windows: list[tuple[int, int]] = []
        before = varz(http_port)
        engine, server = roles["engine"], roles["nats-server"]
        cpu_before = {pid: user_system(pid) for pid in (engine, server)}
        for _ in range(rounds):
            start = time.perf_counter_ns()
            work()
            windows.append((start, time.perf_counter_ns()))
            time.sleep(0.02)  # what follows the reply (the next claim) stays in this window
        time.sleep(0.3)
        after = varz(http_port)
        cpu = {
            pid: [
                1000 * (a - b) / (rounds * processes)
                for a, b in zip(user_system(pid), before, strict=True)
            ]
            for pid, before in cpu_before.items()
        }
        total = rounds * processes
        in_msgs, out_msgs = after[0] - before[0], after[1] - before[1]
        spans = [(end - start) / 1e6 for start, end in windows]
        print(
            f"{name}: median {statistics.median(spans):.2f} ms over {rounds}; per process: "
            f"in_msgs {in_msgs / total:.1f}, out_msgs {out_msgs / total:.1f} (/varz); CPU ms "
            f"(user+system): engine {cpu[engine][0]:.2f}+{cpu[engine][1]:.2f}, nats-server "
            f"{cpu[server][0]:.2f}+{cpu[server][1]:.2f}",
            flush=True,
        )
        measured[name] = (windows, processes)
    return measured


AFTER_RETURN = 15_000_000
"""Nanoseconds after ``wait`` returned that still belong to a run (the executor's next
claim, the end notification)."""


def timeline(name: str, tap: Tap, windows: list[tuple[int, int]], processes: int) -> None:
    """Prints what the tap saw: messages per process by kind, and the median run's."""
    kinds: Counter[str] = Counter()
    for start, end in windows:
        kinds.update(describe(tap.between(start, end + AFTER_RETURN), {}))
    print(f"{name}: messages per process by kind (tap, to 15 ms after the return):")
    for kind, count in kinds.most_common():
        print(f"    {count / (len(windows) * processes):5.2f}  {kind}")
    spans = [end - start for start, end in windows]
    median = sorted(range(len(windows)), key=lambda i: spans[i])[len(windows) // 2]
    start, end = windows[median]
    messages = tap.between(start, end + AFTER_RETURN)
    print(f"  the median one ({spans[median] / 1e6:.2f} ms), ms since the call:")
    for seen, what in zip(messages, describe(messages, {}), strict=True):
        mark = "" if seen.at <= end else "   (after the return)"
        print(f"    {(seen.at - start) / 1e6:7.2f}  {what} [{seen.size} B]{mark}")
    print(f"    {(end - start) / 1e6:7.2f}  wait returned")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.critpath", description=__doc__)
    parser.add_argument("--rounds", type=int, default=50, help="round trips and diamonds")
    parser.add_argument("--executors", type=int, default=4, help="python executors")
    parser.add_argument("--no-tap", action="store_true", help="counts only (no timeline)")
    parser.add_argument(
        "--py-spy",
        type=Path,
        metavar="FILE",
        help="record the engine with py-spy (collapsed stacks, --idle off) into FILE",
    )
    parser.add_argument("--tap", nargs=2, metavar=("URL", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tap:
        asyncio.run(run_tap(args.tap[0], Path(args.tap[1])))
        return 0
    print(f"load average before: {load_average()}")
    with (
        tempfile.TemporaryDirectory(prefix="critpath-") as directory,
        dev_stack(Path(directory), args.executors) as (settings, http_port, roles),
    ):
        engine = roles["engine"]
        print(f"engine pid {engine}", flush=True)
        spy = None
        if args.py_spy is not None:
            command = ["py-spy", "record", "-p", str(engine), "-r", "500", "-f", "raw"]
            spy = subprocess.Popen(
                [*command, "-o", str(args.py_spy), "--nonblocking"], stdout=subprocess.DEVNULL
            )
        tap = None if args.no_tap else Tap(settings.nats.url, Path(directory))
        client = Colonies.from_settings(settings, 30.0)
        try:
            windows = measure(client, settings, http_port, roles, args.rounds)
        finally:
            client.disconnect()
            if tap is not None:
                tap.stop()
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
        if tap is not None:
            for name, (spans, processes) in windows.items():
                timeline(name, tap, spans, processes)
    print(f"load average after: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
