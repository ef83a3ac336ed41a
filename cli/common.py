"""What the read-side commands share: connection options, keys, errors and rendering.

- Options: every command takes ``--host``, ``--port`` and ``--tls`` (where NATS is),
  and, as it needs them, ``--colony`` and a key; each falls back to its ``COLONIES_*``
  variable (the ones ``colonies dev`` writes to ``dev.env``), and a flag wins over the
  variable. :func:`require` turns a missing value into a one-line error.
- :func:`connected`: a client for one command, with the engine's refusals and connection
  problems turned into one line on stderr and exit status 1 (:func:`fail`).
- Rendering: rounded rich tables for people (:func:`table`, :func:`details`), indented
  JSON with the wire names for machines (:func:`print_json`); states by name, times in UTC.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, NoReturn
from urllib.parse import urlsplit

import msgspec
import typer
from rich import box
from rich.console import Console, RenderableType
from rich.style import StyleType
from rich.table import Table
from rich.text import Text

from colonies_es.client import Colonies, ColoniesConnectionError, ColoniesError
from colonies_es.crypto import id_from_private_key
from colonies_es.models import encode
from colonies_es.settings import Settings, SettingsError
from colonies_es.states import ProcessState

__all__ = [
    "COLONY_OWNER",
    "CONNECTION_PANEL",
    "MEMBER",
    "PREFIX_SEARCH",
    "SERVER_OWNER",
    "SHORT_ID",
    "ColonyOption",
    "ColonyOwnerKeyOption",
    "CountOption",
    "HostOption",
    "JsonOption",
    "KeyRole",
    "PortOption",
    "PrvkeyOption",
    "Server",
    "ServerOwnerKeyOption",
    "TlsOption",
    "WideOption",
    "ago",
    "compact",
    "connected",
    "details",
    "executor_label",
    "executor_names",
    "fail",
    "ident",
    "listing",
    "moment",
    "more_note",
    "one_id",
    "print_json",
    "probe",
    "refusal",
    "render",
    "require",
    "require_colony",
    "require_key",
    "resolve_graph_id",
    "resolve_id",
    "resolve_process_id",
    "short",
    "state_name",
    "state_text",
    "table",
    "when",
]

CONNECTION_PANEL = "Connection (flags override COLONIES_* variables)"
PROBE_TIMEOUT = 3.0
"""Seconds to wait for the TCP handshake with NATS before saying it cannot be reached."""
UNLIMITED_WIDTH = 250
"""Output width when stdout is not a terminal: whole ids and lines, for grep and files."""


# --------------------------------------------------------------------------- options

HostOption = Annotated[
    str,
    typer.Option(
        "--host",
        envvar="COLONIES_SERVER_HOST",
        help="Host of the NATS server the engine listens on (COLONIES_NATS_URL, when set, "
        "wins over COLONIES_SERVER_HOST/PORT, which dev.env points at the ColonyOS gateway).",
        rich_help_panel=CONNECTION_PANEL,
    ),
]
PortOption = Annotated[
    int,
    typer.Option(
        "--port",
        envvar="COLONIES_SERVER_PORT",
        min=1,
        max=65535,
        help="Port of the NATS server.",
        rich_help_panel=CONNECTION_PANEL,
    ),
]
TlsOption = Annotated[
    bool,
    typer.Option(
        "--tls/--no-tls",
        envvar="COLONIES_SERVER_TLS",
        help="Connect with TLS (tls://).",
        rich_help_panel=CONNECTION_PANEL,
    ),
]
ColonyOption = Annotated[
    str | None,
    typer.Option(
        "--colony",
        envvar="COLONIES_COLONY_NAME",
        help="Name of the colony.",
        show_default=False,
        rich_help_panel=CONNECTION_PANEL,
    ),
]
PrvkeyOption = Annotated[
    str | None,
    typer.Option(
        "--prvkey",
        envvar="COLONIES_PRVKEY",
        help="Your private key: a member of the colony (approved executor or user).",
        show_default=False,
        rich_help_panel=CONNECTION_PANEL,
    ),
]
ColonyOwnerKeyOption = Annotated[
    str | None,
    typer.Option(
        "--colony-prvkey",
        envvar="COLONIES_COLONY_PRVKEY",
        help="The colony owner's private key.",
        show_default=False,
        rich_help_panel=CONNECTION_PANEL,
    ),
]
ServerOwnerKeyOption = Annotated[
    str | None,
    typer.Option(
        "--server-prvkey",
        envvar="COLONIES_SERVER_PRVKEY",
        help="The server owner's private key (its id is the engine's server id).",
        show_default=False,
        rich_help_panel=CONNECTION_PANEL,
    ),
]
JsonOption = Annotated[
    bool,
    typer.Option(
        "--json", help="Print JSON (ColonyOS field names) instead of tables, for scripts."
    ),
]
CountOption = Annotated[
    int, typer.Option("--count", min=1, help="List at most this many (the newest).")
]
WideOption = Annotated[
    bool,
    typer.Option(
        "--wide",
        "-w",
        help="Show whole ids and exact times (UTC) instead of id prefixes and ages.",
    ),
]

SHORT_ID = 12
"""Characters of an id shown in tables (any unique prefix is accepted back)."""
PREFIX_SEARCH = 1000
"""How many of a colony's newest workflows or processes a short id is looked for in."""


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Server:
    """Where the NATS server the engine listens on is.

    ``COLONIES_NATS_URL``, when set, wins over ``COLONIES_SERVER_HOST/PORT/TLS`` (as in
    :func:`colonies_es.colonies_client`): ``colonies dev`` sets both, and there
    ``COLONIES_SERVER_*`` name the ColonyOS gateway, which pycolonies reads. ``--host``,
    ``--port`` or ``--tls`` given on the command line win over both.
    """

    host: str
    port: int
    tls: bool

    def __post_init__(self) -> None:
        nats_url = os.environ.get("COLONIES_NATS_URL", "").split(",")[0].strip()
        if not nats_url or _on_command_line("--host", "--port", "--tls", "--no-tls"):
            return
        parts = urlsplit(nats_url if "://" in nats_url else f"nats://{nats_url}")
        object.__setattr__(self, "host", parts.hostname or "localhost")
        object.__setattr__(self, "port", parts.port or 4222)
        object.__setattr__(self, "tls", parts.scheme == "tls")

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://{self.host}:{self.port}"


