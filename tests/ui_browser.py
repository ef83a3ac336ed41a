"""Real processes and a real browser for the web UI's tests (and its benchmark).

- :class:`DevStack`: ``colonies dev`` run as a child process on free ports in a
  temporary folder: nats-server, engine, projector, python executors and the web UI;
  its ``dev.env`` and the UI's link (with the access token) are read back.
- :class:`UiProcess`: one more ``colonies ui`` with another identity.
- :func:`chromium`: Debian's headless Chromium driven by Playwright (no browser
  download: ``executable_path`` is the system's ``/usr/bin/chromium``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from playwright.sync_api import BrowserContext, sync_playwright

CHROMIUM = os.environ.get("COLONIES_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
START_TIMEOUT = 90.0
"""Seconds `colonies dev` may take to start everything on a loaded machine."""


def _read_env(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.startswith("export ") and "=" in line:
            name, value = line.removeprefix("export ").split("=", 1)
            values[name] = value.strip("'\"")
    return values


def _wait_for_line(process: subprocess.Popen[bytes], log: Path, text: str, timeout: float) -> str:
    """The first line of ``log`` holding ``text``; raises if the process exits first."""
    deadline = time.monotonic() + timeout
    while True:
        output = log.read_text(errors="replace") if log.exists() else ""
        for line in output.splitlines():
            if text in line:
                return line
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode}:\n{output[-3000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {text!r} within {timeout:g} s:\n{output[-3000:]}")
        time.sleep(0.1)


def _stop(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


class DevStack:
    """``colonies dev`` in ``directory`` (see the module docstring)."""

    def __init__(self, directory: Path, executors: int = 2) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.log = directory / "dev.out"
        command = [sys.executable, "-m", "colonies_es.cli", "dev", "--data-dir", str(directory)]
        command += ["--port", "0", "--ui-port", "0", "--executors", str(executors)]
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, cwd=directory, start_new_session=True
            )
        try:
            line = _wait_for_line(self.process, self.log, "web UI: http", START_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        self.link = line.split("web UI: ", 1)[1].strip()
        """The UI's link, with its access token."""
        self.env = _read_env(directory / "dev.env")

    @property
    def base(self) -> str:
        """The UI's address without the token: ``http://127.0.0.1:PORT``."""
        return self.link.split("/?", 1)[0]

    @property
    def token(self) -> str:
        return self.link.split("token=", 1)[1]

    def stop(self) -> None:
        _stop(self.process)


class UiProcess:
    """``colonies ui`` on a free port with the given ``COLONIES_*`` environment."""

    def __init__(self, env: dict[str, str], log: Path, *args: str) -> None:
        self.log = log
        command = [sys.executable, "-m", "colonies_es.cli", "ui", "--ui-port", "0", *args]
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 30.0) -> str:
        """The link it printed."""
        line = _wait_for_line(self.process, self.log, "colonies ui ready at", timeout)
        return line.split("ready at", 1)[1].strip()

    def stop(self) -> None:
        _stop(self.process)


@contextlib.contextmanager
def chromium(profile: Path) -> Iterator[BrowserContext]:
    """A headless Chromium context with a fresh profile in ``profile``."""
    if shutil.which(CHROMIUM) is None and not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} not found: apt-get install -y chromium")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 900},
        )
        try:
            yield context
        finally:
            context.close()
