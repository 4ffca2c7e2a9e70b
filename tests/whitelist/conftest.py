"""Fixtures over the committed test PKI (tls-fixtures/) for the whitelist tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from wl_support import FIXTURES_DIR, HttpsSite


@pytest.fixture
def site() -> Iterator[HttpsSite]:
    """HTTPS on 127.0.0.1 with our operator certificate (SAN 127.0.0.1, chains to the bundle)."""
    served = HttpsSite(FIXTURES_DIR / "operator.pem", FIXTURES_DIR / "operator.key")
    yield served
    served.close()
