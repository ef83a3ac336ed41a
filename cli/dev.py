"""`colonies dev`: run the local development stack until Ctrl-C; `--demo` runs the seed's
workflows on it and stops.

The stack, started in this order and stopped in reverse (so nothing loses its server
while shutting down): the embedded nats-server with JetStream (with ``--cluster N``, N
nats-servers joined into one JetStream cluster, the log's streams replicated on N nodes),
the ColonyOS gateway (`colonies gateway`, HTTP for pycolonies and other ColonyOS clients),
the engine (`colonies server`; ``--engines N`` runs N of them in the queue group), the
projector (`colonies projector`, the read model), then the python executors
(`colonies executor start`) and the web UI (`colonies ui`, reading as the colony's member
user). Between the engine and
the executors, the development colony and its member user are made (first run) or found
again (later runs; :mod:`.dev_colony`). Everything lives in the data directory: the
JetStream store, ``keys.json``, ``dev.env`` and one log file per process.
"""

from __future__ import annotations

import contextlib
import fcntl
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer
from rich.console import Console

from colonies_es.cli.dev_auth import DevAuth, prepare_auth
from colonies_es.cli.dev_colony import (
    DevKeys,
    dev_environment,
    ensure_colony,
    executor_environment,
    export_lines,
    load_or_create_keys,
    write_env_file,
)
from colonies_es.cli.dev_demo import run_demo
from colonies_es.cli.dev_stack import (
    ChildProcess,
    ClusterComponent,
    DevError,
    DevStack,
    NatsComponent,
    StopSignals,
    wait_until,
)
from colonies_es.client import Colonies, ColoniesConnectionError, ColoniesError
from colonies_es.crypto import id_from_private_key
from colonies_es.embedded import NatsServer, NatsServerError
from colonies_es.embedded_cluster import NatsCluster
from colonies_es.executor import DEFAULT_PREFETCH
from colonies_es.gateway import DEFAULT_PORT as DEFAULT_GATEWAY_PORT
from colonies_es.settings import Settings
from colonies_es.states import ExecutorState
from colonies_es.tls import TlsFiles, make_dev_tls, tls_block

CONFIG_FILE_NAME = "nats.conf"
DEFAULT_PORT = 4222
DEFAULT_DATA_DIR = Path(".colonies")
EXECUTOR_TYPE = "python-executor"
ENGINE_READY_LINE = "colonies engine ready"
PROJECTOR_READY_LINE = "colonies projector ready"
GATEWAY_READY = re.compile(r"colonies gateway ready on https?://\S+:(\d+)")
START_TIMEOUT = 30.0  # seconds each process may take to start (the engine replays the log)
EXECUTOR_OPTIONS = ("--poll-timeout", "1", "--grace", "5")
"""Stop within about a second when idle, give running functions 5 s to finish."""
_CHECK_INTERVAL = 0.1  # seconds between two health checks while running
UI_READY_LINE = "colonies ui ready at"
DEFAULT_UI_PORT = 0
"""A free port: the link changes with every run anyway (its access token does)."""


@dataclass(frozen=True)
class DevOptions:
    port: int
    host: str
    data_dir: Path
    executors: int
    demo: bool
    ui_port: int | None = DEFAULT_UI_PORT
    """The web UI's port (0: a free one); None: no web UI."""
    cluster: int = 0
    """Nodes of the embedded JetStream cluster; 0 runs one plain nats-server."""
    engines: int = 1
    gateway_port: int = DEFAULT_GATEWAY_PORT
    """The ColonyOS gateway's HTTP port (0: a free one)."""
    auth: bool = True
    """NATS authorization: a credential per component (:mod:`.dev_auth`)."""
    tls: bool = False
    """NATS over TLS only, with a CA and certificate of the stack's own."""
    concurrency: int = 1
    """Workers of each python executor (its ``--concurrency``)."""
    prefetch: int = DEFAULT_PREFETCH
    """Processes each worker of a python executor claims ahead (its ``--prefetch``)."""

    @property
    def replicas(self) -> int:
        """Copies of the log's streams: one per cluster node (1 without a cluster)."""
        return max(self.cluster, 1)


