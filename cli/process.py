"""`colonies process ...`: list the colony's processes by state and show one process."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import RenderableType
from rich.text import Text

from colonies_es.cli.common import (
    MEMBER,
    ColonyOption,
    CountOption,
    HostOption,
    JsonOption,
    PortOption,
    PrvkeyOption,
    Server,
    TlsOption,
    WideOption,
    compact,
    connected,
    details,
    executor_label,
    executor_names,
    ident,
    listing,
    moment,
    more_note,
    one_id,
    print_json,
    render,
    require_colony,
    require_key,
    resolve_process_id,
    short,
    state_text,
    when,
)
from colonies_es.cli.workflow import LISTED_STATES, ListedState
from colonies_es.models import Process
from colonies_es.states import ProcessState

__all__ = ["process_app"]

process_app = typer.Typer(
    help="Processes (single function calls, alone or in a workflow): list them by state, "
    "show and remove one.",
    no_args_is_help=True,
)


def list_processes(
    state: ProcessState | None,
    adjective: str,
    count: int,
    json_output: bool,
    wide: bool,
    server: Server,
    colony: str | None,
    prvkey: str | None,
) -> None:
    """List the colony's processes in ``state`` (every state for None), newest first:
    ``count`` of them, and a note on stderr when there are more."""
    colonyname = require_colony(colony)
    key = require_key(prvkey, MEMBER)
    code = -1 if state is None else int(state)
    with connected(server) as client:
        processes = client.list_processes(colonyname, count + 1, code, key)
        names = executor_names(client, colonyname, key) if processes else {}
    shown = processes[:count]
    if json_output:
        print_json(shown)
    elif not shown:
        render(Text(f"No {adjective}processes in colony {colonyname}"))
    else:
        rows = listing(
            "PROCESS ID",
            "FUNCTION",
            "ARGS",
            "SUBMITTED",
            "TYPE",
            "EXECUTOR",
            "STATE",
            whole=["PROCESS ID", "SUBMITTED", "STATE"],
        )
        for process in shown:
            rows.add_row(
                ident(process.processid, wide),
                process.spec.funcname,
                short(process.input or process.spec.args, 30),
                moment(process.submissiontime, wide),
                process.spec.conditions.executortype,
                executor_label(process.assignedexecutorid, names),
                state_text(process.state),
            )
        render(rows)
    more_note(len(processes), count, f"{adjective}processes")


@process_app.command("ls")
def list_command(
    state: Annotated[
        ListedState, typer.Option("--state", help="List only the processes in this state.")
    ] = ListedState.all,
    count: CountOption = 20,
    json_output: JsonOption = False,
    wide: WideOption = False,
    host: HostOption = "localhost",
    port: PortOption = 4222,
    tls: TlsOption = False,
    colony: ColonyOption = None,
    prvkey: PrvkeyOption = None,
) -> None:
    """List the colony's processes in every state (cancelled ones included), newest first.

    Tables show id prefixes (any unique prefix is accepted back) and ages; --wide shows
    whole ids and exact times (UTC), --json everything.
    """
    adjective = "" if state is ListedState.all else f"{state.value} "
    list_processes(
        LISTED_STATES[state],
        adjective,
        count,
        json_output,
        wide,
        Server(host, port, tls),
        colony,
        prvkey,
    )


def _process_listing(state: ProcessState, adjective: str) -> Callable[..., None]:
    """The command listing the colony's processes in ``state``, newest first."""

    def command(
        count: CountOption = 20,
        json_output: JsonOption = False,
        wide: WideOption = False,
        host: HostOption = "localhost",
        port: PortOption = 4222,
        tls: TlsOption = False,
        colony: ColonyOption = None,
        prvkey: PrvkeyOption = None,
    ) -> None:
        list_processes(
            state,
            f"{adjective} ",
            count,
            json_output,
            wide,
            Server(host, port, tls),
            colony,
            prvkey,
        )

    command.__doc__ = (
        f"List the colony's {adjective} processes, newest first (`ls --state` for any state)."
    )
    return command


process_app.command("ps")(_process_listing(ProcessState.RUNNING, "running"))
process_app.command("psw")(_process_listing(ProcessState.WAITING, "waiting"))
process_app.command("pss")(_process_listing(ProcessState.SUCCESS, "successful"))
process_app.command("psf")(_process_listing(ProcessState.FAILED, "failed"))


