"""SEARCH with every key, ESEARCH (rfc/4731) and SEARCHRES (rfc/5182): the real server, imaplib
over TLS, messages delivered through Delivery and APPENDed, on SQLite and PostgreSQL; and the
header filter (`store.searchfilter`) and matching functions (`imap.textsearch`) alone."""

from __future__ import annotations

import base64
import datetime as dt
import imaplib
import os
import random
import re
import string
from pathlib import Path

import pytest
from sqlalchemy import delete, select, update
from test_imap_server import (  # the shared server fixture and helpers
    PASSWORD,
    USER,
    Imap,
    _in_thread,
    imap,  # noqa: F401 - a fixture
)

from mssante.operator import mime
from mssante.operator.delivery import Delivery, InboundEnvelope, Recipient, SessionInfo
from mssante.operator.imap import textsearch
from mssante.operator.imap.commands import DateKey, HeaderKey, TextKey
from mssante.operator.store import blobmeta, searchfilter
from mssante.operator.store.schema import BlobMetaRow, BlobRow, MessageRow

PDF_SECRET = base64.b64encode(b"%PDF-1.4 examen-confidentiel").decode()

# Delivered: encoded-word name and subject, a base64 text part, a quoted-printable HTML
# part, an attachment whose text must not count for BODY; Date: late evening at -05:00
# (3 Nov as written, 4 Nov in UTC: SENT* keys read the date as written).
DELIVERED = (
    b"From: =?UTF-8?Q?J=C3=A9r=C3=B4me_Lef=C3=A8vre?= <jerome.lefevre@chu-nord.mssante.test>\r\n"
    b"To: Jean Martin <" + USER.encode() + b">\r\n"
    b"Cc: Anne Petit <anne.petit@peer.mssante.test>\r\n"
    b"Subject: =?UTF-8?B?" + base64.b64encode("Résultats d'analyse : glycémie".encode()) + b"?=\r\n"
    b"Date: Mon, 3 Nov 2025 23:30:00 -0500\r\n"
    b"Message-ID: <res-1@chu-nord.mssante.test>\r\n"
    b"X-Priorite: urgente\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="outer"\r\n'
    b"\r\n"
    b"--outer\r\n"
    b'Content-Type: multipart/alternative; boundary="alt"\r\n'
    b"\r\n"
    b"--alt\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    + base64.encodebytes("Le patient présente une hyperglycémie modérée.\n".encode())
    + b"--alt\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"<p>Traitement : insuline =C3=A0 jeun</p>\r\n"
    b"--alt--\r\n"
    b"--outer\r\n"
    b"Content-Type: application/pdf; name=resultats.pdf\r\n"
    b"Content-Disposition: attachment; filename=resultats.pdf\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n" + PDF_SECRET.encode() + b"\r\n"
    b"--outer--\r\n"
)

APPENDED = (
    b"From: Dr Pair <dr.pair@peer.mssante.test>\r\n"
    b"To: Jean Martin <" + USER.encode() + b">\r\n"
    b"Bcc: secretariat@hopital-x.mssante.test\r\n"
    b"Subject: Compte rendu operatoire\r\n"
    b"Date: Tue, 18 Nov 2025 10:00:00 +0100\r\n"
    b"Message-ID: <cr-7@peer.mssante.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Bonjour, caf=C3=A9 offert au bloc.\r\n"
)

NO_DATE = (
    b"From: Agenda <agenda@hopital-x.mssante.test>\r\n"
    b"To: " + USER.encode() + b"\r\n"
    b"Subject: Rappel\r\n"
    b"\r\n"
    b"Rappel du rendez-vous de jeudi.\r\n"
)