@contextlib.contextmanager
def _config_path(config: Path | None) -> Iterator[Path]:
    """Yield the nats-server configuration file to use.

    An explicit ``--config`` must exist. Without it: ``./nats.conf`` if present (the
    repository's file, which a developer may edit), else the copy shipped in the package.
    """
    if config is not None:
        if not config.is_file():
            raise DevError(f"config file not found: {config}")
        yield config.resolve()
        return
    local = Path(CONFIG_FILE_NAME)
    if local.is_file():
        yield local.resolve()
        return
    # colonies_es/nats.conf is a byte-for-byte copy of the repository's nats.conf (a test
    # keeps them identical): an installed package does not include the repository root.
    # as_file also works when the package is not a plain directory (e.g. a zip).
    with resources.as_file(resources.files("colonies_es") / CONFIG_FILE_NAME) as packaged:
        yield packaged


@contextlib.contextmanager
def _exclusive(data_dir: Path) -> Iterator[None]:
    """Hold ``<data_dir>/dev.lock``: two stacks on one store would corrupt it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / "dev.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DevError(
                f"another `colonies dev` is running on {data_dir}; stop it or use another "
                "--data-dir"
            ) from None
        yield


def _echo(message: str = "") -> None:
    typer.echo(message)
    sys.stdout.flush()


def _error(message: str) -> None:
    typer.echo(f"colonies dev: error: {message}", err=True)


def _start_nats(stack: DevStack, options: DevOptions, config_file: Path) -> NatsServer:
    server = NatsServer(
        options.data_dir / "jetstream",
        port=options.port,
        config=config_file,
        host=options.host,
        log_file=options.data_dir / "nats-server.log",
    )
    server.start()
    stack.add(NatsComponent(server))
    _echo(f"nats-server listening on {server.url}")
    _echo(f"  data dir: {options.data_dir}")
    _echo(f"  log file: {server.log_file}")
    _echo(f"  config:   {config_file}")
    return server


def _start_cluster(
    stack: DevStack, options: DevOptions, config_file: Path, nkey_file: str = ""
) -> NatsCluster:
    """Start ``options.cluster`` nats-servers as one JetStream cluster: node i listens for
    clients on ``--port`` + i (free ports with 0) and keeps its store in
    ``<data-dir>/cluster/node-<i>``."""
    size = options.cluster
    ports = [options.port + index for index in range(size)] if options.port else None
    cluster = NatsCluster(
        options.data_dir / "cluster",
        size,
        ports=ports,
        config=config_file,
        host=options.host,
        log_dir=options.data_dir,
        nkey_file=nkey_file,  # the engine's, for the cluster's own checks
    )
    cluster.start()
    stack.add(ClusterComponent(cluster))
    _echo(
        f"nats cluster {cluster.name!r} of {size} nodes, streams with {options.replicas} replicas"
    )
    for node in cluster.nodes:
        _echo(f"  nats-server listening on {node.url} (log: {node.log_file})")
    _echo(f"  data dir: {options.data_dir}")
    _echo(f"  config:   {config_file}")
    return cluster


def _start_service(
    stack: DevStack, service: ChildProcess, ready_line: str, stop: StopSignals
) -> bool:
    """Start `colonies server` or `colonies projector`; True once it logged
    ``ready_line``, False if interrupted first."""
    service.start()
    stack.add(service)
    ready: bool = wait_until(
        lambda: ready_line in service.output(),
        watch=[service],
        timeout=START_TIMEOUT,
        interrupted=stop,
        what=f"the {service.name} was",
        logs=str(service.log_file),
    )
    if ready:
        _echo(f"{service.name} ready (log: {service.log_file})")
    return ready


def _default_gateway_port(host: str) -> int:
    """ColonyOS's port 50080, or 0 (a free one) when something already listens there."""
    with socket.socket() as probe:
        try:
            probe.bind((host, DEFAULT_GATEWAY_PORT))
        except OSError:
            return 0
    return DEFAULT_GATEWAY_PORT


