"""One rebuild of a projector's view from the whole log, in a process of its own.

:mod:`benchmarks.projector_paired` runs it with the interpreter and ``PYTHONPATH`` of the
source tree being measured, by path and with ``-P`` (so that this directory does not
shadow anything)::

    python -P benchmarks/rebuild_once.py NATS_URL SEAL_KEY_HEX LAST_SEQUENCE VIEW_FILE

It imports only the standard library and that tree's ``colonies_es`` (what every tree
since the sixth session has: ``run_projector``, ``GC_THRESHOLDS``), runs the projector
as ``colonies projector`` would (its collector's thresholds) on a new view until the
view has committed ``LAST_SEQUENCE``, and prints one JSON line: ``seconds`` from the
call to then and ``cpu`` seconds of this process to then (all its threads).
"""

from __future__ import annotations

import gc
import json
import sqlite3
import sys
import time
from pathlib import Path

import anyio

from colonies_es.cli.projector import GC_THRESHOLDS
from colonies_es.projections.runner import run_projector
from colonies_es.settings import Settings

TIMEOUT = 600.0


class Committed:
    """The position the view has committed (0 before it has one), read on one read-only
    connection opened once the file exists."""

    def __init__(self, view: Path) -> None:
        self.view = view
        self.connection: sqlite3.Connection | None = None

    def __call__(self) -> int:
        if self.connection is None:
            if not self.view.exists():
                return 0
            self.connection = sqlite3.connect(f"file:{self.view}?mode=ro", uri=True, timeout=5)
        try:
            row = self.connection.execute("SELECT MAX(notification_id) FROM tracking").fetchone()
        except sqlite3.OperationalError:  # the tables are not made yet
            return 0
        return int(row[0] or 0)

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()


async def rebuild(url: str, seal_key: str, last: int, view: Path) -> tuple[float, float]:
    """Seconds and CPU seconds from the projector's start until ``view`` has ``last``."""
    settings = Settings.load({}, nats_url=url, event_seal_key=seal_key, projector_db=str(view))
    committed = Committed(view)
    started, cpu = time.perf_counter(), time.process_time()
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(run_projector, settings)
            with anyio.fail_after(TIMEOUT):
                while committed() < last:  # noqa: ASYNC110 (the file is the only signal)
                    await anyio.sleep(0.01)
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
            tasks.cancel_scope.cancel()
    finally:
        committed.close()
    return seconds, cpu


def main() -> None:
    url, seal_key, last, view = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    gc.set_threshold(*GC_THRESHOLDS)
    seconds, cpu = anyio.run(rebuild, url, seal_key, last, view)
    print(json.dumps({"seconds": seconds, "cpu": cpu}))


if __name__ == "__main__":
    main()
