"""A stack with NATS authorization on: every component connects with its role's nkey.

:func:`start_secure_stack` writes one seed file per credential (mode 0600) and a
nats-server configuration with their public keys and permissions
(:mod:`colonies_es.nats_auth`), starts the server with it and an engine process with the
engine's credential. The colony :data:`COLONY` and its executor types ``alpha`` and
``beta`` are known in advance, because an executor credential names the work consumers
it may pull from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from colonies_es import crypto
from colonies_es.client import Colonies
from colonies_es.embedded import NatsServer
from colonies_es.nats_auth import (
    Credential,
    client_permissions,
    engine_permissions,
    executor_permissions,
    new_seed,
    public_key,
    reader_permissions,
    render_accounts,
    write_seed,
)
from colonies_es.settings import NatsAccess
from tests.stack import EngineProcess

COLONY = "secure"
ALPHA, BETA = "alpha", "beta"


@dataclass
class SecureStack:
    """nats-server with authorization, an engine, the credentials' seed files."""

    nats: NatsServer
    engine: EngineProcess
    seeds: dict[str, Path]
    """Credential name -> its seed file: engine, reader, client, executor-alpha,
    executor-beta."""
    server_prvkey: str
    colony_prvkey: str
    clients: list[Colonies] = field(default_factory=list)

    def access(self, name: str) -> NatsAccess:
        """How the credential ``name`` reaches NATS."""
        return NatsAccess((self.nats.url,), str(self.seeds[name]))

    def client(self, name: str = "client") -> Colonies:
        """A client connecting with the credential ``name`` (closed at teardown)."""
        client = Colonies(servers=[self.nats.url], nkey_file=str(self.seeds[name]))
        self.clients.append(client)
        return client

    def stop(self) -> None:
        for client in self.clients:
            client.disconnect()
        self.engine.stop()
        self.nats.stop()


def start_secure_stack(directory: Path, extra_env: dict[str, str] | None = None) -> SecureStack:
    """Credentials, configuration, nats-server and engine in ``directory``; then the
    colony :data:`COLONY`, made by the server owner through the client credential."""
    seeds = {
        name: write_seed(directory / "creds" / f"{name}.nk", new_seed())
        for name in ("engine", "reader", "client", "executor-alpha", "executor-beta")
    }
    public = {name: public_key(path.read_text()) for name, path in seeds.items()}
    credentials = [
        Credential("engine", public["engine"], engine_permissions()),
        Credential("reader", public["reader"], reader_permissions(public["reader"])),
        Credential("client", public["client"], client_permissions(public["client"])),
        *(
            Credential(
                f"executor-{kind}",
                public[f"executor-{kind}"],
                executor_permissions(public[f"executor-{kind}"], [(COLONY, kind)]),
            )
            for kind in (ALPHA, BETA)
        ),
    ]
    config = directory / "nats-auth.conf"
    config.write_text(render_accounts(credentials))
    server = NatsServer(directory / "nats", config=config).start()
    server_prvkey = crypto.new_private_key()
    engine = EngineProcess(
        server.url,
        crypto.id_from_private_key(server_prvkey),
        directory,
        extra_env={"COLONIES_NATS_NKEY_FILE": str(seeds["engine"]), **(extra_env or {})},
    )
    try:
        engine.start()
    except BaseException:
        server.stop()
        raise
    stack = SecureStack(server, engine, seeds, server_prvkey, crypto.new_private_key())
    stack.client().add_colony(
        {"colonyid": crypto.id_from_private_key(stack.colony_prvkey), "name": COLONY},
        server_prvkey,
    )
    return stack
