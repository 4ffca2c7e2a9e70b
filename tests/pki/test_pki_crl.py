"""CRL store (mssante.pki.crl): verification, last-valid-wins, cache, staleness, sources."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from pki_support import T2025, Fixtures, Made, make_crl

from mssante.pki.anchors import TrustStore
from mssante.pki.crl import CrlStatus, CrlStore
from mssante.pki.errors import PkiError, ValidationError
from mssante.pki.validation import Purpose, validate_chain


def _org(fx: Fixtures) -> Made:
    return Made(fx.cert("org-ca"), fx.key("org-ca"))


def _only(store: CrlStore) -> CrlStatus:
    (status,) = store.status()
    return status


async def test_load_files_and_report_status(fx: Fixtures, trust: TrustStore) -> None:
    sources = [str(p) for p in fx.crl_paths]
    store = CrlStore(trust, sources)
    await store.load()
    statuses = {s.source: s for s in store.status()}
    assert list(statuses) == sources
    org = statuses[str(fx.path("org-ca.crl.pem"))]
    assert org.issuer == fx.subject("org-ca")
    assert (org.this_update, org.next_update, org.crl_number) == (
        T2025,
        datetime(2045, 1, 1, tzinfo=UTC),
        1,
    )
    assert org.revoked_count == 1
    assert not org.stale
    assert not org.from_cache
    assert org.last_error is None
    assert statuses[str(fx.path("root-ca.crl.pem"))].revoked_count == 0
    assert store.is_revoked(fx.cert("peer-revoked"), fx.cert("org-ca"))
    assert store.is_revoked(fx.cert("pro-revoked"), fx.cert("pro-ca"))
    assert not store.is_revoked(fx.cert("peer-a"), fx.cert("org-ca"))
    assert all(store.has_crl_for(fx.cert(ca)) for ca in ("root-ca", "org-ca", "pro-ca"))


async def test_crl_signed_by_the_wrong_key_is_refused(
    fx: Fixtures, trust: TrustStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Claims to be org-ca's CRL (and revokes peer-a) but foreign-ca's key signed it.
    forged = make_crl(
        Made(fx.cert("org-ca"), fx.key("foreign-ca")), revoked=[fx.cert("peer-a").serial_number]
    )
    path = tmp_path / "org-ca.crl"
    path.write_bytes(forged)
    store = CrlStore(trust, [str(path)])
    await store.load()
    status = _only(store)
    assert status.issuer is None
    assert status.last_error is not None
    assert "signature does not verify" in status.last_error
    assert not store.has_crl_for(fx.cert("org-ca"))
    assert not store.is_revoked(fx.cert("peer-a"), fx.cert("org-ca"))
    assert any(
        r.levelno == logging.WARNING and r.name == "mssante.pki" and str(path) in r.getMessage()
        for r in caplog.records
    )


async def test_crl_of_an_unknown_issuer_is_refused(
    fx: Fixtures, trust: TrustStore, tmp_path: Path
) -> None:
    path = tmp_path / "foreign.crl"
    path.write_bytes(make_crl(Made(fx.cert("foreign-ca"), fx.key("foreign-ca"))))
    store = CrlStore(trust, [str(path)])
    await store.load()
    assert "not in the trust store" in (_only(store).last_error or "")


async def test_last_good_crl_survives_garbage_and_missing_source(
    fx: Fixtures, trust: TrustStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    original = fx.path("org-ca.crl.pem").read_bytes()
    path = tmp_path / "org-ca.crl"
    path.write_bytes(original)
    store = CrlStore(trust, [str(path)])
    await store.load()
    peer, org = fx.cert("peer-revoked"), fx.cert("org-ca")
    assert store.is_revoked(peer, org)

    path.write_bytes(b"<html>502 Bad Gateway</html>")
    await store.refresh()
    assert store.is_revoked(peer, org)
    assert _only(store).last_error == "not a CRL (neither PEM nor DER)"
    assert _only(store).issuer == fx.subject("org-ca")
    assert "keeping the previous CRL" in caplog.text

    path.unlink()
    await store.refresh()
    assert store.is_revoked(peer, org)
    assert _only(store).last_error == "file not found"

    path.write_bytes(original)
    await store.refresh()
    assert _only(store).last_error is None


async def test_older_crl_is_refused_newer_replaces(
    fx: Fixtures, trust: TrustStore, tmp_path: Path
) -> None:
    org = _org(fx)
    peer_a, revoked = fx.cert("peer-a"), fx.cert("peer-revoked")
    path = tmp_path / "org-ca.crl"
    path.write_bytes(make_crl(org, number=5, revoked=[revoked.serial_number]))
    store = CrlStore(trust, [str(path)])
    await store.load()
    assert store.is_revoked(revoked, org.cert)

    # A replayed older CRL would un-revoke the certificate: refused.
    path.write_bytes(make_crl(org, number=4))
    await store.refresh()
    assert store.is_revoked(revoked, org.cert)
    assert "older" in (_only(store).last_error or "")
    assert _only(store).crl_number == 5

    path.write_bytes(make_crl(org, number=6, revoked=[peer_a.serial_number]))
    await store.refresh()
    assert store.is_revoked(peer_a, org.cert)
    assert not store.is_revoked(revoked, org.cert)
    assert (_only(store).crl_number, _only(store).last_error) == (6, None)


async def test_without_numbers_this_update_decides(
    fx: Fixtures, trust: TrustStore, tmp_path: Path
) -> None:
    org = _org(fx)
    serial = fx.cert("peer-revoked").serial_number
    path = tmp_path / "org-ca.crl"
    path.write_bytes(make_crl(org, number=None, revoked=[serial], this_update=datetime(2026, 1, 1)))
    store = CrlStore(trust, [str(path)])
    await store.load()
    path.write_bytes(make_crl(org, number=None, this_update=datetime(2025, 6, 1)))
    await store.refresh()
    assert store.is_revoked(fx.cert("peer-revoked"), org.cert)
    assert "older" in (_only(store).last_error or "")


async def test_same_crl_twice_is_not_an_error(
    fx: Fixtures, trust: TrustStore, caplog: pytest.LogCaptureFixture
) -> None:
    store = CrlStore(trust, [str(fx.path("org-ca.crl.pem")), str(fx.path("org-ca.crl.pem"))])
    await store.load()
    await store.refresh()
    assert [s.last_error for s in store.status()] == [None]  # duplicate sources merged
    assert "refused" not in caplog.text


async def test_cache_seeds_a_restart_without_network(
    fx: Fixtures, trust: TrustStore, tmp_path: Path
) -> None:
    source = tmp_path / "source" / "org-ca.crl"
    source.parent.mkdir()
    source.write_bytes(fx.path("org-ca.crl.pem").read_bytes())
    cache = tmp_path / "cache"
    first = CrlStore(trust, [str(source)], cache_dir=cache)
    await first.load()
    cached = sorted(cache.iterdir())
    assert len(cached) == 1
    assert cached[0].suffix == ".crl"  # no temporary file left behind
    assert x509.load_der_x509_crl(cached[0].read_bytes()).issuer == fx.cert("org-ca").subject

    source.unlink()
    restarted = CrlStore(trust, [str(source)], cache_dir=cache)
    await restarted.load()
    assert restarted.is_revoked(fx.cert("peer-revoked"), fx.cert("org-ca"))
    status = _only(restarted)
    assert status.from_cache
    assert status.last_error == "file not found"
    assert status.issuer == fx.subject("org-ca")


async def test_cache_is_checked_against_the_trust_store(
    fx: Fixtures, trust: TrustStore, tmp_path: Path
) -> None:
    source = tmp_path / "org-ca.crl"
    source.write_bytes(fx.path("org-ca.crl.pem").read_bytes())
    cache = tmp_path / "cache"
    await CrlStore(trust, [str(source)], cache_dir=cache).load()
    source.unlink()
    # Same cache, but a trust store without org-ca: the cached CRL must not be believed.
    root_only = TrustStore.from_file(fx.path("root-ca.pem"))
    store = CrlStore(root_only, [str(source)], cache_dir=cache)
    await store.load()
    assert not store.has_crl_for(fx.cert("org-ca"))


async def test_stale_crl_is_still_used_and_reported(
    fx: Fixtures, trust: TrustStore, tmp_path: Path
) -> None:
    org = _org(fx)
    revoked = fx.cert("peer-revoked")
    path = tmp_path / "org-ca.crl"
    path.write_bytes(
        make_crl(org, revoked=[revoked.serial_number], next_update=datetime(2025, 2, 1))
    )
    clock = datetime(2030, 1, 1, tzinfo=UTC)
    store = CrlStore(trust, [str(path)], clock=lambda: clock)
    await store.load()
    assert _only(store).stale
    with pytest.raises(ValidationError) as caught:
        validate_chain(revoked, trust, Purpose.PEER_OPERATOR, crls=store)
    assert caught.value.reason == "revoked"


async def test_delta_crl_is_refused(fx: Fixtures, trust: TrustStore, tmp_path: Path) -> None:
    org = _org(fx)
    delta = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(org.cert.subject)
        .last_update(T2025)
        .next_update(datetime(2045, 1, 1))
        .add_extension(x509.CRLNumber(2), critical=False)
        .add_extension(x509.DeltaCRLIndicator(1), critical=True)
        .sign(org.key, hashes.SHA256())
    )
    path = tmp_path / "delta.crl"
    path.write_bytes(delta.public_bytes(serialization.Encoding.DER))
    store = CrlStore(trust, [str(path)])
    await store.load()
    assert "delta" in (_only(store).last_error or "")


async def test_refresh_never_raises(fx: Fixtures, trust: TrustStore, tmp_path: Path) -> None:
    store = CrlStore(trust, [str(tmp_path), str(tmp_path / "missing.crl")])
    await store.refresh()
    assert [s.last_error for s in store.status()] == [
        "is a directory, not a file",
        "file not found",
    ]


def test_unsupported_source_scheme(trust: TrustStore) -> None:
    with pytest.raises(PkiError, match="ldap"):
        CrlStore(trust, ["ldap://annuaire.test/cn=crl"])


class _Site:
    """A real HTTP server on 127.0.0.1 serving whatever is put in ``pages``."""

    def __init__(self) -> None:
        self.pages: dict[str, bytes] = {}
        pages = self.pages

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = pages.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def site() -> Iterator[_Site]:
    served = _Site()
    yield served
    served.close()


async def test_http_sources(fx: Fixtures, trust: TrustStore, site: _Site) -> None:
    site.pages["/org-ca.crl"] = fx.path("org-ca.crl.pem").read_bytes()
    store = CrlStore(trust, [site.url("/org-ca.crl"), site.url("/missing.crl")])
    await store.load()
    good, missing = store.status()
    assert good.issuer == fx.subject("org-ca")
    assert good.last_error is None
    assert missing.last_error == "HTTP status 404"
    assert store.is_revoked(fx.cert("peer-revoked"), fx.cert("org-ca"))

    site.pages["/org-ca.crl"] = b"garbage"
    await store.refresh()
    assert store.is_revoked(fx.cert("peer-revoked"), fx.cert("org-ca"))
    assert store.status()[0].last_error == "not a CRL (neither PEM nor DER)"


async def test_http_size_bound(fx: Fixtures, trust: TrustStore, site: _Site) -> None:
    site.pages["/big.crl"] = b"x" * 10_000
    store = CrlStore(trust, [site.url("/big.crl")], max_bytes=1_000)
    await store.load()
    assert "larger than" in (_only(store).last_error or "")


async def test_unreachable_url(trust: TrustStore) -> None:
    store = CrlStore(trust, ["http://127.0.0.1:9/none.crl"], timeout_seconds=2)
    await store.load()
    assert (_only(store).last_error or "").startswith("download failed")


async def test_run_periodic_picks_up_new_crls(
    fx: Fixtures, trust: TrustStore, tmp_path: Path
) -> None:
    path = tmp_path / "org-ca.crl"
    store = CrlStore(trust, [str(path)])
    task = asyncio.create_task(store.run_periodic(0.02))
    try:
        await asyncio.sleep(0.05)
        assert not store.has_crl_for(fx.cert("org-ca"))
        path.write_bytes(fx.path("org-ca.crl.pem").read_bytes())
        for _ in range(200):
            if store.has_crl_for(fx.cert("org-ca")):
                break
            await asyncio.sleep(0.02)
        assert store.has_crl_for(fx.cert("org-ca"))
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
