"""Keeping the live whitelist: fetch, verify, swap atomically, keep the last good copy.

ANS publishes the list daily; the trust space expects operators to refresh it periodically and
never to lose it because a download failed. Hence the rules of :class:`WhitelistStore`, the
same as the CRL store's (:mod:`mssante.pki.crl`):

- a candidate list is refused when the download fails, when it does not match the published
  SHA-256 checksum (if one is configured), when it does not parse (:mod:`.parse`, strict), or
  when its ``DateDeGeneration`` is older than the list in use (an old file served again);
- a refusal logs a warning on the ``mssante.whitelist`` logger and keeps the list in use;
  :meth:`WhitelistStore.refresh` never raises;
- an accepted list replaces the previous one by a single assignment of a new immutable
  :class:`Whitelist`: a reader sees the old list or the new one, never a mixture;
- the last good list is written to the cache directory (atomically) and read back at start, so
  a restart without network still knows who may send; ``status.json`` there is updated on every
  attempt for ``mssante whitelist show`` (:mod:`.cache`).

Downloads are https only (the integrity of the list rests on TLS and the checksum), verified
against the configured trust bundle, presenting our operator certificate when configured.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import ssl
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Final
from urllib.parse import urlsplit

from mssante.fetch import FetchError, download, read_bounded, refresh_periodically
from mssante.pki.errors import PkiError
from mssante.pki.tls import client_context
from mssante.whitelist.cache import CachedCopy, WhitelistCache, WhitelistStatus, age_at
from mssante.whitelist.errors import WhitelistError
from mssante.whitelist.model import Whitelist
from mssante.whitelist.parse import MAX_WHITELIST_BYTES, parse_whitelist

log = logging.getLogger("mssante.whitelist")

DEFAULT_TIMEOUT_SECONDS: Final = 60.0
# A checksum file is one line per published file; a few kilobytes at most.
MAX_CHECKSUM_BYTES: Final = 64 * 1024

_HEX_DIGEST: Final = re.compile(r"[0-9a-fA-F]{64}")
# `sha256sum` (GNU coreutils) prints "<digest>  <name>" ("*<name>" in binary mode);
# `shasum -a 256 --tag` and BSD `sha256` print "SHA256 (<name>) = <digest>".
_GNU_LINE: Final = re.compile(r"([0-9a-fA-F]{64})(?:\s+\*?(.*))?")
_BSD_LINE: Final = re.compile(r"SHA2?-?256 \((.*)\) = ([0-9a-fA-F]{64})", re.IGNORECASE)

ClientCert = tuple[Path, Path, str | None]
"""Our certificate, its private key and the key's password (``None`` if not encrypted)."""


def is_https(source: str) -> bool:
    return source[:8].lower() == "https://"


def parse_checksum_file(text: str, list_name: str) -> str:
    """The SHA-256 digest (lower-case hex) a checksum file gives for the list.

    A file with one digest is taken as is, whatever name follows it: publishers name the list
    differently from the URL it is served at. A file listing several files must name the list
    (``list_name``, the last component of the list's path or URL) exactly once.
    """
    found: list[tuple[str, str]] = []
    for line in text.lstrip("\ufeff").splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        bsd = _BSD_LINE.fullmatch(stripped)
        if bsd is not None:
            found.append((bsd.group(2).lower(), bsd.group(1)))
            continue
        gnu = _GNU_LINE.fullmatch(stripped)
        if gnu is None:
            raise ValueError(f"not a SHA-256 checksum line: {stripped[:100]!r}")
        found.append((gnu.group(1).lower(), (gnu.group(2) or "").strip()))
    if not found:
        raise ValueError("no SHA-256 digest in the checksum file")
    if len(found) == 1:
        return found[0][0]
    named = {digest for digest, name in found if PurePosixPath(name).name == list_name}
    if len(named) != 1:
        raise ValueError(
            f"{len(found)} digests in the checksum file and {len(named)} different ones for "
            f"{list_name!r}"
        )
    return named.pop()


