"""Throughput of signing and command checking: ``python benchmarks/bench_crypto.py``.

Prints operations per second (single thread, warm key caches) for ``sign``, ``verify``,
``seal``, ``open_command`` and ``open_command`` followed by a ``ReplayGuard`` check.
"""

import itertools
import time
from collections.abc import Callable

from colonies_es.crypto import (
    ReplayGuard,
    new_private_key,
    open_command,
    public_key,
    seal,
    sign,
    verify,
)

BODY = {"colonyname": "dev", "funcname": "gen_nums", "args": [1, 2, 3], "priority": 1}


def ops_per_second(fn: Callable[[int], object], seconds: float = 1.0) -> float:
    """Call ``fn(i)`` for about ``seconds`` (after a warm-up) and return calls per second."""
    for i in range(50):
        fn(i)
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(100):
            fn(calls)
            calls += 1
    return calls / elapsed


def main() -> None:
    prvkey = new_private_key()
    pub = public_key(prvkey)
    data = b'{"op":"submit","nonce":"00112233445566778899aabbccddeeff","ts":1.0,"body":{}}'
    signature = sign(data, prvkey)
    now = time.time()
    sealed = [seal("submit", BODY, prvkey, now=now) for _ in range(20_000)]
    guard = ReplayGuard()
    distinct = itertools.count()

    def open_and_guard(i: int) -> None:
        # The sealed commands are reused, so make each replay key distinct.
        command = open_command(sealed[i % len(sealed)], now=now)
        guard.check_and_remember(f"{command.replay_key}:{next(distinct)}", command.ts, now=now)

    cases: dict[str, Callable[[int], object]] = {
        "sign": lambda _: sign(data, prvkey),
        "verify": lambda _: verify(data, signature, pub),
        "seal": lambda _: seal("submit", BODY, prvkey, now=now),
        "open_command": lambda i: open_command(sealed[i % len(sealed)], now=now),
        "open_command+ReplayGuard": open_and_guard,
    }
    for name, fn in cases.items():
        rate = ops_per_second(fn)
        print(f"{name:26} {rate:10,.0f} ops/s  {1e6 / rate:8.1f} us/op")


if __name__ == "__main__":
    main()
