"""The examples, run as a developer runs them: `source dev.env` of a `colonies dev`, then
`python examples/<name>.py`, each printing its result on its last line."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_cli_dev import EXAMPLES, STARTUP, DevProcess, run_sourced, stack_is_gone


@pytest.fixture(scope="module")
def dev_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The dev.env of a `colonies dev` (nats-server, engine, python executor) shared by
    this module's tests; the stack is stopped, and checked gone, at the end."""
    data_dir = tmp_path_factory.mktemp("dev")
    dev = DevProcess("--data-dir", str(data_dir), "--port", "0", cwd=data_dir)
    try:
        url = dev.expect(r"listening on (nats://\S+)", timeout=STARTUP).group(1)
        dev.expect(r"press Ctrl-C", timeout=STARTUP)
        yield data_dir / "dev.env"
        dev.process.send_signal(signal.SIGINT)
        returncode, _, err = dev.finish()
        assert returncode == 0, err
        assert stack_is_gone(url, data_dir)
    finally:
        dev.kill()


@pytest.mark.parametrize(
    ("example", "result", "also_printed"),
    [
        ("workflow_example.py", "3", []),
        ("multi_dependency_example.py", "30", []),
        ("mapreduce_example.py", "15", [f"  gen_nums_{i}: out=[1, 2]" for i in range(5)]),
        (
            "cross_platform_example.py",
            "stored dataset: 8 values, mean 3.875",
            # each step ran on an executor of its type, which the example started
            [
                "  fetch ran on container-executor-",
                "  process ran on hpc-executor-",
                "  store ran on cloud-executor-",
            ],
        ),
    ],
    ids=["workflow", "multi_dependency", "mapreduce", "cross_platform"],
)
def test_example_prints_its_result(
    dev_env: Path, example: str, result: str, also_printed: list[str]
) -> None:
    run = run_sourced(dev_env, sys.executable, str(EXAMPLES / example))
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    assert "Workflow submitted: " in run.stdout
    assert run.stdout.splitlines()[-1] == f"Result: {result}"
    for text in also_printed:
        assert text in run.stdout
