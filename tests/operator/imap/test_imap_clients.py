"""Real IMAP clients against the real operator (SQLite): curl's imaps:// URLs and mbsync
(Debian package isync) synchronising a local Maildir both ways. `./dev.sh test` installs both."""

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

pytestmark = pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)

CA = str(FIXTURES / "ca-bundle.pem")
IN_CI = os.environ.get("CI") == "true"


def _curl(
    server: Imap, path: str, *extra: str, password: str = PASSWORD
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            "curl",
            "--silent",
            "--show-error",
            "--max-time",
            "20",
            "--cacert",
            CA,
            "--user",
            f"{USER}:{password}",
            f"imaps://127.0.0.1:{server.tls_port}/{path}",
            *extra,
        ],
        capture_output=True,
        check=False,
    )


@pytest.mark.skipif(
    shutil.which("curl") is None and not IN_CI,
    reason="curl not installed (Debian package curl; ./dev.sh test installs it)",
)
async def test_curl_lists_examines_and_fetches(imap: Imap) -> None:  # noqa: F811
    stored = await _deliver(imap)

    def scenario() -> None:
        listed = _curl(imap, "")
        assert listed.returncode == 0, listed.stderr
        assert b"INBOX" in listed.stdout and b"Trash" in listed.stdout, listed.stdout
        examined = _curl(imap, "INBOX", "-X", "EXAMINE INBOX")
        assert examined.returncode == 0, examined.stderr
        assert b"1 EXISTS" in examined.stdout
        fetched = _curl(imap, "INBOX;UID=1")
        assert fetched.returncode == 0, fetched.stderr
        assert fetched.stdout == stored
        refused = _curl(imap, "", password="not the password")
        assert refused.returncode == 67, (refused.returncode, refused.stderr)

    await _in_thread(scenario)


SECOND = (
    b"From: Jean Martin <" + USER.encode() + b">\r\n"
    b"Subject: Brouillon\r\n"
    b"Message-ID: <brouillon-1@hopital-x.mssante.test>\r\n"
    b"\r\n"
    b"A jeter.\r\n"
)
THIRD = (
    b"From: Jean Martin <" + USER.encode() + b">\r\n"
    b"Subject: Note locale\r\n"
    b"Message-ID: <note-1@hopital-x.mssante.test>\r\n"
    b"\r\n"
    b"Ecrite hors ligne.\r\n"
)


def _set_flags(path: Path, flag: str) -> None:
    """Add a maildir flag to a message file (moving it to cur/, as a mail reader does)."""
    name, _, flags = path.name.partition(":2,")
    path.rename(path.parent.parent / "cur" / f"{name}:2,{''.join(sorted(flags + flag))}")


def _mbsync(rc: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["mbsync", "-c", str(rc), "-a"], capture_output=True, text=True, timeout=60, check=False
    )


def _unix(message: bytes) -> bytes:
    """`message` with LF line ends and without mbsync's own X-TUID header."""
    lines = message.replace(b"\r\n", b"\n").split(b"\n")
    return b"\n".join(line for line in lines if not line.startswith(b"X-TUID: "))


def _maildir_files(folder: Path) -> list[Path]:
    return sorted(p for sub in ("cur", "new") for p in (folder / sub).iterdir())


@pytest.mark.skipif(
    shutil.which("mbsync") is None and not IN_CI,
    reason="mbsync not installed (Debian package isync; ./dev.sh test installs it)",
)
async def test_mbsync_round_trip(imap: Imap, tmp_path: Path) -> None:  # noqa: F811
    stored = await _deliver(imap)
    local = tmp_path / "mail"
    local.mkdir()
    rc = tmp_path / "mbsyncrc"
    rc.write_text(
        f"IMAPAccount op\nHost localhost\nPort {imap.tls_port}\nUser {USER}\nPass {PASSWORD}\n"
        f"SSLType IMAPS\nCertificateFile {CA}\n\n"
        "IMAPStore remote\nAccount op\n\n"
        f"MaildirStore local\nPath {local}/\nInbox {local}/INBOX\nSubFolders Verbatim\n\n"
        "Channel sync\nFar :remote:\nNear :local:\nPatterns *\n"
        "Create Both\nRemove Both\nExpunge Both\nSyncState *\n"
    )

    def setup() -> None:
        client = imap.tls()
        client.login(USER, PASSWORD)
        assert client.create("Projets")[0] == "OK"
        typ, _ = client.append("INBOX", None, None, SECOND)
        assert typ == "OK"
        client.logout()

    await _in_thread(setup)
    first = await _in_thread(lambda: _mbsync(rc))
    assert first.returncode == 0, first.stdout + first.stderr
    inbox = _maildir_files(local / "INBOX")
    assert len(inbox) == 2
    by_subject = {b"Subject: Compte rendu" in p.read_bytes(): p for p in inbox}
    delivered, appended = by_subject[True], by_subject[False]
    assert _unix(delivered.read_bytes()) == _unix(stored)
    assert _unix(appended.read_bytes()) == _unix(SECOND)
    assert {p.name for p in local.iterdir()} >= {"INBOX", "Projets", "Sent", "Trash"}
    assert _maildir_files(local / "Projets") == []

    # Locally: read the delivered message, trash the appended one, file a new one in Projets.
    _set_flags(delivered, "S")
    _set_flags(appended, "T")
    (local / "Projets" / "new" / "1763980000.1_1.poste-local").write_bytes(
        THIRD.replace(b"\r\n", b"\n")
    )
    second = await _in_thread(lambda: _mbsync(rc))
    assert second.returncode == 0, second.stdout + second.stderr

    def check() -> None:
        client = imap.tls()
        client.login(USER, PASSWORD)
        client.select("INBOX", readonly=True)
        typ, data = client.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK"
        fetched = b"".join(x[0] + x[1] if isinstance(x, tuple) else x for x in data)
        assert fetched.count(b"FLAGS") == 1, fetched  # the trashed message was expunged
        assert b"\\Seen" in fetched and b"Compte rendu" in fetched
        client.select("Projets", readonly=True)
        typ, data = client.fetch("1:*", "(BODY.PEEK[])")
        assert typ == "OK" and len([x for x in data if isinstance(x, tuple)]) == 1
        assert isinstance(data[0], tuple)
        assert _unix(data[0][1]) == _unix(THIRD)
        client.logout()

    await _in_thread(check)
    # A third run finds nothing left to do, and the local side agrees.
    third = await _in_thread(lambda: _mbsync(rc))
    assert third.returncode == 0, third.stdout + third.stderr
    assert len(_maildir_files(local / "INBOX")) == 1
    assert len(_maildir_files(local / "Projets")) == 1
