"""The engine's decisions: one typed handler per op, grouped by what they act on.

- :mod:`.colonies`: colonies and their statistics;
- :mod:`.executors`: executors and users of a colony;
- :mod:`.processes`: submitting, reading, listing and removing processes, attributes;
- :mod:`.work`: executors claiming and reporting work;
- :mod:`.graphs`: process graphs (read, grow, rerun, cancel, remove);
- :mod:`.logs`: process logs.

:data:`HANDLERS` maps every op of :data:`colonies_es.protocol.OPS` to its :class:`Op`
(the body type and the handler); a test checks that the two tables agree.
"""

from __future__ import annotations

from typing import Any

from colonies_es import protocol
from colonies_es.engine.ops import colonies, executors, graphs, logs, processes, work
from colonies_es.engine.ops.base import EMPTY, Op, Reply, op

__all__ = ["EMPTY", "HANDLERS", "Op", "Reply"]

HANDLERS: dict[str, Op[Any]] = {
    # colonies
    "add_colony": op(protocol.AddColony, colonies.add_colony),
    "del_colony": op(protocol.ColonyRef, colonies.del_colony),
    "list_colonies": op(protocol.Empty, colonies.list_colonies),
    "get_colony": op(protocol.ColonyRef, colonies.get_colony),
    "stats": op(protocol.ColonyRef, colonies.stats),
    # executors and users
    "add_executor": op(protocol.AddExecutor, executors.add_executor),
    "approve_executor": op(protocol.ExecutorRef, executors.approve_executor),
    "reject_executor": op(protocol.ExecutorRef, executors.reject_executor),
    "remove_executor": op(protocol.ExecutorRef, executors.remove_executor),
    "list_executors": op(protocol.ColonyRef, executors.list_executors),
    "get_executor": op(protocol.ExecutorRef, executors.get_executor),
    "whoami": op(protocol.ColonyRef, executors.whoami),
    "add_user": op(protocol.AddUser, executors.add_user),
    # processes
    "submit_func_spec": op(protocol.SubmitFuncSpec, processes.submit_func_spec),
    "submit_workflow": op(protocol.SubmitWorkflow, processes.submit_workflow),
    "get_process": op(protocol.ProcessRef, processes.get_process),
    "find_process": op(protocol.FindProcess, processes.find_process),
    "wait_process": op(protocol.WaitProcess, processes.wait_process),
    "list_processes": op(protocol.ListQuery, processes.list_processes),
    "remove_process": op(protocol.ProcessRef, processes.remove_process),
    "remove_all_processes": op(protocol.RemoveAll, graphs.remove_all),
    "add_attribute": op(protocol.AddAttribute, processes.add_attribute),
    # executors' work
    "claim": op(protocol.Claim, work.claim),
    "close": op(protocol.CloseProcess, work.close),
    "fail": op(protocol.FailProcess, work.fail),
    "set_output": op(protocol.SetOutput, work.set_output),
    # logs
    "add_log": op(protocol.AddLog, logs.add_log),
    "get_process_log": op(protocol.GetLogs, logs.get_process_log),
    # process graphs
    "get_processgraph": op(protocol.GraphRef, graphs.get_processgraph),
    "get_processgraphs": op(protocol.ListQuery, graphs.get_processgraphs),
    "remove_processgraph": op(protocol.GraphRef, graphs.remove_processgraph),
    "remove_all_processgraphs": op(protocol.RemoveAll, graphs.remove_all),
    "cancel_processgraph": op(protocol.GraphRef, graphs.cancel_processgraph),
    "rerun_processgraph": op(protocol.GraphRef, graphs.rerun_processgraph),
    "add_child": op(protocol.AddChild, graphs.add_child),
    "add_children": op(protocol.AddChildren, graphs.add_children),
}
