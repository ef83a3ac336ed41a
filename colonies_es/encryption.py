"""Encryption at rest: the event payloads in the stream, encrypted with AES-GCM.

With ``COLONIES_CIPHER_KEY`` set (base64 of 16, 24 or 32 random bytes;
:func:`new_cipher_key` makes one), the engine and the projectors encrypt and decrypt
every event's state with eventsourcing's ``AESCipher`` (``CIPHER_TOPIC``/``CIPHER_KEY``
of their store environment, :meth:`colonies_es.settings.Settings.store_env`). A reader of
the raw stream without the key sees subjects, versions and event class names, but no
inputs, outputs, errors or commands. Members read a graph's history through the
projector, which decrypts (``graph_events``); whole-log readers need the key.

:func:`check_log_key` is the start-up check of the engine and the projector: a wrong key
(or a key for a log written in clear, or no key for an encrypted log) is one clear
:class:`~colonies_es.settings.SettingsError`, instead of failures deep in a rebuild.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json

import nats.errors
from eventsourcing.persistence import Cipher, DataError

from colonies_es.settings import NatsAccess, SettingsError
from colonies_es.store.codec import MsgspecTranscoder, Sealer, decode_envelope

__all__ = ["CIPHER_TOPIC", "check_log_key", "cipher_of", "new_cipher_key"]

CIPHER_TOPIC = "eventsourcing.cipher:AESCipher"
_KEY_SIZES = (16, 24, 32)
CHECK_TIMEOUT = 5.0
"""Seconds the start-up key check tries to reach NATS (the component's own connection
then says why it cannot)."""


async def _quiet(error: Exception) -> None:
    """nats-py's error callback: its default logs a traceback per failed attempt."""


def new_cipher_key() -> str:
    """A fresh AES-256 key, as ``COLONIES_CIPHER_KEY`` takes it (base64)."""
    from eventsourcing.cipher import AESCipher

    return AESCipher.create_key(32)


def cipher_of(key: str) -> Cipher:
    """eventsourcing's AES-GCM cipher for ``key``; a :class:`SettingsError` for a key
    that is not base64 of 16, 24 or 32 bytes."""
    try:
        raw = base64.b64decode(key.encode(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) not in _KEY_SIZES:
        raise SettingsError(
            "COLONIES_CIPHER_KEY must be base64 of 16, 24 or 32 random bytes "
            "(python -c 'from colonies_es.encryption import new_cipher_key as k; print(k())')"
        )
    from eventsourcing.cipher import AESCipher
    from eventsourcing.utils import Environment

    return AESCipher(Environment(env={AESCipher.CIPHER_KEY: key}))


async def check_log_key(
    access: NatsAccess,
    cipher_key: str,
    seal_key: str = "",
    stream: str = "COLONIES",
    subjects: str = "colonies.ev.>",
) -> None:
    """Raise :class:`SettingsError` unless ``cipher_key`` (empty: none) reads the last
    event of the log: it must decrypt what is encrypted, and there must be a key when
    the log is encrypted. An empty log, or a last message the engine did not seal (with
    ``seal_key``), passes."""
    cipher = cipher_of(cipher_key) if cipher_key else None
    try:
        # One attempt per server (nats-py retries a first connect max_reconnect_attempts
        # times, 0 meaning forever), bounded as a whole.
        nc = await asyncio.wait_for(
            access.connect(
                "colonies-es key check",
                connect_timeout=CHECK_TIMEOUT,
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.1,
                error_cb=_quiet,
            ),
            CHECK_TIMEOUT * (len(access.servers) + 1),
        )
    except (OSError, TimeoutError, nats.errors.Error):
        return  # the component's own connection says why NATS cannot be reached
    try:
        request = json.dumps({"last_by_subj": subjects}).encode()
        reply = await nc.request(f"$JS.API.DIRECT.GET.{stream}", request, timeout=5)
    except (TimeoutError, nats.errors.Error):
        return  # no stream yet (or not allowed to read it): nothing to check
    finally:
        await nc.close()
    headers = reply.headers or {}
    if headers.get("Status") or not reply.data:
        return  # no stream or no event yet
    subject = headers.get("Nats-Subject", "")
    if seal_key and not Sealer(bytes.fromhex(seal_key)).is_sealed(subject, reply.data):
        return
    try:
        state = decode_envelope(reply.data).state
    except DataError:
        return  # not an event of this system
    where = f"the event at sequence {headers.get('Nats-Sequence', '?')} of {stream}"
    if cipher is not None:
        try:
            state = cipher.decrypt(state)
        except Exception:
            raise SettingsError(
                f"COLONIES_CIPHER_KEY does not decrypt {where}: a wrong key, or a log "
                "written without encryption"
            ) from None
    try:
        MsgspecTranscoder().decode(state)
    except Exception:
        if cipher is None:
            raise SettingsError(
                f"the event log is encrypted ({where} is not readable): set "
                "COLONIES_CIPHER_KEY to its key"
            ) from None
        raise SettingsError(f"{where} decrypts to something unreadable") from None
