"""Certificate revocation lists: fetching, verifying, keeping the last valid one per issuer.

The ANS client referential requires revocation checking and that *the last valid CRL be kept* so
that a failed download does not cut service. Hence the rules of :class:`CrlStore`:

- a CRL is accepted only if its signature verifies with the key of a CA of the trust store
  whose name is the CRL issuer (RFC 5280 §6.3.3 (f), (g)) and that CA may sign CRLs;
- a CRL never replaces a newer one for the same issuer (compared by CRL number, RFC 5280
  §5.2.3, else by thisUpdate);
- a refresh that fails (network, file, garbage, wrong signer, older CRL) logs a warning on the
  ``mssante.pki`` logger and keeps what we had; :meth:`CrlStore.refresh` never raises;
- a CRL past its nextUpdate is still used, and :meth:`CrlStore.status` reports it stale;
- with a cache directory, every accepted CRL is written there (atomically) and the store is
  seeded from it at start, so a restart without network still checks revocation.

Only complete CRLs are handled: delta CRLs (RFC 5280 §5.2.4) and indirect CRLs (§5.2.5) are
refused, and each CA is expected to publish one CRL covering all its certificates, as the
IGC-Santé CAs do.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

from mssante.fetch import FetchError, download, read_bounded, refresh_periodically, write_atomically
from mssante.pki.anchors import TrustStore, subject_key_id
from mssante.pki.dn import dn_to_string
from mssante.pki.errors import PkiError

log = logging.getLogger("mssante.pki")

# IGC-Santé CRLs of the personal CAs run to tens of megabytes; bound well above, not unbounded.
DEFAULT_MAX_CRL_BYTES: Final = 256 * 1024 * 1024
DEFAULT_TIMEOUT_SECONDS: Final = 60.0

IssuerKey = bytes
"""SHA-256 of the issuer's SubjectPublicKeyInfo: identifies a CA key, survives renaming."""


@dataclass(frozen=True)
class CrlStatus:
    """What one configured source currently provides, for ``mssante pki status`` and metrics.

    ``issuer`` and the dates describe the last CRL accepted from this source (possibly read
    from the cache at start, then ``from_cache`` is true); they are ``None`` when the source
    never yielded a valid CRL. ``last_error`` is the reason the latest attempt was refused,
    ``None`` when it succeeded.
    """

    source: str
    issuer: str | None
    this_update: datetime | None
    next_update: datetime | None
    crl_number: int | None
    revoked_count: int
    stale: bool
    from_cache: bool
    last_error: str | None


@dataclass(frozen=True)
class _VerifiedCrl:
    der: bytes
    issuer_key: IssuerKey
    issuer_dn: str
    number: int | None
    this_update: datetime
    next_update: datetime | None
    revoked: frozenset[int]


@dataclass
class _SourceState:
    source: str
    cache_name: str
    current: _VerifiedCrl | None = None
    from_cache: bool = False
    last_error: str | None = None
    cached_digest: bytes | None = None


class CrlRefused(PkiError):  # noqa: N818 - a refusal, not a crash: refresh() logs it
    """A CRL source yielded nothing usable; the previous CRL is kept."""


