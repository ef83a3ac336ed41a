"""The two ways a client call can fail: the engine said no, or nobody could be asked."""

__all__ = ["ColoniesConnectionError", "ColoniesError"]


class ColoniesError(Exception):
    """The colonies engine refused the command (or found nothing to answer with).

    ``status`` is the engine's status code (SEMANTICS.md): 400 bad request, 403 access
    denied, 404 not found, 409 conflict, 500 internal; ``assign`` raises 404 when no
    work came in time and ``wait`` raises 408 when the process did not end in time.
    ``str(error)`` and ``message`` are the engine's one-line explanation.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def __repr__(self) -> str:
        return f"ColoniesError({self.status}, {self.message!r})"


class ColoniesConnectionError(Exception):
    """The command could not be delivered or answered: NATS is unreachable, no engine
    is serving, or the engine did not reply in time. The message names the NATS URL."""


class NoEngineAnswering(ColoniesConnectionError):
    """Nobody serves the request's subject: no engine runs, or the engines that run are
    of a version without this op (a client newer than its engines)."""
