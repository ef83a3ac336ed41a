"""Executors' work: claim the best ready process, report its output, close or fail it.

A claim with nothing ready for its caller may be held until work comes (protocol.py,
"Work"; :mod:`colonies_es.engine.held`). An attempt's reports name the attempt (0 for
ColonyOS clients: whichever the caller holds), so a late report of an attempt that timed
out is refused (see the domain). A close that carries a claim is decided by the
application in two steps (``ColoniesApp.handle``), each its own command."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import nats.errors

from colonies_es import crypto
from colonies_es.domain import (
    Conflict,
    DomainError,
    Forbidden,
    NotFound,
    NothingCame,
    ProcessGraph,
)
from colonies_es.engine.aggregates import Aggregates, audit
from colonies_es.engine.held import held_reply
from colonies_es.engine.ops.base import Reply
from colonies_es.engine.ready import Key, ReadyProcess
from colonies_es.models import Executor, encode
from colonies_es.protocol import (
    MAX_CLAIM_WAIT,
    NOTHING_READY,
    Claim,
    CloseProcess,
    FailProcess,
    NextProcess,
    SetOutput,
)

CLAIM_RECHECK = 1.0
"""Seconds a held claim waits at most before it looks at the ready index again (a wake
it missed, or one that went to a claim that then took other work)."""

ALIVE_AFTER = 0.25
"""Seconds a claim must have been held before the engine asks its claimer whether it
still waits: a claim younger than that was sent a moment ago (asking would cost a round
trip on every pushed assignment, for a window as short as a lost reply's)."""

ALIVE_TIMEOUT = 1.0
"""Seconds the engine waits for a claimer to say it still waits before assigning it work
that came while its claim was held."""


async def claim(
    aggregates: Aggregates, cmd: crypto.VerifiedCommand, body: Claim, now: datetime
) -> Reply:
    """Assigns the best ready process of the caller's type to the caller (an APPROVED
    executor). A candidate another command or replica took first is dropped from the
    ready index and the next best is tried.

    With none ready, the claim is held up to ``body.wait`` seconds (at most
    :data:`MAX_CLAIM_WAIT`) and takes the first such process that becomes ready
    meanwhile, once the claimer said it still waits (``body.alive``, asked when the
    claim is older than :data:`ALIVE_AFTER`); then 404
    (:data:`NOTHING_READY`). The assignment is stamped with the time it is made.

    A prefetch claim (``body.prefetch``, from an executor busy with other work) is never
    held and never queues behind another claim: it takes the best ready process no claim
    is assigning, unless a claim held here waits that may take it (an idle executor is
    served first), else 404. Its reply is a :class:`NextProcess` with the hint ``more``."""
    executor = _claimer(aggregates, cmd, body.colonyname)
    key = (body.colonyname, executor.executortype)
    ready = aggregates.state.ready
    claiming = aggregates.claiming
    if body.prefetch:
        return await _prefetch(aggregates, cmd, key, executor)
    loop = asyncio.get_running_loop()
    arrived = loop.time()
    deadline = arrived + min(max(body.wait, 0.0), MAX_CLAIM_WAIT)
    with aggregates.claims.holding(key, executor.executorname) as held:
        waited = False
        while True:
            # The process offered with the wake (made ready by a write still in flight:
            # held.py), else the best no other claim here is assigning; if every one
            # is, the best (this claim then queues behind the other on the graph's lock).
            best = held.take_offer() or ready.best_for(key, executor.executorname, claiming)
            best = best or ready.best_for(key, executor.executorname)
            if best is None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise NothingCame(
                        f"{NOTHING_READY} for {executor.executorname!r} ({executor.executortype})"
                    )
                await held.wait(min(remaining, CLAIM_RECHECK))
                waited = True
                continue
            # Marked as being claimed from here on, the alive question included, so
            # that a prefetch claim (or another claim) does not take it meanwhile.
            claiming.add(best.processid)
            gave_up = False
            try:
                if waited:  # time passed: is the claimer still there, and still allowed?
                    asks = bool(body.alive) and loop.time() - arrived >= ALIVE_AFTER
                    gave_up = asks and not await _still_waiting(aggregates, body.alive)
                    if not gave_up:
                        executor = _claimer(aggregates, cmd, body.colonyname)
                        now = datetime.now(UTC)
                if not gave_up:

                    def assign(
                        graph: ProcessGraph,
                        best: ReadyProcess = best,
                        now: datetime = now,
                        executor: Executor = executor,
                    ) -> None:
                        graph.assign(best.processid, executor, best.attempt, **audit(cmd, now))

                    graph, effects = await aggregates.change_graph(best.graph_id, assign)
            except (Conflict, NotFound):
                aggregates.counters.claim_races += 1
                ready.discard(best.processid)  # raced or stale: try the next best
                continue
            finally:
                claiming.discard(best.processid)
            if gave_up:
                # It was woken for this process (and no ticket was published for it):
                # pass it on to the next claim held here that may take it.
                aggregates.claims.wake(key, best.executornames)
                raise NothingCame(f"{executor.executorname!r} no longer waits for work")
            held_reply.set(waited)
            return Reply(encode(graph.process_model(best.processid, shared=True)), effects)


async def _prefetch(
    aggregates: Aggregates, cmd: crypto.VerifiedCommand, key: Key, executor: Executor
) -> Reply:
    """:func:`claim` for a prefetch claim (protocol.py, "Prefetch")."""
    ready = aggregates.state.ready
    while True:
        best = ready.best_for(key, executor.executorname, aggregates.claiming)
        if best is None or aggregates.claims.waiting_for(key, best.executornames):
            raise NothingCame(f"{NOTHING_READY} to prefetch for {executor.executorname!r}")
        now = datetime.now(UTC)

        def assign(graph: ProcessGraph, best: ReadyProcess = best, now: datetime = now) -> None:
            graph.assign(best.processid, executor, best.attempt, **audit(cmd, now))

        aggregates.claiming.add(best.processid)
        try:
            graph, effects = await aggregates.change_graph(best.graph_id, assign)
        except (Conflict, NotFound):
            aggregates.counters.claim_races += 1
            ready.discard(best.processid)  # raced or stale: try the next best
            continue
        finally:
            aggregates.claiming.discard(best.processid)
        assigned = NextProcess(
            next=graph.process_model(best.processid, shared=True), more=more_ready(aggregates, key)
        )
        return Reply(encode(assigned), effects)


def more_ready(aggregates: Aggregates, key: Key) -> int:
    """The hint :attr:`NextProcess.more`: processes of ``key`` ready on this replica
    beyond those the claims it holds will take."""
    return max(0, aggregates.state.ready.count(key) - aggregates.claims.waiting(key))


def ready_hint(aggregates: Aggregates, caller_id: str, colonyname: str) -> int:
    """:func:`more_ready` for the executor ``caller_id`` of ``colonyname`` (0 if unknown)."""
    try:
        executor = aggregates.colony(colonyname).executor_by_id(caller_id)
    except DomainError:
        return 0
    return 0 if executor is None else more_ready(aggregates, (colonyname, executor.executortype))


def _claimer(aggregates: Aggregates, cmd: crypto.VerifiedCommand, colonyname: str) -> Executor:
    """The caller as an APPROVED executor of the colony (else Forbidden)."""
    executor = aggregates.colony(colonyname).executor_by_id(cmd.caller_id)
    if executor is None or executor.state != 1:
        raise Forbidden(f"only an APPROVED executor of colony {colonyname!r} can claim work")
    return executor


async def _still_waiting(aggregates: Aggregates, alive: str) -> bool:
    """Asks the claimer's connection (core NATS, :data:`ALIVE_TIMEOUT`) whether its claim
    still waits; False when it says no, is gone (no responders) or does not answer."""
    if aggregates.nc is None:
        return True
    try:
        answer = await aggregates.nc.request(alive, b"", timeout=ALIVE_TIMEOUT)
    except (nats.errors.Error, TimeoutError):
        return False
    return answer.data == b"1"


async def close(
    aggregates: Aggregates, cmd: crypto.VerifiedCommand, body: CloseProcess, now: datetime
) -> Reply:
    """Ends the caller's attempt with SUCCESS and its output."""
    _, effects = await aggregates.change_graph(
        await aggregates.graph_id_of(body.processid),
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
        await aggregates.graph_id_of(body.processid),
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
        await aggregates.graph_id_of(body.processid),
        lambda g: g.set_output(
            body.processid, cmd.caller_id, list(body.out), attempt=body.attempt, **audit(cmd, now)
        ),
    )
    return Reply(effects=effects)


__all__ = ["claim", "close", "fail", "more_ready", "ready_hint", "set_output"]
