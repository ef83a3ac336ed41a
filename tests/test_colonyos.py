"""ColonyOS envelopes (colonies_es.colonyos): signatures as pycolonies makes them, and the
translation of pycolonies' messages into engine commands. Pure code, no NATS."""

from __future__ import annotations

import base64
import contextlib
import json
from typing import Any

import msgspec
import pytest
from pycolonies import Crypto as PyCrypto
from pycolonies import func_spec

from colonies_es import colonyos, crypto, protocol

VECTOR_KEY = "6d2fb6f546bacfd98c68769e61e0b44a697a30596c018a50e28200aa59b01c0a"
VECTOR_ID = "4fef2b5a82d134d058c1883c72d6d9caf77cd59ca82d73105017590dea3dcb87"
ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def payload_of(message: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(message).encode()).decode()


def opened(message: dict[str, Any], prvkey: str = VECTOR_KEY) -> crypto.VerifiedCommand:
    return colonyos.open_envelope(colonyos.envelope(message, prvkey))


def test_signatures_are_pycolonies_own_and_name_the_signer() -> None:
    payload = payload_of({"msgtype": "getcoloniesmsg"})
    theirs = PyCrypto().sign(payload, VECTOR_KEY)
    assert colonyos.sign(payload, VECTOR_KEY) == theirs  # deterministic, low s, v in {0,1}
    assert colonyos.recover_id(payload, theirs) == VECTOR_ID == PyCrypto().id(VECTOR_KEY)
    other = PyCrypto().prvkey()
    assert colonyos.recover_id(payload, PyCrypto().sign(payload, other)) == PyCrypto().id(other)


def test_a_changed_payload_names_someone_else() -> None:
    payload = payload_of({"msgtype": "getcoloniesmsg"})
    signature = colonyos.sign(payload, VECTOR_KEY)
    changed = payload_of({"msgtype": "getcoloniesmsg", "x": 1})
    # Another point, hence another key (or, rarely, none: then a 403).
    recovered = ""
    with contextlib.suppress(crypto.CommandRejected):
        recovered = colonyos.recover_id(changed, signature)
    assert recovered != VECTOR_ID


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda s: s[:128], "65 bytes"),
        (lambda s: s[:128] + "1b", "65 bytes"),  # v 27 (Ethereum style) is not ColonyOS'
        (lambda s: "zz" + s[2:], "not hex"),
        (  # the same signature with s' = N - s (and v flipped) is valid but high s
            lambda s: s[:64] + f"{ORDER - int(s[64:128], 16):064x}" + f"{int(s[128:]) ^ 1:02x}",
            "over half the order",
        ),
    ],
)
def test_malformed_or_high_s_signatures_are_refused(mangle: Any, reason: str) -> None:
    payload = payload_of({"msgtype": "getcoloniesmsg"})
    with pytest.raises(crypto.CommandRejected, match=reason) as refused:
        colonyos.recover_id(payload, mangle(colonyos.sign(payload, VECTOR_KEY)))
    assert refused.value.status == 403


def test_open_envelope_gives_the_engine_command_and_keeps_the_envelope() -> None:
    message = {"msgtype": "approveexecutormsg", "colonyname": "dev", "executorname": "e1"}
    command = colonyos.open_envelope(colonyos.envelope(message, VECTOR_KEY), now=1234.5)
    assert (command.caller_id, command.op, command.ts) == (VECTOR_ID, "approve_executor", 1234.5)
    again = colonyos.open_envelope(colonyos.envelope(message, VECTOR_KEY), now=1234.5)
    assert again.nonce != command.nonce  # the same bytes again are a new command
    assert command.decode_body(protocol.ExecutorRef) == protocol.ExecutorRef(
        colonyname="dev", executorname="e1"
    )
    stored = msgspec.json.encode(command.command)
    assert colonyos.is_colonyos_command(stored)
    reopened = colonyos.open_envelope(stored)  # what the audit re-checks offline
    assert (reopened.caller_id, reopened.op, reopened.body) == (
        command.caller_id,
        command.op,
        command.body,
    )


