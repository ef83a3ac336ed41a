"""`colonies server` runs a projector beside the engine: its queries answer on colonies.q.*."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from colonies_es import Colonies, crypto, func_spec
from colonies_es.client.queries import QueryClient
from colonies_es.embedded import NatsServer


def test_the_server_runs_a_projector_whose_view_follows_the_log(tmp_path: Path) -> None:
    nats = NatsServer(tmp_path / "nats").start()
    server_key, owner_key = crypto.new_private_key(), crypto.new_private_key()
    log = (tmp_path / "server.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "colonies_es.cli",
            "server",
            "--nats",
            nats.url,
            "--projector-db",
            str(tmp_path / "view.sqlite"),
        ],
        env={
            **os.environ,
            "COLONIES_SERVER_ID": crypto.id_from_private_key(server_key),
            "COLONIES_EVENT_SEAL_KEY": os.urandom(32).hex(),
        },
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    client = Colonies("127.0.0.1", nats.port)
    try:
        deadline = time.monotonic() + 30
        # The projector starts beside the engine and may be ready after it (a busy machine).
        for ready in (b"colonies engine ready", b"projector ready on"):
            while ready not in (tmp_path / "server.log").read_bytes():
                assert process.poll() is None, (tmp_path / "server.log").read_text()
                assert time.monotonic() < deadline, f"no {ready.decode()!r} in the server's log"
                time.sleep(0.05)
        client.add_colony(
            {"colonyid": crypto.id_from_private_key(owner_key), "name": "dev"}, server_key
        )
        submitted = client.submit_func_spec(
            func_spec("noop", [], "dev", "python-executor"), owner_key
        )

        with QueryClient(owner_key, "127.0.0.1", nats.port) as queries:
            queries.wait_for_position(queries.log_position(), timeout=20)
            listed = queries.list_processes("dev", state=0)
            graph = queries.get_graph(submitted.processgraphid)
        assert [p.processid for p in listed] == [submitted.processid]
        assert graph.graph.processgraphid == submitted.processgraphid
        assert (tmp_path / "view.sqlite").exists()
    finally:
        client.disconnect()
        process.terminate()
        assert process.wait(15) == 0
        log.close()
        nats.stop()
