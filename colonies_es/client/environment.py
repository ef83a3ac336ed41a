"""colonies_client(): a client and the caller's identity from ``COLONIES_*`` variables.

The variables are the ones ``colonies dev`` writes to ``dev.env`` (CLIENT_API.md) and
pycolonies reads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from colonies_es.client.sync_client import Colonies
from colonies_es.settings import Settings

__all__ = ["colonies_client"]

REQUIRED = ("COLONIES_COLONY_NAME", "COLONIES_PRVKEY")


def colonies_client(
    environ: Mapping[str, str] | None = None,
) -> tuple[Colonies, str, str | None, str | None, str]:
    """Return ``(client, colonyname, colony_prvkey, executorname, prvkey)``.

    Read through :class:`~colonies_es.settings.Settings` from ``environ`` (default
    ``os.environ``):

    - ``COLONIES_SERVER_HOST`` (default ``localhost``), ``COLONIES_SERVER_PORT`` (default
      4222), ``COLONIES_SERVER_TLS`` (``true``/``false``, default false): where NATS is;
      ``COLONIES_NATS_URL``, when set, wins over them (``colonies dev`` sets both: there
      ``COLONIES_SERVER_*`` name the ColonyOS gateway, which pycolonies reads, so one
      ``dev.env`` serves both clients);
    - ``COLONIES_NATS_NKEY_FILE`` (the caller's NATS credential) and
      ``COLONIES_TLS_CA_FILE`` (the CA of the server's TLS certificate): optional;
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
    settings = Settings.load(env)
    return (
        Colonies.from_settings(settings),
        settings.colony_name,
        settings.colony_prvkey or None,
        settings.executor_name or None,
        settings.prvkey,
    )
