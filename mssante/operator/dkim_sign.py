"""DKIM signing of outbound mail (RFC 6376), with the operator's key.

Inside the trust space peers know us by our certificate; the signature tells every later
reader (a peer's verifier, a mail client, a server outside the space) that the message left us
as it is. Choices, each with its rule:

- relaxed/relaxed canonicalisation (RFC 6376 §3.4.2, §3.4.4): survives the harmless rewrapping
  of header fields and trailing white space by relays;
- `rsa-sha256` with a key of at least 2048 bits (RFC 8301 §3.2: signers SHOULD use 2048), or
  `ed25519-sha256` (RFC 8463) when the key file holds an Ed25519 key; the key type decides;
- the signed fields (`SIGNED_FIELDS`): what a reader relies on. Each is listed in `h=` once per
  occurrence, and once when absent, which signs its absence (RFC 6376 §5.4.2): nobody can add a
  `Reply-To:` or a second `From:` later. `From` is listed once more than it occurs
  ("oversigning"), for the same reason;
- `d=`: the domain of the `From:` address when it is one of `[dkim] domains` or under one of
  them (then that listed domain), else the first listed domain.

The signature is computed here (RFC 6376 §3.4, §3.5, §3.7) with `cryptography` (OpenSSL):
dkimpy's pure-Python RSA costs about 8 ms per signature on this machine, OpenSSL's a tenth
of that, and every outbound message is signed. dkimpy stays the verifier (ours on arrival, and
in the tests, where every signature made here is verified by it). The hashing runs inline for
ordinary messages and in a worker thread for large ones, like verification
(mssante.operator.dkim).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from mssante.config import DkimSettings
from mssante.operator.dkim import THREAD_THRESHOLD, key_name
from mssante.operator.mime import parse_addresses, split_header

Algorithm = Literal["rsa-sha256", "ed25519-sha256"]

MIN_RSA_BITS = 2048  # RFC 8301 §3.2 SHOULD, made a MUST here
MAX_KEY_FILE = 64 * 1024
TXT_STRING_MAX = 255  # RFC 1035 §3.3.14: one character-string is at most 255 octets

# RFC 6376 §5.4.1 lists the fields that SHOULD be signed; these are the ones present in the
# mail we send, in h= order.
SIGNED_FIELDS: tuple[str, ...] = (
    "from",
    "sender",
    "reply-to",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "in-reply-to",
    "references",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
)


class DkimKeyError(Exception):
    """The key file cannot be used for signing; the message says why (never the key)."""


@dataclass(frozen=True)
class SigningKey:
    algorithm: Algorithm
    private: bytes  # as dkimpy takes it: PKCS#1 PEM (RSA) or the base64 seed (Ed25519)
    public_record: str  # the TXT record value to publish (RFC 6376 §3.6.1)
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

    def sign(self, data: bytes) -> bytes:
        """The b= value's bytes over the canonicalised header `data` (RFC 6376 §3.7)."""
        if isinstance(self.key, rsa.RSAPrivateKey):
            return self.key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        # RFC 8463 §3: Ed25519 signs the SHA-256 hash of the data, not the data.
        return self.key.sign(hashlib.sha256(data).digest())


def load_signing_key(path: Path) -> SigningKey:
    """Read a PEM private key (PKCS#8 or PKCS#1, not encrypted): RSA ≥ 2048 bits or Ed25519."""
    try:
        if path.stat().st_size > MAX_KEY_FILE:
            raise DkimKeyError(f"{path}: too large for a private key file")
        data = path.read_bytes()
    except FileNotFoundError:
        raise DkimKeyError(f"{path}: no such file") from None
    except OSError as exc:
        raise DkimKeyError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise DkimKeyError(f"{path}: the private key is encrypted; DKIM keys are not") from None
    except (ValueError, UnsupportedAlgorithm):
        raise DkimKeyError(f"{path}: not a PEM private key") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise DkimKeyError(
                f"{path}: RSA key of {key.key_size} bits; at least {MIN_RSA_BITS} required "
                f"(RFC 8301 §3.2)"
            )
        pkcs1 = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        spki = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return SigningKey("rsa-sha256", pkcs1, _record("rsa", spki), key)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        seed = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        raw_public = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        # RFC 8463 §4.2: p= is the base64 of the 32-octet public key itself.
        return SigningKey(
            "ed25519-sha256", base64.b64encode(seed), _record("ed25519", raw_public), key
        )
    raise DkimKeyError(f"{path}: neither an RSA nor an Ed25519 private key")


