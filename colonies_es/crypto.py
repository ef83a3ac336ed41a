"""Identities, signatures and the signed command envelope.

Keys and ids are ColonyOS-compatible:

* a private key is a secp256k1 scalar written as 64 lowercase hex characters;
* a public key is written uncompressed, ``"04" + X + Y`` in lowercase hex (130 characters);
* an id is ``sha3_256(public_key_hex.encode("ascii")).hexdigest()`` (NIST SHA3-256 of the
  *text* of the public key, not of its bytes), 64 lowercase hex characters.

A signature is ECDSA over SHA-256 of the exact signed bytes, written as ``r || s``
(two 32-byte big-endian integers, 128 lowercase hex characters). It cannot be verified
alone: the signer's public key travels with it, and the verifier checks both the
signature and that the public key hashes to the id it acts for.

secp256k1 runs on coincurve (libsecp256k1): it signs in ~45 us and verifies in ~75 us
where OpenSSL through ``cryptography`` took ~350 us and ~260 us (and its Ed25519 verify
~90 us). Its signatures are low-``s``; signatures made before (by OpenSSL, either ``s``)
still verify: :func:`verify` accepts ``(r, n - s)`` as ECDSA does.

Commands travel as a :class:`SignedCommand` envelope (msgspec JSON) around a payload
(msgspec JSON of ``{"op", "nonce", "ts", "body"}``). :func:`seal` builds one,
:func:`open_command` checks one (shape, signature, freshness) and names the caller,
and :class:`ReplayGuard` refuses a command seen before. Envelopes are self-contained,
so an audit can re-check a stored one offline with :func:`authenticate`.
"""

import functools
import hashlib
import heapq
import math
import re
import secrets
import time
from typing import Annotated, Any, TypeVar

import coincurve
import msgspec
from coincurve._libsecp256k1 import ffi as _ffi  # type: ignore[import-not-found]
from coincurve._libsecp256k1 import lib as _lib
from coincurve.context import GLOBAL_CONTEXT as _SECP256K1
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = [
    "DEFAULT_MAX_SKEW",
    "CommandPayload",
    "CommandRejected",
    "Crypto",
    "ReplayGuard",
    "Session",
    "SessionCertificate",
    "SignedCommand",
    "VerifiedCommand",
    "authenticate",
    "bad_signature_reason",
    "id_from_private_key",
    "id_from_public_key",
    "new_private_key",
    "open_command",
    "public_key",
    "seal",
    "sign",
    "sign_command",
    "signature_holds",
    "verify",
]

T = TypeVar("T")

DEFAULT_MAX_SKEW = 60.0
"""Seconds a command's timestamp may differ from the verifier's clock (either way)."""

_KEY_CACHE_SIZE = 4096

_PRIVATE_KEY_RE = re.compile(r"[0-9a-fA-F]{64}")
_PUBLIC_KEY_RE = re.compile(r"04[0-9a-f]{128}")
_SIGNATURE_RE = re.compile(r"[0-9a-f]{128}")

PublicKeyHex = Annotated[str, msgspec.Meta(pattern="^04[0-9a-f]{128}$")]
SignatureHex = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{128}$")]
NonceHex = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{32}$")]
OpName = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


# --------------------------------------------------------------------------- keys and ids


def new_private_key() -> str:
    """Return a fresh random private key: 64 lowercase hex characters."""
    return coincurve.PrivateKey().secret.hex()


@functools.lru_cache(maxsize=_KEY_CACHE_SIZE)
def _load_private_key(prvkey: str) -> coincurve.PrivateKey:
    if not _PRIVATE_KEY_RE.fullmatch(prvkey):
        raise ValueError("a private key is 64 hex characters")
    try:
        return coincurve.PrivateKey(bytes.fromhex(prvkey))
    except ValueError:
        raise ValueError("private key out of range for secp256k1") from None


@functools.lru_cache(maxsize=_KEY_CACHE_SIZE)
def _load_public_key(public_key_hex: str) -> coincurve.PublicKey:
    # Callers have checked the text form; this raises ValueError for a point off the curve.
    return coincurve.PublicKey(bytes.fromhex(public_key_hex))


@functools.lru_cache(maxsize=_KEY_CACHE_SIZE)
def public_key(prvkey: str) -> str:
    """Return the uncompressed public key (``"04" + X + Y``, 130 lowercase hex) of ``prvkey``.

    Raises ``ValueError`` if ``prvkey`` is not a valid secp256k1 private key.
    """
    return _load_private_key(prvkey).public_key.format(compressed=False).hex()


