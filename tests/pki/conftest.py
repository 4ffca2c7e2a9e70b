"""Fixtures over the committed test hierarchy in tls-fixtures/."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pki_support import FIXTURES_DIR, Fixtures

from mssante.pki.anchors import TrustStore
from mssante.pki.crl import CrlStore


@pytest.fixture(scope="session")
def fx() -> Fixtures:
    if not (FIXTURES_DIR / "fixtures.json").is_file():
        pytest.fail(
            f"{FIXTURES_DIR} is not populated: run "
            "`python -c 'from pathlib import Path; from mssante.pki.testca import "
            'write_test_hierarchy; write_test_hierarchy(Path("tls-fixtures"))\'`'
        )
    return Fixtures.open(FIXTURES_DIR)


@pytest.fixture(scope="session")
def trust(fx: Fixtures) -> TrustStore:
    return TrustStore.from_file(fx.bundle)


@pytest.fixture
async def crls(fx: Fixtures, trust: TrustStore) -> AsyncIterator[CrlStore]:
    store = CrlStore(trust, [str(p) for p in fx.crl_paths])
    await store.load()
    yield store
