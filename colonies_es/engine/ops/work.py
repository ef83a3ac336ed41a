"""Executors' work: claim the best ready process, report its output, close or fail it.

An attempt's reports name the attempt (0 for ColonyOS clients: whichever the caller
holds), so a late report of an attempt that timed out is refused (see the domain)."""

from __future__ import annotations

from datetime import datetime

from colonies_es import crypto
from colonies_es.domain import Conflict, Forbidden, NotFound, ProcessGraph
from colonies_es.engine.aggregates import Aggregates, audit
from colonies_es.engine.ops.base import Reply
from colonies_es.engine.ready import ReadyProcess
from colonies_es.models import encode
from colonies_es.protocol import Claim, CloseProcess, FailProcess, SetOutput


async def claim(
    aggregates: Aggregates, cmd: crypto.VerifiedCommand, body: Claim, now: datetime
) -> Reply:
    """Assigns the best ready process of the caller's type to the caller (an APPROVED
    executor); 404 when none is ready. A candidate another command or replica took
    first is dropped from the ready index and the next best is tried."""
    colony = aggregates.colony(body.colonyname)
    executor = colony.executor_by_id(cmd.caller_id)
    if executor is None or executor.state != 1:
        raise Forbidden(f"only an APPROVED executor of colony {body.colonyname!r} can claim work")
    key = (colony.name, executor.executortype)
    ready = aggregates.state.ready
    claiming = aggregates.claiming
    while True:
        # The best process no other claim here is assigning; if every one is, the best
        # (this claim then queues behind the other on the graph's lock).
        best = ready.best_for(key, executor.executorname, claiming)
        best = best or ready.best_for(key, executor.executorname)
        if best is None:
            raise NotFound(
                f"no process ready for {executor.executorname!r} ({executor.executortype})"
            )

        def assign(graph: ProcessGraph, best: ReadyProcess = best) -> None:
            graph.assign(best.processid, executor, best.attempt, **audit(cmd, now))

        claiming.add(best.processid)
        try:
            graph, effects = await aggregates.change_graph(best.graph_id, assign)
        except (Conflict, NotFound):
            aggregates.counters.claim_races += 1
            ready.discard(best.processid)  # raced or stale: try the next best
            continue
        finally:
            claiming.discard(best.processid)
        return Reply(encode(graph.process_model(best.processid)), effects)


async def close(
    aggregates: Aggregates, cmd: crypto.VerifiedCommand, body: CloseProcess, now: datetime
) -> Reply:
    """Ends the caller's attempt with SUCCESS and its output."""
    _, effects = await aggregates.change_graph(
        aggregates.graph_id_of(body.processid),
        lambda g: g.close(
            body.processid, cmd.caller_id, list(body.out), attempt=body.attempt, **audit(cmd, now)
        ),
    )
    return Reply(effects=effects)


async def fail(
    aggregates: Aggregates, cmd: crypto.VerifiedCommand, body: FailProcess, now: datetime
) -> Reply:
    """Ends the caller's attempt as failed (retried while the function allows)."""
    _, effects = await aggregates.change_graph(
        aggregates.graph_id_of(body.processid),
        lambda g: g.fail(
            body.processid,
            cmd.caller_id,
            list(body.errors),
            attempt=body.attempt,
            **audit(cmd, now),
        ),
    )
    return Reply(effects=effects)


async def set_output(
    aggregates: Aggregates, cmd: crypto.VerifiedCommand, body: SetOutput, now: datetime
) -> Reply:
    """Records the output of the caller's running attempt without ending it."""
    _, effects = await aggregates.change_graph(
        aggregates.graph_id_of(body.processid),
        lambda g: g.set_output(
            body.processid, cmd.caller_id, list(body.out), attempt=body.attempt, **audit(cmd, now)
        ),
    )
    return Reply(effects=effects)


__all__ = ["claim", "close", "fail", "set_output"]
