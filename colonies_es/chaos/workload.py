"""The mixed workload the harness runs under faults, and what each function must return.

Five shapes of workflow, picked in turn by the harness's random generator:

- ``sum``: the seed's ``gen_nums -> sum_nums`` (result 3);
- ``merge``: the seed's ``fetch_a, fetch_b -> merge`` (result 30);
- ``mapreduce``: the seed's dynamic ``map -> reduce``, where ``map`` adds five
  ``gen_nums`` children: the first with ``add_child`` (inserted before the reduce),
  the other four in one ``add_children`` (result 15);
- ``retry``: ``flaky`` fails its first attempt and succeeds on a retry (result 7);
- ``timeout``: ``sleepy`` overruns its ``maxexectime`` on its first attempt, the engine
  takes it back and a retry succeeds (result 11).

Every process has an execution limit and retries, so that work held by a killed
executor comes back. Functions travel as source text and run on the python executor;
:func:`expected_output` is the same computation, for the checker.

``map`` differs from the seed's in one way: it is *resumable*. A retry of ``map`` (its
executor was killed after adding some children) adds only the children not yet in the
graph (``add_children`` is all or nothing, so its four are either all there or none);
the seed's version would add ``gen_nums_0`` again and fail on the nodename.
"""

from __future__ import annotations

from typing import Any

from colonies_es.models import FuncSpec, Workflow, func_spec

__all__ = [
    "EXECUTOR_TYPE",
    "SHAPES",
    "expected_output",
    "expected_result",
    "make_workflow",
]

EXECUTOR_TYPE = "chaos-executor"
MAX_EXEC_TIME = 6
"""Seconds an attempt may run before the engine takes the process back."""
MAX_RETRIES = 20
"""Retries per process: enough for a process to ride out many killed executors."""
SLEEPY_LIMIT = 2
"""``sleepy``'s own execution limit; its first attempt sleeps past it."""
MAP_CHILDREN = 5

GEN_NUMS = "def gen_nums(ctx={}):\n    return 1, 2\n"
SUM_NUMS = "def sum_nums(n1, n2, ctx={}):\n    return n1 + n2\n"
FETCH_A = 'def fetch_a(ctx={}):\n    return {"source": "A", "value": 10}\n'
FETCH_B = 'def fetch_b(ctx={}):\n    return {"source": "B", "value": 20}\n'
MERGE = 'def merge(a, b, ctx={}):\n    return a["value"] + b["value"]\n'
REDUCE = "def reduce(*nums, ctx={}):\n    return sum(nums)\n"
FLAKY = """\
def flaky(ctx={}):
    if ctx["process"].retries == 0:
        raise RuntimeError("the first attempt of flaky always fails")
    return 7
"""
SLEEPY = f"""\
import time

def sleepy(ctx={{}}):
    if ctx["process"].retries == 0:
        time.sleep({SLEEPY_LIMIT + 2})  # past maxexectime: the engine takes it back
    return 11
"""
MAP = f'''\
def map(ctx={{}}):
    process = ctx["process"]
    key = ctx["executor_prvkey"]
    graph = colonies.get_processgraph(process.processgraphid, key)
    names = {{}}
    for processid in graph.processids:
        names[colonies.get_process(processid, key).spec.nodename] = processid
    specs, nodenames = [], []
    for i in range({MAP_CHILDREN}):
        nodename = "gen_nums_" + str(i)
        if nodename in names:  # added by an earlier attempt of this map
            continue
        spec = func_spec(
            func="gen_nums",
            args=[],
            colonyname=ctx["colonyname"],
            executortype="{EXECUTOR_TYPE}",
            maxexectime={MAX_EXEC_TIME},
            maxretries={MAX_RETRIES},
            code={GEN_NUMS!r},
        )
        if i == 0:  # the first child takes the map's place before the reduce
            colonies.add_child(
                process.processgraphid, process.processid, names["reduce"], spec, nodename,
                True, key,
            )
        else:
            specs.append(spec)
            nodenames.append(nodename)
    if specs:  # the others at once, beside the first, all feeding the reduce
        colonies.add_children(
            process.processgraphid, process.processid, names["reduce"], specs, nodenames,
            False, key,
        )
'''

SHAPES = ("sum", "merge", "mapreduce", "retry", "timeout")

_RESULTS: dict[str, tuple[str, list[Any]]] = {
    "sum": ("sum_nums", [3]),
    "merge": ("merge", [30]),
    "mapreduce": ("reduce", [15]),
    "retry": ("flaky", [7]),
    "timeout": ("sleepy", [11]),
}


def _node(
    colonyname: str,
    nodename: str,
    code: str,
    *dependencies: str,
    maxexectime: int = MAX_EXEC_TIME,
) -> FuncSpec:
    spec = func_spec(
        func=nodename,
        args=[],
        colonyname=colonyname,
        executortype=EXECUTOR_TYPE,
        maxexectime=maxexectime,
        maxretries=MAX_RETRIES,
        code=code,
    )
    spec.conditions.dependencies.extend(dependencies)
    return spec


def make_workflow(shape: str, colonyname: str) -> Workflow:
    """The workflow of ``shape`` (one of :data:`SHAPES`) in ``colonyname``."""
    nodes = {
        "sum": lambda: [
            _node(colonyname, "gen_nums", GEN_NUMS),
            _node(colonyname, "sum_nums", SUM_NUMS, "gen_nums"),
        ],
        "merge": lambda: [
            _node(colonyname, "fetch_a", FETCH_A),
            _node(colonyname, "fetch_b", FETCH_B),
            _node(colonyname, "merge", MERGE, "fetch_a", "fetch_b"),
        ],
        "mapreduce": lambda: [
            _node(colonyname, "map", MAP),
            _node(colonyname, "reduce", REDUCE, "map"),
        ],
        "retry": lambda: [_node(colonyname, "flaky", FLAKY)],
        "timeout": lambda: [_node(colonyname, "sleepy", SLEEPY, maxexectime=SLEEPY_LIMIT)],
    }
    return Workflow(colonyname=colonyname, functionspecs=nodes[shape]())


def expected_output(funcname: str, inputs: list[Any]) -> list[Any] | None:
    """What the process ``funcname`` returns for ``inputs`` (its ``out``), or None for a
    function this workload does not have."""
    if funcname == "gen_nums":
        return [1, 2]
    if funcname == "sum_nums":
        return [inputs[0] + inputs[1]] if len(inputs) == 2 else None
    if funcname == "fetch_a":
        return [{"source": "A", "value": 10}]
    if funcname == "fetch_b":
        return [{"source": "B", "value": 20}]
    if funcname == "merge":
        return [inputs[0]["value"] + inputs[1]["value"]] if len(inputs) == 2 else None
    if funcname == "map":
        return []
    if funcname == "reduce":
        return [sum(inputs)]
    if funcname == "flaky":
        return [7]
    if funcname == "sleepy":
        return [11]
    return None


def expected_result(nodenames: set[str]) -> tuple[str, list[Any]] | None:
    """(final node, its output) of the workflow whose nodes are ``nodenames``: what the
    whole workflow must compute. None for a graph that is none of the shapes."""
    for final, output in _RESULTS.values():
        if final in nodenames:
            return final, output
    return None
