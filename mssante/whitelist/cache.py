"""The whitelist's state on disk: the last good list and a status file, in one cache directory.

Two files, each replaced atomically (:func:`mssante.fetch.write_atomically`):

- ``whitelist.xml``: the raw bytes of the last list accepted, exactly as downloaded, so that a
  restart without network starts with it and ``mssante whitelist check`` can answer offline;
- ``status.json``: written after every refresh attempt, success or failure, by the process that
  runs the store: what it holds (:class:`WhitelistStatus`) and where the cached list came from
  (:class:`CachedCopy`). Another process (``mssante whitelist show``) reads it to report the
  state without touching the network.

The provenance of the cached list is kept apart from the state of the store because they
diverge: after a change of ``source``, the cache still holds the old source's list (which the
store will not use) until the new source yields one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

from mssante.fetch import FetchError, read_bounded, write_atomically
from mssante.whitelist.errors import WhitelistError

LIST_FILE: Final = "whitelist.xml"
STATUS_FILE: Final = "status.json"
STATUS_VERSION: Final = 1
# status.json is a few hundred bytes (plus an error message); anything much larger is not ours.
MAX_STATUS_BYTES: Final = 1024 * 1024


@dataclass(frozen=True)
class WhitelistStatus:
    """What a :class:`~mssante.whitelist.source.WhitelistStore` holds, for status reports.

    The list fields (``generated`` … ``sha256``) describe the list in use, empty until one is
    loaded. ``loaded_at`` is when that list was first accepted from the source (a restart that
    reads it back from the cache keeps the original time); ``age`` is the time since its
    ``DateDeGeneration``. ``from_cache`` is true while the list in use was read from the cache
    and the source has not confirmed it since (every download failed). ``last_error`` is why
    the latest attempt was refused, ``None`` after a success.
    """

    source: str
    generated: datetime | None
    entries: int
    domains: int
    operators: int
    sha256: str | None
    loaded_at: datetime | None
    age: timedelta | None
    from_cache: bool
    last_attempt: datetime | None
    last_success: datetime | None
    last_error: str | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: timestamps in ISO 8601, ``age`` as ``age_seconds``."""
        return {
            "source": self.source,
            "generated": _iso(self.generated),
            "entries": self.entries,
            "domains": self.domains,
            "operators": self.operators,
            "sha256": self.sha256,
            "loaded_at": _iso(self.loaded_at),
            "age_seconds": None if self.age is None else round(self.age.total_seconds()),
            "from_cache": self.from_cache,
            "last_attempt": _iso(self.last_attempt),
            "last_success": _iso(self.last_success),
            "last_error": self.last_error,
        }


@dataclass(frozen=True)
class CachedCopy:
    """Where the list in ``whitelist.xml`` came from, and when it was accepted."""

    source: str
    sha256: str
    loaded_at: datetime


def age_at(generated: datetime | None, now: datetime) -> timedelta | None:
    return None if generated is None else now - generated


class WhitelistCache:
    """Reads and writes the two files of ``directory``. Methods raise, callers decide."""

    def __init__(self, directory: Path, max_list_bytes: int) -> None:
        self.directory = directory
        self.list_path = directory / LIST_FILE
        self.status_path = directory / STATUS_FILE
        self._max_list_bytes = max_list_bytes

    def read_list(self) -> bytes | None:
        """The cached list, ``None`` if there is none; :class:`WhitelistError` if unreadable."""
        try:
            return read_bounded(self.list_path, self._max_list_bytes)
        except FetchError as exc:
            if exc.not_found:
                return None
            raise WhitelistError(f"{self.list_path}: {exc.problem}") from None

    def write_list(self, data: bytes) -> None:
        write_atomically(self.list_path, data)

    def read_status(self, now: datetime) -> tuple[WhitelistStatus, CachedCopy | None] | None:
        """The last status written, ``None`` if none; :class:`WhitelistError` if unusable."""
        try:
            raw = read_bounded(self.status_path, MAX_STATUS_BYTES)
        except FetchError as exc:
            if exc.not_found:
                return None
            raise WhitelistError(f"{self.status_path}: {exc.problem}") from None
        try:
            document = json.loads(raw)
            if not isinstance(document, dict) or document.get("version") != STATUS_VERSION:
                raise ValueError(f"not a version {STATUS_VERSION} status document")
            return _status_from(document, now), _copy_from(document.get("cache"))
        except (ValueError, TypeError, KeyError) as exc:
            raise WhitelistError(f"{self.status_path}: unusable status file: {exc}") from None

    def write_status(self, status: WhitelistStatus, copy: CachedCopy | None) -> None:
        document = {"version": STATUS_VERSION, **status.as_dict()}
        document["cache"] = (
            None
            if copy is None
            else {"source": copy.source, "sha256": copy.sha256, "loaded_at": _iso(copy.loaded_at)}
        )
        text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
        write_atomically(self.status_path, text.encode("utf-8"))


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _status_from(document: dict[str, Any], now: datetime) -> WhitelistStatus:
    generated = _time(document, "generated")
    return WhitelistStatus(
        source=_text(document, "source"),
        generated=generated,
        entries=_count(document, "entries"),
        domains=_count(document, "domains"),
        operators=_count(document, "operators"),
        sha256=_optional_text(document, "sha256"),
        loaded_at=_time(document, "loaded_at"),
        age=age_at(generated, now),
        from_cache=document["from_cache"] is True,
        last_attempt=_time(document, "last_attempt"),
        last_success=_time(document, "last_success"),
        last_error=_optional_text(document, "last_error"),
    )


def _copy_from(value: object) -> CachedCopy | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("'cache' is not an object")
    loaded_at = _time(value, "loaded_at")
    if loaded_at is None:
        raise ValueError("'cache.loaded_at' is missing")
    return CachedCopy(_text(value, "source"), _text(value, "sha256"), loaded_at)


def _text(document: dict[str, Any], key: str) -> str:
    value = document[key]
    if not isinstance(value, str):
        raise ValueError(f"{key!r} is not a string")
    return value


def _optional_text(document: dict[str, Any], key: str) -> str | None:
    return None if document.get(key) is None else _text(document, key)


def _count(document: dict[str, Any], key: str) -> int:
    value = document[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{key!r} is not a count")
    return value


def _time(document: dict[str, Any], key: str) -> datetime | None:
    value = _optional_text(document, key)
    if value is None:
        return None
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError(f"{key!r} has no time zone")
    return moment
