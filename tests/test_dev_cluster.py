"""`colonies dev --cluster 3` and `--engines N`, run as a real subprocess."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from colonies_es.protocol import WORK_STREAM
from colonies_es.settings import NatsAccess
from tests.eventlog import STREAM
from tests.processes import pids_with_argument, wait_until
from tests.test_cli_dev import (
    EXAMPLES,
    STARTUP,
    StartDev,
    pids_with_environment,
    run_sourced,
    sourced,
    start_dev,
)

__all__ = ["start_dev"]  # the fixture, imported for this module's tests

NODES = ("colonies-1", "colonies-2", "colonies-3")


async def _stream_configs(urls: list[str], engine_nkey: Path) -> dict[str, tuple[int, set[str]]]:
    """Each stream's replica count and the names of the servers holding it (read with
    the engine's credential: NATS authorization is on)."""
    nc = await NatsAccess(tuple(urls), str(engine_nkey)).connect("test")
    try:
        js = nc.jetstream()
        found = {}
        for stream in (STREAM, WORK_STREAM):
            info = await js.stream_info(stream)
            assert info.cluster is not None
            peers = {
                info.cluster.leader or "",
                *(r.name or "" for r in info.cluster.replicas or []),
            }
            found[stream] = (info.config.num_replicas or 1, peers)
        return found
    finally:
        await nc.close()


def test_dev_cluster_runs_the_stack_on_three_nodes_with_r3_streams(
    start_dev: StartDev, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    dev = start_dev("--cluster", "3", "--port", "0", "--data-dir", str(data_dir), cwd=tmp_path)
    urls = [
        dev.expect(r"nats-server listening on (nats://\S+)", timeout=STARTUP).group(1)
        for _ in NODES
    ]
    dev.expect(r"press Ctrl-C", timeout=STARTUP)
    assert len(set(urls)) == 3

    env = sourced(data_dir / "dev.env")
    assert env["COLONIES_NATS_URL"] == ",".join(urls)
    assert env["COLONIES_STREAM_REPLICAS"] == "3"
    # The engine, the projector and the executor all got every node's URL.
    assert len(pids_with_environment(f"COLONIES_NATS_URL={','.join(urls)}")) >= 3
    for stream, (replicas, peers) in asyncio.run(
        _stream_configs(urls, data_dir / "creds" / "engine.nk")
    ).items():
        assert (replicas, peers) == (3, set(NODES)), stream

    ran = run_sourced(data_dir / "dev.env", sys.executable, str(EXAMPLES / "workflow_example.py"))
    assert ran.returncode == 0, ran.stderr
    assert "Result: 3" in ran.stdout

    dev.process.send_signal(signal.SIGINT)
    returncode, _, err = dev.finish()
    assert returncode == 0, err
    wait_until(lambda: not pids_with_argument(str(data_dir / "cluster")), 10, "every node stopped")


def test_dev_engines_starts_and_stops_several_engine_replicas(
    start_dev: StartDev, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    dev = start_dev(
        "--engines",
        "2",
        "--executors",
        "0",
        "--port",
        "0",
        "--data-dir",
        str(data_dir),
        cwd=tmp_path,
    )
    dev.expect(r"press Ctrl-C", timeout=STARTUP)
    assert "engine ready" in dev.stdout
    assert "engine-2 ready" in dev.stdout
    assert (data_dir / "engine-2.log").read_text().count("colonies engine ready") == 1

    dev.process.send_signal(signal.SIGINT)
    returncode, _, err = dev.finish()
    assert returncode == 0, err


def test_dev_cluster_refuses_a_size_without_a_majority(start_dev: StartDev, tmp_path: Path) -> None:
    dev = start_dev("--cluster", "2", "--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    returncode, _, err = dev.finish()
    assert returncode == 2
    assert "--cluster takes 3 or 5 nodes" in err
    assert not (tmp_path / "data").exists()
