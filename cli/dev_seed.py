"""The seed's workflow functions (workflows-tutorial.md), as the user writes them.

`colonies dev --demo` submits them: a function travels to the executor as its source text
and runs there, so these keep the seed's untyped signatures with ``ctx={}``.
"""

# mypy: allow-untyped-defs
# ruff: noqa: B006

EXECUTOR_TYPE = "python-executor"


def gen_nums(ctx={}):
    return 1, 2


def sum_nums(n1, n2, ctx={}):
    return n1 + n2


def fetch_a(ctx={}):
    return {"source": "A", "value": 10}


def fetch_b(ctx={}):
    return {"source": "B", "value": 20}


def merge(a, b, ctx={}):
    return a["value"] + b["value"]


def reduce(*nums, ctx={}):
    total = 0
    for n in nums:
        total += n
    return total


# `map` runs on the executor, where `colonies` (a connected client) and `func_spec` are
# globals. It travels as text (func_spec(func="map", code=MAP_CODE)): here it would name
# undefined globals and shadow the built-in map.
MAP_CODE = '''\
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
            code=code
        )
        colonies.add_child(
            processgraphid,
            map_processid,
            reduce_processid,
            f,
            f"gen_nums_{i}",
            insert,
            executor_prvkey
        )
        insert = False
'''
