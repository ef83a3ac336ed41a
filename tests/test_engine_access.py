"""Who may take work and who may see it: approved executors take work, members read.

An executor that is PENDING (never approved) or REJECTED is refused with 403 when it
claims, and ``assign`` hands it nothing; the work stays for an approved executor. An
identity that is not a member of the colony can neither submit nor read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from colonies_es import ColoniesError, Workflow, crypto, func_spec
from colonies_es.states import ProcessState
from tests.eventlog import nothing_written
from tests.stack import ColonyHandle, Stack

EXECUTOR_TYPE = "python-executor"


def submit_one(stack: Stack, colony: ColonyHandle) -> str:
    spec = func_spec("work", [], colony.name, EXECUTOR_TYPE)
    return stack.client.submit_func_spec(spec, colony.owner_prvkey).processid


def unapproved(stack: Stack, colony: ColonyHandle, how: str) -> str:
    """An executor of the colony that may not take work: PENDING or REJECTED."""
    key = stack.new_executor(colony, EXECUTOR_TYPE, name=f"{how}-one", approve=how == "rejected")
    if how == "rejected":
        stack.client.reject_executor(colony.name, f"{how}-one", colony.owner_prvkey)
    return key


@pytest.mark.parametrize("how", ["pending", "rejected"])
def test_an_executor_not_approved_cannot_take_work(stack: Stack, how: str) -> None:
    colony = stack.new_colony()
    outsider = unapproved(stack, colony, how)
    processid = submit_one(stack, colony)

    with nothing_written(stack.nats.url):
        with pytest.raises(ColoniesError) as claim:
            stack.client.claim(colony.name, outsider)
        with pytest.raises(ColoniesError) as assign:
            stack.client.assign(colony.name, 2, outsider)
    for refused in (claim.value, assign.value):
        assert refused.status == 403
        assert "APPROVED" in refused.message

    process = stack.client.get_process(processid, colony.owner_prvkey)
    assert process.state == ProcessState.WAITING
    assert not process.isassigned
    approved = stack.new_executor(colony, EXECUTOR_TYPE)
    assert stack.client.assign(colony.name, 10, approved).processid == processid


def test_a_removed_executor_cannot_take_work(stack: Stack) -> None:
    colony = stack.new_colony()
    key = stack.new_executor(colony, EXECUTOR_TYPE, name="leaving")
    stack.client.remove_executor(colony.name, "leaving", colony.owner_prvkey)
    submit_one(stack, colony)

    with nothing_written(stack.nats.url), pytest.raises(ColoniesError) as refused:
        stack.client.claim(colony.name, key)
    assert refused.value.status == 403


def reads(
    stack: Stack, colony: ColonyHandle, processid: str, graphid: str
) -> dict[str, Callable[[str], Any]]:
    """Every way to read the colony's work, as a function of the reader's key."""
    client = stack.client
    return {
        "get_process": lambda key: client.get_process(processid, key),
        "get_processgraph": lambda key: client.get_processgraph(graphid, key),
        "list_processes": lambda key: client.list_processes(colony.name, 10, -1, key),
        "get_processgraphs": lambda key: client.get_processgraphs(colony.name, 10, key),
        "stats": lambda key: client.stats(colony.name, key),
    }


def test_a_non_member_can_neither_submit_nor_read(stack: Stack) -> None:
    colony = stack.new_colony()
    elsewhere = stack.new_colony()  # its owner is a member of another colony only
    stranger = crypto.new_private_key()
    workflow = Workflow(
        colonyname=colony.name,
        functionspecs=[func_spec("work", [], colony.name, EXECUTOR_TYPE)],
    )
    graph = stack.client.submit_workflow(workflow, colony.owner_prvkey)
    ways_to_read = reads(stack, colony, graph.processids[0], graph.processgraphid)

    for outsider in (stranger, elsewhere.owner_prvkey):
        with nothing_written(stack.nats.url):
            with pytest.raises(ColoniesError) as submit:
                stack.client.submit_workflow(workflow, outsider)
            assert submit.value.status == 403
            assert colony.name in submit.value.message
            for what, read in ways_to_read.items():
                with pytest.raises(ColoniesError) as refused:
                    read(outsider)
                assert refused.value.status == 403, what

    # The same reads work for a member.
    member = stack.new_executor(colony, EXECUTOR_TYPE)
    for read in ways_to_read.values():
        read(member)


def test_a_non_member_cannot_cancel_or_remove(stack: Stack) -> None:
    colony = stack.new_colony()
    stranger = crypto.new_private_key()
    process = stack.client.submit_func_spec(
        func_spec("work", [], colony.name, EXECUTOR_TYPE), colony.owner_prvkey
    )
    attempts: dict[str, Callable[[], Any]] = {
        "cancel_processgraph": lambda: stack.client.cancel_processgraph(
            process.processgraphid, stranger
        ),
        "remove_processgraph": lambda: stack.client.remove_processgraph(
            process.processgraphid, stranger
        ),
        "remove_process": lambda: stack.client.remove_process(process.processid, stranger),
        "remove_all_processgraphs": lambda: stack.client.remove_all_processgraphs(
            colony.name, stranger
        ),
    }
    with nothing_written(stack.nats.url):
        for what, attempt in attempts.items():
            with pytest.raises(ColoniesError) as refused:
                attempt()
            assert refused.value.status == 403, what
    assert stack.client.get_process(process.processid, colony.owner_prvkey).state == (
        ProcessState.WAITING
    )
