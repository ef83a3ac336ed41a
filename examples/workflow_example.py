"""The seed's basic workflow: gen_nums() returns (1, 2), sum_nums(1, 2) returns 3.

Run it against `colonies dev` (which runs a python executor):

    source .colonies/dev.env
    python examples/workflow_example.py

Written as for pycolonies; only the import and the address (from dev.env) differ.
"""

# ruff: noqa: B006  (the seed's functions take ctx={})

from colonies_es import Workflow, colonies_client, func_spec

client, colony_name, colony_prvkey, executor_name, prvkey = colonies_client()


# Define functions
def gen_nums(ctx={}):
    return 1, 2


def sum_nums(n1, n2, ctx={}):
    return n1 + n2


def main():
    # Create workflow
    wf = Workflow(colonyname=colony_name)

    # First function - generates data
    f1 = func_spec(
        func=gen_nums,
        args=[],
        colonyname=colony_name,
        executortype="python-executor",
        maxexectime=100,
        maxwaittime=100,
    )
    wf.functionspecs.append(f1)

    # Second function - depends on first
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

    # Submit workflow
    processgraph = client.submit_workflow(wf, prvkey)
    print(f"Workflow submitted: {processgraph.processgraphid}")

    # Wait for the last process; its output is the result
    sum_process = client.find_process("sum_nums", processgraph.processids, prvkey)
    sum_process = client.wait(sum_process, 60, prvkey)
    print(f"Result: {sum_process.output[0]}")


if __name__ == "__main__":
    main()
