"""`colonies process ...`: list the colony's processes by state and show one process."""

from __future__ import annotations

from collections.abc import Callable
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
    compact,
    connected,
    details,
    executor_label,
    executor_names,
    one_id,
    print_json,
    render,
    require_colony,
    require_key,
    short,
    state_text,
    table,
    when,
)
from colonies_es.models import Process
from colonies_es.states import ProcessState

__all__ = ["process_app"]

process_app = typer.Typer(
    help="Processes (single function calls, alone or in a workflow): list them by state "
    "and show one.",
    no_args_is_help=True,
)


def _process_listing(state: ProcessState, adjective: str) -> Callable[..., None]:
    """The command listing the colony's processes in ``state``, newest first."""

    def listing(
        count: CountOption = 20,
        json_output: JsonOption = False,
        host: HostOption = "localhost",
        port: PortOption = 4222,
        tls: TlsOption = False,
        colony: ColonyOption = None,
        prvkey: PrvkeyOption = None,
    ) -> None:
        colonyname = require_colony(colony)
        key = require_key(prvkey, MEMBER)
        with connected(Server(host, port, tls)) as client:
            processes = client.list_processes(colonyname, count, int(state), key)
            names = executor_names(client, colonyname, key)
        if json_output:
            print_json(processes)
        elif not processes:
            render(Text(f"No {adjective} processes in colony {colonyname}"))
        else:
            rows = table(
                "PROCESS ID",
                "FUNCNAME",
                "ARGS",
                "SUBMISSION TIME",
                "EXECUTOR TYPE",
                "EXECUTOR",
                "STATE",
                ids=["PROCESS ID"],
            )
            for process in processes:
                rows.add_row(
                    process.processid,
                    process.spec.funcname,
                    short(process.spec.args, 30),
                    when(process.submissiontime),
                    process.spec.conditions.executortype,
                    executor_label(process.assignedexecutorid, names),
                    state_text(process.state),
                )
            render(rows)

    listing.__doc__ = f"List the colony's {adjective} processes, newest first (times in UTC)."
    return listing


process_app.command("ps")(_process_listing(ProcessState.RUNNING, "running"))
process_app.command("psw")(_process_listing(ProcessState.WAITING, "waiting"))
process_app.command("pss")(_process_listing(ProcessState.SUCCESS, "successful"))
process_app.command("psf")(_process_listing(ProcessState.FAILED, "failed"))


@process_app.command()
def get(
    process_id: Annotated[
        str | None,
        typer.Argument(
            metavar="ID", help="The process id (or pass --processid).", show_default=False
        ),
    ] = None,
    processid: Annotated[
        str | None, typer.Option("--processid", help="The process id.", show_default=False)
    ] = None,
    json_output: JsonOption = False,
    host: HostOption = "localhost",
    port: PortOption = 4222,
    tls: TlsOption = False,
    prvkey: PrvkeyOption = None,
) -> None:
    """Show every attribute of a process: state, times, spec, data flow and errors.

    Times are in UTC.
    """
    pid = one_id(process_id, processid, "--processid")
    key = require_key(prvkey, MEMBER)
    with connected(Server(host, port, tls)) as client:
        process = client.get_process(pid, key)
        names = executor_names(client, process.spec.conditions.colonyname, key)
    if json_output:
        print_json(process)
    else:
        render(details(_attributes(process, names)))


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
        ("Priority time", str(process.prioritytime)),
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


def _code(process: Process) -> str | None:
    try:
        return process.spec.decoded_code()
    except ValueError as error:
        return f"(unreadable: {error})"