class WhitelistStore:
    """The live whitelist of one source (a file path or an ``https://`` URL).

    An empty ``source`` is the configuration "no whitelist": the list stays empty (every peer
    operator is refused), nothing is fetched and the cache directory is left alone.

    ``checksum``: empty (no check), the 64-hex SHA-256 itself, or a file path or https URL of
    the checksum file published with the list (see :func:`parse_checksum_file`). ``trust``: the
    PEM bundle the https server must chain to, used through :func:`mssante.pki.tls.client_context`
    with ``tls_profile``; ``None`` leaves verification to httpx's defaults (the public web PKI
    roots of ``certifi``, TLS 1.2 or later). ``client_cert`` presents our certificate to the
    server and needs ``trust``. ``clock`` returns the current time (aware, UTC); tests may pass
    a fixed one.

    Raises :class:`WhitelistError` for a source or checksum that can never work (an ``http://``
    URL, an unknown scheme) or TLS settings that do not load.
    """

    def __init__(
        self,
        source: str,
        *,
        cache_dir: Path,
        checksum: str = "",
        trust: Path | None = None,
        client_cert: ClientCert | None = None,
        tls_profile: str = "modern",
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        max_bytes: int = MAX_WHITELIST_BYTES,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        checksum = checksum.strip()
        for what, location in (("source", source), ("checksum", checksum)):
            if "://" in location and not is_https(location):
                # Plain http would let anyone on the path rewrite who may send us mail.
                raise WhitelistError(f"whitelist {what} {location!r}: only https:// or a file")
        self.source = source
        self.checksum = checksum
        self.cache = WhitelistCache(cache_dir, max_bytes)
        self._timeout = timeout_seconds
        self._max_bytes = max_bytes
        self._clock = clock or (lambda: datetime.now(UTC))
        self._tls: ssl.SSLContext | None = None
        if client_cert is not None and trust is None:
            # client_context() is our one TLS factory and verifies against a bundle we name;
            # the public roots (httpx's default) cannot be combined with our certificate here.
            raise WhitelistError("whitelist download: a client certificate needs a trust bundle")
        if trust is not None and (is_https(source) or is_https(checksum)):
            self._tls = _tls_context(tls_profile, trust, client_cert)
        self._current = Whitelist.empty()
        self._sha256: str | None = None
        self._loaded_at: datetime | None = None
        self._from_cache = False
        self._last_attempt: datetime | None = None
        self._last_success: datetime | None = None
        self._last_error: str | None = None
        self._cached: CachedCopy | None = None
        self._seeded = False
        self._lock = asyncio.Lock()

    # -- queries ------------------------------------------------------------------------------

    @property
    def current(self) -> Whitelist:
        """The list in use; :meth:`Whitelist.empty` until one is loaded. Keep it for a decision
        that needs several lookups: it will not change under you."""
        return self._current

    def status(self) -> WhitelistStatus:
        held = self._current
        return WhitelistStatus(
            source=self.source,
            generated=held.generated,
            entries=held.entries,
            domains=held.domains,
            operators=held.operators,
            sha256=self._sha256,
            loaded_at=self._loaded_at,
            age=age_at(held.generated, self._clock()),
            from_cache=self._from_cache,
            last_attempt=self._last_attempt,
            last_success=self._last_success,
            last_error=self._last_error,
        )

    # -- loading ------------------------------------------------------------------------------

    async def load(self) -> None:
        """Start-up: read the cached list back, then fetch the source once. Never raises."""
        await self.refresh()

    async def refresh(self) -> None:
        """Fetch the source; keep the list in use if anything goes wrong. Never raises.

        The first call (or :meth:`load`) reads the cache first: without the cached list as a
        baseline, an older list could not be recognised as a replay.
        """
        if not self.source:
            self._last_error = "no whitelist source configured"
            return
        async with self._lock:
            if not self._seeded:
                self._seeded = True
                try:
                    await self._seed_from_cache()
                except Exception as exc:  # a bad cache must not stop the download
                    log.warning("whitelist cache in %s unusable: %r", self.cache.directory, exc)
            now = self._clock()
            try:
                await self._attempt(now)
            except WhitelistError as exc:
                self._refuse(str(exc))
            except Exception as exc:  # never let a surprise kill the periodic task
                self._refuse(f"unexpected error: {exc!r}")
            else:
                self._last_error = None
            self._last_attempt = now
            await self._save_status()

    async def run_periodic(self, interval_seconds: float, *, immediately: bool = False) -> None:
        """Refresh every ``interval_seconds`` until cancelled.

        Call :meth:`load` first at start-up; the first periodic refresh then happens one
        interval later (or at once with ``immediately=True``).
        """
        await refresh_periodically(self.refresh, interval_seconds, immediately=immediately)

    async def _attempt(self, now: datetime) -> None:
        data = await self._read(self.source, self._max_bytes)
        digest = hashlib.sha256(data).hexdigest()
        if self.checksum:
            expected = await self._expected_digest()
            if digest != expected:
                raise WhitelistError(
                    f"{self.source}: SHA-256 {digest} does not match the published checksum "
                    f"{expected}"
                )
        if digest == self._sha256:
            # The list in use, confirmed by the source: nothing to parse or swap.
            self._from_cache = False
            self._last_success = now
            if self._cached is None or self._cached.sha256 != digest:
                await self._write_list(data, digest, self._loaded_at or now)
            return
        candidate = await asyncio.to_thread(
            parse_whitelist, data, self.source, max_bytes=self._max_bytes
        )
        held = self._current
        if (
            held.generated is not None
            and candidate.generated is not None
            and candidate.generated < held.generated
        ):
            raise WhitelistError(
                f"{self.source}: generated {candidate.generated.isoformat()}, older than the "
                f"list in use ({held.generated.isoformat()}): refusing a replayed list"
            )
        self._install(candidate, digest, loaded_at=now, from_cache=False)
        self._last_success = now
        await self._write_list(data, digest, now)

    def _install(
        self, candidate: Whitelist, digest: str, *, loaded_at: datetime, from_cache: bool
    ) -> None:
        previous = self._current
        added = removed = 0
        if previous.entries:
            old, new = previous.domain_names(), candidate.domain_names()
            added, removed = len(new - old), len(old - new)
        # The swap: one assignment of an immutable object, atomic for every reader.
        self._current = candidate
        self._sha256 = digest
        self._loaded_at = loaded_at
        self._from_cache = from_cache
        log.info(
            "whitelist from %s: %d entries, %d domains, %d operator certificates, generated %s%s%s",
            self.source,
            candidate.entries,
            candidate.domains,
            candidate.operators,
            candidate.generated.isoformat() if candidate.generated else "(no date)",
            f" (+{added}/-{removed} domains)" if previous.entries else "",
            " (from cache)" if from_cache else "",
        )

    def _refuse(self, reason: str) -> None:
        self._last_error = reason
        held = self._current
        kept = (
            f"keeping the list in use: {held.entries} entries"
            if held.entries
            else "no list yet: every peer is refused"
        )
        # Most reasons start with the location at fault (the list or its checksum); name the
        # source when they do not, so every warning says which list it is about.
        where = "" if reason.startswith((self.source, "checksum ")) else f"{self.source}: "
        log.warning("whitelist refused: %s%s (%s)", where, reason, kept)

    async def _read(self, location: str, limit: int) -> bytes:
        try:
            if is_https(location):
                return await download(
                    location,
                    max_bytes=limit,
                    timeout_seconds=self._timeout,
                    verify=self._tls if self._tls is not None else True,
                    https_only=True,
                )
            return await asyncio.to_thread(read_bounded, Path(location), limit)
        except FetchError as exc:
            raise WhitelistError(f"{location}: {exc.problem}") from None

    async def _expected_digest(self) -> str:
        if _HEX_DIGEST.fullmatch(self.checksum):
            return self.checksum.lower()
        try:
            raw = await self._read(self.checksum, MAX_CHECKSUM_BYTES)
        except WhitelistError as exc:
            raise WhitelistError(f"checksum {exc}") from None
        try:
            text = raw.decode("utf-8")
            return parse_checksum_file(text, _last_component(self.source))
        except ValueError as exc:  # UnicodeDecodeError is a ValueError
            raise WhitelistError(f"checksum {self.checksum}: {exc}") from None

    # -- cache --------------------------------------------------------------------------------

    async def _seed_from_cache(self) -> None:
        now = self._clock()
        try:
            stored = await asyncio.to_thread(self.cache.read_status, now)
        except WhitelistError as exc:
            log.warning("whitelist status in %s ignored: %s", self.cache.directory, exc)
            stored = None
        copy = stored[1] if stored is not None else None
        self._cached = copy
        if stored is not None:
            # Carry the history over a restart: the status file then stays meaningful.
            self._last_attempt = stored[0].last_attempt
            self._last_success = stored[0].last_success
            self._last_error = stored[0].last_error
        if copy is not None and copy.source != self.source:
            # The cache is the last good copy of *this* source; after a change of source the
            # old list must not stand in for the new one.
            log.warning(
                "cached whitelist in %s came from %s, not %s: not used",
                self.cache.directory,
                copy.source,
                self.source,
            )
            return
        try:
            data = await asyncio.to_thread(self.cache.read_list)
            if data is None:
                return
            candidate = await asyncio.to_thread(
                parse_whitelist, data, str(self.cache.list_path), max_bytes=self._max_bytes
            )
        except WhitelistError as exc:
            log.warning("cached whitelist refused: %s", exc)
            return
        digest = hashlib.sha256(data).hexdigest()
        if copy is None or copy.sha256 != digest:
            # Written by us but without its provenance (status.json lost, or a crash between
            # the two writes): still the best list we have, dated by the file itself.
            try:
                loaded_at = datetime.fromtimestamp(self.cache.list_path.stat().st_mtime, UTC)
            except OSError:
                loaded_at = now
            self._cached = CachedCopy(self.source, digest, loaded_at)
        else:
            loaded_at = copy.loaded_at
        self._install(candidate, digest, loaded_at=loaded_at, from_cache=True)

    async def _write_list(self, data: bytes, digest: str, loaded_at: datetime) -> None:
        try:
            await asyncio.to_thread(self.cache.write_list, data)
        except OSError as exc:
            log.warning("cannot write the whitelist cache in %s: %s", self.cache.directory, exc)
            return
        self._cached = CachedCopy(self.source, digest, loaded_at)

    async def _save_status(self) -> None:
        try:
            await asyncio.to_thread(self.cache.write_status, self.status(), self._cached)
        except OSError as exc:
            log.warning("cannot write the whitelist status in %s: %s", self.cache.directory, exc)


def _tls_context(profile: str, trust: Path, client_cert: ClientCert | None) -> ssl.SSLContext:
    cert, key, password = client_cert if client_cert is not None else (None, None, None)
    try:
        return client_context(profile, trust, cert, key, key_password=password)
    except PkiError as exc:
        raise WhitelistError(f"whitelist download TLS settings: {exc}") from None


def _last_component(source: str) -> str:
    path = urlsplit(source).path if is_https(source) else source
    return PurePosixPath(path).name
