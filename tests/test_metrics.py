"""Prometheus metrics of a real `colonies server --metrics-port` (issue 10, finding 13):
commands by op and status, their latency, ready processes and waiting executors per
executor type, the log's position and what replicas cost each other."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from colonies_es import crypto
from colonies_es.client import Colonies, ColoniesConnectionError, ColoniesError
from colonies_es.embedded import NatsServer, free_port
from colonies_es.models import Workflow, func_spec
from tests.processes import wait_until

TYPE = "metered"


@dataclass
class MeteredStack:
    client: Colonies
    server_prvkey: str
    metrics_url: str


@pytest.fixture
def metered(
    nats_server_factory: Callable[..., NatsServer], tmp_path: Path
) -> Iterator[MeteredStack]:
    server = nats_server_factory()
    server_prvkey = crypto.new_private_key()
    port = free_port()
    log = tmp_path / "engine.log"
    with log.open("wb") as out:
        engine = subprocess.Popen(
            [sys.executable, "-m", "colonies_es.cli", "server", "--no-projector",
             "--nats", server.url, "--metrics-port", str(port)],
            env={**os.environ, "COLONIES_SERVER_ID": crypto.id_from_private_key(server_prvkey),
                 "COLONIES_EVENT_SEAL_KEY": os.urandom(32).hex()},
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
        )  # fmt: skip
    client = Colonies("127.0.0.1", server.port)
    try:
        wait_until(lambda: b"colonies engine ready" in log.read_bytes(), 30, "engine ready")
        assert f"metrics on http://0.0.0.0:{port}/metrics" in log.read_text()
        yield MeteredStack(client, server_prvkey, f"http://127.0.0.1:{port}/metrics")
    finally:
        client.disconnect()
        engine.send_signal(signal.SIGTERM)
        engine.wait(15)


def scrape(url: str) -> dict[str, float]:
    """Every sample of the endpoint: ``'name{labels}'`` -> value."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def sample(samples: dict[str, float], name: str, **labels: str) -> float | None:
    """The value of ``name`` with exactly ``labels`` (in any order), None if absent."""
    for key, value in samples.items():
        match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})?", key)
        assert match is not None, key
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if match.group(1) == name and found == labels:
            return value
    return None


def test_commands_latency_ready_work_waiting_executors_and_log_position(
    metered: MeteredStack,
) -> None:
    client = metered.client
    owner = crypto.new_private_key()
    colony = f"m{os.urandom(4).hex()}"
    client.add_colony({"colonyid": crypto.id_from_private_key(owner), "name": colony},
                      metered.server_prvkey)  # fmt: skip
    with pytest.raises(ColoniesError):
        client.add_colony(
            {"colonyid": crypto.id_from_private_key(owner), "name": colony},
            crypto.new_private_key(),
        )  # fmt: skip  (not the server owner: 403)
    spec = func_spec("f", [], colony, TYPE, code="def f(ctx={}):\n    return 1\n")
    client.submit_workflow(Workflow(colonyname=colony, functionspecs=[spec]), owner)

    samples = scrape(metered.metrics_url)
    assert sample(samples, "colonies_commands_total", op="add_colony", status="200") == 1
    assert sample(samples, "colonies_commands_total", op="add_colony", status="403") == 1
    assert sample(samples, "colonies_commands_total", op="submit_workflow", status="200") == 1
    assert sample(samples, "colonies_command_seconds_count", op="submit_workflow") == 1
    assert (sample(samples, "colonies_command_seconds_sum", op="submit_workflow") or 0) > 0

    # An executor of the type, idle in assign: ready work shows, then its open request.
    executor_key = crypto.new_private_key()
    client.add_executor({"executorid": crypto.id_from_private_key(executor_key),
                         "executortype": "idle", "executorname": "idle-1",
                         "colonyname": colony}, owner)  # fmt: skip
    client.approve_executor(colony, "idle-1", owner)
    stop = threading.Event()

    def idle() -> None:
        with Colonies(servers=[client.url]) as own:
            while not stop.is_set():
                try:
                    own.assign(colony, 1.0, executor_key)
                except (ColoniesError, ColoniesConnectionError):
                    continue

    poller = threading.Thread(target=idle, daemon=True)
    poller.start()
    try:

        def sampled() -> bool:
            now = scrape(metered.metrics_url)
            return (
                sample(now, "colonies_ready_processes", colony=colony, executortype=TYPE) == 1
                and (sample(now, "colonies_executors_waiting", colony=colony,
                            executortype="idle") or 0) >= 1
                and (sample(now, "colonies_log_sequence") or 0) >= 4
                and sample(now, "colonies_follower_lag_events") == 0
            )  # fmt: skip

        wait_until(sampled, 30, "the gauges are sampled")
        # One engine alone: its follower skipped its own events and applied nobody else's.
        now = scrape(metered.metrics_url)
        assert (sample(now, "colonies_replica_total", what="skipped") or 0) >= 4
        assert sample(now, "colonies_replica_total", what="followed") == 0
        assert sample(now, "colonies_replica_total", what="conflicts") == 0
    finally:
        stop.set()
        poller.join(10)