ProcessIdArgument = Annotated[
    str | None,
    typer.Argument(
        metavar="ID",
        help="The process id, or a unique prefix of it (or pass --processid).",
        show_default=False,
    ),
]
ProcessIdOption = Annotated[
    str | None, typer.Option("--processid", help="The process id.", show_default=False)
]


@process_app.command()
def get(
    process_id: ProcessIdArgument = None,
    processid: ProcessIdOption = None,
    json_output: JsonOption = False,
    host: HostOption = "localhost",
    port: PortOption = 4222,
    tls: TlsOption = False,
    colony: ColonyOption = None,
    prvkey: PrvkeyOption = None,
) -> None:
    """Show every attribute of a process: state, times, spec, data flow and errors.

    Times are in UTC.
    """
    given = one_id(process_id, processid, "--processid")
    key = require_key(prvkey, MEMBER)
    with connected(Server(host, port, tls)) as client:
        pid = resolve_process_id(client, given, colony, key)
        process = client.get_process(pid, key)
        names = executor_names(client, process.spec.conditions.colonyname, key)
    if json_output:
        print_json(process)
    else:
        render(details(_attributes(process, names)))


@process_app.command()
def remove(
    process_id: ProcessIdArgument = None,
    processid: ProcessIdOption = None,
    host: HostOption = "localhost",
    port: PortOption = 4222,
    tls: TlsOption = False,
    colony: ColonyOption = None,
    prvkey: PrvkeyOption = None,
) -> None:
    """Remove a process submitted on its own from listings and gets; its history stays in
    the log. A process of a larger workflow goes with its workflow (workflow remove)."""
    given = one_id(process_id, processid, "--processid")
    key = require_key(prvkey, MEMBER)
    with connected(Server(host, port, tls)) as client:
        pid = resolve_process_id(client, given, colony, key)
        client.remove_process(pid, key)
    render(Text(f"Process {pid} removed"))


def _attributes(process: Process, names: dict[str, str]) -> list[tuple[str, RenderableType]]:
    """Every attribute of ``process`` as a (name, value) row, nothing cut short."""
    spec = process.spec
    conditions = spec.conditions
    env = {name: value for name, value in spec.env.items() if name != "code"}
    return [
        ("Process ID", process.processid),
        ("ProcessGraph ID", process.processgraphid or "-"),
        ("Colony", conditions.colonyname),
        ("Function", spec.funcname),
        ("Node name", spec.nodename),
        ("State", state_text(process.state)),
        ("Initiator", f"{process.initiatorname or '-'} ({process.initiatorid})"),
        (
            "Assigned executor",
            f"{executor_label(process.assignedexecutorid, names)} "
            f"({process.assignedexecutorid or 'none'})",
        ),
        ("Is assigned", str(process.isassigned)),
        ("Submission time", when(process.submissiontime)),
        ("Start time", when(process.starttime)),
        ("End time", when(process.endtime)),
        ("Wait deadline", when(process.waitdeadline)),
        ("Exec deadline", when(process.execdeadline)),
        ("Priority time", _priority_time(process.prioritytime)),
        ("Retries", str(process.retries)),
        ("Priority", str(spec.priority)),
        ("Max wait time", str(spec.maxwaittime)),
        ("Max exec time", str(spec.maxexectime)),
        ("Max retries", str(spec.maxretries)),
        ("Executor type", conditions.executortype),
        ("Executor names", ", ".join(conditions.executornames) or "-"),
        ("Dependencies", ", ".join(conditions.dependencies) or "-"),
        ("Label", spec.label or "-"),
        ("Args", compact(spec.args)),
        ("Kwargs", compact(spec.kwargs)),
        ("Env", compact(env)),
        ("Code", _code(process) or "-"),
        ("Wait for parents", str(process.waitforparents)),
        ("Parents", "\n".join(process.parents) or "-"),
        ("Children", "\n".join(process.children) or "-"),
        ("Input", compact(process.input)),
        ("Output", compact(process.output)),
        ("Errors", "\n".join(process.errors) or "-"),
        ("Attributes", "\n".join(f"{a.key} = {a.value}" for a in process.attributes) or "-"),
    ]


def _priority_time(nanoseconds: int) -> str:
    """The priority time as a UTC time: when the process became ready (or was
    submitted) minus one day per priority point; waiting work is served earliest first."""
    if nanoseconds <= 0:
        return "-"
    moment_ = datetime.fromtimestamp(nanoseconds / 1e9, UTC)
    return f"{when(moment_)} (served earliest first)"


def _code(process: Process) -> str | None:
    try:
        return process.spec.decoded_code()
    except ValueError as error:
        return f"(unreadable: {error})"
