"""Bad input: every refused command gets a clear error with its status and writes nothing.

Some commands go through the client (``ColoniesError.status`` and message); the ones a
client would never send (unsigned, tampered, replayed, malformed) go as raw NATS requests
with nats-py, and the refusal is read from the ``nats.micro`` error headers. After each
refusal the COLONIES stream's last sequence must not have moved (:func:`nothing_written`).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import nats
import pytest
from nats.micro.request import ERROR_CODE_HEADER, ERROR_HEADER

from colonies_es import ColoniesError, Workflow, crypto, func_spec
from colonies_es.models import FuncSpec
from colonies_es.projections.history import history
from colonies_es.protocol import api_subject
from tests.eventlog import last_sequence, nothing_written
from tests.stack import ColonyHandle, Stack

EXECUTOR_TYPE = "python-executor"
UNKNOWN_ID = "ab" * 32


@dataclass(frozen=True)
class Reply:
    """The engine's answer to a raw request: ``status`` is None for a success."""

    status: int | None
    message: str
    body: bytes


async def _send_all(url: str, op: str, payloads: tuple[bytes, ...]) -> list[Reply]:
    nc = await nats.connect(url)
    try:
        replies = []
        for payload in payloads:
            message = await nc.request(api_subject(op), payload, timeout=10)
            headers = message.headers or {}
            code = headers.get(ERROR_CODE_HEADER)
            replies.append(
                Reply(
                    status=None if code is None else int(code),
                    message=headers.get(ERROR_HEADER, ""),
                    body=message.data,
                )
            )
        return replies
    finally:
        await nc.close()


def send_raw(stack: Stack, op: str, *payloads: bytes) -> list[Reply]:
    """Sends each payload, in order, as a request to ``colonies.api.<op>``."""
    return asyncio.run(_send_all(stack.nats.url, op, payloads))


def simple_spec(colony: ColonyHandle, **changes: Any) -> FuncSpec:
    made = func_spec("work", [], colony.name, EXECUTOR_TYPE)
    for name, value in changes.items():
        setattr(made, name, value)
    return made


def submit_body(colony: ColonyHandle) -> dict[str, Any]:
    return {"spec": msgspec.to_builtins(simple_spec(colony))}


def engine_still_answers(stack: Stack, colony: ColonyHandle) -> None:
    assert stack.client.get_colony(colony.name, colony.owner_prvkey).name == colony.name


# --- not signed, badly signed, replayed --------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"hello engine", id="raw-bytes"),
        pytest.param(b'{"colonyname": "x"}', id="json-without-envelope"),
        pytest.param(
            msgspec.json.encode({"payload": "e30=", "public_key": "04" + "0" * 128}),
            id="envelope-without-signature",
        ),
    ],
)
def test_an_unsigned_command_is_refused_with_400(stack: Stack, payload: bytes) -> None:
    colony = stack.new_colony()
    with nothing_written(stack.nats.url):
        [reply] = send_raw(stack, "submit_func_spec", payload)
    assert reply.status == 400
    assert "malformed command" in reply.message
    assert reply.body == b""
    engine_still_answers(stack, colony)


def tampered(sealed: bytes, old: bytes, new: bytes) -> bytes:
    """The sealed command with ``old`` replaced by ``new`` in its signed payload."""
    envelope = msgspec.json.decode(sealed, type=crypto.SignedCommand)
    assert old in envelope.payload
    changed = crypto.SignedCommand(
        payload=envelope.payload.replace(old, new),
        signature=envelope.signature,
        public_key=envelope.public_key,
    )
    return msgspec.json.encode(changed)


def signed_by_another_key(sealed: bytes, impostor_prvkey: str) -> bytes:
    """The same payload and public key, but the signature of another key."""
    envelope = msgspec.json.decode(sealed, type=crypto.SignedCommand)
    changed = crypto.SignedCommand(
        payload=envelope.payload,
        signature=crypto.sign(envelope.payload, impostor_prvkey),
        public_key=envelope.public_key,
    )
    return msgspec.json.encode(changed)


def test_a_tampered_payload_is_refused_with_403(stack: Stack) -> None:
    colony = stack.new_colony()
    sealed = crypto.seal("submit_func_spec", submit_body(colony), colony.owner_prvkey)
    with nothing_written(stack.nats.url):
        [reply] = send_raw(stack, "submit_func_spec", tampered(sealed, b'"work"', b'"evil"'))
    assert reply.status == 403
    assert "signature" in reply.message


