"""Modified UTF-7, the encoding of mailbox names in IMAP (rfc/3501 §5.1.3, rfc/9051 §5.1.3).

Printable US-ASCII (0x20-0x7E) stands for itself, except "&" which is written "&-". Every other
run of characters is written "&" + modified BASE64 (rfc/2152 with "," for "/" and no padding) of
its UTF-16BE form + "-".

Decoding is strict: the RFC says a name has exactly one encoding, so anything another encoder
would not have produced (a shifted printable ASCII character, two adjacent shifted runs, non-zero
padding bits, a lone surrogate, bytes outside 0x20-0x7E) is refused with `ValueError`. Two
different wire names for one mailbox would otherwise let a client dodge a name-based check.
"""

from __future__ import annotations

import base64
import binascii

_B64_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,")


def _is_direct(ch: str) -> bool:
    # rfc/3501 §5.1.3: printable US-ASCII except "&" represent themselves.
    return "\x20" <= ch <= "\x7e"


def _encode_run(run: str) -> str:
    raw = run.encode("utf-16-be")
    b64 = base64.b64encode(raw).decode("ascii").rstrip("=")
    return "&" + b64.replace("/", ",") + "-"


def encode(name: str) -> str:
    """The modified UTF-7 form of `name` (pure ASCII).

    A lone surrogate in `name` cannot be encoded and raises `ValueError`.
    """
    out: list[str] = []
    run: list[str] = []
    for ch in name:
        if _is_direct(ch):
            if run:
                out.append(_encode_run("".join(run)))
                run = []
            out.append("&-" if ch == "&" else ch)
        else:
            if "\ud800" <= ch <= "\udfff":
                raise ValueError("lone surrogate in mailbox name")
            run.append(ch)
    if run:
        out.append(_encode_run("".join(run)))
    return "".join(out)


def _decode_run(chunk: bytes) -> str:
    if not chunk or any(c not in _B64_ALPHABET for c in chunk):
        raise ValueError("invalid modified BASE64 in mailbox name")
    bits = 6 * len(chunk)
    # Canonical form: the leftover bits after the last whole UTF-16 unit are fewer than six
    # (otherwise a whole character of padding was sent) and all zero.
    if bits % 16 >= 6:
        raise ValueError("modified BASE64 run has a superfluous character")
    padded = chunk.replace(b",", b"/") + b"=" * (-len(chunk) % 4)
    try:
        raw = base64.b64decode(padded, validate=True)
    except binascii.Error as exc:
        raise ValueError("invalid modified BASE64 in mailbox name") from exc
    if len(raw) % 2:
        raise ValueError("modified BASE64 run is not whole UTF-16 units")
    if base64.b64encode(raw).rstrip(b"=") != chunk.replace(b",", b"/"):
        raise ValueError("non-zero padding bits in modified BASE64")
    try:
        text = raw.decode("utf-16-be")
    except UnicodeDecodeError as exc:
        raise ValueError("invalid UTF-16 (lone surrogate) in mailbox name") from exc
    if any(_is_direct(ch) for ch in text):
        # rfc/3501 §5.1.3: printable US-ASCII "MUST NOT" be encoded in modified BASE64.
        raise ValueError("printable ASCII encoded in modified BASE64")
    return text


def decode(data: bytes | str) -> str:
    """The mailbox name that `data` (modified UTF-7) stands for; strict, see the module doc."""
    raw = data.encode("latin-1") if isinstance(data, str) else data
    out: list[str] = []
    i = 0
    n = len(raw)
    previous_was_run = False
    while i < n:
        c = raw[i]
        if not 0x20 <= c <= 0x7E:
            raise ValueError("mailbox name byte outside printable US-ASCII")
        if c != 0x26:  # "&"
            out.append(chr(c))
            previous_was_run = False
            i += 1
            continue
        end = raw.find(b"-", i + 1)
        if end < 0:
            raise ValueError("unterminated modified BASE64 run in mailbox name")
        if end == i + 1:
            out.append("&")
            previous_was_run = False
        else:
            if previous_was_run:
                # Two adjacent runs must have been one: not the canonical encoding.
                raise ValueError("adjacent modified BASE64 runs in mailbox name")
            out.append(_decode_run(raw[i + 1 : end]))
            previous_was_run = True
        i = end + 1
    return "".join(out)