def issuer_key_of(cert: x509.Certificate) -> IssuerKey:
    """The :data:`IssuerKey` of a CA certificate."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()


def _is_url(source: str) -> bool:
    return source.lower().startswith(("http://", "https://"))


class CrlStore:
    """CRLs by issuer, from files and http(s) URLs, with the last-valid-wins rules above.

    ``sources`` are file paths or ``http://``/``https://`` URLs, each expected to yield one
    DER or PEM CRL. When ``require_crl`` is true, validation refuses a certificate whose issuer
    has no CRL here (reason ``crl_missing``); by default a missing CRL is not an error.
    ``clock`` returns the current time (aware, UTC); tests may pass a fixed one.
    """

    def __init__(
        self,
        trust: TrustStore,
        sources: Sequence[str | Path] = (),
        *,
        cache_dir: Path | None = None,
        require_crl: bool = False,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        max_bytes: int = DEFAULT_MAX_CRL_BYTES,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.trust = trust
        self.require_crl = require_crl
        self.cache_dir = cache_dir
        self._timeout = timeout_seconds
        self._max_bytes = max_bytes
        self._clock = clock or (lambda: datetime.now(UTC))
        self._sources: dict[str, _SourceState] = {}
        for raw in sources:
            source = str(raw)
            if "://" in source and not _is_url(source):
                raise PkiError(f"unsupported CRL source {source!r}: only files and http(s) URLs")
            cache_name = hashlib.sha256(source.encode("utf-8")).hexdigest()[:32] + ".crl"
            self._sources.setdefault(source, _SourceState(source, cache_name))
        self._by_issuer: dict[IssuerKey, _VerifiedCrl] = {}
        self._lock = asyncio.Lock()

    # -- queries (synchronous, used during validation) ---------------------------------------

    def has_crl_for(self, issuer: x509.Certificate) -> bool:
        """True when a valid CRL of ``issuer`` is held (stale or not)."""
        return issuer_key_of(issuer) in self._by_issuer

    def is_revoked(self, cert: x509.Certificate, issuer: x509.Certificate) -> bool:
        """True when ``cert`` is listed on ``issuer``'s CRL.

        Any entry counts, including certificateHold (RFC 5280 §5.3.1: a held certificate is
        not valid while on hold). False when no CRL of ``issuer`` is held: whether that is
        acceptable is the validator's decision (``require_crl``).
        """
        held = self._by_issuer.get(issuer_key_of(issuer))
        return held is not None and cert.serial_number in held.revoked

    def status(self) -> list[CrlStatus]:
        """One entry per configured source, in configuration order."""
        now = self._clock()
        result: list[CrlStatus] = []
        for state in self._sources.values():
            held = state.current
            result.append(
                CrlStatus(
                    source=state.source,
                    issuer=held.issuer_dn if held else None,
                    this_update=held.this_update if held else None,
                    next_update=held.next_update if held else None,
                    crl_number=held.number if held else None,
                    revoked_count=len(held.revoked) if held else 0,
                    stale=bool(held and held.next_update is not None and held.next_update < now),
                    from_cache=state.from_cache,
                    last_error=state.last_error,
                )
            )
        return result

    # -- loading ------------------------------------------------------------------------------

    async def load(self) -> None:
        """Seed from the cache directory (if any), then fetch every source once."""
        if self.cache_dir is not None:
            async with self._lock:
                await self._seed_from_cache(self.cache_dir)
        await self.refresh()

    async def refresh(self) -> None:
        """Fetch every source; keep the previous CRL wherever a source fails. Never raises."""
        async with self._lock:
            await asyncio.gather(*(self._refresh_source(s) for s in self._sources.values()))

    async def run_periodic(self, interval_seconds: float, *, immediately: bool = False) -> None:
        """Refresh every ``interval_seconds`` until cancelled.

        Call :meth:`load` first at start-up; the first periodic refresh then happens one
        interval later (or at once with ``immediately=True``).
        """
        await refresh_periodically(self.refresh, interval_seconds, immediately=immediately)

    async def _refresh_source(self, state: _SourceState) -> None:
        try:
            data = await self._fetch(state.source)
            verified = await asyncio.to_thread(self._verify, data)
            self._install(state, verified, from_cache=False)
        except CrlRefused as exc:
            self._refuse(state, str(exc))
            return
        except Exception as exc:  # never let one source break refresh() or the periodic task
            self._refuse(state, f"unexpected error: {exc!r}")
            return
        if self.cache_dir is not None:
            await self._write_cache(state, self.cache_dir)

    def _refuse(self, state: _SourceState, reason: str) -> None:
        state.last_error = reason
        kept = "keeping the previous CRL" if state.current else "no CRL from this source yet"
        log.warning("CRL source %s refused: %s (%s)", state.source, reason, kept)

    def _install(self, state: _SourceState, verified: _VerifiedCrl, *, from_cache: bool) -> None:
        current = self._by_issuer.get(verified.issuer_key)
        if current is not None:
            order = _compare(verified, current)
            if order < 0:
                raise CrlRefused(
                    f"older than the CRL in use for {current.issuer_dn} "
                    f"({_describe(verified)} < {_describe(current)})"
                )
            if order == 0:
                # The same CRL again (or a reissue with the same number): nothing to change.
                verified = current
        self._by_issuer[verified.issuer_key] = verified
        if state.current is not verified:
            log.info(
                "CRL from %s: issuer %s, %s, %d revoked%s",
                state.source,
                verified.issuer_dn,
                _describe(verified),
                len(verified.revoked),
                " (from cache)" if from_cache else "",
            )
        state.current = verified
        state.from_cache = from_cache
        state.last_error = None

    async def _fetch(self, source: str) -> bytes:
        try:
            if _is_url(source):
                # IGC-Santé publishes CRLs over plain http: integrity comes from the CRL
                # signature (RFC 5280 §5), so no TLS requirement here.
                return await download(
                    source, max_bytes=self._max_bytes, timeout_seconds=self._timeout
                )
            return await asyncio.to_thread(read_bounded, Path(source), self._max_bytes)
        except FetchError as exc:
            raise CrlRefused(exc.problem) from None

    def _verify(self, data: bytes) -> _VerifiedCrl:
        """Parse ``data`` and check it against the trust store (runs in a worker thread)."""
        if not data.strip():
            raise CrlRefused("empty")
        try:
            if b"-----BEGIN" in data:
                crl = x509.load_pem_x509_crl(data)
            else:
                crl = x509.load_der_x509_crl(data)
        except ValueError:
            raise CrlRefused("not a CRL (neither PEM nor DER)") from None
        issuer_dn = dn_to_string(crl.issuer)
        try:
            extensions = crl.extensions
        except ValueError as exc:
            raise CrlRefused(f"malformed extensions: {exc}") from None
        for extension in extensions:
            if isinstance(extension.value, x509.DeltaCRLIndicator):
                raise CrlRefused("delta CRLs are not supported (RFC 5280 §5.2.4)")
            if isinstance(extension.value, x509.IssuingDistributionPoint) and (
                extension.value.indirect_crl
            ):
                raise CrlRefused("indirect CRLs are not supported (RFC 5280 §5.2.5)")
            if extension.critical and isinstance(extension.value, x509.UnrecognizedExtension):
                # RFC 5280 §5.2: a CRL with an unrecognised critical extension must not be used.
                raise CrlRefused(f"unsupported critical extension {extension.oid.dotted_string}")
        issuer = self._find_signer(crl, issuer_dn)
        number: int | None = None
        with contextlib.suppress(x509.ExtensionNotFound):
            number = extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        return _VerifiedCrl(
            der=crl.public_bytes(serialization.Encoding.DER),
            issuer_key=issuer_key_of(issuer),
            issuer_dn=issuer_dn,
            number=number,
            this_update=crl.last_update_utc,
            next_update=crl.next_update_utc,
            revoked=frozenset(entry.serial_number for entry in crl),
        )

    def _find_signer(self, crl: x509.CertificateRevocationList, issuer_dn: str) -> x509.Certificate:
        candidates = self.trust.by_subject(crl.issuer)
        if not candidates:
            raise CrlRefused(f"issued by {issuer_dn!r}, which is not in the trust store")
        aki: bytes | None = None
        with contextlib.suppress(x509.ExtensionNotFound):
            aki = crl.extensions.get_extension_for_class(
                x509.AuthorityKeyIdentifier
            ).value.key_identifier
        for candidate in candidates:
            ski = subject_key_id(candidate)
            if aki is not None and ski is not None and aki != ski:
                continue
            key = candidate.public_key()
            if not isinstance(
                key,
                rsa.RSAPublicKey
                | ec.EllipticCurvePublicKey
                | dsa.DSAPublicKey
                | ed25519.Ed25519PublicKey
                | ed448.Ed448PublicKey,
            ):
                continue
            if not crl.is_signature_valid(key):
                continue
            if not _may_sign_crls(candidate):
                raise CrlRefused(f"{issuer_dn!r} is not allowed to sign CRLs (keyUsage)")
            return candidate
        raise CrlRefused(f"signature does not verify with the key of {issuer_dn!r}")

    # -- cache --------------------------------------------------------------------------------

    async def _seed_from_cache(self, cache_dir: Path) -> None:
        for state in self._sources.values():
            path = cache_dir / state.cache_name
            try:
                data = await asyncio.to_thread(read_bounded, path, self._max_bytes)
            except FetchError as exc:
                if not exc.not_found:
                    log.warning("CRL cache %s for %s unusable: %s", path, state.source, exc.problem)
                continue
            try:
                verified = await asyncio.to_thread(self._verify, data)
                self._install(state, verified, from_cache=True)
            except CrlRefused as exc:
                log.warning("CRL cache %s for %s refused: %s", path, state.source, exc)
                continue
            state.cached_digest = hashlib.sha256(verified.der).digest()

    async def _write_cache(self, state: _SourceState, cache_dir: Path) -> None:
        held = state.current
        if held is None:
            return
        digest = hashlib.sha256(held.der).digest()
        if digest == state.cached_digest:
            return
        try:
            await asyncio.to_thread(write_atomically, cache_dir / state.cache_name, held.der)
        except OSError as exc:
            log.warning("cannot write CRL cache for %s in %s: %s", state.source, cache_dir, exc)
            return
        state.cached_digest = digest


def _may_sign_crls(cert: x509.Certificate) -> bool:
    # RFC 5280 §4.2.1.3: cRLSign must be set in a CA certificate whose key signs CRLs.
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return usage.crl_sign


def _compare(new: _VerifiedCrl, old: _VerifiedCrl) -> int:
    """-1 if ``new`` is older than ``old``, 0 if the same issue, 1 if newer."""
    if new.number is not None and old.number is not None:
        # RFC 5280 §5.2.3: the CRL number increases monotonically for each issued CRL.
        return (new.number > old.number) - (new.number < old.number)
    return (new.this_update > old.this_update) - (new.this_update < old.this_update)


def _describe(crl: _VerifiedCrl) -> str:
    number = f"number {crl.number}" if crl.number is not None else "no number"
    return f"{number}, thisUpdate {crl.this_update.isoformat()}"
