"""What `mssante pki …` does: write the test PKI, show a certificate, verify one."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mssante.pki.anchors import TrustStore, load_certificates
from mssante.pki.crl import CrlStore
from mssante.pki.errors import ValidationError
from mssante.pki.identity import CertIdentity, identity_of
from mssante.pki.testca import write_test_hierarchy
from mssante.pki.validation import Purpose, validate_chain

PURPOSES = {"server": Purpose.SERVER, "client": Purpose.CLIENT, "peer": Purpose.PEER_OPERATOR}


def test_hierarchy(outdir: Path, operator_host: str) -> None:
    write_test_hierarchy(outdir, operator_host)


def _identity_json(ident: CertIdentity) -> dict[str, Any]:
    return {
        "subject": ident.subject_dn,
        "normalized_subject": ident.normalized_dn,
        "issuer": ident.issuer_dn,
        "cn": ident.cn,
        "structure_id": ident.structure_id,
        "national_id": ident.national_id,
        "dns_names": list(ident.dns_names),
        "sha256": ident.sha256,
        "serial": format(ident.serial, "x"),
        "not_before": ident.not_before.isoformat(),
        "not_after": ident.not_after.isoformat(),
    }


def show(certificate: Path) -> dict[str, Any]:
    """The identity of the (first) certificate in the file."""
    return _identity_json(identity_of(load_certificates(certificate)[0]))


async def verify(
    certificate: Path, trust: Path, crls: Sequence[str], purpose: str
) -> dict[str, Any]:
    """Validate the first certificate of the file (the others help build the path)."""
    certs = load_certificates(certificate)
    store = TrustStore.from_file(trust)
    crl_store = CrlStore(store, crls)
    await crl_store.load()
    report: dict[str, Any] = {"certificate": str(certificate), "purpose": purpose}
    errors = [s for s in crl_store.status() if s.last_error]
    if errors:
        report["crl_errors"] = {s.source: s.last_error for s in errors}
    try:
        chain = validate_chain(
            certs[0], store, PURPOSES[purpose], crls=crl_store, extra_intermediates=certs[1:]
        )
    except ValidationError as exc:
        report.update(
            valid=False,
            reason=exc.reason,
            error=str(exc),
            identity=_identity_json(identity_of(certs[0])),
        )
        return report
    report.update(
        valid=True,
        identity=_identity_json(chain.identity),
        chain=[identity_of(c).subject_dn for c in chain.chain],
    )
    return report
