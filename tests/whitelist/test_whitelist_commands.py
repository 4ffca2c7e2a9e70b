"""What `mssante whitelist show|check|refresh` compute (mssante.whitelist.commands), offline
from the cache directory a store keeps."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from wl_support import FIXTURES_DIR, Clock, listing, subject

from mssante.whitelist import commands
from mssante.whitelist.errors import WhitelistError
from mssante.whitelist.source import WhitelistStore

DN_A = subject("peer-a")
DN_B = subject("peer-b")
GENERATED = datetime(2026, 5, 1, 3, 0, tzinfo=UTC)
FETCHED = GENERATED + timedelta(hours=2)
LATER = FETCHED + timedelta(hours=10)
LIST = listing([("clinique-b.fr", DN_A), ("clinique-b.fr", DN_B)], GENERATED)


async def _run_store(source: Path, cache: Path, now: datetime) -> WhitelistStore:
    store = WhitelistStore(str(source), cache_dir=cache, clock=Clock(now))
    await store.load()
    return store


def test_show_with_nothing_yet(tmp_path: Path) -> None:
    report = commands.show(tmp_path / "cache", "https://lb.example/lb.xml", now=LATER)
    assert report == {
        "source": "https://lb.example/lb.xml",
        "cache_dir": str(tmp_path / "cache"),
        "cached": False,
        "cache_source": None,
        "cache_for_source": False,
        "generated": None,
        "entries": 0,
        "domains": 0,
        "operators": 0,
        "age_seconds": None,
        "sha256": None,
        "loaded_at": None,
        "last_attempt": None,
        "last_success": None,
        "last_error": None,
        "from_cache": False,
        "problems": [],
    }


async def test_show_after_a_good_then_a_failed_refresh(tmp_path: Path) -> None:
    source = tmp_path / "liste.xml"
    source.write_bytes(LIST)
    cache = tmp_path / "cache"
    await _run_store(source, cache, FETCHED)

    report = commands.show(cache, str(source), now=LATER)
    assert report["cached"] and report["cache_for_source"]
    assert report["cache_source"] == str(source)
    assert (report["entries"], report["domains"], report["operators"]) == (2, 1, 2)
    assert report["generated"] == GENERATED.isoformat()
    assert report["age_seconds"] == (LATER - GENERATED).total_seconds()
    assert report["loaded_at"] == report["last_success"] == FETCHED.isoformat()
    assert report["last_error"] is None
    assert report["from_cache"] is False
    json.dumps(report)  # what the CLI prints

    source.unlink()
    await _run_store(source, cache, LATER)  # a restart without the source
    report = commands.show(cache, str(source), now=LATER)
    assert report["last_error"] == f"{source}: file not found"
    assert report["last_attempt"] == LATER.isoformat()
    assert report["last_success"] == FETCHED.isoformat()
    assert report["from_cache"] is True  # the cache is all there is
    assert report["entries"] == 2


async def test_show_flags_a_cache_of_another_source(tmp_path: Path) -> None:
    source = tmp_path / "liste.xml"
    source.write_bytes(LIST)
    await _run_store(source, tmp_path / "cache", FETCHED)
    report = commands.show(tmp_path / "cache", "https://lb.example/lb.xml", now=LATER)
    assert report["cached"]
    assert report["cache_source"] == str(source)
    assert report["cache_for_source"] is False


def test_show_reports_unreadable_files(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "whitelist.xml").write_bytes(b"<ListeBlancheMSSante")
    (cache / "status.json").write_text('{"version": 99}')
    report = commands.show(cache, "x.xml", now=LATER)
    assert not report["cached"]
    (status_problem, list_problem) = report["problems"]
    assert "unusable status file" in status_problem
    assert list_problem.startswith(f"{cache / 'whitelist.xml'}, line 1")


def test_check_file_on_the_committed_fixture() -> None:
    path = FIXTURES_DIR / "whitelist.xml"
    assert commands.check_file(path, "clinique-b.fr", DN_B)
    assert commands.check_file(path, "CLINIQUE-B.FR", ",".join(reversed(DN_A.split(","))))
    assert not commands.check_file(path, "hopital-a.mssante.test", DN_B)
    assert not commands.check_file(path, "labo-c.mssante.test", subject("peer-c"))


def test_check_file_refuses_a_bad_file(tmp_path: Path) -> None:
    with pytest.raises(WhitelistError, match="file not found"):
        commands.check_file(tmp_path / "absent.xml", "a.fr", DN_A)
    bad = tmp_path / "bad.xml"
    bad.write_bytes(b"<x/>")
    with pytest.raises(WhitelistError, match=r"bad\.xml, line 1: root element is <x>"):
        commands.check_file(bad, "a.fr", DN_A)


async def test_check_cached(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(WhitelistError, match="no cached whitelist"):
        commands.check_cached(cache, "clinique-b.fr", DN_B)
    source = tmp_path / "liste.xml"
    source.write_bytes(LIST)
    await _run_store(source, cache, FETCHED)
    assert commands.check_cached(cache, "clinique-b.fr", DN_B)
    assert not commands.check_cached(cache, "hopital-a.mssante.test", DN_A)


async def test_refresh_now(tmp_path: Path) -> None:
    source = tmp_path / "liste.xml"
    source.write_bytes(LIST)
    store = WhitelistStore(str(source), cache_dir=tmp_path / "cache", clock=Clock(FETCHED))
    report = await commands.refresh_now(store)
    assert report["entries"] == 2
    assert report["last_error"] is None
    assert report["age_seconds"] == 7200
    json.dumps(report)

    source.write_bytes(b"garbage")
    report = await commands.refresh_now(store)
    assert report["entries"] == 2
    assert report["last_error"].startswith(f"{source}, line 1")
