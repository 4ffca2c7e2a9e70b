"""Certificate path validation against the IGC-Santé trust store (RFC 5280 §6, simplified).

Why our own validator: the TLS handshake (OpenSSL) checks the chain, but Python 3.11's ``ssl``
only gives us the peer's leaf certificate, never the verified chain, and OpenSSL's CRL checking
has no notion of "keep the last valid CRL". So after every handshake we rebuild the path from the
leaf to a root of the trust store (intermediates from the trust bundle plus any the caller
passes) and check it here: signatures, validity dates, CA constraints, key usages for the
purpose, and revocation through the :class:`~mssante.pki.crl.CrlStore`.

Not implemented, hence refused when marked critical (RFC 5280 §4.2): name constraints, policy
constraints, policy mappings, inhibitAnyPolicy. Certificate policies are accepted but not
enforced (our initial policy set is anyPolicy, RFC 5280 §6.1.1 (c)).
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID

from mssante.pki.anchors import TrustStore
from mssante.pki.crl import CrlStore
from mssante.pki.dn import dn_to_string, normalize_dn
from mssante.pki.errors import ValidationError, ValidationReason
from mssante.pki.identity import CertIdentity, identity_of

DEFAULT_MAX_DEPTH: Final = 6
"""Longest chain accepted, leaf and root included. IGC-Santé chains are 3 long."""

# Bound the path search (Postfix rule: bound every count) even with a hostile extra bundle.
_MAX_CANDIDATE_PATHS: Final = 32

_SHA256: Final = hashes.SHA256()


class Purpose(enum.Enum):
    """What the leaf certificate is being accepted for.

    - ``SERVER``: an operator's TLS server (we are the client, e.g. relaying to a peer's MX).
      extendedKeyUsage must contain serverAuth.
    - ``CLIENT``: a professional's or an application's certificate authenticating to us.
      extendedKeyUsage must contain clientAuth.
    - ``PEER_OPERATOR``: another operator connecting to us in mutual TLS with its IGC-Santé
      *server* certificate. extendedKeyUsage must contain **both** serverAuth and clientAuth:
      serverAuth because the trust space identifies operators by their server certificate,
      clientAuth because the certificate is being used as a TLS client (RFC 5280 §4.2.1.12:
      the key may only be used for the listed purposes). Real IGC-Santé server certificates
      carry both, and OpenSSL already refuses a TLS client certificate without clientAuth at
      the handshake, so requiring it here keeps the two checks consistent.
    """

    SERVER = "server"
    CLIENT = "client"
    PEER_OPERATOR = "peer_operator"


_REQUIRED_EKU: Final[dict[Purpose, frozenset[x509.ObjectIdentifier]]] = {
    Purpose.SERVER: frozenset({ExtendedKeyUsageOID.SERVER_AUTH}),
    Purpose.CLIENT: frozenset({ExtendedKeyUsageOID.CLIENT_AUTH}),
    Purpose.PEER_OPERATOR: frozenset(
        {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    ),
}

_EKU_NAMES: Final[dict[x509.ObjectIdentifier, str]] = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
}

# Extensions whose semantics we apply (or which impose nothing on path validation), so they may
# be critical. Anything else critical makes the certificate unusable (RFC 5280 §4.2).
_HANDLED_EXTENSIONS: Final[frozenset[type[x509.ExtensionType]]] = frozenset(
    {
        x509.BasicConstraints,
        x509.KeyUsage,
        x509.ExtendedKeyUsage,
        x509.SubjectAlternativeName,
        x509.IssuerAlternativeName,
        x509.SubjectKeyIdentifier,
        x509.AuthorityKeyIdentifier,
        x509.CertificatePolicies,
        x509.CRLDistributionPoints,
        x509.FreshestCRL,
        x509.AuthorityInformationAccess,
        x509.SubjectInformationAccess,
        x509.PrecertificateSignedCertificateTimestamps,
        x509.OCSPNoCheck,
        x509.TLSFeature,
    }
)


@dataclass(frozen=True)
class ValidatedChain:
    """A chain that passed validation: leaf first, trust anchor (root) last."""

    chain: tuple[x509.Certificate, ...]
    identity: CertIdentity

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def anchor(self) -> x509.Certificate:
        return self.chain[-1]


def validate_chain(
    cert: x509.Certificate,
    trust: TrustStore,
    purpose: Purpose,
    *,
    at: datetime | None = None,
    crls: CrlStore | None = None,
    extra_intermediates: Sequence[x509.Certificate] = (),
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> ValidatedChain:
    """Validate ``cert`` for ``purpose`` and return its chain and identity.

    ``at`` is the validation time (default: now; a naive datetime is taken as UTC).
    ``crls`` provides revocation status for every non-root certificate of the path; without
    it revocation is not checked. ``extra_intermediates`` (e.g. a chain file sent alongside a
    certificate) are used to build the path but are never trust anchors. ``max_depth`` bounds
    the number of certificates in the path, leaf and root included.

    Raises :class:`~mssante.pki.errors.ValidationError` whose ``reason`` says why.
    """
    when = datetime.now(UTC) if at is None else at
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    search = _PathSearch(trust, extra_intermediates, max_depth)
    first_error: ValidationError | None = None
    for path in search.paths(cert):
        try:
            _check_path(path, purpose, when, crls)
        except ValidationError as exc:
            # Keep the first path's error: roots come first and AKI/SKI already filtered the
            # candidates, so it is the path the issuer most likely meant.
            first_error = first_error or exc
            continue
        return ValidatedChain(chain=path, identity=identity_of(cert))
    if first_error is not None:
        raise first_error
    if search.truncated:
        raise _error(
            "path_too_long",
            cert,
            f"no path from {_subject(cert)!r} to a trust anchor within {max_depth} certificates",
        )
    stuck = search.dead_end or cert
    raise _error(
        "unknown_ca",
        stuck,
        f"issuer {dn_to_string(stuck.issuer)!r} of {_subject(stuck)!r} is not in the trust store",
    )


class _PathSearch:
    """Depth-first enumeration of candidate paths leaf -> root by name and key identifiers."""

    def __init__(
        self, trust: TrustStore, extra: Sequence[x509.Certificate], max_depth: int
    ) -> None:
        self.trust = trust
        # Roots may only come from the trust store: a self-signed certificate in the caller's
        # extra list must not become an anchor, so it is dropped.
        self.extra = [c for c in extra if normalize_dn(c.subject) != normalize_dn(c.issuer)]
        self.max_depth = max_depth
        self.truncated = False
        self.dead_end: x509.Certificate | None = None
        self._dead_end_depth = 0
        self._emitted = 0

    def paths(self, leaf: x509.Certificate) -> Iterator[tuple[x509.Certificate, ...]]:
        yield from self._walk((leaf,))

    def _walk(self, path: tuple[x509.Certificate, ...]) -> Iterator[tuple[x509.Certificate, ...]]:
        if self._emitted >= _MAX_CANDIDATE_PATHS:
            return
        last = path[-1]
        if self.trust.is_root(last):
            self._emitted += 1
            yield path
            return
        if len(path) >= self.max_depth:
            self.truncated = True
            return
        in_path = {c.fingerprint(_SHA256) for c in path}
        candidates = [
            c
            for c in self.trust.issuer_candidates(last, self.extra)
            if c.fingerprint(_SHA256) not in in_path
        ]
        if not candidates and len(path) >= self._dead_end_depth:
            self.dead_end, self._dead_end_depth = last, len(path)
        for issuer in candidates:
            yield from self._walk((*path, issuer))


def _check_path(
    path: tuple[x509.Certificate, ...],
    purpose: Purpose,
    at: datetime,
    crls: CrlStore | None,
) -> None:
    for cert in path:
        _check_critical_extensions(cert)
    # Signatures before anything else: never report dates or usages of a forged certificate.
    for child, issuer in itertools.pairwise(path):
        _check_signature(child, issuer)
    for index in range(1, len(path)):
        _check_ca(path, index)
    for cert in path:
        _check_dates(cert, at)
    _check_leaf_usage(path[0], purpose)
    if crls is not None:
        # Top-down, so a revoked intermediate is reported as such rather than through its leaf.
        for index in range(len(path) - 2, -1, -1):
            _check_revocation(path[index], path[index + 1], crls)


def _check_critical_extensions(cert: x509.Certificate) -> None:
    try:
        extensions = cert.extensions
    except ValueError as exc:
        # Duplicate or undecodable extensions (RFC 5280 §4.2: each at most once).
        raise _error(
            "unsupported_critical_extension", cert, f"{_subject(cert)!r}: bad extensions: {exc}"
        ) from None
    for extension in extensions:
        if extension.critical and type(extension.value) not in _HANDLED_EXTENSIONS:
            raise _error(
                "unsupported_critical_extension",
                cert,
                f"{_subject(cert)!r} has a critical extension we do not process "
                f"({extension.oid.dotted_string}); RFC 5280 §4.2 requires refusing it",
            )


def _check_signature(child: x509.Certificate, issuer: x509.Certificate) -> None:
    # RFC 5280 §6.1.3 (a)(1). verify_directly_issued_by also requires the issuer name to equal
    # the issuer's subject exactly, which is how CAs encode it in practice.
    try:
        child.verify_directly_issued_by(issuer)
    except InvalidSignature:
        raise _error(
            "bad_signature",
            child,
            f"signature of {_subject(child)!r} does not verify with the key of "
            f"{_subject(issuer)!r}",
        ) from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise _error(
            "bad_signature",
            child,
            f"cannot verify {_subject(child)!r} with {_subject(issuer)!r}: {exc}",
        ) from None


def _check_ca(path: tuple[x509.Certificate, ...], index: int) -> None:
    ca = path[index]
    try:
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        # RFC 5280 §6.1.4 (k): an issuer must assert cA = TRUE.
        raise _error("not_a_ca", ca, f"{_subject(ca)!r} issued a certificate but is not a CA")
    try:
        usage: x509.KeyUsage | None = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is None or not usage.key_cert_sign:
        # RFC 5280 §6.1.4 (n), and §4.2.1.3: a conforming CA certificate always has keyUsage.
        raise _error("not_a_ca", ca, f"{_subject(ca)!r} may not sign certificates (keyUsage)")
    if constraints.path_length is not None:
        # RFC 5280 §6.1.4 (l)-(m): self-issued intermediates do not count.
        below = sum(1 for c in path[1:index] if not _self_issued(c))
        if below > constraints.path_length:
            raise _error(
                "path_too_long",
                ca,
                f"{_subject(ca)!r} allows {constraints.path_length} intermediate CA(s) below "
                f"it, the path has {below}",
            )


def _check_dates(cert: x509.Certificate, at: datetime) -> None:
    # RFC 5280 §6.1.3 (a)(2), for every certificate of the path including the anchor.
    if at < cert.not_valid_before_utc:
        raise _error(
            "not_yet_valid",
            cert,
            f"{_subject(cert)!r} is not valid before {cert.not_valid_before_utc.isoformat()} "
            f"(checked at {at.isoformat()})",
        )
    if at > cert.not_valid_after_utc:
        raise _error(
            "expired",
            cert,
            f"{_subject(cert)!r} expired on {cert.not_valid_after_utc.isoformat()} "
            f"(checked at {at.isoformat()})",
        )


def _check_leaf_usage(leaf: x509.Certificate, purpose: Purpose) -> None:
    extensions = leaf.extensions
    try:
        if extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise _error(
                "wrong_usage", leaf, f"{_subject(leaf)!r} is a CA, not an end-entity certificate"
            )
    except x509.ExtensionNotFound:
        pass
    # IGC-Santé end-entity profiles always carry keyUsage and extendedKeyUsage; we require
    # them rather than read their absence as "any use" (RFC 5280 §4.2.1.3, §4.2.1.12).
    try:
        usage = extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        raise _error("wrong_usage", leaf, f"{_subject(leaf)!r} has no keyUsage") from None
    if not usage.digital_signature:
        # ECDHE key exchange and TLS client authentication sign with the key.
        raise _error("wrong_usage", leaf, f"{_subject(leaf)!r}: keyUsage lacks digitalSignature")
    try:
        eku = set(extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        raise _error("wrong_usage", leaf, f"{_subject(leaf)!r} has no extendedKeyUsage") from None
    missing = _REQUIRED_EKU[purpose] - eku
    if missing:
        names = ", ".join(sorted(_EKU_NAMES.get(oid, oid.dotted_string) for oid in missing))
        raise _error(
            "wrong_usage",
            leaf,
            f"{_subject(leaf)!r} cannot be used as {purpose.value}: extendedKeyUsage lacks {names}",
        )


def _check_revocation(cert: x509.Certificate, issuer: x509.Certificate, crls: CrlStore) -> None:
    if crls.is_revoked(cert, issuer):
        raise _error(
            "revoked",
            cert,
            f"{_subject(cert)!r} (serial {cert.serial_number:X}) is revoked by "
            f"{_subject(issuer)!r}",
        )
    if crls.require_crl and not crls.has_crl_for(issuer):
        raise _error(
            "crl_missing",
            cert,
            f"no CRL of {_subject(issuer)!r} to check {_subject(cert)!r} against",
        )


def _self_issued(cert: x509.Certificate) -> bool:
    return normalize_dn(cert.subject) == normalize_dn(cert.issuer)


def _subject(cert: x509.Certificate) -> str:
    return dn_to_string(cert.subject)


def _error(reason: ValidationReason, cert: x509.Certificate, message: str) -> ValidationError:
    return ValidationError(reason, _subject(cert), message)
