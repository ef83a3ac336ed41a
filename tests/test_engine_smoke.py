"""The seed's first workflow end to end on a real engine: gen_nums -> sum_nums gives 3;
and what the engine's micro service tells about its ops (``$SRV.STATS``)."""

from __future__ import annotations

import json
from typing import Any

import nats
import pytest

from colonies_es import Workflow, func_spec
from colonies_es.client import ColoniesError
from tests.stack import Stack


def gen_nums(ctx={}):  # type: ignore[no-untyped-def]  # noqa: B006 - the seed's signature
    return 1, 2


def sum_nums(n1, n2, ctx={}):  # type: ignore[no-untyped-def]  # noqa: B006
    return n1 + n2


def test_seed_workflow_gives_three(stack: Stack) -> None:
    colony = stack.new_colony()
    executor = stack.new_executor(colony)
    workflow = Workflow(colonyname=colony.name)
    workflow.functionspecs.append(
        func_spec(func=gen_nums, args=[], colonyname=colony.name, executortype="python-executor")
    )
    second = func_spec(
        func=sum_nums, args=[], colonyname=colony.name, executortype="python-executor"
    )
    second.conditions.dependencies.append("gen_nums")
    workflow.functionspecs.append(second)
    graph = stack.client.submit_workflow(workflow, colony.owner_prvkey)

    first = stack.client.assign(colony.name, 10, executor)
    assert first.spec.funcname == "gen_nums"
    stack.client.close(first.processid, [1, 2], executor)
    then = stack.client.assign(colony.name, 10, executor)
    assert then.spec.funcname == "sum_nums"
    assert then.input == [1, 2]
    stack.client.close(then.processid, [sum(then.input)], executor)

    done = stack.client.wait(then, 10, colony.owner_prvkey)
    assert done.output == [3]
    assert stack.client.get_processgraph(graph.processgraphid, colony.owner_prvkey).state == 2


async def test_srv_stats_show_each_ops_processing_time_and_errors(stack: Stack) -> None:
    colony = stack.new_colony()  # add_colony: a write to the log, answered 200
    with pytest.raises(ColoniesError) as refused:
        stack.client.get_colony(f"{colony.name}-none", colony.owner_prvkey)
    assert refused.value.status == 404

    nc = await nats.connect(stack.nats.url)
    try:
        reply = await nc.request("$SRV.STATS.colonies", b"", timeout=10)
    finally:
        await nc.close()
    endpoints = _by_op(json.loads(reply.data)["endpoints"])

    added = endpoints["add_colony"]
    assert added["data"]["answered"] >= 1
    assert added["data"]["errors_by_status"] == {}
    # From arrival to reply, a JetStream append included: far more than the 100 us it
    # takes to start the command's task (all nats-py's own timing would see).
    assert added["average_processing_time"] >= 100_000
    assert added["processing_time"] >= added["average_processing_time"]

    got = endpoints["get_colony"]
    assert got["num_errors"] >= 1
    assert got["data"]["errors_by_status"]["404"] >= 1
    assert got["last_error"].startswith("404 colony")
    assert got["processing_time"] > 0


def _by_op(endpoints: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each op's stats, its two endpoints together: ``<op>`` (the queue group) and
    ``<op>-here`` (this replica alone, where a client with affinity sends)."""
    merged: dict[str, dict[str, Any]] = {}
    for endpoint in sorted(endpoints, key=lambda e: not e["name"].endswith("-here")):
        op = endpoint["name"].removesuffix("-here")
        into = merged.setdefault(op, {"data": {"answered": 0, "errors_by_status": {}}})
        for field in ("num_requests", "num_errors", "processing_time"):
            into[field] = into.get(field, 0) + (endpoint.get(field) or 0)
        into["data"]["answered"] += endpoint["data"]["answered"]
        for status, count in endpoint["data"]["errors_by_status"].items():
            errors = into["data"]["errors_by_status"]
            errors[status] = errors.get(status, 0) + count
        if endpoint.get("last_error"):
            into["last_error"] = endpoint["last_error"]
        answered = into["data"]["answered"]
        into["average_processing_time"] = into["processing_time"] // answered if answered else 0
    return merged
