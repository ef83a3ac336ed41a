"""`colonies workflow ...`: submit workflows, list them by state, show, cancel and remove them.

Every command talks to the engine through the client (:mod:`colonies_es.client`).
Others add their own commands to :data:`workflow_app` from ``cli/app.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import click
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
    WideOption,
    connected,
    details,
    executor_label,
    executor_names,
    fail,
    ident,
    listing,
    moment,
    more_note,
    one_id,
    print_json,
    render,
    require_colony,
    require_key,
    resolve_graph_id,
    short,
    state_name,
    state_text,
    when,
)
from colonies_es.cli.progress import wait_for_end
from colonies_es.client import Colonies
from colonies_es.models import ModelValidationError, Process, ProcessGraph, Workflow, from_dict
from colonies_es.states import ProcessState

__all__ = ["GraphDetails", "load_workflow", "workflow_app"]

workflow_app = typer.Typer(
    help="Workflows (process graphs): submit them, list them by state, show, cancel and "
    "remove them.",
    no_args_is_help=True,
)

GraphIdArgument = Annotated[
    str | None,
    typer.Argument(
        metavar="ID",
        help="The workflow (process graph) id, or a unique prefix of it (or pass "
        "--processgraphid).",
        show_default=False,
    ),
]
GraphIdOption = Annotated[
    str | None,
    typer.Option("--processgraphid", help="The process graph id.", show_default=False),
]


class GraphDetails(msgspec.Struct, kw_only=True):
    """A process graph with its processes, in the graph's order: what ``workflow get``
    and ``workflow submit`` print with --json."""

    processgraph: ProcessGraph
    processes: list[Process]


# --------------------------------------------------------------------------- submit


@workflow_app.command()
def submit(
    spec: Annotated[
        Path,
        typer.Argument(
            metavar="SPEC.json",
            exists=True,
            dir_okay=False,
            help='The workflow as JSON: {"colonyname": ..., "functionspecs": ...}, or only '
            "the list of function specs.",
            show_default=False,
        ),
    ],
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="Wait until the workflow ends, showing its progress on stderr, then show "
            "it; exit status 1 unless it succeeded.",
        ),
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option(
            min=0.0, help="With --wait, give up after this many seconds.", show_default=False
        ),
    ] = None,
    json_output: JsonOption = False,
    host: HostOption = "localhost",
    port: PortOption = 4222,
    tls: TlsOption = False,
    colony: ColonyOption = None,
    prvkey: PrvkeyOption = None,
) -> None:
    """Submit a workflow from a JSON file and show its process graph.

    The colony is --colony when given, else the file's colonyname, else
    COLONIES_COLONY_NAME.

    Function specs whose conditions name no colony get the workflow's.
    """
    from_flag = _given_on_command_line("colony")
    workflow = load_workflow(spec, colony, override_colony=colony if from_flag else None)
    key = require_key(prvkey, MEMBER)
    with connected(Server(host, port, tls)) as client:
        graph = client.submit_workflow(workflow, key)
        if not json_output:
            render(Text(f"Workflow {graph.processgraphid} submitted"))
        if wait:
            wait_for_end(client, graph.processgraphid, graph.colonyname, key, timeout)
        shown = fetch_details(client, graph.processgraphid, key)
        names = executor_names(client, graph.colonyname, key)
    _show(shown, names, json_output)
    final = shown.processgraph.state
    if wait and final != ProcessState.SUCCESS:
        fail(f"workflow {graph.processgraphid} ended {state_name(final)}")


def _given_on_command_line(parameter: str) -> bool:
    """Whether the running command's ``parameter`` came from a flag (not a variable)."""
    source = click.get_current_context().get_parameter_source(parameter)
    return source is click.core.ParameterSource.COMMANDLINE


def load_workflow(
    path: Path, default_colony: str | None, override_colony: str | None = None
) -> Workflow:
    """The workflow in the JSON file ``path`` (a Workflow, or a list of function specs).
    Exits with a one-line error if unreadable.

    Its colony is ``override_colony`` (a --colony flag) when given, else the file's
    colonyname, else ``default_colony`` (COLONIES_COLONY_NAME). Function specs that name
    no colony, or the file's colony when it is overridden, get the workflow's colony.
    """
    try:
        data: Any = msgspec.json.decode(path.read_bytes())
    except (OSError, msgspec.DecodeError) as error:
        fail(f"cannot read {path}: {error}")
    if isinstance(data, list):
        data = {"functionspecs": data}
    if not isinstance(data, dict):
        fail(f"{path}: expected a workflow object or a list of function specs")
    try:
        workflow = from_dict(data, Workflow)
    except ModelValidationError as error:
        fail(f"{path}: {error}")
    in_file = workflow.colonyname
    workflow.colonyname = override_colony or in_file or require_colony(default_colony)
    for funcspec in workflow.functionspecs:
        named = funcspec.conditions.colonyname
        if not named or (override_colony and named == in_file):
            funcspec.conditions.colonyname = workflow.colonyname
    return workflow


