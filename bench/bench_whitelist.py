"""Whitelist: parse time of a list of the real size, and lookup rates.

The ANS list holds about 6,500 entries (5,000 domains, 400 operator certificates). Loading it
happens at start and on each refresh; lookups happen on every SMTP transaction with a peer.
The targets: loading well under a second, a lookup about as cheap as a dict access.

    .venv/bin/python bench/bench_whitelist.py
    .venv/bin/python bench/bench_whitelist.py --entries 20000 --domains 15000 --operators 800
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from mssante.pki.dn import normalize_dn
from mssante.whitelist.parse import parse_whitelist
from mssante.whitelist.source import WhitelistStore
from mssante.whitelist.xmlwriter import WhitelistEntry, whitelist_xml

GENERATED = datetime(2026, 5, 1, 3, 0, tzinfo=UTC)


def make_list(entries: int, domains: int, operators: int) -> tuple[bytes, list[str], list[str]]:
    """A list in the ANS format: every domain once, the surplus entries as second operators."""
    if not operators <= domains <= entries:
        raise SystemExit("need operators <= domains <= entries")
    dns = [
        f"CN=smtp{i}.operateur{i}.fr,OU=3{i:014d},O=OPERATEUR DE SANTE {i},"
        f"ST=Haute-Garonne (31),C=FR"
        for i in range(operators)
    ]
    names = [
        f"ch-{i}.mssante.fr" if i % 4 else f"cabinet-{i}.medecin.example.fr" for i in range(domains)
    ]
    rows: list[WhitelistEntry] = []
    for i in range(entries):
        domain = names[i % domains]
        dn = dns[(i + i // domains * 7) % operators]
        rows.append(
            WhitelistEntry(
                domain=domain,
                dn=dn,
                description=f"Domaine de messagerie MSSanté de l'établissement {domain}",
                contact="05 00 00 00 00, mssante-support@operateur.example.fr",
                updated=GENERATED,
            )
        )
    return whitelist_xml(rows, GENERATED), names, dns


def timed(function: Callable[[], object], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def rate(function: Callable[[], object], count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        function()
    return count / (time.perf_counter() - start)


async def store_load(data: bytes) -> float:
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "ListeBlanche.xml"
        source.write_bytes(data)
        store = WhitelistStore(str(source), cache_dir=Path(scratch) / "cache")
        start = time.perf_counter()
        await store.load()
        elapsed = time.perf_counter() - start
        assert store.status().last_error is None, store.status().last_error
        return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=6_500)
    parser.add_argument("--domains", type=int, default=5_000)
    parser.add_argument("--operators", type=int, default=400)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--lookups", type=int, default=200_000)
    args = parser.parse_args()

    data, names, dns = make_list(args.entries, args.domains, args.operators)
    whitelist = parse_whitelist(data, "bench")
    assert (whitelist.entries, whitelist.domains, whitelist.operators) == (
        args.entries,
        args.domains,
        args.operators,
    ), (whitelist.entries, whitelist.domains, whitelist.operators)

    parse_times = timed(lambda: parse_whitelist(data, "bench"), args.runs)
    load_times = [asyncio.run(store_load(data)) for _ in range(3)]

    # A peer's transaction: its sender domain and its certificate DN, as the relay has them.
    domain, dn = names[1], dns[1]
    assert whitelist.allows(domain, dn)
    name = x509.Name.from_rfc4514_string(dn)
    assert whitelist.allows(domain, name)
    table = {domain: frozenset({normalize_dn(dn)})}
    key = normalize_dn(dn)
    n = args.lookups

    rows = [
        ("allows(domain, DN string), listed", rate(lambda: whitelist.allows(domain, dn), n)),
        ("allows(domain, x509.Name), listed", rate(lambda: whitelist.allows(domain, name), n)),
        ("allows(unknown domain, DN)", rate(lambda: whitelist.allows("inconnu.fr", dn), n)),
        ("allows(domain, unlisted DN)", rate(lambda: whitelist.allows(domain, dns[0]), n)),
        ("is_listed_operator(DN) (null sender)", rate(lambda: whitelist.is_listed_operator(dn), n)),
        ("has_domain(domain) (relay target)", rate(lambda: whitelist.has_domain(domain), n)),
        ("baseline: dict.get + frozenset in", rate(lambda: key in table.get(domain, ()), n)),
        ("normalize_dn(DN string), uncached", rate(lambda: normalize_dn(dn), n // 20)),
    ]

    print(
        f"list: {args.entries} entries, {args.domains} domains, {args.operators} operators, "
        f"{len(data) / 1e6:.2f} MB"
    )
    print(
        f"parse_whitelist: median {statistics.median(parse_times) * 1000:.0f} ms, "
        f"min {min(parse_times) * 1000:.0f} ms, max {max(parse_times) * 1000:.0f} ms "
        f"({args.runs} runs)"
    )
    print(
        f"WhitelistStore.load (file source, parse, cache and status written): "
        f"median {statistics.median(load_times) * 1000:.0f} ms (3 runs)"
    )
    for label, per_second in rows:
        print(f"{label:40} {per_second / 1e6:6.2f} M/s  ({1e9 / per_second:7.0f} ns)")


if __name__ == "__main__":
    main()
