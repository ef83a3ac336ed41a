"""A chaos executor: the real :class:`~colonies_es.executor.PythonExecutor`, with a client
that journals every acknowledged command (:mod:`.journal`).

``python -m colonies_es.chaos.worker --nats URL --colony NAME --name NAME --journal PATH``
with the colony owner's key in ``COLONIES_COLONY_PRVKEY`` and the executor's own key in
``COLONIES_PRVKEY`` (the same on every restart, so a restarted executor is the same
identity). It registers (waiting for an engine, as after a crash), prints
``chaos executor ready`` and works until SIGTERM. The harness SIGKILLs it at random.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from colonies_es.chaos.journal import Journal, JournalingColonies
from colonies_es.chaos.workload import EXECUTOR_TYPE
from colonies_es.client import ColoniesConnectionError, ColoniesError
from colonies_es.executor import PythonExecutor

READY_LINE = "chaos executor ready"
REGISTER_PATIENCE = 60.0
"""Seconds a starting executor keeps trying to register while no engine answers."""


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m colonies_es.chaos.worker")
    parser.add_argument("--nats", required=True, help="NATS URL(s), comma separated")
    parser.add_argument("--colony", required=True, help="colony name")
    parser.add_argument("--name", required=True, help="executor name")
    parser.add_argument("--journal", required=True, type=Path, help="journal file (appended)")
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    journal = Journal(args.journal)
    servers = [url.strip() for url in args.nats.split(",") if url.strip()]
    client = JournalingColonies(journal, servers=servers, timeout=3.0)
    executor = PythonExecutor(
        client,
        args.colony,
        os.environ["COLONIES_COLONY_PRVKEY"],
        executortype=EXECUTOR_TYPE,
        name=args.name,
        concurrency=args.concurrency,
        prvkey=os.environ["COLONIES_PRVKEY"],
        poll_timeout=1.0,
        grace=0.0,
    )
    stop = threading.Event()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_sigterm)
    deadline = time.monotonic() + REGISTER_PATIENCE
    while True:
        try:
            executor.register()
            break
        except (ColoniesConnectionError, ColoniesError) as error:
            if time.monotonic() > deadline or stop.is_set():
                print(f"error: cannot register: {error}", file=sys.stderr)
                sys.exit(1)
            stop.wait(0.2)
    print(f"{READY_LINE} (pid {os.getpid()})", flush=True)
    executor.run(stop)
    client.disconnect()
    journal.close()


if __name__ == "__main__":
    main()
