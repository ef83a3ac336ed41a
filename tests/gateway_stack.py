"""The ColonyOS gateway and ColonyOS-side processes for tests, as real child processes.

:class:`GatewayProcess` runs ``colonies gateway`` (port chosen by the system, read from
its ready line). :func:`colonyos_env` is the ``dev.env`` of a test colony: pycolonies
reads ``COLONIES_SERVER_*`` (the gateway), this system's client ``COLONIES_NATS_URL``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from tests.stack import ColonyHandle, Stack

ROOT = Path(__file__).resolve().parents[1]
PYCOLONIES_EXAMPLES = ROOT / "examples" / "pycolonies"

_READY = re.compile(rb"colonies gateway ready on https?://[^:]+:(\d+)")


class GatewayProcess:
    """``colonies gateway`` as a child process, in front of a stack's NATS server."""

    def __init__(self, nats_url: str, log_file: Path, *options: str) -> None:
        """``options`` go to ``colonies gateway`` (``--tls-cert``...)."""
        self.nats_url = nats_url
        self.log_file = log_file
        self.options = options
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> GatewayProcess:
        with self.log_file.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "colonies_es.cli", "gateway"),
                    *("--nats", self.nats_url, "--port", "0", *self.options),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while (found := _READY.search(self.log_file.read_bytes())) is None:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gateway not ready: {self.log_file.read_text()[-2000:]}")
            time.sleep(0.02)
        self.port = int(found.group(1))
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def colonyos_env(stack: Stack, gateway: GatewayProcess, colony: ColonyHandle) -> dict[str, str]:
    """The variables ``colonies dev`` writes, for ``colony``: the owner submits."""
    return {
        **os.environ,
        "COLONIES_SERVER_HOST": "127.0.0.1",
        "COLONIES_SERVER_PORT": str(gateway.port),
        "COLONIES_SERVER_TLS": "false",
        "COLONIES_COLONY_NAME": colony.name,
        "COLONIES_COLONY_PRVKEY": colony.owner_prvkey,
        "COLONIES_PRVKEY": colony.owner_prvkey,
        "COLONIES_EXECUTOR_NAME": "",
        "COLONIES_NATS_URL": stack.nats.url,
        "PYTHONUNBUFFERED": "1",
    }


def start_process(argv: list[str], env: dict[str, str], log_file: Path) -> subprocess.Popen[bytes]:
    """A child process with its output in ``log_file``."""
    with log_file.open("wb") as log:
        return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL: pycolonies' executor sits in a 10 s long poll; nothing here needs a goodbye."""
    if process.poll() is None:
        process.kill()
        process.wait(10)


def wait_for_line(
    log_file: Path, text: str, process: subprocess.Popen[bytes], timeout: float
) -> None:
    """Wait until ``text`` appears in ``log_file`` (fail if the process exits first)."""
    deadline = time.monotonic() + timeout
    while text not in log_file.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{text!r} never came: {log_file.read_text()[-2000:]}")
        time.sleep(0.05)