async def _deliver(server: Imap, message: bytes) -> None:
    running = server.running
    delivery = Delivery(running.store, running.settings)
    await delivery.start()
    try:
        await delivery.deliver(
            InboundEnvelope(
                mail_from="jerome.lefevre@chu-nord.mssante.test",
                recipients=(Recipient(USER, None, None),),
                ret=None,
                envid=None,
                smtputf8=False,
                body="8BITMIME",
            ),
            message,
            SessionInfo("s1", "192.0.2.10", "smtp.peer.mssante.test", "ESMTPS", None, None, None),
        )
    finally:
        await delivery.close()


def _login(server: Imap) -> imaplib.IMAP4_SSL:
    client = server.tls()
    client.login(USER, PASSWORD)
    return client


def _setup(client: imaplib.IMAP4) -> None:
    """INBOX: 1 = DELIVERED (by Delivery), 2 = APPENDED (\\Flagged), 3 = NO_DATE (keywords)."""
    assert client.append("INBOX", "(\\Flagged)", None, APPENDED)[0] == "OK"
    assert client.append("INBOX", "($Label1 My_Flag)", None, NO_DATE)[0] == "OK"
    assert client.select("INBOX")[0] == "OK"


def _search(client: imaplib.IMAP4, *criteria: str, charset: str | None = None) -> list[int]:
    typ, data = client.search(charset, *criteria)
    assert typ == "OK", data
    return [int(n) for n in (data[0] or b"").split()]


def _search_utf8(client: imaplib.IMAP4, key: str, value: str) -> list[int]:
    client.literal = value.encode()  # type: ignore[assignment]
    return _search(client, key, charset="UTF-8")


def _esearch(client: imaplib.IMAP4, *args: str, uid: bool = False) -> tuple[str, bytes]:
    command = "UID" if uid else "SEARCH"
    args = ("SEARCH", *args) if uid else args
    typ, data = client._simple_command(command, *args)
    _, lines = client._untagged_response(typ, data, "ESEARCH")
    text = b" ".join(x for x in lines if isinstance(x, bytes))
    return typ, text


