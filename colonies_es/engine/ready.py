"""Ready processes waiting for an executor, best first, per (colony, executor type).

The engine asks :meth:`ReadyIndex.best_for` when an executor claims work: the answer is
the ready process of the executor's type with the highest priority, then the earliest
readiness (FIFO), that the executor may take (``executornames`` empty or naming it).
This index is derived state: the engine rebuilds it from the log on start.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable, Container
from dataclasses import dataclass, field

Key = tuple[str, str]
"""(colony name, executor type)"""

COMPACT_SLACK = 64
"""Stale entries a heap may hold beyond twice its live ones before it is compacted."""


@dataclass(order=True)
class ReadyProcess:
    """A process that may be assigned now. Ordered best first."""

    sort_key: tuple[int, float, int]
    processid: str = field(compare=False)
    graph_id: str = field(compare=False)
    attempt: int = field(compare=False)
    executornames: tuple[str, ...] = field(compare=False, default=())

    def allows(self, executorname: str) -> bool:
        return not self.executornames or executorname in self.executornames


_Entry = tuple[tuple[int, float, int], ReadyProcess]
"""A heap's item: the process's sort key beside it, so that the heap compares tuples in C
(the key's counter is unique: the processes themselves are never compared)."""


class ReadyIndex:
    """Thread-safe priority queues of ready processes (lazy deletion)."""

    def __init__(self) -> None:
        self._heaps: dict[Key, list[_Entry]] = {}
        self._live: dict[str, tuple[Key, ReadyProcess]] = {}
        self._counts: dict[Key, int] = {}
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self.on_ready: Callable[[Key, tuple[str, ...]], None] | None = None
        """Called (on the caller's thread) after each :meth:`add` with the key and the
        process's ``executornames``: the engine wakes a claim it holds (held.py)."""

    def add(
        self,
        key: Key,
        processid: str,
        graph_id: str,
        attempt: int,
        priority: int,
        readytime: float,
        executornames: tuple[str, ...] = (),
    ) -> None:
        """Adds (or replaces) a ready process."""
        entry = ReadyProcess(
            (-priority, readytime, next(self._counter)), processid, graph_id, attempt, executornames
        )
        with self._lock:
            self._forget(processid)
            self._live[processid] = (key, entry)
            self._counts[key] = self._counts.get(key, 0) + 1
            heapq.heappush(self._heaps.setdefault(key, []), (entry.sort_key, entry))
        if self.on_ready is not None:
            self.on_ready(key, executornames)

    def discard(self, processid: str) -> None:
        """Forgets a process (assigned, cancelled, removed); unknown ids are ignored."""
        with self._lock:
            self._forget(processid)

    def _forget(self, processid: str) -> None:
        known = self._live.pop(processid, None)
        if known is not None:
            key = known[0]
            self._counts[key] -= 1
            heap = self._heaps.get(key)
            if heap is not None and len(heap) > 2 * self._counts[key] + COMPACT_SLACK:
                self._compact(key, heap)

    def _compact(self, key: Key, heap: list[_Entry]) -> None:
        """Drops the stale entries of ``key``'s heap. Claims drop those they meet on top;
        a replica whose processes other replicas assign (or a key nobody claims any
        more) would otherwise keep one entry per process ever ready. Done when stale
        entries outnumber live ones (plus :data:`COMPACT_SLACK`): amortised O(1)."""
        live = [
            item for item in heap if self._live.get(item[1].processid, (None, None))[1] is item[1]
        ]
        heapq.heapify(live)
        self._heaps[key] = live

    def best_for(
        self, key: Key, executorname: str, passing: Container[str] = ()
    ) -> ReadyProcess | None:
        """The best ready process this executor may take, left in the index; processes
        in ``passing`` (being claimed by others right now) are passed over."""
        with self._lock:
            heap = self._heaps.get(key)
            if not heap:
                return None
            skipped: list[_Entry] = []
            found = None
            while heap:
                entry = heap[0][1]
                if self._live.get(entry.processid, (None, None))[1] is not entry:
                    heapq.heappop(heap)  # stale: discarded or replaced
                    continue
                if entry.allows(executorname) and entry.processid not in passing:
                    found = entry
                    break
                skipped.append(heapq.heappop(heap))
            for item in skipped:
                heapq.heappush(heap, item)
            return found

    def count(self, key: Key) -> int:
        """How many ready processes of this key wait."""
        with self._lock:
            return self._counts.get(key, 0)

    def counts(self, ready_before: float | None = None) -> dict[Key, int]:
        """Ready processes per key (for re-issuing work tickets); with ``ready_before``
        (a Unix time) only those ready since before then."""
        with self._lock:
            if ready_before is None:
                return {key: n for key, n in self._counts.items() if n > 0}
            older: dict[Key, int] = {}
            for key, entry in self._live.values():
                if entry.sort_key[1] < ready_before:
                    older[key] = older.get(key, 0) + 1
            return older

    def __contains__(self, processid: str) -> bool:
        return processid in self._live
