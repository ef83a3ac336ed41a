"""Ops on process graphs: read, list, grow (add_child, add_children), rerun, cancel and
remove."""

from __future__ import annotations

from datetime import datetime

from colonies_es import crypto
from colonies_es.domain import BadRequest, Conflict, Forbidden, NotFound, ProcessGraph, graph_ids
from colonies_es.engine.aggregates import Aggregates, audit
from colonies_es.engine.ops.base import LIVE, Reply, name_of
from colonies_es.engine.read_model import forwarded_listing
from colonies_es.engine.state import Effects
from colonies_es.models import ProcessState, encode
from colonies_es.protocol import AddChild, AddChildren, GraphRef, ListQuery, RemoveAll


async def get_processgraph(
    aggregates: Aggregates, cmd: crypto.VerifiedCommand, body: GraphRef, now: datetime
) -> Reply:
    graph_id = await aggregates.graph_id_by_graphid(body.processgraphid)
    graph = await aggregates.readable(cmd, graph_id)
    return Reply(encode(graph.to_model()))


async def get_processgraphs(
    aggregates: Aggregates, cmd: crypto.VerifiedCommand, body: ListQuery, now: datetime
) -> Reply:
    """The colony's newest ``count`` graphs in ``state`` (any state when negative):
    WAITING and RUNNING ones from memory, the others from the read model
    (:mod:`~colonies_es.engine.read_model`)."""
    aggregates.member_colony(cmd, body.colonyname)
    if body.state not in LIVE:
        return Reply(await forwarded_listing(aggregates, "graphs", body, cmd.caller_id))
    found = []
    for graph in aggregates.live_graphs_newest_first(body.colonyname):
        if graph.state == body.state:
            found.append(graph.to_model())
            if len(found) >= body.count:
                break
    return Reply(encode(found))


async def _graph_to_grow(
    aggregates: Aggregates, processgraphid: str, parentprocessid: str, adding: int
) -> str:
    """The aggregate id of graph ``processgraphid``, to add ``adding`` processes under
    ``parentprocessid``: NotFound unless the parent is in that graph, 429 when the
    colony's pending quota does not allow them."""
    graph_id = await aggregates.graph_id_by_graphid(processgraphid)
    if await aggregates.graph_id_of(parentprocessid) != graph_id:
        raise NotFound(f"process {parentprocessid} is not in process graph {processgraphid}")
    colonyname = graph_id.split(".", 1)[0]  # graph ids are <colony>.graph.<id>
    pending = aggregates.state.pending_processes(colonyname)
    aggregates.quotas.check_pending(colonyname, pending, adding)
    return graph_id


async def add_child(
    aggregates: Aggregates, cmd: crypto.VerifiedCommand, body: AddChild, now: datetime
) -> Reply:
    """Adds a process under a parent of a running graph (within the pending quota);
    answers with the new process."""
    graph_id = await _graph_to_grow(aggregates, body.processgraphid, body.parentprocessid, 1)
    added: list[str] = []

    def add(graph: ProcessGraph) -> None:
        added.append(
            graph.add_child(
                body.parentprocessid,
                cmd.caller_id,
                body.spec,
                body.nodename,
                insert=body.insert,
                childprocessid=body.childprocessid,
                **audit(cmd, now),
            )
        )

    graph, effects = await aggregates.change_graph(graph_id, add)
    return Reply(encode(graph.process_model(added[-1])), effects)  # the decision stored


