"""A python executor: runs the functions submitted for its type until Ctrl-C or SIGTERM.

    source .colonies/dev.env    # the COLONIES_* variables `colonies dev` writes
    python3 examples/python_executor.py [executortype]    # default: python-executor

It registers a fresh executor identity with the colony owner's key
(COLONIES_COLONY_PRVKEY), then takes work: each process carries its function's source,
which runs with ``colonies`` (this executor's client), ``func_spec`` and ``Crypto`` as
globals. `colonies executor start --type T` does the same, with more options.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

from colonies_es import colonies_client
from colonies_es.executor import PythonExecutor


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    client, colonyname, colony_prvkey, _, _ = colonies_client()
    if colony_prvkey is None:
        sys.exit("COLONIES_COLONY_PRVKEY is not set: it is needed to register the executor")
    executortype = sys.argv[1] if len(sys.argv) > 1 else "python-executor"
    executor = PythonExecutor(client, colonyname, colony_prvkey, executortype=executortype)

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    with client:
        executor.register()
        executor.run(stop)  # returns once stopped and running functions have finished


if __name__ == "__main__":
    main()
