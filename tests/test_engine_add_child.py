"""add_child on a real engine: the seed's dynamic map-reduce and the ColonyOS shapes."""

from __future__ import annotations

import asyncio

import msgspec
import nats
import pytest
from nats.micro.request import ERROR_CODE_HEADER

from colonies_es import ColoniesError, Workflow, crypto, func_spec
from colonies_es.models import FuncSpec
from colonies_es.projections.audit import Authorities, verify
from colonies_es.projections.history import history
from colonies_es.protocol import AddChildren, api_subject
from tests.eventlog import nothing_written, read_events
from tests.stack import ColonyHandle, Stack


def spec(colony: ColonyHandle, name: str, deps: list[str] | None = None) -> FuncSpec:
    made = func_spec(func=name, args=[], colonyname=colony.name, executortype="python-executor")
    made.conditions.dependencies.extend(deps or [])
    return made


def run_until_done(
    stack: Stack, colony: ColonyHandle, executor: str, outputs: dict[str, list[object]]
) -> list[str]:
    """Assigns and closes processes until none is ready; returns the nodenames in order."""
    order: list[str] = []
    while True:
        try:
            process = stack.client.assign(colony.name, 2, executor)
        except ColoniesError as error:
            if error.status != 404:
                raise
            return order
        order.append(process.spec.nodename)
        funcname = process.spec.funcname
        out = outputs[funcname] if funcname in outputs else [sum(process.input)]
        stack.client.close(process.processid, out, executor)


def test_map_reduce_adds_five_children_and_reduce_gets_all_numbers(stack: Stack) -> None:
    colony = stack.new_colony()
    executor = stack.new_executor(colony)
    workflow = Workflow(
        colonyname=colony.name, functionspecs=[spec(colony, "map"), spec(colony, "reduce", ["map"])]
    )
    graph = stack.client.submit_workflow(workflow, colony.owner_prvkey)

    mapper = stack.client.assign(colony.name, 10, executor)
    assert mapper.spec.funcname == "map"
    fresh = stack.client.get_processgraph(graph.processgraphid, executor)
    reduce = stack.client.find_process("reduce", fresh.processids, executor)
    assert reduce is not None
    insert = True
    for i in range(5):
        stack.client.add_child(
            graph.processgraphid,
            mapper.processid,
            reduce.processid,
            func_spec(
                func="gen_nums", args=[], colonyname=colony.name, executortype="python-executor"
            ),
            f"gen_nums_{i}",
            insert,
            executor,
        )
        insert = False
    stack.client.close(mapper.processid, [], executor)

    order = run_until_done(stack, colony, executor, {"gen_nums": [1, 2]})
    assert order == [f"gen_nums_{i}" for i in range(5)] + ["reduce"]
    done = stack.client.get_process(reduce.processid, executor)
    assert done.input == [1, 2] * 5
    assert done.output == [15]
    assert stack.client.get_processgraph(graph.processgraphid, executor).state == 2


def test_shapes_of_insert_and_append(stack: Stack) -> None:
    """ColonyOS conformance: 1→{2,3}; insert=False on 1 adds 5 beside 2 and 3; insert=True
    puts the new process between 1 and {2,3}; childprocessid=3 makes 3 wait for it."""
    colony = stack.new_colony()
    executor = stack.new_executor(colony)
    workflow = Workflow(
        colonyname=colony.name,
        functionspecs=[spec(colony, "n1"), spec(colony, "n2", ["n1"]), spec(colony, "n3", ["n1"])],
    )
    graph = stack.client.submit_workflow(workflow, colony.owner_prvkey)
    one = stack.client.assign(colony.name, 10, executor)
    ids = {
        p.spec.nodename: p.processid
        for p in (stack.client.get_process(i, executor) for i in graph.processids)
    }

    appended = stack.client.add_child(
        graph.processgraphid, one.processid, "", spec(colony, "n5"), "n5", False, executor
    )
    inserted = stack.client.add_child(
        graph.processgraphid, one.processid, "", spec(colony, "n6"), "n6", True, executor
    )
    waited = stack.client.add_child(
        graph.processgraphid, one.processid, ids["n3"], spec(colony, "n7"), "n7", False, executor
    )
    after = {
        pid: stack.client.get_process(pid, executor)
        for pid in [*ids.values(), appended.processid, inserted.processid, waited.processid]
    }
    assert after[ids["n1"]].children == [inserted.processid, waited.processid]
    assert after[inserted.processid].parents == [ids["n1"]]
    assert sorted(after[inserted.processid].children) == sorted(
        [ids["n2"], ids["n3"], appended.processid]
    )
    assert after[ids["n2"]].parents == [inserted.processid]
    assert after[ids["n3"]].parents == [inserted.processid, waited.processid]
    assert after[waited.processid].children == [ids["n3"]]

    with pytest.raises(ColoniesError) as clash:
        stack.client.add_child(
            graph.processgraphid, one.processid, "", spec(colony, "n2"), "n2", False, executor
        )
    assert clash.value.status == 409

    other = stack.new_executor(colony)
    with pytest.raises(ColoniesError) as refused:
        stack.client.add_child(
            graph.processgraphid, one.processid, "", spec(colony, "n8"), "n8", False, other
        )
    assert refused.value.status == 403


