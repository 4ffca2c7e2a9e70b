"""Local delivery on a real SQLite file and a real PostgreSQL: every mailbox type, trace fields,
DKIM, refusals at RCPT, quota, DSN parameters, audit, group commit, outages, encryption."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import dkim as dkimpy  # type: ignore[import-untyped]
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from sqlalchemy import delete, func, make_url, select
from sqlalchemy.ext.asyncio import AsyncSession

from mssante.config import (
    DkimSettings,
    OperatorSettings,
    PkiSettings,
    Settings,
    StorageSettings,
)
from mssante.operator import metarecord, mime
from mssante.operator.delivery import (
    Delivery,
    DeliveryReport,
    InboundEnvelope,
    Recipient,
    SessionInfo,
    assemble,
    authentication_results_field,
    received_field,
)
from mssante.operator.errors import MailError
from mssante.operator.store import audit, blobmeta, blobs, domains, dsn, folders, mailboxes
from mssante.operator.store.db import Store, database_url
from mssante.operator.store.schema import (
    AuditEventRow,
    Base,
    BlobMetaRow,
    BlobRow,
    DsnRequestRow,
    DsnState,
    FolderRow,
    MailboxState,
    MailboxType,
    MessageRow,
)

HOST = "mx.test.mssante.test"
DOMAIN = "hopital-x.mssante.test"
PATIENTS = "patient.mssante.test"
INS = "146026322000196"  # a valid INS (key 96)
SELECTOR = "s2025"
FIXTURES = Path(__file__).parents[2] / "tls-fixtures"
PEER_DN = "CN=smtp.peer.mssante.test,OU=318310021300028,O=Hôpital Pair,C=FR"

ADDRESSES = {
    MailboxType.PER: f"jean.martin@{DOMAIN}",
    MailboxType.ORG: f"cardiologie@{DOMAIN}",
    MailboxType.APP: f"dpi-noreply@{DOMAIN}",
    MailboxType.CAB: f"cabinet-durand@{DOMAIN}",
    MailboxType.PATIENT: f"{INS}@{PATIENTS}",
}

SESSION = SessionInfo(
    session_id="Zq3xY7aBcD",
    peer_ip="192.0.2.10",
    helo="smtp.peer.mssante.test",
    protocol="ESMTPS",
    tls_version="TLSv1.2",
    tls_cipher="ECDHE-RSA-AES256-GCM-SHA384",
    peer_dn=PEER_DN,
)


def _message(subject: str = "Compte rendu", body: bytes = b"Bonjour,\r\nfin.\r\n") -> bytes:
    return (
        b"From: Dr Pair <dr.pair@peer.mssante.test>\r\n"
        b"To: Jean Martin <jean.martin@" + DOMAIN.encode() + b">\r\n"
        b"Subject: " + subject.encode() + b"\r\n"
        b"Date: Mon, 24 Nov 2025 09:30:00 +0100\r\n"
        b"Message-ID: <" + secrets.token_hex(6).encode() + b"@peer.mssante.test>\r\n"
        b"\r\n" + body
    )


def _envelope(*addresses: str, **changes: object) -> InboundEnvelope:
    envelope = InboundEnvelope(
        mail_from="dr.pair@peer.mssante.test",
        recipients=tuple(Recipient(a, None, None) for a in addresses),
        ret=None,
        envid=None,
        smtputf8=False,
        body="8BITMIME",
    )
    return dataclasses.replace(envelope, **changes)  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True)
class DkimKey:
    private_pem: bytes
    record: str


@pytest.fixture(scope="module")
def dkim_key() -> DkimKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return DkimKey(
        key.private_bytes(Encoding.PEM, PrivateFormat.TraditionalOpenSSL, NoEncryption()),
        "v=DKIM1; k=rsa; p=" + base64.b64encode(public).decode("ascii"),
    )


def _sign(message: bytes, key: DkimKey) -> bytes:
    signature: bytes = dkimpy.sign(
        message, SELECTOR.encode(), b"peer.mssante.test", key.private_pem,
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
    )  # fmt: skip
    return signature + message


def _settings(tmp_path: Path, key: DkimKey, *, verify: bool = True, quota: int = 0) -> Settings:
    return Settings(
        operator=OperatorSettings(hostname=HOST, data_dir=tmp_path, patient_domain=PATIENTS),
        pki=PkiSettings(
            trust_anchors=FIXTURES / "ca-bundle.pem",
            certificate=FIXTURES / "operator.pem",
            private_key=FIXTURES / "operator.key",
        ),
        storage=StorageSettings(
            current_key_id="k1",
            keys={"k1": bytes(range(32)).hex()},
            max_message_size=1024 * 1024,
            default_quota_bytes=quota,
        ),
        dkim=DkimSettings(
            verify=verify,
            dns_timeout_seconds=1.0,
            static_keys={f"{SELECTOR}._domainkey.peer.mssante.test": key.record},
        ),
    )


@pytest.fixture
async def hosted(store: Store) -> Store:
    """Two hosted domains with a mailbox of every type, and some that cannot receive."""
    async with store.session() as session:
        await domains.add_domain(session, DOMAIN)
        await domains.add_domain(session, PATIENTS)
        for kind, address in ADDRESSES.items():
            await mailboxes.create_mailbox(session, address, kind, national_id=None)
        await mailboxes.create_mailbox(
            session, f"parti@{DOMAIN}", MailboxType.PER, state=MailboxState.DISABLED
        )
        await mailboxes.create_mailbox(
            session, f"146026322000196x@{PATIENTS}", MailboxType.PATIENT,
            state=MailboxState.CLOSED,
        )  # fmt: skip
        await mailboxes.create_mailbox(
            session, f"299122A00100176@{PATIENTS}", MailboxType.PATIENT,
            state=MailboxState.PENDING,
        )  # fmt: skip
        await mailboxes.create_mailbox(
            session, f"petit@{DOMAIN}", MailboxType.PER, quota_bytes=3000
        )
        await mailboxes.create_mailbox(
            session, f"illimite@{DOMAIN}", MailboxType.PER, quota_bytes=0
        )
        await session.commit()
    return store


@pytest.fixture
async def delivery(hosted: Store, tmp_path: Path, dkim_key: DkimKey) -> AsyncIterator[Delivery]:
    running = Delivery(hosted, _settings(tmp_path, dkim_key))
    await running.start()
    try:
        yield running
    finally:
        await running.close()


async def _rows(store: Store, address: str) -> list[MessageRow]:
    async with store.read_session() as session:
        box = await mailboxes.get_mailbox(session, address)
        inbox = await folders.get_folder(session, box.id, "INBOX")
        result = await session.scalars(
            select(MessageRow).where(MessageRow.folder_id == inbox.id).order_by(MessageRow.uid)
        )
        return list(result)


async def _stored(store: Store, report: DeliveryReport) -> bytes:
    async with store.read_session() as session:
        return await blobs.get_blob(session, store.cipher, report.blob_id)


async def _count(store: Store, model: type[Base]) -> int:
    async with store.read_session() as session:
        return await session.scalar(select(func.count()).select_from(model)) or 0


# --- where mail goes ---------------------------------------------------------------------------


async def test_every_mailbox_type_gets_it_in_its_inbox_from_one_blob(
    hosted: Store, delivery: Delivery
) -> None:
    data = _message()
    everyone = list(ADDRESSES.values())
    first = await delivery.deliver(_envelope(*everyone), data, SESSION)
    second = await delivery.deliver(_envelope(*everyone), _message("suite"), SESSION)
    assert len(first.message_ids) == len(everyone) == len(set(first.message_ids))
    assert first.blob_id != second.blob_id
    for address in everyone:
        rows = await _rows(hosted, address)
        assert [(r.uid, r.blob_id) for r in rows] == [(1, first.blob_id), (2, second.blob_id)]
        assert rows[0].modseq < rows[1].modseq
        assert rows[0].size == first.size
        assert {r.id for r in rows} & set(first.message_ids)
    assert await _count(hosted, BlobRow) == 2
    stored = await _stored(hosted, first)
    assert len(stored) == first.size
    assert stored.endswith(data)
    assert b"\tfor <" not in stored  # several recipients: none named (RFC 5321 §7.2)


async def test_duplicate_recipients_get_one_copy(hosted: Store, delivery: Delivery) -> None:
    jean = ADDRESSES[MailboxType.PER]
    report = await delivery.deliver(_envelope(jean, jean.upper()), _message(), SESSION)
    assert len(report.message_ids) == 1
    assert len(await _rows(hosted, jean)) == 1


async def test_trace_fields_come_first_then_the_message_unchanged(
    hosted: Store, delivery: Delivery
) -> None:
    data = _message()
    jean = ADDRESSES[MailboxType.PER]
    report = await delivery.deliver(_envelope(jean), data, SESSION)
    stored = await _stored(hosted, report)
    prefix = stored[: len(stored) - len(data)]
    assert stored[len(prefix) :] == data
    lines = prefix.decode("ascii").split("\r\n")
    assert lines[0] == f"Authentication-Results: {HOST}; dkim=none"
    assert lines[1] == "Received: from smtp.peer.mssante.test ([192.0.2.10])"
    assert lines[2] == (
        "\t(using TLSv1.2 with cipher ECDHE-RSA-AES256-GCM-SHA384; "
        'peer DN "CN=smtp.peer.mssante.test,OU=318310021300028,O=H\\\\C3\\\\B4pital Pair,C=FR")'
    )
    assert lines[3] == f"\tby {HOST} with ESMTPS id Zq3xY7aBcD"
    assert lines[4].startswith(f"\tfor <{jean}>; ")
    assert lines[4].endswith(" +0000")
    assert lines[5] == ""  # end of our fields; the message follows
    header = mime.split_header(stored)
    assert [f.name for f in header.fields[:2]] == ["authentication-results", "received"]


def test_received_field_without_tls_and_with_odd_input() -> None:
    info = dataclasses.replace(
        SESSION, helo="bad helo\r\nX-Injected: 1", peer_ip="2001:db8::25", tls_version=None,
        tls_cipher=None, peer_dn='CN=a\\,b (x) "y"', session_id="id\r\nX: y",
    )  # fmt: skip
    when = datetime(2025, 11, 24, 8, 30, tzinfo=UTC)
    field = received_field(info, HOST, ["a@b.fr", "c@d.fr"], when).decode()
    assert field == (
        "Received: from [IPv6:2001:db8::25] ([IPv6:2001:db8::25])\r\n"
        '\t(peer DN "CN=a\\\\,b \\(x\\) \\"y\\"")\r\n'
        f"\tby {HOST} with ESMTPS id idXy; Mon, 24 Nov 2025 08:30:00 +0000\r\n"
    )
    assert field.count("\r\n") == 3  # nothing from the peer could add a line


async def test_dkim_pass_fail_and_none_are_recorded(
    hosted: Store, delivery: Delivery, dkim_key: DkimKey
) -> None:
    jean = ADDRESSES[MailboxType.PER]
    signed = _sign(_message(), dkim_key)
    passed = await delivery.deliver(_envelope(jean), signed, SESSION)
    tampered = signed.replace(b"Bonjour", b"Bonsoir")
    failed = await delivery.deliver(_envelope(jean), tampered, SESSION)
    unsigned = await delivery.deliver(_envelope(jean), _message(), SESSION)
    assert (passed.dkim, failed.dkim, unsigned.dkim) == ("pass", "fail", "none")
    first_line = {
        r.dkim: (await _stored(hosted, r)).split(b"\r\n", 1)[0].decode()
        for r in (passed, failed, unsigned)
    }
    assert first_line["pass"] == (
        f"Authentication-Results: {HOST}; dkim=pass header.d=peer.mssante.test header.s={SELECTOR}"
    )
    assert first_line["fail"] == (
        f'Authentication-Results: {HOST}; dkim=fail reason="body hash mismatch" '
        f"header.d=peer.mssante.test header.s={SELECTOR}"
    )
    assert first_line["none"] == f"Authentication-Results: {HOST}; dkim=none"
    # Recorded, never enforced: the failing message was delivered like the others.
    assert len(await _rows(hosted, jean)) == 3


async def test_dkim_disabled_says_none_checked(
    hosted: Store, tmp_path: Path, dkim_key: DkimKey
) -> None:
    running = Delivery(hosted, _settings(tmp_path, dkim_key, verify=False))
    try:
        report = await running.deliver(
            _envelope(ADDRESSES[MailboxType.ORG]), _sign(_message(), dkim_key), SESSION
        )
    finally:
        await running.close()
    assert report.dkim == "none"
    assert (await _stored(hosted, report)).startswith(
        f"Authentication-Results: {HOST}; none\r\nReceived: ".encode()
    )


async def test_forged_authentication_results_of_ours_are_removed(
    hosted: Store, delivery: Delivery
) -> None:
    forged = (
        f"Authentication-Results: {HOST.upper()}; dkim=pass header.d=bank.fr\r\n"
        "Authentication-Results: other.example; dkim=fail\r\n"
    ).encode()
    message = _message()
    report = await delivery.deliver(
        _envelope(ADDRESSES[MailboxType.PER]), forged + message, SESSION
    )
    stored = await _stored(hosted, report)
    assert b"bank.fr" not in stored
    assert stored.endswith(b"Authentication-Results: other.example; dkim=fail\r\n" + message)


async def test_message_without_separator_is_stored_with_one(
    hosted: Store, delivery: Delivery
) -> None:
    data = b"Subject: sans ligne vide\r\nceci n'est pas un champ\r\nfin\r\n"
    report = await delivery.deliver(_envelope(ADDRESSES[MailboxType.CAB]), data, SESSION)
    stored = await _stored(hosted, report)
    assert stored.endswith(b"Subject: sans ligne vide\r\n\r\nceci n'est pas un champ\r\nfin\r\n")
    structure = (await _structure(hosted, report)).message
    assert stored[structure.body.body_start :] == b"ceci n'est pas un champ\r\nfin\r\n"
    assert structure.envelope.subject == "sans ligne vide"


def test_assemble_ends_a_header_cut_short() -> None:
    for data, expected in (
        (b"Subject: x", b"Subject: x\r\n\r\n"),
        (b"", b"\r\n"),
        (b"body only\r\n", b"\r\nbody only\r\n"),
        # A leading white-space line must not continue our Received field.
        (b" by evil\r\nSubject: x\r\n\r\nb", b"\r\n by evil\r\nSubject: x\r\n\r\nb"),
    ):
        assert assemble(b"P: 1\r\n", data, mime.split_header(data), HOST) == b"P: 1\r\n" + expected


def test_authentication_results_for_no_verification() -> None:
    assert (
        authentication_results_field(HOST, None)
        == f"Authentication-Results: {HOST}; none\r\n".encode()
    )


# --- what IMAP will read ----------------------------------------------------------------------


async def _structure(store: Store, report: DeliveryReport) -> metarecord.Record:
    async with store.read_session() as session:
        return metarecord.read(await blobmeta.get_blob_meta(session, store.cipher, report.blob_id))


async def test_structure_is_precomputed_for_the_stored_message(
    hosted: Store, delivery: Delivery
) -> None:
    body = (
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nVoir PJ.\r\n"
        b"--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"JVBERi0xLjQK\r\n--b--\r\n"
    )
    data = (
        _message("Resultats IRM")
        .replace(b"\r\n\r\nBonjour", b"\r\nBonjour")
        .replace(b"Bonjour,\r\nfin.\r\n", b"")
        .rstrip(b"\r\n")
        + b"\r\n"
        + body
    )
    report = await delivery.deliver(_envelope(ADDRESSES[MailboxType.PER]), data, SESSION)
    stored = await _stored(hosted, report)
    record = await _structure(hosted, report)
    structure = record.message
    assert structure == mime.parse(stored)
    # The responses a header FETCH sends, and the header a SEARCH checks, stored ready.
    assert record.envelope == mime.imap_envelope(structure.envelope)
    assert record.bodystructure == mime.imap_body(structure.body, True)
    assert record.body == mime.imap_body(structure.body, False)
    assert record.header == stored[: structure.body.body_start]
    assert record.header is not None and record.header.endswith(b"\r\n\r\n")
    assert structure.envelope.subject == "Resultats IRM"
    assert structure.body.header_start == 0
    assert structure.size == len(stored) == report.size
    pdf = mime.find_part(structure, [2])
    assert pdf is not None and (pdf.type, pdf.subtype) == ("APPLICATION", "PDF")
    assert stored[pdf.body_start : pdf.body_end] == b"JVBERi0xLjQK"


# The PostgreSQL files are checked in tests/store; this one reads SQLite's own files.
@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_nothing_readable_in_the_sqlite_files(
    store_url: str, hosted: Store, delivery: Delivery
) -> None:
    subject = f"Oncologie-Dupont-stade-IIb-{secrets.token_hex(8)}"
    await delivery.deliver(
        _envelope(ADDRESSES[MailboxType.PATIENT]), _message(subject, b"x\r\n" * 500), SESSION
    )
    path = Path(str(database_url(store_url).database))
    raw = b"".join(f.read_bytes() for f in (path, path.with_name(path.name + "-wal")) if f.exists())
    async with hosted.read_session() as session:
        sealed = await session.scalar(select(BlobMetaRow.ciphertext))
    assert sealed is not None and sealed[:32] in raw  # the files read hold the structure
    assert subject.encode() not in raw
    async with hosted.read_session() as session:
        details = [e.details for e in await audit.recent(session, event="delivery.ok")]
    assert subject not in repr(details)


# --- refusals at RCPT --------------------------------------------------------------------------


async def _refusal(delivery: Delivery, address: str) -> tuple[int, str, str]:
    with pytest.raises(MailError) as refused:
        await delivery.check_recipient(address)
    return refused.value.code, refused.value.enhanced, refused.value.reason


async def test_check_recipient_accepts_every_active_type(delivery: Delivery) -> None:
    for address in ADDRESSES.values():
        await delivery.check_recipient(address)
    await delivery.check_recipient(f"<JEAN.MARTIN@{DOMAIN.upper()}>")


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        (f"personne@{DOMAIN}", (550, "5.1.1", "unknown_user")),
        ("jean.martin@ailleurs.fr", (550, "5.7.1", "relay_denied")),
        (f"parti@{DOMAIN}", (550, "5.2.1", "mailbox_disabled")),
        (f"146026322000196x@{PATIENTS}", (550, "5.2.1", "mailbox_disabled")),  # closed
        (f"299122a00100176@{PATIENTS}", (550, "5.2.1", "mailbox_disabled")),  # pending
        ("no-at-sign", (550, "5.1.1", "unknown_user")),
    ],
)
async def test_check_recipient_refusals(
    delivery: Delivery, address: str, expected: tuple[int, str, str]
) -> None:
    assert await _refusal(delivery, address) == expected


async def test_full_mailbox_is_refused_then_has_room_with_no_quota(
    hosted: Store, delivery: Delivery, tmp_path: Path, dkim_key: DkimKey
) -> None:
    small = f"petit@{DOMAIN}"
    await delivery.check_recipient(small)
    sizes = []
    while True:  # the message that crosses the quota is accepted, the next RCPT is not
        try:
            await delivery.check_recipient(small)
        except MailError as exc:
            assert (exc.code, exc.enhanced, exc.reason) == (552, "5.2.2", "over_quota")
            break
        sizes.append((await delivery.deliver(_envelope(small), _message(), SESSION)).size)
    async with hosted.read_session() as session:
        box = await mailboxes.get_mailbox(session, small)
    assert box.used_bytes == sum(sizes) >= 3000 > sum(sizes[:-1])
    # A fresh Delivery (no cache) reads the same counter from the database.
    fresh = Delivery(hosted, _settings(tmp_path, dkim_key))
    assert await _refusal(fresh, small) == (552, "5.2.2", "over_quota")
    await fresh.close()
    unlimited = f"illimite@{DOMAIN}"  # quota_bytes = 0: no quota
    for _ in range(3):
        await delivery.deliver(_envelope(unlimited), _message(), SESSION)
    await delivery.check_recipient(unlimited)


async def test_default_quota_applies_when_the_mailbox_has_none(
    hosted: Store, tmp_path: Path, dkim_key: DkimKey
) -> None:
    running = Delivery(hosted, _settings(tmp_path, dkim_key, quota=1))
    try:
        jean = ADDRESSES[MailboxType.PER]
        await running.check_recipient(jean)
        await running.deliver(_envelope(jean), _message(), SESSION)
        assert await _refusal(running, jean) == (552, "5.2.2", "over_quota")
        await running.check_recipient(f"illimite@{DOMAIN}")  # its own 0 wins
    finally:
        await running.close()


async def test_cache_finds_new_mailboxes_and_sees_disabled_ones_after_its_ttl(
    hosted: Store, tmp_path: Path, dkim_key: DkimKey
) -> None:
    running = Delivery(hosted, _settings(tmp_path, dkim_key), cache_ttl=0.3)
    new = f"nouveau@{DOMAIN}"
    assert (await _refusal(running, new))[2] == "unknown_user"
    async with hosted.session() as session:
        await mailboxes.create_mailbox(session, new, MailboxType.ORG)
        await session.commit()
    await running.check_recipient(new)  # refusals are not cached: found at once
    async with hosted.session() as session:
        await mailboxes.set_state(session, new, MailboxState.DISABLED)
        await session.commit()
    await running.check_recipient(new)  # still cached as active, for at most the TTL
    await asyncio.sleep(0.35)
    assert (await _refusal(running, new))[2] == "mailbox_disabled"
    await running.close()


# --- DSN parameters and audit ------------------------------------------------------------------


async def test_dsn_parameters_are_kept_per_recipient(hosted: Store, delivery: Delivery) -> None:
    jean, org, app = (ADDRESSES[t] for t in (MailboxType.PER, MailboxType.ORG, MailboxType.APP))
    envelope = InboundEnvelope(
        mail_from="dr.pair@peer.mssante.test",
        recipients=(
            Recipient(jean, frozenset({"SUCCESS", "FAILURE"}), f"rfc822;{jean}"),
            Recipient(org, frozenset({"NEVER"}), None),
            Recipient(app, None, None),
        ),
        ret="HDRS",
        envid="ENV-42",
        smtputf8=False,
        body="8BITMIME",
    )
    report = await delivery.deliver(envelope, _message(), SESSION)
    async with hosted.read_session() as session:
        rows = await dsn.list_requests(session, limit=10)
    by_recipient = {r.recipient: r for r in rows}
    assert set(by_recipient) == {jean, org, app}  # the envelope had RET/ENVID: all kept
    pending = by_recipient[jean]
    assert pending.state is DsnState.PENDING
    assert (pending.notify, pending.orcpt, pending.envid) == (
        frozenset({"SUCCESS", "FAILURE"}), f"rfc822;{jean}", "ENV-42",
    )  # fmt: skip
    assert pending.ret is not None and pending.ret.value == "HDRS"
    assert pending.envelope_from == "dr.pair@peer.mssante.test"
    assert pending.blob_id == report.blob_id
    assert {r.message_id for r in rows} == set(report.message_ids)
    assert by_recipient[org].state is DsnState.NOT_REQUESTED
    # Null sender: no DSN is ever owed (RFC 5321 §4.5.5); no parameters: no row at all.
    await delivery.deliver(
        dataclasses.replace(
            envelope, mail_from="", recipients=envelope.recipients[:1], ret=None, envid=None
        ),
        _message(),
        SESSION,
    )
    await delivery.deliver(_envelope(jean), _message(), SESSION)
    async with hosted.read_session() as session:
        rows = await dsn.list_requests(session, limit=10)
    assert len(rows) == 4
    assert rows[-1].state is DsnState.NOT_REQUESTED and rows[-1].envelope_from == ""


async def test_each_delivered_copy_is_audited(hosted: Store, delivery: Delivery) -> None:
    jean, patient = ADDRESSES[MailboxType.PER], ADDRESSES[MailboxType.PATIENT]
    report = await delivery.deliver(_envelope(jean, patient), _message("Secret"), SESSION)
    async with hosted.read_session() as session:
        events = await audit.recent(session, event="delivery.ok")
    assert {e.target for e in events} == {jean, patient}
    for event in events:
        assert (event.peer_ip, event.peer_dn, event.actor) == (
            "192.0.2.10", PEER_DN, "dr.pair@peer.mssante.test",
        )  # fmt: skip
        assert event.details is not None
        assert event.details["size"] == report.size
        assert event.details["dkim"] == "none"
        assert event.details["message_id"] in report.message_ids
        assert "Secret" not in repr(event.details)


# --- refusals at DATA --------------------------------------------------------------------------


async def test_deliver_refuses_what_cannot_be_stored(hosted: Store, delivery: Delivery) -> None:
    jean = ADDRESSES[MailboxType.PER]
    with pytest.raises(MailError) as big:
        await delivery.deliver(_envelope(jean), b"x" * (1024 * 1024 + 1), SESSION)
    assert (big.value.code, big.value.enhanced) == (552, "5.3.4")
    with pytest.raises(MailError) as nobody:
        await delivery.deliver(_envelope(), _message(), SESSION)
    assert nobody.value.code == 554
    with pytest.raises(MailError) as unknown:
        await delivery.deliver(_envelope(jean, f"personne@{DOMAIN}"), _message(), SESSION)
    assert (unknown.value.code, unknown.value.enhanced) == (550, "5.1.1")
    with pytest.raises(MailError) as bad:
        await delivery.deliver(_envelope(jean, envid="x" * 101), _message(), SESSION)
    assert bad.value.code == 501
    assert await _count(hosted, MessageRow) == 0


# --- group commit ------------------------------------------------------------------------------


async def test_concurrent_deliveries_are_committed_in_groups(
    hosted: Store, delivery: Delivery
) -> None:
    targets = list(ADDRESSES.values())
    reports = await asyncio.gather(
        *(
            delivery.deliver(_envelope(targets[i % len(targets)]), _message(f"n{i}"), SESSION)
            for i in range(200)
        )
    )
    assert len({r.blob_id for r in reports}) == 200
    stats = delivery.stats
    assert stats.deliveries == 200
    assert stats.commits < 200
    assert stats.failures == 0
    for address in targets:
        uids = [r.uid for r in await _rows(hosted, address)]
        assert uids == list(range(1, 41))  # 200 / 5 mailboxes: distinct and gap-free
    async with hosted.read_session() as session:
        modseqs = (await session.scalars(select(MessageRow.modseq))).all()
        folder_ids = (await session.scalars(select(MessageRow.folder_id))).all()
    assert len(set(zip(folder_ids, modseqs, strict=True))) == 200
    assert await _count(hosted, BlobMetaRow) == 200
    assert await _count(hosted, AuditEventRow) == 200


async def test_one_bad_delivery_does_not_fail_its_batch(hosted: Store, delivery: Delivery) -> None:
    jean, org = ADDRESSES[MailboxType.PER], ADDRESSES[MailboxType.ORG]
    doomed = f"ephemere@{DOMAIN}"
    async with hosted.session() as session:
        await mailboxes.create_mailbox(session, doomed, MailboxType.PER)
        await session.commit()
    await delivery.check_recipient(doomed)  # cached with its INBOX id
    async with hosted.session() as session:
        box = await mailboxes.get_mailbox(session, doomed)
        await session.execute(delete(FolderRow).where(FolderRow.mailbox_id == box.id))
        await session.commit()
    outcomes = await asyncio.gather(
        *(delivery.deliver(_envelope(a), _message(), SESSION) for a in [jean, doomed, org] * 4),
        return_exceptions=True,
    )
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(failed) == 4
    assert all(isinstance(f, MailError) and f.code == 451 and f.enhanced == "4.3.0" for f in failed)
    assert [isinstance(o, BaseException) for o in outcomes] == [False, True, False] * 4
    assert delivery.stats.split_batches >= 1
    assert len(await _rows(hosted, jean)) == 4 and len(await _rows(hosted, org)) == 4


async def test_a_lone_sender_after_a_busy_batch_is_not_kept_waiting(
    hosted: Store, delivery: Delivery
) -> None:
    # After a batch of 12 the committer lingers for up to 12 deliveries; one alone must still
    # be committed (the wait_for only turns a hang into a failure).
    jean = ADDRESSES[MailboxType.PER]
    await asyncio.gather(
        *(delivery.deliver(_envelope(jean), _message(f"n{i}"), SESSION) for i in range(12))
    )
    report = await asyncio.wait_for(delivery.deliver(_envelope(jean), _message(), SESSION), 30)
    assert len(await _rows(hosted, jean)) == 13
    assert report.message_ids[0] == (await _rows(hosted, jean))[-1].id


async def test_an_error_after_the_commit_does_not_store_twice(
    hosted: Store, delivery: Delivery, monkeypatch: pytest.MonkeyPatch
) -> None:
    jean = ADDRESSES[MailboxType.PER]
    await delivery.check_recipient(jean)
    original = AsyncSession.close

    async def failing_close(self: AsyncSession) -> None:
        await original(self)
        raise RuntimeError("closing the session failed")

    monkeypatch.setattr(AsyncSession, "close", failing_close)
    reports = await asyncio.gather(
        *(delivery.deliver(_envelope(jean), _message(f"n{i}"), SESSION) for i in range(5))
    )
    monkeypatch.undo()
    stored = await _rows(hosted, jean)
    assert sorted(r.id for r in stored) == sorted(i for r in reports for i in r.message_ids)
    assert delivery.stats.split_batches == 0


async def test_close_drains_queued_deliveries_then_refuses(
    hosted: Store, tmp_path: Path, dkim_key: DkimKey
) -> None:
    running = Delivery(hosted, _settings(tmp_path, dkim_key))
    jean = ADDRESSES[MailboxType.PER]
    await running.check_recipient(jean)
    pending = [
        asyncio.create_task(running.deliver(_envelope(jean), _message(), SESSION))
        for _ in range(20)
    ]
    await asyncio.sleep(0)  # let them queue
    await running.close()
    assert all(t.done() and not t.cancelled() and t.exception() is None for t in pending)
    assert len(await _rows(hosted, jean)) == 20
    with pytest.raises(MailError) as refused:
        await running.deliver(_envelope(jean), _message(), SESSION)
    assert refused.value.code == 451


async def test_delivery_abandoned_before_its_commit_is_not_stored(
    hosted: Store, delivery: Delivery
) -> None:
    jean = ADDRESSES[MailboxType.PER]
    await delivery.check_recipient(jean)
    abandoned = asyncio.create_task(delivery.deliver(_envelope(jean), _message(), SESSION))
    await asyncio.sleep(0)  # prepared and queued; the committer has not taken it yet
    abandoned.cancel()  # the peer hung up before its 250: it will send the message again
    kept = await delivery.deliver(_envelope(jean), _message(), SESSION)
    assert abandoned.cancelled()
    assert [r.id for r in await _rows(hosted, jean)] == list(kept.message_ids)
    assert delivery.stats.deliveries == 1


async def test_large_message_is_prepared_off_the_loop(hosted: Store, delivery: Delivery) -> None:
    data = _message(body=b"0123456789" * 40_000 + b"\r\n")
    report = await delivery.deliver(_envelope(ADDRESSES[MailboxType.APP]), data, SESSION)
    assert (await _stored(hosted, report)).endswith(data)
    body = (await _structure(hosted, report)).message.body
    assert body.size == len(data) - data.index(b"\r\n\r\n") - 4


# --- database outage ---------------------------------------------------------------------------


# The outage is made by cutting one PostgreSQL database off while its server runs on.
@pytest.mark.parametrize(
    "store_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
async def test_database_outage_gives_451_and_stores_nothing(
    store_url: str, hosted: Store, delivery: Delivery, postgres_admin_url: str
) -> None:
    jean = ADDRESSES[MailboxType.PER]
    await delivery.check_recipient(jean)  # cached: RCPT can still be answered
    name = make_url(store_url).database
    admin = await asyncpg.connect(
        make_url(postgres_admin_url).set(drivername="postgresql").render_as_string(False)
    )
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        with pytest.raises(MailError) as refused:
            await delivery.deliver(_envelope(jean), _message(), SESSION)
        assert (refused.value.code, refused.value.enhanced) == (451, "4.3.0")
        outcomes = await asyncio.gather(
            *(delivery.deliver(_envelope(jean), _message(), SESSION) for _ in range(10)),
            return_exceptions=True,
        )
        assert all(isinstance(o, MailError) and o.code == 451 for o in outcomes)
        with pytest.raises(MailError) as lookup:
            await delivery.check_recipient(ADDRESSES[MailboxType.ORG])  # not cached
        assert (lookup.value.code, lookup.value.enhanced) == (451, "4.3.0")
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
    for model in (MessageRow, BlobRow, BlobMetaRow, DsnRequestRow, AuditEventRow):
        assert await _count(hosted, model) == 0
    async with hosted.read_session() as session:
        assert (await mailboxes.get_mailbox(session, jean)).used_bytes == 0
        folder = await folders.get_folder(
            session, (await mailboxes.get_mailbox(session, jean)).id, "INBOX"
        )
    assert folder.uidnext == 1
    # Back up: delivery works again, with the first UID.
    report = await delivery.deliver(_envelope(jean), _message(), SESSION)
    assert [r.uid for r in await _rows(hosted, jean)] == [1]
    assert report.message_ids
