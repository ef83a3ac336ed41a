"""Encryption at rest (issue 9.3): with COLONIES_CIPHER_KEY the event payloads are
AES-GCM encrypted in the stream; the engine, the projector, history, time travel, debug
and audit still read them; a wrong or missing key is one clear error at start-up."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from colonies_es import crypto, func_spec
from colonies_es.client import Colonies
from colonies_es.embedded import NatsServer
from colonies_es.encryption import new_cipher_key
from tests.stack import ColonyHandle, EngineProcess, Stack
from tests.test_history import cli, cli_ok

SECRET_INPUT = "plaintext-input-5f1e9c"
SECRET_OUTPUT = "plaintext-output-a07d44"
SECRET_ERROR = "plaintext-error-3b8e21"


@pytest.fixture(scope="module")
def encrypted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack whose engine (with its projector) encrypts the log."""
    directory = tmp_path_factory.mktemp("encrypted")
    server = NatsServer(directory / "nats").start()
    server_prvkey = crypto.new_private_key()
    key = new_cipher_key()
    engine = EngineProcess(
        server.url,
        crypto.id_from_private_key(server_prvkey),
        directory,
        extra_env={"COLONIES_CIPHER_KEY": key},
        projector=True,
    )
    engine.start()
    stack = Stack(server, engine, Colonies("127.0.0.1", server.port), server_prvkey)
    yield stack
    stack.client.disconnect()
    engine.stop()
    server.stop()


@pytest.fixture(scope="module")
def workflow(encrypted: Stack) -> tuple[ColonyHandle, str, str]:
    """A graph whose process got SECRET_INPUT and closed with SECRET_OUTPUT, and one
    whose process failed with SECRET_ERROR: (colony, ok graph id, failed graph id)."""
    stack = encrypted
    colony = stack.new_colony()
    key = stack.new_executor(colony, name="ex-1")
    client = stack.client
    ok = client.submit_func_spec(
        func_spec("echo", [SECRET_INPUT], colony.name, "python-executor"), colony.owner_prvkey
    )
    process = client.assign(colony.name, 20, key)
    client.close(process.processid, [SECRET_OUTPUT], key)
    failed = client.submit_func_spec(
        func_spec("boom", [], colony.name, "python-executor"), colony.owner_prvkey
    )
    process = client.assign(colony.name, 20, key)
    client.fail(process.processid, [SECRET_ERROR], key)
    return colony, ok.processgraphid, failed.processgraphid


def test_no_plaintext_reaches_the_stream_or_the_disk(
    encrypted: Stack, workflow: tuple[ColonyHandle, str, str]
) -> None:
    colony, graphid, _ = workflow
    # The engine answers from its decrypted state: the secrets went through.
    graph = encrypted.client.get_processgraph(graphid, colony.owner_prvkey)
    assert graph.state == 2
    store = encrypted.nats.store_dir
    raw = b"".join(path.read_bytes() for path in store.rglob("*") if path.is_file())
    # The files hold the log (subjects and event class names are not encrypted)...
    assert graphid.encode() in raw
    assert b"GraphSubmitted" in raw
    for secret in (SECRET_INPUT, SECRET_OUTPUT, SECRET_ERROR):
        assert secret.encode() not in raw  # ...but no input, output or error


def test_every_read_command_still_shows_them(
    encrypted: Stack, workflow: tuple[ColonyHandle, str, str]
) -> None:
    colony, graphid, failed = workflow
    key = colony.owner_prvkey
    history = cli_ok(encrypted, "workflow", "history", graphid, "--json", prvkey=key)
    assert SECRET_INPUT in history
    assert SECRET_OUTPUT in history
    assert SECRET_OUTPUT in cli_ok(encrypted, "workflow", "replay", graphid, "--json", prvkey=key)
    assert SECRET_ERROR in cli_ok(encrypted, "workflow", "debug", failed, prvkey=key)
    exported = cli_ok(encrypted, "audit", "export", "--processgraphid", graphid, prvkey=key)
    assert SECRET_OUTPUT in exported
    ids = ["--server-id", encrypted.engine.server_id]
    ids += ["--engine-id", crypto.id_from_private_key(encrypted.engine.engine_prvkey)]
    verify = ("audit", "verify", "--processgraphid", graphid, *ids)
    assert "All 3 events of workflow" in cli_ok(encrypted, *verify, prvkey=key)  # the graph's own
    shown = cli(encrypted, "workflow", "get", graphid, prvkey=key)
    assert shown.exit_code == 0, shown.stderr
    assert SECRET_OUTPUT in shown.stdout


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (new_cipher_key(), "COLONIES_CIPHER_KEY does not decrypt the event at sequence"),
        ("", "the event log is encrypted"),
        ("not-base64!", "COLONIES_CIPHER_KEY must be base64 of 16, 24 or 32"),
    ],
    ids=["another-key", "no-key", "not-base64"],  # stable ids: the first key is random
)
def test_a_wrong_or_missing_key_is_one_clear_error_at_start_up(
    encrypted: Stack,
    workflow: tuple[ColonyHandle, str, str],
    key: str,
    message: str,
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "colonies_es.cli", "server", "--nats", encrypted.nats.url],
        env={
            "PATH": "/usr/bin:/bin",
            "COLONIES_SERVER_ID": encrypted.engine.server_id,
            "COLONIES_EVENT_SEAL_KEY": encrypted.engine.seal_key,
            "COLONIES_CIPHER_KEY": key,
        },
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    assert message in lines[0]
    assert "Traceback" not in done.stderr


def test_the_engines_checkpoint_is_encrypted_and_a_restart_starts_from_it(
    encrypted: Stack, workflow: tuple[ColonyHandle, str, str]
) -> None:
    """The checkpoint a stopping engine writes (colonies_es/engine/checkpoint.py) holds
    the graphs' ids packed as raw bytes: none of them reaches the disk in clear."""
    colony, graphid, failed = workflow
    encrypted.engine.stop()
    assert "checkpoint written at sequence" in encrypted.engine.log()
    store = encrypted.nats.store_dir
    raw = b"".join(path.read_bytes() for path in store.rglob("*") if path.is_file())
    assert b"COLONIES_CHECKPOINTS" in raw
    for graph in (graphid, failed):
        assert bytes.fromhex(graph) not in raw
    encrypted.engine.start()
    assert "started from the checkpoint at sequence" in encrypted.engine.log()
    graph = encrypted.client.get_processgraph(graphid, colony.owner_prvkey)
    assert graph.state == 2
