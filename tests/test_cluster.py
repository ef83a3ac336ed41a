"""The engine on a 3-node JetStream cluster: R3 streams, and the stream leader's
nats-server killed (SIGKILL) mid-load, then restarted.

What must hold (issue 8, "Cluster"): no acknowledged event is missing (every command
whose reply came back is in the log), the workflows complete, and the stream is the
same on all three nodes (same last sequence, same messages, each node's copy read while
it leads the stream).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest
from eventsourcing.persistence import ProgrammingError

from colonies_es import Colonies, ColoniesConnectionError, ColoniesError, Workflow, crypto
from colonies_es.embedded_cluster import NatsCluster
from colonies_es.models import FuncSpec
from colonies_es.protocol import WORK_STREAM
from colonies_es.states import ProcessState
from colonies_es.store.jetstream import Entry, JetStreamLog, StoredMessage, StreamSpec
from tests.eventlog import STREAM, EventLog, read_events
from tests.processes import wait_until
from tests.stack import EngineProcess

EXECUTOR_TYPE = "cluster-worker"
WORKFLOWS = 24
EXECUTORS = 3
CLIENT_TIMEOUT = 3.0  # seconds a command may take: a leader election is about 2 s


class Colony:
    """A colony on the cluster, its owner's key, and a client that knows every node."""

    def __init__(self, cluster: NatsCluster, server_prvkey: str) -> None:
        self.urls = cluster.urls
        self.name = f"c{uuid.uuid4().hex[:10]}"
        self.owner = crypto.new_private_key()
        self.client = Colonies(servers=self.urls, timeout=CLIENT_TIMEOUT)
        colony = {"colonyid": crypto.id_from_private_key(self.owner), "name": self.name}
        self.client.add_colony(colony, server_prvkey)

    def new_executor(self) -> str:
        key = crypto.new_private_key()
        name = f"ex-{uuid.uuid4().hex[:8]}"
        executor = {
            "executorid": crypto.id_from_private_key(key),
            "executortype": EXECUTOR_TYPE,
            "executorname": name,
            "colonyname": self.name,
        }
        self.client.add_executor(executor, self.owner)
        self.client.approve_executor(self.name, name, self.owner)
        return key

    def two_steps(self) -> Workflow:
        first = FuncSpec(nodename="first", funcname="first")
        second = FuncSpec(nodename="second", funcname="second")
        for spec in (first, second):
            spec.conditions.colonyname = self.name
            spec.conditions.executortype = EXECUTOR_TYPE
            spec.maxexectime = 5  # a claim whose reply was lost is taken back
            spec.maxretries = 20
        second.conditions.dependencies.append("first")
        return Workflow(colonyname=self.name, functionspecs=[first, second])


