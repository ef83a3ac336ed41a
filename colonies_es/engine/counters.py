"""What replicas cost each other: counts an engine keeps of its coordination with the others.

Several engine replicas follow one log (DESIGN.md, "Engine replicas and the log"). What
a second replica adds to the work of one shows in these counts, kept per engine process
since it started, served as ``colonies_replica_total{what}`` on the metrics port
(:mod:`colonies_es.metrics`) and read by ``python -m benchmarks replicas``:

- ``conflicts``: appends refused by optimistic concurrency (another replica changed the
  aggregate first); each costs a catch-up and a second decision;
- ``catch_ups``: aggregates brought up to date by reading their own subject (after a
  conflict, a gap in the follower, or an event of an evicted graph);
- ``claim_races``: ready processes a claim tried but found taken (by another claim of
  this replica or of another one) or gone, before it tried the next best;
- ``after_waits``: commands that waited for the follower to apply the log as far as
  their client had seen (``Colonies-After``: read-your-writes);
- ``behind``: commands answered 503 because that wait ran out;
- ``followed``: events of other replicas the follower decoded and applied;
- ``skipped``: events the follower found already in (this replica's own writes, or
  what a catch-up read first), skipped without decoding;
- ``tickets_spared``: work tickets not published because the decision that made the
  process ready woke a claim this replica holds, which takes it (:mod:`.held`);
- ``chained``: one-event writes sent chained to another write of the same aggregate still
  in flight, and installed (:mod:`.aggregates`);
- ``chains_broken``: chained writes the server refused (the write before was refused, or
  another message came in between), decided again the ordinary way;
- ``work_first``, ``reply_first``: commands that woke claims held here and let them go
  first (the engine had other requests in hand), or answered first (it had none)
  (``Aggregates.work_first``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["ReplicaCounters"]


@dataclass
class ReplicaCounters:
    """Counts since the engine started (see the module doc); only ever incremented."""

    conflicts: int = 0
    catch_ups: int = 0
    claim_races: int = 0
    after_waits: int = 0
    behind: int = 0
    followed: int = 0
    skipped: int = 0
    tickets_spared: int = 0
    chained: int = 0
    chains_broken: int = 0
    work_first: int = 0
    reply_first: int = 0

    def as_dict(self) -> dict[str, int]:
        """Each count by its name."""
        return dataclasses.asdict(self)
