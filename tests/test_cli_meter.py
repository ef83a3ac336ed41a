"""Progress of long passes over the log: the line of ``colonies audit verify``
(rewritten in place on a terminal, absent elsewhere, one summary line in both cases) and
a projector's catch-up lines in its log."""

from __future__ import annotations

import io
import logging

import pytest

from colonies_es.cli.meter import LogPass
from colonies_es.projections.runner import CatchUp


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_on_a_terminal_the_line_says_events_percent_and_rate_then_the_summary() -> None:
    terminal, clock = Terminal(), Clock()
    meter = LogPass("audit", terminal, interval=1.0, clock=clock)
    clock.now += 2
    meter.update(1_000, 1_000, 4_000)
    clock.now += 0.5
    meter.update(1_500, 1_500, 4_000)  # within the interval: not shown
    clock.now += 1.5
    meter.update(4_000, 4_000, 4_000)
    meter.finish(4_000, "in one process")

    shown = terminal.getvalue().split("\r")
    assert shown[1].rstrip() == "audit: 1,000 events (25% of the log), 500 events/s"
    assert shown[2].rstrip() == "audit: 4,000 events (100% of the log), 1,000 events/s"
    assert shown[-1] == "audit: 4,000 events in 4.0 s (1,000 events/s, in one process)\n"
    assert "1,500" not in terminal.getvalue()


def test_elsewhere_only_the_summary_is_written() -> None:
    log, clock = io.StringIO(), Clock()
    meter = LogPass("audit", log, clock=clock)
    clock.now += 2
    meter.update(1_000, 1_000, 4_000)
    meter.finish(1_000)

    assert log.getvalue() == "audit: 1,000 events in 2.0 s (500 events/s)\n"


def test_a_projector_behind_the_log_says_how_it_catches_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    catch_up = CatchUp(1_000, 11_000, interval=2.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="colonies.projector"):
        clock.now += 1
        catch_up.committed(2_000)  # within the interval: silent
        clock.now += 1
        catch_up.committed(5_000)
        clock.now += 3
        catch_up.committed(11_000)
        clock.now += 3
        catch_up.committed(11_500)  # caught up: silent from now on

    assert [record.getMessage() for record in caplog.records] == [
        "catching up with the log: 4,000 of 10,000 events (40%), 2,000 events/s",
        "caught up with the log at position 11000: 10,000 events in 5.0 s (2,000 events/s)",
    ]


def test_a_projector_starting_caught_up_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    catch_up = CatchUp(500, 500, clock=Clock())
    with caplog.at_level(logging.INFO, logger="colonies.projector"):
        catch_up.committed(501)

    assert not caplog.records
