"""`colonies workflow history|replay|debug|rerun` and `colonies audit verify|export`.

History, time travel, debugging, export and the audit of one workflow read its events
through a projector, which hands them to members of the workflow's colony only (the
signed query ``graph_events``; only events the engine sealed, decrypted when the log is
encrypted). The audit of the whole log reads the stream itself: it needs a NATS
credential allowed to (a reader's), and ``--seal-key`` (COLONIES_EVENT_SEAL_KEY, the
engine's) makes it report what the engine did not seal.
``workflow rerun`` is a command to the engine, signed with your key.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import msgspec
import nats.errors
import typer
from eventsourcing.persistence import OperationalError
from rich.console import RenderableType
from rich.text import Text

from colonies_es.cli.common import (
    MEMBER,
    ColonyOption,
    HostOption,
    JsonOption,
    PortOption,
    PrvkeyOption,
    Server,
    TlsOption,
    connected,
    details,
    fail,
    one_id,
    print_json,
    probe,
    render,
    require_key,
    resolve_graph_id,
    short,
    state_text,
    table,
    when,
)
from colonies_es.cli.fixing import defined_functions, rerun_with_code, stepping_into
from colonies_es.cli.meter import LogPass
from colonies_es.cli.workflow import GraphDetails, GraphIdArgument, GraphIdOption, _show
from colonies_es.debug import (
    DebugReport,
    LocalRun,
    ProcessReport,
    debug_report,
    rerun_from_failed,
    run_locally,
)
from colonies_es.encryption import cipher_of
from colonies_es.projections.audit import (
    AuditReport,
    Authorities,
    SpillFailed,
    export_lines,
    verify,
    verify_graph,
)
from colonies_es.projections.history import HistoryEntry, graph_history, sealer_of
from colonies_es.projections.timetravel import (
    GraphState,
    Nth,
    ReplayError,
    graph_state,
    parse_moment,
    replay_steps,
    upto,
)
from colonies_es.settings import Settings, SettingsError

__all__ = ["audit_app", "debug", "history_command", "replay", "rerun"]

audit_app = typer.Typer(
    help="Audit the event log: check every event against the signed command it came from.",
    no_args_is_help=True,
)

_UNSEALED_MARK = "not sealed by the engine"
"""What the history reader and the audit say of a message the seal key does not verify."""
_HISTORY_LOGGER = "colonies.history"

CodeOption = Annotated[
    Path | None,
    typer.Option(
        "--code",
        metavar="FILE.py",
        help="Python source defining new versions of the workflow's functions (by name).",
        dir_okay=False,
        show_default=False,
    ),
]

SealKeyOption = Annotated[
    str | None,
    typer.Option(
        "--seal-key",
        envvar="COLONIES_EVENT_SEAL_KEY",
        help="The log's seal key (hex), as the engine has it: read only what the engine "
        "sealed (anything else on the stream was not written by the engine).",
        show_default=False,
    ),
]


# --------------------------------------------------------------------------- history


def history_command(
    graph_id: GraphIdArgument = None,
    processgraphid: GraphIdOption = None,
    json_output: JsonOption = False,
    host: HostOption = "localhost",
    port: PortOption = 4222,
    tls: TlsOption = False,
    colony: ColonyOption = None,
    prvkey: PrvkeyOption = None,
) -> None:
    """Show everything that happened to a workflow, one event per line.

    Each line: the event's number in the workflow (#), its stream sequence, its time
    (UTC), who caused it and what happened. --json adds each event's fields.

    A projector reads the events from the log and gives them to members of the
    workflow's colony only (your key: COLONIES_PRVKEY or --prvkey).
    """
    graphid = one_id(graph_id, processgraphid, "--processgraphid")
    entries = _history(Server(host, port, tls), graphid, colony, prvkey)
    if json_output:
        print_json([entry.to_json() for entry in entries])
        return
    rows = table("#", "SEQ", "TIME (UTC)", "ACTOR", "WHAT", ids=["#", "SEQ", "TIME (UTC)"])
    for number, entry in enumerate(entries, start=1):
        rows.add_row(str(number), str(entry.sequence), _time(entry), _actor(entry), entry.summary)
    render(rows)


# --------------------------------------------------------------------------- replay


def replay(
    graph_id: GraphIdArgument = None,
    processgraphid: GraphIdOption = None,
    at: Annotated[
        str | None,
        typer.Option(
            "--at",
            help="When: a stream sequence (1234), an ISO time (2026-01-31T12:00:00Z; UTC "
            "without an offset) or #N, after the workflow's N-th event. Default: its last.",
            show_default=False,
        ),
    ] = None,
    step: Annotated[
        bool,
        typer.Option("--step", help="Show the state after each event, up to --at."),
    ] = False,
    json_output: JsonOption = False,
    host: HostOption = "localhost",
    port: PortOption = 4222,
    tls: TlsOption = False,
    colony: ColonyOption = None,
    prvkey: PrvkeyOption = None,
) -> None:
    """Show a workflow as it was at a moment of its history (time travel).

    The state is rebuilt from the workflow's own events up to --at, and shown as
    `workflow get` shows it: the graph, then its processes.

    With --step, every event up to that moment: its history line, then the state
    after it. --json prints the state (a list of states with --step).
    """
    graphid = one_id(graph_id, processgraphid, "--processgraphid")
    try:
        moment = parse_moment(at) if at is not None else None
    except ValueError as error:
        fail(str(error), status=2)
    entries = _history(Server(host, port, tls), graphid, colony, prvkey)
    names = {entry.actor: entry.actorname for entry in entries if entry.actorname}
    try:
        chosen = upto(entries, moment if moment is not None else Nth(len(entries)))
        states = _states(chosen, every=step)
    except ReplayError as error:
        fail(str(error))
    shown = []
    for number, (entry, state) in enumerate(states, start=len(chosen) - len(states) + 1):
        details_ = GraphDetails(processgraph=state.processgraph, processes=state.processes)
        if json_output:
            shown.append({**_position(number, entry), **msgspec.structs.asdict(details_)})
            continue
        line = f"#{number}  {entry.sequence}  {_time(entry)}  {_actor(entry)}: {entry.summary}"
        render(Text(line, style="bold"))
        _show(details_, names, json_output=False)
    if json_output:
        print_json(shown if step else shown[0])


def _states(entries: list[HistoryEntry], every: bool) -> list[tuple[HistoryEntry, GraphState]]:
    """The state after the last of ``entries`` (after each of them if ``every``)."""
    if every:
        return [(entry, graph_state(graph)) for entry, graph in replay_steps(entries)]
    *_, (entry, graph) = replay_steps(entries)
    return [(entry, graph_state(graph))]


def _position(number: int, entry: HistoryEntry) -> dict[str, Any]:
    return {
        "event": number,
        "sequence": entry.sequence,
        "time": entry.time.isoformat(),
        "summary": entry.summary,
    }


# --------------------------------------------------------------------------- debug


def debug(
    graph_id: GraphIdArgument = None,
    processgraphid: GraphIdOption = None,
    rerun: Annotated[
        str | None,
        typer.Option(
            "--rerun",
            metavar="NODENAME",
            help="Run this process's recorded function here, with its recorded input, and "
            "show what it returns or raises (the code sees no colonies client).",
            show_default=False,
        ),
    ] = None,
    code: CodeOption = None,
    step: Annotated[
        bool,
        typer.Option(
            "--pdb",
            help="With --rerun: stop in pdb at the function's first line (n, s, p, c...).",
        ),
    ] = False,
    json_output: JsonOption = False,
    host: HostOption = "localhost",
    port: PortOption = 4222,
    tls: TlsOption = False,
    colony: ColonyOption = None,
    prvkey: PrvkeyOption = None,
) -> None:
    """Show what went wrong in a workflow, or run one of its functions again here.

    For each failed process: every attempt (executor, times, errors and traceback),
    its input, the paths from the roots to it and what its failure cancelled; then the
    processes that needed retries.

    With --rerun NODENAME, run that function locally instead, with the recorded code or
    the new code of --code FILE.py, in pdb with --pdb; exit status 1 if it raises.
    """
    graphid = one_id(graph_id, processgraphid, "--processgraphid")
    if rerun is None and (code is not None or step):
        fail("--code and --pdb go with --rerun NODENAME", status=2)
    source = _read_code(code)
    entries = _history(Server(host, port, tls), graphid, colony, prvkey)
    if rerun is not None:
        funcname = _funcname_of(entries, rerun)
        debugging = stepping_into(funcname) if step else contextlib.nullcontext()
        try:
            with debugging:
                result = run_locally(entries, rerun, code=source)
        except (LookupError, ValueError) as error:
            fail(str(error))
        if json_output:
            print_json(dataclasses.asdict(result))
        else:
            _show_run(result)
        if not result.succeeded:
            raise typer.Exit(1)
        return
    report = debug_report(entries)
    if json_output:
        print_json(_debug_json(report))
        return
    status = state_text(report.state)
    if not report.failed and not report.retried:
        render(Text.assemble(f"Nothing failed in workflow {report.processgraphid}: it is ", status))
        return
    render(
        Text.assemble(
            f"Workflow {report.processgraphid} is ",
            status,
            f": {len(report.failed)} failed, {len(report.retried)} retried",
        )
    )
    for process in report.failed:
        render(Text(f"\nFAILED: {process.nodename}", style="bold red"), *_process_report(process))
    for process in report.retried:
        render(Text(f"\nRetried: {process.nodename}", style="bold"), *_process_report(process))


def _debug_json(report: DebugReport) -> dict[str, Any]:
    """The debug report as plain data: the failure event by sequence, version and summary."""

    def process(found: ProcessReport) -> dict[str, Any]:
        failure = found.failure
        return {
            **{f.name: getattr(found, f.name) for f in dataclasses.fields(found)},
            "attempts": [dataclasses.asdict(attempt) for attempt in found.attempts],
            "failure": None
            if failure is None
            else {
                "sequence": failure.sequence,
                "version": failure.version,
                "time": failure.time.isoformat(),
                "summary": failure.summary,
            },
        }

    return {
        "processgraphid": report.processgraphid,
        "colonyname": report.colonyname,
        "state": report.state,
        "failed": [process(found) for found in report.failed],
        "retried": [process(found) for found in report.retried],
    }


def _process_report(process: ProcessReport) -> list[RenderableType]:
    rows: list[tuple[str, RenderableType]] = [
        ("Process", process.processid),
        ("Function", process.funcname),
        ("State", state_text(process.state)),
        ("Input", short(process.input, 200)),
        *(("Path", " → ".join(path)) for path in process.paths),
    ]
    if process.failure is not None:
        failure = process.failure
        rows.append(
            ("Failed at", f"#{failure.version} (sequence {failure.sequence}): {failure.summary}")
        )
    if process.cancelled:
        rows.append(("Cancelled", ", ".join(process.cancelled)))
    attempts = table("ATTEMPT", "EXECUTOR", "STARTED", "ENDED", "OUTCOME", "ERROR")
    tracebacks: list[RenderableType] = []
    for attempt in process.attempts:
        attempts.add_row(
            str(attempt.attempt),
            attempt.executorname or short(attempt.executorid, 13),
            when(attempt.starttime),
            when(attempt.endtime),
            attempt.outcome,
            short(attempt.errors[0], 80) if attempt.errors else "",
        )
        for more in attempt.errors[1:]:
            tracebacks.append(Text(f"attempt {attempt.attempt}:\n{more.rstrip()}"))
    if not process.attempts:  # failed before any executor took it
        tracebacks.extend(Text(error) for error in process.errors)
    return [details(rows), attempts, *tracebacks]


def _show_run(result: LocalRun) -> None:
    render(Text(f"{result.nodename} ran here with input {short(result.input, 200)}"))
    if result.succeeded:
        render(Text(f"returned: {short(result.output, 1000)}", style="green"))
        return
    render(Text(f"raised: {result.errors[0]}", style="bold red"))
    for more in result.errors[1:]:
        render(Text(more.rstrip()))


# --------------------------------------------------------------------------- rerun


def rerun(
    graph_id: GraphIdArgument = None,
    processgraphid: GraphIdOption = None,
    from_failed: Annotated[
        bool,
        typer.Option(
            "--from-failed",
            help="Re-run from the failure (the default, and so far the only way): processes "
            "that succeeded keep their outputs and do not run again; the failed one and "
            "everything after it run.",
        ),
    ] = True,
    code: CodeOption = None,
    json_output: JsonOption = False,
    host: HostOption = "localhost",
    port: PortOption = 4222,
    tls: TlsOption = False,
    colony: ColonyOption = None,
    prvkey: PrvkeyOption = None,
) -> None:
    """Re-run a FAILED workflow as a new one, from its failure.

    Without --code the engine re-runs it (the new graph records the old one as its
    origin; succeeded processes keep their outputs). With --code FILE.py, the functions
    the file defines replace the recorded ones: succeeded processes replay their
    recorded outputs, the failed one and everything after it run, with the new code
    where the file defines their function.
    """
    given = one_id(graph_id, processgraphid, "--processgraphid")
    key = require_key(prvkey, MEMBER)
    source = _read_code(code)
    changed: list[str] = []
    with connected(Server(host, port, tls)) as client:
        graphid = resolve_graph_id(client, given, colony, key)
        if source is None:
            graph = rerun_from_failed(client, graphid, key)
        else:
            failed = client.get_processgraph(graphid, key)
            try:
                graph, changed = rerun_with_code(client, failed, source, key)
            except ValueError as error:
                fail(str(error))
    if json_output:
        print_json(graph)
    elif changed:
        render(
            Text(
                f"Workflow {graph.processgraphid} re-runs {graphid} from its failure with "
                f"new code for {', '.join(changed)}"
            )
        )
    else:
        render(Text(f"Workflow {graph.processgraphid} re-runs {graphid} from its failure"))


# --------------------------------------------------------------------------- audit


@audit_app.command(name="verify")
def audit_verify(
    graph_id: Annotated[
        str | None,
        typer.Argument(
            metavar="[ID]",
            help="Audit this workflow's events only (its colony's are read for who may do "
            "what); default: the whole log.",
            show_default=False,
        ),
    ] = None,
    processgraphid: GraphIdOption = None,
    engine_id: Annotated[
        str,
        typer.Option(
            "--engine-id",
            envvar="COLONIES_ENGINE_ID",
            help="The engine's id: the only identity that may time processes out.",
        ),
    ] = "",
    server_id: Annotated[
        str,
        typer.Option(
            "--server-id",
            envvar="COLONIES_SERVER_ID",
            help="The server owner's id: the only identity that may add and remove colonies.",
        ),
    ] = "",
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=0,
            help="Processes auditing a share of the workflows each in a whole-log audit, "
            "while this one reads the log (default: one per core; 0: this one does it "
            "all).",
            show_default=False,
        ),
    ] = None,
    json_output: JsonOption = False,
    host: HostOption = "localhost",
    port: PortOption = 4222,
    tls: TlsOption = False,
    colony: ColonyOption = None,
    seal_key: SealKeyOption = None,
    prvkey: PrvkeyOption = None,
) -> None:
    """Check that every event traces to a signed command that allowed it.

    For each event: its command's signature verifies, the signer is the event's actor,
    the command's op causes that kind of event, the signer was allowed to at that point
    of the log, and the event says what the command asked.

    With --processgraphid, a projector hands the workflow's events (those the engine
    sealed) to a member of its colony (your key). The whole log is read straight from
    the stream: it needs a NATS credential that may read it (a reader's,
    COLONIES_NATS_NKEY_FILE) and, with --seal-key, also reports what the engine did not
    seal.

    A whole-log audit shows its progress on stderr when it is a terminal (events,
    percent of the log, events/s), and ends with one line saying how many events it
    checked and how fast.

    Lists every event that does not verify (sequence, subject, why); exit status 1 if
    any does not, or there was nothing to check.
    """
    graphid = graph_id or processgraphid
    meter: LogPass | None = None
    if graph_id and processgraphid:
        graphid = one_id(graph_id, processgraphid, "--processgraphid")
    key = _key(seal_key)
    authorities = Authorities(engine_id=engine_id, server_id=server_id)
    server = Server(host, port, tls)
    if graphid:
        # A member's audit of one workflow: its events as a projector gives them.
        member = require_key(prvkey, MEMBER)
        with connected(server) as client:
            graphid = resolve_graph_id(client, graphid, colony, member)
            events = client.graph_events(graphid, member)
        everything = events.including_untrusted()
        report = asyncio.run(
            verify_graph(everything, graphid, authorities, colony, None, events.unsealed)
        )
        seals_checked = True  # by the projector, with the log's seal key when it has one
    else:
        with _reading(server):
            settings = Settings.load(nats_url=server.url)
            cipher = cipher_of(settings.cipher_key) if settings.cipher_key else None
            meter = LogPass("audit")
            report = verify(
                settings.nats,
                authorities,
                None,
                colony,
                key,
                cipher,
                workers=workers,
                progress=lambda p: meter.update(p.checked, p.position, p.last),
            )
        seals_checked = key is not None
    what = f"workflow {graphid}" if graphid else "the log"
    unsealed = sum(any(_UNSEALED_MARK in r for r in f.reasons) for f in report.findings)
    wrong_key = graphid is None and key is not None and report.checked > 0
    wrong_key = wrong_key and unsealed == report.checked
    if meter is not None and not wrong_key:  # a wrong key is one error line, nothing else
        meter.finish(report.checked, _workers_note(report.workers))
    if json_output:
        print_json(
            {
                "checked": report.checked,
                "ok": report.ok and not wrong_key,
                "sealschecked": seals_checked,
                "wrongsealkey": wrong_key,
                "findings": report.findings,
            }
        )
    elif wrong_key:
        fail(
            f"the seal key verifies none of the {report.checked} events of {what}: it is not "
            "this log's seal key (check --seal-key or COLONIES_EVENT_SEAL_KEY)"
        )
    else:
        _show_audit(report, what, seals_checked=seals_checked)
    if not report.ok or wrong_key:
        raise typer.Exit(1)


def _workers_note(workers: int) -> str:
    if workers:
        return f"in {workers} worker processes"
    return "in one process"


def _show_audit(report: AuditReport, what: str, seals_checked: bool) -> None:
    if report.checked == 0:
        render(Text(f"No events found for {what}", style="bold red"))
        return
    for finding in report.findings:
        kind = finding.kind or "-"
        render(Text(f"{finding.sequence}  {finding.subject}  {kind}: {'; '.join(finding.reasons)}"))
    if report.findings:
        render(
            Text(
                f"{len(report.findings)} of {report.checked} events of {what} do not verify",
                style="bold red",
            )
        )
    else:
        render(Text(f"All {report.checked} events of {what} verify", style="green"))
    if not seals_checked:
        render(
            Text(
                "Seals were not checked (no --seal-key or COLONIES_EVENT_SEAL_KEY): a message "
                "appended to the stream by someone else would not be noticed",
                style="yellow",
            )
        )


@audit_app.command(name="export")
def audit_export(
    graph_id: GraphIdArgument = None,
    processgraphid: GraphIdOption = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            help="Write here (default: standard output).",
            show_default=False,
            dir_okay=False,
        ),
    ] = None,
    host: HostOption = "localhost",
    port: PortOption = 4222,
    tls: TlsOption = False,
    colony: ColonyOption = None,
    prvkey: PrvkeyOption = None,
) -> None:
    """Write a workflow's history as JSON lines, one event per line.

    Each line: sequence, time, subject, topic, kind, version, actor, actorname, summary,
    the event's fields, and its signed command envelope (base64 of its exact bytes).
    """
    graphid = one_id(graph_id, processgraphid, "--processgraphid")
    entries = _history(Server(host, port, tls), graphid, colony, prvkey)
    lines = "".join(f"{line}\n" for line in export_lines(entries))
    if output is None:
        typer.echo(lines, nl=False)
        return
    try:
        output.write_text(lines)
    except OSError as error:
        fail(f"cannot write {output}: {error}")
    render(Text(f"{len(entries)} events written to {output}"))


# --------------------------------------------------------------------------- helpers


def _read_code(path: Path | None) -> str | None:
    """The source in ``path`` (None for no path), checked to parse; exit 2 otherwise."""
    if path is None:
        return None
    try:
        source = path.read_text()
        defined_functions(source)
    except OSError as error:
        fail(f"cannot read {path}: {error.strerror or error}", status=2)
    except SyntaxError as error:
        fail(f"{path} does not parse: {error.msg} (line {error.lineno})", status=2)
    return source


def _funcname_of(entries: list[HistoryEntry], nodename: str) -> str:
    """The function name of the graph's process ``nodename`` (itself when unknown)."""
    *_, (_, graph) = replay_steps(entries)
    for process in graph_state(graph).processes:
        if process.spec.nodename == nodename:
            return process.spec.funcname
    return nodename


