"""The error contract of the health-PKI layer.

Every failure raised by ``mssante.pki`` is a :class:`PkiError`, so callers that only want to
refuse a connection or a configuration catch one type. Subclasses exist where a caller needs to
tell cases apart:

- :class:`DnError` — a distinguished name string is malformed (also a ``ValueError``).
- :class:`CertificateLoadError` — a certificate, key, bundle or CRL file cannot be used; the
  message names the path and the problem.
- :class:`ValidationError` — a certificate chain was refused; ``reason`` says why (see
  :data:`ValidationReason`) and the message names the certificate subject.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

ValidationReason = Literal[
    "expired",
    "not_yet_valid",
    "unknown_ca",
    "bad_signature",
    "revoked",
    "wrong_usage",
    "not_a_ca",
    "path_too_long",
    "crl_missing",
    "unsupported_critical_extension",
]
"""Why a chain was refused.

- ``expired`` / ``not_yet_valid``: a certificate of the chain is outside its validity period at
  the validation time (RFC 5280 §6.1.3 (a)(2)).
- ``unknown_ca``: no path leads from the certificate to a root of the trust store.
- ``bad_signature``: a signature in the path does not verify (RFC 5280 §6.1.3 (a)(1)).
- ``revoked``: a certificate of the chain is listed on its issuer's CRL (RFC 5280 §6.3).
- ``wrong_usage``: the leaf's keyUsage or extendedKeyUsage does not allow the purpose.
- ``not_a_ca``: a certificate used as an issuer is not a CA or may not sign certificates
  (RFC 5280 §6.1.4 (k), (n)).
- ``path_too_long``: a pathLenConstraint is exceeded (RFC 5280 §6.1.4 (l), (m)) or the chain is
  longer than our own depth bound.
- ``crl_missing``: the CRL store requires a CRL for every issuer and has none for this one.
- ``unsupported_critical_extension``: a certificate carries a critical extension we do not
  process, which RFC 5280 §4.2 obliges us to refuse, or extensions that cannot be decoded
  (including duplicates, RFC 5280 §4.2).
"""

VALIDATION_REASONS: Final[frozenset[str]] = frozenset(get_args(ValidationReason))


class PkiError(Exception):
    """Base class of every error raised by ``mssante.pki``."""


class DnError(PkiError, ValueError):
    """A distinguished name string is malformed."""


class CertificateLoadError(PkiError):
    """A certificate, private key, bundle or CRL file cannot be loaded."""

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


class ValidationError(PkiError):
    """A certificate chain failed validation.

    ``reason`` is one of :data:`ValidationReason`; ``subject`` is the RFC 4514 subject of the
    certificate at fault (which may be a CA of the chain, not the leaf).
    """

    def __init__(self, reason: ValidationReason, subject: str, message: str) -> None:
        super().__init__(message)
        self.reason: ValidationReason = reason
        self.subject = subject
