"""Identities, signatures, the signed command envelope and replay protection."""

import hashlib
import re

import msgspec
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from colonies_es.crypto import (
    CommandRejected,
    Crypto,
    ReplayGuard,
    SignedCommand,
    authenticate,
    id_from_private_key,
    id_from_public_key,
    new_private_key,
    open_command,
    public_key,
    seal,
    sign,
    sign_command,
    verify,
)

VECTOR_PRVKEY = "6d2fb6f546bacfd98c68769e61e0b44a697a30596c018a50e28200aa59b01c0a"
VECTOR_ID = "4fef2b5a82d134d058c1883c72d6d9caf77cd59ca82d73105017590dea3dcb87"
HEX64 = re.compile(r"[0-9a-f]{64}")
NOW = 1_700_000_000.0


class Submit(msgspec.Struct):
    colonyname: str
    funcname: str


def rejected(exc: pytest.ExceptionInfo[CommandRejected]) -> tuple[int, str]:
    return exc.value.status, exc.value.message


@pytest.fixture(scope="module")
def alice() -> str:
    return new_private_key()


@pytest.fixture(scope="module")
def mallory() -> str:
    return new_private_key()


# --------------------------------------------------------------------------- identities


def test_colonyos_test_vector_gives_the_same_id() -> None:
    assert Crypto().id(VECTOR_PRVKEY) == VECTOR_ID
    assert id_from_private_key(VECTOR_PRVKEY) == VECTOR_ID


def test_id_is_sha3_of_the_lowercase_public_key_text() -> None:
    pub = public_key(VECTOR_PRVKEY)
    assert re.fullmatch(r"04[0-9a-f]{128}", pub)
    assert hashlib.sha3_256(pub.encode("ascii")).hexdigest() == VECTOR_ID
    assert id_from_public_key(pub) == VECTOR_ID


def test_new_private_keys_are_64_lowercase_hex_and_round_trip() -> None:
    crypto = Crypto()
    keys = {crypto.prvkey() for _ in range(20)}
    assert len(keys) == 20
    for key in keys:
        assert HEX64.fullmatch(key)
        assert HEX64.fullmatch(crypto.id(key))
        assert verify(b"hello", crypto.sign(b"hello", key), crypto.public_key(key))


def test_ids_are_64_lowercase_hex() -> None:
    for _ in range(20):
        assert HEX64.fullmatch(id_from_private_key(new_private_key()))


@pytest.mark.parametrize(
    "bad",
    ["", "00" * 32, "ff" * 32, "6d2f", "zz" * 32, VECTOR_PRVKEY + "00"],
)
def test_invalid_private_keys_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="private key"):
        public_key(bad)


@pytest.mark.parametrize(
    "bad",
    ["", "04" + "0" * 127, "05" + "0" * 128, "04" + "A" * 128, public_key(VECTOR_PRVKEY)[2:]],
)
def test_non_canonical_public_keys_have_no_id(bad: str) -> None:
    with pytest.raises(ValueError, match="public key"):
        id_from_public_key(bad)


# --------------------------------------------------------------------------- signatures


def test_sign_verify_round_trip(alice: str) -> None:
    signature = sign(b"payload", alice)
    assert re.fullmatch(r"[0-9a-f]{128}", signature)
    assert verify(b"payload", signature, public_key(alice))


def test_str_data_is_signed_as_utf8(alice: str) -> None:
    crypto = Crypto()
    signature = crypto.sign("héllo", alice)
    assert verify("héllo".encode(), signature, public_key(alice))
    assert crypto.verify("héllo", signature, public_key(alice))


def test_tampered_data_fails_verification(alice: str) -> None:
    signature = sign(b"payload", alice)
    assert not verify(b"payloaD", signature, public_key(alice))


def test_signature_by_another_key_fails_verification(alice: str, mallory: str) -> None:
    assert not verify(b"payload", sign(b"payload", mallory), public_key(alice))


_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def _openssl_signature(data: bytes, prvkey: str) -> tuple[int, int]:
    """(r, s) of ``data`` signed by OpenSSL (``cryptography``), as signatures were made
    before coincurve: randomised, with either s."""
    key = ec.derive_private_key(int(prvkey, 16), ec.SECP256K1())
    return decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))


