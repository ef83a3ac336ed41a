"""What clients saw acknowledged: one JSON line per command the engine answered with OK.

The checker holds the event log to these lines. A line is written *after* the reply
arrived, with one unbuffered ``write`` to a file opened for appending, so a journal
survives the SIGKILL of the process writing it (the page cache belongs to the kernel) and
several processes may append to one journal (an executor and the child processes its
functions run in). A process killed
between the reply and the write leaves that command out: the journal may miss an
acknowledged command, never invent one. A half-written last line is skipped on reading.

Records (``op`` and its fields):

- ``submit``: ``graph`` (process graph id), ``processes`` (its process ids);
- ``claim``: ``process``, ``attempt``, ``executor`` (id);
- ``close``: ``process``, ``attempt``, ``executor``, ``out``;
- ``fail``: ``process``, ``attempt``, ``executor``;
- ``add_child``: ``graph``, ``parent``, ``child`` (the new process id), ``executor``;
- ``add_children``: ``graph``, ``parent``, ``children`` (the new process ids),
  ``executor``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec

from colonies_es.client import AsyncColonies, Colonies
from colonies_es.client.async_client import ChildClose, SealedClaim
from colonies_es.crypto import id_from_private_key
from colonies_es.models import FuncSpec, Process, Workflow, attempt_of
from colonies_es.models import ProcessGraph as GraphModel
from colonies_es.protocol import NextProcess

__all__ = ["Journal", "JournalingAsyncColonies", "JournalingColonies", "read_journals"]

_encoder = msgspec.json.Encoder()


class Journal:
    """An append-only file of acknowledged commands, safe to share between threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("ab", buffering=0)  # unbuffered: each write reaches the OS
        self._lock = threading.Lock()

    def record(self, op: str, **fields: Any) -> None:
        """Appends one acknowledged command (``fields`` must encode as JSON)."""
        line = _encoder.encode({"op": op, "t": time.time(), **fields}) + b"\n"
        with self._lock:
            self._file.write(line)

    def close(self) -> None:
        self._file.close()


def read_journals(paths: Sequence[Path]) -> tuple[list[dict[str, Any]], int]:
    """Every record of the journals, and how many torn lines (a writer killed mid-line)
    were skipped."""
    records: list[dict[str, Any]] = []
    torn = 0
    for path in paths:
        for line in _lines(path):
            try:
                records.append(msgspec.json.decode(line))
            except msgspec.DecodeError:
                torn += 1
    return records, torn


def _lines(path: Path) -> Iterator[bytes]:
    if path.exists():
        yield from (line for line in path.read_bytes().split(b"\n") if line.strip())


