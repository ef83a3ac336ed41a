"""Paired A/B of the projector's rebuild: two versions of the code rebuilding a view from
the same log on the same server, taking turns in one sitting, so that a shared
machine's load falls on both alike.

One of the ``projector`` group's logs (:mod:`benchmarks.projector`: small workflows by
default, or chains) is written once to a fresh server. Each round measures the raw
replay of it (this process, as the ``projector`` group does), then each side's rebuild
(A B, then B A, ...) in a process of its own (:mod:`benchmarks.rebuild_once`) running
that side's source tree with its own venv. Each measurement prints the rebuild's
events/s, its ratio to the raw replay measured just before it and its CPU per event;
then per side the medians, and B / A.

Usage::

    git worktree add --detach /tmp/base <commit>
    python -m venv /tmp/base/.venv && /tmp/base/.venv/bin/pip install -e "/tmp/base[dev]"
    python -m benchmarks.projector_paired --base /tmp/base [--log chains] [--rounds 4]

A tree needs a venv of its own: an editable install maps ``colonies_es.projections`` to
the installed tree's ``projections/`` whatever ``PYTHONPATH`` says.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.harness import nats_server
from benchmarks.peers import load_average
from benchmarks.projector import (
    FULL_GRAPHS,
    FULL_WORKFLOWS,
    QUICK_GRAPHS,
    QUICK_WORKFLOWS,
    _log_payloads,
    _raw_replay,
    _write_log,
)

ROOT = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).resolve().parent / "rebuild_once.py"


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.projector_paired",
        description="Paired A/B of the projector's rebuild: A = the --base source tree, "
        "B = this one (or --new), taking turns on one log in one sitting.",
    )
    parser.add_argument("--base", required=True, type=Path, help="source tree of side A")
    parser.add_argument("--new", type=Path, default=ROOT, help="source tree of side B")
    parser.add_argument("--log", choices=("workflows", "chains"), default="workflows")
    parser.add_argument("--rounds", type=int, default=4, help="rebuilds per side (default 4)")
    parser.add_argument("--quick", action="store_true", help="the projector group's --quick logs")
    options = parser.parse_args()
    for tree in (options.base, options.new):
        if not (tree / "colonies_es").is_dir():
            parser.error(f"{tree} is not a source tree of this project (no colonies_es/)")
    trees = {"A": options.base.resolve(), "B": options.new.resolve()}
    print(f"A = {trees['A']}\nB = {trees['B']}\nload average before {load_average()}")
    seal_key = os.urandom(32)
    if options.log == "chains":
        payloads = _log_payloads(seal_key, chains=QUICK_GRAPHS if options.quick else FULL_GRAPHS)
    else:
        workflows = QUICK_WORKFLOWS if options.quick else FULL_WORKFLOWS
        payloads = _log_payloads(seal_key, workflows=workflows)
    rates: dict[str, list[float]] = {side: [] for side in trees}
    ratios: dict[str, list[float]] = {side: [] for side in trees}
    cpu: dict[str, list[float]] = {side: [] for side in trees}
    with nats_server() as url, tempfile.TemporaryDirectory(prefix="colonies-bench-") as tmp:
        events = asyncio.run(_write_log(url, payloads))
        print(f"{options.log}: {events:,} events")
        for number in range(options.rounds):
            for side in ("A", "B") if number % 2 == 0 else ("B", "A"):
                raw = asyncio.run(_raw_replay(url, events)).rate
                view = Path(tmp) / f"view-{side}-{number}.sqlite"
                seconds, cpu_seconds = _rebuild(trees[side], url, seal_key.hex(), events, view)
                rates[side].append(events / seconds)
                ratios[side].append(events / seconds / raw)
                cpu[side].append(cpu_seconds / events * 1e6)
                print(
                    f"round {number + 1} {side}: rebuild {events / seconds:,.0f} events/s, "
                    f"raw {raw:,.0f}/s (ratio {events / seconds / raw:.2f}), CPU "
                    f"{cpu_seconds / events * 1e6:.1f} us/event; load {load_average()}",
                    flush=True,
                )
    print(f"load average after {load_average()}")
    for side in trees:
        print(
            f"{side}: rebuild median {statistics.median(rates[side]):,.0f} events/s "
            f"({min(rates[side]):,.0f}..{max(rates[side]):,.0f}), ratio to the raw replay "
            f"median {statistics.median(ratios[side]):.2f}, CPU median "
            f"{statistics.median(cpu[side]):.1f} us/event, n={len(rates[side])}"
        )
    speedup = statistics.median(rates["B"]) / statistics.median(rates["A"])
    print(f"B / A (median events/s): {speedup:.2f}")


def _rebuild(tree: Path, url: str, seal_key: str, events: int, view: Path) -> tuple[float, float]:
    """(seconds, CPU seconds) of one rebuild by ``tree``'s code, in a child process run
    by the interpreter of the tree's own venv (this one if it has none)."""
    own = tree / ".venv" / "bin" / "python"
    python = str(own) if own.exists() else sys.executable
    done = subprocess.run(
        [python, "-P", str(CHILD), url, seal_key, str(events), str(view)],
        env={**os.environ, "PYTHONPATH": str(tree)},
        cwd=view.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"the rebuild by {tree} failed:\n{done.stderr.strip()}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return float(figures["seconds"]), float(figures["cpu"])


if __name__ == "__main__":
    main()