async def test_header_keys_encoded_words_and_case(imap: Imap) -> None:  # noqa: F811
    await _deliver(imap, DELIVERED)

    def scenario() -> None:
        client = _login(imap)
        _setup(client)
        caps = client.capabilities
        assert "ESEARCH" in caps and "SEARCHRES" in caps
        # FROM: address, decoded display name (accents), substring, any case.
        assert _search(client, "FROM", "jerome.lefevre") == [1]
        assert _search(client, "FROM", "CHU-NORD") == [1]
        assert _search_utf8(client, "FROM", "Jérôme LEF") == [1]
        assert _search(client, "FROM", "lefebvre") == []
        assert _search(client, "FROM", "peer.mssante") == [2]
        assert _search(client, "TO", "jean.martin") == [1, 2, 3]
        assert _search(client, "CC", "anne.petit") == [1]
        assert _search(client, "CC", "dr.pair") == []
        assert _search(client, "BCC", "secretariat") == [2]
        assert _search(client, "BCC", "anne") == []
        # SUBJECT in base64 encoded words, matched decoded and case-folded.
        assert _search_utf8(client, "SUBJECT", "GLYCÉMIE") == [1]
        assert _search(client, "SUBJECT", "analyse") == [1]
        assert _search(client, "SUBJECT", "=?UTF-8?B?") == []  # never the encoded form
        assert _search(client, "SUBJECT", "rendu") == [2]
        assert _search(client, "SUBJECT", "RA") == [2, 3]  # under a trigram: exact check
        assert _search(client, "SUBJECT", '""') == [1, 2, 3]
        # HEADER: indexed and not indexed fields; "" = the field is there.
        assert _search(client, "HEADER", "Message-ID", "cr-7@") == [2]
        assert _search(client, "HEADER", "X-Priorite", "URGENTE") == [1]
        assert _search(client, "HEADER", "X-Priorite", '""') == [1]
        assert _search(client, "HEADER", "Date", '""') == [1, 2]
        assert _search(client, "HEADER", "X-Absent", '""') == []
        assert _search(client, "HEADER", "Subject", "zzz") == []
        # NOT and OR mixing header and flag keys.
        assert _search(client, "NOT", "FROM", "jerome") == [2, 3]
        assert _search(client, "OR", "FROM", "jerome", "FLAGGED") == [1, 2]
        assert _search(client, "OR", "SUBJECT", "rappel", "FROM", "dr.pair") == [2, 3]
        assert _search(client, "FLAGGED", "NOT", "SUBJECT", "rendu") == []
        assert _search(client, "NOT", "FLAGGED", "NOT", "SUBJECT", "rendu") == [1, 3]
        assert _search(client, "(OR SEEN FROM agenda)", "UNFLAGGED") == [3]
        assert _search(client, "NOT", "(FROM jerome UNFLAGGED)") == [2, 3]
        assert _search(client, "OR", "FROM", "dr.pair", "NOT", "FLAGGED") == [1, 2, 3]
        assert _search(client, "OR", "FROM", "agenda", "NOT", "FLAGGED") == [1, 3]
        assert _search(client, "OR", "SUBJECT", "rendu", "NOT", "UID", "1:2") == [2, 3]
        assert _search(client, "NOT", "(NOT FLAGGED FROM jerome)") == [2, 3]
        # A SQL subtree (NOT FLAGGED) inside a key that needs the decrypted message.
        assert _search(client, "OR", "(BODY rappel NOT FLAGGED)", "SUBJECT", "zzz") == [3]
        assert _search(client, "OR", "(BODY bloc NOT FLAGGED)", "SUBJECT", "zzz") == []
        assert _search(client, "2:3", "TO", "jean") == [2, 3]
        # A set of more than 100 ranges (once refused): an IN list of the snapshot's UIDs.
        odd = ",".join(str(n) for n in range(1, 402, 2))
        assert _search(client, "UID", odd) == [1, 3]
        assert _search(client, "NOT", "UID", odd, "TO", "jean") == [2]
        assert _search(client, "OR", "UID", odd, "FROM", "dr.pair") == [1, 2, 3]
        typ, data = client.uid("SEARCH", "FROM", "dr.pair")
        assert (typ, data) == ("OK", [b"2"])
        client.logout()

    await _in_thread(scenario)


async def test_body_text_sent_keyword_and_charset(imap: Imap) -> None:  # noqa: F811
    await _deliver(imap, DELIVERED)

    def scenario() -> None:
        client = _login(imap)
        _setup(client)
        # BODY: decoded text parts (base64, quoted-printable, charsets), not the header,
        # not the attachment; TEXT: header and body.
        assert _search_utf8(client, "BODY", "hyperGLYCÉMIE") == [1]
        assert _search_utf8(client, "BODY", "insuline à jeun") == [1]
        assert _search_utf8(client, "BODY", "café offert") == [2]
        assert _search(client, "BODY", "examen-confidentiel") == []
        assert _search(client, "BODY", PDF_SECRET[:12]) == []
        assert _search(client, "BODY", "jerome.lefevre") == []
        assert _search(client, "TEXT", "jerome.lefevre") == [1]
        assert _search(client, "TEXT", "rendez-vous") == [3]
        assert _search(client, "BODY", "rendez-vous") == [3]
        assert _search(client, "TEXT", '"nulle part"') == []
        assert _search(client, "NOT", "BODY", "rappel") == [1, 2]
        # SENT*: the Date: header's own day (3 Nov at -05:00, though 4 Nov in UTC); no Date:
        # header, no match.
        assert _search(client, "SENTON", "3-Nov-2025") == [1]
        assert _search(client, "SENTON", "4-Nov-2025") == []
        assert _search(client, "SENTBEFORE", "18-Nov-2025") == [1]
        assert _search(client, "SENTSINCE", "18-Nov-2025") == [2]
        assert _search(client, "SENTSINCE", "1-Jan-2025") == [1, 2]
        assert _search(client, "NOT", "SENTSINCE", "1-Jan-2025") == [3]
        # KEYWORD / UNKEYWORD: whole words, any case, LIKE wildcards taken literally.
        assert _search(client, "KEYWORD", "$Label1") == [3]
        assert _search(client, "KEYWORD", "my_flag") == [3]
        assert _search(client, "KEYWORD", "My") == []
        assert _search(client, "KEYWORD", "My_fla_") == []
        assert _search(client, "KEYWORD", "Myxflag") == []
        assert _search(client, "UNKEYWORD", "$label1") == [1, 2]
        assert _search(client, "OR", "KEYWORD", "$Label1", "FLAGGED") == [2, 3]
        # CHARSET: US-ASCII and UTF-8 accepted, anything else refused.
        assert _search(client, "SUBJECT", "rappel", charset="US-ASCII") == [3]
        typ, data = client._simple_command("SEARCH", "CHARSET", "ISO-8859-1", "SUBJECT", "x")
        assert typ == "NO"
        assert data == [b"[BADCHARSET (US-ASCII UTF-8)] unsupported charset"]
        assert client.noop()[0] == "OK"
        client.logout()

    await _in_thread(scenario)