def _on_command_line(*flags: str) -> bool:
    """True if one of ``flags`` (``--host``...) is on this process's command line."""
    return any(arg.split("=", 1)[0] in flags for arg in sys.argv[1:])


@dataclass(frozen=True)
class KeyRole:
    """A key a command may need: what it is, and where it comes from."""

    what: str
    envvar: str
    flag: str


MEMBER = KeyRole("private key", "COLONIES_PRVKEY", "--prvkey")
COLONY_OWNER = KeyRole("colony owner key", "COLONIES_COLONY_PRVKEY", "--colony-prvkey")
SERVER_OWNER = KeyRole("server owner key", "COLONIES_SERVER_PRVKEY", "--server-prvkey")


def fail(message: str, status: int = 1) -> NoReturn:
    """Print ``error: <message>`` on stderr and exit with ``status``."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(status)


def require(value: str | None, what: str, envvar: str, flag: str) -> str:
    """``value``, or exit with status 2 saying how to give it."""
    if not value:
        fail(f"no {what}: set {envvar} or pass {flag}", status=2)
    return value


def require_colony(value: str | None) -> str:
    """The colony name, or exit with status 2 saying how to give it."""
    return require(value, "colony", "COLONIES_COLONY_NAME", "--colony")


def require_key(value: str | None, role: KeyRole) -> str:
    """The key for ``role``, checked to be a private key; or exit with status 2."""
    key = require(value, role.what, role.envvar, role.flag)
    try:
        id_from_private_key(key)
    except ValueError as error:
        fail(f"the {role.what} ({role.envvar} or {role.flag}) is not valid: {error}", status=2)
    return key


def one_id(positional: str | None, option: str | None, flag: str) -> str:
    """The id given either as the positional argument or as ``flag``; exit 2 otherwise."""
    if positional and option and positional != option:
        fail(f"two different ids given: {positional} and {flag} {option}", status=2)
    given = positional or option
    if not given:
        fail(f"no id given: pass it as an argument or with {flag}", status=2)
    return given


# --------------------------------------------------------------------------- the client


@contextlib.contextmanager
def connected(server: Server, role: KeyRole = MEMBER) -> Iterator[Colonies]:
    """A client of the engine behind ``server`` for the body of the ``with``.

    Exits with status 1 and one line on stderr when NATS cannot be reached, no engine
    answers, or the engine refuses a command (:func:`refusal`: what went wrong and what
    to do; a refused key is named by ``role``). The connection is closed at the end,
    whatever happens.
    """
    probe(server)
    try:
        # The flags (or their variables) say where NATS is; the settings add the
        # caller's NATS credential and TLS CA.
        settings = Settings.load(nats_url=server.url)
    except SettingsError as error:
        fail(str(error), status=2)
    client = Colonies.from_settings(settings)
    try:
        yield client
    except ColoniesError as error:
        fail(refusal(error, role))
    except ColoniesConnectionError as error:
        fail(f"{error} — is `colonies dev` running?")
    finally:
        client.disconnect()


def refusal(error: ColoniesError, role: KeyRole = MEMBER) -> str:
    """The engine's refusal in words, without its status code: what went wrong and,
    where it helps, what to do."""
    message = error.message or "no reason given"
    match error.status:
        case 400:
            return f"refused: {message}"
        case 403:
            return f"not allowed: {message} (the key comes from {role.envvar} or {role.flag})"
        case 408:
            return f"timed out: {message}"
        case 409:
            return f"cannot now: {message}"
        case 413:
            return f"too large: {message}"
        case 404:
            return message
        case _ if error.status >= 500:
            return f"the engine failed: {message} (its log says more)"
        case _:
            return message


def probe(server: Server) -> None:
    """Fail at once, with the reason, when nothing accepts connections at ``server``
    (a NATS client would retry until its timeout)."""
    try:
        with socket.create_connection((server.host, server.port), timeout=PROBE_TIMEOUT):
            pass
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        if isinstance(error, TimeoutError):
            reason = f"no answer within {PROBE_TIMEOUT:g} s"
        fail(f"cannot reach NATS at {server.url}: {reason.lower()} — is `colonies dev` running?")


def executor_names(client: Colonies, colonyname: str, prvkey: str) -> dict[str, str]:
    """Executor id -> name, for the colony's registered executors."""
    return {e.executorid: e.executorname for e in client.list_executors(colonyname, prvkey)}


