"""colonies_client(): a client and the caller's identity from ``COLONIES_*`` variables.

The variables are the ones ``colonies dev`` writes to ``dev.env`` (CLIENT_API.md) and
pycolonies reads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from colonies_es.client.sync_client import Colonies

__all__ = ["colonies_client"]

REQUIRED = ("COLONIES_COLONY_NAME", "COLONIES_PRVKEY")
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off", ""})


def colonies_client(
    environ: Mapping[str, str] | None = None,
) -> tuple[Colonies, str, str | None, str | None, str]:
    """Return ``(client, colonyname, colony_prvkey, executorname, prvkey)``.

    Read from ``environ`` (default ``os.environ``):

    - ``COLONIES_SERVER_HOST`` (default ``localhost``), ``COLONIES_SERVER_PORT`` (default
      4222), ``COLONIES_SERVER_TLS`` (``true``/``false``, default false): where NATS is;
    - ``COLONIES_COLONY_NAME`` and ``COLONIES_PRVKEY`` (the caller's key): required;
    - ``COLONIES_COLONY_PRVKEY`` (the colony owner's key) and ``COLONIES_EXECUTOR_NAME``:
      None when unset.

    The client is not connected yet. Raises ``ValueError`` naming every required variable
    that is missing or empty, or the variable whose value cannot be read.
    """
    env = os.environ if environ is None else environ
    missing = [name for name in REQUIRED if not env.get(name)]
    if missing:
        raise ValueError(
            f"missing environment variable{'s' if len(missing) > 1 else ''}: "
            f"{', '.join(missing)} (e.g. source the dev.env written by `colonies dev`)"
        )
    client = Colonies(
        env.get("COLONIES_SERVER_HOST") or "localhost",
        _port(env.get("COLONIES_SERVER_PORT") or "4222"),
        _flag(env.get("COLONIES_SERVER_TLS", "")),
    )
    return (
        client,
        env["COLONIES_COLONY_NAME"],
        env.get("COLONIES_COLONY_PRVKEY") or None,
        env.get("COLONIES_EXECUTOR_NAME") or None,
        env["COLONIES_PRVKEY"],
    )


def _port(text: str) -> int:
    if text.isdigit() and 0 < int(text) < 65536:
        return int(text)
    raise ValueError(f"COLONIES_SERVER_PORT must be a port number (1-65535), not {text!r}")


def _flag(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"COLONIES_SERVER_TLS must be true or false, not {text!r}")