def _start_gateway(
    stack: DevStack,
    options: DevOptions,
    nats_url: str,
    stop: StopSignals,
    access: dict[str, str] | None = None,
) -> int | None:
    """Start `colonies gateway`; its HTTP port once it listens, None if interrupted.

    It needs nothing but NATS (no key, no secret): it forwards what ColonyOS clients
    signed to the engine, which verifies it. ``access``: its NATS credential (the
    developer's: a client that may take the dev types' work) and TLS CA variables.
    """
    gateway = ChildProcess(
        "gateway",
        [
            "gateway",
            "--nats",
            nats_url,
            "--host",
            options.host,
            "--port",
            str(options.gateway_port),
        ],
        {"COLONIES_NATS_URL": nats_url, **(access or {})},
        options.data_dir / "gateway.log",
    )
    gateway.start()
    stack.add(gateway)
    if not wait_until(
        lambda: GATEWAY_READY.search(gateway.output()) is not None,
        watch=[gateway],
        timeout=START_TIMEOUT,
        interrupted=stop,
        what="the gateway was",
        logs=str(gateway.log_file),
    ):
        return None
    found = GATEWAY_READY.search(gateway.output())
    assert found is not None
    port = int(found.group(1))
    _echo(
        f"ColonyOS gateway (pycolonies) on http://{options.host}:{port} (log: {gateway.log_file})"
    )
    return port


def _engine(
    keys: DevKeys, environment: dict[str, str], data_dir: Path, number: int = 1
) -> ChildProcess:
    """`colonies server` (the ``number``-th replica): it reads the server id, the seal key
    and the stream replicas from the environment."""
    suffix = "" if number == 1 else f"-{number}"
    return ChildProcess(
        f"engine{suffix}",
        ["server", "--no-projector", "--nats", environment["COLONIES_NATS_URL"]],
        {**environment, "COLONIES_ENGINE_PRVKEY": keys.engine_prvkey},
        data_dir / f"engine{suffix}.log",
    )


def _projector(environment: dict[str, str], data_dir: Path) -> ChildProcess:
    """`colonies projector`: the read model in ``<data_dir>/view.sqlite``; it reads the
    seal key from the environment."""
    return ChildProcess(
        "projector",
        ["projector", "--nats", environment["COLONIES_NATS_URL"]],
        {**environment, "COLONIES_PROJECTOR_DB": str(data_dir / "view.sqlite")},
        data_dir / "projector.log",
    )


def _approved_executors(client: Colonies, keys: DevKeys) -> set[str]:
    """Ids of the colony's approved executors of the dev type."""
    return {
        executor.executorid
        for executor in client.list_executors(keys.colonyname, keys.colony_prvkey)
        if executor.executortype == EXECUTOR_TYPE and executor.state == ExecutorState.APPROVED
    }


def _start_executors(
    stack: DevStack,
    client: Colonies,
    keys: DevKeys,
    environment: dict[str, str],
    options: DevOptions,
    stop: StopSignals,
) -> bool:
    """Start the python executors; True once all of them registered, False if
    interrupted. An executor is ready when the colony lists one more approved executor."""
    if options.executors == 0:
        return True
    known = _approved_executors(client, keys)
    started = []
    for number in range(1, options.executors + 1):
        suffix = "" if number == 1 else f"-{number}"
        executor = ChildProcess(
            f"executor{suffix}",
            [
                *("executor", "start", "--type", EXECUTOR_TYPE, *EXECUTOR_OPTIONS),
                *("--concurrency", str(options.concurrency)),
                *("--prefetch", str(options.prefetch)),
            ],
            executor_environment(environment),
            options.data_dir / f"executor{suffix}.log",
        )
        executor.start()
        stack.add(executor)
        started.append(executor)
    logs = ", ".join(str(executor.log_file) for executor in started)
    ready: bool = wait_until(
        lambda: len(_approved_executors(client, keys) - known) >= len(started),
        watch=started,
        timeout=START_TIMEOUT,
        interrupted=stop,
        what="the executors were",
        logs=logs,
    )
    if ready:
        count = f"{len(started)} executors" if len(started) > 1 else "executor"
        _echo(f"{count} ({EXECUTOR_TYPE}) ready (log: {logs})")
    return ready


