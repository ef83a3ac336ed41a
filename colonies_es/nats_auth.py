"""NATS authorization by role: nkey credentials and the nats-server accounts block.

NATS itself decides who may publish or subscribe where; signed commands protect the API
above it (DESIGN.md, "Who may touch NATS"). Every component connects with an nkey of its
own (an Ed25519 key pair: the server configuration holds only the public key, the
component a seed file readable by its owner only) and gets the permissions of its role:

- **engine**: everything. It appends events, manages the streams, publishes work and
  answers commands; it is the trusted writer of the log.
- **reader** (projectors, whole-log audit, the web UI): reads the event stream (stream
  info, direct gets, its own consumers on ``COLONIES``, core subscriptions to
  ``colonies.ev.>``), serves ``colonies.q.>`` and replies, and may do what a client does.
- **client** (people, scripts, the CLI): sends requests to ``colonies.api.>`` and
  ``colonies.q.>`` and reads the replies, which come to an inbox of its own
  (``_INBOX.<its public key>``, :func:`inbox_prefix`) so no one reads another's replies;
  listens for ``colonies.ended.>`` (what ``wait`` waits for); may answer a request it
  received (``allow_responses``: the engine asks an executor whose claim it held whether
  it still waits, in its inbox).
- **executor** of given (colony, executortype) pairs: a client that may also pull from
  and ack on the work consumer of each of its pairs, and nothing else of JetStream.

Everything else is denied, and a connection without a credential is refused (the
accounts block has no ``no_auth_user``). :func:`render_accounts` writes the block that
nats-server reads; ``colonies dev`` appends it to its configuration, and ``nats.conf``
shows the same block for production.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nkeys  # type: ignore[import-untyped]

from colonies_es.protocol import (
    API_PREFIX,
    ENDED_PREFIX,
    FORWARDED_LIST_SUBJECT,
    WORK_STREAM,
    work_consumer,
)

__all__ = [
    "ACCOUNT",
    "Credential",
    "Permissions",
    "client_permissions",
    "engine_permissions",
    "executor_permissions",
    "inbox_prefix",
    "new_seed",
    "public_key",
    "reader_permissions",
    "render_accounts",
    "write_seed",
]

ACCOUNT = "COLONIES"
"""The NATS account every component of one deployment belongs to."""
EVENT_STREAMS = ("COLONIES", "COLONIES_SNAPSHOTS")
"""The streams of the log (events, snapshots)."""
QUERY_PREFIX = "colonies.q"


def new_seed() -> str:
    """A fresh user nkey seed (``SU...``): the credential a component keeps secret."""
    return bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)).decode()


def public_key(seed: str) -> str:
    """The public nkey (``U...``) of ``seed``: what the server configuration holds."""
    return bytes(nkeys.from_seed(seed.strip().encode()).public_key).decode()


def inbox_prefix(public: str) -> str:
    """The inbox prefix of the connection authenticated as ``public``: its replies
    arrive under ``<prefix>.>``, where only it may subscribe."""
    return f"_INBOX.{public}"


def write_seed(path: Path, seed: str) -> Path:
    """Write ``seed`` to ``path`` readable by its owner only (mode 0600); return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(seed + "\n")
    temporary.replace(path)
    return path


@dataclass(frozen=True)
class Permissions:
    """Subjects a user may publish to and subscribe to (NATS wildcards)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    responses: bool = False
    """May answer the requests it receives (once each), wherever their reply goes."""
    deny_publish: tuple[str, ...] = ()
    """Subjects within ``publish``'s wildcards this user may not publish to."""


def engine_permissions() -> Permissions:
    """The engine: the trusted writer of the log, allowed everything in its account."""
    return Permissions(publish=(">",), subscribe=(">",))


