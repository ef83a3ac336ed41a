"""ColonyOS RPC envelopes: how the engine opens a command that a ColonyOS client signed.

pycolonies and the other ColonyOS clients send ``{"payloadtype", "payload", "signature"}``
where ``payload`` is standard base64 of the JSON message (its ``msgtype`` equals
``payloadtype``) and ``signature`` is a secp256k1 *recoverable* signature over SHA3-256 of
the base64 text exactly as sent: ``r(32) || s(32) || v(1)``, ``v`` in {0, 1}, 130 lowercase
hex characters, low ``s`` (COLONYOS_RPC.md, 1.2 and 2.1). No public key travels: the
caller's id is the SHA3-256 of the hex text of the public key recovered from the signature.

The gateway (:mod:`colonies_es.gateway`) forwards the caller's envelope unchanged to the
engine on ``colonies.api.colonyos``; :func:`open_envelope` verifies it there and translates
the message into one of the engine's own ops (:data:`colonies_es.protocol.OPS`) with its
body. The resulting :class:`~colonies_es.crypto.VerifiedCommand` carries the envelope
itself as its ``command``, so the event stores the caller's own signature and
``colonies audit verify`` re-checks it offline with the same function.

Replays. A ColonyOS message carries no nonce and no time stamp, and legitimate clients send
byte-identical envelopes on purpose (an executor's ``assign`` loop; the deterministic
signature of two identical submissions), so nothing here can tell a replay from a repeat.
Such commands get what ColonyOS gives them: no replay protection beyond the transport
(TLS to the gateway, NATS authorization behind it). Each opening of an envelope is a new
command: its VerifiedCommand gets a fresh random ``nonce`` and ``ts`` = the time it was
opened, so the engine never takes one for the retry of another (two identical
submissions are two processes, as in ColonyOS), and the audit checks neither freshness
nor uniqueness for them. Retrying is therefore only safe for reads; the gateway never
retries a command on its own.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

import coincurve
import msgspec

from colonies_es.crypto import CommandRejected, VerifiedCommand

__all__ = [
    "ENGINE_OP",
    "MESSAGES",
    "ColonyOSEnvelope",
    "envelope",
    "is_colonyos_command",
    "open_envelope",
    "recover_id",
    "sign",
]

ENGINE_OP = "colonyos"
"""The engine endpoint (``colonies.api.colonyos``) that takes ColonyOS envelopes."""

_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
"""The order N of secp256k1's group."""


class ColonyOSEnvelope(msgspec.Struct, frozen=True):
    """The ColonyOS RPC message as it travels (GO ``rpc.RPCMsg``)."""

    payloadtype: str
    payload: str
    signature: str


def _sha3(data: bytes) -> bytes:
    return hashlib.sha3_256(data).digest()


def recover_id(payload: str, signature: str) -> str:
    """The id of whoever signed ``payload`` (the base64 text) with ``signature``.

    Raises ``CommandRejected(403)`` for a signature that is not 130 hex characters, has a
    high ``s`` (ColonyOS refuses those) or from which no key can be recovered.
    """
    try:
        raw = bytes.fromhex(signature)
    except ValueError:
        raise CommandRejected(403, "bad signature: not hex") from None
    if len(raw) != 65 or raw[64] > 1:
        raise CommandRejected(403, "bad signature: expected 65 bytes r || s || v (v 0 or 1)")
    if int.from_bytes(raw[32:64], "big") * 2 >= _ORDER:
        raise CommandRejected(403, "bad signature: s value is over half the order")
    try:
        key = coincurve.PublicKey.from_signature_and_message(
            raw, payload.encode("ascii"), hasher=_sha3
        )
    except (ValueError, UnicodeEncodeError, TypeError):
        raise CommandRejected(403, "bad signature: no public key can be recovered") from None
    return hashlib.sha3_256(key.format(compressed=False).hex().encode("ascii")).hexdigest()


def sign(payload: str, prvkey: str) -> str:
    """The ColonyOS signature of ``payload`` (base64 text) by ``prvkey`` (64 hex).

    Deterministic (RFC 6979 nonce) and low-``s``, as pycolonies signs; for tests, tools
    and benchmarks.
    """
    raw = coincurve.PrivateKey(bytes.fromhex(prvkey)).sign_recoverable(
        payload.encode("ascii"), hasher=_sha3
    )
    return raw.hex()


def envelope(message: dict[str, Any], prvkey: str) -> bytes:
    """The JSON of a signed envelope for ``message`` (which holds ``msgtype``), built the
    way pycolonies builds it."""
    payload = base64.b64encode(json.dumps(message).encode("utf-8")).decode("ascii")
    return json.dumps(
        {"payloadtype": message["msgtype"], "payload": payload, "signature": sign(payload, prvkey)}
    ).encode("utf-8")


