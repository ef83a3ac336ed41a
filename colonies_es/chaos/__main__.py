"""``python -m colonies_es.chaos``: run the fault-injection harness and print its report.

Exit status 0 when the checker found no anomaly, 1 when it found some, 2 for bad
arguments or a run that could not complete (a component that would not come back).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from colonies_es.chaos.run import FAULT_KINDS, run_chaos


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m colonies_es.chaos",
        description="Run a mixed workflow workload on a real stack (nats-server, engine, "
        "projector, executors), SIGKILL and restart components at random points, then "
        "check the raw event log: every acknowledged command has exactly its event, every "
        "workflow ends with its result, the projector's view equals a fresh rebuild, the "
        "audit passes.",
    )
    parser.add_argument("--rounds", type=int, default=20, help="faults to inject (default 20)")
    parser.add_argument("--seed", type=int, help="replay the fault schedule of this seed")
    parser.add_argument(
        "--sync",
        choices=["default", "always"],
        default="default",
        help="nats-server durability: the shipped nats.conf (default) or the same with "
        "sync_interval: always (fsync before every acknowledgement)",
    )
    parser.add_argument(
        "--kinds",
        default=",".join(FAULT_KINDS),
        help=f"comma-separated fault kinds (default {','.join(FAULT_KINDS)})",
    )
    parser.add_argument("--executors", type=int, default=2, help="executor processes")
    parser.add_argument(
        "--engines",
        type=int,
        default=1,
        help="engine replicas in the queue group; engine faults kill each in turn",
    )
    parser.add_argument(
        "--cluster",
        type=int,
        default=1,
        metavar="NODES",
        help="run NATS as a cluster of NODES servers with streams of NODES replicas "
        "(nats faults kill a node); default 1, a single server",
    )
    parser.add_argument(
        "--interval",
        type=float,
        nargs=2,
        default=(1.0, 4.0),
        metavar=("MIN", "MAX"),
        help="seconds between faults, drawn in [MIN, MAX] (default 1 4)",
    )
    parser.add_argument(
        "--dir", type=Path, help="keep the run's files (logs, journals, store) here"
    )
    args = parser.parse_args(argv)
    kinds = [kind.strip() for kind in args.kinds.split(",") if kind.strip()]
    if (
        min(args.rounds + 1, args.executors, args.engines, args.cluster) < 1
        or not kinds
        or set(kinds) - set(FAULT_KINDS)
    ):
        parser.error(
            "--rounds >= 0; --executors, --engines, --cluster >= 1; "
            f"--kinds among {','.join(FAULT_KINDS)}"
        )
    try:
        result = run_chaos(
            args.rounds,
            args.seed,
            sync=args.sync,
            executors=args.executors,
            interval=tuple(args.interval),
            kinds=kinds,
            engines=args.engines,
            nodes=args.cluster,
            directory=args.dir,
        )
    except (RuntimeError, TimeoutError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
