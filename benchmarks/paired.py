"""Paired A/B of the ``peers`` workloads: the same workload on two versions of the code,
taking turns in one sitting, so that a shared machine's load falls on both alike.

Each round starts a fresh ``colonies dev`` stack (:class:`benchmarks.peers.DevStack`)
for each side, in alternating order (A B, then B A, ...), warms it up with a small run
of the workload, then measures it ``--per-stack`` times. A side's stack (engine,
executors, projector) runs the code of its source tree: the tree is put first on
``PYTHONPATH`` of the ``colonies dev`` it starts (this process, the driving client, is
the same for both). Every measured workload is verified from the log as ``peers`` does.

Usage::

    git worktree add /tmp/base <commit>     # or: git archive <commit> | tar -x -C /tmp/base
    python -m venv /tmp/base/.venv && /tmp/base/.venv/bin/pip install -e "/tmp/base[dev]"
    python -m benchmarks.paired --base /tmp/base [--workload fanout] [--rounds 3]

A tree with a ``.venv`` of its own runs its stack with that interpreter: an editable
install maps ``cli/`` and ``projections/`` to the installed tree whatever ``PYTHONPATH``
says, so without it side A would run B's command line and projector.

It prints each measurement (figure, CPU ms per process by party, the engine's
timestamps' breakdown where the workload has one), then per side the median, min..max
and the median CPU per process, with the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

from benchmarks.harness import parse_layout
from benchmarks.peers import FULL, QUICK, CpuMeter, DevStack, Measured, Workloads, load_average

ROOT = Path(__file__).resolve().parent.parent

WORKLOADS: dict[str, tuple[str, Callable[[Workloads], Callable[[], Measured]], str]] = {
    "throughput": ("throughput", lambda w: w.throughput, "tasks/s"),
    "round_trip": ("round_trip_p50", lambda w: w.round_trips, "ms"),
    "fanout": ("fanout", lambda w: w.fanout, "s"),
    "fanout_batch": ("fanout_batch", lambda w: partial(w.fanout, batch=True), "s"),
    "diamond": ("diamond", lambda w: w.diamonds, "ms"),
}
"""--workload name -> (its key in Measured.values, the measurement, unit)."""


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.paired",
        description="Paired A/B of one peers workload: A = the --base source tree, "
        "B = this one (or --new), fresh stacks taking turns in one sitting.",
    )
    parser.add_argument("--base", required=True, type=Path, help="source tree of side A")
    parser.add_argument("--new", type=Path, default=ROOT, help="source tree of side B")
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="fanout")
    parser.add_argument("--rounds", type=int, default=3, help="stacks per side (default 3)")
    parser.add_argument("--per-stack", type=int, default=2, help="measurements per stack")
    parser.add_argument("--quick", action="store_true", help="peers' --quick sizes")
    parser.add_argument(
        "--layout",
        type=parse_layout,
        default=(4, 1),
        metavar="EXECUTORSxFUNCTIONS",
        help="4x1: four executors of one worker each (the default); 1x4: one executor of "
        "four workers (Celery's layout, the peers group's default)",
    )
    options = parser.parse_args()
    for tree in (options.base, options.new):
        if not (tree / "colonies_es").is_dir():
            parser.error(f"{tree} is not a source tree of this project (no colonies_es/)")
    key, measurement, unit = WORKLOADS[options.workload]
    trees = {"A": options.base.resolve(), "B": options.new.resolve()}
    figures: dict[str, list[float]] = {side: [] for side in trees}
    cpu: dict[str, list[float]] = {side: [] for side in trees}
    executors, workers = options.layout
    print(f"A = {trees['A']}\nB = {trees['B']}\nlayout {executors}x{workers}")
    print(f"load average before {load_average()}")
    for number in range(options.rounds):
        for side in ("A", "B") if number % 2 == 0 else ("B", "A"):
            os.environ["PYTHONPATH"] = str(trees[side])
            with (
                tempfile.TemporaryDirectory(prefix="colonies-bench-paired-") as tmp,
                DevStack.started(
                    Path(tmp), executors, workers=workers, python=_python_of(trees[side])
                ) as stack,
            ):
                workloads = Workloads(stack, QUICK if options.quick else FULL)
                try:
                    workloads.warm_up()
                    for _ in range(options.per_stack):
                        meter = CpuMeter(stack)
                        with meter.measuring():
                            measured = measurement(workloads)()
                        measured.verify()
                        per_process = meter.per_process_ms(measured.processes)
                        figures[side].append(measured.values[key])
                        cpu[side].append(per_process["total"])
                        parties = ", ".join(f"{k} {v:.2f}" for k, v in per_process.items())
                        more = f"; {measured.breakdown()}" if measured.breakdown else ""
                        print(
                            f"round {number + 1} {side}: {measured.values[key]:.2f} {unit}, "
                            f"CPU ms/process {parties}{more}",
                            flush=True,
                        )
                finally:
                    workloads.close()
    print(f"load average after {load_average()}")
    for side in trees:
        values = figures[side]
        print(
            f"{side}: {options.workload} median {statistics.median(values):.2f} {unit} "
            f"({min(values):.2f}..{max(values):.2f}), CPU median "
            f"{statistics.median(cpu[side]):.2f} ms/process, n={len(values)}"
        )
    print(
        f"B / A (medians): {statistics.median(figures['B']) / statistics.median(figures['A']):.2f}"
    )


def _python_of(tree: Path) -> str:
    """The interpreter of ``tree``'s own virtual environment (``tree/.venv``) if it has
    one, else this one. An editable install maps ``colonies_es.cli`` and
    ``colonies_es.projections`` to the installed tree's ``cli/`` and ``projections/``
    whatever ``PYTHONPATH`` says, so a tree whose CLI or projector differs needs its own
    venv (``python -m venv tree/.venv && tree/.venv/bin/pip install -e tree``)."""
    own = tree / ".venv" / "bin" / "python"
    return str(own) if own.exists() else sys.executable


if __name__ == "__main__":
    main()