def _record(kind: str, public: bytes) -> str:
    return f"v=DKIM1; k={kind}; p={base64.b64encode(public).decode('ascii')}"


def generate_key(
    path: Path, algorithm: Literal["rsa", "ed25519"] = "rsa", bits: int = 2048
) -> None:
    """Write a new private key (PKCS#8 PEM) readable by its owner only; never overwrites."""
    if algorithm == "rsa":
        if bits < MIN_RSA_BITS:
            raise DkimKeyError(f"RSA keys of at least {MIN_RSA_BITS} bits (RFC 8301 §3.2)")
        key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey = rsa.generate_private_key(
            public_exponent=65537, key_size=bits
        )
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        # O_EXCL: an existing key (perhaps published in DNS) is never replaced by accident.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise DkimKeyError(f"{path}: exists; refusing to overwrite a key") from None
    except OSError as exc:
        raise DkimKeyError(f"{path}: cannot create: {exc.strerror or exc}") from None
    with os.fdopen(fd, "wb") as out:
        out.write(pem)


def dns_record(selector: str, domain: str, key: SigningKey) -> str:
    """The zone-file line to publish: `<selector>._domainkey.<domain>. IN TXT "…" "…"`.

    A TXT character-string holds at most 255 octets (RFC 1035 §3.3.14); a 2048-bit RSA key
    does not fit in one, so the value is cut into several, which verifiers concatenate
    (RFC 6376 §3.6.2.2).
    """
    value = key.public_record
    chunks = [value[i : i + TXT_STRING_MAX] for i in range(0, len(value), TXT_STRING_MAX)]
    strings = " ".join(f'"{chunk}"' for chunk in chunks)
    return f"{key_name(selector, domain)}. IN TXT {strings}"


class DkimSigner:
    """Signs messages for the configured domains with one key and selector."""

    def __init__(self, key: SigningKey, selector: str, domains: Sequence[str]) -> None:
        if not domains:
            raise ValueError("at least one signing domain")
        self.key = key
        self.selector = selector
        self.domains = tuple(d.lower().rstrip(".") for d in domains)

    @classmethod
    def from_settings(cls, settings: DkimSettings) -> DkimSigner | None:
        """The signer `[dkim]` describes, or None when no private key is configured.

        The settings were validated at load (mssante.config), so a failure here is a file that
        changed since; it raises DkimKeyError.
        """
        if settings.private_key is None:
            return None
        return cls(load_signing_key(settings.private_key), settings.selector, settings.domains)

    def domain_for(self, message: bytes) -> str:
        """d=: the From: domain or the listed domain above it, else the first listed domain."""
        header = split_header(message)
        from_values = [f.value for f in header.fields if f.name == "from"]
        for address in parse_addresses(from_values[0] if from_values else None):
            host = (address.host or "").lower().rstrip(".")
            for domain in self.domains:
                if host == domain or host.endswith("." + domain):
                    return domain
        return self.domains[0]

    def signature_field(self, message: bytes, now: float | None = None) -> bytes:
        """The `DKIM-Signature:` field (CRLF-terminated) to put on top of `message`."""
        head, body = _split(message)
        fields = _fields(head)
        present = [name for name, _ in fields]
        names: list[str] = []
        for name in SIGNED_FIELDS:
            names += [name] * max(present.count(name), 1)
        names.append("from")  # oversigned: a From: added later breaks the signature
        body_hash = base64.b64encode(hashlib.sha256(_relaxed_body(body)).digest()).decode()
        tags = [
            "v=1",
            f"a={self.key.algorithm}",
            "c=relaxed/relaxed",
            f"d={self.domain_for(message)}",
            f"s={self.selector}",
            f"t={int(time.time() if now is None else now)}",
            "h=" + ":".join(names),
            f"bh={body_hash}",
            "b=",
        ]
        unsigned = _fold("DKIM-Signature: " + "; ".join(tags))
        # RFC 6376 §5.4.2: each listed name takes the next instance from the bottom up; a
        # name listed more often than it occurs adds nothing (it signs the absence).
        remaining: dict[str, list[bytes]] = {}
        for name, raw in fields:
            remaining.setdefault(name, []).append(raw)
        signed = bytearray()
        for name in names:
            instances = remaining.get(name)
            if instances:
                signed += _relaxed_header(instances.pop())
        signed += _relaxed_header(unsigned).removesuffix(b"\r\n")  # §3.7: without its CRLF
        value = base64.b64encode(self.key.sign(bytes(signed))).decode("ascii")
        chunks = [value[i : i + B64_LINE] for i in range(0, len(value), B64_LINE)]
        return unsigned.removesuffix(b"\r\n") + "\r\n\t".join(chunks).encode() + b"\r\n"

    async def sign(self, message: bytes) -> bytes:
        """`message` with our DKIM-Signature prepended; hashing off the loop when large."""
        if len(message) > THREAD_THRESHOLD:
            field = await asyncio.to_thread(self.signature_field, message)
        else:
            field = self.signature_field(message)
        return field + message


