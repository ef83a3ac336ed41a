"""NATS authorization for `colonies dev` (on unless ``--no-auth``).

Each component of the stack gets a credential of its own, an nkey seed kept in
``<data-dir>/creds/<name>.nk`` (mode 0600; made on the first run, kept afterwards):

- ``engine.nk``: the engine (everything);
- ``reader.nk``: the projector, and whoever audits the whole log
  (``COLONIES_NATS_NKEY_FILE=<data-dir>/creds/reader.nk colonies audit verify``);
- ``executor.nk``: the stack's python executors (their type's work consumer only);
- ``developer.nk``: what ``dev.env`` points at, for the person at the shell: a client
  that may also run executors of the types the examples use (:data:`DEV_EXECUTOR_TYPES`).

The server's configuration is the chosen ``nats.conf`` followed by the accounts block
with the public keys and permissions (:mod:`colonies_es.nats_auth`), written to
``<data-dir>/nats-auth.conf`` on every start: it holds no secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from colonies_es.cli.dev_stack import DevError
from colonies_es.nats_auth import (
    Credential,
    engine_permissions,
    executor_permissions,
    new_seed,
    public_key,
    reader_permissions,
    render_accounts,
    write_seed,
)

CREDS_DIR_NAME = "creds"
CONFIG_FILE_NAME = "nats-auth.conf"
DEV_EXECUTOR_TYPES = ("python-executor", "container-executor", "hpc-executor", "cloud-executor")
"""The executor types a developer may run executors of (the examples' types)."""
NKEY_VARIABLE = "COLONIES_NATS_NKEY_FILE"


@dataclass(frozen=True)
class DevAuth:
    """The credentials of a dev stack and the server configuration naming them."""

    config: Path
    engine: Path
    reader: Path
    executor: Path
    developer: Path

    def environment(self, environment: dict[str, str], credential: Path) -> dict[str, str]:
        """``environment`` with the NATS credential ``credential``."""
        return {**environment, NKEY_VARIABLE: str(credential)}


def _public_key(path: Path) -> str:
    """The public key of the seed saved at ``path`` (a new seed is saved there if there
    is none). Raises DevError when the file holds no seed."""
    try:
        seed = path.read_text().strip()
    except FileNotFoundError:
        seed = new_seed()
        write_seed(path, seed)
    try:
        return public_key(seed)
    except Exception:  # nkeys' errors are plain Exceptions
        raise DevError(f"{path} does not hold an nkey seed; delete it to make a new one") from None


def prepare_auth(data_dir: Path, base_config: Path, colonyname: str, executor_type: str) -> DevAuth:
    """Make (or find) the credentials in ``data_dir`` and write the server configuration:
    ``base_config`` followed by the accounts block. Raises :class:`DevError` for a seed
    file that holds no seed."""
    creds = data_dir / CREDS_DIR_NAME
    names = ("engine", "reader", "executor", "developer")
    paths = {name: creds / f"{name}.nk" for name in names}
    public = {name: _public_key(path) for name, path in paths.items()}
    credentials = [
        Credential("engine", public["engine"], engine_permissions()),
        Credential("projector, auditors", public["reader"], reader_permissions(public["reader"])),
        Credential(
            f"executors ({executor_type})",
            public["executor"],
            executor_permissions(public["executor"], [(colonyname, executor_type)]),
        ),
        Credential(
            "developer (dev.env)",
            public["developer"],
            executor_permissions(
                public["developer"], [(colonyname, kind) for kind in DEV_EXECUTOR_TYPES]
            ),
        ),
    ]
    # Only public keys and permissions below: anyone may read this file.
    config = data_dir / CONFIG_FILE_NAME
    base = base_config.read_text()
    header = f"# Written by `colonies dev`: {base_config}, then the accounts block.\n"
    config.write_text(f"{header}{base}\n\n{render_accounts(credentials)}")
    return DevAuth(config, paths["engine"], paths["reader"], paths["executor"], paths["developer"])


__all__ = ["DEV_EXECUTOR_TYPES", "DevAuth", "prepare_auth"]
