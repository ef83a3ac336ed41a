"""The development colony of `colonies dev`: its keys, its users and ``dev.env``.

The keys are made on the first run and saved in ``<data-dir>/keys.json`` (mode 0600);
later runs on the same data directory load them, so the engine, which rebuilds its state
from the log, finds the colony, its owner and its user again. ``dev.env`` holds the
``COLONIES_*`` variables clients and executors read (:func:`colonies_es.colonies_client`).
"""

from __future__ import annotations

import os
import secrets
import shlex
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from colonies_es import crypto
from colonies_es.cli.dev_stack import DevError
from colonies_es.client import Colonies, ColoniesError
from colonies_es.protocol import NAME_PATTERN

KEYS_FILE_NAME = "keys.json"
ENV_FILE_NAME = "dev.env"
COLONY_NAME = "dev"
USER_NAME = "developer"


PrivateKey = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
SealKey = Annotated[str, msgspec.Meta(pattern="^([0-9a-f]{2}){16,}$")]
Name = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN.pattern)]


class DevKeys(msgspec.Struct, frozen=True, kw_only=True):
    """The identities of a development stack."""

    server_prvkey: PrivateKey
    """The server owner: the only identity that may add colonies."""
    engine_prvkey: PrivateKey
    """What the engine signs its own events with."""
    colonyname: Name
    colony_prvkey: PrivateKey
    """The colony owner: approves executors, adds users."""
    username: Name
    user_prvkey: PrivateKey
    """A member of the colony: submits, reads, lists (COLONIES_PRVKEY)."""
    event_seal_key: SealKey | Literal[""] = ""
    """Seals every event of the log (the engine, projectors). Empty in a data directory
    whose log was written unsealed: sealing now would hide its events from readers."""

    @classmethod
    def new(cls) -> DevKeys:
        """Fresh keys for the colony ``dev`` and its user ``developer``."""
        return cls(
            server_prvkey=crypto.new_private_key(),
            engine_prvkey=crypto.new_private_key(),
            colonyname=COLONY_NAME,
            colony_prvkey=crypto.new_private_key(),
            username=USER_NAME,
            user_prvkey=crypto.new_private_key(),
            event_seal_key=secrets.token_hex(32),
        )

    @property
    def server_id(self) -> str:
        return crypto.id_from_private_key(self.server_prvkey)


def load_or_create_keys(data_dir: Path) -> DevKeys:
    """The keys saved in ``data_dir``, or new ones, saved there now."""
    path = data_dir / KEYS_FILE_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        keys = DevKeys.new()
        _write_private(path, msgspec.json.format(msgspec.json.encode(keys)) + b"\n")
        return keys
    try:
        return msgspec.json.decode(data, type=DevKeys)
    except msgspec.ValidationError as error:  # DecodeError included
        raise DevError(
            f"{path} is not a keys file of colonies dev ({error}); "
            "restore it, or use a new --data-dir"
        ) from None


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by its owner only (mode 0600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
    temporary.replace(path)


def dev_environment(keys: DevKeys, host: str, port: int, nats_url: str) -> dict[str, str]:
    """The ``COLONIES_*`` variables of the stack: every one :func:`colonies_client` reads,
    the server owner's key (`colonies colony add`), and what readers and writers of the
    log take (`colonies server`, projectors): the NATS URL, the server owner id and the
    event seal key."""
    return {
        "COLONIES_SERVER_HOST": host,
        "COLONIES_SERVER_PORT": str(port),
        "COLONIES_SERVER_TLS": "false",
        "COLONIES_COLONY_NAME": keys.colonyname,
        "COLONIES_COLONY_PRVKEY": keys.colony_prvkey,
        "COLONIES_EXECUTOR_NAME": "",
        "COLONIES_PRVKEY": keys.user_prvkey,
        "COLONIES_NATS_URL": nats_url,
        "COLONIES_SERVER_ID": keys.server_id,
        "COLONIES_SERVER_PRVKEY": keys.server_prvkey,
        "COLONIES_EVENT_SEAL_KEY": keys.event_seal_key,
    }


def executor_environment(environment: dict[str, str]) -> dict[str, str]:
    """``environment`` without what only the server side needs: executors run any code
    they are given, and have no use for the server owner's key or the log's seal key."""
    return dict(environment, COLONIES_SERVER_PRVKEY="", COLONIES_EVENT_SEAL_KEY="")


def export_lines(environment: dict[str, str]) -> list[str]:
    """``export NAME=value`` lines a POSIX shell can source."""
    return [f"export {name}={shlex.quote(value)}" for name, value in environment.items()]


def write_env_file(data_dir: Path, environment: dict[str, str]) -> Path:
    """Write ``<data_dir>/dev.env`` (mode 0600: it holds private keys); return its path."""
    path = data_dir / ENV_FILE_NAME
    header = "# Written by `colonies dev`; load it with: source " + shlex.quote(str(path))
    _write_private(path, "\n".join([header, *export_lines(environment), ""]).encode())
    return path


def ensure_colony(client: Colonies, keys: DevKeys) -> bool:
    """Make the colony and its user exist; True if the colony was created now.

    Idempotent: a later run (or a run after a crash between the two steps) finds what is
    already there. Raises :class:`DevError` when the colony belongs to other keys (the
    log and ``keys.json`` do not match).
    """
    user_id = crypto.id_from_private_key(keys.user_prvkey)
    created = False
    try:
        client.get_colony(keys.colonyname, keys.user_prvkey)
        return False  # the user is a member: all done on an earlier run
    except ColoniesError as error:
        if error.status == 404:
            colony = {"colonyid": crypto.id_from_private_key(keys.colony_prvkey)}
            client.add_colony({**colony, "name": keys.colonyname}, keys.server_prvkey)
            created = True
        elif error.status != 403:  # 403: the colony exists, the user is not in it yet
            raise
    try:
        client.add_user(keys.colonyname, user_id, keys.username, keys.colony_prvkey)
    except ColoniesError as error:
        if error.status not in (403, 409):
            raise
        raise DevError(
            f"colony {keys.colonyname!r} in this data directory belongs to other keys than "
            f"{KEYS_FILE_NAME} ({error}); use a new --data-dir"
        ) from None
    return created