def _send_again(url: str, op: str, sealed: bytes) -> tuple[str | None, bytes]:
    async def send() -> tuple[str | None, bytes]:
        nc = await nats.connect(url)
        try:
            reply = await nc.request(api_subject(op), sealed, timeout=10)
            return (reply.headers or {}).get(ERROR_CODE_HEADER), reply.data
        finally:
            await nc.close()

    return asyncio.run(send())


def test_add_children_is_one_audited_event_all_or_nothing(stack: Stack) -> None:
    """A map adds its pairs in one signed add_children: one ChildrenAdded in the log,
    the reduce sums them, the graph's audit verifies the event against the command. A
    batch with a clashing name is refused with 409, one too big for its event to stay
    readable with 400, and neither writes anything; the same signed bytes sent again get
    the original ids and write nothing more."""
    colony = stack.new_colony()
    executor = stack.new_executor(colony)
    workflow = Workflow(
        colonyname=colony.name, functionspecs=[spec(colony, "map"), spec(colony, "reduce", ["map"])]
    )
    graph = stack.client.submit_workflow(workflow, colony.owner_prvkey)
    mapper = stack.client.assign(colony.name, 10, executor)
    names = [f"pair_{i}" for i in range(20)]
    pairs = [spec(colony, "pair") for _ in names]

    with nothing_written(stack.nats.url), pytest.raises(ColoniesError) as clash:
        stack.client.add_children(
            graph.processgraphid, mapper.processid, "", pairs, [*names[:-1], "reduce"],
            True, executor,
        )  # fmt: skip
    assert clash.value.status == 409
    assert "nodename 'reduce' is already used" in str(clash.value)
    coded = func_spec("pair", [], colony.name, "python-executor", code="x = 1\n" * 60)
    with nothing_written(stack.nats.url), pytest.raises(ColoniesError) as too_big:
        stack.client.add_children(
            graph.processgraphid, mapper.processid, "", [coded] * 600,
            [f"big_{i}" for i in range(600)], True, executor,
        )  # fmt: skip
    assert too_big.value.status == 400
    assert "could not read it back in one reply" in str(too_big.value)

    body = AddChildren(
        processgraphid=graph.processgraphid,
        parentprocessid=mapper.processid,
        specs=pairs,
        nodenames=names,
        insert=True,
    )
    sealed = crypto.seal("add_children", msgspec.to_builtins(body), executor)
    code, data = _send_again(stack.nats.url, "add_children", sealed)
    assert code is None, data
    ids = msgspec.json.decode(data, type=list[str])
    with nothing_written(stack.nats.url):
        assert _send_again(stack.nats.url, "add_children", sealed) == (None, data)
    added = read_events(stack.nats.url).of_kind("ChildrenAdded")
    assert [e.aggregate_id.rsplit(".", 1)[-1] for e in added] == [graph.processgraphid]
    assert [c["processid"] for c in added[0].state["children"]] == ids

    stack.client.close(mapper.processid, [], executor)
    order = run_until_done(stack, colony, executor, {"pair": [1, 2]})
    assert order == [*names, "reduce"]
    reduce = stack.client.find_process("reduce", graph.processids, executor)
    assert reduce is not None
    assert reduce.parents == ids
    assert stack.client.get_process(reduce.processid, executor).output == [60]
    engine_id = crypto.id_from_private_key(stack.engine.engine_prvkey)
    report = verify(
        stack.nats.url,
        Authorities(engine_id=engine_id, server_id=stack.engine.server_id),
        graph.processgraphid,
        seal_key=stack.engine.seal_key,
    )
    assert report.ok, report
    told = history(stack.nats.url, graph.processgraphid, colony.name, stack.engine.seal_key)
    [added_line] = [entry.summary for entry in told if entry.kind == "ChildrenAdded"]
    assert added_line.startswith("map added 20 processes (pair_0, pair_1, ")
    assert added_line.endswith(" (insert) before reduce")