def is_colonyos_command(stored: bytes) -> bool:
    """True when a command stored with an event is a ColonyOS envelope (not our own)."""
    return stored.lstrip().startswith(b'{"payloadtype"')


_decode_envelope = msgspec.json.Decoder(ColonyOSEnvelope).decode


def open_envelope(data: bytes, now: float | None = None) -> VerifiedCommand:
    """Verify a ColonyOS envelope and translate it into one of the engine's commands.

    Returns a VerifiedCommand whose ``caller_id`` is the recovered signer, ``op`` and
    ``body`` the engine op and its JSON body, ``nonce`` fresh and random and ``ts`` ``now``
    (default: the clock; see the module's note on replays), ``payload_digest`` the
    SHA3-256 of the base64 payload and ``command`` the envelope. Raises
    ``CommandRejected``: 400 for an envelope or message that does not parse or does not
    fit its type, or a ``msgtype`` that differs from
    ``payloadtype``; 403 for a bad signature or an unknown ``payloadtype`` (as ColonyOS);
    501 for a ColonyOS message this system does not implement.
    """
    try:
        received = _decode_envelope(data)
    except msgspec.DecodeError as error:
        raise CommandRejected(400, f"malformed RPC message: {error}") from None
    translate = MESSAGES.get(received.payloadtype)
    if translate is None:
        if received.payloadtype in NOT_IMPLEMENTED:
            raise CommandRejected(501, f"{received.payloadtype} is not implemented by colonies-es")
        raise CommandRejected(403, f"invalid rpcMsg.PayloadType: {received.payloadtype}")
    caller_id = recover_id(received.payload, received.signature)
    try:
        message = json.loads(base64.b64decode(received.payload, validate=True))
    except (binascii.Error, ValueError):
        raise CommandRejected(400, "the payload is not base64 of a JSON message") from None
    if not isinstance(message, dict):
        raise CommandRejected(400, "the payload is not a JSON object")
    if message.get("msgtype") != received.payloadtype:
        raise CommandRejected(400, "msg.MsgType does not match payloadType")
    try:
        op, body = translate(message)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise CommandRejected(
            400, f"bad {received.payloadtype}: {type(error).__name__} {error}"
        ) from None
    return VerifiedCommand(
        caller_id=caller_id,
        op=op,
        body=msgspec.Raw(msgspec.json.encode(body)),
        nonce=secrets.token_hex(16),
        ts=time.time() if now is None else now,
        payload_digest=hashlib.sha3_256(received.payload.encode("ascii")).hexdigest(),
        command=received,
    )


# ------------------------------------------------------------------ message translation
# Each function takes the decoded ColonyOS message and returns (engine op, body dict). The
# body is then decoded with the op's type from colonies_es.protocol, which checks it.


def _spec(spec: Any) -> dict[str, Any]:
    """A pycolonies FuncSpec with its nulls as the engine's empty values (pycolonies'
    ``func_spec`` sends ``kwargs: null``, ``executornames: null``)."""
    if not isinstance(spec, dict):
        raise TypeError("spec must be an object")
    conditions = dict(spec.get("conditions") or {})
    for name in ("executornames", "dependencies"):
        if conditions.get(name) is None:
            conditions[name] = []
    fixed = {**spec, "conditions": conditions}
    for name, empty in (("args", []), ("kwargs", {}), ("env", {})):
        if fixed.get(name) is None:
            fixed[name] = empty
    return fixed


