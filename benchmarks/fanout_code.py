"""The dynamic map-reduce that the fan-out benchmarks run (groups ``peers`` and
``mapreduce``): its functions' source, as executors receive it, and where its time goes.

``map(count)`` adds ``count`` processes of ``pair`` between itself and ``reduce``, as the
seed's map does: one ``add_child`` each (as code written for pycolonies does; the
executor sends them together, :mod:`colonies_es.deferred_children`) or ``add_children``
of a batch at a time (this project's addition); ``reduce`` sums what the pairs returned.
"""

from __future__ import annotations

from datetime import datetime

from colonies_es.client import Colonies
from colonies_es.models import Process

REDUCE = "def reduce(*numbers, ctx={}):\n    return sum(numbers)\n"

ADD_CHILDREN_BATCH = 250
"""Pairs per ``add_children`` command: an event must stay readable in one reply (at a 1 MB
max_payload about 850 pairs)."""

_MAP = """
def map(count, ctx={}):
    process = ctx["process"]
    prvkey = ctx["executor_prvkey"]
    graph = colonies.get_processgraph(process.processgraphid, prvkey)
    reduce = colonies.find_process("reduce", graph.processids, prvkey)
    for i in range(count):
        child = func_spec(
            func="pair", args=ARGS, colonyname=ctx["colonyname"],
            executortype=process.spec.conditions.executortype, code=PAIR,
        )
        colonies.add_child(
            process.processgraphid, process.processid, reduce.processid, child,
            f"pair_{i}", i == 0, prvkey,
        )
"""

_MAP_BATCH = """
def map(count, ctx={}):
    process = ctx["process"]
    prvkey = ctx["executor_prvkey"]
    graph = colonies.get_processgraph(process.processgraphid, prvkey)
    reduce = colonies.find_process("reduce", graph.processids, prvkey)
    for first in range(0, count, BATCH):
        chunk = range(first, min(first + BATCH, count))
        children = [
            func_spec(
                func="pair", args=ARGS, colonyname=ctx["colonyname"],
                executortype=process.spec.conditions.executortype, code=PAIR,
            )
            for i in chunk
        ]
        colonies.add_children(
            process.processgraphid, process.processid, reduce.processid, children,
            [f"pair_{i}" for i in chunk], first == 0, prvkey,
        )
"""


def map_source(pair: str, args: str, *, batch: bool = False) -> str:
    """The source of ``map``: its pairs run ``pair`` (a function's source) with ``args``
    (a Python expression that may use the pair's number ``i``, e.g. ``"[i]"``), added one
    ``add_child`` each, or :data:`ADD_CHILDREN_BATCH` per ``add_children`` (``batch``),
    the first inserted before the reduce and the others beside it."""
    template = _MAP_BATCH if batch else _MAP
    return (
        template.replace("ARGS", args)
        .replace("PAIR", repr(pair))
        .replace("BATCH", str(ADD_CHILDREN_BATCH))
    )


def fanout_times(client: Colonies, reduce: Process, prvkey: str) -> tuple[datetime, ...] | None:
    """The engine's timestamps that split a fan-out's time: the graph's submission, the
    map's start and end, the reduce's start and end; None when one is missing."""
    graph = client.get_processgraph(reduce.processgraphid, prvkey)
    mapper = client.find_process("map", graph.processids, prvkey)
    assert mapper is not None
    times = (
        graph.submissiontime,
        mapper.starttime,
        mapper.endtime,
        reduce.starttime,
        reduce.endtime,
    )
    if any(moment is None for moment in times):
        return None
    return times  # type: ignore[return-value]
