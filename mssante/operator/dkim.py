"""DKIM verification of inbound mail (RFC 6376), recorded in Authentication-Results, never enforced.

Inside the MSSanté trust space peers are authenticated by their certificates and the
whitelist; DKIM is checked because it costs little and tells the reader whether the message
was altered on its way. The result goes into an `Authentication-Results` field (RFC 8601);
no message is refused for it.

The cryptography is dkimpy's. What is ours is keeping the event loop free:

- the public keys are fetched first, asynchronously: from `[dkim] static_keys`, else from an
  in-memory cache, else with dnspython's asyncio resolver under `dns_timeout_seconds`; dkimpy
  is then handed a lookup function that only returns what was fetched;
- the hashing and the signature check run inline for ordinary messages and in a worker thread
  for large ones;
- a message without a DKIM-Signature field costs nothing beyond looking at its header.

Results follow RFC 8601 §2.7.1: `pass`, `fail` (the signature or the body hash does not
verify), `temperror` (the key could not be fetched: DNS timeout or server failure),
`permerror` (a malformed signature, no key published, an unusable key), `none` (no signature).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import dkim as dkimpy  # type: ignore[import-untyped]
import dns.asyncresolver
import dns.exception
import dns.name
import dns.resolver

from mssante.config import DkimSettings

log = logging.getLogger("mssante.dkim")

MAX_SIGNATURES = 4  # RFC 6376 §6.1: verifiers may limit how many signatures they check
THREAD_THRESHOLD = 256 * 1024  # bytes: above this, hashing leaves the event loop
KEY_CACHE_SIZE = 4096
KEY_CACHE_MAX_TTL = 3600.0  # seconds, whatever the record's TTL says
NEGATIVE_TTL = 60.0  # "no key published" is remembered this long
MIN_KEY_BITS = 1024  # RFC 8301 §3.2: verifiers must accept 1024 to 4096, refuse below 1024

# RFC 6376 §3.5: d= is a domain name, s= a selector made of sub-domain labels (underscores,
# outside the letter of RFC 5321, are accepted: they exist in published selectors).
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_DOMAIN = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
# A value that may appear in Authentication-Results without quoting (RFC 2045 token).
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`{|}~0-9A-Za-z]+$")


@dataclass(frozen=True)
class DkimResult:
    """The outcome for one DKIM-Signature field."""

    result: str  # RFC 8601 §2.7.1
    domain: str | None  # the signing domain, d=
    selector: str | None  # s=
    reason: str | None = None  # short, fixed texts; never message content


@dataclass(frozen=True)
class DkimVerdict:
    """All signatures checked, in header order (the first field first)."""

    results: tuple[DkimResult, ...]

    @property
    def summary(self) -> str:
        """One word for reports and audit: `pass` if any signature passes, else the first."""
        if not self.results:
            return "none"
        if any(r.result == "pass" for r in self.results):
            return "pass"
        return self.results[0].result


NO_SIGNATURE = DkimVerdict(())


def signature_tags(value: str) -> dict[str, str]:
    """The tag=value list of a DKIM-Signature (RFC 6376 §3.2), white space removed."""
    tags: dict[str, str] = {}
    for item in value.split(";"):
        name, sep, tag_value = item.partition("=")
        name = name.strip()
        if sep and name and name not in tags:
            tags[name] = re.sub(r"\s+", "", tag_value)
    return tags


def key_name(selector: str, domain: str) -> str:
    """`selector._domainkey.domain` (RFC 6376 §3.6.2.1), lower-cased, no root dot."""
    return f"{selector}._domainkey.{domain}".lower().rstrip(".")


@dataclass(frozen=True)
class _Key:
    """The outcome of fetching one key record."""

    record: bytes | None  # the TXT record, strings concatenated (RFC 6376 §3.6.2.2)
    result: str | None = None  # set when no record can be used: temperror / permerror
    reason: str | None = None


class DkimVerifier:
    """Verifies DKIM signatures with keys fetched without blocking the event loop."""

    def __init__(
        self, settings: DkimSettings, resolver: dns.asyncresolver.Resolver | None = None
    ) -> None:
        """`resolver`: a configured dnspython resolver; by default the system's, made at the
        first lookup (reading /etc/resolv.conf then, not at import)."""
        self._timeout = settings.dns_timeout_seconds
        self._static = {
            name.lower().rstrip("."): value.encode("utf-8")
            for name, value in settings.static_keys.items()
        }
        self._cache: dict[str, tuple[float, _Key]] = {}
        self._resolver = resolver

    async def verify(self, message: bytes, signatures: Sequence[str]) -> DkimVerdict:
        """Check the DKIM-Signature field values `signatures` (in header order) of `message`.

        Never raises: every problem is a result.
        """
        if not signatures:
            return NO_SIGNATURE
        pending: list[tuple[int, str, str]] = []  # (index, domain, selector)
        early: dict[int, DkimResult] = {}
        keys: dict[str, _Key] = {}
        for index, value in enumerate(signatures[:MAX_SIGNATURES]):
            tags = signature_tags(value)
            domain, selector = tags.get("d", ""), tags.get("s", "")
            if not _DOMAIN.match(domain) or not _DOMAIN.match(selector) or len(domain) > 253:
                early[index] = DkimResult(
                    "permerror", domain or None, selector or None, "malformed d= or s="
                )
                continue
            name = key_name(selector, domain)
            if name not in keys:
                keys[name] = await self._key(name)
            key = keys[name]
            if key.record is None:
                early[index] = DkimResult(key.result or "permerror", domain, selector, key.reason)
                continue
            pending.append((index, domain, selector))
        checked: dict[int, DkimResult] = {}
        if pending:
            records = {name: key.record for name, key in keys.items() if key.record is not None}
            if len(message) > THREAD_THRESHOLD:
                checked = await asyncio.to_thread(_check, message, pending, records)
            else:
                checked = _check(message, pending, records)
        merged = {**early, **checked}
        return DkimVerdict(tuple(merged[i] for i in sorted(merged)))

    async def _key(self, name: str) -> _Key:
        static = self._static.get(name)
        if static is not None:
            return _Key(static)
        now = time.monotonic()
        cached = self._cache.get(name)
        if cached is not None and cached[0] > now:
            return cached[1]
        key, ttl = await self._lookup(name)
        if ttl > 0:
            if len(self._cache) >= KEY_CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))  # oldest insertion
            self._cache[name] = (now + ttl, key)
        return key

    async def _lookup(self, name: str) -> tuple[_Key, float]:
        """(key, seconds to remember it); temporary failures are not remembered."""
        try:
            if self._resolver is None:
                self._resolver = dns.asyncresolver.Resolver()
            answer = await self._resolver.resolve(
                dns.name.from_text(name), "TXT", lifetime=self._timeout, search=False
            )
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            # RFC 6376 §6.1.2: no key record is a permanent failure.
            return _Key(None, "permerror", "no key for signature"), NEGATIVE_TTL
        except (dns.name.LabelTooLong, dns.name.NameTooLong, dns.name.EmptyLabel):
            return _Key(None, "permerror", "invalid key name"), NEGATIVE_TTL
        except dns.exception.Timeout:
            return _Key(None, "temperror", "key query timed out"), 0.0
        except (dns.exception.DNSException, OSError) as exc:
            # SERVFAIL from every server, no resolver configuration, a network error.
            log.info("DKIM key lookup failed: %s", type(exc).__name__)
            return _Key(None, "temperror", "key query failed"), 0.0
        for rdata in answer:
            strings = getattr(rdata, "strings", None)
            if strings:
                ttl = min(float(answer.rrset.ttl if answer.rrset else 0), KEY_CACHE_MAX_TTL)
                return _Key(b"".join(strings)), ttl
        return _Key(None, "permerror", "no key for signature"), NEGATIVE_TTL


def _check(
    message: bytes, pending: Sequence[tuple[int, str, str]], records: Mapping[str, bytes]
) -> dict[int, DkimResult]:
    """The CPU part: canonicalise, hash and check each signature (RFC 6376 §6.1.3).

    dkimpy is given a lookup function that answers from `records` only, so no I/O happens
    here whichever thread runs it.
    """

    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        return records.get(name.decode("ascii", "replace").lower().rstrip("."))

    out: dict[int, DkimResult] = {}
    try:
        verifier = dkimpy.DKIM(message, logger=log, minkey=MIN_KEY_BITS)
    except Exception:  # dkimpy parses the whole message: any input must give a result
        log.debug("DKIM: message not parsable", exc_info=True)
        for index, domain, selector in pending:
            out[index] = DkimResult("permerror", domain, selector, "message not parsable")
        return out
    for index, domain, selector in pending:
        out[index] = _check_one(verifier, index, domain, selector, records, lookup)
    return out


def _check_one(
    verifier: dkimpy.DKIM,
    index: int,
    domain: str,
    selector: str,
    records: Mapping[str, bytes],
    lookup: object,
) -> DkimResult:
    name = key_name(selector, domain)
    try:
        dkimpy.evaluate_pk(name.encode("ascii"), records[name])
    except Exception:
        return DkimResult("permerror", domain, selector, "unusable key")
    try:
        verifier.verify_headerprep(index)
    except Exception:
        return DkimResult("permerror", domain, selector, "malformed signature")
    try:
        ok = verifier.verify(idx=index, dnsfunc=lookup)
    except dkimpy.ValidationError as exc:
        reason = "body hash mismatch" if "body hash" in str(exc) else "signature did not verify"
        return DkimResult("fail", domain, selector, reason)
    except dkimpy.KeyFormatError:
        return DkimResult("permerror", domain, selector, "unusable key")
    except Exception:
        log.debug("DKIM: verification error", exc_info=True)
        return DkimResult("permerror", domain, selector, "verification error")
    if ok:
        return DkimResult("pass", domain, selector)
    return DkimResult("fail", domain, selector, "signature did not verify")


def _value(text: str) -> str:
    """An RFC 8601 value: a token as is, anything else as a quoted-string."""
    if _TOKEN.match(text):
        return text
    cleaned = "".join(c for c in text if c.isprintable() and c.isascii())
    return '"' + cleaned.replace("\\", "\\\\").replace('"', '\\"') + '"'


def result_clauses(verdict: DkimVerdict) -> list[str]:
    """`dkim=…` resinfo clauses for Authentication-Results (RFC 8601 §2.2, §2.7.1)."""
    if not verdict.results:
        return ["dkim=none"]
    clauses = []
    for r in verdict.results:
        clause = f"dkim={r.result}"
        if r.reason:
            clause += f" reason={_value(r.reason)}"
        if r.domain:
            clause += f" header.d={_value(r.domain)}"
        if r.selector:
            clause += f" header.s={_value(r.selector)}"
        clauses.append(clause)
    return clauses
