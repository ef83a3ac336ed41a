"""The seed's dynamic workflow (map-reduce) with unmodified pycolonies: map adds five
gen_nums children while it runs, each returns (1, 2), and reduce sums the ten numbers:
(1 + 2) * 5 = 15.

    source .colonies/dev.env
    python examples/pycolonies/mapreduce_example.py

map runs on the executor, where ``colonies`` is the executor's client and ``func_spec``
is given (examples/pycolonies/python_executor.py provides both, and so does the executor
`colonies dev` starts); ``ctx`` holds the process and the executor's key, which add_child
needs.
"""

# ruff: noqa: B006  (the seed's functions take ctx={})

import sys

from pycolonies import Workflow, colonies_client, func_spec

client, colony_name, colony_prvkey, executor_name, prvkey = colonies_client()
colonies = client


def map(ctx={}):
    code = """def gen_nums(ctx={}):
    return 1, 2"""

    processgraphid = ctx["process"].processgraphid
    map_processid = ctx["process"].processid
    executor_prvkey = ctx["executor_prvkey"]

    processgraph = colonies.get_processgraph(processgraphid, executor_prvkey)
    reduce_process = colonies.find_process("reduce", processgraph.processids, executor_prvkey)
    reduce_processid = reduce_process.processid

    insert = True
    for i in range(5):
        f = func_spec(
            func="gen_nums",
            args=[],
            colonyname=ctx["colonyname"],
            executortype="python-executor",
            maxexectime=100,
            maxwaittime=100,
            code=code,
        )
        colonies.add_child(
            processgraphid,
            map_processid,
            reduce_processid,
            f,
            f"gen_nums_{i}",
            insert,
            executor_prvkey,
        )
        insert = False


def reduce(*nums, ctx={}):
    total = 0
    for n in nums:
        total += n
    return total


def main():
    wf = Workflow(colonyname=colony_name)
    f_map = func_spec(
        func=map,
        args=[],
        colonyname=colony_name,
        executortype="python-executor",
        maxexectime=100,
        maxwaittime=100,
    )
    wf.functionspecs.append(f_map)
    f_reduce = func_spec(
        func=reduce,
        args=[],
        colonyname=colony_name,
        executortype="python-executor",
        maxexectime=100,
        maxwaittime=100,
    )
    f_reduce.conditions.dependencies.append("map")
    wf.functionspecs.append(f_reduce)

    processgraph = client.submit_workflow(wf, prvkey)
    print(f"Workflow submitted: {processgraph.processgraphid}")
    reduce_process = client.find_process("reduce", processgraph.processids, prvkey)
    try:
        reduce_process = client.wait(reduce_process, 60, prvkey)
    except Exception as error:  # wait() raises when the process fails or time runs out
        sys.exit(f"reduce did not succeed: {error!r}")
    processgraph = client.get_processgraph(processgraph.processgraphid, prvkey)
    for processid in processgraph.processids:
        p = client.get_process(processid, prvkey)
        print(f"  {p.spec.nodename}: out={p.output}")
    print(f"Result: {reduce_process.output[0]}")


if __name__ == "__main__":
    main()
