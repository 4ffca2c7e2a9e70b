"""The blob cipher on its own: pure functions, no database involved.

The same properties are checked again through the database in test_blobs.py.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib

import pytest

from mssante.operator.store.crypto import (
    KEY_BYTES,
    NONCE_BYTES,
    BlobCipher,
    SealedBlob,
    generate_key,
    parse_key,
)
from mssante.operator.store.errors import BlobTampered, KeyUnavailable, StoreError

KEY_A = bytes(range(32))
KEY_B = bytes(range(32, 64))
TEXT = b"Compte rendu operatoire du patient 146026322000196: RAS."


def _open(cipher: BlobCipher, sealed: SealedBlob) -> bytes:
    return cipher.open(sealed.key_id, sealed.nonce, sealed.ciphertext, sealed.digest)


def _flip(data: bytes, index: int = 0) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def test_round_trip() -> None:
    cipher = BlobCipher({"a": KEY_A}, "a")
    sealed = cipher.seal(TEXT)
    assert sealed.key_id == "a"
    assert len(sealed.nonce) == NONCE_BYTES
    assert TEXT not in sealed.ciphertext
    assert len(sealed.ciphertext) == len(TEXT) + 16  # GCM tag
    assert _open(cipher, sealed) == TEXT
    assert _open(cipher, cipher.seal(b"")) == b""


def test_every_seal_uses_a_fresh_nonce() -> None:
    cipher = BlobCipher({"a": KEY_A}, "a")
    seals = [cipher.seal(TEXT) for _ in range(50)]
    assert len({s.nonce for s in seals}) == 50
    assert len({s.ciphertext for s in seals}) == 50
    assert len({s.digest for s in seals}) == 1  # deterministic: that is what dedup needs


def test_digest_is_keyed_not_a_plain_hash() -> None:
    a = BlobCipher({"a": KEY_A}, "a")
    b = BlobCipher({"b": KEY_B}, "b")
    assert a.digest(TEXT) == a.seal(TEXT).digest
    assert a.digest(TEXT) != b.digest(TEXT)
    assert a.digest(TEXT) not in {
        hashlib.sha256(TEXT).hexdigest(),
        hashlib.sha512(TEXT).hexdigest()[:64],
        hashlib.blake2b(TEXT, digest_size=32).hexdigest(),
    }
    assert len(a.digest(TEXT)) == 64
    int(a.digest(TEXT), 16)


def test_unknown_key_id_is_key_unavailable() -> None:
    sealed = BlobCipher({"a": KEY_A}, "a").seal(TEXT)
    other = BlobCipher({"b": KEY_B}, "b")
    with pytest.raises(KeyUnavailable, match="'a'"):
        _open(other, sealed)
    assert issubclass(KeyUnavailable, StoreError)


def test_wrong_key_under_the_same_id_is_tampered() -> None:
    sealed = BlobCipher({"a": KEY_A}, "a").seal(TEXT)
    impostor = BlobCipher({"a": KEY_B}, "a")
    with pytest.raises(BlobTampered):
        _open(impostor, sealed)
    assert issubclass(BlobTampered, StoreError)


@pytest.mark.parametrize("field", ["ciphertext", "ciphertext_tag", "nonce", "digest", "key_id"])
def test_any_alteration_is_detected(field: str) -> None:
    cipher = BlobCipher({"a": KEY_A, "a2": KEY_A}, "a")
    sealed = cipher.seal(TEXT)
    if field == "ciphertext":
        altered = dataclasses.replace(sealed, ciphertext=_flip(sealed.ciphertext, 3))
    elif field == "ciphertext_tag":
        altered = dataclasses.replace(sealed, ciphertext=_flip(sealed.ciphertext, -1))
    elif field == "nonce":
        altered = dataclasses.replace(sealed, nonce=_flip(sealed.nonce))
    elif field == "digest":
        altered = dataclasses.replace(sealed, digest=cipher.digest(b"another document"))
    else:
        # Same key material under another id: the id is bound too.
        altered = dataclasses.replace(sealed, key_id="a2")
    with pytest.raises(BlobTampered):
        _open(cipher, altered)


def test_truncated_nonce_or_ciphertext_is_tampered() -> None:
    cipher = BlobCipher({"a": KEY_A}, "a")
    sealed = cipher.seal(TEXT)
    with pytest.raises(BlobTampered):
        _open(cipher, dataclasses.replace(sealed, nonce=sealed.nonce[:8]))
    with pytest.raises(BlobTampered):
        _open(cipher, dataclasses.replace(sealed, ciphertext=sealed.ciphertext[:10]))


def test_ciphertext_moved_to_another_row_does_not_open() -> None:
    cipher = BlobCipher({"a": KEY_A}, "a")
    first, second = cipher.seal(TEXT), cipher.seal(b"another letter")
    with pytest.raises(BlobTampered):
        cipher.open(second.key_id, first.nonce, first.ciphertext, second.digest)


def test_rotation_old_keys_open_new_seals_use_current() -> None:
    old = BlobCipher({"a": KEY_A}, "a").seal(TEXT)
    rotated = BlobCipher({"a": KEY_A, "b": KEY_B}, "b")
    assert _open(rotated, old) == TEXT
    assert rotated.seal(TEXT).key_id == "b"
    assert rotated.current_key_id == "b"
    assert rotated.key_ids == {"a", "b"}


@pytest.mark.parametrize("bad", [b"", b"short", bytes(16), bytes(31), bytes(33), bytes(64)])
def test_keys_must_be_32_bytes(bad: bytes) -> None:
    with pytest.raises(ValueError, match="expected 32 bytes"):
        BlobCipher({"a": bad}, "a")


def test_configuration_errors_are_explained() -> None:
    with pytest.raises(ValueError, match="not among the keys"):
        BlobCipher({"a": KEY_A}, "b")
    with pytest.raises(ValueError, match="no storage key"):
        BlobCipher({}, "a")
    with pytest.raises(ValueError, match="key id"):
        BlobCipher({"with space": KEY_A}, "with space")


def test_repr_shows_no_key_material() -> None:
    text = repr(BlobCipher({"a": KEY_A}, "a"))
    assert "'a'" in text
    assert KEY_A.hex() not in text
    assert base64.b64encode(KEY_A).decode() not in text


def test_from_text_parses_each_key_and_names_the_bad_one() -> None:
    cipher = BlobCipher.from_text({"a": KEY_A.hex(), "b": base64.b64encode(KEY_B).decode()}, "b")
    assert _open(cipher, BlobCipher({"a": KEY_A}, "a").seal(TEXT)) == TEXT
    with pytest.raises(ValueError, match="'broken'"):
        BlobCipher.from_text({"broken": "not a key"}, "broken")


@pytest.mark.parametrize(
    "text",
    [
        KEY_A.hex(),
        KEY_A.hex().upper(),
        base64.b64encode(KEY_A).decode(),
        base64.urlsafe_b64encode(KEY_A).decode(),
        base64.urlsafe_b64encode(KEY_A).decode().rstrip("="),
        "  " + base64.b64encode(KEY_A).decode() + "\n",
    ],
)
def test_parse_key_accepts_hex_and_both_base64_alphabets(text: str) -> None:
    assert parse_key(text) == KEY_A


def test_parse_key_urlsafe_alphabet_with_dash_and_underscore() -> None:
    key = bytes([0xFB, 0xFF] * 16)  # encodes to '+'/'/' in standard, '-'/'_' in URL-safe
    assert "-" in base64.urlsafe_b64encode(key).decode()
    assert parse_key(base64.urlsafe_b64encode(key).decode()) == key
    assert parse_key(base64.b64encode(key).decode()) == key


@pytest.mark.parametrize(
    "text",
    ["", "zz" * 32, "not base64 at all!", base64.b64encode(bytes(16)).decode(), "ab" * 31],
)
def test_parse_key_refuses_without_echoing_the_secret(text: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_key(text)
    if text:
        assert text not in str(refused.value)


def test_generate_key_is_random_and_parseable() -> None:
    keys = {generate_key() for _ in range(20)}
    assert len(keys) == 20
    for key in keys:
        assert len(parse_key(key)) == KEY_BYTES
