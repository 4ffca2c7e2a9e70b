"""Getting a published file and keeping a copy of it: bounded reads and downloads, atomic writes.

Shared by the stores that follow the "last good copy" design of the ANS referential (CRLs in
:mod:`mssante.pki.crl`, the whitelist in :mod:`mssante.whitelist.source`): each fetches a file
from a path or a URL, refuses what it cannot verify, and keeps the last good copy on disk.

Everything read from a file or the network is bounded (a size limit is a parameter, never
optional) and every failure is a :class:`FetchError` whose message says what went wrong without
a stack trace, ready for a status report.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx


class FetchError(Exception):
    """A file or URL could not be read. ``problem`` is the reason, without the source.

    ``not_found`` is true for a file that does not exist: a cache that was never written is
    normal, other failures are worth a warning.
    """

    def __init__(self, problem: str, *, not_found: bool = False) -> None:
        super().__init__(problem)
        self.problem = problem
        self.not_found = not_found


def read_bounded(path: Path, limit: int) -> bytes:
    """Read ``path`` whole; :class:`FetchError` if unreadable or larger than ``limit`` bytes."""
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise FetchError("file not found", not_found=True) from None
    except IsADirectoryError:
        raise FetchError("is a directory, not a file") from None
    except PermissionError:
        raise FetchError("permission denied") from None
    except OSError as exc:
        raise FetchError(f"cannot read: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise FetchError(f"file larger than {limit} bytes")
    return data


async def download(
    url: str,
    *,
    max_bytes: int,
    timeout_seconds: float,
    verify: ssl.SSLContext | bool = True,
    https_only: bool = False,
) -> bytes:
    """GET ``url`` and return the body; :class:`FetchError` on any failure.

    The body is streamed and abandoned as soon as it exceeds ``max_bytes``, so a hostile or
    broken server cannot make us buffer more than that. Redirects are followed; with
    ``https_only`` every request of the chain must be https, so that a redirect cannot
    downgrade a download whose integrity rests on TLS.
    """

    async def refuse_plain_http(request: httpx.Request) -> None:
        if request.url.scheme != "https":
            raise FetchError(f"refusing non-https URL {request.url}")

    hooks = {"request": [refuse_plain_http]} if https_only else {}
    try:
        async with (
            httpx.AsyncClient(
                timeout=timeout_seconds,
                follow_redirects=True,
                verify=verify,
                event_hooks=hooks,
            ) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code != httpx.codes.OK:
                raise FetchError(f"HTTP status {response.status_code}")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise FetchError(f"larger than {max_bytes} bytes")
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise FetchError(f"larger than {max_bytes} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
    except (httpx.HTTPError, OSError) as exc:
        # OSError: some TLS failures (a TLS 1.3 server refusing our certificate after the
        # handshake, say) reach us as a bare ssl.SSLError rather than an httpx error.
        raise FetchError(f"download failed: {exc.__class__.__name__}: {exc}") from None


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a reader sees the old file or the new one, whole.

    Raises :class:`OSError`; the caller decides whether a failed cache write matters.
    """
    # A temporary file in the same directory, fsync'ed, then renamed: rename(2) is atomic on
    # POSIX, so a crash never leaves a truncated file for the next start to choke on.
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    temporary = Path(name)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    # The rename itself lives in the directory: sync it too, or a power cut can undo it.
    try:
        directory = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        # Some filesystems refuse fsync on a directory; the data itself is safe then.
        with contextlib.suppress(OSError):
            os.fsync(directory)
    finally:
        os.close(directory)


async def refresh_periodically(
    refresh: Callable[[], Awaitable[None]], interval_seconds: float, *, immediately: bool = False
) -> None:
    """Call ``refresh`` every ``interval_seconds`` until cancelled (CRLs, the whitelist).

    ``refresh`` must not raise: it keeps the last good copy and reports failures itself.
    The first call happens one interval from now, or at once with ``immediately=True``.
    """
    if interval_seconds <= 0:
        raise ValueError("interval_seconds must be positive")
    if immediately:
        await refresh()
    while True:
        await asyncio.sleep(interval_seconds)
        await refresh()
