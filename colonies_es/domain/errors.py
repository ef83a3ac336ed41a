"""Why the domain refuses a command.

Every refused command raises a :class:`DomainError` *before* any event is triggered, so a
refusal never leaves anything to save. ``status`` is the status the engine replies with
(SEMANTICS.md, "Identities and roles"): 400 bad request, 403 access denied, 404 not
found, 409 conflict. ``str(error)`` is the message, written for the person who sent the
command.
"""

__all__ = ["BadRequest", "Conflict", "DomainError", "Forbidden", "NotFound", "NothingCame"]


class DomainError(Exception):
    """A command the domain refuses, with the status the engine replies with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class BadRequest(DomainError):
    """The command itself is malformed or inconsistent (400)."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message)


class Forbidden(DomainError):
    """The caller may not do this (403)."""

    def __init__(self, message: str) -> None:
        super().__init__(403, message)


class NotFound(DomainError):
    """The command names something that does not exist, or no longer does (404)."""

    def __init__(self, message: str) -> None:
        super().__init__(404, message)


class NothingCame(NotFound):
    """A request that waits for something (a claim for work, held or not) found nothing
    for it (404). Unlike the other 404s it names nothing that could be missing because this
    engine has not followed the log that far: deciding it again would only wait again."""


class Conflict(DomainError):
    """The command clashes with the current state: a duplicate, a stale claim, an
    operation on something that already ended (409)."""

    def __init__(self, message: str) -> None:
        super().__init__(409, message)
