"""Quotas per colony (issue 9.5): pending processes and bytes per command, configured
through COLONIES_* settings; each refusal is a 4xx that writes nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from colonies_es import func_spec
from colonies_es.client import ColoniesError
from tests.eventlog import nothing_written
from tests.stack import ColonyHandle, Stack, start_stack, stop_stack

MAX_PENDING = 3
MAX_BYTES = 4096


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(
        tmp_path_factory.mktemp("quotas"),
        extra_env={
            "COLONIES_MAX_PENDING_PROCESSES": str(MAX_PENDING),
            "COLONIES_MAX_COMMAND_BYTES": str(MAX_BYTES),
        },
    )
    yield stack
    stop_stack(stack)


def _submit(
    stack: Stack, colony: ColonyHandle, name: str = "job", args: list[str] | None = None
) -> str:
    spec = func_spec(name, args or [], colony.name, "python-executor")
    return stack.client.submit_func_spec(spec, colony.owner_prvkey).processid


def test_pending_processes_over_the_quota_are_refused_until_some_end(limited: Stack) -> None:
    colony, other = limited.new_colony(), limited.new_colony()
    executor = limited.new_executor(colony)
    for _ in range(MAX_PENDING):
        _submit(limited, colony)

    with nothing_written(limited.nats.url), pytest.raises(ColoniesError) as refused:
        _submit(limited, colony)
    assert refused.value.status == 429
    assert f"has {MAX_PENDING} pending processes" in refused.value.message
    assert "COLONIES_MAX_PENDING_PROCESSES" in refused.value.message
    workflow = {
        "colonyname": colony.name,
        "functionspecs": [
            {"nodename": "a", "funcname": "a", "conditions": {"colonyname": colony.name}},
        ],
    }
    with nothing_written(limited.nats.url), pytest.raises(ColoniesError) as refused:
        limited.client.submit_workflow(workflow, colony.owner_prvkey)
    assert refused.value.status == 429

    _submit(limited, other)  # the quota is per colony

    process = limited.client.assign(colony.name, 20, executor)
    limited.client.close(process.processid, [], executor)
    _submit(limited, colony)  # one ended: room for one more


def test_a_command_over_the_byte_quota_is_refused(limited: Stack) -> None:
    colony = limited.new_colony()
    with nothing_written(limited.nats.url), pytest.raises(ColoniesError) as refused:
        _submit(limited, colony, args=["x" * MAX_BYTES])
    assert refused.value.status == 413
    assert f"over the quota of {MAX_BYTES} bytes per command" in refused.value.message
    _submit(limited, colony, args=["x" * 100])