@functools.lru_cache(maxsize=_KEY_CACHE_SIZE)  # pure, and asked for every command checked
def id_from_public_key(public_key_hex: str) -> str:
    """Return the id (64 lowercase hex) owned by an uncompressed public key.

    The id is the SHA3-256 of the ASCII text of the key, as in ColonyOS. Raises
    ``ValueError`` unless ``public_key_hex`` is ``"04"`` followed by 128 lowercase hex
    characters (the canonical text form, so one key has exactly one id).
    """
    if not _PUBLIC_KEY_RE.fullmatch(public_key_hex):
        raise ValueError("a public key is '04' followed by 128 lowercase hex characters")
    return hashlib.sha3_256(public_key_hex.encode("ascii")).hexdigest()


def id_from_private_key(prvkey: str) -> str:
    """Return the id of the identity holding ``prvkey`` (raises ``ValueError`` if invalid)."""
    return id_from_public_key(public_key(prvkey))


# --------------------------------------------------------------------------- signatures


def sign(data: bytes | str, prvkey: str) -> str:
    """Sign ``data`` (``str`` is signed as its UTF-8 bytes) with ``prvkey``.

    Returns ECDSA-secp256k1-SHA256 as ``r || s``: 128 lowercase hex characters, with
    the low ``s`` and the RFC 6979 nonce (the same data and key give the same signature;
    commands differ anyway by their nonce). Raises ``ValueError`` if ``prvkey`` is invalid.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    # The compact recoverable form is r || s || recovery id: r || s is its first 64 bytes.
    return _load_private_key(prvkey).sign_recoverable(data)[:64].hex()


def verify(data: bytes, signature: str, public_key: str) -> bool:
    """Return whether ``signature`` (``r || s`` hex) is ``public_key``'s signature of ``data``.

    Never raises: a malformed signature or key, or a point off the curve, is ``False``.
    It does not say who the signer is: compare :func:`id_from_public_key` with the
    claimed id for that.
    """
    if not _SIGNATURE_RE.fullmatch(signature) or not _PUBLIC_KEY_RE.fullmatch(public_key):
        return False
    try:
        key = _load_public_key(public_key)
    except ValueError:
        return False
    # r || s straight into libsecp256k1 (coincurve's verify takes DER only: building
    # and parsing it cost 12 us of the 75): r or s out of range does not parse, a zero
    # does not verify.
    parsed = _ffi.new("secp256k1_ecdsa_signature *")
    context = _SECP256K1.ctx
    if not _lib.secp256k1_ecdsa_signature_parse_compact(context, parsed, bytes.fromhex(signature)):
        return False
    # libsecp256k1 verifies low-s signatures only; (r, s) and (r, n - s) are both valid
    # ECDSA signatures of the same data, and OpenSSL made either.
    _lib.secp256k1_ecdsa_signature_normalize(context, parsed, parsed)
    digest = hashlib.sha256(data).digest()
    return bool(_lib.secp256k1_ecdsa_verify(context, parsed, digest, key.public_key))


class Crypto:
    """The pycolonies ``Crypto`` surface: keys, ids and signatures as hex strings.

    A thin facade over this module's functions, kept for client compatibility.
    Signatures are ``r || s`` and need the signer's public key to verify (there is no
    ``recoverid``): see :func:`verify`.
    """

    def prvkey(self) -> str:
        """Return a fresh random private key (64 lowercase hex)."""
        return new_private_key()

    def id(self, prvkey: str) -> str:
        """Return the ColonyOS id of ``prvkey`` (64 lowercase hex)."""
        return id_from_private_key(prvkey)

    def public_key(self, prvkey: str) -> str:
        """Return the uncompressed public key of ``prvkey`` (130 lowercase hex)."""
        return public_key(prvkey)

    def sign(self, data: bytes | str, prvkey: str) -> str:
        """Return the ``r || s`` hex signature of ``data`` by ``prvkey``."""
        return sign(data, prvkey)

    def verify(self, data: bytes | str, signature: str, public_key: str) -> bool:
        """Return whether ``signature`` is ``public_key``'s signature of ``data``."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        return verify(data, signature, public_key)


# --------------------------------------------------------------------------- commands