async def add_children(
    aggregates: Aggregates, cmd: crypto.VerifiedCommand, body: AddChildren, now: datetime
) -> Reply:
    """Adds several processes under a parent of a running graph in one event, all or
    nothing (within the pending quota, and an event small enough to be read back:
    :func:`~colonies_es.engine.aggregates.readable_limit`); answers with their ids, in
    order (a list of a thousand processes would not fit in a reply)."""
    if len(body.specs) != len(body.nodenames):
        raise BadRequest(
            f"add_children: {len(body.specs)} specs but {len(body.nodenames)} nodenames"
        )
    graph_id = await _graph_to_grow(
        aggregates, body.processgraphid, body.parentprocessid, len(body.specs)
    )
    added: list[str] = []

    def add(graph: ProcessGraph) -> None:
        added[:] = graph.add_children(
            body.parentprocessid,
            cmd.caller_id,
            list(zip(body.specs, body.nodenames, strict=True)),
            insert=body.insert,
            childprocessid=body.childprocessid,
            **audit(cmd, now),
        )

    _, effects = await aggregates.change_graph(graph_id, add)
    return Reply(encode(added), effects)


async def rerun_processgraph(
    aggregates: Aggregates, cmd: crypto.VerifiedCommand, body: GraphRef, now: datetime
) -> Reply:
    """A new graph re-running a failed one (its successful processes kept)."""
    failed = await aggregates.readable(
        cmd, await aggregates.graph_id_by_graphid(body.processgraphid)
    )
    colony = aggregates.colony(failed.colonyname)
    graph = ProcessGraph.rerun_from_failed(
        failed,
        initiatorid=cmd.caller_id,
        initiatorname=name_of(colony, cmd.caller_id),
        ids=graph_ids(cmd.replay_key),  # a retry decided elsewhere names the same graph
        **audit(cmd, now),
    )
    effects = await aggregates.save_new(graph)
    return Reply(encode(graph.to_model()), effects)


async def cancel_processgraph(
    aggregates: Aggregates, cmd: crypto.VerifiedCommand, body: GraphRef, now: datetime
) -> Reply:
    graph_id = await aggregates.graph_id_by_graphid(body.processgraphid)
    await aggregates.readable(cmd, graph_id)
    _, effects = await aggregates.change_graph(graph_id, lambda g: g.cancel(**audit(cmd, now)))
    return Reply(effects=effects)


async def remove_processgraph(
    aggregates: Aggregates, cmd: crypto.VerifiedCommand, body: GraphRef, now: datetime
) -> Reply:
    graph_id = await aggregates.graph_id_by_graphid(body.processgraphid)
    await aggregates.readable(cmd, graph_id)
    _, effects = await aggregates.change_graph(graph_id, lambda g: g.remove(**audit(cmd, now)))
    return Reply(effects=effects)


async def remove_all(
    aggregates: Aggregates, cmd: crypto.VerifiedCommand, body: RemoveAll, now: datetime
) -> Reply:
    """Removes the colony's graphs in ``state`` (all but RUNNING when negative); the
    colony owner only. ``remove_all_processes`` and ``remove_all_processgraphs`` are
    this op (graphs are what is removed)."""
    colony = aggregates.colony(body.colonyname)
    if cmd.caller_id != colony.ownerid:
        raise Forbidden(f"only the owner of colony {colony.name!r} can remove all its graphs")
    state = None if body.state is None or body.state < 0 else body.state
    if state == ProcessState.RUNNING:
        raise Conflict("RUNNING graphs cannot be removed: cancel them first")
    effects = Effects()
    for graph_id in await aggregates.graph_ids_in_log(colony.name):
        graph = await aggregates.load(graph_id)
        if not isinstance(graph, ProcessGraph) or graph.removed:
            continue
        if graph.state == ProcessState.RUNNING or (state is not None and graph.state != state):
            continue
        try:
            _, more = await aggregates.change_graph(graph.id, lambda g: g.remove(**audit(cmd, now)))
        except (Conflict, NotFound):
            continue  # started running or was removed meanwhile
        effects.merge(more)
    return Reply(effects=effects)


__all__ = [
    "add_child",
    "add_children",
    "cancel_processgraph",
    "get_processgraph",
    "get_processgraphs",
    "remove_all",
    "remove_processgraph",
    "rerun_processgraph",
]
