"""``python -m benchmarks [GROUP ...] [--quick] [--runs N] [--json PATH]``."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from benchmarks import GROUPS
from benchmarks.harness import Options, Report, parse_layout, print_report, write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run benchmark groups; print a table and keep the numbers as JSON.",
        epilog="groups: " + "; ".join(f"{name}: {what}" for name, what in GROUPS.items()),
    )
    parser.add_argument("groups", nargs="*", metavar="GROUP", help="default: all groups")
    parser.add_argument("--quick", action="store_true", help="less work per measurement")
    parser.add_argument(
        "--runs", type=int, default=3, help="runs per measurement; the median is reported"
    )
    parser.add_argument(
        "--json",
        type=Path,
        metavar="PATH",
        help="write the results here (default: benchmarks/results/<groups>-<timestamp>.json)",
    )
    parser.add_argument(
        "--peer-dir",
        type=Path,
        metavar="DIR",
        help="peers group: the Celery harness (default: $COLONIES_PEER_DIR, else "
        "../shared/peers/celery next to the repository)",
    )
    parser.add_argument(
        "--install-peer",
        action="store_true",
        help="peers group: without $CELERY_PYTHON, make build/peers/celery-venv with "
        "celery[redis] from PyPI if it is not there (a plain run never downloads)",
    )
    parser.add_argument(
        "--no-peer",
        action="store_true",
        help="peers group: measure this project's side only (faster, for iterating)",
    )
    parser.add_argument(
        "--one-executor",
        action="store_true",
        help="peers group: the layout 1x4, one python executor running 4 functions at a "
        "time (Celery's layout: one process taking work for 4 children); the default",
    )
    parser.add_argument(
        "--layout",
        type=parse_layout,
        metavar="EXECUTORSxFUNCTIONS",
        help="peers group: the python executors of the dev stack, e.g. 4x2 for 4 executors "
        "running 2 functions at a time each (default 1x4, Celery's layout; 4x1 was the "
        "default until the seventh session)",
    )
    parser.add_argument(
        "--dev-option",
        action="append",
        default=[],
        metavar="OPTION",
        help="peers group: one more option for colonies dev, e.g. --dev-option=--prefetch=0 "
        "(repeatable)",
    )
    args = parser.parse_args(argv)
    if args.one_executor and args.layout:
        parser.error("--one-executor is the layout 1x4: give one of them")
    unknown = [name for name in args.groups if name not in GROUPS]
    if unknown:
        parser.error(f"unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    options = Options(
        quick=args.quick,
        runs=args.runs,
        peer_dir=args.peer_dir,
        install_peer=args.install_peer,
        no_peer=args.no_peer,
        layout=(1, 4) if args.one_executor else args.layout,  # 1x4: the default anyway
        dev_options=tuple(args.dev_option),
    )

    reports: list[Report] = []
    for name in args.groups or list(GROUPS):
        print(f"== {name}: {GROUPS[name]}", flush=True)
        group = importlib.import_module(f"benchmarks.{name}")
        report = group.run(options)
        report.quick = options.quick
        reports.append(report)
    for report in reports:
        print_report(report)
    path = write_json(reports, args.json)
    print(f"\nresults written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
