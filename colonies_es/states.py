"""State codes of processes, process graphs and executors.

The codes are ColonyOS' integers (SEMANTICS.md, "States"). Model objects carry them as
plain ``int`` so that user code written for pycolonies (``process.state == 2``) keeps
working; these enums name them. Being ``IntEnum`` members, they compare equal to the
plain integers (``ProcessState.SUCCESS == 2``).
"""

from enum import IntEnum

__all__ = ["ExecutorState", "ProcessState"]


class ProcessState(IntEnum):
    """State of a process; a process graph's state uses the same codes."""

    WAITING = 0
    RUNNING = 1
    SUCCESS = 2
    FAILED = 3
    CANCELLED = 4


class ExecutorState(IntEnum):
    """Registration state of an executor in its colony."""

    PENDING = 0
    APPROVED = 1
    REJECTED = 2
