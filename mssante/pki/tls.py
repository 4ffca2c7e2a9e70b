"""The one place TLS contexts are made.

Two profiles:

- ``mssante``: what the ANS client referential mandates between clients and the operator, TLS 1.2
  only, with exactly the suites 0xC030, 0xC02F, 0xC028, 0xC027 (ECDHE-RSA with AES-GCM, or
  AES-CBC with SHA-2 HMAC). Also used between operators.
- ``modern``: TLS 1.2 and 1.3; for TLS 1.2 only ECDHE with AEAD ciphers (AES-GCM, ChaCha20-
  Poly1305, RFC 7905). TLS 1.3 suites are all AEAD (RFC 8446 §9.1) and Python's ``ssl`` cannot
  restrict them, so OpenSSL's defaults apply.

Every context disables TLS compression (CRIME), renegotiation (RFC 5746 attacks and a DoS
vector; OP_NO_RENEGOTIATION) and prefers the server's cipher order. Certificate verification is
always on when a peer certificate is expected; revocation and the trust-space identity checks are
done after the handshake by :mod:`mssante.pki.validation` on :func:`peer_identity`.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, NoReturn

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mssante.pki.anchors import load_certificates
from mssante.pki.errors import CertificateLoadError, PkiError

Profile = Literal["mssante", "modern"]
ClientCertMode = Literal["none", "optional", "required"]

MSSANTE_CIPHERS: Final = (
    "ECDHE-RSA-AES256-GCM-SHA384:"  # 0xC030
    "ECDHE-RSA-AES128-GCM-SHA256:"  # 0xC02F
    "ECDHE-RSA-AES256-SHA384:"  # 0xC028
    "ECDHE-RSA-AES128-SHA256"  # 0xC027
)

MODERN_TLS12_CIPHERS: Final = (
    "ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:"
    "ECDHE-RSA-CHACHA20-POLY1305:"
    "ECDHE-ECDSA-AES128-GCM-SHA256:"
    "ECDHE-RSA-AES128-GCM-SHA256"
)


@dataclass(frozen=True)
class _ProfileSpec:
    minimum: ssl.TLSVersion
    maximum: ssl.TLSVersion
    tls12_ciphers: str


PROFILES: Final[dict[str, _ProfileSpec]] = {
    "mssante": _ProfileSpec(ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2, MSSANTE_CIPHERS),
    "modern": _ProfileSpec(ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3, MODERN_TLS12_CIPHERS),
}

# OpenSSL's X509_V_FLAG_NO_CHECK_TIME (x509_vfy.h); the ssl module has no name for it.
_X509_V_FLAG_NO_CHECK_TIME: Final = 0x200000

_VERIFY_MODES: Final[dict[str, ssl.VerifyMode]] = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}


def server_context(
    profile: str,
    cert_path: Path,
    key_path: Path,
    trust: Path | None,
    client_cert: ClientCertMode,
    key_password: str | None = None,
    *,
    defer_validity_dates: bool = False,
) -> ssl.SSLContext:
    """A server-side context presenting ``cert_path``/``key_path``.

    ``defer_validity_dates``: OpenSSL does not check the client certificate's dates during the
    handshake, so that an expired peer certificate reaches the SMTP layer, where
    :func:`mssante.pki.validation.validate_chain` refuses it with a precise reply and an audit
    entry instead of a bare TLS alert. Only for listeners that always validate afterwards.

    ``client_cert``: ``"none"`` asks no certificate; ``"optional"`` asks one and verifies it
    against ``trust`` when given (professionals' clients may have none); ``"required"`` refuses
    the handshake without a certificate that chains to ``trust`` (operator-to-operator mutual
    TLS). ``trust`` is a PEM bundle (or DER certificate) and is required unless
    ``client_cert == "none"``.
    """
    spec = _spec(profile)
    verify_mode = _VERIFY_MODES.get(client_cert)
    if verify_mode is None:
        raise PkiError(f"client_cert must be 'none', 'optional' or 'required', not {client_cert!r}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _apply_profile(context, spec)
    _load_identity(context, cert_path, key_path, key_password)
    if verify_mode is not ssl.CERT_NONE:
        if trust is None:
            raise PkiError(f"client_cert={client_cert!r} needs a trust bundle")
        _load_trust(context, trust)
        if defer_validity_dates:
            context.verify_flags |= _X509_V_FLAG_NO_CHECK_TIME
    context.verify_mode = verify_mode
    return context


def client_context(
    profile: str,
    trust: Path,
    cert_path: Path | None = None,
    key_path: Path | None = None,
    check_hostname: bool = True,
    key_password: str | None = None,
) -> ssl.SSLContext:
    """A client-side context that verifies the server against ``trust``.

    Verification of the server's chain is never disabled. ``check_hostname=False`` only skips
    the name match: between operators the peer is identified by its whitelisted certificate DN,
    checked after the handshake, and an MX host name need not appear in the certificate.
    With ``cert_path`` the context presents that certificate (mutual TLS); ``key_path`` may be
    omitted when the key is in the same PEM file.
    """
    spec = _spec(profile)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _apply_profile(context, spec)
    _load_trust(context, trust)
    context.check_hostname = check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    if cert_path is not None:
        _load_identity(context, cert_path, key_path, key_password)
    elif key_path is not None:
        raise PkiError(f"key_path {key_path} given without cert_path")
    return context


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> x509.Certificate | None:
    """The certificate the peer presented, or ``None`` (no handshake yet, or none sent).

    Only the leaf: Python 3.11 exposes neither the chain the peer sent nor the one OpenSSL
    verified, which is why :func:`mssante.pki.validation.validate_chain` rebuilds it.
    """
    try:
        der = ssl_object.getpeercert(binary_form=True)
    except ValueError:
        # "handshake not done yet": no authenticated peer, which callers must treat as none.
        return None
    if not der:
        return None
    return x509.load_der_x509_certificate(der)


def _spec(profile: str) -> _ProfileSpec:
    spec = PROFILES.get(profile)
    if spec is None:
        known = ", ".join(sorted(PROFILES))
        raise PkiError(f"unknown TLS profile {profile!r} (known: {known})")
    return spec


def _apply_profile(context: ssl.SSLContext, spec: _ProfileSpec) -> None:
    context.minimum_version = spec.minimum
    context.maximum_version = spec.maximum
    context.set_ciphers(spec.tls12_ciphers)
    context.options |= (
        ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    )


def _load_identity(
    context: ssl.SSLContext, cert_path: Path, key_path: Path | None, key_password: str | None
) -> None:
    for path in (cert_path, key_path):
        if path is not None and not path.is_file():
            problem = "is not a regular file" if path.exists() else "file not found"
            raise CertificateLoadError(path, problem)
    key_source = key_path or cert_path

    def no_password() -> NoReturn:
        # Without this callback OpenSSL would prompt on the terminal for the passphrase of an
        # encrypted key, which hangs a daemon.
        raise CertificateLoadError(key_source, "private key is encrypted and no password given")

    try:
        context.load_cert_chain(
            cert_path,
            key_path,
            password=key_password if key_password is not None else no_password,
        )
    except CertificateLoadError:
        raise
    except ssl.SSLError as exc:
        raise CertificateLoadError(
            f"{cert_path} (key {key_source})",
            f"cannot load certificate and private key: {exc.reason or exc}",
        ) from None
    except OSError as exc:
        raise CertificateLoadError(cert_path, f"cannot read: {exc.strerror or exc}") from None


def _load_trust(context: ssl.SSLContext, trust: Path) -> None:
    # Parse with cryptography first for precise errors naming the file, then hand OpenSSL the
    # DER certificates (cadata accepts concatenated DER).
    certificates = load_certificates(trust)
    cadata = b"".join(c.public_bytes(serialization.Encoding.DER) for c in certificates)
    try:
        context.load_verify_locations(cadata=cadata)
    except ssl.SSLError as exc:
        raise CertificateLoadError(trust, f"OpenSSL refused the trust bundle: {exc}") from None
