"""Parsing of `MAIL FROM` and `RCPT TO` arguments: the path and the ESMTP parameters.

Pure functions, no I/O: a malformed argument is a `MailError` carrying the reply to send.
Covers RFC 5321 §4.1.2 paths, SIZE (RFC 1870), BODY (RFC 6152), SMTPUTF8 (RFC 6531) and the
DSN parameters RET, ENVID, NOTIFY and ORCPT (RFC 3461 §4), whose values are xtext.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mssante.operator.errors import MailError

# RFC 3461 §4: ENVID is at most 100 characters; ORCPT's address at most 500.
MAX_ENVID = 100
MAX_ORCPT = 500
NOTIFY_VALUES = frozenset({"SUCCESS", "FAILURE", "DELAY"})

_KEYWORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
_XTEXT = re.compile(r"^(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*$")
# A pragmatic path check: one @, no spaces or angle brackets, printable characters. The
# address itself is judged later (hosted? whitelisted domain?), with its own replies.
_MAILBOX = re.compile(r"^[^\s<>@]+@[^\s<>@]+$")


@dataclass(frozen=True)
class MailParams:
    sender: str  # "" for the null reverse-path <>
    size: int | None
    body: str  # "7BIT" or "8BITMIME"
    smtputf8: bool
    ret: str | None
    envid: str | None


@dataclass(frozen=True)
class RcptParams:
    recipient: str
    notify: frozenset[str] | None  # frozenset() means NOTIFY=NEVER
    orcpt: str | None


def _syntax(text: str) -> MailError:
    return MailError(501, "5.5.4", text, reason="syntax")


def _unknown_param(name: str) -> MailError:
    return MailError(555, "5.5.4", f"Parameter {name} not recognised", reason="syntax")


def decode_xtext(value: str) -> str:
    """RFC 3461 §4: `+XX` is the byte XX; every other character stands for itself."""
    if not _XTEXT.match(value):
        raise _syntax("Invalid xtext value")
    return re.sub(r"\+([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), value)


def encode_xtext(value: str) -> str:
    """RFC 3461 §4: `+`, `=`, and characters outside `!`..`~` are written `+XX` (UTF-8 bytes)."""
    out = []
    for byte in value.encode("utf-8"):
        char = chr(byte)
        out.append(char if 0x21 <= byte <= 0x7E and char not in "+=" else f"+{byte:02X}")
    return "".join(out)


def _split(arg: str | None, keyword: str) -> tuple[str, list[str]]:
    """`FROM:<path> P1 P2` → (`path`, [P1, P2]); the colon may be followed by spaces."""
    if arg is None or not arg[: len(keyword)].upper() == keyword:
        raise _syntax(f"Syntax: {keyword}<address> [parameters]")
    rest = arg[len(keyword) :].lstrip()
    if not rest.startswith("<"):
        raise _syntax(f"Syntax: {keyword}<address> [parameters]")
    end = rest.find(">")
    if end < 0:
        raise _syntax("Unterminated address: missing '>'")
    path = rest[1:end]
    params = rest[end + 1 :].split()
    return path, params


def _path(path: str, what: str) -> str:
    # RFC 5321 §4.1.2: a source route (`@a,@b:user@c`) must be accepted and its route ignored.
    if path.startswith("@") and ":" in path:
        path = path.split(":", 1)[1]
    if len(path) > 256:  # RFC 5321 §4.5.3.1.3: a path is at most 256 octets
        raise MailError(
            501,
            "5.1.3" if what == "recipient" else "5.1.7",
            f"Bad {what} address: too long",
            reason="syntax",
        )
    if not _MAILBOX.match(path):
        enhanced = "5.1.3" if what == "recipient" else "5.1.7"
        raise MailError(501, enhanced, f"Bad {what} address syntax", reason="syntax")
    return path


def _pairs(params: list[str]) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for param in params:
        name, sep, value = param.partition("=")
        if not _KEYWORD.match(name):
            raise _syntax(f"Malformed parameter {param[:40]!r}")
        key = name.upper()
        if key in found:
            raise _syntax(f"Parameter {key} given twice")
        found[key] = value if sep else None
    return found


def parse_mail(arg: str | None, *, size_limit: int, smtputf8_enabled: bool = True) -> MailParams:
    path, raw = _split(arg, "FROM:")
    sender = "" if path == "" else _path(path, "sender")
    params = _pairs(raw)
    size: int | None = None
    if "SIZE" in params:
        value = params.pop("SIZE")
        if value is None or not value.isdigit() or len(value) > 20:
            raise _syntax("SIZE takes a number of octets")
        size = int(value)
        if size_limit and size > size_limit:
            # RFC 1870 §6.2: a declared size over our limit is refused at once.
            raise MailError(
                552, "5.3.4", f"Message too big (limit {size_limit} bytes)", reason="too_big"
            )
    body = "7BIT"
    if "BODY" in params:
        value = (params.pop("BODY") or "").upper()
        if value not in ("7BIT", "8BITMIME"):
            raise _syntax("BODY takes 7BIT or 8BITMIME")
        body = value
    smtputf8 = False
    if "SMTPUTF8" in params:
        if params.pop("SMTPUTF8") is not None:
            raise _syntax("SMTPUTF8 takes no value")
        if not smtputf8_enabled:
            raise _unknown_param("SMTPUTF8")
        smtputf8 = True
    ret: str | None = None
    if "RET" in params:
        value = (params.pop("RET") or "").upper()
        if value not in ("FULL", "HDRS"):
            raise _syntax("RET takes FULL or HDRS")
        ret = value
    envid: str | None = None
    if "ENVID" in params:
        value = params.pop("ENVID")
        if not value:
            raise _syntax("ENVID takes a value")
        envid = decode_xtext(value)
        if len(envid) > MAX_ENVID:
            raise _syntax(f"ENVID longer than {MAX_ENVID} characters")
    if params:
        raise _unknown_param(next(iter(params)))
    if not smtputf8 and not sender.isascii():
        # RFC 6531 §3.4: a non-ASCII address needs the SMTPUTF8 parameter.
        raise MailError(553, "5.6.7", "Non-ASCII address without SMTPUTF8", reason="syntax")
    return MailParams(sender, size, body, smtputf8, ret, envid)


def parse_rcpt(arg: str | None, *, smtputf8: bool) -> RcptParams:
    path, raw = _split(arg, "TO:")
    if path.lower() == "postmaster":
        # RFC 5321 §4.5.1: <Postmaster> without a domain must be accepted; it is resolved
        # by the recipient check like any other unqualified name (refused unless hosted).
        raise MailError(550, "5.1.1", "<postmaster>: give a domain", reason="unknown_user")
    recipient = _path(path, "recipient")
    if not smtputf8 and not recipient.isascii():
        raise MailError(553, "5.6.7", "Non-ASCII address without SMTPUTF8", reason="syntax")
    params = _pairs(raw)
    notify: frozenset[str] | None = None
    if "NOTIFY" in params:
        values = [v.upper() for v in (params.pop("NOTIFY") or "").split(",")]
        # RFC 3461 §4.1: NEVER alone, or any of SUCCESS, FAILURE, DELAY.
        if values == ["NEVER"]:
            notify = frozenset()
        elif values and all(v in NOTIFY_VALUES for v in values) and len(set(values)) == len(values):
            notify = frozenset(values)
        else:
            raise _syntax("NOTIFY takes NEVER, or SUCCESS, FAILURE and DELAY")
    orcpt: str | None = None
    if "ORCPT" in params:
        value = params.pop("ORCPT") or ""
        addr_type, sep, address = value.partition(";")
        if not sep or not _KEYWORD.match(addr_type) or not address:
            raise _syntax("ORCPT takes addr-type;xtext")
        decoded = decode_xtext(address)
        if len(decoded) > MAX_ORCPT:
            raise _syntax(f"ORCPT longer than {MAX_ORCPT} characters")
        orcpt = f"{addr_type.lower()};{decoded}"
    if params:
        raise _unknown_param(next(iter(params)))
    return RcptParams(recipient, notify, orcpt)