# --------------------------------------------------------------------------- listings


class ListedState(StrEnum):
    """The states ``ls --state`` takes, by name; ``all`` lists every state."""

    all = "all"
    waiting = "waiting"
    running = "running"
    successful = "successful"
    failed = "failed"
    cancelled = "cancelled"


LISTED_STATES: dict[ListedState, ProcessState | None] = {
    ListedState.all: None,
    ListedState.waiting: ProcessState.WAITING,
    ListedState.running: ProcessState.RUNNING,
    ListedState.successful: ProcessState.SUCCESS,
    ListedState.failed: ProcessState.FAILED,
    ListedState.cancelled: ProcessState.CANCELLED,
}
"""The state code each name lists (None: every state)."""


def list_graphs(
    state: ProcessState | None,
    adjective: str,
    count: int,
    json_output: bool,
    wide: bool,
    server: Server,
    colony: str | None,
    prvkey: str | None,
) -> None:
    """List the colony's graphs in ``state`` (every state for None), newest first:
    ``count`` of them, and a note on stderr when there are more."""
    colonyname = require_colony(colony)
    key = require_key(prvkey, MEMBER)
    code = None if state is None else int(state)
    with connected(server) as client:
        graphs = client.get_processgraphs(colonyname, count + 1, key, state=code)
    shown = graphs[:count]
    if json_output:
        print_json(shown)
    elif not shown:
        render(Text(f"No {adjective}workflows in colony {colonyname}"))
    else:
        rows = listing(
            "WORKFLOW ID",
            "SUBMITTED",
            "INITIATOR",
            "NODES",
            "STATE",
            whole=["WORKFLOW ID", "SUBMITTED", "NODES", "STATE"],
        )
        for graph in shown:
            rows.add_row(
                ident(graph.processgraphid, wide),
                moment(graph.submissiontime, wide),
                graph.initiatorname or short(graph.initiatorid, 13),
                str(len(graph.processids)),
                state_text(graph.state),
            )
        render(rows)
    more_note(len(graphs), count, f"{adjective}workflows")


