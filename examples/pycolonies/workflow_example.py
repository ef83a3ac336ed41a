"""The seed's basic workflow with unmodified pycolonies: gen_nums() returns (1, 2),
sum_nums(1, 2) returns 3.

    source .colonies/dev.env
    python examples/pycolonies/workflow_example.py

pycolonies reads COLONIES_SERVER_HOST/PORT, which `colonies dev` points at its ColonyOS
gateway. Any executor of type python-executor runs it: the one `colonies dev` starts, or
examples/pycolonies/python_executor.py.
"""

# ruff: noqa: B006  (the seed's functions take ctx={})

from pycolonies import Workflow, colonies_client, func_spec

client, colony_name, colony_prvkey, executor_name, prvkey = colonies_client()


def gen_nums(ctx={}):
    return 1, 2


def sum_nums(n1, n2, ctx={}):
    return n1 + n2


def main():
    wf = Workflow(colonyname=colony_name)
    f1 = func_spec(
        func=gen_nums,
        args=[],
        colonyname=colony_name,
        executortype="python-executor",
        maxexectime=100,
        maxwaittime=100,
    )
    wf.functionspecs.append(f1)
    f2 = func_spec(
        func=sum_nums,
        args=[],
        colonyname=colony_name,
        executortype="python-executor",
        maxexectime=100,
        maxwaittime=100,
    )
    f2.conditions.dependencies.append("gen_nums")
    wf.functionspecs.append(f2)

    processgraph = client.submit_workflow(wf, prvkey)
    print(f"Workflow submitted: {processgraph.processgraphid}")
    sum_process = client.find_process("sum_nums", processgraph.processids, prvkey)
    sum_process = client.wait(sum_process, 60, prvkey)
    print(f"Result: {sum_process.output[0]}")


if __name__ == "__main__":
    main()