class JournalingColonies(Colonies):
    """The synchronous client, recording each acknowledged claim (``assign``, or the next
    process a ``close_and_claim``, ``close_and_next`` or ``prefetch_claim`` took), close,
    fail, add_child and submission in a :class:`Journal`. An executor given this client
    (and the code it runs, which sees it as ``colonies``) leaves the trail the checker
    needs.

    The records are made by the asynchronous client it drives
    (:class:`JournalingAsyncColonies`), so that the executor's workers, which use that
    client on its loop, record them too."""

    def __init__(self, journal: Journal, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.journal = journal
        self._arguments = (args, kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled (the executor hands its client to the child process a function runs
        in), it is a journaling client again, appending to the same journal."""
        args, kwargs = self._arguments
        return (_unpickle, (self.journal.path, args, kwargs))

    def _new_async_client(self) -> AsyncColonies:
        return JournalingAsyncColonies(
            self.journal,
            servers=self._servers,
            timeout=self._timeout,
            nkey_file=self._nkey_file,
            tls_ca_file=self._tls_ca_file,
            affinity=self._affinity,
        )


class JournalingAsyncColonies(AsyncColonies):
    """The asynchronous client, recording what :class:`JournalingColonies` says."""

    def __init__(self, journal: Journal, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.journal = journal
        self._attempts: dict[str, int] = {}  # process id -> attempt this client holds
        self._attempts_lock = threading.Lock()

    async def assign(self, colonyname: str, timeout: float, prvkey: str) -> Process:  # noqa: ASYNC109
        process = await super().assign(colonyname, timeout, prvkey)
        self._claimed(process, prvkey)
        return process

    def _claimed(self, process: Process, prvkey: str) -> None:
        attempt = attempt_of(process)
        with self._attempts_lock:
            self._attempts[process.processid] = attempt
        self.journal.record(
            "claim",
            process=process.processid,
            attempt=attempt,
            executor=id_from_private_key(prvkey),
        )

    async def close(
        self, processid: str, output: Sequence[Any], prvkey: str, attempt: int = 0
    ) -> None:
        await super().close(processid, output, prvkey, attempt)
        self._closed(processid, output, prvkey, attempt)

    async def close_and_next(
        self,
        processid: str,
        output: Sequence[Any],
        prvkey: str,
        colonyname: str,
        attempt: int = 0,
        wait: float = 0.0,
        prefetch: bool = False,
        sealed: SealedClaim | None = None,
    ) -> NextProcess:
        following = await super().close_and_next(
            processid, output, prvkey, colonyname, attempt, wait, prefetch, sealed
        )
        self._closed(processid, output, prvkey, attempt)
        if following.next is not None:
            self._claimed(following.next, prvkey)
        return following

    async def finish_child_close(
        self, handle: ChildClose, output: Sequence[Any], prvkey: str, sent: bytes | None
    ) -> NextProcess:
        by_child = sent is not None and handle.prepared is not None  # else close_and_next
        following = await super().finish_child_close(handle, output, prvkey, sent)
        if by_child:
            self._closed(handle.order.processid, output, prvkey, handle.order.attempt)
            if following.next is not None:
                self._claimed(following.next, prvkey)
        return following

    async def await_child_close(self, handle: ChildClose, prvkey: str) -> NextProcess:
        """The close's output is unknown here (its child died): only the claim is noted."""
        following = await super().await_child_close(handle, prvkey)
        if following.next is not None:
            self._claimed(following.next, prvkey)
        return following

    async def prefetch_claim(self, colonyname: str, prvkey: str) -> NextProcess:
        following = await super().prefetch_claim(colonyname, prvkey)
        if following.next is not None:
            self._claimed(following.next, prvkey)
        return following

    def _closed(self, processid: str, output: Sequence[Any], prvkey: str, attempt: int) -> None:
        self.journal.record(
            "close",
            process=processid,
            attempt=attempt or self._attempt_of(processid),
            executor=id_from_private_key(prvkey),
            out=list(output),
        )

    async def fail(
        self, processid: str, errors: Sequence[str], prvkey: str, attempt: int = 0
    ) -> None:
        await super().fail(processid, errors, prvkey, attempt)
        self.journal.record(
            "fail",
            process=processid,
            attempt=attempt or self._attempt_of(processid),
            executor=id_from_private_key(prvkey),
        )

    async def add_child(
        self,
        processgraphid: str,
        parentprocessid: str,
        childprocessid: str | None,
        funcspec: FuncSpec,
        nodename: str,
        insert: bool,
        prvkey: str,
    ) -> Process:
        child = await super().add_child(
            processgraphid, parentprocessid, childprocessid, funcspec, nodename, insert, prvkey
        )
        self.journal.record(
            "add_child",
            graph=processgraphid,
            parent=parentprocessid,
            child=child.processid,
            executor=id_from_private_key(prvkey),
        )
        return child

    async def add_children(
        self,
        processgraphid: str,
        parentprocessid: str,
        childprocessid: str | None,
        funcspecs: Sequence[FuncSpec],
        nodenames: Sequence[str],
        insert: bool,
        prvkey: str,
    ) -> list[str]:
        children = await super().add_children(
            processgraphid, parentprocessid, childprocessid, funcspecs, nodenames, insert, prvkey
        )
        self.journal.record(
            "add_children",
            graph=processgraphid,
            parent=parentprocessid,
            children=children,
            executor=id_from_private_key(prvkey),
        )
        return children

    async def submit_workflow(self, workflow: Workflow, prvkey: str) -> GraphModel:
        graph = await super().submit_workflow(workflow, prvkey)
        self.journal.record("submit", graph=graph.processgraphid, processes=list(graph.processids))
        return graph

    def _attempt_of(self, processid: str) -> int:
        with self._attempts_lock:
            return self._attempts.get(processid, 0)


def _unpickle(path: Path, args: tuple[Any, ...], kwargs: dict[str, Any]) -> JournalingColonies:
    return JournalingColonies(Journal(path), *args, **kwargs)