def executor_label(executorid: str, names: dict[str, str]) -> str:
    """The executor's name when known, else the start of its id; ``"-"`` for none."""
    if not executorid:
        return "-"
    return names.get(executorid) or short(executorid, 13)


# --------------------------------------------------------------------------- rendering

_STATE_STYLES = {
    ProcessState.WAITING: "yellow",
    ProcessState.RUNNING: "cyan",
    ProcessState.SUCCESS: "green",
    ProcessState.FAILED: "bold red",
    ProcessState.CANCELLED: "dim",
}


def _console() -> Console:
    """A console as wide as the terminal (or as ``COLUMNS`` says); when stdout is not a
    terminal and ``COLUMNS`` is unset, wide enough that lines never wrap."""
    sized = sys.stdout.isatty() or os.environ.get("COLUMNS", "").isdigit()
    return Console(highlight=False, width=None if sized else UNLIMITED_WIDTH)


def render(*renderables: RenderableType) -> None:
    """Print tables and text for people (plain, and wide enough, when not a terminal)."""
    console = _console()
    for renderable in renderables:
        console.print(renderable)


def print_json(obj: object) -> None:
    """Print a model, a list of models or plain data as indented JSON (wire names)."""
    typer.echo(msgspec.json.format(encode(obj), indent=2).decode())


class _PlainTable(Table):
    """A table whose text cells are shown as they are (no rich markup in data), and
    whose "whole" columns are always as wide as their widest cell (never cut)."""

    whole: frozenset[int] = frozenset()

    def add_row(
        self,
        *renderables: RenderableType | None,
        style: StyleType | None = None,
        end_section: bool = False,
    ) -> None:
        cells = [Text(cell) if isinstance(cell, str) else cell for cell in renderables]
        for index in self.whole:
            cell = cells[index] if index < len(cells) else None
            if isinstance(cell, Text):
                column = self.columns[index]
                column.min_width = max(column.min_width or 0, cell.cell_len)
        super().add_row(*cells, style=style, end_section=end_section)


def table(*headers: str, ids: Iterable[str] = (), cut: Iterable[str] = ()) -> Table:
    """A rounded table with ``headers``. The columns named in ``ids`` never wrap nor
    shrink, so ids (and states, times) stay whole and can be copied; those named in
    ``cut`` stay on one line, cut with an ellipsis when the terminal is narrow; the
    others wrap."""
    keep_whole, one_line = set(ids), set(cut)
    result = _PlainTable(box=box.ROUNDED)
    result.whole = frozenset(i for i, header in enumerate(headers) if header in keep_whole)
    for header in headers:
        if header in keep_whole:
            result.add_column(header, no_wrap=True, min_width=len(header))
        elif header in one_line:
            # Wrappable, so that rich narrows these first; a word too long is cut.
            result.add_column(header, overflow="ellipsis")
        else:
            result.add_column(header, overflow="fold")
    return result


