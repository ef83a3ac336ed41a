"""A deliberately broken engine: it acknowledges about 20% of closes without recording
them (each process's at most once). Only for proving that the chaos checker catches
lost acknowledged writes.

Run as ``python -m tests.broken_engine server ...`` (the arguments of ``colonies
server``) from the repository's root. How it stays out of production: the hook is this
file, in ``tests/``, which no wheel ships (the package is ``colonies_es`` alone:
``tests/test_packaging.py``); it patches the engine in its own process only, before
starting the ordinary ``colonies`` command. No flag, environment variable or
configuration file of the shipped ``colonies server`` can reach it: the only way to get
this behaviour is to run this module as the program.

Each dropped close is printed as ``DROPPED CLOSE <process id>`` on the engine's output,
so the test can compare what the checker reports with what was really lost.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Awaitable, Callable

import msgspec

from colonies_es import crypto
from colonies_es.cli.app import main
from colonies_es.engine.app import ColoniesApp, Effects, Outcome
from colonies_es.protocol import CloseProcess

DROP_RATE = 0.2
_handle = ColoniesApp.handle
_rng = random.Random()
_dropped: set[str] = set()


async def _handle_dropping_closes(
    self: ColoniesApp,
    op: str,
    data: bytes,
    now: float,
    after: int = 0,
    publish: Callable[[Effects, int], Awaitable[None]] | None = None,
) -> Outcome:
    if op == "close" and _rng.random() < DROP_RATE:
        signed = msgspec.json.decode(data, type=crypto.SignedCommand)
        payload = msgspec.json.decode(signed.payload, type=crypto.CommandPayload)
        close = msgspec.json.decode(payload.body, type=CloseProcess)
        # Once per process: its retry (after maxexectime) then closes for real, so the
        # run drains in one maxexectime instead of a chain of them.
        if close.processid not in _dropped:
            _dropped.add(close.processid)
            print(f"DROPPED CLOSE {close.processid}", flush=True)
            return Outcome(200, body=b"{}")  # acknowledged, never written
    return await _handle(self, op, data, now, after, publish)


ColoniesApp.handle = _handle_dropping_closes  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.argv[0] = "colonies"
    main()
