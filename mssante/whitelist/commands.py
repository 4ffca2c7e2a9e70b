"""What the ``mssante whitelist`` commands do, as functions returning plain data.

The CLI formats the results; these functions hold the logic so it is tested without a shell.
:func:`show`, :func:`check_file` and :func:`check_cached` never touch the network: they read a
file or the cache directory that the running operator keeps up to date (:mod:`.cache`).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mssante.fetch import FetchError, read_bounded
from mssante.whitelist.cache import WhitelistCache, age_at
from mssante.whitelist.errors import WhitelistError
from mssante.whitelist.model import Whitelist
from mssante.whitelist.parse import MAX_WHITELIST_BYTES, parse_whitelist
from mssante.whitelist.source import WhitelistStore


def show(cache_dir: Path, source: str, *, now: datetime | None = None) -> dict[str, Any]:
    """The state of the whitelist as the cache directory records it, for ``whitelist show``.

    Keys: ``source`` (as configured) and ``cache_dir``; ``cached`` (a cached list exists and
    parses), ``cache_source`` (where it came from, ``None`` if unrecorded) and
    ``cache_for_source`` (it came from ``source``, so a restart will use it); ``generated``,
    ``entries``, ``domains``, ``operators``, ``age_seconds``, ``sha256`` and ``loaded_at`` of
    the cached list; ``last_attempt``, ``last_success`` and ``last_error`` of the process that
    runs the store (``None`` without a status file); ``from_cache``: true when the cache is
    all there is (the source has not delivered the list since that process started, or no
    status file says it ever did); ``problems``: why the status file or the cached list could
    not be read, if so.
    """
    moment = now or datetime.now(UTC)
    cache = WhitelistCache(cache_dir, MAX_WHITELIST_BYTES)
    problems: list[str] = []
    try:
        stored = cache.read_status(moment)
    except WhitelistError as exc:
        problems.append(str(exc))
        stored = None
    status, copy = stored if stored is not None else (None, None)
    held: Whitelist | None = None
    digest: str | None = None
    try:
        data = cache.read_list()
        if data is not None:
            held = parse_whitelist(data, str(cache.list_path))
            digest = hashlib.sha256(data).hexdigest()
    except WhitelistError as exc:
        problems.append(str(exc))
    # The same rule as WhitelistStore at start: a cache recorded as another source's is unused.
    recorded = copy is not None and copy.sha256 == digest
    cache_source = copy.source if copy is not None else None
    generated = held.generated if held is not None else None
    age = age_at(generated, moment)
    return {
        "source": source,
        "cache_dir": str(cache_dir),
        "cached": held is not None,
        "cache_source": cache_source,
        "cache_for_source": held is not None and cache_source in (None, source),
        "generated": generated.isoformat() if generated else None,
        "entries": held.entries if held else 0,
        "domains": held.domains if held else 0,
        "operators": held.operators if held else 0,
        "age_seconds": None if age is None else round(age.total_seconds()),
        "sha256": digest,
        "loaded_at": copy.loaded_at.isoformat() if copy is not None and recorded else None,
        "last_attempt": _iso(status.last_attempt if status else None),
        "last_success": _iso(status.last_success if status else None),
        "last_error": status.last_error if status else None,
        "from_cache": status.from_cache if status is not None else held is not None,
        "problems": problems,
    }


def check_file(path: Path, domain: str, dn: str) -> bool:
    """May the certificate ``dn`` speak for ``domain`` according to the list file ``path``?

    Raises :class:`WhitelistError` when the file cannot be read or parsed.
    """
    try:
        data = read_bounded(path, MAX_WHITELIST_BYTES)
    except FetchError as exc:
        raise WhitelistError(f"{path}: {exc.problem}") from None
    return parse_whitelist(data, str(path)).allows(domain, dn)


def check_cached(cache_dir: Path, domain: str, dn: str) -> bool:
    """:func:`check_file` on the cached list; :class:`WhitelistError` if there is none."""
    cache = WhitelistCache(cache_dir, MAX_WHITELIST_BYTES)
    data = cache.read_list()
    if data is None:
        raise WhitelistError(f"no cached whitelist in {cache_dir}")
    return parse_whitelist(data, str(cache.list_path)).allows(domain, dn)


async def refresh_now(store: WhitelistStore) -> dict[str, Any]:
    """Fetch the list once now (reading the cache first); the resulting status as a dict.

    Never raises: a refusal shows in ``last_error``. Run from the CLI, this updates the cache
    directory; a running operator keeps its own list until its next periodic refresh.
    """
    await store.refresh()
    return store.status().as_dict()


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()
