"""`colonies dev`: run a local development stack until Ctrl-C.

For now the stack is one component, the embedded nats-server with JetStream. The engine, the
projector and an executor will join it: each is started in order, added to a
:class:`DevStack`, watched while the stack runs, and stopped in reverse order (so nothing
loses its server while shutting down).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from types import FrameType
from typing import Annotated, Protocol

import typer

from colonies_es.embedded import NatsServer, NatsServerError

CONFIG_FILE_NAME = "nats.conf"
_CHECK_INTERVAL = 0.1  # seconds between two health checks while running


class DevError(Exception):
    """`colonies dev` cannot go on; the message is one line for the user."""


class Component(Protocol):
    """A running part of the development stack."""

    name: str

    def failure(self) -> str | None:
        """Return None while the component works, else one line saying what went wrong."""
        ...

    def stop(self) -> None:
        """Stop the component; must be bounded in time and safe to call twice."""
        ...


class NatsComponent:
    """The embedded nats-server as a stack component."""

    name = "nats-server"

    def __init__(self, server: NatsServer) -> None:
        self.server = server

    def failure(self) -> str | None:
        """Report the server's unexpected exit, pointing at its log."""
        if self.server.running:
            return None
        return f"nats-server exited unexpectedly (see {self.server.log_file})"

    def stop(self) -> None:
        """Stop the server gracefully (SIGTERM, then SIGKILL after a timeout)."""
        self.server.stop()


class DevStack:
    """Started components, stopped in reverse order of start."""

    def __init__(self) -> None:
        self.components: list[Component] = []

    def add(self, component: Component) -> None:
        """Record a component that has started (it will be watched and stopped)."""
        self.components.append(component)

    def failure(self) -> str | None:
        """Return the first failure reported by a component, or None if all work."""
        for component in self.components:
            problem = component.failure()
            if problem is not None:
                return problem
        return None

    def stop(self) -> None:
        """Stop every component, last started first; a failing stop does not stop the rest."""
        while self.components:
            component = self.components.pop()
            try:
                component.stop()
            except Exception as error:
                _error(f"stopping {component.name} failed: {error}")


class _StopSignals:
    """Turns SIGINT and SIGTERM into a flag instead of an exception, while active.

    A flag (rather than KeyboardInterrupt) lets shutdown run in order, even if the signal
    arrives in the middle of something, and repeats of the signal do not interrupt it.
    """

    def __init__(self) -> None:
        self.received: int | None = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    @contextlib.contextmanager
    def installed(self) -> Iterator[_StopSignals]:
        """Install the handlers for the duration of the block, then restore the old ones."""
        previous = {
            sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


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


def _echo(message: str) -> None:
    typer.echo(message)
    sys.stdout.flush()


def _error(message: str) -> None:
    typer.echo(f"colonies dev: error: {message}", err=True)


def _run(port: int, host: str, data_dir: Path, config: Path | None) -> int:
    """Start the stack, run until a stop signal or a failure, stop it; return the exit code."""
    stack = DevStack()
    problem: str | None = None
    with _StopSignals().installed() as signals, _config_path(config) as config_file:
        try:
            data_dir = data_dir.resolve()
            server = NatsServer(
                data_dir / "jetstream",
                port=port,
                config=config_file,
                host=host,
                log_file=data_dir / "nats-server.log",
            )
            server.start()
            stack.add(NatsComponent(server))
            _echo(f"nats-server listening on {server.url}")
            _echo(f"  data dir: {data_dir}")
            _echo(f"  log file: {server.log_file}")
            _echo(f"  config:   {config_file}")
            _echo("colonies dev is running; press Ctrl-C to stop.")

            while signals.received is None and problem is None:
                time.sleep(_CHECK_INTERVAL)
                problem = stack.failure()
        finally:
            stack.stop()
    if problem is not None:
        _error(problem)
        return 1
    _echo("colonies dev stopped.")
    return 0


def dev(
    port: Annotated[
        int,
        typer.Option(help="Port for NATS clients (engine, executors, CLI); 0 picks a free one."),
    ] = 4222,
    data_dir: Annotated[
        Path,
        typer.Option(
            help="Folder for all local state: JetStream data in <data-dir>/jetstream, "
            "the server log in <data-dir>/nats-server.log.",
        ),
    ] = Path(".colonies"),
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
) -> None:
    """Run a local development stack: an embedded nats-server with JetStream.

    Prints where it listens, then runs until Ctrl-C or SIGTERM, stops and exits 0.
    Startup errors (busy port, no nats-server binary, bad config) print one line, exit 1.
    """
    try:
        code = _run(port, host, data_dir, config)
    except (DevError, NatsServerError) as error:
        _error(error.summary if isinstance(error, NatsServerError) else str(error))
        raise typer.Exit(1) from None
    except OSError as error:
        _error(str(error))
        raise typer.Exit(1) from None
    if code != 0:
        raise typer.Exit(code)
