"""The seed's first workflow end to end on a real engine: gen_nums -> sum_nums gives 3."""

from __future__ import annotations

from colonies_es import Workflow, func_spec
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
