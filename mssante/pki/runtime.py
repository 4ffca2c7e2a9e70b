"""The running operator's PKI: one object holding trust anchors, CRLs and our TLS identity.

Every listener and the outbound client get their TLS contexts and their certificate decisions
from here, so that the profile, the trust anchors and the revocation data are the same for all.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509

from mssante.config import PkiSettings
from mssante.pki import tls
from mssante.pki.anchors import TrustStore
from mssante.pki.crl import CrlStore
from mssante.pki.validation import Purpose, ValidatedChain, validate_chain


@dataclass
class Pki:
    settings: PkiSettings
    trust: TrustStore
    crls: CrlStore

    @classmethod
    async def load(cls, settings: PkiSettings, crl_cache_dir: Path) -> Pki:
        """Load the anchors, seed CRLs from the cache, then fetch every CRL source once."""
        trust = TrustStore.from_file(settings.trust_anchors)
        crls = CrlStore(
            trust,
            settings.crls,
            cache_dir=crl_cache_dir,
            require_crl=settings.require_crl,
        )
        await crls.load()
        return cls(settings, trust, crls)

    def server_context(
        self, client_cert: tls.ClientCertMode, *, defer_validity_dates: bool = False
    ) -> ssl.SSLContext:
        s = self.settings
        return tls.server_context(
            s.tls_profile,
            s.certificate,
            s.private_key,
            s.trust_anchors,
            client_cert=client_cert,
            key_password=s.private_key_password or None,
            defer_validity_dates=defer_validity_dates,
        )

    def client_context(self, *, present_certificate: bool, check_hostname: bool) -> ssl.SSLContext:
        s = self.settings
        return tls.client_context(
            s.tls_profile,
            s.trust_anchors,
            cert_path=s.certificate if present_certificate else None,
            key_path=s.private_key if present_certificate else None,
            check_hostname=check_hostname,
            key_password=s.private_key_password or None,
        )

    def validate(
        self, cert: x509.Certificate, purpose: Purpose, at: datetime | None = None
    ) -> ValidatedChain:
        """Chain, dates, usages and revocation; `ValidationError` says why a cert is refused."""
        return validate_chain(cert, self.trust, purpose, at=at, crls=self.crls)
