"""The peers benchmark group's own plumbing (``python -m benchmarks peers``), without a
stack: it reads ``colonies dev``'s ``dev.env`` as ``colonies dev`` writes it, and says in
one line what is missing when the Celery peer cannot run. The group itself is run by
hand (minutes of CPU on a real stack and a real Celery); see benchmarks/README.md."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from benchmarks.harness import Options
from benchmarks.peers import find_peer, read_env_file
from colonies_es.cli.dev_colony import write_env_file


def test_dev_env_is_read_back_as_colonies_dev_wrote_it(tmp_path: Path) -> None:
    written = {
        "COLONIES_NATS_URL": "nats://127.0.0.1:4222",
        "COLONIES_PRVKEY": "ab" * 32,
        "COLONIES_NATS_NKEY_FILE": str(tmp_path / "a folder with spaces" / "developer.nk"),
        "COLONIES_EXECUTOR_NAME": "",
        "COLONIES_COLONY_NAME": "it's",
    }
    path = write_env_file(tmp_path, written)
    assert read_env_file(path) == written


def test_a_peer_directory_without_its_harness_is_named(tmp_path: Path) -> None:
    reason = find_peer(Options(peer_dir=tmp_path))
    assert isinstance(reason, str)
    assert str(tmp_path) in reason
    assert "--peer-dir" in reason


def test_a_python_without_celery_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "run.sh").write_text("#!/bin/sh\nexit 1\n")
    for tool in ("redis-server", "redis-cli"):  # found on the PATH, never started here
        (tmp_path / tool).write_text("#!/bin/sh\nexit 1\n")
        (tmp_path / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.setenv("CELERY_PYTHON", sys.executable)  # the project's: no celery
    reason = find_peer(Options(peer_dir=tmp_path))
    assert isinstance(reason, str)
    assert reason.startswith(f"{sys.executable} cannot import celery and redis")