# --- RFC 6376 §3.4.2 and §3.4.4: relaxed canonicalisation -------------------------------------

B64_LINE = 72  # b= is folded into lines of this many base64 characters
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_WSP_RUN = re.compile(rb"[ \t]+")
_TRAILING_WSP = re.compile(rb"[ \t]+\r\n")
_UNFOLD = re.compile(rb"\r?\n(?=[ \t])")


def _split(message: bytes) -> tuple[bytes, bytes]:
    """(header with its last CRLF, body); bare LF line ends made CRLF (§5.3: canonicalise
    as the message will travel, and SMTP carries CRLF)."""
    if b"\n" in message.replace(b"\r\n", b""):
        message = re.sub(rb"\r?\n", b"\r\n", message)
    match = _HEADER_END.search(message)
    if match is None:
        return message if message.endswith(b"\r\n") else message + b"\r\n", b""
    return message[: match.start()] + b"\r\n", message[match.end() :]


def _fields(head: bytes) -> list[tuple[str, bytes]]:
    """(lower-cased name, the whole field with its folding and CRLF), in order."""
    fields: list[tuple[str, bytes]] = []
    for line in head.split(b"\r\n")[:-1]:
        if line[:1] in (b" ", b"\t") and fields:
            name, raw = fields[-1]
            fields[-1] = (name, raw + line + b"\r\n")
        elif b":" in line:
            name = line.split(b":", 1)[0].strip().lower().decode("ascii", "replace")
            fields.append((name, line + b"\r\n"))
    return fields


def _relaxed_header(raw: bytes) -> bytes:
    """§3.4.2: name lower-cased, value unfolded, white space runs one space, none at the ends."""
    name, _, value = raw.partition(b":")
    value = _WSP_RUN.sub(b" ", _UNFOLD.sub(b"", value.removesuffix(b"\r\n"))).strip(b" ")
    return name.strip(b" \t").lower() + b":" + value + b"\r\n"


def _relaxed_body(body: bytes) -> bytes:
    """§3.4.4: white space runs one space, none at line ends, no empty lines at the end."""
    if not body:
        return b""
    text = _TRAILING_WSP.sub(b"\r\n", _WSP_RUN.sub(b" ", body))
    if not text.endswith(b"\r\n"):
        text = text.rstrip(b" \t") + b"\r\n"
    while text.endswith(b"\r\n\r\n"):
        text = text[:-2]
    return b"" if text == b"\r\n" else text


def _fold(field: str) -> bytes:
    """The field folded between tags so that lines stay under 78 characters (RFC 5322 §2.1.1);
    CRLF-terminated. The h= list is folded at its colons when it is long."""
    lines: list[str] = []
    line = ""
    for index, part in enumerate(field.split("; ")):
        piece = part if index == len(field.split("; ")) - 1 else part + ";"
        for word in _split_long(piece):
            if line and len(line) + 1 + len(word) > 76:
                lines.append(line)
                line = "\t" + word
            else:
                line = f"{line} {word}" if line else word
    lines.append(line)
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def _split_long(piece: str) -> list[str]:
    if len(piece) <= 70 or not piece.startswith("h="):
        return [piece]
    names = piece.split(":")
    return [name + ":" for name in names[:-1]] + [names[-1]]
