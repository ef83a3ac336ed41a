"""`colonies user add`, `colonies log get` and `colonies stats`: a colony's members,
a process's log and the colony's counts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import msgspec
import typer
from rich.text import Text

from colonies_es.cli.common import (
    COLONY_OWNER,
    MEMBER,
    ColonyOption,
    ColonyOwnerKeyOption,
    CountOption,
    HostOption,
    JsonOption,
    PortOption,
    PrvkeyOption,
    Server,
    TlsOption,
    connected,
    details,
    fail,
    print_json,
    render,
    require_colony,
    require_key,
    resolve_process_id,
    when,
)
from colonies_es.crypto import id_from_private_key, new_private_key

__all__ = ["AddedUser", "log_app", "stats", "user_app"]

user_app = typer.Typer(
    help="Users: identities that may submit, read and list in a colony.", no_args_is_help=True
)
log_app = typer.Typer(
    help="Process logs: what functions wrote while they ran.", no_args_is_help=True
)


class AddedUser(msgspec.Struct, kw_only=True):
    """What ``user add --json`` prints: the user, and its key when the command generated
    it (None when an id was given)."""

    colonyname: str
    username: str
    userid: str
    prvkey: str | None


@user_app.command("add")
def add_user(
    name: Annotated[str, typer.Option("--name", help="The user's name in the colony.")],
    userid: Annotated[
        str | None,
        typer.Option(
            "--userid",
            help="The user's id (from `colonies key generate`); by default a fresh key is "
            "generated and printed (keep it: there is no other copy).",
            show_default=False,
        ),
    ] = None,
    json_output: JsonOption = False,
    host: HostOption = "localhost",
    port: PortOption = 4222,
    tls: TlsOption = False,
    colony: ColonyOption = None,
    colony_prvkey: ColonyOwnerKeyOption = None,
) -> None:
    """Make an identity a member of the colony: it may submit, read and list. Needs the
    colony owner's key."""
    colonyname = require_colony(colony)
    key = require_key(colony_prvkey, COLONY_OWNER)
    generated = new_private_key() if userid is None else None
    identity = id_from_private_key(generated) if generated is not None else userid or ""
    if len(identity) != 64 or any(c not in "0123456789abcdef" for c in identity):
        fail("--userid must be an id: 64 hex characters (colonies key generate)", status=2)
    with connected(Server(host, port, tls), COLONY_OWNER) as client:
        client.add_user(colonyname, identity, name, key)
    added = AddedUser(colonyname=colonyname, username=name, userid=identity, prvkey=generated)
    if json_output:
        print_json(added)
        return
    rows: list[tuple[str, str]] = [("Colony", colonyname), ("Name", name), ("User ID", identity)]
    if generated:
        rows.append(("Private key", generated))
    render(Text(f"User {name} added to colony {colonyname}"), details(rows))
    if generated:
        render(Text("Keep the private key: it is the only copy (COLONIES_PRVKEY)."))


@log_app.command("get")
def get_log(
    process_id: Annotated[
        str, typer.Argument(metavar="ID", help="The process id, or a unique prefix of it.")
    ],
    count: CountOption = 100,
    json_output: JsonOption = False,
    host: HostOption = "localhost",
    port: PortOption = 4222,
    tls: TlsOption = False,
    colony: ColonyOption = None,
    prvkey: PrvkeyOption = None,
) -> None:
    """Show what a process's function wrote (printed, or sent with add_log), oldest
    first, with times in UTC."""
    key = require_key(prvkey, MEMBER)
    with connected(Server(host, port, tls)) as client:
        processid = resolve_process_id(client, process_id, colony, key)
        process = client.get_process(processid, key)
        colonyname = process.spec.conditions.colonyname
        logs = client.get_process_log(colonyname, processid, count, 0, key)
    if json_output:
        print_json(logs)
        return
    if not logs:
        render(Text(f"No log messages for process {processid}"))
        return
    for entry in logs:
        stamp = when(datetime.fromtimestamp(entry.timestamp / 1e9, UTC))
        render(Text(f"{stamp}  {entry.executorname or '-'}  {entry.message.rstrip()}"))


def stats(
    json_output: JsonOption = False,
    host: HostOption = "localhost",
    port: PortOption = 4222,
    tls: TlsOption = False,
    colony: ColonyOption = None,
    prvkey: PrvkeyOption = None,
) -> None:
    """Show the colony's counts: executors, and processes and workflows per state."""
    colonyname = require_colony(colony)
    key = require_key(prvkey, MEMBER)
    with connected(Server(host, port, tls)) as client:
        counts = client.stats(colonyname, key)
    if json_output:
        print_json(counts)
        return
    render(
        Text(f"Colony {colonyname}"),
        details(
            [
                ("Executors", str(counts.executors)),
                (
                    "Processes",
                    _states(
                        counts.waitingprocesses,
                        counts.runningprocesses,
                        counts.successfulprocesses,
                        counts.failedprocesses,
                    ),
                ),
                (
                    "Workflows",
                    _states(
                        counts.waitingworkflows,
                        counts.runningworkflows,
                        counts.successfulworkflows,
                        counts.failedworkflows,
                    ),
                ),
            ]
        ),
    )


def _states(waiting: int, running: int, successful: int, failed: int) -> str:
    return f"{waiting} waiting, {running} running, {successful} successful, {failed} failed"
