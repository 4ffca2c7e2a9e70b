"""The server's pure decisions: SASL PLAIN decoding, the login slow-down, LIST wildcards."""

from __future__ import annotations

from mssante.operator.auth import LoginThrottle, PlainCredentials, decode_plain
from mssante.operator.imap.session import (
    _batches,
    _in_runs,
    _merged,
    _wildcard_match,
    capabilities,
)


def test_decode_plain() -> None:
    assert decode_plain(b"\0a@b.fr\0secret") == PlainCredentials("", "a@b.fr", "secret")
    assert decode_plain(b"z\0a@b.fr\0secret") == PlainCredentials("z", "a@b.fr", "secret")
    for bad in (b"", b"a@b.fr\0secret", b"\0\0secret", b"\0a\0", b"\0a\0b\0c", b"\0\xff\0x"):
        assert decode_plain(bad) is None


def test_throttle_grows_per_account_and_per_address_and_forgets() -> None:
    throttle = LoginThrottle(free_failures=2, max_delay=8)
    keys = ("user:a", "ip:192.0.2.1")
    assert throttle.delay(keys, 0) == 0
    for _ in range(2):
        throttle.failed(keys, 0)
    assert throttle.delay(keys, 0) == 1
    throttle.failed(keys, 0)
    assert throttle.delay(keys, 0) == 2
    for _ in range(10):
        throttle.failed(keys, 0)
    assert throttle.delay(keys, 0) == 8  # capped
    # Another account from the same address is slowed down too; another address for this
    # account as well (spraying).
    assert throttle.delay(("user:b", "ip:192.0.2.1"), 0) == 8
    assert throttle.delay(("user:a", "ip:198.51.100.7"), 0) == 8
    throttle.succeeded("user:a")
    assert throttle.delay(("user:a", "ip:198.51.100.7"), 0) == 0
    assert throttle.delay(keys, 10_000) == 0  # forgotten after a quiet period


def test_wildcards() -> None:
    assert _wildcard_match("*", "Archive/2024")
    assert not _wildcard_match("%", "Archive/2024")
    assert _wildcard_match("Archive/%", "Archive/2024")
    assert _wildcard_match("%/20%4", "Archive/2024")
    assert not _wildcard_match("INBOX", "INBOX/x")
    assert _wildcard_match("I*X", "INBOX")
    assert not _wildcard_match("*" * 50 + "z", "a" * 30)


def test_capabilities_before_and_after_tls() -> None:
    clear = capabilities(tls=False, authenticated=False)
    assert "STARTTLS" in clear and "LOGINDISABLED" in clear and "AUTH=PLAIN" not in clear
    tls = capabilities(tls=True, authenticated=False)
    assert "AUTH=PLAIN" in tls and "SASL-IR" in tls and "STARTTLS" not in tls
    assert "AUTH=PLAIN" not in capabilities(tls=True, authenticated=True)


def test_fetch_batches_bound_count_and_octets() -> None:
    uids = list(range(1, 1201))
    assert [len(b) for b in _batches(uids, {})] == [500, 500, 200]
    mib = 1024 * 1024
    sizes = {1: 10 * mib, 2: 5 * mib, 3: 2 * mib, 4: 40 * mib, 5: 1}
    # 10 + 5 fits in 16 MiB, 2 more does not; a message larger than a batch goes alone.
    assert _batches([1, 2, 3, 4, 5], sizes) == [[1, 2], [3], [4], [5]]
    assert _batches([], sizes) == []


def test_uid_ranges_are_merged_and_found_by_bisection() -> None:
    merged = _merged([(10, 12), (1, 3), (4, 4), (11, 20), (30, 30)])
    assert merged == [(1, 4), (10, 20), (30, 30)]
    starts = [lo for lo, _ in merged]
    inside = [u for u in range(0, 35) if _in_runs(u, merged, starts)]
    assert inside == [1, 2, 3, 4, *range(10, 21), 30]
