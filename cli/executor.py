"""`colonies executor start`: run a python executor until Ctrl-C or SIGTERM."""

from __future__ import annotations

import gc
import logging
import signal
import sys
import threading
from types import FrameType
from typing import Annotated, NoReturn
from urllib.parse import urlsplit

import typer

from colonies_es.cli.common import COLONY_OWNER, Server, probe, refusal
from colonies_es.client import ColoniesConnectionError, ColoniesError, colonies_client
from colonies_es.executor import DEFAULT_PREFETCH, PREFETCH_PATIENCE, PythonExecutor

GC_THRESHOLDS = (20_000, 20, 20)
"""The collector's thresholds in an executor process, as in the engine's. With Python's
(700, 10, 10) collections walking the objects of every module the command imported took
11% of an executor's CPU at throughput (perf, 1,000 no-op tasks): each message through
nats-py and asyncio allocates enough to start one. The objects made while starting are
also frozen (``gc.freeze``), so no collection walks them again."""

executor_app = typer.Typer(
    help="Executors: programs that take the colony's work and run it.", no_args_is_help=True
)


_START_HELP = (
    "Run a python executor: register it in the colony, then run the functions submitted "
    "for its type (the source they carry) until Ctrl-C or SIGTERM.\n\n"
    "The executor gets a fresh identity, registered and approved with the colony owner's "
    "key. Configuration comes from the environment, as `colonies dev` writes it to dev.env: "
    "COLONIES_NATS_URL (where NATS is; without it COLONIES_SERVER_HOST, COLONIES_SERVER_PORT "
    "and COLONIES_SERVER_TLS, which in dev.env name the ColonyOS gateway instead), "
    "COLONIES_COLONY_NAME, COLONIES_COLONY_PRVKEY (required here) and COLONIES_PRVKEY.\n\n"
    "Prints where it connects, one line once registered and serving, and one per process "
    "(function, process id prefix, SUCCESS or FAILED, duration). A NATS server that cannot "
    "be reached is one error line at once. On Ctrl-C or SIGTERM it takes no more work, lets "
    "running functions finish (up to --grace seconds) and exits with status 0."
)


@executor_app.command(help=_START_HELP)
def start(
    executortype: Annotated[
        str,
        typer.Option(
            "--type", help="The executor type to take work for (the specs' executortype)."
        ),
    ],
    concurrency: Annotated[
        int, typer.Option(min=1, help="How many functions may run at once.")
    ] = 1,
    name: Annotated[
        str | None,
        typer.Option(help="Executor name; by default a unique '<type>-<8 hex>'."),
    ] = None,
    poll_timeout: Annotated[
        float,
        typer.Option(
            min=0.1, help="Seconds each wait for work lasts: about how long a stop takes."
        ),
    ] = 5.0,
    grace: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Seconds running functions get to finish after Ctrl-C or SIGTERM; "
            "a process still running then is failed.",
        ),
    ] = 30.0,
    prefetch: Annotated[
        int,
        typer.Option(
            min=0,
            help="Processes each worker claims ahead while its function runs, when more "
            "work is ready than idle executors take, so the next one starts at once; a "
            "claimed process is RUNNING (its maxexectime counts). Past "
            f"{PREFETCH_PATIENCE:g} s of a function, what waits behind it starts in a "
            "child process of its own. 0: claim only when idle.",
        ),
    ] = DEFAULT_PREFETCH,
    child_close: Annotated[
        bool,
        typer.Option(
            help="An idle worker's function child sends its process's close itself, over "
            "a NATS connection of its own (same credential and TLS), which spares the "
            "close a process wake-up; --no-child-close: the executor sends every close.",
        ),
    ] = True,
) -> None:
    """Run a python executor until Ctrl-C or SIGTERM (help: :data:`_START_HELP`)."""
    try:
        client, colonyname, colony_prvkey, _, _ = colonies_client()
    except ValueError as error:
        _fail(str(error), status=2)
    if colony_prvkey is None:
        _fail(
            "missing environment variable: COLONIES_COLONY_PRVKEY "
            "(the executor registers itself with the colony owner's key)",
            status=2,
        )
    _log_to_stdout()
    print(f"connecting to NATS at {client.url}", flush=True)
    probe(_server(client.url))
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    executor = PythonExecutor(
        client,
        colonyname,
        colony_prvkey,
        executortype=executortype,
        name=name,
        concurrency=concurrency,
        poll_timeout=poll_timeout,
        grace=grace,
        prefetch=prefetch,
        child_closes=child_close,
    )
    with client:  # disconnects at the end, whatever happens
        try:
            executor.register()
        except ColoniesConnectionError as error:
            _fail(f"cannot register executor {executor.executorname}: {error}")
        except ColoniesError as error:
            _fail(
                f"cannot register executor {executor.executorname} in colony {colonyname}: "
                + refusal(error, COLONY_OWNER)
            )
        gc.set_threshold(*GC_THRESHOLDS)
        gc.freeze()
        print(
            f"serving: running {executortype} work of colony {colonyname}, "
            f"{concurrency} at a time; Ctrl-C or SIGTERM stops",
            flush=True,
        )
        executor.run(stop)
    print(f"executor {executor.executorname} stopped", flush=True)


def _server(url: str) -> Server:
    """The :class:`Server` of a client's ``nats://host:port`` (or ``tls://``) URL."""
    parts = urlsplit(url.split(",")[0].strip())
    return Server(parts.hostname or "localhost", parts.port or 4222, parts.scheme == "tls")


def _log_to_stdout() -> None:
    """Show the executor's log lines (registration, one per process, problems) as they
    come, without decoration.

    The lines show only their message, so the records need not say where they were
    logged from or by which thread and process: those lookups are turned off for this
    process (the logging HOWTO's "Optimization"), which were half the cost of the line
    logged per process (``sys._getframe`` walks in ``findCaller``)."""
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("colonies.executor")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _fail(message: str, status: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(status)
