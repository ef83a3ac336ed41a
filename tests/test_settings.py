"""One settings object for every component: defaults < COLONIES_* variables < flags.

The bug this guards against: the eventsourcing application is named ``colonies``, so
eventsourcing looked up ``COLONIES_NATS_URL`` and ``COLONIES_EVENT_SEAL_KEY`` in the
process environment before the values ``colonies server --nats X --seal-key K`` passed:
after ``source dev.env`` an engine told to use another server wrote to the dev server,
sealed with the dev key.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import nats
import nats.js.errors
import pytest

from colonies_es import crypto
from colonies_es.client import Colonies, colonies_client
from colonies_es.embedded import NatsServer
from colonies_es.settings import Settings, SettingsError
from colonies_es.store.codec import Sealer


def test_defaults_then_variables_then_flags() -> None:
    assert Settings.load({}).nats_servers == ("nats://localhost:4222",)
    env = {
        "COLONIES_SERVER_HOST": "example.org",
        "COLONIES_SERVER_PORT": "4333",
        "COLONIES_SERVER_TLS": "true",
        "COLONIES_STREAM_REPLICAS": "3",
        "COLONIES_EVENT_SEAL_KEY": "ab" * 16,
        "COLONIES_EXECUTOR_NAME": "",  # empty counts as unset
    }
    settings = Settings.load(env)
    assert settings.nats_servers == ("tls://example.org:4333",)
    assert settings.stream_replicas == 3
    assert settings.executor_name == ""
    flagged = Settings.load(
        {**env, "COLONIES_NATS_URL": "nats://a:1,nats://b:2"},
        event_seal_key="cd" * 16,
        stream_replicas=None,  # a flag not given
    )
    assert flagged.nats_servers == ("nats://a:1", "nats://b:2")
    assert flagged.event_seal_key == "cd" * 16
    assert flagged.stream_replicas == 3


def test_the_store_environment_is_complete_and_holds_only_the_settings() -> None:
    settings = Settings(
        nats_url="nats://x:1",
        event_seal_key="ab" * 16,
        cipher_key="k" * 44,
        stream_replicas=3,
        nats_nkey_file="/creds/engine.nk",
        tls_ca_file="/tls/ca.pem",
    )
    assert settings.store_env() == {
        "PERSISTENCE_MODULE": "colonies_es.store",
        "NATS_URL": "nats://x:1",
        "NATS_NKEY_FILE": "/creds/engine.nk",
        "NATS_TLS_CA_FILE": "/tls/ca.pem",
        "JETSTREAM_STREAM": "COLONIES",
        "JETSTREAM_SUBJECT_PREFIX": "colonies",
        "JETSTREAM_REPLICAS": "3",
        "EVENT_SEAL_KEY": "ab" * 16,
        "CIPHER_TOPIC": "eventsourcing.cipher:AESCipher",
        "CIPHER_KEY": "k" * 44,
    }


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("COLONIES_SERVER_PORT", "70000", "COLONIES_SERVER_PORT must be a port number"),
        ("COLONIES_SERVER_TLS", "maybe", "COLONIES_SERVER_TLS must be true or false"),
        ("COLONIES_STREAM_REPLICAS", "three", "COLONIES_STREAM_REPLICAS must be a whole number"),
    ],
)
def test_an_unreadable_variable_is_named(variable: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.load({variable: value})
    with pytest.raises(ValueError, match=message):
        colonies_client({"COLONIES_COLONY_NAME": "c", "COLONIES_PRVKEY": "k", variable: value})


async def _stream_state(url: str) -> tuple[int, list[bytes]] | None:
    """(last sequence, payloads) of the COLONIES stream on ``url``; None if it has none."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info("COLONIES")
        except nats.js.errors.NotFoundError:
            return None
        payloads = []
        for sequence in range(1, info.state.last_seq + 1):
            message = await js.get_msg("COLONIES", sequence)
            assert message.data is not None
            payloads.append(message.data)
        return info.state.last_seq, payloads
    finally:
        await nc.close()


def test_flags_win_over_the_shell_environment_of_the_engine(
    tmp_path: Path, nats_server_factory: Callable[..., NatsServer]
) -> None:
    """``colonies server --nats A --seal-key K`` after ``source dev.env`` (which points at
    server B with key K2) writes to A, sealed with K; B sees nothing."""
    told, decoy = nats_server_factory(), nats_server_factory()
    server_key, owner_key = crypto.new_private_key(), crypto.new_private_key()
    seal_key, dev_seal_key = os.urandom(32).hex(), os.urandom(32).hex()
    log_file = tmp_path / "server.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "colonies_es.cli",
                "server",
                "--no-projector",
                "--nats",
                told.url,
                "--seal-key",
                seal_key,
            ],
            env={
                **os.environ,
                "COLONIES_SERVER_ID": crypto.id_from_private_key(server_key),
                "COLONIES_NATS_URL": decoy.url,  # as dev.env sets them
                "COLONIES_EVENT_SEAL_KEY": dev_seal_key,
            },
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    client = Colonies("127.0.0.1", told.port)
    try:
        deadline = time.monotonic() + 30
        while b"colonies engine ready" not in log_file.read_bytes():
            assert process.poll() is None, log_file.read_text()
            assert time.monotonic() < deadline, "the engine did not start"
            time.sleep(0.05)
        client.add_colony(
            {"colonyid": crypto.id_from_private_key(owner_key), "name": "flags"}, server_key
        )
        assert client.get_colony("flags", owner_key).name == "flags"
    finally:
        client.disconnect()
        process.terminate()
        process.wait(15)

    written = asyncio.run(_stream_state(told.url))
    assert written is not None, "the engine wrote its log to the server of the environment"
    _, payloads = written
    sealer = Sealer(bytes.fromhex(seal_key))
    sealed = [p for p in payloads if sealer.is_sealed("colonies.ev.flags.colony", p)]
    assert len(sealed) == 1, "the colony's event is not sealed with the --seal-key"
    assert asyncio.run(_stream_state(decoy.url)) is None
