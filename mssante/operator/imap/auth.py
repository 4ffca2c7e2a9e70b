"""Login decisions without I/O: SASL PLAIN decoding and the failed-login slow-down.

A failed login answers the same `NO [AUTHENTICATIONFAILED]` whether the account exists or not
(no enumeration, rfc/9051 §11.3). Repeated failures slow down further attempts, per account
and per client address, so that guessing a password from one address or spraying one account
from many costs time (rfc/9051 §11.3 "servers SHOULD implement mechanisms to slow down").
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

FORGET_AFTER_SECONDS: Final = 900.0  # a quiet quarter of an hour clears an account's record
MAX_ENTRIES: Final = 100_000  # bounded memory whatever the number of names tried


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