async def test_esearch_return_options(imap: Imap) -> None:  # noqa: F811
    def scenario() -> None:
        client = _login(imap)
        for _ in range(2):
            assert client.append("INBOX", None, None, NO_DATE)[0] == "OK"
        _setup(client)  # 5 messages: 1, 2, 5 are NO_DATE; 3 APPENDED; 4 NO_DATE keywords
        tag = "RETURN"
        typ, text = _esearch(client, tag, "(MIN MAX COUNT ALL)", "SUBJECT", "rappel")
        assert typ == "OK"
        assert re.fullmatch(rb'\(TAG "[A-Z0-9]+"\) MIN 1 MAX 4 ALL 1:2,4 COUNT 3', text), text
        typ, text = _esearch(client, tag, "(COUNT)", "SUBJECT", "introuvable")
        assert re.fullmatch(rb'\(TAG "[A-Z0-9]+"\) COUNT 0', text), text
        typ, text = _esearch(client, tag, "(MIN MAX ALL)", "SUBJECT", "introuvable")
        assert re.fullmatch(rb'\(TAG "[A-Z0-9]+"\)', text), text
        typ, text = _esearch(client, tag, "(MIN)", "SUBJECT", "introuvable")
        assert (typ, re.fullmatch(rb'\(TAG "[A-Z0-9]+"\)', text) is not None) == ("OK", True)
        typ, text = _esearch(client, tag, "(MAX SAVE)", "SUBJECT", "introuvable")
        assert re.fullmatch(rb'\(TAG "[A-Z0-9]+"\)', text), text
        typ, text = _esearch(client, tag, "()", "FLAGGED")  # RETURN () is ALL
        assert re.fullmatch(rb'\(TAG "[A-Z0-9]+"\) ALL 3', text), text
        typ, text = _esearch(client, tag, "(MAX)", "ALL")
        assert re.fullmatch(rb'\(TAG "[A-Z0-9]+"\) MAX 4', text), text
        typ, text = _esearch(client, tag, "(ALL MIN)", "SUBJECT", "rappel", uid=True)
        assert re.fullmatch(rb'\(TAG "[A-Z0-9]+"\) UID MIN 1 ALL 1:2,4', text), text
        # rfc/7162: with a MODSEQ key, ESEARCH reports the highest MODSEQ of what it returns.
        typ, text = _esearch(client, tag, "(COUNT)", "MODSEQ", "1")
        assert re.fullmatch(rb'\(TAG "[A-Z0-9]+"\) COUNT 4 MODSEQ \d+', text), text
        client.logout()

    await _in_thread(scenario)


