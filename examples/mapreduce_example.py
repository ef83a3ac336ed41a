"""The seed's dynamic workflow (map-reduce): map adds five gen_nums children while it runs,
each returns (1, 2), and reduce sums the ten numbers: (1 + 2) * 5 = 15.

    map -> {gen_nums_0, ..., gen_nums_4} -> reduce

Run it against `colonies dev` (which runs a python executor):

    source .colonies/dev.env
    python examples/mapreduce_example.py

map runs on the executor: there ``colonies`` is the executor's client and ``func_spec``
is given, and ``ctx`` holds the process and the executor's key, which add_child needs
(only the executor running the parent may add children to it). The first child is
inserted between map and reduce (insert=True); the others are added beside it, each
with reduce waiting for it too (insert=False, childprocessid=reduce).

Written as for pycolonies; only the import and the address (from dev.env) differ.
"""

# ruff: noqa: B006  (the seed's functions take ctx={})

import sys

from colonies_es import Workflow, colonies_client, func_spec
from colonies_es.states import ProcessState

client, colony_name, colony_prvkey, executor_name, prvkey = colonies_client()
colonies = client  # the name the executor gives its client: map below uses it


def map(ctx={}):
    code = """def gen_nums(ctx={}):
    return 1, 2"""

    processgraphid = ctx["process"].processgraphid
    map_processid = ctx["process"].processid
    executor_prvkey = ctx["executor_prvkey"]

    # Get the processgraph
    processgraph = colonies.get_processgraph(processgraphid, executor_prvkey)

    # Find the reduce process
    reduce_process = colonies.find_process("reduce", processgraph.processids, executor_prvkey)
    reduce_processid = reduce_process.processid

    # Add child processes dynamically
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

    # Map function
    f_map = func_spec(
        func=map,
        args=[],
        colonyname=colony_name,
        executortype="python-executor",
        maxexectime=100,
        maxwaittime=100,
    )
    wf.functionspecs.append(f_map)

    # Reduce function - depends on map
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

    # Wait for reduce: it becomes ready once map and the children it added have closed
    reduce_process = client.find_process("reduce", processgraph.processids, prvkey)
    reduce_process = client.wait(reduce_process, 60, prvkey)
    if reduce_process.state != ProcessState.SUCCESS:
        sys.exit(f"reduce ended {ProcessState(reduce_process.state).name}: {reduce_process.errors}")

    # The graph now holds the children map added
    processgraph = client.get_processgraph(processgraph.processgraphid, prvkey)
    for processid in processgraph.processids:
        p = client.get_process(processid, prvkey)
        print(f"  {p.spec.nodename}: out={p.output}")
    print(f"Result: {reduce_process.output[0]}")


if __name__ == "__main__":
    main()
