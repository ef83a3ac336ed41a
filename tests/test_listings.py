"""The client's listings (get_processgraphs, list_processes) come from the projectors'
read model, not from the engine's memory, and read the client's own writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from colonies_es import ColoniesConnectionError, ColoniesError, Workflow, crypto, func_spec
from colonies_es.states import ProcessState
from tests.processes import wait_until
from tests.stack import Stack

EXECUTOR_TYPE = "lister"
ROUNDS = 40


def test_a_listing_right_after_a_command_includes_what_it_wrote(stack: Stack) -> None:
    colony = stack.new_colony()
    key = colony.owner_prvkey
    for round_ in range(ROUNDS):
        spec = func_spec(f"job{round_}", [], colony.name, EXECUTOR_TYPE)
        process = stack.client.submit_func_spec(spec, key)
        newest = stack.client.list_processes(colony.name, 1, ProcessState.WAITING, key)
        assert [p.processid for p in newest] == [process.processid], f"round {round_}"

        workflow = Workflow(colonyname=colony.name, functionspecs=[spec])
        graph = stack.client.submit_workflow(workflow, key)
        graphs = stack.client.get_processgraphs(colony.name, 1, key)
        assert [g.processgraphid for g in graphs] == [graph.processgraphid], f"round {round_}"


def test_listings_keep_their_shapes_order_and_filters(stack: Stack) -> None:
    colony = stack.new_colony()
    key = colony.owner_prvkey
    submitted = [
        stack.client.submit_func_spec(func_spec(f"job{i}", [], colony.name, EXECUTOR_TYPE), key)
        for i in range(3)
    ]
    stack.client.cancel_processgraph(submitted[0].processgraphid, key)

    every = stack.client.list_processes(colony.name, 10, -1, key)
    assert [p.processid for p in every] == [p.processid for p in reversed(submitted)]
    assert every[-1].state == ProcessState.CANCELLED
    waiting = stack.client.list_processes(colony.name, 10, ProcessState.WAITING, key)
    assert [p.processid for p in waiting] == [p.processid for p in reversed(submitted[1:])]
    assert stack.client.list_processes(colony.name, 1, -1, key) == every[:1]

    graphs = stack.client.get_processgraphs(colony.name, 10, key)
    assert [g.processgraphid for g in graphs] == [p.processgraphid for p in reversed(submitted)]
    assert graphs[0] == stack.client.get_processgraph(graphs[0].processgraphid, key)
    assert len(stack.client.get_processgraphs(colony.name, 10, key, ProcessState.WAITING)) == 2


def test_a_listing_by_someone_outside_the_colony_is_refused(stack: Stack) -> None:
    colony = stack.new_colony()
    with pytest.raises(ColoniesError) as refused:
        stack.client.get_processgraphs(colony.name, 10, crypto.new_private_key())
    assert refused.value.status == 403
    with pytest.raises(ColoniesError) as missing:
        stack.client.list_processes("no-such-colony", 10, -1, colony.owner_prvkey)
    assert missing.value.status == 404


def test_listings_are_answered_without_the_engine(fresh_stack: Stack, tmp_path: Path) -> None:
    stack = fresh_stack
    colony = stack.new_colony()
    key = colony.owner_prvkey
    process = stack.client.submit_func_spec(func_spec("job", [], colony.name, EXECUTOR_TYPE), key)
    projector = subprocess.Popen(
        [sys.executable, "-m", "colonies_es.cli", "projector", "--nats", stack.nats.url],
        env={
            **os.environ,
            "COLONIES_EVENT_SEAL_KEY": stack.engine.seal_key,
            "COLONIES_PROJECTOR_DB": str(tmp_path / "own-view.sqlite"),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert projector.stdout is not None
        assert "colonies projector ready" in projector.stdout.readline()
        stack.engine.kill()  # the engine and the projector that ran beside it

        listed = stack.client.list_processes(colony.name, 10, -1, key)
        assert [p.processid for p in listed] == [process.processid]
        graphs = stack.client.get_processgraphs(colony.name, 10, key)
        assert [g.processgraphid for g in graphs] == [process.processgraphid]
    finally:
        projector.send_signal(signal.SIGINT)
        projector.wait(15)

    def refused_clearly() -> bool:
        try:
            stack.client.list_processes(colony.name, 10, -1, key)
        except ColoniesConnectionError as error:
            return "no projector is answering" in str(error)
        return False

    wait_until(refused_clearly, 10, "a listing says that no projector answers")