def test_signatures_made_by_openssl_still_verify_with_either_s(alice: str) -> None:
    r, s = _openssl_signature(b"payload", alice)
    low, high = min(s, _ORDER - s), max(s, _ORDER - s)
    assert verify(b"payload", f"{r:064x}{low:064x}", public_key(alice))
    assert verify(b"payload", f"{r:064x}{high:064x}", public_key(alice))
    assert not verify(b"payloaD", f"{r:064x}{high:064x}", public_key(alice))


def test_signatures_are_low_s_and_verify_with_openssl(alice: str) -> None:
    signature = sign(b"payload", alice)
    r, s = int(signature[:64], 16), int(signature[64:], 16)
    assert s <= _ORDER // 2
    key = ec.EllipticCurvePublicKey.from_encoded_point(
        ec.SECP256K1(), bytes.fromhex(public_key(alice))
    )
    key.verify(encode_dss_signature(r, s), b"payload", ec.ECDSA(hashes.SHA256()))


def test_public_key_and_id_match_openssl_derivation() -> None:
    numbers = ec.derive_private_key(int(VECTOR_PRVKEY, 16), ec.SECP256K1()).public_key()
    xy = numbers.public_numbers()
    assert public_key(VECTOR_PRVKEY) == f"04{xy.x:064x}{xy.y:064x}"
    assert id_from_private_key(VECTOR_PRVKEY) == VECTOR_ID


def test_a_private_key_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="out of range"):
        public_key(f"{_ORDER:064x}")
    with pytest.raises(ValueError, match="out of range"):
        public_key("00" * 32)


@pytest.mark.parametrize(
    ("signature", "pub"),
    [
        ("", None),
        ("00" * 64, None),
        ("zz" * 64, None),
        ("ff" * 64, None),  # r and s out of range
        (None, "04" + "00" * 64),  # not a point on the curve
        (None, "04" + "AB" * 64),  # not canonical lowercase
    ],
)
def test_malformed_signature_or_key_is_false_not_an_error(
    alice: str, signature: str | None, pub: str | None
) -> None:
    good = sign(b"payload", alice)
    signature = good if signature is None else signature
    pub = public_key(alice) if pub is None else pub
    assert not verify(b"payload", signature, pub)


# --------------------------------------------------------------------------- envelope


def test_seal_then_open_names_the_caller_and_keeps_the_body(alice: str) -> None:
    data = seal("submit", Submit("dev", "gen_nums"), alice, now=NOW)
    command = open_command(data, now=NOW + 1)

    assert command.caller_id == id_from_private_key(alice)
    assert command.op == "submit"
    assert command.ts == NOW
    assert re.fullmatch(r"[0-9a-f]{32}", command.nonce)
    assert command.decode_body(Submit) == Submit("dev", "gen_nums")
    envelope = msgspec.json.decode(data, type=SignedCommand)
    assert command.command == envelope
    assert command.payload_digest == hashlib.sha3_256(envelope.payload).hexdigest()


def test_each_seal_gets_a_fresh_nonce(alice: str) -> None:
    nonces = {open_command(seal("get", {}, alice, now=NOW), now=NOW).nonce for _ in range(10)}
    assert len(nonces) == 10


def test_seal_defaults_to_the_current_time(alice: str) -> None:
    import time

    command = open_command(seal("get", None, alice), now=time.time())
    assert abs(command.ts - time.time()) < 5


def test_body_of_the_wrong_shape_is_400(alice: str) -> None:
    command = open_command(seal("submit", {"colonyname": 3}, alice, now=NOW), now=NOW)
    with pytest.raises(CommandRejected) as exc:
        command.decode_body(Submit)
    assert exc.value.status == 400


def test_tampered_payload_is_403(alice: str) -> None:
    envelope = msgspec.json.decode(seal("submit", {"n": 1}, alice, now=NOW), type=SignedCommand)
    forged = msgspec.structs.replace(envelope, payload=envelope.payload.replace(b"1", b"2"))
    with pytest.raises(CommandRejected) as exc:
        open_command(msgspec.json.encode(forged), now=NOW)
    assert rejected(exc) == (403, "bad signature")