def _key(seal_key: str | None) -> str | None:
    """The seal key, checked; exit 2 for one that is not hex of 16 bytes or more."""
    try:
        sealer_of(seal_key)
    except ValueError as error:
        fail(f"the seal key (--seal-key or COLONIES_EVENT_SEAL_KEY) is not valid: {error}", 2)
    return seal_key or None


@contextlib.contextmanager
def _reading(server: Server) -> Iterator[None]:
    """Exit with one line when the log cannot be read: at once when nothing accepts
    connections at ``server``, else when reading fails (a bounded connect)."""
    probe(server)
    try:
        yield
    except (OSError, TimeoutError, nats.errors.Error) as error:
        fail(
            f"cannot read the event log at {server.url}: {error or type(error).__name__}"
            " — is `colonies dev` running?"
        )
    except OperationalError as error:
        fail(f"cannot read the event log at {server.url}: {error}")
    except SettingsError as error:
        fail(str(error), status=2)
    except SpillFailed as error:  # the audit's own files, not the log
        fail(str(error))


class _IgnoredMessages(logging.Handler):
    """Counts the messages the history reader ignores (it logs one warning each), so
    that the command says it once, or says that the seal key is wrong."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.ignored = 0
        self.unsealed = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.ignored += 1
        self.unsealed += _UNSEALED_MARK in record.getMessage()

    @contextlib.contextmanager
    def counting(self) -> Iterator[_IgnoredMessages]:
        logger = logging.getLogger(_HISTORY_LOGGER)
        propagate, logger.propagate = logger.propagate, False
        logger.addHandler(self)
        try:
            yield self
        finally:
            logger.removeHandler(self)
            logger.propagate = propagate


def _history(
    server: Server, given_id: str, colony: str | None, prvkey: str | None
) -> list[HistoryEntry]:
    """The workflow's history, as a projector hands it to a member of its colony (the
    signed query ``graph_events``: only what the engine sealed, in clear); exit 1 when it
    has none (or not in ``colony``). ``given_id`` may be a unique prefix of the id,
    looked up among the colony's workflows. Messages that were ignored are one warning
    line on stderr, not one line each."""
    key = require_key(prvkey, MEMBER)
    with connected(server) as client, _IgnoredMessages().counting() as ignored:
        processgraphid = resolve_graph_id(client, given_id, colony, key)
        events = client.graph_events(processgraphid, key)
        entries = asyncio.run(graph_history(events, None, processgraphid))
    ignored.ignored += len(events.unsealed)
    if colony and entries and entries[0].subject.split(".")[2] != colony:
        entries = []
    if not entries:
        where = f" in colony {colony}" if colony else ""
        fail(f"process graph {processgraphid} has no events{where}")
    if ignored.ignored:
        typer.echo(
            f"warning: {ignored.ignored} message(s) on workflow {processgraphid}'s subject "
            "were ignored (not sealed by the engine, or not the next version): "
            f"`colonies audit verify {processgraphid}` lists them",
            err=True,
        )
    return entries


def _time(entry: HistoryEntry) -> str:
    """Its time in UTC, to the microsecond: ``--at`` takes it back as it is."""
    return entry.time.strftime("%Y-%m-%d %H:%M:%S.%f")


def _actor(entry: HistoryEntry) -> str:
    return entry.actorname or short(entry.actor, 13)
