"""Processing time and error counts per op, for the micro service's ``$SRV.STATS``.

nats-py's micro service measures an endpoint by timing its handler and counting the
exceptions it raises. The engine's handlers return at once (each command runs in its own
task, so that one command waiting for the log does not hold up the others: nats-py runs
one subscription's callbacks one at a time), so what the library measures would be the
time to start a task, and no errors. Instead the service records each command when its
reply has been sent (:meth:`OpStats.record`), and :meth:`OpStats.fill`, the service's
``stats_handler``, puts those figures in the standard fields of each endpoint's stats:

- ``num_requests``: commands received (:meth:`OpStats.received`: the engine takes its
  requests from nats-py itself, so the library does not see them all);
- ``num_errors``, ``last_error``: answers other than 200 (refusals included: a 404 of
  ``claim`` means "no work"; ``data.errors_by_status`` tells them apart);
- ``processing_time``, ``average_processing_time`` (ns): from the request's arrival to
  its reply, over the commands answered;
- ``data``: ``{"answered": n, "in_flight": m, "errors_by_status": {"404": k, ...}}``
  (``"unanswered"``: the reply could not be sent, the caller gone).

So ``nats micro stats colonies`` (or a ``$SRV.STATS.colonies`` request) shows what each
op costs on each replica.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nats.micro.service import EndpointStats

__all__ = ["OpStats"]


@dataclass
class _OpRecord:
    received: int = 0
    answered: int = 0
    errors: int = 0
    processing_ns: int = 0
    last_error: str = ""
    errors_by_status: dict[str, int] = field(default_factory=dict)


class OpStats:
    """Per-endpoint records of the commands answered (see the module doc)."""

    def __init__(self) -> None:
        self._ops: dict[str, _OpRecord] = {}

    def received(self, op: str) -> None:
        """A command of endpoint ``op`` arrived."""
        record = self._ops.get(op)
        if record is None:
            record = self._ops[op] = _OpRecord()
        record.received += 1

    def record(
        self, op: str, status: int, elapsed_ns: int, message: str = "", replied: bool = True
    ) -> None:
        """One command of endpoint ``op`` answered with ``status`` after ``elapsed_ns``
        (``replied``: False when the reply could not be sent; an error, under
        ``"unanswered"``)."""
        record = self._ops.setdefault(op, _OpRecord())
        record.answered += 1
        record.processing_ns += elapsed_ns
        if status != 200 or not replied:
            record.errors += 1
            record.last_error = f"{status} {message}".strip()
            key = str(status) if replied else "unanswered"
            record.errors_by_status[key] = record.errors_by_status.get(key, 0) + 1

    def fill(self, endpoint: EndpointStats) -> dict[str, object]:
        """The micro service's ``stats_handler``: sets the endpoint's standard fields
        from the records (the stats object is built afresh for each request) and
        returns its ``data``."""
        record = self._ops.get(endpoint.name, _OpRecord())
        endpoint.num_requests = record.received
        endpoint.num_errors = record.errors
        endpoint.last_error = record.last_error or None
        endpoint.processing_time = record.processing_ns
        endpoint.average_processing_time = (
            record.processing_ns // record.answered if record.answered else 0
        )
        return {
            "answered": record.answered,
            "in_flight": max(record.received - record.answered, 0),
            "errors_by_status": dict(record.errors_by_status),
        }
