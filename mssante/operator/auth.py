"""Who is logging in: the checks IMAP and SMTP submission share (one `Authenticator` per
process, so that both protocols feed the same failed-login slow-down).

A failed login answers the same refusal whether the account exists or not (no enumeration,
rfc/9051 §11.3, rfc/4954 §4 `535 5.7.8`): an unknown name costs the same argon2 work as a wrong
password. Repeated failures slow down further attempts, per account and per client address, so
that guessing a password from one address or spraying one account from many costs time
(rfc/9051 §11.3 "servers SHOULD implement mechanisms to slow down"), whichever protocol the
attempts come through.

Certificates (SASL EXTERNAL, rfc/4422 App. A) are judged by the PKI layer and mapped to
mailboxes by `imap/external.py`, the same for both protocols.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final

from cryptography import x509

from mssante.operator.imap import external, queries
from mssante.operator.passwords import hash_async, verify_async
from mssante.operator.store.db import Store
from mssante.pki.errors import ValidationError
from mssante.pki.identity import identity_of
from mssante.pki.runtime import Pki
from mssante.pki.validation import Purpose

FORGET_AFTER_SECONDS: Final = 900.0  # a quiet quarter of an hour clears an account's record
MAX_ENTRIES: Final = 100_000  # bounded memory whatever the number of names tried
MAX_USERNAME: Final = 320  # rfc/5321 §4.5.3.1: the longest address


@dataclass(frozen=True, slots=True)
class PlainCredentials:
    authzid: str
    authcid: str
    password: str


def decode_plain(data: bytes) -> PlainCredentials | None:
    """`[authzid] NUL authcid NUL passwd` (rfc/4616 §2), UTF-8; None when malformed."""
    pieces = data.split(b"\x00")
    if len(pieces) != 3:
        return None
    try:
        authzid, authcid, password = (p.decode("utf-8") for p in pieces)
    except UnicodeDecodeError:
        return None
    if not authcid or not password:
        return None
    return PlainCredentials(authzid, authcid, password)


@dataclass(slots=True)
class _Record:
    failures: int
    last: float


class LoginThrottle:
    """Failures per key (an account name or a client address) and the delay they earn.

    The first `free_failures` failures cost nothing (a mistyped password); each further one
    doubles the delay, from one second up to `max_delay`.
    """

    def __init__(self, free_failures: int, max_delay: float) -> None:
        self.free_failures = free_failures
        self.max_delay = max_delay
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def _get(self, key: str, now: float) -> _Record | None:
        record = self._records.get(key)
        if record is not None and now - record.last > FORGET_AFTER_SECONDS:
            del self._records[key]
            return None
        return record

    def delay(self, keys: tuple[str, ...], now: float) -> float:
        """Seconds to wait before judging an attempt on these keys."""
        worst = 0.0
        for key in keys:
            record = self._get(key, now)
            if record is None or record.failures < self.free_failures:
                continue
            extra = record.failures - self.free_failures
            worst = max(worst, min(self.max_delay, 2.0 ** min(extra, 32)))
        return worst

    def failed(self, keys: tuple[str, ...], now: float) -> None:
        for key in keys:
            record = self._get(key, now)
            if record is None:
                record = _Record(0, now)
            record.failures += 1
            record.last = now
            self._records[key] = record
            self._records.move_to_end(key)
        while len(self._records) > MAX_ENTRIES:
            self._records.popitem(last=False)

    def succeeded(self, key: str) -> None:
        """A correct password clears the account's record (not the address's)."""
        self._records.pop(key, None)


@dataclass(frozen=True)
class Login:
    """The verdict on one attempt. `account` None: refused, `reason` says why (for the audit
    trail only: the client always hears the same refusal). `user`: the name tried, normalised.
    `bound`: with a certificate, every mailbox it maps to (APP mailboxes it may send as)."""

    user: str
    account: queries.Account | None
    reason: str | None = None
    details: dict[str, object] = field(default_factory=dict)
    bound: tuple[external.Candidate, ...] = ()


class Authenticator:
    """Password and certificate logins against the store, with the shared slow-down."""

    def __init__(self, store: Store, pki: Pki, *, free_failures: int, max_delay: float) -> None:
        self.store = store
        self.pki = pki
        self.throttle = LoginThrottle(free_failures, max_delay)
        self._dummy: str | None = None

    async def dummy_hash(self) -> str:
        """A hash of a random password: verified for unknown users, so that their refusal
        costs the same time as a wrong password (no enumeration by timing)."""
        if self._dummy is None:
            self._dummy = await hash_async(secrets.token_urlsafe(24))
        return self._dummy

    async def _slow_down(self, keys: tuple[str, ...]) -> None:
        delay = self.throttle.delay(keys, time.monotonic())
        if delay:
            await asyncio.sleep(delay)

    async def password(self, username: str, password: str, peer_ip: str) -> Login:
        name = username.strip().lower()[:MAX_USERNAME]
        keys = ("user:" + name, "ip:" + peer_ip)
        await self._slow_down(keys)
        async with self.store.read_session() as session:
            account = await queries.find_account(session, name)
        stored = account.password_hash if account is not None else None
        # The same argon2 work whether the account exists or not: no enumeration by timing.
        ok = await verify_async(stored or await self.dummy_hash(), password)
        if account is None or stored is None or not ok:
            self.throttle.failed(keys, time.monotonic())
            reason = (
                "unknown_user"
                if account is None
                else "no_password"
                if stored is None
                else "bad_password"
            )
            return Login(name, None, reason)
        self.throttle.succeeded(keys[0])
        return Login(name, account)

    async def certificate(self, cert: x509.Certificate | None, authzid: str, peer_ip: str) -> Login:
        """SASL EXTERNAL: `authzid` empty means the mailbox the certificate maps to
        (external.choose); `cert` is the TLS client certificate, None when none was sent."""
        authzid = authzid.strip().lower()[:MAX_USERNAME]
        identity = identity_of(cert) if cert is not None else None
        details: dict[str, object] = {}
        if identity is not None:
            details = {"subject": identity.subject_dn, "fingerprint": identity.sha256}
        # The slow-down's keys: the mailbox named, else the certificate, and the address.
        named = authzid or (identity.sha256 if identity is not None else "")
        keys = ("user:" + named, "ip:" + peer_ip) if named else ("ip:" + peer_ip,)
        await self._slow_down(keys)
        verdict: queries.Account | str
        found: list[external.Candidate] = []
        if cert is None:
            verdict = "no_certificate"
        else:
            try:
                # The relay's validation path, for a professional's certificate (clientAuth).
                validated = self.pki.validate(cert, Purpose.CLIENT)
            except ValidationError as exc:
                verdict = f"invalid_certificate:{exc.reason}"
            else:
                async with self.store.read_session() as session:
                    found = await external.candidates(session, validated.identity)
                verdict = external.choose(found, authzid)
        if isinstance(verdict, str):
            self.throttle.failed(keys, time.monotonic())
            return Login(authzid, None, verdict, details)
        if named:
            self.throttle.succeeded(keys[0])
        return Login(authzid, verdict, None, details, tuple(found))