def _start_ui(
    stack: DevStack,
    keys: DevKeys,
    environment: dict[str, str],
    options: DevOptions,
    stop: StopSignals,
) -> str | None:
    """`colonies ui` on 127.0.0.1, reading as the colony's member user (with neither the
    owners' keys nor the log's seal key); returns its link (None if interrupted, or with
    no UI). Its log holds the link and so the access token: it is private (0600), as
    dev.env is."""
    if options.ui_port is None:
        return None
    log_file = options.data_dir / "ui.log"
    log_file.touch(mode=0o600)
    log_file.chmod(0o600)  # also when an earlier run left it readable
    service = ChildProcess(
        "web UI",
        ["ui", "--ui-port", str(options.ui_port)],
        {
            **executor_environment(environment),  # a client: no server-side secrets
            "COLONIES_COLONY_PRVKEY": "",
            "COLONIES_ENGINE_ID": id_from_private_key(keys.engine_prvkey),
        },
        log_file,
    )
    if not _start_service(stack, service, UI_READY_LINE, stop):
        return None
    line = next(line for line in service.output().splitlines() if UI_READY_LINE in line)
    return str(line.split(UI_READY_LINE, 1)[1]).strip()


def _serve(
    stack: DevStack,
    environment: dict[str, str],
    env_file: Path,
    stop: StopSignals,
    ui_url: str | None = None,
) -> str | None:
    """Print how to use the stack and run until a stop signal (None) or a failure."""
    _echo()
    for line in export_lines(environment):
        _echo(line)
    _echo()
    _echo(f"source {env_file}")
    if ui_url is not None:
        _echo(f"web UI: {ui_url}")
    _echo("colonies dev is running; press Ctrl-C to stop.")
    problem: str | None = None
    while not stop() and problem is None:
        time.sleep(_CHECK_INTERVAL)
        problem = stack.failure()
    return problem


def _prepare_auth(options: DevOptions, config_file: Path, keys: DevKeys) -> DevAuth | None:
    """The stack's NATS credentials and the server configuration naming them (None with
    ``--no-auth``)."""
    if not options.auth:
        return None
    auth = prepare_auth(options.data_dir, config_file, keys.colonyname, EXECUTOR_TYPE)
    _echo(f"NATS authorization on: credentials in {auth.engine.parent} (--no-auth: off)")
    _echo(f"  config: {auth.config} ({config_file} + accounts)")
    return auth


@dataclass(frozen=True)
class _DevTls:
    files: TlsFiles
    config: Path
    """The server configuration with the tls block."""


def _prepare_tls(options: DevOptions, config_file: Path) -> _DevTls | None:
    """With ``--tls``: the stack's CA and server certificate (made once, in
    ``<data-dir>/tls``), and ``config_file`` followed by the tls block."""
    if not options.tls:
        return None
    files = make_dev_tls(options.data_dir / "tls", [options.host])
    config = options.data_dir / "nats-tls.conf"
    config.write_text(
        f"# Written by `colonies dev --tls`: {config_file}, then the tls block.\n"
        f"{config_file.read_text()}\n\n{tls_block(files)}"
    )
    _echo(f"NATS over TLS only: CA {files.ca} (COLONIES_TLS_CA_FILE)")
    return _DevTls(files, config)


class _Roles:
    """The environment of each kind of process: the stack's variables with the NATS
    credential of its role (all the same without authorization)."""

    def __init__(self, environment: dict[str, str], auth: DevAuth | None) -> None:
        def role(credential: str) -> dict[str, str]:
            if auth is None:
                return dict(environment)
            with_credential: dict[str, str] = auth.environment(
                environment, getattr(auth, credential)
            )
            return with_credential

        self.engine = role("engine")
        self.reader = role("reader")
        """The projector and the web UI: read the log, send queries and commands."""
        self.executor = role("executor")
        self.developer = role("developer")
        """dev.env, the demo and the colony's set-up: a client that may run executors."""


