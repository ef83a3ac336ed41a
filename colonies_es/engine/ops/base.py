"""What an op handler is: its body type, its decision, and the :class:`Reply` it returns.

A handler is ``async def handle(aggregates, cmd, body, now) -> Reply``: it checks what the
caller may do, decides through :class:`~colonies_es.engine.aggregates.Aggregates` (which
writes to the log) and returns the reply's JSON body with the effects the service
publishes. A refusal is a :class:`~colonies_es.domain.DomainError` (or
``crypto.CommandRejected``); it writes nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

import msgspec

from colonies_es import crypto
from colonies_es.domain import Colony
from colonies_es.engine.aggregates import Aggregates
from colonies_es.engine.state import Effects
from colonies_es.models import ProcessState

__all__ = ["EMPTY", "ENDED", "LIVE", "Op", "Reply", "name_of", "op"]

ENDED = (ProcessState.SUCCESS, ProcessState.FAILED, ProcessState.CANCELLED)
LIVE = (ProcessState.WAITING, ProcessState.RUNNING)
"""The states of live work: the engine lists them from memory, the others from the read
model (:mod:`~colonies_es.engine.read_model`)."""
"""The states a process or graph ends in."""

EMPTY = b"{}"
"""The body of a reply that has nothing to say but "done"."""

B = TypeVar("B", bound=msgspec.Struct)


@dataclass(frozen=True, slots=True)
class Reply:
    """A handler's answer: the JSON body (status 200) and what the decision implies."""

    body: bytes = EMPTY
    effects: Effects = field(default_factory=Effects)


@dataclass(frozen=True, slots=True)
class Op(Generic[B]):
    """One op: the body type its command carries and the handler deciding it (mypy checks
    that the handler takes exactly that body type)."""

    body: type[B]
    handle: Callable[[Aggregates, crypto.VerifiedCommand, B, datetime], Awaitable[Reply]]


def name_of(colony: Colony, identity: str) -> str:
    """What the colony calls ``identity``: its executor's name, "colony owner", its user
    name, or "" when unknown."""
    executor = colony.executor_by_id(identity)
    if executor is not None:
        return executor.executorname
    if identity == colony.ownerid:
        return "colony owner"
    return colony.users.get(identity, "")


def op(
    body: type[B],
    handle: Callable[[Aggregates, crypto.VerifiedCommand, B, datetime], Awaitable[Reply]],
) -> Op[Any]:
    """An entry of the op table. mypy infers ``B`` from both arguments here (no outer
    type context), so a handler that does not take exactly ``body`` is a type error."""
    return Op(body, handle)
