"""The metrics listener: Prometheus text format on `GET /metrics`, liveness on `GET /healthz`.

Deliberately tiny: one request per connection, GET only, a bounded request head and a timeout,
so a scraper that misbehaves costs one connection and nothing else. Bind it to loopback or an
admin network; it exposes counts, never addresses or contents.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest

from mssante import __version__

log = logging.getLogger("mssante.metrics")

MAX_REQUEST_HEAD = 8192
REQUEST_TIMEOUT = 10.0

BUILD_INFO = Gauge("mssante_build_info", "Version of the running operator", ["version"])
STARTED = Gauge("mssante_start_time_seconds", "Unix time the operator started")
HTTP_REQUESTS = Counter(
    "mssante_metrics_requests_total", "Requests to the metrics listener", ["path", "status"]
)


def mark_started() -> None:
    BUILD_INFO.labels(version=__version__).set(1)
    STARTED.set(time.time())


def _response(status: str, content_type: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    path = "-"
    try:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=REQUEST_TIMEOUT)
        except asyncio.LimitOverrunError:
            status, body = "431 Request Header Fields Too Large", b"request head too large\n"
        except (TimeoutError, asyncio.IncompleteReadError):
            return
        else:
            method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, body = "405 Method Not Allowed", b"only GET\n"
            elif path == "/metrics":
                status, body = "200 OK", generate_latest()
            elif path == "/healthz":
                status, body = "200 OK", b"ok\n"
            else:
                status, body = "404 Not Found", b"not found\n"
            if method == "HEAD":
                body = b""
        ctype = CONTENT_TYPE_LATEST if path == "/metrics" else "text/plain; charset=utf-8"
        HTTP_REQUESTS.labels(
            path=path if path in ("/metrics", "/healthz") else "other", status=status.split()[0]
        ).inc()
        writer.write(_response(status, ctype, body))
        await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def start(host: str, port: int) -> asyncio.Server:
    server = await asyncio.start_server(_handle, host, port, limit=MAX_REQUEST_HEAD)
    return server