def _run(options: DevOptions, stop: StopSignals, config_file: Path) -> int:
    """Start the stack, serve it (or run the demo), stop it; return the exit code.

    Every child process gets the stack's ``COLONIES_*`` variables (executors without the
    server side's secrets), so each can be told apart by its ``COLONIES_NATS_URL``.
    """
    stack = DevStack(_error)
    problem: str | None = None
    demo_right = True
    try:
        keys = load_or_create_keys(options.data_dir)
        auth = _prepare_auth(options, config_file, keys)
        nats_config = auth.config if auth else config_file
        tls = _prepare_tls(options, nats_config)
        if tls is not None:
            nats_config = tls.config
        if options.cluster:
            engine_nkey = str(auth.engine) if auth else ""
            urls = _start_cluster(stack, options, nats_config, engine_nkey).urls
        else:
            urls = [_start_nats(stack, options, nats_config).url]
        if tls is not None:  # clients must use TLS, and verify the server with the CA
            urls = [url.replace("nats://", "tls://", 1) for url in urls]
        first = urlsplit(urls[0])
        host = first.hostname or "127.0.0.1"
        access = {"COLONIES_TLS_CA_FILE": str(tls.files.ca)} if tls else {}
        if auth is not None:
            access["COLONIES_NATS_NKEY_FILE"] = str(auth.developer)
        gateway_port = _start_gateway(stack, options, ",".join(urls), stop, access)
        if gateway_port is None:
            return 0
        # COLONIES_SERVER_HOST/PORT name the gateway (pycolonies reads them); this
        # system's own client and commands use COLONIES_NATS_URL.
        environment = {
            **dev_environment(keys, host, gateway_port, ",".join(urls)),
            "COLONIES_STREAM_REPLICAS": str(options.replicas),
            **({"COLONIES_TLS_CA_FILE": str(tls.files.ca)} if tls else {}),
        }
        roles = _Roles(environment, auth)
        environment = roles.developer
        for number in range(1, options.engines + 1):  # replicas that follow one log
            engine = _engine(keys, roles.engine, options.data_dir, number)
            if not _start_service(stack, engine, ENGINE_READY_LINE, stop):
                return 0
        projector = _projector(roles.reader, options.data_dir)
        if not _start_service(stack, projector, PROJECTOR_READY_LINE, stop):
            return 0
        with Colonies.from_settings(Settings.load(environment)) as client:
            state = "created" if ensure_colony(client, keys) else "found"
            _echo(f"colony {keys.colonyname} {state} (keys: {options.data_dir / 'keys.json'})")
            env_file = write_env_file(options.data_dir, environment)
            if not _start_executors(stack, client, keys, roles.executor, options, stop):
                return 0
            ui_url = None if options.demo else _start_ui(stack, keys, roles.reader, options, stop)
            if ui_url is None and options.ui_port is not None and not options.demo:
                return 0
            if options.demo:
                _echo()
                demo_right = run_demo(client, keys.colonyname, keys.user_prvkey, Console())
                problem = stack.failure()
        if not options.demo:
            problem = _serve(stack, environment, env_file, stop, ui_url)
    finally:
        stack.stop()
    if problem is not None:
        _error(problem)
        return 1
    _echo("colonies dev stopped.")
    if not demo_right:
        _error("the demo gave a wrong result")
        return 1
    return 0