def _fetch_uids(client: imaplib.IMAP4, sequence: str) -> list[int]:
    typ, data = client.fetch(sequence, "(UID)")
    assert typ == "OK", data
    return [
        int(m[1])
        for d in data
        if isinstance(d, bytes) and (m := re.search(rb"UID (\d+)", d)) is not None
    ]


async def test_searchres_saved_result(imap: Imap) -> None:  # noqa: F811
    await _deliver(imap, DELIVERED)

    def scenario() -> None:
        client = _login(imap)
        _setup(client)
        assert client.append("INBOX", None, None, NO_DATE)[0] == "OK"
        assert client.noop()[0] == "OK"  # 4 = NO_DATE again
        # Before any SAVE, `$` is empty.
        assert _fetch_uids(client, "$") == []
        typ, data = client._simple_command("SEARCH", "RETURN", "(SAVE)", "SUBJECT", "rappel")
        assert typ == "OK"
        assert "ESEARCH" not in client.untagged_responses  # SAVE alone answers nothing
        assert _fetch_uids(client, "$") == [3, 4]
        typ, data = client.uid("STORE", "$", "+FLAGS", "(\\Deleted)")
        assert typ == "OK"
        assert _search(client, "DELETED") == [3, 4]
        assert _search(client, "$", "KEYWORD", "$Label1") == [3]
        assert _search(client, "OR", "$", "FROM", "jerome") == [1, 3, 4]
        typ, data = client.uid("SEARCH", "UID", "$")
        assert data == [b"3 4"]
        # SAVE with MIN only keeps the minimum (rfc/5182 §2.4).
        typ, text = _esearch(client, "RETURN", "(SAVE MIN)", "TO", "jean")
        assert re.fullmatch(rb'\(TAG "[A-Z0-9]+"\) MIN 1', text), text
        assert _fetch_uids(client, "$") == [1]
        client._simple_command("SEARCH", "RETURN", "(SAVE)", "DELETED")
        # Expunged messages drop out of `$`; COPY takes `$` too.
        client.uid("STORE", "4", "-FLAGS", "(\\Deleted)")
        typ, data = client._simple_command("UID", "EXPUNGE", "3")
        assert typ == "OK"
        assert _fetch_uids(client, "$") == [4]
        assert client.copy("$", "Trash")[0] == "OK"
        # A failed SAVE search empties `$`.
        typ, data = client._simple_command(
            "SEARCH", "RETURN", "(SAVE)", "CHARSET", "KOI8-R", "SUBJECT", "x"
        )
        assert typ == "NO"
        assert _fetch_uids(client, "$") == []
        client._simple_command("SEARCH", "RETURN", "(SAVE)", "ALL")
        assert _fetch_uids(client, "$") == [1, 2, 4]
        # SELECT forgets it.
        assert client.select("Trash")[0] == "OK"
        assert _search(client, "SUBJECT", "rappel") == [1]
        assert _fetch_uids(client, "$") == []
        client.logout()

    await _in_thread(scenario)


async def test_no_plaintext_header_in_database_and_filter_written(
    imap: Imap,  # noqa: F811
    store_url: str,
) -> None:
    marker = "Zebulon-Quetzalcoatl-7731"
    message = DELIVERED.replace(b"Message-ID: <res-1@", f"Subject: {marker}\r\nX-M: <".encode())
    await _deliver(imap, message)

    def scenario() -> None:
        client = _login(imap)
        assert client.select("INBOX")[0] == "OK"
        assert _search(client, "SUBJECT", marker.lower()) == [1]
        client.logout()

    await _in_thread(scenario)
    async with imap.running.store.read_session() as session:
        filters = (await session.execute(select(BlobMetaRow.search_filter))).scalars().all()
    assert [len(f or b"") for f in filters] == [searchfilter.FILTER_BYTES]
    if store_url.startswith("sqlite"):
        path = Path(store_url.split("///", 1)[1])
        raw = b"".join(
            f.read_bytes() for f in (path, path.with_name(path.name + "-wal")) if f.exists()
        )
        assert raw  # the database file was found
        # (The envelope sender is kept in clear for the audit log: not searched for here.)
        for needle in (marker, "Zebulon", "glyc", "Anne Petit", "hyperglyc", "examen"):
            assert needle.encode() not in raw
            assert needle.lower().encode() not in raw


