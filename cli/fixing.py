"""Debugging that can fix: re-run a failed workflow with new code, and step into a
function with pdb.

:func:`rerun_with_code` builds a new workflow from a FAILED one, as the client sees it
(the graph and its processes, dynamic children included, with the edges they really
had): a process that succeeded replays its recorded output (its code becomes a function
that returns it, so nothing it did runs again); every other process runs, with the
source from the given file when the file defines its function, else with its recorded
code. So the failed node runs the new code on the same input, and everything after it
runs too. The engine's own re-run (``workflow rerun`` without ``--code``) keeps outputs
without running anything; this one needs an executor of each type to replay them, and
records no origin (the new graph is an ordinary submission).

:func:`stepping_into` runs a block with pdb stopping at the first line of a function
whose code came from a process (the python executor compiles it as
``<colonies FUNCNAME ...>``).
"""

from __future__ import annotations

import ast
import base64
import contextlib
import json
import pdb
import sys
from collections.abc import Iterator
from types import FrameType
from typing import Any

from colonies_es.client import Colonies
from colonies_es.models import FuncSpec, Process, ProcessGraph, Workflow
from colonies_es.states import ProcessState

__all__ = ["defined_functions", "rerun_with_code", "stepping_into", "with_code"]


def defined_functions(source: str) -> set[str]:
    """The names of the functions ``source`` defines at its top level. Raises
    SyntaxError when it does not parse."""
    tree = ast.parse(source)
    return {
        node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }


def with_code(spec: FuncSpec, source: str) -> FuncSpec:
    """A copy of ``spec`` carrying ``source`` as its code."""
    env = {**spec.env, "code": base64.b64encode(source.encode()).decode("ascii")}
    env.pop("args_spec", None)
    return _copy(spec, env=env)


def _replay(spec: FuncSpec, output: list[Any]) -> FuncSpec:
    """A copy of ``spec`` whose function returns ``output`` and does nothing else."""
    source = (
        "import json\n\n\n"
        f"def {spec.funcname}(*args, ctx=None, **kwargs):\n"
        f"    return tuple(json.loads({json.dumps(output)!r}))\n"
    )
    return with_code(spec, source)


def _copy(spec: FuncSpec, **changes: Any) -> FuncSpec:
    fields = {name: getattr(spec, name) for name in spec.__struct_fields__}
    fields.update(changes)
    return FuncSpec(**fields)


def rerun_with_code(
    client: Colonies, failed: ProcessGraph, source: str, prvkey: str
) -> tuple[ProcessGraph, list[str]]:
    """Submit the re-run of the FAILED graph ``failed`` with the functions ``source``
    defines; return the new graph and the nodenames that got the new code.

    Raises ValueError when the graph did not fail, or when ``source`` defines none of
    the functions that have to run again (nothing would change).
    """
    if failed.state != ProcessState.FAILED:
        raise ValueError(
            f"workflow {failed.processgraphid} is {ProcessState(failed.state).name}, "
            "not FAILED: only a failed workflow is re-run"
        )
    processes = [client.get_process(pid, prvkey) for pid in failed.processids]
    names = {p.processid: p.spec.nodename for p in processes}
    defined = defined_functions(source)
    specs, changed = [], []
    for process in processes:
        spec = _copy(
            process.spec,
            conditions=_copy_conditions(process, names),
        )
        if process.state == ProcessState.SUCCESS:
            specs.append(_replay(spec, list(process.output)))
        elif spec.funcname in defined:
            specs.append(with_code(spec, source))
            changed.append(spec.nodename)
        else:
            specs.append(spec)
    if not changed:
        rerun = sorted(p.spec.funcname for p in processes if p.state != ProcessState.SUCCESS)
        raise ValueError(
            f"the file defines none of the functions that run again ({', '.join(rerun)})"
        )
    workflow = Workflow(colonyname=failed.colonyname, functionspecs=specs)
    return client.submit_workflow(workflow, prvkey), changed


def _copy_conditions(process: Process, names: dict[str, str]) -> Any:
    """The process's conditions with the dependencies it really had: its parents (a
    dynamic child's included), in the order of its input."""
    conditions = process.spec.conditions
    parents = [names[pid] for pid in process.parents if pid in names]
    return type(conditions)(
        colonyname=conditions.colonyname,
        executortype=conditions.executortype,
        executornames=list(conditions.executornames),
        dependencies=parents,
    )


@contextlib.contextmanager
def stepping_into(funcname: str) -> Iterator[None]:
    """Within the block, pdb stops at the first line of the process function
    ``funcname`` when it is called (type ``n``, ``s``, ``p``, ``c`` as usual)."""
    debugger = pdb.Pdb()

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        code = frame.f_code
        if (
            event == "call"
            and code.co_name == funcname
            and code.co_filename.startswith("<colonies ")
        ):
            sys.settrace(None)
            debugger.set_trace(frame)
            return debugger.trace_dispatch
        return None

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        yield
    finally:
        sys.settrace(previous)
