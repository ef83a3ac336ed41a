"""What the engine does on its own, as time passes: deadlines and memory sweeps.

- :meth:`Timers.fire_deadlines` expires every process whose execution or waiting time
  limit has come. Every replica holds the same deadlines (derived from the log); the
  first to record a timeout wins the graph's optimistic concurrency, the others find the
  attempt already expired (a ``Conflict`` once caught up) and drop the timer quietly.
  The timeout is an engine command, signed with the engine's key, so the log says who
  decided it.
- :meth:`Timers.sweep` evicts ended graphs from memory (they stay in the log; see
  :mod:`.state`).

The service (:mod:`.service`) calls both from its own loops.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from eventsourcing.persistence import IntegrityError, PersistenceError

from colonies_es import crypto
from colonies_es.domain import Conflict, NotFound, ProcessGraph
from colonies_es.engine.aggregates import Aggregates
from colonies_es.engine.state import Effects, Timer

__all__ = ["RETRY_FAILED_TIMEOUT", "Timers"]

log = logging.getLogger("colonies.engine")

RETRY_FAILED_TIMEOUT = 1.0
"""Seconds after which a timeout the log could not record is tried again."""


class Timers:
    """The engine's deadlines and memory sweep over :class:`Aggregates`."""

    def __init__(self, aggregates: Aggregates, engine_prvkey: str) -> None:
        self.aggregates = aggregates
        self.engine_prvkey = engine_prvkey
        self.engine_id = crypto.id_from_private_key(engine_prvkey)

    def next_deadline_in(self, now: float) -> float:
        """Seconds until the next deadline (a large number when there is none)."""
        return self.aggregates.state.next_deadline_in(now)

    async def fire_deadlines(self, now: float) -> Effects:
        """Expires every process whose execution or waiting deadline has come; returns
        what the timeouts imply (retries made ready, ended processes)."""
        effects = Effects()
        when = datetime.fromtimestamp(now, UTC)
        state = self.aggregates.state
        while (timer := state.pop_due(now)) is not None:
            body = {"processid": timer.processid, "attempt": timer.attempt, "kind": timer.kind}
            sealed = crypto.seal(f"expire_{timer.kind}", body, self.engine_prvkey, now)
            audit = {"now": when, "actor": self.engine_id, "command": sealed}

            def expire(
                graph: ProcessGraph, timer: Timer = timer, audit: dict[str, Any] = audit
            ) -> None:
                if timer.kind == "exec":
                    graph.expire_exec(timer.processid, timer.attempt, **audit)
                else:
                    graph.expire_wait(timer.processid, **audit)

            try:
                _, more = await self.aggregates.change_graph(timer.graph_id, expire)
            except (Conflict, NotFound, IntegrityError):
                continue  # stale timer: the process moved on (here or on another replica)
            except PersistenceError as error:
                log.error("could not record a timeout: %s", error)
                state.push_timer(
                    Timer(
                        now + RETRY_FAILED_TIMEOUT,
                        timer.processid,
                        timer.graph_id,
                        timer.attempt,
                        timer.kind,
                    )
                )
                continue
            effects.merge(more)
        return effects

    def sweep(self) -> int:
        """Evicts the graphs that ended (see state.py); returns how many."""
        aggregates = self.aggregates
        evicted = aggregates.state.sweep(aggregates.busy)
        for graph_id in evicted:
            aggregates.log.forget_head(aggregates.subject_of(graph_id))
        if evicted:
            log.info(
                "memory: %d ended graphs left memory, %d aggregates resident",
                len(evicted),
                len(aggregates.state.aggregates),
            )
        return len(evicted)
