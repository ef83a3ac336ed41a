"""An engine whose event log fails the first append of each process's close once, as a
log that did not answer does: for proving that such a close is reported again, not
turned into a failure (``tests/test_unsure_appends.py``).

Run as ``python -m tests.unsure_engine server ...`` (the arguments of ``colonies
server``) from the repository's root. As ``tests/broken_engine.py``, it patches the
engine in its own process only, before starting the ordinary ``colonies`` command; no
flag, variable or configuration of the shipped ``colonies server`` reaches it.

The event is not stored (the in-process tests of that module cover an append that was
stored but unanswered). Each failed append prints ``FAILED APPEND <subject>`` on the
engine's output.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import OperationalError

from colonies_es.cli.app import main
from colonies_es.store.jetstream import Entry, JetStreamLog

_append = JetStreamLog.append
_failed: set[str] = set()


async def _append_failing_closes_once(
    self: JetStreamLog, entries: Sequence[Entry], **kwargs: Any
) -> list[int]:
    closes = [entry for entry in entries if b"ProcessClosed" in entry.payload]
    if not closes or closes[0].subject in _failed:
        return await _append(self, entries, **kwargs)
    _failed.add(closes[0].subject)
    print(f"FAILED APPEND {closes[0].subject}", flush=True)
    raise OperationalError("append: the log did not answer (a test's fault)")


JetStreamLog.append = _append_failing_closes_once  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.argv[0] = "colonies"
    main()
