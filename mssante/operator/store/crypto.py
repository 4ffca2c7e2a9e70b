"""Encryption of message bodies at rest: AES-256-GCM per blob, keyed HMAC digests for dedup.

Health data must not be readable from the disk or a backup alone (HDS hosting, MSSanté "data
must not leak"). Every blob is sealed under the current storage key with a fresh 96-bit random
nonce (NIST SP 800-38D §8.2.2: random nonces are safe for well under 2^32 messages per key;
rotate keys long before that). The associated data binds the ciphertext to its key id and its
digest, so a ciphertext copied into another row does not open.

Equal bodies are stored once. A plain SHA-256 would let whoever holds the disk test whether a
known document (a standard letter, a published report) is stored; the digest is therefore an
HMAC under a key derived from the storage key, meaningless without it.

Each configured key is only a root: the AES key and the HMAC key are derived from it with HKDF
under distinct labels, so no key material serves two primitives.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mssante.operator.store.errors import BlobTampered, KeyUnavailable

KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # 96 bits: the GCM nonce size that needs no extra hashing (SP 800-38D §5.2.1.1)

_ENCRYPTION_LABEL = b"mssante blob encryption v1"
_DIGEST_LABEL = b"mssante blob digest v1"
_AAD_LABEL = b"mssante blob v1\x00"
_RECORD_LABEL = b"mssante record encryption v1"
_RECORD_AAD_LABEL = b"mssante record v1\x00"
_SEARCH_LABEL = b"mssante search filter v1"

# Key ids are stored in every blob row (String(64)) and appear in logs and configuration.
_KEY_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_HEX_KEY = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass(frozen=True)
class SealedRecord:
    """A small sealed value tied to a context (see `BlobCipher.seal_record`)."""

    key_id: str
    nonce: bytes
    ciphertext: bytes  # includes the 16-byte GCM tag


@dataclass(frozen=True)
class SealedBlob:
    key_id: str
    nonce: bytes
    ciphertext: bytes  # includes the 16-byte GCM tag
    digest: str  # lower-case hex HMAC-SHA256 of the plaintext under the key's digest key


def _derive(root: bytes, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=label).derive(root)


def _aad(key_id: str, digest: str) -> bytes:
    kid = key_id.encode("ascii")
    # Length-prefixed so that no (key id, digest) pair can be re-split into another.
    return _AAD_LABEL + bytes([len(kid)]) + kid + digest.encode("ascii")


class BlobCipher:
    """Seals and opens blobs; knows every configured key, seals under the current one."""

    def __init__(self, keys: Mapping[str, bytes], current_key_id: str) -> None:
        if not keys:
            raise ValueError("no storage key configured: at least one 32-byte key is needed")
        self._aead: dict[str, AESGCM] = {}
        self._record_aead: dict[str, AESGCM] = {}
        self._mac_keys: dict[str, bytes] = {}
        self._search_keys: dict[str, bytes] = {}
        for key_id, key in keys.items():
            if not _KEY_ID.match(key_id):
                raise ValueError(
                    f"storage key id {key_id!r}: use 1 to 64 letters, digits, '.', '_', ':' or '-'"
                )
            if not isinstance(key, bytes) or len(key) != KEY_BYTES:
                size = len(key) if isinstance(key, bytes) else type(key).__name__
                raise ValueError(
                    f"storage key {key_id!r}: expected {KEY_BYTES} bytes (AES-256), got {size}"
                )
            self._aead[key_id] = AESGCM(_derive(key, _ENCRYPTION_LABEL))
            self._record_aead[key_id] = AESGCM(_derive(key, _RECORD_LABEL))
            self._mac_keys[key_id] = _derive(key, _DIGEST_LABEL)
            self._search_keys[key_id] = _derive(key, _SEARCH_LABEL)
        if current_key_id not in self._aead:
            known = ", ".join(sorted(self._aead))
            raise ValueError(
                f"current storage key id {current_key_id!r} is not among the keys ({known})"
            )
        self._current = current_key_id

    @classmethod
    def from_text(cls, keys: Mapping[str, str], current_key_id: str) -> BlobCipher:
        """Build from configuration text (base64 or hex per key, see `parse_key`)."""
        parsed: dict[str, bytes] = {}
        for key_id, text in keys.items():
            try:
                parsed[key_id] = parse_key(text)
            except ValueError as exc:
                raise ValueError(f"storage key {key_id!r}: {exc}") from None
        return cls(parsed, current_key_id)

    @property
    def current_key_id(self) -> str:
        return self._current

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._aead)

    def __repr__(self) -> str:
        # Never the key material: this object ends up in tracebacks and debug logs.
        return f"BlobCipher(key_ids={sorted(self._aead)}, current={self._current!r})"

    def digest(self, plaintext: bytes) -> str:
        """The dedup digest a blob with this content has when sealed under the current key."""
        return self._digest(self._current, plaintext)

    def _digest(self, key_id: str, plaintext: bytes) -> str:
        return hmac.new(self._mac_keys[key_id], plaintext, hashlib.sha256).hexdigest()

    def seal(self, plaintext: bytes) -> SealedBlob:
        key_id = self._current
        digest = self._digest(key_id, plaintext)
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = self._aead[key_id].encrypt(nonce, plaintext, _aad(key_id, digest))
        return SealedBlob(key_id=key_id, nonce=nonce, ciphertext=ciphertext, digest=digest)

    def open(self, key_id: str, nonce: bytes, ciphertext: bytes, digest: str) -> bytes:
        aead = self._aead.get(key_id)
        if aead is None:
            raise KeyUnavailable(
                f"blob encrypted under storage key {key_id!r}, which is not configured "
                f"(configured: {', '.join(sorted(self._aead))})"
            )
        if len(nonce) != NONCE_BYTES or not digest.isascii():
            raise BlobTampered(f"blob under key {key_id!r}: malformed nonce or digest")
        try:
            plaintext = aead.decrypt(nonce, ciphertext, _aad(key_id, digest))
        except InvalidTag:
            raise BlobTampered(
                f"blob under key {key_id!r} failed authentication: wrong key material for this "
                f"id, or the ciphertext, nonce or digest was altered"
            ) from None
        # The AAD already authenticates the digest; checking it against the content as well
        # catches a row written with a wrong digest, which would silently break deduplication.
        if not hmac.compare_digest(self._digest(key_id, plaintext), digest):
            raise BlobTampered(f"blob under key {key_id!r}: digest does not match its content")
        return plaintext

    def search_key(self, key_id: str) -> bytes:
        """The key of the search filters built under storage key `key_id` (`searchfilter`):
        derived under its own label, like the digest key; KeyUnavailable if not configured."""
        key = self._search_keys.get(key_id)
        if key is None:
            raise KeyUnavailable(f"search filter under storage key {key_id!r}, not configured")
        return key

    def seal_record(self, plaintext: bytes, context: bytes) -> SealedRecord:
        """Seal a small value that belongs to something else (a blob's metadata, …).

        `context` names the owner (e.g. the blob's digest) and goes into the associated data:
        a record moved to another owner does not open. Records use their own derived key and
        carry no digest (they are not deduplicated).
        """
        key_id = self._current
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = self._record_aead[key_id].encrypt(
            nonce, plaintext, _record_aad(key_id, context)
        )
        return SealedRecord(key_id=key_id, nonce=nonce, ciphertext=ciphertext)

    def open_record(self, key_id: str, nonce: bytes, ciphertext: bytes, context: bytes) -> bytes:
        aead = self._record_aead.get(key_id)
        if aead is None:
            raise KeyUnavailable(
                f"record encrypted under storage key {key_id!r}, which is not configured "
                f"(configured: {', '.join(sorted(self._record_aead))})"
            )
        if len(nonce) != NONCE_BYTES:
            raise BlobTampered(f"record under key {key_id!r}: malformed nonce")
        try:
            return aead.decrypt(nonce, ciphertext, _record_aad(key_id, context))
        except InvalidTag:
            raise BlobTampered(
                f"record under key {key_id!r} failed authentication: wrong key material, "
                f"altered ciphertext or nonce, or a record that belongs elsewhere"
            ) from None


def _record_aad(key_id: str, context: bytes) -> bytes:
    kid = key_id.encode("ascii")
    return _RECORD_AAD_LABEL + bytes([len(kid)]) + kid + context


def parse_key(text: str) -> bytes:
    """A 32-byte key from base64 (standard or URL-safe, padding optional) or 64 hex digits.

    Error messages never echo the text: it is a secret.
    """
    value = text.strip()
    if _HEX_KEY.match(value):
        # Tried first: 64 hex digits are also valid base64 (of 48 bytes).
        return bytes.fromhex(value)
    standard = value.replace("-", "+").replace("_", "/")
    standard += "=" * (-len(standard) % 4)
    try:
        key = base64.b64decode(standard, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            "not a valid key: expected base64 (standard or URL-safe) or 64 hexadecimal digits"
        ) from None
    if len(key) != KEY_BYTES:
        raise ValueError(f"key is {len(key)} bytes long, expected {KEY_BYTES} (AES-256)")
    return key


def generate_key() -> str:
    """A fresh random key as URL-safe base64 (44 characters), ready for the configuration."""
    return base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode("ascii")