class CommandRejected(Exception):
    """A command refused before it reached the domain: 400 malformed, 403 not authentic."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


SessionKeyHex = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]


class SessionCertificate(msgspec.Struct, frozen=True):
    """An identity's statement that an Ed25519 *session key* speaks for it until
    ``expires`` (unix seconds), signed (secp256k1) by the identity key.

    secp256k1 costs ~350 us to sign and ~260 us to verify, Ed25519 ~27 us and ~87 us: a
    client signs its commands with a session key, and a server verifies each certificate
    once (then caches it). The certificate travels with every command, so the offline
    audit still traces each command to the identity.
    """

    session_key: SessionKeyHex
    expires: float
    signature: SignatureHex


class SignedCommand(msgspec.Struct, frozen=True):
    """What travels (and what the audit trail stores): exact bytes, their signature, signer.

    ``payload`` is the JSON of a :class:`CommandPayload`, kept as bytes so the signed
    bytes are never re-encoded (base64 in the JSON envelope). ``public_key`` is the
    identity's key (the caller's id derives from it). Without ``session`` the identity
    key signed the payload; with one, the certified session key did.
    """

    payload: bytes
    signature: SignatureHex
    public_key: PublicKeyHex
    session: SessionCertificate | None = None


class CommandPayload(msgspec.Struct, frozen=True):
    """The signed content of a command.

    ``nonce`` is 16 random bytes in hex, ``ts`` the signer's unix time in seconds, and
    ``body`` the JSON of the operation's arguments, kept raw so each operation decodes it
    with its own type (:meth:`VerifiedCommand.decode_body`).
    """

    op: OpName
    nonce: NonceHex
    ts: float
    body: msgspec.Raw


class VerifiedCommand(msgspec.Struct, frozen=True):
    """A command whose signature checked out; ``caller_id`` is the id of its signer.

    ``payload_digest`` is the SHA3-256 hex of the signed payload bytes: a stable name for
    the command (audit, idempotency). ``command`` is the envelope as received, to be
    stored with the events it causes so they can be re-verified offline: a
    :class:`SignedCommand`, or a ColonyOS envelope (:mod:`colonies_es.colonyos`: that
    protocol carries no nonce or time, so each opening gets a fresh nonce and its time).
    """

    caller_id: str
    op: str
    body: msgspec.Raw
    nonce: str
    ts: float
    payload_digest: str
    command: msgspec.Struct

    @property
    def replay_key(self) -> str:
        """The key to give :meth:`ReplayGuard.check_and_remember`: signer id and nonce.

        Keying by signer means nobody can spend another identity's nonce (by copying its
        payload under their own key) to get that identity's command refused.
        """
        return f"{self.caller_id}:{self.nonce}"

    def decode_body(self, type_: type[T]) -> T:
        """Decode ``body`` as ``type_``; raises ``CommandRejected(400)`` if it does not fit."""
        try:
            return msgspec.json.decode(self.body, type=type_)
        except msgspec.DecodeError as exc:
            raise CommandRejected(400, f"bad body for {self.op!r}: {exc}") from None
        except RecursionError:
            raise CommandRejected(400, f"bad body for {self.op!r}: {_TOO_DEEP}") from None


_TOO_DEEP = "JSON nested too deeply"
"""msgspec raises RecursionError (not a DecodeError) for JSON nested ~1000 deep."""
_encode = msgspec.json.Encoder().encode
_decode_envelope = msgspec.json.Decoder(SignedCommand).decode
_decode_payload = msgspec.json.Decoder(CommandPayload).decode


def _certificate_bytes(identity_public_key: str, session_key: str, expires: float) -> bytes:
    return _encode(["colonies-es/session/1", identity_public_key, session_key, expires])


class Session:
    """A session key certified by an identity key: signs commands for that identity.

    ``Session(prvkey)`` makes a fresh Ed25519 key valid for ``lifetime`` seconds;
    :meth:`valid_at` tells when to make a new one.
    """

    def __init__(self, prvkey: str, lifetime: float = 3600.0, now: float | None = None) -> None:
        self._key = Ed25519PrivateKey.generate()
        session_key = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
        self.public_key = public_key(prvkey)
        expires = (time.time() if now is None else now) + lifetime
        self.certificate = SessionCertificate(
            session_key=session_key,
            expires=expires,
            signature=sign(_certificate_bytes(self.public_key, session_key, expires), prvkey),
        )

    def valid_at(self, when: float, margin: float = 60.0) -> bool:
        """True if commands signed now stay valid for ``margin`` more seconds."""
        return when + margin < self.certificate.expires

    def sign_command(self, payload: bytes) -> SignedCommand:
        return SignedCommand(
            payload=payload,
            signature=self._key.sign(payload).hex(),
            public_key=self.public_key,
            session=self.certificate,
        )


@functools.lru_cache(maxsize=_KEY_CACHE_SIZE)
def _certificate_holds(identity_public_key: str, certificate: SessionCertificate) -> bool:
    """True if ``identity_public_key`` signed ``certificate`` (cached: once per session)."""
    signed = _certificate_bytes(identity_public_key, certificate.session_key, certificate.expires)
    return verify(signed, certificate.signature, identity_public_key)


@functools.lru_cache(maxsize=_KEY_CACHE_SIZE)
def _session_public_key(session_key: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(session_key))


def _session_signature_holds(command: SignedCommand, certificate: SessionCertificate) -> bool:
    try:
        _session_public_key(certificate.session_key).verify(
            bytes.fromhex(command.signature), command.payload
        )
    except (InvalidSignature, ValueError):
        return False
    return _certificate_holds(command.public_key, certificate)


def sign_command(payload: bytes, prvkey: str) -> SignedCommand:
    """Sign the exact ``payload`` bytes with ``prvkey`` into an envelope (not encoded)."""
    return SignedCommand(
        payload=payload, signature=sign(payload, prvkey), public_key=public_key(prvkey)
    )


def seal(
    op: str, body: Any, prvkey: str, now: float | None = None, session: Session | None = None
) -> bytes:
    """Build, sign and encode the command ``op`` with arguments ``body``.

    ``body`` is anything msgspec encodes (dicts, lists, Structs, ...). The payload gets a
    fresh random nonce and ``ts = now`` (default: ``time.time()``). With ``session`` (a
    :class:`Session` of ``prvkey``) the session key signs, else ``prvkey`` itself.
    Returns the JSON bytes of a :class:`SignedCommand`, ready to send. Raises
    ``ValueError`` for an invalid ``prvkey`` and ``TypeError`` for a body msgspec cannot
    encode.
    """
    payload = _encode(
        CommandPayload(
            op=op,
            nonce=secrets.token_hex(16),
            ts=time.time() if now is None else now,
            body=msgspec.Raw(_encode(body)),
        )
    )
    if session is not None:
        return _encode(session.sign_command(payload))
    return _encode(sign_command(payload, prvkey))


def signature_holds(command: SignedCommand) -> bool:
    """True if ``command``'s signature verifies against its enclosed public key (for a
    session key: the session key's signature, and the identity's certificate of it).

    The costly part of :func:`authenticate`, and a pure function of the envelope: an
    audit runs it in other processes, then calls ``authenticate(...,
    signature_checked=True)`` for the rest. Never raises.
    """
    certificate = command.session
    if certificate is None:
        return verify(command.payload, command.signature, command.public_key)
    return _session_signature_holds(command, certificate)


def authenticate(command: SignedCommand, *, signature_checked: bool = False) -> VerifiedCommand:
    """Check ``command``'s signature and name its signer; freshness is *not* checked.

    This is the offline check (audit of stored envelopes); servers use
    :func:`open_command`. Raises ``CommandRejected(403)`` for a signature that does not
    verify against the enclosed public key, ``CommandRejected(400)`` for a payload that
    is not a :class:`CommandPayload`. ``signature_checked``: :func:`signature_holds`
    already said True for this envelope, so only the rest is checked.
    """
    certificate = command.session
    if not signature_checked and not signature_holds(command):
        raise CommandRejected(403, bad_signature_reason(command))
    try:
        payload = _decode_payload(command.payload)
    except msgspec.DecodeError as exc:
        raise CommandRejected(400, f"malformed command payload: {exc}") from None
    except RecursionError:
        raise CommandRejected(400, f"malformed command payload: {_TOO_DEEP}") from None
    if certificate is not None and payload.ts > certificate.expires:
        raise CommandRejected(403, "the session key had expired when the command was made")
    return VerifiedCommand(
        caller_id=id_from_public_key(command.public_key),
        op=payload.op,
        body=payload.body,
        nonce=payload.nonce,
        ts=payload.ts,
        payload_digest=hashlib.sha3_256(command.payload).hexdigest(),
        command=command,
    )


def bad_signature_reason(command: SignedCommand) -> str:
    """What :func:`authenticate` says of ``command`` when its signature does not hold."""
    if command.session is None:
        return "bad signature"
    return "bad signature (session key or its certificate)"


def open_command(data: bytes, now: float, max_skew: float = DEFAULT_MAX_SKEW) -> VerifiedCommand:
    """Decode, authenticate and freshness-check an encoded :class:`SignedCommand`.

    Promises that the returned command was signed by the key whose id is ``caller_id``
    and that ``|now - ts| <= max_skew``. Raises ``CommandRejected(400)`` for bytes that
    are not a well-formed envelope or payload, ``CommandRejected(403)`` for a bad
    signature or a stale or future timestamp. Replays are not detected here: pass the
    result to a :class:`ReplayGuard`.
    """
    try:
        envelope = _decode_envelope(data)
    except msgspec.DecodeError as exc:
        raise CommandRejected(400, f"malformed command envelope: {exc}") from None
    except RecursionError:
        raise CommandRejected(400, f"malformed command envelope: {_TOO_DEEP}") from None
    command = authenticate(envelope)
    if not abs(now - command.ts) <= max_skew:  # also refuses NaN
        raise CommandRejected(403, "stale or future command timestamp")
    return command


class ReplayGuard:
    """Refuses a command key seen before, remembering each key only as long as it matters.

    Guarantee: a key is accepted at most once by one guard. A key is remembered until
    its ``ts`` falls out of the window (``ts < newest now - window``); from then on the
    guard refuses that ``ts`` as stale anyway, even if a later ``now`` goes backwards,
    so forgetting it cannot let it through again. Memory is bounded by the number of
    commands accepted in ``2 * window`` seconds (a timestamp may be up to ``window`` in
    the future).

    Scope: the guard is in memory and sees only the commands given to it. An engine
    that restarts must call :meth:`remember` for the commands its log recorded in the
    last window (every event stores its signed command) before serving; several engines
    sharing a queue group each need the same protection from the log (e.g. JetStream
    message de-duplication keyed by the command's replay key), since one engine's guard
    does not see what another accepted. Check authorization before remembering, so
    refused commands do not occupy memory.
    """

    def __init__(self, window: float = DEFAULT_MAX_SKEW) -> None:
        """``window`` is the freshness window (seconds); use the same as ``max_skew``."""
        if not window > 0 or math.isinf(window):
            raise ValueError("window must be a positive finite number of seconds")
        self.window = window
        self._seen: dict[str, float] = {}
        self._expiry: list[tuple[float, str]] = []
        self._horizon = -math.inf

    def __len__(self) -> int:
        """The number of keys currently remembered."""
        return len(self._seen)

    def check_and_remember(self, nonce: str, ts: float, now: float) -> None:
        """Accept ``nonce`` (a replay key) once, or raise ``CommandRejected(403)``.

        Refuses with ``"replayed command"`` a key already remembered, and with a
        staleness message a ``ts`` outside the window (or older than keys already
        forgotten). Otherwise remembers the key and returns.
        """
        self._advance(now)
        if not (self._horizon <= ts <= now + self.window):  # also refuses NaN
            raise CommandRejected(403, "stale or future command timestamp")
        if nonce in self._seen:
            raise CommandRejected(403, "replayed command")
        self._store(nonce, ts)

    def remember(self, nonce: str, ts: float, now: float) -> None:
        """Record ``nonce`` as seen without checking it (reloading from the log).

        Keys already out of the window are ignored; a repeat is harmless.
        """
        self._advance(now)
        if ts >= self._horizon and nonce not in self._seen:
            self._store(nonce, ts)

    def signed_at(self, nonce: str) -> float | None:
        """The ``ts`` of a remembered key (None when it is not remembered)."""
        return self._seen.get(nonce)

    def _store(self, nonce: str, ts: float) -> None:
        self._seen[nonce] = ts
        heapq.heappush(self._expiry, (ts, nonce))

    def _advance(self, now: float) -> None:
        """Move the horizon to ``now - window`` (never back) and forget keys behind it."""
        self._horizon = max(self._horizon, now - self.window)
        expiry = self._expiry
        while expiry and expiry[0][0] < self._horizon:
            _, nonce = heapq.heappop(expiry)
            del self._seen[nonce]
