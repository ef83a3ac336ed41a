"""The colony aggregate: who belongs to a colony.

A colony (aggregate id ``"<name>.colony"``) is created by the server owner (the engine
checks that role) with the id of its owner, the colony key. The owner registers
executors, approves, rejects and removes them, and adds users. Members, who may submit
and read work, are the owner, the APPROVED executors and the users
(:meth:`Colony.is_member`).

Each command checks its rules, then triggers exactly one event; a refused command raises
a :class:`~colonies_es.domain.errors.DomainError` and triggers none. Once the colony is
removed, every command is refused with 404; its history stays in the log.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from colonies_es.domain.base import (
    AuditedAggregate,
    AuditedCreationEvent,
    AuditedEvent,
    check_id,
    check_name,
    colony_aggregate_id,
)
from colonies_es.domain.errors import BadRequest, Conflict, Forbidden, NotFound
from colonies_es.models import Colony as ColonyModel
from colonies_es.models import Executor
from colonies_es.states import ExecutorState

__all__ = [
    "Colony",
    "ColonyCreated",
    "ColonyRemoved",
    "ExecutorAdded",
    "ExecutorApproved",
    "ExecutorRejected",
    "ExecutorRemoved",
    "UserAdded",
]


# --- events ------------------------------------------------------------------------------


class ColonyCreated(AuditedCreationEvent):
    """A colony was created, owned by the key whose id is ``ownerid``."""

    name: str
    ownerid: str

    def apply(self, aggregate: Colony) -> None:
        aggregate.name = self.name
        aggregate.ownerid = self.ownerid


class ExecutorAdded(AuditedEvent):
    """An executor was registered, PENDING until approved; its commission time is the
    event's timestamp."""

    executorid: str
    executorname: str
    executortype: str

    def apply(self, aggregate: Colony) -> None:
        aggregate.executors[self.executorid] = Executor(
            executorid=self.executorid,
            executorname=self.executorname,
            executortype=self.executortype,
            colonyname=aggregate.name,
            state=int(ExecutorState.PENDING),
            commissiontime=self.timestamp,
        )


class ExecutorApproved(AuditedEvent):
    """An executor was approved: it is a member and may take work."""

    executorid: str
    executorname: str

    def apply(self, aggregate: Colony) -> None:
        aggregate.executors[self.executorid].state = int(ExecutorState.APPROVED)


class ExecutorRejected(AuditedEvent):
    """An executor was rejected: it stays registered but is not a member."""

    executorid: str
    executorname: str

    def apply(self, aggregate: Colony) -> None:
        aggregate.executors[self.executorid].state = int(ExecutorState.REJECTED)


class ExecutorRemoved(AuditedEvent):
    """An executor was removed; its name and id may be registered again."""

    executorid: str
    executorname: str

    def apply(self, aggregate: Colony) -> None:
        del aggregate.executors[self.executorid]


class UserAdded(AuditedEvent):
    """A user was added: a member who is not an executor."""

    userid: str
    username: str

    def apply(self, aggregate: Colony) -> None:
        aggregate.users[self.userid] = self.username


class ColonyRemoved(AuditedEvent):
    """The colony was removed: every later command on it is refused."""

    def apply(self, aggregate: Colony) -> None:
        aggregate.removed = True


# --- aggregate ---------------------------------------------------------------------------