def _fields(*names: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda m: {name: m[name] for name in names}


def _state(value: Any, missing: int | None) -> int | None:
    """A ColonyOS state filter: -1 means every state, a missing one ``missing``."""
    if value is None:
        return missing
    if not isinstance(value, int) or isinstance(value, bool) or not -1 <= value <= 3:
        raise ValueError(f"invalid state {value!r}: use -1 (all) or 0..3")
    return None if value == -1 else value


def _assign(m: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    timeout = m.get("timeout")
    if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout == 0:
        raise ValueError(f"timeout must be a non-zero number of seconds, not {timeout!r}")
    return "claim", {"colonyname": m["colonyname"]}


def _list_processes(m: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if m.get("processgraphid"):
        raise ValueError("listing the processes of a process graph is not supported")
    state = _state(m.get("state"), 0)
    if state is None:
        raise ValueError("state -1 is not a state: use 0..3")
    return "list_processes", {"colonyname": m["colonyname"], "count": m["count"], "state": state}


def _get_logs(m: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if not m.get("processid"):
        raise ValueError("logs are kept per process: give a processid")
    return "get_process_log", _fields("colonyname", "processid", "count", "since")(m)


def _add_attribute(m: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    attribute = m["attribute"]
    return "add_attribute", {
        "processid": attribute["targetid"],
        "key": attribute["key"],
        "value": attribute["value"],
    }


def _add_child(m: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    spec = _spec(m["spec"])
    return "add_child", {
        **_fields("processgraphid", "parentprocessid", "childprocessid", "insert")(m),
        "spec": spec,
        "nodename": spec.get("nodename") or spec.get("funcname", ""),
    }


def _op(op: str, *names: str) -> Callable[[dict[str, Any]], tuple[str, dict[str, Any]]]:
    pick = _fields(*names)
    return lambda m: (op, pick(m))


MESSAGES: dict[str, Callable[[dict[str, Any]], tuple[str, dict[str, Any]]]] = {
    "addcolonymsg": _op("add_colony", "colony"),
    "removecolonymsg": _op("del_colony", "colonyname"),
    "getcoloniesmsg": _op("list_colonies"),
    "getcolonymsg": _op("get_colony", "colonyname"),
    "getcolonystatsmsg": _op("stats", "colonyname"),
    "addexecutormsg": _op("add_executor", "executor"),
    "approveexecutormsg": _op("approve_executor", "colonyname", "executorname"),
    "rejectexecutormsg": _op("reject_executor", "colonyname", "executorname"),
    "removeexecutormsg": _op("remove_executor", "colonyname", "executorname"),
    "getexecutorsmsg": _op("list_executors", "colonyname"),
    "getexecutormsg": _op("get_executor", "colonyname", "executorname"),
    "submitfuncspecmsg": lambda m: ("submit_func_spec", {"spec": _spec(m["spec"])}),
    "submitworkflowspecmsg": lambda m: (
        "submit_workflow",
        {
            "workflow": {
                "colonyname": m["spec"]["colonyname"],
                "functionspecs": [_spec(s) for s in m["spec"]["functionspecs"] or []],
            }
        },
    ),
    "assignprocessmsg": _assign,
    "closesuccessfulmsg": lambda m: (
        "close",
        {"processid": m["processid"], "out": m.get("out") or []},
    ),
    "closefailedmsg": lambda m: (
        "fail",
        {"processid": m["processid"], "errors": m.get("errors") or []},
    ),
    "setoutputmsg": lambda m: (
        "set_output",
        {"processid": m["processid"], "out": m.get("out") or []},
    ),
    "getprocessmsg": _op("get_process", "processid"),
    "subscribeprocessmsg": _op("get_process", "processid"),
    "getprocessesmsg": _list_processes,
    "removeprocessmsg": _op("remove_process", "processid"),
    "removeallprocessesmsg": lambda m: (
        "remove_all_processes",
        {"colonyname": m["colonyname"], "state": _state(m.get("state"), None)},
    ),
    "getprocessgraphmsg": _op("get_processgraph", "processgraphid"),
    "getprocessgraphsmsg": lambda m: (
        "get_processgraphs",
        {"colonyname": m["colonyname"], "count": m["count"], "state": _state(m.get("state"), 0)},
    ),
    "removeprocessgraphmsg": _op("remove_processgraph", "processgraphid"),
    "removeallprocessgraphsmsg": lambda m: (
        "remove_all_processgraphs",
        {"colonyname": m["colonyname"], "state": _state(m.get("state"), 0)},
    ),
    "addchildmsg": _add_child,
    "addattributemsg": _add_attribute,
    "addlogmsg": _op("add_log", "processid", "message"),
    "getlogsmsg": _get_logs,
}
"""Every ColonyOS message served, by ``msgtype``: its translation to an engine op."""

NOT_IMPLEMENTED = frozenset(
    {
        "getattributemsg",
        "addfunctionmsg",
        "getfunctionsmsg",
        "addcronmsg",
        "getcronmsg",
        "getcronsmsg",
        "removecronmsg",
        "runcronmsg",
        "createsnapshotmsg",
        "getsnapshotsmsg",
        "getsnapshotmsg",
        "getfilesmsg",
        "getfilemsg",
        "addfilemsg",
        "removefilemsg",
        "getfilelabelsmsg",
        "channelappendmsg",
        "channelreadmsg",
        "subscribechannelmsg",
        "subscribeprocessesmsg",
        "getgeneratorsmsg",
        "getgeneratormsg",
        "addgeneratormsg",
        "removegeneratormsg",
        "getusersmsg",
        "addusermsg",
        "removeusermsg",
    }
)
"""ColonyOS messages pycolonies can send that this system does not serve (501)."""
