"""Settings: every ``COLONIES_*`` setting of every component, read in one place.

The engine, the projector, executors, the client and the CLI take their configuration
from one :class:`Settings` object, built by :meth:`Settings.load`:

    defaults  <  environment variables (``COLONIES_*``)  <  command-line flags

An empty variable counts as unset (``dev.env`` writes some as ``""``). A value that cannot
be read is a :class:`SettingsError` naming the variable.

Nothing else reads ``COLONIES_*`` variables. In particular the eventsourcing application
gets a complete environment from :meth:`Settings.store_env` and never looks at
``os.environ`` (:meth:`colonies_es.engine.app.ColoniesApp.construct_env`): eventsourcing
would otherwise prefer ``COLONIES_NATS_URL`` from the shell (the application is named
``colonies``) to the server given by ``--nats``.

How to reach NATS is a :class:`NatsAccess` (:attr:`Settings.nats`): the server URLs, this
component's NATS credential (an nkey seed file, ``COLONIES_NATS_NKEY_FILE``) and the CA
that signed the server's TLS certificate (``COLONIES_TLS_CA_FILE``). Anything that opens
its own NATS connection (gateways, UIs) should use :meth:`NatsAccess.connect` so it works
with authorization and TLS on::

    nc = await Settings.load().nats.connect("my-gateway")
"""

from __future__ import annotations

import dataclasses
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["NatsAccess", "Settings", "SettingsError", "tls_context"]

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


class SettingsError(ValueError):
    """A setting's value cannot be used; the message names the variable or flag."""


def tls_context(ca_file: str = "") -> ssl.SSLContext:
    """A client TLS context that verifies the server's certificate (and host name)
    against ``ca_file`` (PEM), or against the system's CAs when it is empty."""
    try:
        return ssl.create_default_context(cafile=ca_file or None)
    except (OSError, ssl.SSLError) as error:
        raise SettingsError(f"cannot read the TLS CA file {ca_file}: {error}") from None


@dataclass(frozen=True)
class NatsAccess:
    """How one component reaches NATS: servers, its credential, the CA to trust.

    ``nkey_file`` names a file holding the component's nkey seed (``SU...``, mode 0600):
    NATS authorization (``colonies dev`` makes one per role). ``tls_ca_file`` is the CA
    certificate (PEM) the server's certificate must chain to; with it, or with a
    ``tls://`` URL, the connection is TLS and the server is verified.
    """

    servers: tuple[str, ...]
    nkey_file: str = ""
    tls_ca_file: str = ""

    @property
    def url(self) -> str:
        """The server URLs, comma separated (for messages; holds no secret)."""
        return ",".join(self.servers)

    @property
    def tls(self) -> bool:
        """True when connections must use TLS."""
        return bool(self.tls_ca_file) or any(url.startswith("tls://") for url in self.servers)

    def connect_options(self) -> dict[str, Any]:
        """The keyword arguments of ``nats.connect`` for servers, credential and TLS."""
        options: dict[str, Any] = {"servers": list(self.servers)}
        if self.nkey_file:
            if not os.path.isfile(self.nkey_file):
                raise SettingsError(
                    f"the NATS credential file {self.nkey_file} (COLONIES_NATS_NKEY_FILE) "
                    "does not exist"
                )
            options["nkeys_seed"] = self.nkey_file
            # Replies come to an inbox only this credential may read (nats_auth.py).
            options["inbox_prefix"] = _inbox_of(self.nkey_file)
        if self.tls:
            options["tls"] = tls_context(self.tls_ca_file)
        return options

    async def connect(self, name: str, **options: Any) -> Any:
        """A nats-py connection named ``name`` (extra ``options`` go to ``nats.connect``)."""
        import nats

        return await nats.connect(**self.connect_options(), name=name, **options)

    def store_env(self) -> dict[str, str]:
        """The store's environment entries for this access (see :meth:`Settings.store_env`)."""
        env = {"NATS_URL": self.url}
        if self.nkey_file:
            env["NATS_NKEY_FILE"] = self.nkey_file
        if self.tls_ca_file:
            env["NATS_TLS_CA_FILE"] = self.tls_ca_file
        return env

    @classmethod
    def from_store_env(cls, env: Mapping[str, str | None]) -> NatsAccess:
        """The inverse of :meth:`store_env` (the store rebuilds its access from it)."""
        urls = env.get("NATS_URL") or "nats://127.0.0.1:4222"
        return cls(
            servers=tuple(url.strip() for url in urls.split(",") if url.strip()),
            nkey_file=env.get("NATS_NKEY_FILE") or "",
            tls_ca_file=env.get("NATS_TLS_CA_FILE") or "",
        )


