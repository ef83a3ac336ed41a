"""The colony aggregate: owner, executors, users, membership; without NATS."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from eventsourcing.application import project_aggregate
from eventsourcing.persistence import Mapper

from colonies_es.domain import (
    AuditedEvent,
    BadRequest,
    Colony,
    ColonyCreated,
    ColonyRemoved,
    Conflict,
    DomainError,
    ExecutorAdded,
    ExecutorApproved,
    ExecutorRejected,
    ExecutorRemoved,
    Forbidden,
    NotFound,
    UserAdded,
)
from colonies_es.models import Colony as ColonyModel
from colonies_es.states import ExecutorState
from colonies_es.store.codec import MsgspecTranscoder

T0 = datetime(2025, 1, 15, 10, 30, tzinfo=UTC)
SERVER_ID = "5" * 64
OWNER_ID = "0" * 64
EXECUTOR_ID = "1" * 64
SECOND_EXECUTOR_ID = "2" * 64
USER_ID = "3" * 64
STRANGER_ID = "4" * 64


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def new_colony(name: str = "dev") -> Colony:
    return Colony.create(name, OWNER_ID, now=T0, actor=SERVER_ID, command=b"add_colony")


def with_executor(state: ExecutorState | None = None) -> Colony:
    colony = new_colony()
    colony.add_executor(
        EXECUTOR_ID, "worker-1", "python-executor", now=at(1), actor=OWNER_ID, command=b"add"
    )
    if state == ExecutorState.APPROVED:
        colony.approve_executor("worker-1", now=at(2), actor=OWNER_ID, command=b"approve")
    elif state == ExecutorState.REJECTED:
        colony.reject_executor("worker-1", now=at(2), actor=OWNER_ID, command=b"reject")
    return colony


def refused(colony: Colony, error: type[DomainError], command: Callable[[], object]) -> DomainError:
    """Run ``command``, expect ``error``, and check that nothing was triggered."""
    version, pending = colony.version, len(colony.pending_events)
    with pytest.raises(error) as caught:
        command()
    assert (colony.version, len(colony.pending_events)) == (version, pending)
    return caught.value


def test_create_records_name_and_owner() -> None:
    colony = new_colony()
    (event,) = colony.pending_events
    assert isinstance(event, ColonyCreated)
    assert colony.id == "dev.colony"
    assert (colony.name, colony.ownerid) == ("dev", OWNER_ID)
    assert (event.actor, event.command) == (SERVER_ID, b"add_colony")
    assert colony.to_model() == ColonyModel(colonyid=OWNER_ID, name="dev")


@pytest.mark.parametrize("name", ["", "a.b", "a b", "a*", "x" * 65, "é"])
def test_create_refuses_a_name_that_is_not_a_subject_token(name: str) -> None:
    with pytest.raises(BadRequest) as caught:
        Colony.create(name, OWNER_ID, now=T0, actor=SERVER_ID, command=b"")
    assert caught.value.status == 400
    assert "colony name" in str(caught.value)


@pytest.mark.parametrize("name", ["a", "dev-1", "Dev_2", "x" * 64])
def test_create_accepts_letters_digits_underscore_and_dash(name: str) -> None:
    assert new_colony(name).id == f"{name}.colony"


def test_create_refuses_an_owner_that_is_not_an_id() -> None:
    with pytest.raises(BadRequest, match="colony owner id"):
        Colony.create("dev", "not-an-id", now=T0, actor=SERVER_ID, command=b"")


# --- executors ---------------------------------------------------------------------------


def test_add_executor_registers_it_pending() -> None:
    colony = with_executor()
    event = colony.pending_events[-1]
    assert isinstance(event, ExecutorAdded)
    assert (event.executorid, event.executorname, event.executortype) == (
        EXECUTOR_ID,
        "worker-1",
        "python-executor",
    )
    executor = colony.executor_model("worker-1")
    assert executor.executorid == EXECUTOR_ID
    assert executor.executortype == "python-executor"
    assert executor.colonyname == "dev"
    assert executor.state == ExecutorState.PENDING
    assert executor.commissiontime == at(1)


def test_only_the_owner_adds_executors() -> None:
    colony = new_colony()
    error = refused(
        colony,
        Forbidden,
        lambda: colony.add_executor(
            EXECUTOR_ID, "w", "python-executor", now=T0, actor=STRANGER_ID, command=b""
        ),
    )
    assert error.status == 403


def test_a_duplicate_executor_name_or_id_is_a_conflict() -> None:
    colony = with_executor()
    error = refused(
        colony,
        Conflict,
        lambda: colony.add_executor(
            SECOND_EXECUTOR_ID, "worker-1", "python-executor", now=T0, actor=OWNER_ID, command=b""
        ),
    )
    assert error.status == 409
    assert "name 'worker-1'" in str(error)
    error = refused(
        colony,
        Conflict,
        lambda: colony.add_executor(
            EXECUTOR_ID, "worker-2", "python-executor", now=T0, actor=OWNER_ID, command=b""
        ),
    )
    assert "id" in str(error)


@pytest.mark.parametrize(
    ("executorid", "name", "executortype", "message"),
    [
        ("nope", "w", "python-executor", "executor id"),
        (EXECUTOR_ID, "", "python-executor", "executor name is empty"),
        (EXECUTOR_ID, "w", "", "executor type"),
        (EXECUTOR_ID, "w", "py.exec", "executor type"),
    ],
)
def test_add_executor_refuses_bad_values(
    executorid: str, name: str, executortype: str, message: str
) -> None:
    colony = new_colony()
    error = refused(
        colony,
        BadRequest,
        lambda: colony.add_executor(
            executorid, name, executortype, now=T0, actor=OWNER_ID, command=b""
        ),
    )
    assert message in str(error)


def test_approve_reject_and_remove() -> None:
    colony = with_executor(ExecutorState.APPROVED)
    assert isinstance(colony.pending_events[-1], ExecutorApproved)
    assert colony.executor_model("worker-1").state == ExecutorState.APPROVED

    colony.reject_executor("worker-1", now=at(3), actor=OWNER_ID, command=b"")
    assert isinstance(colony.pending_events[-1], ExecutorRejected)
    assert colony.executor_model("worker-1").state == ExecutorState.REJECTED

    colony.remove_executor("worker-1", now=at(4), actor=OWNER_ID, command=b"")
    removed = colony.pending_events[-1]
    assert isinstance(removed, ExecutorRemoved)
    assert removed.executorid == EXECUTOR_ID
    assert colony.executor_by_name("worker-1") is None
    assert colony.executor_by_id(EXECUTOR_ID) is None

    colony.add_executor(
        EXECUTOR_ID, "worker-1", "python-executor", now=at(5), actor=OWNER_ID, command=b""
    )
    assert colony.executor_model("worker-1").state == ExecutorState.PENDING


@pytest.mark.parametrize("operation", ["approve_executor", "reject_executor", "remove_executor"])
def test_only_the_owner_manages_executors(operation: str) -> None:
    colony = with_executor()
    command = getattr(colony, operation)
    error = refused(
        colony,
        Forbidden,
        lambda: command("worker-1", now=T0, actor=EXECUTOR_ID, command=b""),
    )
    assert error.status == 403


@pytest.mark.parametrize("operation", ["approve_executor", "reject_executor", "remove_executor"])
def test_managing_an_unknown_executor_is_not_found(operation: str) -> None:
    colony = with_executor()
    command = getattr(colony, operation)
    error = refused(
        colony, NotFound, lambda: command("nobody", now=T0, actor=OWNER_ID, command=b"")
    )
    assert error.status == 404
    assert "'nobody'" in str(error)


def test_executor_lookups_return_copies() -> None:
    colony = with_executor()
    found = colony.executor_by_id(EXECUTOR_ID)
    assert found is not None
    assert found == colony.executor_by_name("worker-1")
    found.state = int(ExecutorState.APPROVED)
    colony.executor_model("worker-1").state = int(ExecutorState.APPROVED)
    assert not colony.is_member(EXECUTOR_ID)
    with pytest.raises(NotFound):
        colony.executor_model("nobody")


# --- users and membership ----------------------------------------------------------------


def test_add_user_makes_a_member() -> None:
    colony = new_colony()
    colony.add_user(USER_ID, "alice", now=T0, actor=OWNER_ID, command=b"")
    event = colony.pending_events[-1]
    assert isinstance(event, UserAdded)
    assert (event.userid, event.username) == (USER_ID, "alice")
    assert colony.is_member(USER_ID)


def test_add_user_is_for_the_owner_and_refuses_duplicates() -> None:
    colony = new_colony()
    refused(
        colony,
        Forbidden,
        lambda: colony.add_user(USER_ID, "alice", now=T0, actor=USER_ID, command=b""),
    )
    colony.add_user(USER_ID, "alice", now=T0, actor=OWNER_ID, command=b"")
    refused(
        colony,
        Conflict,
        lambda: colony.add_user(USER_ID, "bob", now=T0, actor=OWNER_ID, command=b""),
    )
    refused(
        colony,
        Conflict,
        lambda: colony.add_user(STRANGER_ID, "alice", now=T0, actor=OWNER_ID, command=b""),
    )
    refused(
        colony,
        BadRequest,
        lambda: colony.add_user(STRANGER_ID, "", now=T0, actor=OWNER_ID, command=b""),
    )


@pytest.mark.parametrize(
    ("state", "member"),
    [
        (None, False),
        (ExecutorState.APPROVED, True),
        (ExecutorState.REJECTED, False),
    ],
    ids=["pending", "approved", "rejected"],
)
def test_an_executor_is_a_member_only_once_approved(
    state: ExecutorState | None, member: bool
) -> None:
    assert with_executor(state).is_member(EXECUTOR_ID) is member


def test_owner_is_a_member_and_a_stranger_is_not() -> None:
    colony = new_colony()
    assert colony.is_member(OWNER_ID)
    assert not colony.is_member(STRANGER_ID)


# --- removal -----------------------------------------------------------------------------


def test_a_removed_colony_refuses_commands_and_has_no_members() -> None:
    colony = with_executor(ExecutorState.APPROVED)
    colony.remove(now=at(9), actor=SERVER_ID, command=b"del_colony")
    assert isinstance(colony.pending_events[-1], ColonyRemoved)
    assert colony.removed
    assert not colony.is_member(OWNER_ID)
    assert not colony.is_member(EXECUTOR_ID)
    for command in (
        lambda: colony.add_executor(
            SECOND_EXECUTOR_ID, "w2", "python-executor", now=T0, actor=OWNER_ID, command=b""
        ),
        lambda: colony.approve_executor("worker-1", now=T0, actor=OWNER_ID, command=b""),
        lambda: colony.add_user(USER_ID, "alice", now=T0, actor=OWNER_ID, command=b""),
        lambda: colony.remove(now=T0, actor=SERVER_ID, command=b""),
    ):
        assert refused(colony, NotFound, command).status == 404


# --- events ------------------------------------------------------------------------------


def _history() -> Colony:
    colony = with_executor(ExecutorState.APPROVED)
    colony.add_executor(
        SECOND_EXECUTOR_ID, "worker-2", "container", now=at(3), actor=OWNER_ID, command=b"a2"
    )
    colony.reject_executor("worker-2", now=at(4), actor=OWNER_ID, command=b"r2")
    colony.remove_executor("worker-2", now=at(5), actor=OWNER_ID, command=b"x2")
    colony.add_user(USER_ID, "alice", now=at(6), actor=OWNER_ID, command=b"u")
    colony.remove(now=at(7), actor=SERVER_ID, command=b"del")
    return colony


def test_each_command_is_one_audited_event() -> None:
    colony = _history()
    events = colony.collect_events()
    assert [type(e).__name__ for e in events] == [
        "ColonyCreated",
        "ExecutorAdded",
        "ExecutorApproved",
        "ExecutorAdded",
        "ExecutorRejected",
        "ExecutorRemoved",
        "UserAdded",
        "ColonyRemoved",
    ]
    assert [(e.actor, e.command) for e in events if isinstance(e, AuditedEvent)] == [
        (SERVER_ID, b"add_colony"),
        (OWNER_ID, b"add"),
        (OWNER_ID, b"approve"),
        (OWNER_ID, b"a2"),
        (OWNER_ID, b"r2"),
        (OWNER_ID, b"x2"),
        (OWNER_ID, b"u"),
        (SERVER_ID, b"del"),
    ]
    assert [e.originator_version for e in events] == list(range(1, 9))
    assert [e.timestamp for e in events] == [T0, at(1), at(2), at(3), at(4), at(5), at(6), at(7)]


def test_replaying_the_events_rebuilds_an_equal_colony() -> None:
    colony = _history()
    assert project_aggregate(None, colony.collect_events()) == colony


def test_events_round_trip_through_the_store() -> None:
    colony = _history()
    transcoder = MsgspecTranscoder()
    events = colony.collect_events()
    for event in events:
        state = dict(event.__dict__)
        assert transcoder.decode(transcoder.encode(state)) == state
    mapper: Mapper[str] = Mapper(transcoder=transcoder)
    reloaded = [mapper.to_domain_event(mapper.to_stored_event(e)) for e in events]
    assert project_aggregate(None, reloaded) == colony