def test_public_key_not_matching_the_signer_is_403(alice: str, mallory: str) -> None:
    # Mallory signs but claims to be Alice by sending Alice's public key.
    envelope = msgspec.json.decode(seal("remove", {}, mallory, now=NOW), type=SignedCommand)
    claimed = msgspec.structs.replace(envelope, public_key=public_key(alice))
    with pytest.raises(CommandRejected) as exc:
        open_command(msgspec.json.encode(claimed), now=NOW)
    assert rejected(exc) == (403, "bad signature")


def test_caller_id_is_the_id_of_the_key_that_signed(alice: str, mallory: str) -> None:
    command = open_command(seal("remove", {}, mallory, now=NOW), now=NOW)
    assert command.caller_id == id_from_private_key(mallory)
    assert command.caller_id != id_from_private_key(alice)


@pytest.mark.parametrize("offset", [-60.001, 60.001, -3600.0, 3600.0])
def test_stale_and_future_timestamps_are_403(alice: str, offset: float) -> None:
    data = seal("get", {}, alice, now=NOW + offset)
    with pytest.raises(CommandRejected) as exc:
        open_command(data, now=NOW)
    assert rejected(exc) == (403, "stale or future command timestamp")


@pytest.mark.parametrize("offset", [-60.0, 0.0, 60.0])
def test_timestamps_inside_the_skew_are_accepted(alice: str, offset: float) -> None:
    assert open_command(seal("get", {}, alice, now=NOW + offset), now=NOW).op == "get"


def test_max_skew_is_configurable(alice: str) -> None:
    data = seal("get", {}, alice, now=NOW - 10)
    assert open_command(data, now=NOW, max_skew=10).op == "get"
    with pytest.raises(CommandRejected):
        open_command(data, now=NOW, max_skew=5)


def _envelope(payload: bytes, prvkey: str) -> bytes:
    return msgspec.json.encode(sign_command(payload, prvkey))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[]",
        b'{"payload": "!!!", "signature": "00", "public_key": "04"}',
        b'{"signature": "' + b"0" * 128 + b'"}',
        b'{"payload": "e30=", "signature": "' + b"0" * 128 + b'", "public_key": "05"}',
    ],
)
def test_malformed_envelope_is_400(data: bytes) -> None:
    with pytest.raises(CommandRejected) as exc:
        open_command(data, now=NOW)
    assert exc.value.status == 400


@pytest.mark.parametrize(
    "payload",
    [
        b"{}",
        b"not json",
        b'{"op": "get", "nonce": "short", "ts": 1700000000.0, "body": {}}',
        b'{"op": "", "nonce": "' + b"a" * 32 + b'", "ts": 1700000000.0, "body": {}}',
        b'{"op": "get", "nonce": "' + b"a" * 32 + b'", "ts": "now", "body": {}}',
    ],
)
def test_well_signed_malformed_payload_is_400(alice: str, payload: bytes) -> None:
    with pytest.raises(CommandRejected) as exc:
        open_command(_envelope(payload, alice), now=NOW)
    assert exc.value.status == 400


def test_stored_envelope_can_be_re_verified_offline(alice: str) -> None:
    command = open_command(seal("close", {"processid": "p"}, alice, now=NOW), now=NOW)
    stored = msgspec.json.decode(msgspec.json.encode(command.command), type=SignedCommand)
    # Years later: no freshness check, same signer and digest.
    audited = authenticate(stored)
    assert audited.caller_id == id_from_private_key(alice)
    assert audited.payload_digest == command.payload_digest


def test_command_rejected_carries_status_and_message() -> None:
    err = CommandRejected(403, "replayed command")
    assert (err.status, err.message) == (403, "replayed command")
    assert "403" in str(err)


# --------------------------------------------------------------------------- replay