def test_a_signature_of_another_key_is_refused_with_403(stack: Stack) -> None:
    colony = stack.new_colony()
    sealed = crypto.seal("submit_func_spec", submit_body(colony), colony.owner_prvkey)
    forged = signed_by_another_key(sealed, crypto.new_private_key())
    with nothing_written(stack.nats.url):
        [reply] = send_raw(stack, "submit_func_spec", forged)
    assert reply.status == 403
    assert "signature" in reply.message


def test_a_stale_command_is_refused_with_403(stack: Stack) -> None:
    colony = stack.new_colony()
    old = crypto.seal(
        "submit_func_spec", submit_body(colony), colony.owner_prvkey, now=time.time() - 3600
    )
    with nothing_written(stack.nats.url):
        [reply] = send_raw(stack, "submit_func_spec", old)
    assert reply.status == 403
    assert "stale" in reply.message


def test_a_replayed_command_gets_its_original_reply_and_writes_nothing(stack: Stack) -> None:
    """Issue 8.4: a retried (or replayed) signed command is answered with the reply it
    got the first time; it is never applied twice."""
    colony = stack.new_colony()
    sealed = crypto.seal("submit_func_spec", submit_body(colony), colony.owner_prvkey)

    [first] = send_raw(stack, "submit_func_spec", sealed)
    assert first.status is None, first.message
    with nothing_written(stack.nats.url):
        [again] = send_raw(stack, "submit_func_spec", sealed)

    assert again.status is None, again.message
    assert again.body == first.body
    processes = stack.client.list_processes(colony.name, 100, -1, colony.owner_prvkey)
    assert len(processes) == 1


async def _send_together(
    url: str, op: str, payload: bytes, copies: int
) -> list[tuple[str | None, bytes]]:
    nc = await nats.connect(url)
    try:
        replies = await asyncio.gather(
            *(nc.request(api_subject(op), payload, timeout=10) for _ in range(copies))
        )
        return [((reply.headers or {}).get(ERROR_CODE_HEADER), reply.data) for reply in replies]
    finally:
        await nc.close()


def test_copies_of_a_command_arriving_together_are_applied_once(stack: Stack) -> None:
    """Copies racing the original wait for its outcome and get the same reply."""
    colony = stack.new_colony()
    sealed = crypto.seal("submit_func_spec", submit_body(colony), colony.owner_prvkey)

    replies = asyncio.run(_send_together(stack.nats.url, "submit_func_spec", sealed, 16))

    assert Counter(code for code, _ in replies) == {None: 16}
    assert len({body for _, body in replies}) == 1
    assert len(stack.client.list_processes(colony.name, 100, -1, colony.owner_prvkey)) == 1


def test_a_command_sent_to_another_op_is_refused_with_400(stack: Stack) -> None:
    colony = stack.new_colony()
    sealed = crypto.seal("submit_func_spec", submit_body(colony), colony.owner_prvkey)
    with nothing_written(stack.nats.url):
        [reply] = send_raw(stack, "del_colony", sealed)
    assert reply.status == 400
    assert "submit_func_spec" in reply.message


# --- roles ---------------------------------------------------------------------------------


def test_only_the_colony_owner_adds_executors(stack: Stack) -> None:
    colony = stack.new_colony()
    member = stack.new_executor(colony)
    newcomer = crypto.new_private_key()
    executor = {
        "executorid": crypto.id_from_private_key(newcomer),
        "executortype": EXECUTOR_TYPE,
        "executorname": "sneaky",
        "colonyname": colony.name,
    }
    for not_owner in (member, newcomer, stack.server_prvkey):
        with nothing_written(stack.nats.url), pytest.raises(ColoniesError) as refused:
            stack.client.add_executor(executor, not_owner)
        assert refused.value.status == 403, refused.value
    with pytest.raises(ColoniesError) as unknown:
        stack.client.get_executor(colony.name, "sneaky", colony.owner_prvkey)
    assert unknown.value.status == 404


