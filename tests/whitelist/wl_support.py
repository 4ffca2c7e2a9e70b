"""Helpers for the whitelist tests: lists in the ANS format, and a real HTTPS server."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509

from mssante.pki.dn import dn_to_string
from mssante.pki.tls import ClientCertMode, server_context
from mssante.whitelist.xmlwriter import WhitelistEntry, whitelist_xml

FIXTURES_DIR = Path(__file__).parents[2] / "tls-fixtures"
T2025 = datetime(2025, 1, 1, tzinfo=UTC)


def fixtures_index() -> dict[str, Any]:
    index: dict[str, Any] = json.loads((FIXTURES_DIR / "fixtures.json").read_text("utf-8"))
    return index


def subject(name: str) -> str:
    """The subject DN of ``name``.pem as fixtures.json records it (CN first, as ANS writes)."""
    value: str = fixtures_index()["files"][f"{name}.pem"]["subject"]
    return value


def listing(pairs: Sequence[tuple[str, str]], generated: datetime = T2025) -> bytes:
    """A whitelist document in the ANS format with one <Domaine> per (domain, DN) pair."""
    return whitelist_xml(
        [
            WhitelistEntry(
                domain=domain,
                dn=dn,
                description=f"Domaine de messagerie MSSanté {domain}",
                contact="01 00 00 00 00, mssante@example.test",
                updated=generated,
            )
            for domain, dn in pairs
        ],
        generated,
    )


@dataclass
class Seen:
    """One request the server answered: its path and the client certificate subject, if any."""

    path: str
    client_subject: str | None


class HttpsSite:
    """A real HTTPS server on 127.0.0.1, with a certificate of the test PKI.

    Serves ``pages`` (path -> body; 404 otherwise) and ``redirects`` (path -> Location, 302).
    With ``client_cert="required"`` the handshake demands a certificate chaining to
    ``client_trust``; ``seen`` records every request answered.
    """

    def __init__(
        self,
        cert: Path,
        key: Path,
        *,
        client_cert: ClientCertMode = "none",
        client_trust: Path | None = None,
    ) -> None:
        self.pages: dict[str, bytes] = {}
        self.redirects: dict[str, str] = {}
        self.seen: list[Seen] = []
        pages, redirects, seen = self.pages, self.redirects, self.seen

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                der = self.connection.getpeercert(binary_form=True)
                peer = dn_to_string(x509.load_der_x509_certificate(der).subject) if der else None
                seen.append(Seen(self.path, peer))
                location = redirects.get(self.path)
                body = pages.get(self.path)
                if location is not None:
                    self.send_response(302)
                    self.send_header("Location", location)
                    body = b""
                else:
                    self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, format: str, *args: object) -> None:
                pass

        context = server_context("modern", cert, key, client_trust, client_cert)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # Handshakes happen on accept(); a failed one is an OSError that socketserver drops.
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def port(self) -> int:
        port: int = self.server.server_address[1]
        return port

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class Clock:
    """A settable clock for the stores (aware UTC)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now