def test_replayed_command_is_refused(alice: str) -> None:
    guard = ReplayGuard(window=60)
    data = seal("submit", {}, alice, now=NOW)
    first = open_command(data, now=NOW)
    guard.check_and_remember(first.replay_key, first.ts, now=NOW)

    again = open_command(data, now=NOW + 30)
    with pytest.raises(CommandRejected) as exc:
        guard.check_and_remember(again.replay_key, again.ts, now=NOW + 30)
    assert rejected(exc) == (403, "replayed command")


def test_distinct_commands_are_all_accepted(alice: str) -> None:
    guard = ReplayGuard(window=60)
    for i in range(50):
        command = open_command(seal("get", {"i": i}, alice, now=NOW), now=NOW)
        guard.check_and_remember(command.replay_key, command.ts, now=NOW)
    assert len(guard) == 50


def test_replay_key_is_per_signer(alice: str, mallory: str) -> None:
    # Mallory re-signs Alice's payload (same nonce) and gets in first:
    # Alice's own command must still be accepted.
    alices = msgspec.json.decode(seal("cancel", {}, alice, now=NOW), type=SignedCommand)
    copied = open_command(_envelope(alices.payload, mallory), now=NOW)
    genuine = open_command(msgspec.json.encode(alices), now=NOW)
    assert copied.nonce == genuine.nonce

    guard = ReplayGuard(window=60)
    guard.check_and_remember(copied.replay_key, copied.ts, now=NOW)
    guard.check_and_remember(genuine.replay_key, genuine.ts, now=NOW)


def test_guard_forgets_keys_once_their_ts_leaves_the_window() -> None:
    guard = ReplayGuard(window=60)
    guard.check_and_remember("a", NOW, now=NOW)
    guard.check_and_remember("b", NOW + 30, now=NOW + 30)
    assert len(guard) == 2

    guard.check_and_remember("c", NOW + 61, now=NOW + 61)  # "a" is now out of the window
    assert len(guard) == 2
    guard.check_and_remember("d", NOW + 200, now=NOW + 200)
    assert len(guard) == 1


def test_forgotten_key_is_still_refused_as_stale() -> None:
    guard = ReplayGuard(window=60)
    guard.check_and_remember("a", NOW, now=NOW)
    guard.check_and_remember("b", NOW + 61, now=NOW + 61)
    assert len(guard) == 1

    # Even with the clock stepping back, the forgotten key cannot come back.
    with pytest.raises(CommandRejected) as exc:
        guard.check_and_remember("a", NOW, now=NOW + 1)
    assert rejected(exc) == (403, "stale or future command timestamp")


def test_future_timestamp_is_remembered_until_it_leaves_the_window() -> None:
    guard = ReplayGuard(window=60)
    guard.check_and_remember("f", NOW + 60, now=NOW)
    guard.check_and_remember("x", NOW + 119, now=NOW + 119)
    with pytest.raises(CommandRejected, match="replayed"):
        guard.check_and_remember("f", NOW + 60, now=NOW + 119)


@pytest.mark.parametrize("ts", [NOW - 61, NOW + 61, float("nan")])
def test_guard_refuses_timestamps_outside_its_window(ts: float) -> None:
    guard = ReplayGuard(window=60)
    with pytest.raises(CommandRejected) as exc:
        guard.check_and_remember("a", ts, now=NOW)
    assert exc.value.status == 403
    assert len(guard) == 0


def test_remembered_keys_from_the_log_are_refused_after_a_restart() -> None:
    guard = ReplayGuard(window=60)
    guard.remember("old", NOW - 100, now=NOW)  # already outside: ignored
    guard.remember("recent", NOW - 10, now=NOW)
    guard.remember("recent", NOW - 10, now=NOW)  # repeats are harmless
    assert len(guard) == 1
    with pytest.raises(CommandRejected, match="replayed"):
        guard.check_and_remember("recent", NOW - 10, now=NOW)


@pytest.mark.parametrize("window", [0.0, -1.0, float("inf"), float("nan")])
def test_guard_window_must_be_positive_and_finite(window: float) -> None:
    with pytest.raises(ValueError, match="window"):
        ReplayGuard(window=window)
