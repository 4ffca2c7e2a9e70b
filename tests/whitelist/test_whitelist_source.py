"""The live whitelist (mssante.whitelist.source): refresh, last good copy, cache, checksum,
replay refusal; from files and from a real HTTPS server of the test PKI."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from wl_support import FIXTURES_DIR, Clock, HttpsSite, listing, subject

from mssante.whitelist.errors import WhitelistError
from mssante.whitelist.source import WhitelistStore, parse_checksum_file

DN_A = subject("peer-a")
DN_B = subject("peer-b")
BUNDLE = FIXTURES_DIR / "ca-bundle.pem"
GEN1 = datetime(2026, 5, 1, 3, 0, tzinfo=UTC)
GEN2 = GEN1 + timedelta(days=1)
NOW = GEN2 + timedelta(hours=5)

LIST1 = listing(
    [("hopital-a.mssante.test", DN_A), ("clinique-b.fr", DN_A), ("clinique-b.fr", DN_B)], GEN1
)
# The next day: nouveau.mssante.test appears, clinique-b.fr is gone.
LIST2 = listing([("hopital-a.mssante.test", DN_A), ("nouveau.mssante.test", DN_B)], GEN2)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _store(source: str | Path, cache: Path, **options: object) -> WhitelistStore:
    options.setdefault("clock", Clock(NOW))
    return WhitelistStore(str(source), cache_dir=cache, **options)  # type: ignore[arg-type]


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "mssante.whitelist" and r.levelno == logging.WARNING
    ]


def _assert_is_list1(store: WhitelistStore) -> None:
    assert store.current.allows("clinique-b.fr", DN_B)
    assert store.current.generated == GEN1


# -- file source ------------------------------------------------------------------------------


async def test_load_from_file_reports_status_and_writes_cache(tmp_path: Path) -> None:
    source = tmp_path / "liste.xml"
    source.write_bytes(LIST1)
    store = _store(source, tmp_path / "cache")
    assert store.current.entries == 0
    assert not store.current.allows("clinique-b.fr", DN_B)
    assert store.status().last_attempt is None

    await store.load()

    _assert_is_list1(store)
    status = store.status()
    assert (status.entries, status.domains, status.operators) == (3, 2, 2)
    assert status.source == str(source)
    assert status.generated == GEN1
    assert status.loaded_at == status.last_attempt == status.last_success == NOW
    assert status.age == NOW - GEN1
    assert status.sha256 == _sha(LIST1)
    assert not status.from_cache
    assert status.last_error is None
    assert (tmp_path / "cache" / "whitelist.xml").read_bytes() == LIST1
    saved = json.loads((tmp_path / "cache" / "status.json").read_text())
    assert saved["entries"] == 3
    assert saved["generated"] == GEN1.isoformat()
    assert saved["last_error"] is None
    assert saved["cache"] == {
        "source": str(source),
        "sha256": _sha(LIST1),
        "loaded_at": NOW.isoformat(),
    }


async def test_refresh_swaps_in_the_new_list(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mssante.whitelist")
    source = tmp_path / "liste.xml"
    source.write_bytes(LIST1)
    store = _store(source, tmp_path / "cache")
    await store.load()
    before = store.current

    source.write_bytes(LIST2)
    await store.refresh()

    assert store.current.allows("nouveau.mssante.test", DN_B)
    assert not store.current.allows("clinique-b.fr", DN_B)
    assert not store.current.has_domain("clinique-b.fr")
    # A reader that kept the previous snapshot still sees it whole.
    assert before.allows("clinique-b.fr", DN_B)
    assert not before.has_domain("nouveau.mssante.test")
    assert any("(+1/-1 domains)" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "cache" / "whitelist.xml").read_bytes() == LIST2


async def test_unchanged_list_is_not_swapped(tmp_path: Path) -> None:
    source = tmp_path / "liste.xml"
    source.write_bytes(LIST1)
    clock = Clock(NOW)
    store = _store(source, tmp_path / "cache", clock=clock)
    await store.load()
    held = store.current
    clock.now = NOW + timedelta(hours=1)
    await store.refresh()
    assert store.current is held
    status = store.status()
    assert status.loaded_at == NOW
    assert status.last_success == status.last_attempt == NOW + timedelta(hours=1)


async def test_corrupt_list_keeps_the_previous_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = tmp_path / "liste.xml"
    source.write_bytes(LIST1)
    store = _store(source, tmp_path / "cache")
    await store.load()
    held = store.current

    source.write_bytes(LIST2[:-40])  # truncated
    await store.refresh()

    assert store.current is held
    error = store.status().last_error or ""
    assert error.startswith(f"{source}, line ")
    assert "malformed XML" in error
    assert _warnings(caplog) == [f"whitelist refused: {error} (keeping the list in use: 3 entries)"]
    saved = json.loads((tmp_path / "cache" / "status.json").read_text())
    assert saved["last_error"] == error
    assert saved["entries"] == 3
    assert (tmp_path / "cache" / "whitelist.xml").read_bytes() == LIST1

    source.write_bytes(LIST2)
    await store.refresh()
    assert store.status().last_error is None
    assert store.current.has_domain("nouveau.mssante.test")


async def test_missing_source_and_no_cache_means_no_list(tmp_path: Path) -> None:
    source = tmp_path / "absent.xml"
    store = _store(source, tmp_path / "cache")
    await store.load()
    assert store.current.entries == 0
    assert store.status().last_error == f"{source}: file not found"
    saved = json.loads((tmp_path / "cache" / "status.json").read_text())
    assert saved["last_error"] == f"{source}: file not found"
    assert saved["cache"] is None
    assert not (tmp_path / "cache" / "whitelist.xml").exists()


async def test_older_list_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "liste.xml"
    source.write_bytes(LIST2)
    store = _store(source, tmp_path / "cache")
    await store.load()

    source.write_bytes(LIST1)
    await store.refresh()

    assert store.current.generated == GEN2
    assert store.current.has_domain("nouveau.mssante.test")
    assert "older than the list in use" in (store.status().last_error or "")

    # Same generation date, different content: a re-publication, accepted.
    same_day = listing([("autre.mssante.test", DN_A)], GEN2)
    source.write_bytes(same_day)
    await store.refresh()
    assert store.current.has_domain("autre.mssante.test")
    assert store.status().last_error is None


async def test_replay_is_refused_across_a_restart(tmp_path: Path) -> None:
    source = tmp_path / "liste.xml"
    source.write_bytes(LIST2)
    await _store(source, tmp_path / "cache").load()

    source.write_bytes(LIST1)
    restarted = _store(source, tmp_path / "cache")
    await restarted.load()

    assert restarted.current.generated == GEN2
    status = restarted.status()
    assert status.from_cache
    assert "older than the list in use" in (status.last_error or "")


async def test_refresh_before_load_still_reads_the_cache(tmp_path: Path) -> None:
    source = tmp_path / "liste.xml"
    source.write_bytes(LIST2)
    await _store(source, tmp_path / "cache").load()
    source.write_bytes(LIST1)
    other = _store(source, tmp_path / "cache")
    await other.refresh()
    assert other.current.generated == GEN2


async def test_restart_without_source_uses_the_cache(tmp_path: Path) -> None:
    source = tmp_path / "liste.xml"
    source.write_bytes(LIST1)
    await _store(source, tmp_path / "cache", clock=Clock(NOW)).load()
    source.unlink()

    later = NOW + timedelta(days=3)
    restarted = _store(source, tmp_path / "cache", clock=Clock(later))
    await restarted.load()

    _assert_is_list1(restarted)
    status = restarted.status()
    assert status.from_cache
    assert status.loaded_at == NOW  # when the list was fetched, not when it was read back
    assert status.last_success == NOW
    assert status.last_attempt == later
    assert status.last_error == f"{source}: file not found"
    assert json.loads((tmp_path / "cache" / "status.json").read_text())["from_cache"] is True

    source.write_bytes(LIST1)
    await restarted.refresh()
    assert not restarted.status().from_cache
    assert restarted.status().last_error is None


async def test_cache_of_another_source_is_not_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old_source = tmp_path / "ancienne.xml"
    old_source.write_bytes(LIST1)
    await _store(old_source, tmp_path / "cache").load()

    new_source = tmp_path / "nouvelle.xml"
    store = _store(new_source, tmp_path / "cache")
    await store.load()

    assert store.current.entries == 0
    assert any("came from" in w and str(old_source) in w for w in _warnings(caplog))
    # The cached list stays recorded as the old source's.
    saved = json.loads((tmp_path / "cache" / "status.json").read_text())
    assert saved["source"] == str(new_source)
    assert saved["cache"]["source"] == str(old_source)

    new_source.write_bytes(LIST2)
    await store.refresh()
    saved = json.loads((tmp_path / "cache" / "status.json").read_text())
    assert saved["cache"]["source"] == str(new_source)


async def test_cache_without_status_file_is_still_used(tmp_path: Path) -> None:
    source = tmp_path / "liste.xml"
    source.write_bytes(LIST1)
    await _store(source, tmp_path / "cache").load()
    (tmp_path / "cache" / "status.json").unlink()
    source.unlink()

    restarted = _store(source, tmp_path / "cache")
    await restarted.load()
    _assert_is_list1(restarted)
    assert restarted.status().from_cache


async def test_garbage_in_the_cache_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "whitelist.xml").write_bytes(b"\x00garbage")
    (cache / "status.json").write_text("{not json")
    source = tmp_path / "liste.xml"
    source.write_bytes(LIST1)
    store = _store(source, cache)
    await store.load()
    _assert_is_list1(store)
    warnings = _warnings(caplog)
    assert any("status.json" in w for w in warnings)
    assert any("cached whitelist refused" in w for w in warnings)
    assert (cache / "whitelist.xml").read_bytes() == LIST1


async def test_unwritable_cache_does_not_stop_the_list(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    not_a_directory = tmp_path / "cache"
    not_a_directory.write_text("a file where the cache directory should be")
    source = tmp_path / "liste.xml"
    source.write_bytes(LIST1)
    store = _store(source, not_a_directory)
    await store.load()
    _assert_is_list1(store)
    assert store.status().last_error is None
    warnings = _warnings(caplog)
    assert any("cannot write the whitelist cache" in w for w in warnings)
    assert any("cannot write the whitelist status" in w for w in warnings)


async def test_refresh_never_raises(tmp_path: Path) -> None:
    store = _store(tmp_path, tmp_path / "cache")  # a directory as source
    await store.load()
    await store.refresh()
    assert store.status().last_error == f"{tmp_path}: is a directory, not a file"


async def test_run_periodic_picks_up_the_list(tmp_path: Path) -> None:
    source = tmp_path / "liste.xml"
    store = _store(source, tmp_path / "cache")
    await store.load()
    task = asyncio.create_task(store.run_periodic(0.02))
    try:
        source.write_bytes(LIST1)
        for _ in range(200):
            if store.current.entries:
                break
            await asyncio.sleep(0.02)
        _assert_is_list1(store)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    with pytest.raises(ValueError, match="positive"):
        await store.run_periodic(0)


@pytest.mark.parametrize(
    ("source", "checksum"),
    [
        ("http://listeblanche.example/lb.xml", ""),
        ("ftp://listeblanche.example/lb.xml", ""),
        ("/etc/lb.xml", "http://listeblanche.example/lb.xml.sha256"),
    ],
)
def test_sources_that_can_never_work_are_refused(
    tmp_path: Path, source: str, checksum: str
) -> None:
    with pytest.raises(WhitelistError, match=r"only https:// or a file"):
        WhitelistStore(source, cache_dir=tmp_path, checksum=checksum)


async def test_no_source_means_no_list_and_no_cache_activity(tmp_path: Path) -> None:
    source = tmp_path / "liste.xml"
    source.write_bytes(LIST1)
    await _store(source, tmp_path / "cache").load()
    before = (tmp_path / "cache" / "status.json").read_bytes()

    unconfigured = _store("", tmp_path / "cache")
    await unconfigured.load()
    await unconfigured.refresh()
    assert unconfigured.current.entries == 0
    assert unconfigured.status().last_error == "no whitelist source configured"
    assert (tmp_path / "cache" / "status.json").read_bytes() == before


def test_client_certificate_needs_a_trust_bundle(tmp_path: Path) -> None:
    with pytest.raises(WhitelistError, match="client certificate needs a trust bundle"):
        WhitelistStore(
            "https://127.0.0.1/lb.xml",
            cache_dir=tmp_path,
            client_cert=(FIXTURES_DIR / "operator.pem", FIXTURES_DIR / "operator.key", None),
        )


def test_tls_settings_that_do_not_load_are_refused(tmp_path: Path) -> None:
    with pytest.raises(WhitelistError, match=r"TLS settings.*absent\.pem"):
        WhitelistStore(
            "https://127.0.0.1/lb.xml",
            cache_dir=tmp_path,
            trust=BUNDLE,
            client_cert=(tmp_path / "absent.pem", tmp_path / "absent.key", None),
        )


# -- checksum ---------------------------------------------------------------------------------


async def test_checksum_as_digest(tmp_path: Path) -> None:
    source = tmp_path / "liste.xml"
    source.write_bytes(LIST1)
    good = _store(source, tmp_path / "a", checksum=_sha(LIST1).upper())
    await good.load()
    _assert_is_list1(good)

    bad = _store(source, tmp_path / "b", checksum=_sha(LIST2))
    await bad.load()
    assert bad.current.entries == 0
    assert bad.status().last_error == (
        f"{source}: SHA-256 {_sha(LIST1)} does not match the published checksum {_sha(LIST2)}"
    )


async def test_checksum_file_keeps_the_list_in_step(tmp_path: Path) -> None:
    source = tmp_path / "liste.xml"
    checksum = tmp_path / "liste.xml.sha256"
    source.write_bytes(LIST1)
    checksum.write_text(f"{_sha(LIST1)}  liste.xml\n")
    store = _store(source, tmp_path / "cache", checksum=str(checksum))
    await store.load()
    _assert_is_list1(store)

    source.write_bytes(LIST2)  # the checksum file not yet updated: refused
    await store.refresh()
    _assert_is_list1(store)
    assert "does not match the published checksum" in (store.status().last_error or "")

    checksum.write_text(f"SHA256 (liste.xml) = {_sha(LIST2)}\n")
    await store.refresh()
    assert store.current.generated == GEN2

    checksum.write_text("pas une somme\n")
    await store.refresh()
    assert store.status().last_error == (
        f"checksum {checksum}: not a SHA-256 checksum line: 'pas une somme'"
    )
    checksum.unlink()
    await store.refresh()
    assert store.status().last_error == f"checksum {checksum}: file not found"
    assert store.current.generated == GEN2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a" * 64, "a" * 64),
        ("A" * 64 + "\n", "a" * 64),
        ("\ufeff" + "b" * 64 + "  ListeBlanche.xml\r\n", "b" * 64),
        ("c" * 64 + " *autre-nom.xml\n", "c" * 64),  # one digest: taken whatever the name
        ("SHA256 (lb.xml) = " + "d" * 64, "d" * 64),
        ("e" * 64 + "  autre.xml\n" + "f" * 64 + "  lb.xml\n", "f" * 64),
        ("e" * 64 + "  autre.xml\n" + "f" * 64 + "  ./dir/lb.xml\n", "f" * 64),
    ],
)
def test_parse_checksum_file(text: str, expected: str) -> None:
    assert parse_checksum_file(text, "lb.xml") == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "no SHA-256 digest"),
        ("abc  lb.xml", "not a SHA-256 checksum line"),
        ("e" * 64 + "  a.xml\n" + "f" * 64 + "  b.xml\n", "0 different ones for 'lb.xml'"),
        ("e" * 64 + "  lb.xml\n" + "f" * 64 + "  lb.xml\n", "2 different ones for 'lb.xml'"),
    ],
)
def test_parse_checksum_file_refusals(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_checksum_file(text, "lb.xml")


# -- over HTTPS -------------------------------------------------------------------------------


async def test_https_list_changes_are_followed(site: HttpsSite, tmp_path: Path) -> None:
    site.pages["/lb.xml"] = LIST1
    store = _store(site.url("/lb.xml"), tmp_path / "cache", trust=BUNDLE)
    await store.load()
    _assert_is_list1(store)

    site.pages["/lb.xml"] = LIST2
    await store.refresh()
    assert store.current.allows("nouveau.mssante.test", DN_B)
    assert not store.current.allows("clinique-b.fr", DN_B)
    assert store.status().last_error is None
    assert [s.client_subject for s in site.seen] == [None, None]


async def test_https_corrupt_download_keeps_the_previous_list(
    site: HttpsSite, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = site.url("/lb.xml")
    site.pages["/lb.xml"] = LIST1
    store = _store(url, tmp_path / "cache", trust=BUNDLE)
    await store.load()

    site.pages["/lb.xml"] = LIST2[: len(LIST2) // 2]  # a download cut short
    await store.refresh()

    _assert_is_list1(store)
    error = store.status().last_error or ""
    assert error.startswith(f"{url}, line ")
    assert "malformed XML" in error
    assert _warnings(caplog) == [f"whitelist refused: {error} (keeping the list in use: 3 entries)"]
    saved = json.loads((tmp_path / "cache" / "status.json").read_text())
    assert saved["last_error"] == error

    del site.pages["/lb.xml"]
    await store.refresh()
    assert store.status().last_error == f"{url}: HTTP status 404"
    _assert_is_list1(store)


async def test_https_checksum_mismatch_keeps_the_previous_list(
    site: HttpsSite, tmp_path: Path
) -> None:
    site.pages["/lb.xml"] = LIST1
    site.pages["/lb.xml.sha256"] = f"{_sha(LIST1)}  lb.xml\n".encode()
    store = _store(
        site.url("/lb.xml"), tmp_path / "cache", trust=BUNDLE, checksum=site.url("/lb.xml.sha256")
    )
    await store.load()
    _assert_is_list1(store)

    site.pages["/lb.xml"] = LIST2  # tampered with, or the checksum not yet published
    await store.refresh()
    _assert_is_list1(store)
    assert "does not match the published checksum" in (store.status().last_error or "")

    site.pages["/lb.xml.sha256"] = f"{_sha(LIST2)}  lb.xml\n".encode()
    await store.refresh()
    assert store.current.generated == GEN2


async def test_https_server_outside_the_trust_bundle_is_refused(tmp_path: Path) -> None:
    # foreign.pem claims peer-a's DN but chains to a CA that is not in the bundle.
    impostor = HttpsSite(FIXTURES_DIR / "foreign.pem", FIXTURES_DIR / "foreign.key")
    try:
        impostor.pages["/lb.xml"] = LIST1
        store = _store(impostor.url("/lb.xml"), tmp_path / "cache", trust=BUNDLE)
        await store.load()
    finally:
        impostor.close()
    assert store.current.entries == 0
    error = store.status().last_error or ""
    assert error.startswith(f"{impostor.url('/lb.xml')}: download failed: ConnectError")
    assert "CERTIFICATE_VERIFY_FAILED" in error
    assert impostor.seen == []


async def test_https_without_trust_uses_public_roots(site: HttpsSite, tmp_path: Path) -> None:
    site.pages["/lb.xml"] = LIST1
    store = _store(site.url("/lb.xml"), tmp_path / "cache")  # the test PKI is no public CA
    await store.load()
    assert store.current.entries == 0
    assert "CERTIFICATE_VERIFY_FAILED" in (store.status().last_error or "")


async def test_https_older_list_is_refused(site: HttpsSite, tmp_path: Path) -> None:
    site.pages["/lb.xml"] = LIST2
    store = _store(site.url("/lb.xml"), tmp_path / "cache", trust=BUNDLE)
    await store.load()
    site.pages["/lb.xml"] = LIST1  # yesterday's file served again
    await store.refresh()
    assert store.current.generated == GEN2
    assert "refusing a replayed list" in (store.status().last_error or "")


async def test_https_restart_without_network_uses_the_cache(tmp_path: Path) -> None:
    site = HttpsSite(FIXTURES_DIR / "operator.pem", FIXTURES_DIR / "operator.key")
    url = site.url("/lb.xml")
    try:
        site.pages["/lb.xml"] = LIST1
        await _store(url, tmp_path / "cache", trust=BUNDLE).load()
    finally:
        site.close()

    restarted = _store(url, tmp_path / "cache", trust=BUNDLE, timeout_seconds=5)
    await restarted.load()
    _assert_is_list1(restarted)
    status = restarted.status()
    assert status.from_cache
    assert (status.last_error or "").startswith(f"{url}: download failed: ConnectError")


async def test_client_certificate_is_presented_when_configured(tmp_path: Path) -> None:
    site = HttpsSite(
        FIXTURES_DIR / "operator.pem",
        FIXTURES_DIR / "operator.key",
        client_cert="required",
        client_trust=BUNDLE,
    )
    try:
        site.pages["/lb.xml"] = LIST1
        anonymous = _store(site.url("/lb.xml"), tmp_path / "a", trust=BUNDLE)
        await anonymous.load()
        assert anonymous.current.entries == 0
        assert (anonymous.status().last_error or "").startswith(
            f"{site.url('/lb.xml')}: download failed"
        )
        assert site.seen == []

        identified = _store(
            site.url("/lb.xml"),
            tmp_path / "b",
            trust=BUNDLE,
            client_cert=(FIXTURES_DIR / "operator.pem", FIXTURES_DIR / "operator.key", None),
        )
        await identified.load()
        _assert_is_list1(identified)
        assert [s.client_subject for s in site.seen] == [subject("operator")]
    finally:
        site.close()


async def test_https_redirects(site: HttpsSite, tmp_path: Path) -> None:
    site.pages["/v2/lb.xml"] = LIST1
    site.redirects["/lb.xml"] = site.url("/v2/lb.xml")
    site.redirects["/plain.xml"] = f"http://127.0.0.1:{site.port}/v2/lb.xml"
    followed = _store(site.url("/lb.xml"), tmp_path / "a", trust=BUNDLE)
    await followed.load()
    _assert_is_list1(followed)

    downgraded = _store(site.url("/plain.xml"), tmp_path / "b", trust=BUNDLE)
    await downgraded.load()
    assert downgraded.current.entries == 0
    assert downgraded.status().last_error == (
        f"{site.url('/plain.xml')}: refusing non-https URL http://127.0.0.1:{site.port}/v2/lb.xml"
    )


async def test_https_size_bound(site: HttpsSite, tmp_path: Path) -> None:
    site.pages["/lb.xml"] = LIST1
    store = _store(site.url("/lb.xml"), tmp_path / "cache", trust=BUNDLE, max_bytes=1000)
    await store.load()
    assert store.status().last_error == f"{site.url('/lb.xml')}: larger than 1000 bytes"
