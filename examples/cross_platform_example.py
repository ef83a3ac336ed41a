"""The seed's cross-platform workflow: fetch (container-executor) -> process (hpc-executor)
-> store (cloud-executor), each step run by an executor of its own type.

Run it against `colonies dev`:

    source .colonies/dev.env
    python examples/cross_platform_example.py

The example starts the three executors itself (`colonies executor start --type ...`,
as you would start them on three platforms) and stops them at the end. The functions
are given by name with their source (``code=``): the submitting machine need not have
them.

Written as for pycolonies; only the import and the address (from dev.env) differ.
"""

import subprocess
import sys

from colonies_es import Workflow, colonies_client, func_spec

client, colony_name, colony_prvkey, executor_name, prvkey = colonies_client()

FETCH = """
def fetch(dataset, ctx={}):
    # Pretend to download the dataset
    return {"dataset": dataset, "values": [3, 1, 4, 1, 5, 9, 2, 6]}
"""

PROCESS = """
def process(data, ctx={}):
    values = data["values"]
    return {"dataset": data["dataset"], "count": len(values), "mean": sum(values) / len(values)}
"""

STORE = """
def store(result, ctx={}):
    # Pretend to upload the result
    return f"stored {result['dataset']}: {result['count']} values, mean {result['mean']}"
"""

EXECUTOR_TYPES = ["container-executor", "hpc-executor", "cloud-executor"]


def start_executor(executortype):
    """`colonies executor start`, in the background (it reads COLONIES_* from the
    environment and registers itself with the colony owner's key)."""
    command = [sys.executable, "-m", "colonies_es.cli", "executor", "start"]
    command += ["--type", executortype, "--poll-timeout", "1"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL)


def main():
    executors = [start_executor(executortype) for executortype in EXECUTOR_TYPES]
    try:
        wf = Workflow(colonyname=colony_name)

        # Fetch from data source (container executor)
        f1 = func_spec(
            func="fetch",
            args=["dataset"],
            colonyname=colony_name,
            executortype="container-executor",
            maxexectime=300,
            maxwaittime=60,
            code=FETCH,
        )
        wf.functionspecs.append(f1)

        # Process on HPC (hpc executor)
        f2 = func_spec(
            func="process",
            args=[],
            colonyname=colony_name,
            executortype="hpc-executor",
            maxexectime=3600,
            maxwaittime=300,
            code=PROCESS,
        )
        f2.conditions.dependencies.append("fetch")
        wf.functionspecs.append(f2)

        # Store results (cloud executor)
        f3 = func_spec(
            func="store",
            args=[],
            colonyname=colony_name,
            executortype="cloud-executor",
            maxexectime=120,
            maxwaittime=60,
            code=STORE,
        )
        f3.conditions.dependencies.append("process")
        wf.functionspecs.append(f3)

        processgraph = client.submit_workflow(wf, prvkey)
        print(f"Workflow submitted: {processgraph.processgraphid}")

        store_process = client.find_process("store", processgraph.processids, prvkey)
        store_process = client.wait(store_process, 60, prvkey)

        names = {e.executorid: e.executorname for e in client.list_executors(colony_name, prvkey)}
        for processid in processgraph.processids:
            p = client.get_process(processid, prvkey)
            print(f"  {p.spec.funcname} ran on {names.get(p.assignedexecutorid, '?')}")
        print(f"Result: {store_process.output[0]}")
    finally:
        for executor in executors:
            executor.terminate()
        for executor in executors:
            executor.wait()


if __name__ == "__main__":
    main()