def _inbox_of(nkey_file: str) -> str:
    """The inbox prefix of the credential in ``nkey_file``."""
    from colonies_es.nats_auth import inbox_prefix, public_key

    try:
        with open(nkey_file) as file:
            return inbox_prefix(public_key(file.read()))
    except Exception as error:  # unreadable file, or not a seed (nkeys errors)
        raise SettingsError(
            f"the NATS credential file {nkey_file} (COLONIES_NATS_NKEY_FILE) does not hold an "
            f"nkey seed: {error!r}"
        ) from None


def _setting(default: Any, env: str) -> Any:
    """A field of :class:`Settings` read from the variable ``env``."""
    return field(default=default, metadata={"env": env})


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Every setting of every component. Build it with :meth:`load`."""

    # -- where NATS is, and how to get in --
    nats_url: str = _setting("", "COLONIES_NATS_URL")
    """NATS server URLs, comma separated. Empty: ``nats://server_host:server_port``
    (``tls://`` with ``server_tls``)."""
    server_host: str = _setting("localhost", "COLONIES_SERVER_HOST")
    server_port: int = _setting(4222, "COLONIES_SERVER_PORT")
    server_tls: bool = _setting(False, "COLONIES_SERVER_TLS")
    """Connect with TLS and verify the server's certificate."""
    tls_ca_file: str = _setting("", "COLONIES_TLS_CA_FILE")
    """The CA certificate (PEM) the NATS server's certificate must chain to."""
    nats_nkey_file: str = _setting("", "COLONIES_NATS_NKEY_FILE")
    """This component's NATS credential: a file holding its nkey seed."""

    # -- who the caller is (clients, executors, CLI) --
    colony_name: str = _setting("", "COLONIES_COLONY_NAME")
    prvkey: str = _setting("", "COLONIES_PRVKEY")
    """The caller's private key: a member of the colony."""
    colony_prvkey: str = _setting("", "COLONIES_COLONY_PRVKEY")
    """The colony owner's private key."""
    executor_name: str = _setting("", "COLONIES_EXECUTOR_NAME")

    # -- the server side (engine, projector) --
    server_id: str = _setting("", "COLONIES_SERVER_ID")
    """The server owner's id: the only identity that may add colonies."""
    server_prvkey: str = _setting("", "COLONIES_SERVER_PRVKEY")
    engine_prvkey: str = _setting("", "COLONIES_ENGINE_PRVKEY")
    """What the engine signs its own events with (a fresh one when empty)."""
    event_seal_key: str = _setting("", "COLONIES_EVENT_SEAL_KEY")
    """Hex key (>= 16 bytes) sealing every event of the log."""
    cipher_key: str = _setting("", "COLONIES_CIPHER_KEY")
    """Encryption at rest: the AES key (base64, as eventsourcing's AESCipher takes it)."""
    stream_replicas: int = _setting(1, "COLONIES_STREAM_REPLICAS")
    """Replicas of the JetStream streams (3 in a cluster)."""
    command_window: int = _setting(60, "COLONIES_COMMAND_WINDOW")
    """Seconds a signed command's time stamp may differ from the engine's clock. The
    engine remembers the commands of twice this window (to refuse replays and answer
    retries): that memory grows with the command rate times the window."""
    checkpoint_events: int = _setting(100_000, "COLONIES_CHECKPOINT_EVENTS")
    """The engine stores a checkpoint of its state (what start-up reads instead of the
    whole log) once the log has moved this many events past the newest one; 0: never."""
    checkpoint_seconds: int = _setting(600, "COLONIES_CHECKPOINT_SECONDS")
    """... or once this many seconds have passed since the newest one, if the log moved."""
    data_dir: str = _setting(".colonies", "COLONIES_DATA_DIR")
    projector_db: str = _setting("colonies-view.sqlite", "COLONIES_PROJECTOR_DB")

    # -- quotas, per colony (0: no limit; colonies_es/engine/quotas.py) --
    max_pending_processes: int = _setting(100_000, "COLONIES_MAX_PENDING_PROCESSES")
    """Processes WAITING or RUNNING at once in one colony."""
    max_command_bytes: int = _setting(1024 * 1024, "COLONIES_MAX_COMMAND_BYTES")
    """Bytes of one signed command (the default is NATS' own max_payload)."""

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **flags: Any) -> Settings:
        """Defaults, overridden by the ``COLONIES_*`` variables of ``environ`` (default
        ``os.environ``), overridden by ``flags`` (field name -> value; None means the
        flag was not given). Raises :class:`SettingsError` for a value that cannot be
        read, naming its variable."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for setting in dataclasses.fields(cls):
            text = env.get(setting.metadata["env"], "")
            if text.strip():
                values[setting.name] = _parse(setting, text.strip())
        unknown = set(flags) - {setting.name for setting in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
        values.update({name: value for name, value in flags.items() if value is not None})
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` (field name -> value)."""
        return dataclasses.replace(self, **changes)

    @property
    def nats_servers(self) -> tuple[str, ...]:
        """The NATS URLs to connect to."""
        if self.nats_url.strip():
            return tuple(url.strip() for url in self.nats_url.split(",") if url.strip())
        scheme = "tls" if self.server_tls else "nats"
        return (f"{scheme}://{self.server_host}:{self.server_port}",)

    @property
    def nats(self) -> NatsAccess:
        """How this component reaches NATS (servers, credential, TLS)."""
        return NatsAccess(self.nats_servers, self.nats_nkey_file, self.tls_ca_file)

    def store_env(self, stream: str = "COLONIES", prefix: str = "colonies") -> dict[str, str]:
        """The complete eventsourcing environment of an application reading or writing
        the log (the engine, a projector): persistence module, NATS access, stream,
        replicas, seal key and cipher. It is all the application sees: nothing comes
        from ``os.environ``."""
        env = {
            "PERSISTENCE_MODULE": "colonies_es.store",
            **self.nats.store_env(),
            "JETSTREAM_STREAM": stream,
            "JETSTREAM_SUBJECT_PREFIX": prefix,
            "JETSTREAM_REPLICAS": str(self.stream_replicas),
        }
        if self.event_seal_key:
            env["EVENT_SEAL_KEY"] = self.event_seal_key
        if self.cipher_key:
            env["CIPHER_TOPIC"] = "eventsourcing.cipher:AESCipher"
            env["CIPHER_KEY"] = self.cipher_key
        return env


def _parse(setting: dataclasses.Field[Any], text: str) -> Any:
    """The value of ``setting`` from its variable's text."""
    name = setting.metadata["env"]
    if setting.type in (int, "int"):
        try:
            value = int(text)
        except ValueError:
            raise SettingsError(f"{name} must be a whole number, not {text!r}") from None
        if value < 0:
            raise SettingsError(f"{name} must not be negative, not {text!r}")
        if name == "COLONIES_COMMAND_WINDOW" and value < 1:
            raise SettingsError(f"{name} must be at least 1 (second), not {text!r}")
        if name == "COLONIES_SERVER_PORT" and not 0 < value < 65536:
            raise SettingsError(f"{name} must be a port number (1-65535), not {text!r}")
        return value
    if setting.type in (bool, "bool"):
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise SettingsError(f"{name} must be true or false, not {text!r}")
    return text
