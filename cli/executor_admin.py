"""`colonies executor ls|approve|reject|remove`: the colony's executors and their approval.

The ``executor`` sub-app lives in :mod:`colonies_es.cli.executor`; ``cli/app.py``
registers these commands on it.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.text import Text

from colonies_es.cli.common import (
    COLONY_OWNER,
    MEMBER,
    ColonyOption,
    ColonyOwnerKeyOption,
    HostOption,
    JsonOption,
    PortOption,
    PrvkeyOption,
    Server,
    TlsOption,
    WideOption,
    connected,
    ident,
    listing,
    moment,
    print_json,
    render,
    require_colony,
    require_key,
)
from colonies_es.states import ExecutorState

__all__ = ["approve", "list_executors", "reject", "remove"]

ExecutorNameArgument = Annotated[
    str, typer.Argument(metavar="NAME", help="The executor's name in the colony.")
]


def list_executors(
    json_output: JsonOption = False,
    wide: WideOption = False,
    host: HostOption = "localhost",
    port: PortOption = 4222,
    tls: TlsOption = False,
    colony: ColonyOption = None,
    prvkey: PrvkeyOption = None,
) -> None:
    """List the colony's executors: name, type, state (PENDING, APPROVED, REJECTED), id,
    and when it was last heard from (its claims and reports); --wide adds when it was
    registered."""
    colonyname = require_colony(colony)
    key = require_key(prvkey, MEMBER)
    with connected(Server(host, port, tls)) as client:
        executors = client.list_executors(colonyname, key)
    if json_output:
        print_json(executors)
    elif not executors:
        render(Text(f"No executors in colony {colonyname}"))
    else:
        rows = listing(
            "NAME",
            "TYPE",
            "STATE",
            "EXECUTOR ID",
            "LAST HEARD",
            *(["REGISTERED"] if wide else []),
            whole=["NAME", "EXECUTOR ID", "STATE", "LAST HEARD", "REGISTERED"],
        )
        for executor in executors:
            heard = executor.lastheardfromtime
            rows.add_row(
                executor.executorname,
                executor.executortype,
                _state_name(executor.state),
                ident(executor.executorid, wide),
                moment(heard, wide) if heard else "never",
                *([moment(executor.commissiontime, wide)] if wide else []),
            )
        render(rows)


def approve(
    name: ExecutorNameArgument,
    host: HostOption = "localhost",
    port: PortOption = 4222,
    tls: TlsOption = False,
    colony: ColonyOption = None,
    colony_prvkey: ColonyOwnerKeyOption = None,
) -> None:
    """Approve an executor: it may take the colony's work. Needs the colony owner's key."""
    colonyname = require_colony(colony)
    key = require_key(colony_prvkey, COLONY_OWNER)
    with connected(Server(host, port, tls), COLONY_OWNER) as client:
        client.approve_executor(colonyname, name, key)
    render(Text(f"Executor {name} approved in colony {colonyname}"))


def reject(
    name: ExecutorNameArgument,
    host: HostOption = "localhost",
    port: PortOption = 4222,
    tls: TlsOption = False,
    colony: ColonyOption = None,
    colony_prvkey: ColonyOwnerKeyOption = None,
) -> None:
    """Reject an executor: it may no longer take work. Needs the colony owner's key."""
    colonyname = require_colony(colony)
    key = require_key(colony_prvkey, COLONY_OWNER)
    with connected(Server(host, port, tls), COLONY_OWNER) as client:
        client.reject_executor(colonyname, name, key)
    render(Text(f"Executor {name} rejected in colony {colonyname}"))


def remove(
    name: ExecutorNameArgument,
    host: HostOption = "localhost",
    port: PortOption = 4222,
    tls: TlsOption = False,
    colony: ColonyOption = None,
    colony_prvkey: ColonyOwnerKeyOption = None,
) -> None:
    """Remove an executor from the colony: it may no longer take work, and its name is
    free again. Needs the colony owner's key."""
    colonyname = require_colony(colony)
    key = require_key(colony_prvkey, COLONY_OWNER)
    with connected(Server(host, port, tls), COLONY_OWNER) as client:
        client.remove_executor(colonyname, name, key)
    render(Text(f"Executor {name} removed from colony {colonyname}"))


def _state_name(code: int) -> str:
    try:
        return ExecutorState(code).name
    except ValueError:
        return str(code)