async def test_rows_without_filter_are_still_found(imap: Imap) -> None:  # noqa: F811
    """Messages stored before filters existed (NULL) are candidates, checked exactly."""
    await _deliver(imap, DELIVERED)
    async with imap.running.store.session() as session:
        await session.execute(update(BlobMetaRow).values(search_filter=None))
        await session.commit()

    def scenario() -> None:
        client = _login(imap)
        _setup(client)
        async_rows = _search(client, "FROM", "jerome")
        assert async_rows == [1]
        assert _search(client, "NOT", "FROM", "jerome") == [2, 3]
        client.logout()

    await _in_thread(scenario)


async def test_header_search_reads_the_records_and_falls_back_to_messages(
    imap: Imap,  # noqa: F811
) -> None:
    """Header keys are checked on the header kept in each structure record; a record written
    before records kept it (version 1), or no record at all, sends the search to the message."""
    await _deliver(imap, DELIVERED)

    def setup() -> None:
        client = _login(imap)
        _setup(client)
        client.logout()

    await _in_thread(setup)
    store = imap.running.store
    async with store.session() as session:
        rows = (
            await session.execute(
                select(MessageRow.blob_id, BlobRow.digest)
                .join(BlobRow, BlobRow.id == MessageRow.blob_id)
                .order_by(MessageRow.uid)
            )
        ).all()
        (first, _), (second, second_digest), (third, _) = rows
        # 1: its message made unreadable; header searches must not need it.
        await session.execute(
            update(BlobRow).where(BlobRow.id == first).values(ciphertext=b"\x00" * 64)
        )
        # 2: a version 1 record (structure JSON only).
        old = blobmeta.seal_meta(store.cipher, second_digest, mime.to_json(mime.parse(APPENDED)))
        await session.execute(
            update(BlobMetaRow)
            .where(BlobMetaRow.blob_id == second)
            .values(key_id=old.key_id, nonce=old.nonce, ciphertext=old.ciphertext)
        )
        # 3: no record at all.
        await session.execute(delete(BlobMetaRow).where(BlobMetaRow.blob_id == third))
        await session.commit()

    def scenario() -> None:
        client = _login(imap)
        assert client.select("INBOX")[0] == "OK"
        assert _search(client, "FROM", "jerome") == [1]
        assert _search(client, "SENTON", "3-Nov-2025") == [1]
        assert _search(client, "HEADER", "X-Priorite", "urgente") == [1]
        assert _search(client, "FROM", "dr.pair") == [2]
        assert _search(client, "FROM", "agenda") == [3]
        assert _search(client, "TO", "jean.martin") == [1, 2, 3]
        assert _search(client, "NOT", "SUBJECT", "rendu") == [1, 3]
        client.logout()

    await _in_thread(scenario)


# --- the filter and the matching functions alone -----------------------------------------------

KEY = bytes(range(32))


def _header(text: str) -> mime.Header:
    return mime.split_header(text.encode() + b"\r\n\r\nbody\r\n")


def _probe_says(header: mime.Header, field: str, needle: str, key: bytes = KEY) -> bool:
    value = searchfilter.as_int(searchfilter.build(key, header))
    return searchfilter.probe(key, field, needle.casefold()).may_match(value)