def test_only_the_server_owner_adds_colonies(stack: Stack) -> None:
    colony = stack.new_colony()
    key = crypto.new_private_key()
    for not_server_owner in (colony.owner_prvkey, key):
        with nothing_written(stack.nats.url), pytest.raises(ColoniesError) as refused:
            stack.client.add_colony(
                {"colonyid": crypto.id_from_private_key(key), "name": "mine"}, not_server_owner
            )
        assert refused.value.status == 403
        assert "server owner" in refused.value.message


def test_an_executor_cannot_close_a_process_assigned_to_another(stack: Stack) -> None:
    colony = stack.new_colony()
    holder = stack.new_executor(colony)
    other = stack.new_executor(colony)
    stack.client.submit_func_spec(simple_spec(colony), colony.owner_prvkey)
    process = stack.client.assign(colony.name, 10, holder)

    for intruder in (other, colony.owner_prvkey):
        with nothing_written(stack.nats.url), pytest.raises(ColoniesError) as refused:
            stack.client.close(process.processid, ["stolen"], intruder)
        assert refused.value.status == 403
        assert process.processid in refused.value.message
    stack.client.close(process.processid, ["mine"], holder)
    assert stack.client.get_process(process.processid, holder).output == ["mine"]


# --- unknown things ------------------------------------------------------------------------


def test_an_unknown_colony_is_404(stack: Stack) -> None:
    colony = stack.new_colony()
    ghost = ColonyHandle("no-such-colony", colony.owner_prvkey)
    with nothing_written(stack.nats.url):
        with pytest.raises(ColoniesError) as submit:
            stack.client.submit_func_spec(simple_spec(ghost), colony.owner_prvkey)
        with pytest.raises(ColoniesError) as get:
            stack.client.get_colony("no-such-colony", stack.server_prvkey)
    for refused in (submit.value, get.value):
        assert refused.status == 404
        assert "no-such-colony" in refused.message


@pytest.mark.parametrize(
    "op", ["get_process", "close", "fail", "get_processgraph", "cancel_processgraph"]
)
def test_an_unknown_process_or_graph_id_is_404(stack: Stack, op: str) -> None:
    colony = stack.new_colony()
    executor = stack.new_executor(colony)
    owner = colony.owner_prvkey
    calls: dict[str, Callable[[], object]] = {
        "get_process": lambda: stack.client.get_process(UNKNOWN_ID, owner),
        "close": lambda: stack.client.close(UNKNOWN_ID, [], executor),
        "fail": lambda: stack.client.fail(UNKNOWN_ID, ["no"], executor),
        "get_processgraph": lambda: stack.client.get_processgraph(UNKNOWN_ID, owner),
        "cancel_processgraph": lambda: stack.client.cancel_processgraph(UNKNOWN_ID, owner),
    }
    with nothing_written(stack.nats.url), pytest.raises(ColoniesError) as refused:
        calls[op]()
    assert refused.value.status == 404
    assert UNKNOWN_ID in refused.value.message


# --- workflows SEMANTICS.md refuses ---------------------------------------------------------


def node(colony: ColonyHandle, nodename: str, *dependencies: str, funcname: str = "f") -> FuncSpec:
    made = func_spec(funcname, [], colony.name, EXECUTOR_TYPE)
    made.nodename = nodename
    made.conditions.dependencies.extend(dependencies)
    return made


@pytest.mark.parametrize(
    ("shape", "culprits"),
    [
        pytest.param(
            [("load", ["train"]), ("clean", ["load"]), ("train", ["clean"]), ("report", [])],
            {"load", "clean", "train"},
            id="cycle",
        ),
        pytest.param(
            [("load", []), ("clean", []), ("load", ["clean"])], {"load"}, id="duplicate-nodename"
        ),
        pytest.param(
            [("load", []), ("clean", ["load", "ghost"])],
            {"clean", "ghost"},
            id="missing-dependency",
        ),
    ],
)
def test_a_bad_workflow_is_refused_with_400_naming_the_culprits(
    stack: Stack, shape: list[tuple[str, list[str]]], culprits: set[str]
) -> None:
    colony = stack.new_colony()
    workflow = Workflow(
        colonyname=colony.name,
        functionspecs=[node(colony, name, *deps) for name, deps in shape],
    )
    with nothing_written(stack.nats.url), pytest.raises(ColoniesError) as refused:
        stack.client.submit_workflow(workflow, colony.owner_prvkey)
    assert refused.value.status == 400
    named = {name for name, _ in shape} | {"ghost"}
    mentioned = {name for name in named if re.search(rf"\b{name}\b", refused.value.message)}
    assert mentioned == culprits, refused.value.message
    assert stack.client.get_processgraphs(colony.name, 10, colony.owner_prvkey) == []


