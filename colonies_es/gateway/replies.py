"""Replies in ColonyOS's shapes (COLONYOS_RPC.md, 1.3 and 5).

The engine answers with the JSON of this system's models, whose field names are already
ColonyOS's. What pycolonies' pydantic models need on top: every time field a string (a
moment that has not come is Go's zero time, ``0001-01-01T00:00:00Z``, never ``null``) and a
process graph with ``nodes`` and ``edges`` lists. The envelope around the payload is GO's
``RPCReplyMsg``: ``{"payloadtype", "payload" (base64 JSON), "error"}``; an error has the
HTTP status of its code and the payload ``{"status", "message"}``.
"""

from __future__ import annotations

import base64
import json
from typing import Any

__all__ = ["ACCESS_DENIED", "ZERO_TIME", "error_reply", "reply", "shape"]

ACCESS_DENIED = "Access denied"

ZERO_TIME = "0001-01-01T00:00:00Z"
"""Go's zero ``time.Time`` in JSON: what ColonyOS sends for a moment that has not come."""

_TIME_FIELDS = frozenset(
    {
        "submissiontime",
        "starttime",
        "endtime",
        "waitdeadline",
        "execdeadline",
        "commissiontime",
        "lastheardfromtime",
    }
)
_GRAPH_REPLIES = frozenset({"submitworkflowspecmsg", "getprocessgraphmsg", "getprocessgraphsmsg"})


def _fill_times(value: Any) -> Any:
    """``value`` with every ``null`` time field (at any depth) set to :data:`ZERO_TIME`."""
    if isinstance(value, dict):
        for key, item in value.items():
            if item is None and key in _TIME_FIELDS:
                value[key] = ZERO_TIME
            elif isinstance(item, dict | list):
                _fill_times(item)
    elif isinstance(value, list):
        for item in value:
            _fill_times(item)
    return value


def shape(payloadtype: str, body: bytes) -> Any:
    """The engine's JSON reply to ``payloadtype`` as the ColonyOS server would shape it."""
    value = _fill_times(json.loads(body))
    if payloadtype in _GRAPH_REPLIES:
        for graph in value if isinstance(value, list) else [value]:
            graph.setdefault("nodes", [])
            graph.setdefault("edges", [])
    return value


def _envelope(payloadtype: str, payload: Any, error: bool) -> bytes:
    encoded = base64.b64encode(json.dumps(payload).encode("utf-8")).decode("ascii")
    return json.dumps({"payloadtype": payloadtype, "payload": encoded, "error": error}).encode()


def reply(payloadtype: str, payload: Any) -> bytes:
    """A success: ``RPCReplyMsg`` with the payload's JSON in base64."""
    return _envelope(payloadtype, payload, False)


def error_reply(status: int, message: str) -> bytes:
    """A failure: ``RPCReplyMsg`` of type ``error`` carrying ``{"status", "message"}``.

    A 403's message starts with "Access denied", as ColonyOS's do (clients and their
    tests look for it)."""
    if status == 403 and not message.startswith(ACCESS_DENIED):
        message = f"{ACCESS_DENIED}: {message}"
    return _envelope("error", {"status": status, "message": message}, True)