class Colony(AuditedAggregate):
    """A colony: its owner, executors and users."""

    def __init__(self) -> None:
        self.name = ""
        self.ownerid = ""
        self.executors: dict[str, Executor] = {}
        """Registered executors by id (their ``state`` says PENDING/APPROVED/REJECTED)."""
        self.users: dict[str, str] = {}
        """User names by user id."""
        self.removed = False

    # --- commands ------------------------------------------------------------------------

    @classmethod
    def create(
        cls, name: str, ownerid: str, *, now: datetime, actor: str, command: bytes
    ) -> Colony:
        """A new colony named ``name`` owned by ``ownerid`` (ColonyCreated).

        The engine checks that ``actor`` is the server owner and that no colony of this
        name exists. Raises BadRequest for a name that is not 1 to 64 letters, digits,
        ``_`` or ``-``, or an ``ownerid`` that is not an id.
        """
        check_name(name, "colony name")
        check_id(ownerid, "colony owner id")
        return cls._create_from(
            ColonyCreated(
                **cls._creation_header(
                    colony_aggregate_id(name), now=now, actor=actor, command=command
                ),
                originator_topic=cls._topic(),
                name=name,
                ownerid=ownerid,
            )
        )

    def add_executor(
        self,
        executorid: str,
        executorname: str,
        executortype: str,
        *,
        now: datetime,
        actor: str,
        command: bytes,
    ) -> None:
        """Register an executor, PENDING until approved (ExecutorAdded).

        Raises Forbidden unless ``actor`` is the colony owner; BadRequest for an id that
        is not an id, an empty name, or a type that is not 1 to 64 letters, digits,
        ``_`` or ``-`` (it names the executor's work subject); Conflict when the id or
        the name is already registered.
        """
        self._check_owner(actor, "add executors")
        check_id(executorid, "executor id")
        check_name(executortype, "executor type")
        if not executorname:
            raise BadRequest("executor name is empty")
        if executorid in self.executors:
            raise Conflict(f"executor id {executorid} is already registered in {self.name}")
        if self.executor_by_name(executorname) is not None:
            raise Conflict(f"executor name {executorname!r} is already taken in {self.name}")
        self._trigger(
            ExecutorAdded(
                **self._next_header(now=now, actor=actor, command=command),
                executorid=executorid,
                executorname=executorname,
                executortype=executortype,
            )
        )

    def approve_executor(
        self, executorname: str, *, now: datetime, actor: str, command: bytes
    ) -> None:
        """Approve an executor, whatever its state (ExecutorApproved).

        Raises Forbidden unless ``actor`` is the colony owner, NotFound for an unknown
        name.
        """
        self._check_owner(actor, "approve executors")
        executor = self._executor_named(executorname)
        self._trigger(
            ExecutorApproved(
                **self._next_header(now=now, actor=actor, command=command),
                executorid=executor.executorid,
                executorname=executorname,
            )
        )

    def reject_executor(
        self, executorname: str, *, now: datetime, actor: str, command: bytes
    ) -> None:
        """Reject an executor, whatever its state (ExecutorRejected).

        Raises Forbidden unless ``actor`` is the colony owner, NotFound for an unknown
        name.
        """
        self._check_owner(actor, "reject executors")
        executor = self._executor_named(executorname)
        self._trigger(
            ExecutorRejected(
                **self._next_header(now=now, actor=actor, command=command),
                executorid=executor.executorid,
                executorname=executorname,
            )
        )

    def remove_executor(
        self, executorname: str, *, now: datetime, actor: str, command: bytes
    ) -> None:
        """Remove an executor (ExecutorRemoved).

        Raises Forbidden unless ``actor`` is the colony owner, NotFound for an unknown
        name.
        """
        self._check_owner(actor, "remove executors")
        executor = self._executor_named(executorname)
        self._trigger(
            ExecutorRemoved(
                **self._next_header(now=now, actor=actor, command=command),
                executorid=executor.executorid,
                executorname=executorname,
            )
        )

    def add_user(
        self, userid: str, username: str, *, now: datetime, actor: str, command: bytes
    ) -> None:
        """Add a user, a member of the colony (UserAdded).

        Raises Forbidden unless ``actor`` is the colony owner; BadRequest for an id that
        is not an id or an empty name; Conflict when the id or the name is taken.
        """
        self._check_owner(actor, "add users")
        check_id(userid, "user id")
        if not username:
            raise BadRequest("user name is empty")
        if userid in self.users:
            raise Conflict(f"user id {userid} is already a user of {self.name}")
        if username in self.users.values():
            raise Conflict(f"user name {username!r} is already taken in {self.name}")
        self._trigger(
            UserAdded(
                **self._next_header(now=now, actor=actor, command=command),
                userid=userid,
                username=username,
            )
        )

    def remove(self, *, now: datetime, actor: str, command: bytes) -> None:
        """Remove the colony (ColonyRemoved); the engine checks that ``actor`` is the
        server owner. Raises NotFound if it was already removed."""
        self._check_not_removed()
        self._trigger(ColonyRemoved(**self._next_header(now=now, actor=actor, command=command)))

    # --- queries -------------------------------------------------------------------------

    def is_member(self, identity: str) -> bool:
        """True for the owner, an APPROVED executor or a user of a colony not removed."""
        if self.removed:
            return False
        if identity == self.ownerid or identity in self.users:
            return True
        executor = self.executors.get(identity)
        return executor is not None and executor.state == ExecutorState.APPROVED

    def executor_by_id(self, executorid: str) -> Executor | None:
        """A copy of the executor registered with this id, or None."""
        executor = self.executors.get(executorid)
        return None if executor is None else msgspec.structs.replace(executor)

    def executor_by_name(self, executorname: str) -> Executor | None:
        """A copy of the executor registered with this name, or None."""
        for executor in self.executors.values():
            if executor.executorname == executorname:
                return msgspec.structs.replace(executor)
        return None

    def executor_model(self, executorname: str) -> Executor:
        """The executor of this name as clients see it. Raises NotFound if unknown."""
        return msgspec.structs.replace(self._executor_named(executorname))

    def to_model(self) -> ColonyModel:
        """The colony as clients see it: ``colonyid`` is the owner's id."""
        return ColonyModel(colonyid=self.ownerid, name=self.name)

    # --- checks --------------------------------------------------------------------------

    def _check_not_removed(self) -> None:
        if self.removed:
            raise NotFound(f"colony {self.name!r} was removed")

    def _check_owner(self, actor: str, what: str) -> None:
        self._check_not_removed()
        if actor != self.ownerid:
            raise Forbidden(f"only the owner of colony {self.name!r} may {what}")

    def _executor_named(self, executorname: str) -> Executor:
        for executor in self.executors.values():
            if executor.executorname == executorname:
                return executor
        raise NotFound(f"no executor named {executorname!r} in colony {self.name!r}")
