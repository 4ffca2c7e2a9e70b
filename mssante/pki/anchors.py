"""Trust anchors: loading certificate files and indexing the IGC-Santé hierarchy."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes

from mssante import fetch
from mssante.pki.dn import dn_to_string, normalize_dn
from mssante.pki.errors import CertificateLoadError

# A trust bundle is a handful of CA certificates; refuse to slurp anything absurd.
MAX_CERTIFICATE_FILE_BYTES: Final = 16 * 1024 * 1024

_SHA256: Final = hashes.SHA256()


def load_certificates(path: Path) -> list[x509.Certificate]:
    """Load every certificate of a PEM bundle, or the single certificate of a DER file.

    Raises :class:`CertificateLoadError` (a ``PkiError``) naming ``path`` when the file is
    missing, unreadable, empty, or holds no certificate.
    """
    data = read_bounded(path, MAX_CERTIFICATE_FILE_BYTES)
    if not data.strip():
        raise CertificateLoadError(path, "file is empty")
    if b"-----BEGIN" in data:
        if b"-----BEGIN CERTIFICATE-----" not in data:
            raise CertificateLoadError(path, "PEM file holds no CERTIFICATE block")
        try:
            return x509.load_pem_x509_certificates(data)
        except ValueError as exc:
            raise CertificateLoadError(path, f"invalid PEM certificate: {exc}") from exc
    try:
        return [x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        raise CertificateLoadError(path, "not a certificate (neither PEM nor DER)") from exc


def read_bounded(path: Path, limit: int) -> bytes:
    """Read ``path`` whole, as :class:`CertificateLoadError` naming the path on failure."""
    try:
        return fetch.read_bounded(path, limit)
    except fetch.FetchError as exc:
        raise CertificateLoadError(path, exc.problem) from None


def is_self_signed(cert: x509.Certificate) -> bool:
    """True when ``cert`` names itself as issuer and its own key verifies its signature."""
    if normalize_dn(cert.subject) != normalize_dn(cert.issuer):
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def subject_key_id(cert: x509.Certificate) -> bytes | None:
    """The subjectKeyIdentifier (RFC 5280 §4.2.1.2), if the certificate has one."""
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except (x509.ExtensionNotFound, ValueError):
        # ValueError: undecodable or duplicate extensions; validation reports those itself.
        return None


def authority_key_id(cert: x509.Certificate) -> bytes | None:
    """The keyIdentifier of the authorityKeyIdentifier (RFC 5280 §4.2.1.1), if any."""
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except (x509.ExtensionNotFound, ValueError):
        return None
    return aki.key_identifier


class TrustStore:
    """The CA certificates we trust, split into roots and intermediates.

    Roots are the self-signed certificates of the bundle: they are the trust anchors (RFC 5280
    §6.1.1 (d)). Every other certificate is an intermediate, usable to build a path but trusted
    only through a root. Certificates are indexed by canonical subject DN (RFC 5280 §7.1 name
    chaining compares names after case folding and space handling, which ``normalize_dn`` does).
    """

    def __init__(self, certificates: Iterable[x509.Certificate]) -> None:
        roots: list[x509.Certificate] = []
        intermediates: list[x509.Certificate] = []
        seen: set[bytes] = set()
        for cert in certificates:
            der_fingerprint = cert.fingerprint(_SHA256)
            if der_fingerprint in seen:
                continue
            seen.add(der_fingerprint)
            (roots if is_self_signed(cert) else intermediates).append(cert)
        self.roots: tuple[x509.Certificate, ...] = tuple(roots)
        self.intermediates: tuple[x509.Certificate, ...] = tuple(intermediates)
        self._root_fingerprints = frozenset(cert.fingerprint(_SHA256) for cert in roots)
        self._by_subject: dict[str, list[x509.Certificate]] = {}
        for cert in (*roots, *intermediates):
            self._by_subject.setdefault(normalize_dn(cert.subject), []).append(cert)

    @classmethod
    def from_file(cls, path: Path) -> TrustStore:
        """Build a store from one PEM bundle (or DER certificate)."""
        return cls(load_certificates(path))

    @classmethod
    def from_files(cls, paths: Sequence[Path]) -> TrustStore:
        """Build a store from several bundles."""
        certificates: list[x509.Certificate] = []
        for path in paths:
            certificates.extend(load_certificates(path))
        return cls(certificates)

    @property
    def certificates(self) -> tuple[x509.Certificate, ...]:
        """Roots then intermediates."""
        return (*self.roots, *self.intermediates)

    def is_root(self, cert: x509.Certificate) -> bool:
        """True when ``cert`` is (byte for byte) one of our trust anchors."""
        return cert.fingerprint(_SHA256) in self._root_fingerprints

    def by_subject(self, name: x509.Name) -> list[x509.Certificate]:
        """The CA certificates of the store whose subject is ``name``."""
        return list(self._by_subject.get(normalize_dn(name), ()))

    def issuer_candidates(
        self, cert: x509.Certificate, extra: Sequence[x509.Certificate] = ()
    ) -> list[x509.Certificate]:
        """Certificates that may have issued ``cert``, roots first.

        Matches the issuer name against subjects; when ``cert`` has an authorityKeyIdentifier
        and a candidate has a subjectKeyIdentifier, they must agree (RFC 5280 §4.2.1.1), which
        picks the right key when a CA was renewed under the same name.
        """
        wanted = normalize_dn(cert.issuer)
        candidates = [
            *self._by_subject.get(wanted, ()),
            *(c for c in extra if normalize_dn(c.subject) == wanted),
        ]
        aki = authority_key_id(cert)
        result: list[x509.Certificate] = []
        seen: set[bytes] = set()
        for candidate in sorted(candidates, key=lambda c: not self.is_root(c)):
            fingerprint = candidate.fingerprint(_SHA256)
            if fingerprint in seen:
                continue
            seen.add(fingerprint)
            ski = subject_key_id(candidate)
            if aki is not None and ski is not None and aki != ski:
                continue
            result.append(candidate)
        return result

    def describe(self) -> list[str]:
        """One line per certificate, for logs and ``mssante pki`` commands."""
        return [f"root: {dn_to_string(c.subject)}" for c in self.roots] + [
            f"intermediate: {dn_to_string(c.subject)}" for c in self.intermediates
        ]
