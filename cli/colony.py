"""`colonies colony ...`: add, list and remove colonies (server owner)."""

from __future__ import annotations

from typing import Annotated

import msgspec
import typer
from rich.text import Text

from colonies_es.cli.common import (
    SERVER_OWNER,
    HostOption,
    JsonOption,
    PortOption,
    Server,
    ServerOwnerKeyOption,
    TlsOption,
    connected,
    details,
    fail,
    print_json,
    render,
    require_key,
    table,
)
from colonies_es.crypto import id_from_private_key, new_private_key
from colonies_es.models import Colony

__all__ = ["AddedColony", "colony_app"]

colony_app = typer.Typer(
    help="Colonies: the groups of executors and users that share work. Adding, listing and "
    "removing them takes the server owner's key.",
    no_args_is_help=True,
)


class AddedColony(msgspec.Struct, kw_only=True):
    """What ``colony add --json`` prints: the colony, and its owner's key when the
    command generated it (None when it was given)."""

    colony: Colony
    colonyprvkey: str | None


@colony_app.command()
def add(
    name: Annotated[str, typer.Option("--name", help="Name of the new colony.")],
    colony_prvkey: Annotated[
        str | None,
        typer.Option(
            "--colony-prvkey",
            help="The new colony owner's private key; by default a fresh one is generated "
            "and printed (keep it: there is no other copy).",
            show_default=False,
        ),
    ] = None,
    json_output: JsonOption = False,
    host: HostOption = "localhost",
    port: PortOption = 4222,
    tls: TlsOption = False,
    server_prvkey: ServerOwnerKeyOption = None,
) -> None:
    """Add a colony owned by a colony key (its id becomes the colony id)."""
    server_key = require_key(server_prvkey, SERVER_OWNER)
    generated = colony_prvkey is None
    owner_key = new_private_key() if colony_prvkey is None else colony_prvkey
    try:
        colony = Colony(colonyid=id_from_private_key(owner_key), name=name)
    except ValueError as error:
        fail(f"--colony-prvkey is not a valid private key: {error}", status=2)
    with connected(Server(host, port, tls), SERVER_OWNER) as client:
        added = client.add_colony(colony, server_key)
    if json_output:
        print_json(AddedColony(colony=added, colonyprvkey=owner_key if generated else None))
        return
    rows: list[tuple[str, str]] = [("Name", added.name), ("Colony ID", added.colonyid)]
    if generated:
        rows.append(("Colony prvkey", owner_key))
    render(Text(f"Colony {added.name} added"), details(rows))
    if generated:
        render(Text("Keep the colony prvkey: it is the only copy (COLONIES_COLONY_PRVKEY)."))


@colony_app.command("ls")
def list_colonies(
    json_output: JsonOption = False,
    host: HostOption = "localhost",
    port: PortOption = 4222,
    tls: TlsOption = False,
    server_prvkey: ServerOwnerKeyOption = None,
) -> None:
    """List every colony."""
    server_key = require_key(server_prvkey, SERVER_OWNER)
    with connected(Server(host, port, tls), SERVER_OWNER) as client:
        colonies = client.list_colonies(server_key)
    if json_output:
        print_json(colonies)
    elif not colonies:
        render(Text("No colonies"))
    else:
        rows = table("NAME", "COLONY ID", ids=["COLONY ID"])
        for colony in sorted(colonies, key=lambda c: c.name):
            rows.add_row(colony.name, colony.colonyid)
        render(rows)


@colony_app.command("remove")
def remove_colony(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The colony to remove.")],
    host: HostOption = "localhost",
    port: PortOption = 4222,
    tls: TlsOption = False,
    server_prvkey: ServerOwnerKeyOption = None,
) -> None:
    """Remove a colony: its members and executors can no longer use it. Its history
    stays in the log. Needs the server owner's key."""
    server_key = require_key(server_prvkey, SERVER_OWNER)
    with connected(Server(host, port, tls), SERVER_OWNER) as client:
        client.del_colony(name, server_key)
    render(Text(f"Colony {name} removed"))
