"""The seed's error handling: a failed process is retried up to ``maxretries`` times.

``my_function`` fails on its first two attempts and succeeds on the third. It tells the
attempts apart by ``ctx["process"].retries`` (0 on the first attempt, 1 on the second,
...), which the engine keeps across attempts: nothing else needs to survive a failure,
and the retry may run on another executor, on another machine.

- submitted with ``maxretries=3``, it succeeds after 2 retries;
- submitted with ``maxretries=1``, it has 2 attempts: both fail, so the process and its
  workflow FAIL, and the errors of both attempts are kept.

Run it against `colonies dev` (which runs a python executor):

    source .colonies/dev.env
    python examples/error_handling_example.py

Written as for pycolonies; only the import and the address (from dev.env) differ.
"""

# ruff: noqa: B006  (the seed's functions take ctx={})

from colonies_es import colonies_client, func_spec
from colonies_es.states import ProcessState

client, colony_name, colony_prvkey, executor_name, prvkey = colonies_client()


def my_function(ctx={}):
    attempt = ctx["process"].retries + 1
    if attempt <= 2:
        raise RuntimeError(f"the service is not ready (attempt {attempt})")
    return f"done on attempt {attempt}"


def submit_and_wait(maxretries):
    f = func_spec(
        func=my_function,
        args=[],
        colonyname=colony_name,
        executortype="python-executor",
        maxexectime=300,  # 5 minutes max execution
        maxwaittime=60,  # 1 minute to find executor
        maxretries=maxretries,  # Retry up to maxretries times on failure
    )
    process = client.submit_func_spec(f, prvkey)
    print(f"Submitted my_function with maxretries={maxretries}: graph {process.processgraphid}")
    process = client.wait(process, 60, prvkey)
    graph = client.get_processgraph(process.processgraphid, prvkey)
    state = ProcessState(process.state).name
    print(f"  {state} retries={process.retries} workflow={ProcessState(graph.state).name}")
    # The python executor reports a failure as one line, then the traceback
    for error in process.errors:
        if not error.startswith("Traceback"):
            print(f"  error: {error}")
    if process.state == ProcessState.SUCCESS:
        print(f"  output: {process.output}")
    return process


def main():
    submit_and_wait(maxretries=3)
    submit_and_wait(maxretries=1)


if __name__ == "__main__":
    main()