class Acknowledged:
    """What the cluster acknowledged: the commands whose reply came back."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.graphs: list[str] = []
        self.assigned: list[str] = []
        """The process of every acknowledged assignment."""
        self.closed: list[str] = []
        self.errors: list[BaseException] = []

    def count(self) -> int:
        with self.lock:
            return len(self.graphs) + len(self.assigned) + len(self.closed)


def _retry_on_outage(error: BaseException) -> bool:
    """Errors a command may meet while the cluster elects a leader (retry later)."""
    if isinstance(error, ColoniesConnectionError):
        return True
    return isinstance(error, ColoniesError) and error.status >= 500


class Submitter(threading.Thread):
    """Submits ``WORKFLOWS`` two-step workflows, one at a time, riding out the outage."""

    def __init__(self, colony: Colony, acked: Acknowledged, stop: threading.Event) -> None:
        super().__init__(name="submitter")
        self.colony, self.acked, self.stop = colony, acked, stop

    def run(self) -> None:
        try:
            while len(self.acked.graphs) < WORKFLOWS and not self.stop.is_set():
                try:
                    graph = self.colony.client.submit_workflow(
                        self.colony.two_steps(), self.colony.owner
                    )
                except (ColoniesConnectionError, ColoniesError) as error:
                    if not _retry_on_outage(error):
                        raise
                    self.stop.wait(0.1)
                    continue
                with self.acked.lock:
                    self.acked.graphs.append(graph.processgraphid)
                self.stop.wait(0.05)
        except BaseException as error:
            self.acked.errors.append(error)


class Worker(threading.Thread):
    """An executor thread: assigns and closes until told to stop, riding out the outage."""

    def __init__(
        self, colony: Colony, key: str, acked: Acknowledged, stop: threading.Event
    ) -> None:
        super().__init__(name="worker")
        self.colony, self.key, self.acked, self.stop = colony, key, acked, stop

    def run(self) -> None:
        try:
            with Colonies(servers=self.colony.urls, timeout=CLIENT_TIMEOUT) as client:
                while not self.stop.is_set():
                    try:
                        process = client.assign(self.colony.name, 0.5, self.key)
                    except (ColoniesConnectionError, ColoniesError) as error:
                        if isinstance(error, ColoniesError) and error.status == 404:
                            continue
                        if not _retry_on_outage(error):
                            raise
                        self.stop.wait(0.1)
                        continue
                    with self.acked.lock:
                        self.acked.assigned.append(process.processid)
                    self._close(client, process.processid)
        except BaseException as error:
            self.acked.errors.append(error)

    def _close(self, client: Colonies, processid: str) -> None:
        while not self.stop.is_set():
            try:
                client.close(processid, ["done"], self.key)
            except (ColoniesConnectionError, ColoniesError) as error:
                if isinstance(error, ColoniesError) and error.status in (403, 404):
                    return  # an earlier try was recorded, or the deadline took it back
                if not _retry_on_outage(error):
                    raise
                self.stop.wait(0.1)
                continue
            with self.acked.lock:
                self.acked.closed.append(processid)
            return


def test_streams_have_three_replicas_on_the_cluster(
    nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    server_prvkey = crypto.new_private_key()
    server_id = crypto.id_from_private_key(server_prvkey)
    engine = EngineProcess(nats_cluster.url, server_id, tmp_path, replicas=3).start()
    try:
        Colony(nats_cluster, server_prvkey).client.disconnect()
        for stream in (STREAM, WORK_STREAM):
            info = nats_cluster.stream_info(stream)
            assert info["config"]["num_replicas"] == 3, stream
            cluster = info["cluster"]
            names = {cluster["leader"], *(peer["name"] for peer in cluster["replicas"])}
            assert names == {"colonies-1", "colonies-2", "colonies-3"}, stream
        assert not asyncio.run(_log_chains_writes(nats_cluster.urls, replicas=3))
    finally:
        engine.stop()


async def _log_chains_writes(urls: list[str], replicas: int) -> bool:
    """Whether the engine's log would chain writes on the event stream (a replicated
    stream must not: nats-server stops it at the first refused chained write,
    DESIGN.md "chained writes"); a chained append is then refused before it is sent."""
    nc = await nats.connect(servers=urls)
    try:
        log = JetStreamLog(nc, STREAM, lambda _: None)
        spec = StreamSpec(STREAM, ("colonies.ev.>", "colonies.trk.>"), replicas)
        await log.ensure_stream(spec, create=False)
        if not log.chainable:
            before = nats_stream_last(await log.last_message("colonies.ev.>"))
            entry = Entry("colonies.ev.x.graph.y", 1, b"{}")
            with pytest.raises(ProgrammingError):
                await log.append([entry], message_id="b", after="a")
            assert nats_stream_last(await log.last_message("colonies.ev.>")) == before
        return log.chainable
    finally:
        await nc.close()


def nats_stream_last(message: StoredMessage | None) -> int:
    return message.sequence if message is not None else 0


def test_a_projector_takes_the_replica_count_from_the_one_setting(
    nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    server_id = crypto.id_from_private_key(crypto.new_private_key())
    engine = EngineProcess(nats_cluster.url, server_id, tmp_path, replicas=3).start()
    engine.stop()  # the log's streams exist, with three replicas

    def projector(replicas: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "colonies_es.cli", "projector", "--nats", nats_cluster.url],
            env={
                **os.environ,
                "COLONIES_STREAM_REPLICAS": replicas,
                "COLONIES_PROJECTOR_DB": str(tmp_path / f"view-{replicas}.sqlite"),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    mismatched = projector("1")
    _, err = mismatched.communicate(timeout=60)
    assert mismatched.returncode == 1
    assert "num_replicas is 3, needs 1" in err
    assert "Traceback" not in err

    matching = projector("3")
    try:
        assert matching.stdout is not None
        assert "colonies projector ready" in matching.stdout.readline()
    finally:
        matching.terminate()
        matching.wait(15)


def test_killing_the_stream_leader_mid_load_loses_no_acknowledged_event(
    nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    server_prvkey = crypto.new_private_key()
    server_id = crypto.id_from_private_key(server_prvkey)
    engine = EngineProcess(nats_cluster.url, server_id, tmp_path, replicas=3).start()
    colony = Colony(nats_cluster, server_prvkey)
    acked = Acknowledged()
    stop = threading.Event()
    threads: list[threading.Thread] = [
        Worker(colony, colony.new_executor(), acked, stop) for _ in range(EXECUTORS)
    ]
    threads.append(Submitter(colony, acked, stop))
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(acked.graphs) >= WORKFLOWS // 3, 60, "a third submitted")
        leader = nats_cluster.stream_leader(STREAM)
        nats_cluster.kill(leader)
        before = acked.count()
        wait_until(lambda: acked.count() >= before + 10, 60, "10 commands acked, leader down")
        nats_cluster.restart(leader)

        def every_graph_succeeded() -> bool:
            if len(acked.graphs) < WORKFLOWS:
                return False
            for graphid in list(acked.graphs):
                try:
                    graph = colony.client.get_processgraph(graphid, colony.owner)
                except (ColoniesConnectionError, ColoniesError):
                    return False
                if graph.state != ProcessState.SUCCESS:
                    return False
            return True

        wait_until(every_graph_succeeded, 45, "every acknowledged workflow succeeded")
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
        colony.client.disconnect()
        engine.stop()
    assert acked.errors == []

    copies = _each_nodes_copy(nats_cluster)
    log = copies[0]
    for index, copy in enumerate(copies[1:], start=2):
        assert [e.sequence for e in copy] == [e.sequence for e in log], f"node {index}"
        assert list(copy) == list(log), f"node {index}'s copy differs"

    submitted = {e.state["processgraphid"] for e in log.of_kind("GraphSubmitted")}
    assert set(acked.graphs) <= submitted
    assert set(acked.assigned) <= set(log.count_per_process("ProcessAssigned"))
    assert set(acked.closed) <= set(log.count_per_process("ProcessClosed"))
    log.assert_versions_contiguous()
    closed_twice = [p for p, n in log.count_per_process("ProcessClosed").items() if n != 1]
    assert closed_twice == []


def _each_nodes_copy(cluster: NatsCluster) -> list[EventLog]:
    """The event log as each node holds it: read while that node leads the stream, after
    all three report the same last sequence."""
    copies = []
    for index in range(len(cluster.nodes)):
        cluster.make_leader(STREAM, index)
        info = cluster.stream_info(STREAM)
        assert all(peer["current"] for peer in info["cluster"]["replicas"]), info["cluster"]
        copies.append(_read_through(cluster.nodes[index].url))
    return copies


def _read_through(url: str, timeout: float = 20.0) -> EventLog:
    """The whole log read through ``url``; a new leader may answer 503 for a moment after
    the move (its consumers are not up yet): read again until it answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return read_events(url)
        except (nats.js.errors.ServiceUnavailableError, nats.errors.TimeoutError):
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)