def test_pycolonies_func_specs_with_nulls_become_engine_specs() -> None:
    spec = func_spec(func="f", args=["a", 1], colonyname="dev", executortype="t", code="x=1")
    wire = spec.model_dump(by_alias=True)
    assert wire["kwargs"] is None
    assert wire["conditions"]["executornames"] is None
    body = opened({"msgtype": "submitfuncspecmsg", "spec": wire}).decode_body(
        protocol.SubmitFuncSpec
    )
    assert (body.spec.kwargs, body.spec.conditions.executornames) == ({}, [])
    assert (body.spec.funcname, body.spec.args, body.spec.priority) == ("f", ["a", 1], 1)
    workflow = {"colonyname": "dev", "functionspecs": [wire, {**wire, "nodename": "g"}]}
    command = opened({"msgtype": "submitworkflowspecmsg", "spec": workflow})
    submitted = command.decode_body(protocol.SubmitWorkflow).workflow
    assert [s.nodename for s in submitted.functionspecs] == ["f", "g"]


@pytest.mark.parametrize(
    ("message", "op", "state"),
    [
        ({"msgtype": "getprocessgraphsmsg", "colonyname": "c", "count": 5}, "get_processgraphs", 0),
        (
            {"msgtype": "getprocessgraphsmsg", "colonyname": "c", "count": 5, "state": 2},
            "get_processgraphs",
            2,
        ),
        (
            {"msgtype": "removeallprocessgraphsmsg", "colonyname": "c"},
            "remove_all_processgraphs",
            0,
        ),
        (
            {"msgtype": "removeallprocessgraphsmsg", "colonyname": "c", "state": -1},
            "remove_all_processgraphs",
            None,
        ),
        (
            {"msgtype": "removeallprocessesmsg", "colonyname": "c", "state": -1},
            "remove_all_processes",
            None,
        ),
    ],
)
def test_state_filters_follow_colonyos(message: dict[str, Any], op: str, state: int | None) -> None:
    command = opened(message)
    assert command.op == op
    assert msgspec.json.decode(command.body)["state"] == state


@pytest.mark.parametrize(
    ("envelope", "status", "reason"),
    [
        (b"[]", 400, "malformed RPC message"),
        (
            colonyos.envelope(
                {"msgtype": "assignprocessmsg", "colonyname": "c", "timeout": 0}, VECTOR_KEY
            ),
            400,
            "timeout",
        ),
        (
            colonyos.envelope(
                {"msgtype": "getprocessesmsg", "colonyname": "c", "count": 1, "state": 7},
                VECTOR_KEY,
            ),
            400,
            "invalid state",
        ),
        (colonyos.envelope({"msgtype": "getprocessmsg"}, VECTOR_KEY), 400, "processid"),
        (
            colonyos.envelope({"msgtype": "nosuchmsg"}, VECTOR_KEY),
            403,
            "invalid rpcMsg.PayloadType",
        ),
        (colonyos.envelope({"msgtype": "addcronmsg"}, VECTOR_KEY), 501, "not implemented"),
    ],
)
def test_bad_messages_are_refused_with_colonyos_statuses(
    envelope: bytes, status: int, reason: str
) -> None:
    with pytest.raises(crypto.CommandRejected, match=reason) as refused:
        colonyos.open_envelope(envelope)
    assert refused.value.status == status


def test_payloadtype_must_be_the_signed_msgtype() -> None:
    sent = json.loads(colonyos.envelope({"msgtype": "getprocessmsg", "processid": "a"}, VECTOR_KEY))
    sent["payloadtype"] = "removeprocessmsg"
    with pytest.raises(crypto.CommandRejected, match="does not match") as refused:
        colonyos.open_envelope(json.dumps(sent).encode())
    assert refused.value.status == 400
