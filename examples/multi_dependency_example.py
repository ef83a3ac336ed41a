"""The seed's workflow with multiple dependencies: fetch_a and fetch_b run in parallel,
merge adds their values: 10 + 20 = 30.

Run it against `colonies dev` (which runs a python executor):

    source .colonies/dev.env
    python examples/multi_dependency_example.py

Written as for pycolonies; only the import and the address (from dev.env) differ.
"""

# ruff: noqa: B006  (the seed's functions take ctx={})

from colonies_es import Workflow, colonies_client, func_spec

client, colony_name, colony_prvkey, executor_name, prvkey = colonies_client()


def fetch_a(ctx={}):
    return {"source": "A", "value": 10}


def fetch_b(ctx={}):
    return {"source": "B", "value": 20}


def merge(a, b, ctx={}):
    return a["value"] + b["value"]


def main():
    wf = Workflow(colonyname=colony_name)

    # Two parallel fetchers
    f_a = func_spec(
        func=fetch_a,
        args=[],
        colonyname=colony_name,
        executortype="python-executor",
        maxexectime=60,
        maxwaittime=60,
    )
    wf.functionspecs.append(f_a)

    f_b = func_spec(
        func=fetch_b,
        args=[],
        colonyname=colony_name,
        executortype="python-executor",
        maxexectime=60,
        maxwaittime=60,
    )
    wf.functionspecs.append(f_b)

    # Merge depends on both fetchers
    f_merge = func_spec(
        func=merge,
        args=[],
        colonyname=colony_name,
        executortype="python-executor",
        maxexectime=60,
        maxwaittime=60,
    )
    f_merge.conditions.dependencies.append("fetch_a")
    f_merge.conditions.dependencies.append("fetch_b")
    wf.functionspecs.append(f_merge)

    processgraph = client.submit_workflow(wf, prvkey)
    print(f"Workflow submitted: {processgraph.processgraphid}")

    # merge receives the outputs of fetch_a and fetch_b, in that order
    merge_process = client.find_process("merge", processgraph.processids, prvkey)
    merge_process = client.wait(merge_process, 60, prvkey)
    print(f"Result: {merge_process.output[0]}")


if __name__ == "__main__":
    main()