def test_filter_never_misses_an_indexed_substring() -> None:
    rng = random.Random(4)
    alphabet = string.ascii_letters + string.digits + "éàç -.@"
    for _ in range(200):
        subject = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        header = _header(f"Subject: {subject}\r\nFrom: a@b.test")
        folded = searchfilter.normalise(subject)
        for _ in range(5):
            start = rng.randint(0, len(folded))
            needle = folded[start : start + rng.randint(0, 12)]
            assert _probe_says(header, "subject", needle)
    encoded = _header("Subject: =?UTF-8?Q?R=C3=A9sultats?= du jour")
    assert _probe_says(encoded, "subject", "RÉSULTATS DU")
    assert not _probe_says(encoded, "subject", "=?utf-8")
    assert not _probe_says(encoded, "from", "")  # no From field: not even present


def test_filter_depends_on_the_key_and_marks_long_fields() -> None:
    header = _header("Subject: compte rendu")
    assert searchfilter.build(KEY, header) != searchfilter.build(os.urandom(32), header)
    long = _header("References: " + " ".join(f"<m{i}@x.test>" for i in range(200)))
    assert _probe_says(long, "references", "absent-from-it")  # overflow: always a candidate
    assert not _probe_says(long, "subject", "")


def test_filter_false_positive_rate_is_near_the_computed_one() -> None:
    rng = random.Random(7)
    entries_per_filter = 150
    trials = 4000
    hits = 0
    letters = string.ascii_lowercase
    for _ in range(trials // 20):
        # 148 random trigrams plus the presence bit: about 150 entries.
        subject = "".join(rng.choice(letters) for _ in range(entries_per_filter))
        value = searchfilter.as_int(searchfilter.build(KEY, _header(f"Subject: {subject}")))
        for _ in range(20):
            tri = "".join(rng.choice(letters) for _ in range(3))
            if tri in subject:
                continue
            probe = searchfilter.probe(KEY, "subject", tri)
            hits += probe.may_match(value)
    expected = searchfilter.false_positive_rate(entries_per_filter)
    assert 0.003 < expected < 0.01
    # 4000 draws at p ≈ 0.5 %: mean 20, standard deviation ≈ 4.5; 5 sigmas either side.
    assert expected * trials - 23 < hits < expected * trials + 23


def test_matching_functions() -> None:
    message = textsearch.MessageText(DELIVERED)
    assert message.sent_date() == dt.date(2025, 11, 3)
    assert textsearch.text_matches(TextKey("FROM", "jérôme".encode()), message)
    assert textsearch.text_matches(TextKey("SUBJECT", b"GLYC"), message)
    assert textsearch.text_matches(HeaderKey("x-priorite", b""), message)
    assert not textsearch.text_matches(HeaderKey("X-Autre", b""), message)
    assert textsearch.text_matches(TextKey("BODY", "modérée".encode()), message)
    assert not textsearch.text_matches(TextKey("BODY", b"examen-confidentiel"), message)
    assert textsearch.text_matches(TextKey("TEXT", b"anne.petit"), message)
    assert not textsearch.text_matches(TextKey("BODY", b"anne.petit"), message)
    assert textsearch.sent_matches(DateKey("SENTON", dt.date(2025, 11, 3)), message.sent_date())
    assert not textsearch.sent_matches(DateKey("SENTSINCE", dt.date(2025, 1, 1)), None)
    assert textsearch.sent_date("not a date") is None
    assert textsearch.sent_date("Mon, 31 Feb 2025 10:00:00 +0000") is None
    assert textsearch.text_parts(b"Content-Type: text/plain; charset=x-unknown\r\n\r\nhi\r\n") == [
        "hi\r\n"
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("  =?ISO-8859-1?Q?Andr=E9?= Pirard ", "andré pirard"),
        ("=?UTF-8?B?w6k=?= =?UTF-8?B?w6k=?=", "éé"),  # rfc/2047 §6.2: space between ignored
        ("=?x-unknown?Q?abc?=", "=?x-unknown?q?abc?="),
        ("Plain MiXed", "plain mixed"),
    ],
)
def test_normalise(value: str, expected: str) -> None:
    assert searchfilter.normalise(value) == expected
