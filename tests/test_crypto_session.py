"""Session keys: an Ed25519 key certified by the identity signs commands for it."""

from __future__ import annotations

import msgspec
import pytest

from colonies_es import crypto

KEY = "6d2fb6f546bacfd98c68769e61e0b44a697a30596c018a50e28200aa59b01c0a"
ID = "4fef2b5a82d134d058c1883c72d6d9caf77cd59ca82d73105017590dea3dcb87"


def test_a_session_signed_command_names_the_identity() -> None:
    session = crypto.Session(KEY, lifetime=600, now=1000.0)
    data = crypto.seal("get_process", {"processid": "x"}, KEY, now=1000.0, session=session)
    command = crypto.open_command(data, now=1001.0)
    assert command.caller_id == ID
    assert command.command.session == session.certificate


def test_a_tampered_payload_or_certificate_is_refused() -> None:
    session = crypto.Session(KEY, lifetime=600, now=1000.0)
    data = crypto.seal("close", {"processid": "x"}, KEY, now=1000.0, session=session)
    envelope = msgspec.json.decode(data, type=crypto.SignedCommand)
    tampered = msgspec.structs.replace(envelope, payload=envelope.payload.replace(b"x", b"y"))
    with pytest.raises(crypto.CommandRejected) as bad_payload:
        crypto.authenticate(tampered)
    assert bad_payload.value.status == 403

    assert envelope.session is not None
    longer = msgspec.structs.replace(envelope.session, expires=envelope.session.expires + 1e6)
    with pytest.raises(crypto.CommandRejected):
        crypto.authenticate(msgspec.structs.replace(envelope, session=longer))


def test_a_certificate_of_another_identity_is_refused() -> None:
    other = crypto.new_private_key()
    session = crypto.Session(other, lifetime=600, now=1000.0)
    data = crypto.seal("close", {}, other, now=1000.0, session=session)
    envelope = msgspec.json.decode(data, type=crypto.SignedCommand)
    # Claim to be KEY's identity while signing with other's session: refused.
    claimed = msgspec.structs.replace(envelope, public_key=crypto.public_key(KEY))
    with pytest.raises(crypto.CommandRejected):
        crypto.authenticate(claimed)


def test_a_command_made_after_the_session_expired_is_refused() -> None:
    session = crypto.Session(KEY, lifetime=10, now=1000.0)
    assert session.valid_at(1000.0, margin=5)
    assert not session.valid_at(1006.0, margin=5)
    data = crypto.seal("close", {}, KEY, now=1011.0, session=session)
    with pytest.raises(crypto.CommandRejected) as expired:
        crypto.open_command(data, now=1011.0)
    assert "expired" in expired.value.message