@workflow_app.command("ls")
def list_command(
    state: Annotated[
        ListedState, typer.Option("--state", help="List only the workflows in this state.")
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
    """List the colony's workflows in every state (cancelled ones included), newest first.

    Tables show id prefixes (any unique prefix is accepted back) and ages; --wide shows
    whole ids and exact times (UTC), --json everything.
    """
    adjective = "" if state is ListedState.all else f"{state.value} "
    list_graphs(
        LISTED_STATES[state],
        adjective,
        count,
        json_output,
        wide,
        Server(host, port, tls),
        colony,
        prvkey,
    )


def _graph_listing(state: ProcessState, adjective: str) -> Callable[..., None]:
    """The command listing the colony's graphs in ``state``, newest first."""

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
        list_graphs(
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
        f"List the colony's {adjective} workflows, newest first (`ls --state` for any state)."
    )
    return command


workflow_app.command("ps")(_graph_listing(ProcessState.RUNNING, "running"))
workflow_app.command("psw")(_graph_listing(ProcessState.WAITING, "waiting"))
workflow_app.command("pss")(_graph_listing(ProcessState.SUCCESS, "successful"))
workflow_app.command("psf")(_graph_listing(ProcessState.FAILED, "failed"))


# --------------------------------------------------------------------------- one graph


@workflow_app.command()
def get(
    graph_id: GraphIdArgument = None,
    processgraphid: GraphIdOption = None,
    json_output: JsonOption = False,
    host: HostOption = "localhost",
    port: PortOption = 4222,
    tls: TlsOption = False,
    colony: ColonyOption = None,
    prvkey: PrvkeyOption = None,
) -> None:
    """Show a workflow: its state, times and initiator, then each of its processes.

    The process table cuts input, output and errors short; --json shows them whole.
    Times are in UTC.
    """
    given = one_id(graph_id, processgraphid, "--processgraphid")
    key = require_key(prvkey, MEMBER)
    with connected(Server(host, port, tls)) as client:
        graphid = resolve_graph_id(client, given, colony, key)
        shown = fetch_details(client, graphid, key)
        names = executor_names(client, shown.processgraph.colonyname, key)
    _show(shown, names, json_output)


def fetch_details(client: Colonies, processgraphid: str, prvkey: str) -> GraphDetails:
    """The graph and each of its processes, as the engine has them now."""
    graph = client.get_processgraph(processgraphid, prvkey)
    processes = [client.get_process(pid, prvkey) for pid in graph.processids]
    return GraphDetails(processgraph=graph, processes=processes)


def _show(shown: GraphDetails, names: dict[str, str], json_output: bool) -> None:
    if json_output:
        print_json(shown)
        return
    graph = shown.processgraph
    summary = details(
        [
            ("ProcessGraph ID", graph.processgraphid),
            ("Colony", graph.colonyname),
            ("State", state_text(graph.state)),
            ("Initiator", f"{graph.initiatorname or '-'} ({graph.initiatorid})"),
            ("Submission time", when(graph.submissiontime)),
            ("Start time", when(graph.starttime)),
            ("End time", when(graph.endtime)),
            ("Processes", str(len(graph.processids))),
        ]
    )
    rows = listing(
        "NODENAME",
        "STATE",
        "EXECUTOR",
        "RETRIES",
        "INPUT",
        "OUTPUT",
        "ERRORS",
        whole=["STATE", "RETRIES"],
    )
    for process in shown.processes:
        rows.add_row(
            process.spec.nodename,
            state_text(process.state),
            executor_label(process.assignedexecutorid, names),
            str(process.retries),
            short(process.input),
            short(process.output),
            _errors_summary(process),
        )
    render(summary, rows)


def _errors_summary(process: Process) -> str:
    """The first error's first line, cut short, and where to read the rest (the
    traceback, other attempts' errors) when there is more."""
    errors = process.errors
    if not errors:
        return ""
    lines = errors[0].strip().splitlines()
    first = lines[0] if lines else ""
    more = len(errors) > 1 or len(lines) > 1
    where = f" (all of it: colonies process get {ident(process.processid)})" if more else ""
    return f"{short(first, 60)}{where}"


# --------------------------------------------------------------------------- changes


@workflow_app.command()
def cancel(
    graph_id: GraphIdArgument = None,
    processgraphid: GraphIdOption = None,
    host: HostOption = "localhost",
    port: PortOption = 4222,
    tls: TlsOption = False,
    colony: ColonyOption = None,
    prvkey: PrvkeyOption = None,
) -> None:
    """Cancel a workflow: its waiting and running processes become CANCELLED, and the
    executors running them stop their functions."""
    given = one_id(graph_id, processgraphid, "--processgraphid")
    key = require_key(prvkey, MEMBER)
    with connected(Server(host, port, tls)) as client:
        graphid = resolve_graph_id(client, given, colony, key)
        client.cancel_processgraph(graphid, key)
    render(Text(f"Workflow {graphid} cancelled"))


@workflow_app.command()
def remove(
    graph_id: GraphIdArgument = None,
    processgraphid: GraphIdOption = None,
    host: HostOption = "localhost",
    port: PortOption = 4222,
    tls: TlsOption = False,
    colony: ColonyOption = None,
    prvkey: PrvkeyOption = None,
) -> None:
    """Remove a workflow from listings and gets; its history stays in the log.

    A running workflow cannot be removed: cancel it first.
    """
    given = one_id(graph_id, processgraphid, "--processgraphid")
    key = require_key(prvkey, MEMBER)
    with connected(Server(host, port, tls)) as client:
        graphid = resolve_graph_id(client, given, colony, key)
        client.remove_processgraph(graphid, key)
    render(Text(f"Workflow {graphid} removed"))


class RemovableState(StrEnum):
    """The states ``removeall --state`` takes, by name."""

    waiting = "waiting"
    running = "running"
    successful = "successful"
    failed = "failed"
    cancelled = "cancelled"


_STATE_CODES = {
    RemovableState.waiting: ProcessState.WAITING,
    RemovableState.running: ProcessState.RUNNING,
    RemovableState.successful: ProcessState.SUCCESS,
    RemovableState.failed: ProcessState.FAILED,
    RemovableState.cancelled: ProcessState.CANCELLED,
}


@workflow_app.command()
def removeall(
    state: Annotated[
        RemovableState | None,
        typer.Option(help="Remove only the workflows in this state.", show_default=False),
    ] = None,
    host: HostOption = "localhost",
    port: PortOption = 4222,
    tls: TlsOption = False,
    colony: ColonyOption = None,
    colony_prvkey: ColonyOwnerKeyOption = None,
) -> None:
    """Remove the colony's workflows (all, or those in one state); running ones stay.

    Needs the colony owner's key.
    """
    colonyname = require_colony(colony)
    key = require_key(colony_prvkey, COLONY_OWNER)
    with connected(Server(host, port, tls), COLONY_OWNER) as client:
        code = None if state is None else int(_STATE_CODES[state])
        client.remove_all_processgraphs(colonyname, key, code)
    which = "" if state is None else f"{state.value} "
    render(Text(f"Removed the {which}workflows of colony {colonyname} (running ones stay)"))
