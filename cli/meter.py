"""Progress of a long pass over the event log (a whole-log audit), on stderr.

On a terminal: one line, rewritten in place a few times a second, saying how many events
were done, how far into the log (percent of its last sequence when the pass began) and
how fast. Elsewhere (a file, a pipe, a test's runner) nothing while it runs, so logs and
captured output stay clean. When the pass ends: one summary line, in both cases.
stdout is never touched: it keeps the command's result (a table, ``--json``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["LogPass"]


class LogPass:
    """Shows a pass over the log: call :meth:`update` as it goes, :meth:`finish` once."""

    def __init__(
        self,
        what: str,
        stream: TextIO | None = None,
        interval: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``what`` names the pass in its lines ("audit"); ``interval``: seconds between
        two rewrites of the line."""
        self.what = what
        self.stream = sys.stderr if stream is None else stream
        self.interval = interval
        self.clock = clock
        self.live = self.stream.isatty()
        self.started = clock()
        self._shown_at = -interval
        self._width = 0

    def rate(self, done: int) -> float:
        """Events per second since the pass began."""
        return done / max(self.clock() - self.started, 1e-9)

    def update(self, done: int, position: int, last: int) -> None:
        """``done`` events so far, the last at sequence ``position`` of ``last``."""
        if not self.live:
            return
        now = self.clock()
        if now - self._shown_at < self.interval and position < last:
            return
        self._shown_at = now
        part = f" ({100 * position / last:.0f}% of the log)" if last else ""
        self._show(f"{self.what}: {done:,} events{part}, {self.rate(done):,.0f} events/s")

    def finish(self, done: int, note: str = "") -> None:
        """Clears the line and prints the summary: events, seconds, rate (and ``note``)."""
        seconds = self.clock() - self.started
        if self.live and self._width:
            self._show("")
            self.stream.write("\r")
        extra = f", {note}" if note else ""
        self.stream.write(
            f"{self.what}: {done:,} events in {seconds:.1f} s "
            f"({self.rate(done):,.0f} events/s{extra})\n"
        )
        self.stream.flush()

    def _show(self, text: str) -> None:
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)
