"""NeoMutt (Debian package neomutt) against the real operator (SQLite) over imaps://, driven
without a person: a muttrc written here trusts tls-fixtures, and `push` feeds the keys. NeoMutt
needs a terminal, so it runs under `script` (util-linux) with a pseudo-terminal; what it did is
then checked on the server with imaplib. `./dev.sh test` installs neomutt."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from test_imap_server import (  # the shared server fixture and helpers
    FIXTURES,
    PASSWORD,
    USER,
    Imap,
    _deliver,
    _in_thread,
    imap,  # noqa: F401 - a fixture
)

pytestmark = [
    pytest.mark.parametrize("store_url", ["sqlite"], indirect=True),
    pytest.mark.skipif(
        (shutil.which("neomutt") is None or shutil.which("script") is None)
        and os.environ.get("CI") != "true",
        reason="neomutt or script not installed (Debian packages neomutt and bsdutils; "
        "./dev.sh test installs neomutt)",
    ),
]


def _neomutt(server: Imap, home: Path, keys: str) -> subprocess.CompletedProcess[str]:
    muttrc = home / "muttrc"
    folder = f"imaps://{USER.replace('@', '%40')}@127.0.0.1:{server.tls_port}"
    muttrc.write_text(
        f'set folder="{folder}"\nset spoolfile="+INBOX"\n'
        f'set imap_user="{USER}"\nset imap_pass="{PASSWORD}"\n'
        # The test certificate names the operator, not 127.0.0.1: trust it as the CA does,
        # and skip only the host name check.
        f'set certificate_file="{home / "certificates"}"\n'
        f'set ssl_ca_certificates_file="{FIXTURES / "ca-bundle.pem"}"\n'
        "set ssl_verify_host=no\nset ssl_force_tls=yes\n"
        'set header_cache=""\nset message_cachedir=""\nset imap_check_subscribed=no\n'
        "set confirmappend=no\nset delete=yes\nset move=no\nset quit=yes\n"
        "set mail_check=60\nset timeout=1\n"
    )
    command = f"neomutt -n -F {muttrc} -e 'push \"{keys}\"'"
    return subprocess.run(
        ["script", "-qec", command, "/dev/null"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "HOME": str(home), "TERM": "xterm", "COLUMNS": "100", "LINES": "30"},
    )


async def test_neomutt_flags_copies_and_deletes(imap: Imap, tmp_path: Path) -> None:  # noqa: F811
    await _deliver(imap)

    def scenario() -> None:
        # Flag message 1, copy it to Archive, delete it, then sync and quit.
        keys = "<flag-message><copy-message>=Archive<enter><delete-message><sync-mailbox><quit>"
        run = _neomutt(imap, tmp_path, keys)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        client = imap.tls()
        client.login(USER, PASSWORD)
        typ, data = client.select("INBOX", readonly=True)
        assert data == [b"0"], (data, run.stdout[-2000:])
        typ, data = client.select("Archive", readonly=True)
        assert data == [b"1"]
        typ, data = client.fetch("1", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK" and isinstance(data[0], tuple)
        assert b"\\Flagged" in data[0][0] and b"Compte rendu" in data[0][1]
        client.logout()

    await _in_thread(scenario)
