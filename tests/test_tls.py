"""TLS (issue 9.4): nats-server serves clients over TLS only with a certificate of the
stack's own CA; clients that hold the CA verify it and connect, others cannot."""

from __future__ import annotations

import re
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nats
import nats.errors
import pytest

from colonies_es.embedded import NatsServer
from colonies_es.settings import NatsAccess
from colonies_es.tls import make_dev_tls, tls_block


@pytest.fixture
def tls_server(
    tmp_path: Path, nats_server_factory: Callable[..., NatsServer]
) -> tuple[NatsServer, Path]:
    files = make_dev_tls(tmp_path / "tls")
    config = tmp_path / "nats-tls.conf"
    config.write_text(tls_block(files))
    return nats_server_factory(config=config), files.ca


async def test_a_client_with_the_ca_connects_one_without_cannot(
    tls_server: tuple[NatsServer, Path],
) -> None:
    server, ca = tls_server
    url = f"tls://127.0.0.1:{server.port}"
    nc = await NatsAccess((url,), tls_ca_file=str(ca)).connect("test", allow_reconnect=False)
    try:
        assert nc.connected_url is not None
        reply = await nc.request("$JS.API.INFO", b"", timeout=5)  # a round trip over TLS
        assert b"memory" in reply.data
    finally:
        await nc.close()

    # The system's CAs do not know the stack's CA: the handshake fails.
    with pytest.raises((ssl.SSLError, OSError, nats.errors.Error)):
        await NatsAccess((url,)).connect("test", allow_reconnect=False, connect_timeout=5)
    # Plain NATS is refused: the server requires TLS.
    with pytest.raises((nats.errors.Error, OSError)):
        await nats.connect(
            f"nats://127.0.0.1:{server.port}", allow_reconnect=False, connect_timeout=5
        )


def test_the_certificate_names_the_loopback_and_the_host(tmp_path: Path) -> None:
    files = make_dev_tls(tmp_path, ["dev.example.org", "10.1.2.3"])
    again = make_dev_tls(tmp_path, ["dev.example.org"])
    assert again.ca.read_bytes() == files.ca.read_bytes()  # kept across restarts
    assert files.key.stat().st_mode & 0o777 == 0o600
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    shown = {str(name.value) for name in names}
    assert {"localhost", "127.0.0.1", "::1", "dev.example.org", "10.1.2.3"} <= shown


def test_the_seed_workflows_run_over_tls_with_authorization(tmp_path: Path) -> None:
    """`colonies dev --demo --tls`: every component over TLS, each with its credential."""
    done = subprocess.run(
        [sys.executable, "-m", "colonies_es.cli", "dev", "--demo", "--tls"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "NATS over TLS only" in out
    assert "NATS authorization on" in out
    assert re.search(r"gen_nums -> sum_nums = 3 \(ok\)", out), out
    assert re.search(r"fetch_a, fetch_b -> merge = 30 \(ok\)", out), out
    assert re.search(r"reduce = 15 \(ok\)", out), out
