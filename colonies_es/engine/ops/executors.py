"""Ops on a colony's members: executors (register, approve, reject, remove, read) and
users."""

from __future__ import annotations

from datetime import datetime

from colonies_es import crypto
from colonies_es.domain import Colony, NotFound, colony_aggregate_id
from colonies_es.engine.aggregates import Aggregates, audit
from colonies_es.engine.ops.base import Reply
from colonies_es.engine.state import Effects
from colonies_es.models import Executor as ExecutorModel
from colonies_es.models import encode
from colonies_es.protocol import AddExecutor, AddUser, ColonyRef, ExecutorRef


async def add_executor(
    aggregates: Aggregates, cmd: crypto.VerifiedCommand, body: AddExecutor, now: datetime
) -> Reply:
    """Registers an executor (not yet approved) in its colony."""
    executor = body.executor
    colony, _ = await aggregates.change(
        colony_aggregate_id(executor.colonyname),
        Colony,
        lambda c: c.add_executor(
            executor.executorid,
            executor.executorname,
            executor.executortype,
            **audit(cmd, now),
        ),
    )
    return Reply(encode(colony.executor_model(executor.executorname)))


async def approve_executor(
    aggregates: Aggregates, cmd: crypto.VerifiedCommand, body: ExecutorRef, now: datetime
) -> Reply:
    """Approves an executor; its (colony, type) may need a work consumer (an effect)."""
    colony, _ = await aggregates.change(
        colony_aggregate_id(body.colonyname),
        Colony,
        lambda c: c.approve_executor(body.executorname, **audit(cmd, now)),
    )
    effects = Effects()
    executor = colony.executor_by_name(body.executorname)
    if executor is not None:
        effects.new_types.append((colony.name, executor.executortype))
    return Reply(effects=effects)


async def reject_executor(
    aggregates: Aggregates, cmd: crypto.VerifiedCommand, body: ExecutorRef, now: datetime
) -> Reply:
    await aggregates.change(
        colony_aggregate_id(body.colonyname),
        Colony,
        lambda c: c.reject_executor(body.executorname, **audit(cmd, now)),
    )
    return Reply()


async def remove_executor(
    aggregates: Aggregates, cmd: crypto.VerifiedCommand, body: ExecutorRef, now: datetime
) -> Reply:
    await aggregates.change(
        colony_aggregate_id(body.colonyname),
        Colony,
        lambda c: c.remove_executor(body.executorname, **audit(cmd, now)),
    )
    return Reply()


async def list_executors(
    aggregates: Aggregates, cmd: crypto.VerifiedCommand, body: ColonyRef, now: datetime
) -> Reply:
    colony = aggregates.member_colony(cmd, body.colonyname)
    executors = [colony.executor_model(e.executorname) for e in colony.executors.values()]
    return Reply(encode([_heard(aggregates, executor) for executor in executors]))


async def get_executor(
    aggregates: Aggregates, cmd: crypto.VerifiedCommand, body: ExecutorRef, now: datetime
) -> Reply:
    colony = aggregates.member_colony(cmd, body.colonyname)
    executor = colony.executor_by_name(body.executorname)
    if executor is None:
        raise NotFound(f"no executor named {body.executorname!r} in colony {body.colonyname!r}")
    return Reply(encode(_heard(aggregates, executor)))


async def whoami(
    aggregates: Aggregates, cmd: crypto.VerifiedCommand, body: ColonyRef, now: datetime
) -> Reply:
    """The executor the caller is in the colony, or 404."""
    colony = aggregates.colony(body.colonyname)
    executor = colony.executor_by_id(cmd.caller_id)
    if executor is None:
        raise NotFound(f"the caller is not an executor of colony {body.colonyname!r}")
    return Reply(encode(executor))


async def add_user(
    aggregates: Aggregates, cmd: crypto.VerifiedCommand, body: AddUser, now: datetime
) -> Reply:
    await aggregates.change(
        colony_aggregate_id(body.colonyname),
        Colony,
        lambda c: c.add_user(body.userid, body.username, **audit(cmd, now)),
    )
    return Reply()


def _heard(aggregates: Aggregates, executor: ExecutorModel) -> ExecutorModel:
    """``executor`` with its ``lastheardfromtime`` (the state's ``last_heard``)."""
    executor.lastheardfromtime = aggregates.state.last_heard.get(executor.executorid)
    return executor


__all__ = [
    "add_executor",
    "add_user",
    "approve_executor",
    "get_executor",
    "list_executors",
    "reject_executor",
    "remove_executor",
    "whoami",
]
