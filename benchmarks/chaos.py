"""Chaos: the fault-injection harness (:mod:`colonies_es.chaos`) as a measurement.

Two runs on fresh stacks, each with the checker afterwards:

- the shipped ``nats.conf``: every kind of fault in turn (engine, executor, projector,
  nats-server), 200 faults (``--quick``: 12);
- the same configuration with ``sync_interval: always``, nats-server SIGKILLed only, 20
  times (``--quick``: 4).

Reported per run: faults injected per minute, workflows completed per minute, commands
acknowledged, anomalies (target 0: the only target, absolute), and the recovery time
after each kind of fault (p50/p99 seconds, from the restart until the component serves
again, as :mod:`colonies_es.chaos.run` defines it). The seed of each run is printed and
kept in the JSON: ``python -m colonies_es.chaos --seed N`` replays its fault schedule.

A SIGKILLed nats-server loses nothing the operating system already has: this measures
process crashes, not power loss (see DESIGN.md, "Fault injection and what 'nothing
lost' means").
"""

from __future__ import annotations

from benchmarks.harness import Options, Report, Sample, environment
from colonies_es.chaos import FAULT_KINDS, ChaosResult, run_chaos

FULL = {"default": (200, FAULT_KINDS), "always": (20, ("nats",))}
QUICK = {"default": (12, FAULT_KINDS), "always": (4, ("nats",))}


def run(options: Options) -> Report:
    plan = QUICK if options.quick else FULL
    report = Report(group="chaos", runs=1, environment=environment())
    for sync, (rounds, kinds) in plan.items():
        print(f"  sync_interval {sync}: {rounds} faults of {', '.join(kinds)}", flush=True)
        result = run_chaos(rounds, sync=sync, kinds=kinds, progress=_quiet)
        print(result.summary(), flush=True)
        _add(report, sync, result)
    return report


def _quiet(line: str) -> None:
    if line.startswith("chaos seed"):
        print(f"  {line}", flush=True)


def _add(report: Report, sync: str, result: ChaosResult) -> None:
    check = result.check
    report.add(f"faults_{sync}", f"faults injected, sync {sync}", "per min", _per_min(result))
    report.add(
        f"workflows_{sync}",
        f"workflows completed, sync {sync}",
        "per min",
        Sample(check.graphs_succeeded, result.minutes),
    )
    report.parameters[sync] = {
        "seed": result.seed,
        "faults": len(result.faults),
        "minutes": result.minutes,
        "workflows_completed": check.graphs_succeeded,
        "graphs": check.graphs,
        "acknowledged": check.acknowledged,
        "events": check.events,
        "anomalies": [str(anomaly) for anomaly in check.anomalies],
        "anomalies_target": 0,
        "result": "PASS" if check.ok else "MISS",
        "recovery_s": {
            kind: {"count": count, "p50": p50, "p99": p99}
            for kind, (count, p50, p99) in result.recovery().items()
        },
    }


def _per_min(result: ChaosResult) -> Sample:
    """Faults per minute, as a rate the report prints (count over minutes)."""
    return Sample(len(result.faults), result.minutes)