def test_an_empty_nodename_is_refused_with_400(stack: Stack) -> None:
    colony = stack.new_colony()
    workflow = Workflow(
        colonyname=colony.name,
        functionspecs=[node(colony, "a"), node(colony, "", funcname="")],
    )
    with nothing_written(stack.nats.url), pytest.raises(ColoniesError) as refused:
        stack.client.submit_workflow(workflow, colony.owner_prvkey)
    assert refused.value.status == 400
    assert "functionspecs[1]" in refused.value.message
    assert "nodename is empty" in refused.value.message


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"workflow": {"colonyname": "COLONY", "functionspecs": "x"}}, id="specs-str"),
        pytest.param({"workflow": "x"}, id="workflow-str"),
        pytest.param({"nothing": 1}, id="no-workflow"),
        pytest.param([1, 2, 3], id="a-list"),
    ],
)
def test_a_body_of_the_wrong_shape_is_refused_with_400(stack: Stack, body: Any) -> None:
    colony = stack.new_colony()
    if isinstance(body, dict) and isinstance(body.get("workflow"), dict):
        body["workflow"]["colonyname"] = colony.name
    sealed = crypto.seal("submit_workflow", body, colony.owner_prvkey)
    with nothing_written(stack.nats.url):
        [reply] = send_raw(stack, "submit_workflow", sealed)
    assert reply.status == 400
    assert "bad body for 'submit_workflow'" in reply.message
    engine_still_answers(stack, colony)


# --- size -----------------------------------------------------------------------------------


def test_a_command_over_the_nats_payload_limit_fails_clearly_in_the_client(stack: Stack) -> None:
    colony = stack.new_colony()
    huge = simple_spec(colony, args=["x" * 2_000_000])
    with nothing_written(stack.nats.url), pytest.raises(ColoniesError) as failed:
        stack.client.submit_func_spec(huge, colony.owner_prvkey)
    assert failed.value.status == 413
    assert "over the NATS message limit" in str(failed.value)
    engine_still_answers(stack, colony)
    assert stack.client.list_processes(colony.name, 10, -1, colony.owner_prvkey) == []


def test_a_command_whose_event_would_be_too_large_is_a_client_error(stack: Stack) -> None:
    colony = stack.new_colony()
    big = simple_spec(colony, args=["x" * 600_000])
    with nothing_written(stack.nats.url), pytest.raises(ColoniesError) as refused:
        stack.client.submit_func_spec(big, colony.owner_prvkey)
    engine_still_answers(stack, colony)
    assert last_sequence(stack.nats.url) > 0
    assert 400 <= refused.value.status < 500, refused.value


def test_a_workflow_whose_event_could_not_be_read_back_is_refused_and_writes_nothing(
    stack: Stack,
) -> None:
    """900 one-line functions fit in a command and in the server's max_payload, but their
    GraphSubmitted event would be too big for the read side's replies (history, audit,
    the UI): refused with 400 and a message saying why, before anything is written;
    700 go through and their history reads back."""
    colony = stack.new_colony()

    def workflow(count: int) -> Workflow:
        specs = [
            func_spec(
                "pair", [], colony.name, "python-executor", code="def pair(ctx={}):\n    pass\n"
            )
            for _ in range(count)
        ]
        for number, spec in enumerate(specs):
            spec.nodename = f"pair_{number}"
        return Workflow(colonyname=colony.name, functionspecs=specs)

    with nothing_written(stack.nats.url), pytest.raises(ColoniesError) as refused:
        stack.client.submit_workflow(workflow(900), colony.owner_prvkey)
    assert refused.value.status == 400
    assert "could not read it back in one reply" in str(refused.value)
    graph = stack.client.submit_workflow(workflow(700), colony.owner_prvkey)
    assert (
        len(history(stack.nats.url, graph.processgraphid, colony.name, stack.engine.seal_key)) == 1
    )