def dev(
    port: Annotated[
        int | None,
        typer.Option(
            help="Port for NATS clients (engine, executors, CLI); 0 picks a free one. "
            f"Default: {DEFAULT_PORT}, or a free one with --demo.",
            show_default=False,
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Folder for all local state: JetStream data, keys.json, dev.env and the "
            f"logs. Default: {DEFAULT_DATA_DIR}, or a temporary folder with --demo.",
            show_default=False,
        ),
    ] = None,
    gateway_port: Annotated[
        int | None,
        typer.Option(
            help="HTTP port of the ColonyOS gateway (pycolonies); 0 picks a free one. "
            f"Default: {DEFAULT_GATEWAY_PORT} (a free one if it is taken, or with --demo or "
            "--port 0).",
            show_default=False,
        ),
    ] = None,
    executors: Annotated[int, typer.Option(min=0, help="Python executors to run (0: none).")] = 1,
    concurrency: Annotated[
        int,
        typer.Option(
            min=1,
            help="Functions each python executor runs at a time, each in a child process "
            "of its own. One executor of N costs less CPU per function than N executors "
            "of one (it wakes once for several messages).",
        ),
    ] = 1,
    prefetch: Annotated[
        int,
        typer.Option(
            min=0,
            help="Processes each worker of a python executor claims ahead while its "
            "function runs, when there is more work than idle executors (see `colonies "
            "executor start --help`); 0: claim only when idle.",
        ),
    ] = DEFAULT_PREFETCH,
    demo: Annotated[
        bool,
        typer.Option(
            "--demo",
            help="Run the tutorial's workflows on a fresh stack, print their results and "
            "tables, then stop (exit 1 if a result is wrong).",
        ),
    ] = False,
    config: Annotated[
        Path | None,
        typer.Option(
            help="nats-server configuration file. Default: ./nats.conf if present, else "
            "the copy shipped with colonies-es. --port and --host win over the file's; "
            "the file must not set jetstream.store_dir (--data-dir decides).",
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on (0.0.0.0 for all interfaces).")
    ] = "127.0.0.1",
    ui_port: Annotated[
        int,
        typer.Option(
            "--ui-port",
            min=0,
            max=65535,
            help="Port of the web UI (`colonies ui`, on 127.0.0.1); 0 picks a free one.",
        ),
    ] = DEFAULT_UI_PORT,
    no_ui: Annotated[
        bool, typer.Option("--no-ui", help="Do not start the web UI (--demo never does).")
    ] = False,
    cluster: Annotated[
        int,
        typer.Option(
            help="Run N nats-servers as one JetStream cluster (3 or 5; the log's streams "
            "get N replicas, so any one node may die). Node i listens on --port + i; every "
            "component gets all the URLs. 0: one plain nats-server.",
            show_default=False,
        ),
    ] = 0,
    engines: Annotated[
        int, typer.Option(min=1, help="Engine replicas (`colonies server`) to run.")
    ] = 1,
    auth: Annotated[
        bool,
        typer.Option(
            "--auth/--no-auth",
            help="NATS authorization: every component connects with a credential of its "
            "own (<data-dir>/creds, mode 0600) limited to its role; anonymous connections "
            "are refused. dev.env points at the developer's credential.",
        ),
    ] = True,
    tls: Annotated[
        bool,
        typer.Option(
            "--tls",
            help="Serve NATS over TLS only, with a CA and server certificate made for the "
            "stack (<data-dir>/tls); every component verifies the server with the CA "
            "(COLONIES_TLS_CA_FILE in dev.env, tls:// URLs).",
        ),
    ] = False,
) -> None:
    """Run a local development stack: nats-server with JetStream, the ColonyOS gateway
    (HTTP, for pycolonies), the engine, the projector, a python executor and the web UI
    (its link is printed), with a colony `dev` and its keys (written to
    <data-dir>/dev.env, read by both pycolonies and this system's client).

    Runs until Ctrl-C or SIGTERM, stops everything in reverse order and exits 0. A later
    run on the same data directory keeps the colony, the keys and the log. Startup errors
    (busy port, engine failing, ...) print one line and exit 1.
    """
    if demo and executors == 0:
        _error("--demo needs an executor (--executors 1 or more)")
        raise typer.Exit(2)
    if cluster not in (0, 3, 5):
        _error(f"--cluster takes 3 or 5 nodes (a majority must survive a loss), not {cluster}")
        raise typer.Exit(2)
    port = port if port is not None else 0 if demo else DEFAULT_PORT
    if gateway_port is None:
        gateway_port = 0 if demo or port == 0 else _default_gateway_port(host)
    temporary = demo and data_dir is None  # the demo's own folder, removed if all went well
    if temporary:
        directory = Path(tempfile.mkdtemp(prefix="colonies-demo-"))
    else:
        directory = (data_dir or DEFAULT_DATA_DIR).resolve()
    code = 1
    try:
        with (
            StopSignals().installed() as stop,
            _config_path(config) as config_file,
            _exclusive(directory),
        ):
            options = DevOptions(
                port,
                host,
                directory,
                executors,
                demo,
                None if no_ui else ui_port,
                cluster,
                engines,
                gateway_port=gateway_port,
                auth=auth,
                tls=tls,
                concurrency=concurrency,
                prefetch=prefetch,
            )
            code = _run(options, stop, config_file)
    except (DevError, NatsServerError, ColoniesError, ColoniesConnectionError) as error:
        _error(error.summary if isinstance(error, NatsServerError) else str(error))
    except OSError as error:
        _error(str(error))
    if temporary and code == 0:
        shutil.rmtree(directory, ignore_errors=True)
    elif temporary:
        _error(f"its logs are kept in {directory}")
    if code != 0:
        raise typer.Exit(code)
