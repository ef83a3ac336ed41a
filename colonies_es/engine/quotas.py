"""Quotas: limits per colony that keep the API from filling the log.

The log denies delete and purge, so whatever the engine appends stays. Two limits bound
what one colony's members can make it append (``COLONIES_MAX_PENDING_PROCESSES``,
``COLONIES_MAX_COMMAND_BYTES``; 0 turns a limit off):

- **bytes per command**: a signed command bigger than the limit is refused with 413
  before it is even opened (the largest event a command causes is about its size);
- **pending processes per colony**: a submission or ``add_child`` that would bring the
  colony's WAITING and RUNNING processes over the limit is refused with 429.

Each refusal is a :class:`QuotaExceeded` raised before any event is made, so it writes
nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from colonies_es.domain.errors import DomainError

__all__ = ["QuotaExceeded", "Quotas"]


class QuotaExceeded(DomainError):
    """A command over a quota: 413 (too large) or 429 (too many pending processes)."""


@dataclass(frozen=True)
class Quotas:
    """The engine's limits (0: none)."""

    max_pending_processes: int = 100_000
    max_command_bytes: int = 256 * 1024

    def check_command_size(self, op: str, size: int) -> None:
        """Refuse (413) a signed command of ``size`` bytes over the limit."""
        if self.max_command_bytes and size > self.max_command_bytes:
            raise QuotaExceeded(
                413,
                f"the command {op!r} is {size} bytes, over the quota of "
                f"{self.max_command_bytes} bytes per command (COLONIES_MAX_COMMAND_BYTES)",
            )

    def check_pending(self, colonyname: str, pending: int, adding: int) -> None:
        """Refuse (429) adding ``adding`` processes to colony ``colonyname`` that already
        has ``pending`` WAITING or RUNNING processes (``EngineState.pending_processes``)
        when that goes over the limit."""
        if not self.max_pending_processes:
            return
        if pending + adding > self.max_pending_processes:
            raise QuotaExceeded(
                429,
                f"colony {colonyname!r} has {pending} pending processes; {adding} more would "
                f"exceed its quota of {self.max_pending_processes} "
                "(COLONIES_MAX_PENDING_PROCESSES): wait for some to end",
            )
