"""The fault-injection harness (colonies_es.chaos) on real processes.

- A short run (every kind of fault, in turn) ends with zero anomalies: every command a
  client saw acknowledged has exactly its event in the raw log, every workflow computes
  its result, the projector's view equals a fresh rebuild, the audit passes.
- The checker can fail: against an engine that acknowledges 20% of closes without
  recording them (tests/broken_engine.py, a hook no shipped command can reach), it
  reports exactly the lost closes.

- With ``sync_interval: always`` (the variant the harness writes is checked on the
  server's own /varz), a nats-server killed mid-run loses nothing acknowledged.

A long run is a slow soak test (``pytest -m slow tests/test_chaos.py``); the benchmark
group ``python -m benchmarks chaos`` reports the figures of a 200-fault run.
"""

from __future__ import annotations

import json
import re
import sys
import urllib.request
from pathlib import Path

import pytest

from colonies_es.chaos import FAULT_KINDS, run_chaos
from colonies_es.chaos.run import fault_schedule, shipped_nats_config, sync_always_config
from colonies_es.chaos.stack import ENGINE_COMMAND
from colonies_es.embedded import NatsServer, free_port

REPO = Path(__file__).resolve().parent.parent


def test_a_short_run_with_every_kind_of_fault_has_no_anomaly(tmp_path: Path) -> None:
    result = run_chaos(len(FAULT_KINDS), interval=(1.0, 2.5), directory=tmp_path)

    print(result.summary())
    assert sorted(fault.kind for fault in result.faults) == sorted(FAULT_KINDS)
    check = result.check
    assert check.anomalies == [], result.summary()
    assert result.submitted > 0
    assert check.graphs == check.graphs_succeeded >= result.submitted
    assert check.acknowledged["close"] > 0
    assert check.acknowledged["add_child"] > 0
    assert check.acknowledged["fail"] > 0  # the retry shape failed its first attempts
    assert check.audited == check.events > 0


def test_nats_server_killed_with_sync_always_loses_no_acknowledged_event(
    tmp_path: Path,
) -> None:
    result = run_chaos(1, sync="always", kinds=["nats"], interval=(2.0, 3.0), directory=tmp_path)

    assert [fault.kind for fault in result.faults] == ["nats"]
    assert result.check.anomalies == [], result.summary()
    assert result.check.acknowledged["close"] > 0


def test_the_sync_always_variant_makes_the_server_fsync_every_write(tmp_path: Path) -> None:
    config = sync_always_config(tmp_path)
    port = free_port()
    with (
        NatsServer(tmp_path / "js", config=config, http_port=port),
        urllib.request.urlopen(f"http://127.0.0.1:{port}/varz", timeout=10) as answer,
    ):
        varz = json.load(answer)
    assert varz["jetstream"]["config"]["sync_always"] is True
    shipped = shipped_nats_config().read_text()
    assert config.read_text() == shipped.replace('sync_interval: "2m"', "sync_interval: always")


@pytest.mark.slow
def test_a_long_run_of_sixty_faults_has_no_anomaly(tmp_path: Path) -> None:
    """Soak test (about 5 minutes): ``pytest -m slow tests/test_chaos.py``."""
    result = run_chaos(60, directory=tmp_path)

    print(result.summary())
    assert len(result.faults) == 60
    assert result.check.anomalies == [], result.summary()
    assert result.check.graphs == result.check.graphs_succeeded > 0


@pytest.mark.slow
def test_two_engines_on_a_three_node_cluster_lose_nothing_under_faults(tmp_path: Path) -> None:
    """Soak test (about 3 minutes): every engine replica and random cluster nodes killed
    in turn, streams with 3 replicas."""
    result = run_chaos(20, engines=2, nodes=3, directory=tmp_path)

    print(result.summary())
    assert {fault.target for fault in result.faults} >= {"engine1", "engine2"}
    assert result.check.anomalies == [], result.summary()
    assert result.check.graphs == result.check.graphs_succeeded > 0


def test_the_checker_reports_every_close_a_broken_engine_acknowledged_and_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)  # `python -m tests.broken_engine` runs from the repository
    broken = [sys.executable, "-m", "tests.broken_engine", *ENGINE_COMMAND[3:]]

    result = run_chaos(0, duration=5.0, directory=tmp_path, engine_command=broken)

    engine_output = "".join(p.read_text() for p in tmp_path.glob("engine-*.log"))
    dropped = set(re.findall(r"DROPPED CLOSE ([0-9a-f]{64})", engine_output))
    assert dropped, "the broken engine dropped no close: run too short to prove anything"
    anomalies = result.check.anomalies
    assert {a.kind for a in anomalies} == {"lost acknowledged close"}, result.summary()
    assert {a.process for a in anomalies} == dropped
    assert result.check.graphs == result.check.graphs_succeeded  # it recovers, silently


def test_the_fault_schedule_hits_every_kind_each_turn_and_replays_from_its_seed() -> None:
    import random

    schedule = fault_schedule(random.Random(7), FAULT_KINDS, 3 * len(FAULT_KINDS))

    for turn in range(3):
        chunk = schedule[turn * len(FAULT_KINDS) : (turn + 1) * len(FAULT_KINDS)]
        assert sorted(chunk) == sorted(FAULT_KINDS)
    assert schedule == fault_schedule(random.Random(7), FAULT_KINDS, 3 * len(FAULT_KINDS))
