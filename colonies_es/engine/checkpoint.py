"""Checkpoints: an engine's live state at a known log position, so a replica starts from
it and reads only the log after it, instead of replaying the whole log.

A checkpoint is a :class:`Checkpoint`: the state's :class:`~.state.LiveState` (the ids of
the resident aggregates, the map of legacy process ids, who was heard from) and the commands of the
retry window (replay guard and replies, :mod:`.replies`), taken at stream sequence
``sequence``. It names the resident aggregates instead of storing them: whoever restores
reads each from its own subject up to ``sequence``, so aggregates always come from the
log and a checkpoint can only ever be wrong about derived data.

**Where it lives.** A stream of its own, ``<log stream>_CHECKPOINTS`` (subjects
``<prefix>.ckpt.>``, one message per subject, file storage, the log's replica count):

- ``<prefix>.ckpt.data.<id>.<n>``: the body in chunks of :data:`CHUNK_BYTES` (a long
  history's graph ids outgrow NATS's message limit);
- ``<prefix>.ckpt.head``: a small :class:`Head` naming the newest complete checkpoint (its
  id, number of chunks, size, SHA-256, the log it belongs to), sealed with the log's seal
  key (the same keyed BLAKE2b as events, :class:`~colonies_es.store.codec.Sealer`).

The body is msgpack, encrypted with the log's cipher (eventsourcing's AES-GCM) when
``COLONIES_CIPHER_KEY`` is set. Only the engine role may use the stream: the other
roles' NATS permissions (:mod:`colonies_es.nats_auth`) name only the log's streams.

**Several writers.** The head is written with optimistic concurrency
(``Nats-Expected-Last-Subject-Sequence``, as events are) and only over a head of a lower
sequence: the newest sequence wins, a writer that lost removes its chunks. Writers first
look at the head and skip when a recent enough checkpoint exists (:meth:`CheckpointStore.due`),
so replicas take turns instead of all writing. The chunks of the checkpoint before the
previous one are purged after each write: a replica reading the previous head meanwhile
still finds its chunks.

**Refused checkpoints.** :meth:`CheckpointStore.read` returns no checkpoint, with the
reason, when there is none, the head fails its seal, is of another format, stream or
stream incarnation (a stream deleted and made again has another creation time), is ahead
of the log, or its body is incomplete, fails its digest, cannot be decrypted or decoded.
The engine then replays the whole log and logs that reason in one line.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid

import msgspec
import nats.errors
import nats.js.errors
from eventsourcing.persistence import Cipher
from nats.aio.client import Client as NATS
from nats.js.api import DiscardPolicy, StorageType, StreamConfig

from colonies_es.engine.replies import RememberedCommand, SeenCommands
from colonies_es.engine.state import EngineState, LiveState
from colonies_es.store import JetStreamApplicationRecorder
from colonies_es.store.codec import Sealer

__all__ = [
    "CHECKPOINT_EVENTS",
    "CHECKPOINT_SECONDS",
    "CHUNK_BYTES",
    "FORMAT",
    "READS",
    "Checkpoint",
    "CheckpointStore",
    "CheckpointWriter",
    "Head",
    "Refused",
]

log = logging.getLogger("colonies.engine")

FORMAT = 2
"""The checkpoint format written. 2: process ids derive to their graph, so a checkpoint
lists only the processes whose id does not (legacy ids) and their graphs."""

READS = (1, 2)
"""The formats read; a head of another is refused (the log is replayed, and the engine
says why in one line). Format 1, written before derived ids, listed every graph and
every process: all of them legacy ids, so its process list is exactly the legacy map
(its other graphs are not needed) and an upgraded engine starts from it instead of
replaying the whole log."""

CHUNK_BYTES = 512 * 1024
"""Bytes of body per chunk message (under NATS's default 1 MB message limit)."""

PARALLEL_CHUNKS = 8
"""Chunks written or read at once."""

CHECKPOINT_EVENTS = 100_000
"""A replica writes a checkpoint once the log has moved this many events past the last
one (its own or another replica's)."""

CHECKPOINT_SECONDS = 600.0
"""... or once this many seconds have passed since the last one, if the log moved."""

CHECK_INTERVAL = 5.0
"""Seconds between the writer's looks at the log's position."""

_ERR_WRONG_LAST_SEQUENCE = 10071


class Checkpoint(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An engine's derived state at log position ``state.applied`` (see the module doc)."""

    state: LiveState
    commands: list[RememberedCommand]

    @property
    def sequence(self) -> int:
        return self.state.applied


class Head(msgspec.Struct, frozen=True):
    """The pointer to the newest checkpoint (``<prefix>.ckpt.head``)."""

    format: int
    stream: str
    """The event log's stream name."""
    stream_created: str
    """The log stream's creation time: another incarnation of the stream is another log."""
    sequence: int
    """The log position the checkpoint's state is at."""
    id: str
    """The token naming its chunks' subjects."""
    chunks: int
    size: int
    digest: bytes
    """SHA-256 of the stored body (after encryption)."""
    encrypted: bool
    previous: str
    """The id of the checkpoint this one replaced ("" for none)."""
    written_at: float
    writer: str
    """The id of the engine that wrote it."""


_body_encoder = msgspec.msgpack.Encoder()
_body_decoder = msgspec.msgpack.Decoder(Checkpoint)
_head_decoder = msgspec.msgpack.Decoder(Head)


class Refused(Exception):
    """A checkpoint that cannot be used; the message says why."""


class CheckpointStore:
    """Reads and writes the checkpoints of one event log (see the module doc)."""

    def __init__(
        self,
        nc: NATS,
        log_stream: str = "COLONIES",
        subject_prefix: str = "colonies",
        *,
        replicas: int = 1,
        sealer: Sealer | None = None,
        cipher: Cipher | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.nc = nc
        self.log_stream = log_stream
        self.stream = f"{log_stream}_CHECKPOINTS"
        self.prefix = f"{subject_prefix}.ckpt"
        self.head_subject = f"{self.prefix}.head"
        self.replicas = replicas
        self.sealer = sealer
        self.cipher = cipher
        self.js = nc.jetstream(timeout=timeout)

    @classmethod
    def of_log(
        cls, nc: NATS, recorder: JetStreamApplicationRecorder, cipher: Cipher | None
    ) -> CheckpointStore:
        """The checkpoints of the log ``recorder`` writes (its stream, subject prefix,
        replicas and seal key), encrypted with ``cipher`` (the events' cipher)."""
        return cls(
            nc,
            recorder.spec.name,
            recorder.subject_prefix.removesuffix(".ev"),
            replicas=recorder.spec.replicas,
            sealer=recorder.connection.sealer,
            cipher=cipher,
        )

    def _data_subject(self, checkpoint_id: str, number: int) -> str:
        return f"{self.prefix}.data.{checkpoint_id}.{number}"

    async def ensure_stream(self) -> None:
        """Creates the checkpoint stream if it is missing."""
        config = StreamConfig(
            name=self.stream,
            subjects=[f"{self.prefix}.>"],
            storage=StorageType.FILE,
            num_replicas=self.replicas,
            max_msgs_per_subject=1,
            discard=DiscardPolicy.OLD,
            allow_direct=True,
        )
        try:
            await self.js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            try:
                await self.js.add_stream(config)
            except nats.js.errors.BadRequestError:  # made meanwhile by another replica
                await self.js.stream_info(self.stream)

    async def _log_created(self) -> tuple[str, int]:
        """The event log stream's creation time and last sequence."""
        info = await self.js.stream_info(self.log_stream)
        created = info.created.isoformat() if info.created is not None else ""
        return created, info.state.last_seq

    # ----------------------------------------------------------------- reading

    async def head(self) -> tuple[Head, int] | None:
        """The newest head and its stream sequence, None when there is none. Raises
        :class:`Refused` for a head that fails its seal or cannot be decoded."""
        found = await self._raw_head()
        return None if found is None else (self._open_head(found[0]), found[1])

    async def _raw_head(self) -> tuple[bytes, int] | None:
        """The head message's payload and stream sequence, unchecked (None: none)."""
        try:
            message = await self.js.get_last_msg(self.stream, self.head_subject, direct=True)
        except (nats.js.errors.NotFoundError, nats.errors.NoRespondersError):
            return None  # no head, or no checkpoint stream yet
        return message.data or b"", message.seq or 0

    def _open_head(self, payload: bytes) -> Head:
        if self.sealer is not None:
            if not self.sealer.is_sealed(self.head_subject, payload):
                raise Refused("its head fails the seal check (not written with this seal key)")
            payload = payload[: -Sealer.SIZE]
        try:
            return _head_decoder.decode(payload)
        except msgspec.DecodeError as error:
            raise Refused(f"its head cannot be decoded ({error})") from None

    async def read(self) -> tuple[Checkpoint | None, str]:
        """The newest usable checkpoint, or None and the reason (see the module doc)."""
        try:
            found = await self.head()
            if found is None:
                return None, "no checkpoint yet"
            head, _ = found
            created, last = await self._log_created()
            if head.format not in READS:
                raise Refused(f"it has format {head.format}, this engine reads {READS}")
            if head.stream != self.log_stream or head.stream_created != created:
                raise Refused(
                    f"it belongs to stream {head.stream!r} created {head.stream_created}, "
                    f"not to {self.log_stream!r} created {created}"
                )
            if head.sequence > last:
                raise Refused(f"it is at sequence {head.sequence}, beyond the log's end {last}")
            body = await self._read_body(head)
            return self._decode_body(head, body), ""
        except Refused as refused:
            return None, str(refused)
        except (nats.errors.Error, OSError, TimeoutError) as error:
            return None, f"it could not be read ({error!r})"

    async def _read_body(self, head: Head) -> bytes:
        async def chunk(number: int) -> bytes:
            subject = self._data_subject(head.id, number)
            try:
                message = await self.js.get_last_msg(self.stream, subject, direct=True)
            except nats.js.errors.NotFoundError:
                raise Refused(f"its chunk {number} of {head.chunks} is missing") from None
            return message.data or b""

        parts: list[bytes] = []
        for start in range(0, head.chunks, PARALLEL_CHUNKS):
            numbers = range(start, min(start + PARALLEL_CHUNKS, head.chunks))
            parts.extend(await asyncio.gather(*(chunk(number) for number in numbers)))
        body = b"".join(parts)
        if len(body) != head.size or hashlib.sha256(body).digest() != head.digest:
            raise Refused("its body does not match the digest of its head")
        return body

    def _decode_body(self, head: Head, body: bytes) -> Checkpoint:
        if head.encrypted:
            if self.cipher is None:
                raise Refused("it is encrypted and no COLONIES_CIPHER_KEY is set")
            try:
                body = self.cipher.decrypt(body)
            except Exception:
                raise Refused("COLONIES_CIPHER_KEY does not decrypt it") from None
        elif self.cipher is not None:
            raise Refused("it was written without encryption and COLONIES_CIPHER_KEY is set")
        try:
            checkpoint = _body_decoder.decode(body)
        except msgspec.DecodeError as error:
            raise Refused(f"its body cannot be decoded ({error})") from None
        if checkpoint.sequence != head.sequence:
            raise Refused(f"its body is at {checkpoint.sequence}, its head says {head.sequence}")
        return checkpoint

    # ----------------------------------------------------------------- writing

    async def newest(self) -> int:
        """The sequence of the newest checkpoint (0: none, or a head that is refused)."""
        try:
            found = await self.head()
        except Refused:
            return 0
        return found[0].sequence if found is not None else 0

    async def write(self, checkpoint: Checkpoint, writer: str) -> bool:
        """Stores ``checkpoint`` and points the head at it, unless the head already names
        one at the same or a later sequence; True when this one became the head."""
        body = _body_encoder.encode(checkpoint)
        if self.cipher is not None:
            body = self.cipher.encrypt(body)
        checkpoint_id = uuid.uuid4().hex
        chunks = [body[at : at + CHUNK_BYTES] for at in range(0, len(body), CHUNK_BYTES)] or [b""]
        await self.ensure_stream()
        created, _ = await self._log_created()
        for start in range(0, len(chunks), PARALLEL_CHUNKS):
            await asyncio.gather(
                *(
                    self.js.publish(self._data_subject(checkpoint_id, number), chunks[number])
                    for number in range(start, min(start + PARALLEL_CHUNKS, len(chunks)))
                )
            )
        try:
            outcome = await self._point_head(
                Head(
                    format=FORMAT,
                    stream=self.log_stream,
                    stream_created=created,
                    sequence=checkpoint.sequence,
                    id=checkpoint_id,
                    chunks=len(chunks),
                    size=len(body),
                    digest=hashlib.sha256(body).digest(),
                    encrypted=self.cipher is not None,
                    previous="",
                    written_at=time.time(),
                    writer=writer,
                )
            )
        except BaseException:
            await self._purge(checkpoint_id)
            raise
        won, replaced = outcome
        if not won:
            await self._purge(checkpoint_id)
            return False
        if replaced is not None and replaced.previous:
            await self._purge(replaced.previous)  # the one before the previous: unread now
        return True

    async def _point_head(self, head: Head) -> tuple[bool, Head | None]:
        """Writes ``head`` over an older one (optimistic concurrency). Returns whether it
        did, and the head it replaced (None if there was none)."""
        for _attempt in range(5):
            raw = await self._raw_head()
            previous: Head | None = None
            if raw is not None:
                try:
                    previous = self._open_head(raw[0])
                except Refused:
                    previous = None  # a head we cannot trust is replaced
            if previous is not None and previous.sequence >= head.sequence:
                return False, previous
            expected = raw[1] if raw is not None else 0
            if previous is not None:
                head = msgspec.structs.replace(head, previous=previous.id)
            payload = _body_encoder.encode(head)
            if self.sealer is not None:
                payload = self.sealer.seal_bytes(self.head_subject, payload)
            try:
                await self.js.publish(
                    self.head_subject,
                    payload,
                    headers={"Nats-Expected-Last-Subject-Sequence": str(expected)},
                )
            except nats.js.errors.APIError as error:
                if error.err_code == _ERR_WRONG_LAST_SEQUENCE:
                    continue  # another replica wrote a head meanwhile: look again
                raise
            return True, previous
        return False, None

    async def _purge(self, checkpoint_id: str) -> None:
        try:
            await self.js.purge_stream(self.stream, subject=f"{self.prefix}.data.{checkpoint_id}.>")
        except (nats.errors.Error, OSError) as error:
            log.warning("could not remove checkpoint %s: %r", checkpoint_id, error)


class CheckpointWriter:
    """Writes a replica's checkpoints: every ``every`` events or ``interval`` seconds
    (if the log moved), unless another replica has just written one, and a last one at
    a clean shutdown (:meth:`write_final`).

    The cost is bounded: a checkpoint copies the state's indices on the engine's loop
    (dict copies), packs them on a worker thread and writes them in chunks; the live
    aggregates are only named. Several replicas take turns: each looks at the head
    first and counts from the newest checkpoint, whoever wrote it.
    """

    def __init__(
        self,
        store: CheckpointStore,
        state: EngineState,
        seen: SeenCommands,
        writer: str,
        *,
        every: int = CHECKPOINT_EVENTS,
        interval: float = CHECKPOINT_SECONDS,
    ) -> None:
        self.store = store
        self.state = state
        self.seen = seen
        self.writer = writer
        self.every = every
        self.interval = interval
        self.last = 0
        """The sequence of the newest checkpoint this replica knows of."""
        self._last_time = time.monotonic()

    async def run_forever(self, check_interval: float = CHECK_INTERVAL) -> None:
        """Writes checkpoints as the log moves, until cancelled."""
        try:
            self.last = await self.store.newest()
        except (nats.errors.Error, OSError) as error:
            log.warning("could not read the checkpoint head: %r", error)
        while True:
            await asyncio.sleep(check_interval)
            applied = self.state.applied
            moved = applied - self.last
            if moved >= self.every or (
                moved > 0 and time.monotonic() - self._last_time >= self.interval
            ):
                await self.write(skip_within=self.every // 2)

    async def write_final(self) -> bool:
        """A checkpoint at this replica's position unless the head is already there."""
        if self.state.applied <= self.last:
            return False
        return await self.write(skip_within=0)

    async def write(self, skip_within: int) -> bool:
        """Writes a checkpoint at the state's position unless the head is within
        ``skip_within`` events of it; True if one was written. Failures are logged."""
        try:
            applied = self.state.applied
            newest = await self.store.newest()
            if newest >= applied - skip_within:  # another replica has just written one
                self.last = max(self.last, newest)
                self._last_time = time.monotonic()
                return False
            pack = self.state.capture()  # on the loop: a consistent copy
            commands = self.seen.capture()
            started = time.perf_counter()
            live = await asyncio.to_thread(pack)
            wrote = await self.store.write(Checkpoint(live, commands), self.writer)
        except (nats.errors.Error, OSError, ValueError, Refused) as error:
            log.warning("could not write a checkpoint: %r", error)
            return False
        self.last = max(self.last, live.applied)
        self._last_time = time.monotonic()
        if wrote:
            log.info(
                "checkpoint written at sequence %d in %.2f s (%d resident aggregates)",
                live.applied,
                time.perf_counter() - started,
                len(live.resident),
            )
        return wrote
