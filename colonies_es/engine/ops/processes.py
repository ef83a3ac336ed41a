"""Ops on processes: submit (one function or a workflow), read, list, remove, attributes."""

from __future__ import annotations

from datetime import datetime

from colonies_es import crypto
from colonies_es.domain import Conflict, ProcessGraph, graph_ids
from colonies_es.engine.aggregates import Aggregates, audit
from colonies_es.engine.held import held_reply
from colonies_es.engine.ops.base import ENDED, LIVE, Reply, name_of
from colonies_es.engine.read_model import forwarded_listing
from colonies_es.engine.state import Effects
from colonies_es.models import Workflow, encode
from colonies_es.protocol import (
    MAX_CLAIM_WAIT,
    AddAttribute,
    FindProcess,
    ListQuery,
    ProcessRef,
    SubmitFuncSpec,
    SubmitWorkflow,
    WaitProcess,
)


async def submit_func_spec(
    aggregates: Aggregates, cmd: crypto.VerifiedCommand, body: SubmitFuncSpec, now: datetime
) -> Reply:
    """Submits one function as a graph of one process; answers with the process."""
    workflow = Workflow(colonyname=body.spec.conditions.colonyname, functionspecs=[body.spec])
    graph, effects = await _submit(aggregates, cmd, workflow, now)
    return Reply(encode(graph.process_model(graph.rootprocessids[0], shared=True)), effects)


async def submit_workflow(
    aggregates: Aggregates, cmd: crypto.VerifiedCommand, body: SubmitWorkflow, now: datetime
) -> Reply:
    """Submits a workflow as a new process graph; answers with the graph."""
    graph, effects = await _submit(aggregates, cmd, body.workflow, now)
    return Reply(encode(graph.to_model()), effects)


async def _submit(
    aggregates: Aggregates, cmd: crypto.VerifiedCommand, workflow: Workflow, now: datetime
) -> tuple[ProcessGraph, Effects]:
    """A new graph of the workflow, by a member, within the colony's pending quota."""
    colony = aggregates.member_colony(cmd, workflow.colonyname)
    adding = len(workflow.functionspecs)
    aggregates.quotas.check_pending(
        colony.name, aggregates.state.pending_processes(colony.name), adding
    )
    graph = ProcessGraph.submit(
        colony.name,
        workflow,
        initiatorid=cmd.caller_id,
        initiatorname=name_of(colony, cmd.caller_id),
        ids=graph_ids(cmd.replay_key),  # a retry decided elsewhere names the same graph
        **audit(cmd, now),
    )
    return graph, await aggregates.save_new(graph)


async def get_process(
    aggregates: Aggregates, cmd: crypto.VerifiedCommand, body: ProcessRef, now: datetime
) -> Reply:
    graph = await aggregates.readable(cmd, await aggregates.graph_id_of(body.processid))
    return Reply(encode(graph.process_model(body.processid, shared=True)))


async def find_process(
    aggregates: Aggregates, cmd: crypto.VerifiedCommand, body: FindProcess, now: datetime
) -> Reply:
    """The first of ``body.processids`` whose nodename is ``body.nodename``, or null: what
    a ``get_process`` of each in turn finds, with the same refusals (the first process
    before the match that does not exist, or that the caller may not read), in one
    request instead of one per process."""
    for processid in body.processids:
        graph = await aggregates.readable(cmd, await aggregates.graph_id_of(processid))
        if graph.process(processid).nodename == body.nodename:  # NotFound if not there
            return Reply(encode(graph.process_model(processid)))
    return Reply(b"null")


async def wait_process(
    aggregates: Aggregates, cmd: crypto.VerifiedCommand, body: WaitProcess, now: datetime
) -> Reply:
    """The process once it has ended (SUCCESS, FAILED, CANCELLED), or as it is after
    ``body.wait`` seconds (at most :data:`MAX_CLAIM_WAIT`): the request is held
    meanwhile (:class:`~colonies_es.engine.held.ProcessEnds`) and answered as soon as
    this replica applies the event that ends it, its own or another replica's. Members
    of the process's colony only, as ``get_process``."""
    graph_id = await aggregates.graph_id_of(body.processid)
    graph = await aggregates.readable(cmd, graph_id)
    if graph.nodes[body.processid].state not in ENDED:
        await aggregates.ends.wait(body.processid, min(max(body.wait, 0.0), MAX_CLAIM_WAIT))
        graph = await aggregates.readable(cmd, graph_id)
        held_reply.set(True)
    return Reply(encode(graph.process_model(body.processid, shared=True)))


async def list_processes(
    aggregates: Aggregates, cmd: crypto.VerifiedCommand, body: ListQuery, now: datetime
) -> Reply:
    """The colony's newest ``count`` processes in ``state`` (any state when negative):
    WAITING and RUNNING ones from memory, the others from the read model
    (:mod:`~colonies_es.engine.read_model`)."""
    aggregates.member_colony(cmd, body.colonyname)
    if body.state not in LIVE:
        return Reply(await forwarded_listing(aggregates, "processes", body, cmd.caller_id))
    found = []
    for graph in aggregates.live_graphs_newest_first(body.colonyname):
        for node in reversed(list(graph.nodes.values())):
            if node.state == body.state:
                found.append(graph.process_model(node.processid))
                if len(found) >= body.count:
                    return Reply(encode(found))
    return Reply(encode(found))


async def remove_process(
    aggregates: Aggregates, cmd: crypto.VerifiedCommand, body: ProcessRef, now: datetime
) -> Reply:
    """Removes a process submitted alone (a graph of one); 409 for part of a workflow."""
    graph_id = await aggregates.graph_id_of(body.processid)
    graph = await aggregates.readable(cmd, graph_id)
    if len(graph.nodes) > 1:
        raise Conflict(
            f"process {body.processid} belongs to a workflow of {len(graph.nodes)} processes: "
            "remove its process graph instead"
        )
    _, effects = await aggregates.change_graph(graph_id, lambda g: g.remove(**audit(cmd, now)))
    return Reply(effects=effects)


async def add_attribute(
    aggregates: Aggregates, cmd: crypto.VerifiedCommand, body: AddAttribute, now: datetime
) -> Reply:
    """Adds a key/value attribute to a process; answers with the attribute."""
    added: list[str] = []
    graph, effects = await aggregates.change_graph(
        await aggregates.graph_id_of(body.processid),
        lambda g: added.append(
            g.add_attribute(body.processid, cmd.caller_id, body.key, body.value, **audit(cmd, now))
        ),
    )
    model = graph.process_model(body.processid)
    attribute = next(a for a in model.attributes if a.attributeid == added[-1])
    return Reply(encode(attribute), effects)


__all__ = [
    "add_attribute",
    "get_process",
    "list_processes",
    "remove_process",
    "submit_func_spec",
    "submit_workflow",
]