def listing(*headers: str, whole: Iterable[str] = ()) -> Table:
    """A table for a listing: those named in ``whole`` (ids, states, times) are never
    cut, the others are cut with an ellipsis when the terminal is narrow."""
    kept = set(whole)
    return table(*headers, ids=kept, cut=[h for h in headers if h not in kept])


def ident(value: str, wide: bool = False) -> str:
    """An id as tables show it: its first :data:`SHORT_ID` characters, whole if ``wide``."""
    return value if wide else value[:SHORT_ID]


def more_note(shown: int, asked: int, what: str) -> None:
    """Say on stderr that a listing was cut at ``asked`` rows and how to see more."""
    if shown > asked:
        typer.echo(f"(the newest {asked} {what} shown; more with --count {asked * 5})", err=True)


def ago(moment: datetime | None, now: datetime | None = None) -> str:
    """``"12s ago"``, ``"5m ago"``, ``"3h ago"``, ``"2d ago"``; ``"-"`` for no moment."""
    if moment is None:
        return "-"
    seconds = max(0, int(((now or datetime.now(UTC)) - moment).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def moment(value: datetime | None, wide: bool) -> str:
    """A time as a listing shows it: its age, or the exact time (UTC) when ``wide``."""
    return when(value) if wide else ago(value)


def resolve_id(given: str, kind: str, candidates: Callable[[], Iterable[str]]) -> str:
    """The whole id that ``given`` (an id or a unique prefix of one) names.

    A 64-character id is taken as it is; a shorter one is looked for among
    ``candidates()`` (the ids the command can list). Exits with one line when no id, or
    more than one, starts with it.
    """
    wanted = given.strip().lower()
    if len(wanted) >= 64:
        return wanted
    if not wanted:
        fail(f"no {kind} id given", status=2)
    found = sorted({c for c in candidates() if c.startswith(wanted)})
    if not found:
        fail(f"no {kind} id starts with {given!r} (give more of it, or the whole id)")
    if len(found) > 1:
        listed = ", ".join(ident(f) for f in found[:5]) + (", ..." if len(found) > 5 else "")
        fail(f"{given!r} starts {len(found)} {kind} ids ({listed}): give more characters")
    return found[0]


def resolve_graph_id(client: Colonies, given: str, colony: str | None, prvkey: str) -> str:
    """:func:`resolve_id` for a workflow id, among the colony's newest workflows."""

    def candidates() -> list[str]:
        colonyname = require(
            colony, "colony (to look up a short id)", "COLONIES_COLONY_NAME", "--colony"
        )
        graphs = client.get_processgraphs(colonyname, PREFIX_SEARCH, prvkey)
        return [graph.processgraphid for graph in graphs]

    return resolve_id(given, "workflow", candidates)


def resolve_process_id(client: Colonies, given: str, colony: str | None, prvkey: str) -> str:
    """:func:`resolve_id` for a process id, among the colony's newest processes."""

    def candidates() -> list[str]:
        colonyname = require(
            colony, "colony (to look up a short id)", "COLONIES_COLONY_NAME", "--colony"
        )
        processes = client.list_processes(colonyname, PREFIX_SEARCH, -1, prvkey)
        return [process.processid for process in processes]

    return resolve_id(given, "process", candidates)


def details(rows: Iterable[tuple[str, RenderableType]]) -> Table:
    """A rounded two-column table of names and values (one object's attributes)."""
    result = _PlainTable(box=box.ROUNDED, show_header=False)
    result.add_column(style="bold", no_wrap=True)
    result.add_column(overflow="fold")
    for name, value in rows:
        result.add_row(name, value)
    return result


def state_name(code: int) -> str:
    """``"SUCCESS"`` for 2: a process or graph state by name."""
    try:
        return ProcessState(code).name
    except ValueError:
        return str(code)


def state_text(code: int) -> Text:
    """The state's name, coloured on terminals."""
    try:
        style = _STATE_STYLES[ProcessState(code)]
    except ValueError:
        style = ""
    return Text(state_name(code), style=style)


def when(moment: datetime | None) -> str:
    """``"2024-01-15 10:30:00"`` in UTC, or ``"-"`` for a moment not come."""
    if moment is None:
        return "-"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def compact(value: Any) -> str:
    """``value`` as compact one-line JSON; a string as it is, its lines joined."""
    if isinstance(value, str):
        return " ".join(value.split())
    return msgspec.json.encode(value).decode()


def short(value: Any, width: int = 40) -> str:
    """:func:`compact` ``value``, cut to ``width`` characters with an ellipsis."""
    text = compact(value)
    return text if len(text) <= width else text[: width - 1] + "…"
