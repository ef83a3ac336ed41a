"""`colonies executor ls|approve|reject`: the colony's executors and their approval.

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
    connected,
    print_json,
    render,
    require_colony,
    require_key,
    table,
    when,
)
from colonies_es.states import ExecutorState

__all__ = ["approve", "list_executors", "reject"]

ExecutorNameArgument = Annotated[
    str, typer.Argument(metavar="NAME", help="The executor's name in the colony.")
]


def list_executors(
    json_output: JsonOption = False,
    host: HostOption = "localhost",
    port: PortOption = 4222,
    tls: TlsOption = False,
    colony: ColonyOption = None,
    prvkey: PrvkeyOption = None,
) -> None:
    """List the colony's executors: name, type, state (PENDING, APPROVED, REJECTED), id."""
    colonyname = require_colony(colony)
    key = require_key(prvkey, MEMBER)
    with connected(Server(host, port, tls)) as client:
        executors = client.list_executors(colonyname, key)
    if json_output:
        print_json(executors)
    elif not executors:
        render(Text(f"No executors in colony {colonyname}"))
    else:
        rows = table("NAME", "TYPE", "STATE", "EXECUTOR ID", "COMMISSION TIME", ids=["EXECUTOR ID"])
        for executor in executors:
            rows.add_row(
                executor.executorname,
                executor.executortype,
                _state_name(executor.state),
                executor.executorid,
                when(executor.commissiontime),
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


def _state_name(code: int) -> str:
    try:
        return ExecutorState(code).name
    except ValueError:
        return str(code)
