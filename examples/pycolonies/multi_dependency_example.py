"""The seed's workflow with multiple dependencies, with unmodified pycolonies: fetch_a and
fetch_b run in parallel, merge adds them: 10 + 20 = 30.

    source .colonies/dev.env
    python examples/pycolonies/multi_dependency_example.py

One change from the seed: fetch_a and fetch_b return the numbers themselves, not
``{"source": ..., "value": ...}``. pycolonies' Process model accepts only strings and
numbers in a process's input and output (``List[str | int | float]``), so it cannot read
a process that returned a dict, from this system or from a ColonyOS server alike.
"""

# ruff: noqa: B006  (the seed's functions take ctx={})

from pycolonies import Workflow, colonies_client, func_spec

client, colony_name, colony_prvkey, executor_name, prvkey = colonies_client()


def fetch_a(ctx={}):
    return 10


def fetch_b(ctx={}):
    return 20


def merge(a, b, ctx={}):
    return a + b


def main():
    wf = Workflow(colonyname=colony_name)
    for fetch in (fetch_a, fetch_b):
        wf.functionspecs.append(
            func_spec(
                func=fetch,
                args=[],
                colonyname=colony_name,
                executortype="python-executor",
                maxexectime=100,
                maxwaittime=100,
            )
        )
    f_merge = func_spec(
        func=merge,
        args=[],
        colonyname=colony_name,
        executortype="python-executor",
        maxexectime=100,
        maxwaittime=100,
    )
    f_merge.conditions.dependencies.append("fetch_a")
    f_merge.conditions.dependencies.append("fetch_b")
    wf.functionspecs.append(f_merge)

    processgraph = client.submit_workflow(wf, prvkey)
    print(f"Workflow submitted: {processgraph.processgraphid}")
    merge_process = client.find_process("merge", processgraph.processids, prvkey)
    merge_process = client.wait(merge_process, 60, prvkey)
    print(f"Result: {merge_process.output[0]}")


if __name__ == "__main__":
    main()
