"""`workflow submit --wait`: wait for a workflow to end, showing its progress on stderr.

Progress goes to stderr so that stdout keeps only the result (the table, or ``--json``):
on a terminal a rich spinner line that updates in place, elsewhere one plain line each
time the counts change. A warning (once per executor type) says when processes wait for
an executor type that no approved executor of the colony serves: such a workflow would
otherwise wait forever without a word.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from rich.console import Console

from colonies_es.cli.common import fail, state_name
from colonies_es.client import Colonies
from colonies_es.client.async_client import ENDED_STATES
from colonies_es.models import Process
from colonies_es.states import ExecutorState, ProcessState

__all__ = ["EXECUTOR_CHECK_INTERVAL", "WAIT_POLL", "wait_for_end"]

WAIT_POLL = 0.3
"""Seconds between two reads of the workflow."""
EXECUTOR_CHECK_INTERVAL = 5.0
"""Seconds between two checks that every needed executor type has an approved executor."""

_FINAL_PROCESS_STATES = frozenset({ProcessState.SUCCESS, ProcessState.CANCELLED})
"""A process in one of these states never changes again (a FAILED one may be retried)."""


@dataclass
class _Watch:
    """What is known of the workflow's processes, refreshed each poll."""

    client: Colonies
    prvkey: str
    processes: dict[str, Process] = field(default_factory=dict)

    def refresh(self, processids: list[str]) -> None:
        """Read the processes that may still change (new ones and unfinished ones)."""
        for processid in processids:
            known = self.processes.get(processid)
            if known is None or known.state not in _FINAL_PROCESS_STATES:
                self.processes[processid] = self.client.get_process(processid, self.prvkey)

    def summary(self) -> str:
        """``"2 of 5 processes: 1 SUCCESS, 1 RUNNING, 3 WAITING"``."""
        counts = Counter(state_name(p.state) for p in self.processes.values())
        done = counts["SUCCESS"]
        order = ("SUCCESS", "RUNNING", "WAITING", "FAILED", "CANCELLED")
        parts = [f"{counts[name]} {name}" for name in order if counts[name]]
        return f"{done} of {len(self.processes)} processes done: {', '.join(parts)}"

    def waiting_types(self) -> set[str]:
        """The executor types of the processes still waiting to be assigned."""
        return {
            p.spec.conditions.executortype
            for p in self.processes.values()
            if p.state == ProcessState.WAITING
        }


def wait_for_end(
    client: Colonies, processgraphid: str, colonyname: str, prvkey: str, timeout: float | None
) -> None:
    """Return once the graph has ended (SUCCESS, FAILED or CANCELLED), showing progress
    on stderr. Exits with one line when ``timeout`` seconds pass first, or on Ctrl-C
    (status 130; the workflow keeps running)."""
    console = Console(stderr=True, highlight=False)
    watch = _Watch(client, prvkey)
    deadline = None if timeout is None else time.monotonic() + timeout
    warned: set[str] = set()
    next_check = time.monotonic()
    shown = ""
    status = console.status("waiting for the workflow") if console.is_terminal else None
    try:
        if status is not None:
            status.start()
        while True:
            graph = client.get_processgraph(processgraphid, prvkey)
            watch.refresh(graph.processids)
            if graph.state in ENDED_STATES:
                return
            if time.monotonic() >= next_check:
                _warn_unserved(console, client, colonyname, prvkey, watch, warned)
                next_check = time.monotonic() + EXECUTOR_CHECK_INTERVAL
            line = f"{state_name(graph.state)}: {watch.summary()}"
            if status is not None:
                status.update(line)
            elif line != shown:
                console.print(line, soft_wrap=True)
            shown = line
            if deadline is not None and time.monotonic() >= deadline:
                fail(
                    f"workflow {processgraphid} has not ended within {timeout:g} s "
                    f"({line}); it keeps running"
                )
            time.sleep(WAIT_POLL)
    except KeyboardInterrupt:
        fail(
            f"interrupted: workflow {processgraphid} keeps running "
            f"(colonies workflow get {processgraphid[:12]})",
            status=130,
        )
    finally:
        if status is not None:
            status.stop()


def _warn_unserved(
    console: Console,
    client: Colonies,
    colonyname: str,
    prvkey: str,
    watch: _Watch,
    warned: set[str],
) -> None:
    """Warn once per executor type that waiting processes need and no approved
    executor of the colony has."""
    needed = watch.waiting_types() - warned
    if not needed:
        return
    served = {
        e.executortype
        for e in client.list_executors(colonyname, prvkey)
        if e.state == ExecutorState.APPROVED
    }
    for executortype in sorted(needed - served):
        warned.add(executortype)
        console.print(
            f"warning: no approved executor of type {executortype!r} in colony {colonyname}: "
            f"its processes wait until one runs (colonies executor start --type "
            f"{executortype})",
            soft_wrap=True,
            style="yellow" if console.is_terminal else None,
        )
    sys.stderr.flush()
