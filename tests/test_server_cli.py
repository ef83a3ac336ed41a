"""`colonies server` as a user meets it: a NATS it cannot reach is one line, not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from colonies_es.embedded import free_port


def test_an_unreachable_nats_is_one_readable_line_and_exit_1(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    done = subprocess.run(
        [sys.executable, "-m", "colonies_es.cli", "server", "--nats", url, "--server-id", "a" * 64],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,  # where the projector's default view file goes
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == f"error: cannot connect to NATS at {url}"
    assert "Traceback" not in done.stderr + done.stdout


def test_the_server_id_is_required(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "colonies_es.cli", "server", "--nats", "nats://127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "server owner id is required" in done.stderr
