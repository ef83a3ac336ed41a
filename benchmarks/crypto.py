"""Signing and checking commands, single-threaded (no server): the crypto module's rates.

The same operations as ``bench_crypto.py``, measured as a group of ``python -m benchmarks``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from benchmarks.bench_crypto import BODY
from benchmarks.harness import Options, Report, environment, time_calls
from colonies_es.crypto import new_private_key, open_command, public_key, seal, sign, verify


def run(options: Options) -> Report:
    seconds = 0.3 if options.quick else 1.0
    prvkey = new_private_key()
    pub = public_key(prvkey)
    data = b'{"op":"submit","nonce":"00112233445566778899aabbccddeeff","ts":1.0,"body":{}}'
    signature = sign(data, prvkey)
    now = time.time()
    sealed = seal("submit", BODY, prvkey, now=now)
    cases: dict[str, Callable[[int], object]] = {
        "sign": lambda _: sign(data, prvkey),
        "verify": lambda _: verify(data, signature, pub),
        "seal": lambda _: seal("submit", BODY, prvkey, now=now),
        "open_command": lambda _: open_command(sealed, now=now),
    }
    report = Report(
        group="crypto",
        runs=options.runs,
        parameters={"seconds_per_run": seconds},
        environment=environment(),
    )
    for _ in range(options.runs):
        for name, fn in cases.items():
            report.add(name, name, "ops/s", time_calls(fn, seconds))
    return report
