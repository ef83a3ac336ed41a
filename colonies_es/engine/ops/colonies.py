"""Ops on colonies: create, remove, read, list (server owner) and statistics."""

from __future__ import annotations

from datetime import datetime

from colonies_es import crypto
from colonies_es.domain import Colony, Conflict, colony_aggregate_id
from colonies_es.engine.aggregates import Aggregates, audit
from colonies_es.engine.ops.base import Reply
from colonies_es.models import ProcessState, Statistics, encode
from colonies_es.protocol import AddColony, ColonyRef, Empty

_COUNTED_STATES = {
    ProcessState.WAITING: "waiting",
    ProcessState.RUNNING: "running",
    ProcessState.SUCCESS: "successful",
    ProcessState.FAILED: "failed",
}
"""The states ``stats`` counts, and the prefix of their Statistics fields."""


async def add_colony(
    aggregates: Aggregates, cmd: crypto.VerifiedCommand, body: AddColony, now: datetime
) -> Reply:
    """Creates a colony (server owner only); 409 if the name is taken."""
    aggregates.require_server_owner(cmd)
    name = body.colony.name
    if aggregates.state.get(colony_aggregate_id(name)) is not None:
        raise Conflict(f"colony {name!r} already exists")
    colony = Colony.create(name, body.colony.colonyid, **audit(cmd, now))
    await aggregates.save_new(colony)
    return Reply(encode(colony.to_model()))


async def del_colony(
    aggregates: Aggregates, cmd: crypto.VerifiedCommand, body: ColonyRef, now: datetime
) -> Reply:
    """Removes a colony (server owner only)."""
    aggregates.require_server_owner(cmd)
    await aggregates.change(
        colony_aggregate_id(body.colonyname), Colony, lambda c: c.remove(**audit(cmd, now))
    )
    return Reply()


async def list_colonies(
    aggregates: Aggregates, cmd: crypto.VerifiedCommand, body: Empty, now: datetime
) -> Reply:
    """Every colony not removed (server owner only)."""
    aggregates.require_server_owner(cmd)
    colonies = [
        a.to_model()
        for a in list(aggregates.state.aggregates.values())
        if isinstance(a, Colony) and not a.removed
    ]
    return Reply(encode(colonies))


async def get_colony(
    aggregates: Aggregates, cmd: crypto.VerifiedCommand, body: ColonyRef, now: datetime
) -> Reply:
    colony = aggregates.member_colony(cmd, body.colonyname, allow_server_owner=True)
    return Reply(encode(colony.to_model()))


async def stats(
    aggregates: Aggregates, cmd: crypto.VerifiedCommand, body: ColonyRef, now: datetime
) -> Reply:
    """Counts of the colony's executors, workflows and processes per state: resident
    graphs counted one by one, evicted ones from the colony's totals."""
    colony = aggregates.member_colony(cmd, body.colonyname, allow_server_owner=True)
    result = Statistics(executors=len(colony.executors), colonies=1)
    for name, value in aggregates.state.evicted_counts(colony.name).items():
        setattr(result, name, value)
    for graph in aggregates.state.resident_graphs(colony.name):
        kind = _COUNTED_STATES.get(ProcessState(graph.state))
        if kind:
            setattr(result, f"{kind}workflows", getattr(result, f"{kind}workflows") + 1)
        for node in graph.nodes.values():
            kind = _COUNTED_STATES.get(ProcessState(node.state))
            if kind:
                setattr(result, f"{kind}processes", getattr(result, f"{kind}processes") + 1)
    return Reply(encode(result))


__all__ = ["add_colony", "del_colony", "get_colony", "list_colonies", "stats"]