def reader_permissions(public: str) -> Permissions:
    """A projector, an auditor or a web UI: reads the log's streams (info, direct gets,
    consumers of its own) and follows its subjects, answers queries, and may do what a
    client does. It can neither append events nor change the streams."""
    client = client_permissions(public)
    publish = [*client.publish, "_INBOX.>", "$SRV.>"]  # replies to queries, discovery
    for stream in EVENT_STREAMS:
        publish += [
            f"$JS.API.STREAM.INFO.{stream}",
            f"$JS.API.DIRECT.GET.{stream}",
            f"$JS.API.DIRECT.GET.{stream}.>",
            f"$JS.API.CONSUMER.CREATE.{stream}",
            f"$JS.API.CONSUMER.CREATE.{stream}.>",
            f"$JS.API.CONSUMER.DELETE.{stream}.>",
            f"$JS.API.CONSUMER.INFO.{stream}.>",
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.>",
        ]
    subscribe = [*client.subscribe, f"{QUERY_PREFIX}.>", "$SRV.>", "colonies.ev.>"]
    return Permissions(tuple(publish), tuple(subscribe), client.responses, client.deny_publish)


def client_permissions(public: str) -> Permissions:
    """A client: requests to the engine and the projectors, replies in its own inbox.
    Not the listing the engine forwards to the projectors (``forwarded_list`` names its
    caller instead of being signed by it: only the engine may send it)."""
    return Permissions(
        publish=(f"{API_PREFIX}.>", f"{QUERY_PREFIX}.>"),
        subscribe=(f"{inbox_prefix(public)}.>", f"{ENDED_PREFIX}.>"),
        responses=True,
        deny_publish=(FORWARDED_LIST_SUBJECT,),
    )


def executor_permissions(public: str, work: Iterable[tuple[str, str]]) -> Permissions:
    """A client that may also pull and ack the work of each (colony, executortype) of
    ``work``: the consumer's info, creation (with the engine's configuration), next
    message and acks; nothing else of JetStream."""
    client = client_permissions(public)
    publish = list(client.publish)
    for colonyname, executortype in work:
        durable = work_consumer(colonyname, executortype)
        publish += [
            f"$JS.API.CONSUMER.INFO.{WORK_STREAM}.{durable}",
            f"$JS.API.CONSUMER.CREATE.{WORK_STREAM}.{durable}",
            f"$JS.API.CONSUMER.CREATE.{WORK_STREAM}.{durable}.>",
            f"$JS.API.CONSUMER.DURABLE.CREATE.{WORK_STREAM}.{durable}",
            f"$JS.API.CONSUMER.MSG.NEXT.{WORK_STREAM}.{durable}",
            f"$JS.ACK.{WORK_STREAM}.{durable}.>",
        ]
    return Permissions(tuple(publish), client.subscribe, client.responses, client.deny_publish)


@dataclass(frozen=True)
class Credential:
    """One user of the account: a name (for people), its public nkey, its permissions."""

    name: str
    public: str
    permissions: Permissions


def _quoted(subjects: Sequence[str]) -> str:
    return ", ".join(f'"{subject}"' for subject in subjects)


def render_accounts(credentials: Iterable[Credential], account: str = ACCOUNT) -> str:
    """The nats-server configuration block declaring ``account`` (JetStream enabled)
    with one nkey user per credential and its permissions. It holds no secret."""
    lines = [
        "# NATS authorization (colonies_es/nats_auth.py): one nkey user per component,",
        "# with the permissions of its role. No secret here: public keys only.",
        "accounts {",
        f"  {account} {{",
        "    jetstream: enabled",
        "    users: [",
    ]
    for credential in credentials:
        permissions = credential.permissions
        lines += [
            f"      # {credential.name}",
            f'      {{ nkey: "{credential.public}", permissions: {{',
            f"          publish: {{ allow: [{_quoted(permissions.publish)}]"
            + (f", deny: [{_quoted(permissions.deny_publish)}]" if permissions.deny_publish else "")
            + " }",
            f"          subscribe: {{ allow: [{_quoted(permissions.subscribe)}] }}",
            *(["          allow_responses: true"] if permissions.responses else []),
            "      } }",
        ]
    lines += ["    ]", "  }", "}", ""]
    return "\n".join(lines)
