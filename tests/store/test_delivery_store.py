"""Store additions for local delivery: batch blobs and appends, quota counter, sealed message
structure, DSN parameters, batch audit, and migration 0002 on a database holding data."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, inspect, select, text

from mssante.operator import metarecord, mime
from mssante.operator.store import audit, blobmeta, blobs, domains, dsn, folders, mailboxes
from mssante.operator.store import messages as msgs
from mssante.operator.store.crypto import BlobCipher
from mssante.operator.store.db import Store, create_engine, database_url
from mssante.operator.store.errors import BlobTampered, NotFound
from mssante.operator.store.migrate import downgrade, upgrade
from mssante.operator.store.schema import (
    BlobMetaRow,
    BlobRow,
    DsnRet,
    DsnState,
    MailboxState,
    MailboxType,
    MessageRow,
)

KEY_1 = bytes(range(32))
KEY_2 = bytes(range(100, 132))
DOMAIN = "hopital-x.mssante.fr"
NOW = datetime(2025, 11, 24, 9, 30, tzinfo=UTC)


def _body(tag: str) -> bytes:
    return f"Subject: {tag}-{secrets.token_hex(6)}\r\n\r\nbody\r\n".encode()


async def _mailbox(store: Store, local: str, quota: int | None = None) -> tuple[int, int]:
    """(mailbox id, INBOX id)."""
    async with store.session() as session:
        if not await domains.is_hosted(session, DOMAIN):
            await domains.add_domain(session, DOMAIN)
        box = await mailboxes.create_mailbox(
            session, f"{local}@{DOMAIN}", MailboxType.PER, quota_bytes=quota
        )
        inbox = await folders.get_folder(session, box.id, "INBOX")
        await session.commit()
    return box.id, inbox.id


async def _used(store: Store, local: str) -> int:
    async with store.read_session() as session:
        return (await mailboxes.get_mailbox(session, f"{local}@{DOMAIN}")).used_bytes


async def test_put_sealed_blobs_deduplicates_within_and_across_batches(store: Store) -> None:
    cipher = store.cipher
    one, two = _body("one"), _body("two")
    async with store.session() as session:
        earlier = await blobs.put_blob(session, cipher, one)
        await session.commit()
    sealed = [(cipher.seal(one), len(one)), (cipher.seal(two), len(two)), (cipher.seal(two), 9)]
    async with store.session() as session:
        stored = await blobs.put_sealed_blobs(session, sealed)
        await session.commit()
    ids = stored.ids
    assert stored.created == {cipher.digest(two)}
    assert ids[cipher.digest(one)] == earlier
    assert len(set(ids.values())) == 2
    async with store.read_session() as session:
        assert await session.scalar(select(func.count()).select_from(BlobRow)) == 2
        assert await blobs.get_blob(session, cipher, ids[cipher.digest(two)]) == two


async def test_appends_keep_the_quota_counter(store: Store) -> None:
    box_id, inbox = await _mailbox(store, "jean")
    _, other_inbox = await _mailbox(store, "anne")
    async with store.session() as session:
        sent = await folders.get_folder(session, box_id, "Sent")
        blob_id = await blobs.put_blob(session, store.cipher, _body("q"))
        await msgs.append_message(session, inbox, blob_id, 100, NOW)
        stored = await msgs.append_messages(
            session,
            [
                msgs.NewMessage(inbox, blob_id, 10, NOW),
                msgs.NewMessage(other_inbox, blob_id, 20, NOW, ("\\Seen",)),
                msgs.NewMessage(sent.id, blob_id, 30, NOW),
                msgs.NewMessage(inbox, blob_id, 40, NOW),
            ],
        )
        await session.commit()
    assert [(m.folder_id, m.uid) for m in stored] == [
        (inbox, 2),
        (other_inbox, 1),
        (sent.id, 1),
        (inbox, 3),
    ]
    assert stored[0].modseq < stored[3].modseq
    assert stored[0].mailbox_id == box_id
    assert len({m.id for m in stored}) == 4
    assert await _used(store, "jean") == 100 + 10 + 30 + 40
    assert await _used(store, "anne") == 20
    async with store.read_session() as session:
        row = await session.execute(select(MessageRow).where(MessageRow.id == stored[1].id))
        assert row.scalar_one().seen is True
        folder = await folders.get_folder_by_id(session, inbox)
    assert (folder.uidnext, folder.highest_modseq) == (4, stored[3].modseq)


async def test_concurrent_batches_never_share_a_uid(store: Store) -> None:
    _, inbox = await _mailbox(store, "busy")
    async with store.session() as session:
        blob_id = await blobs.put_blob(session, store.cipher, _body("c"))
        await session.commit()

    async def batch(n: int) -> list[int]:
        async with store.session() as session:
            stored = await msgs.append_messages(
                session, [msgs.NewMessage(inbox, blob_id, 1, NOW) for _ in range(n)]
            )
            await session.commit()
        return [m.uid for m in stored]

    results = await asyncio.gather(*(batch(n) for n in (3, 1, 5, 2, 4, 6, 1, 3)))
    uids = sorted(uid for r in results for uid in r)
    assert uids == list(range(1, 26))
    for r in results:
        assert r == sorted(r)
        assert r == list(range(r[0], r[0] + len(r)))  # each batch got a consecutive run
    assert await _used(store, "busy") == 25


async def test_append_to_a_missing_folder_fails_cleanly(store: Store) -> None:
    async with store.session() as session:
        blob_id = await blobs.put_blob(session, store.cipher, _body("x"))
        with pytest.raises(NotFound):
            await msgs.append_messages(session, [msgs.NewMessage(999_999, blob_id, 1, NOW)])


async def test_delivery_target_and_hosted_domains(store: Store) -> None:
    box_id, inbox = await _mailbox(store, "jean", quota=5000)
    async with store.session() as session:
        await mailboxes.set_state(session, f"jean@{DOMAIN}", MailboxState.DISABLED)
        await session.commit()
    async with store.read_session() as session:
        target = await mailboxes.delivery_target(session, f"jean@{DOMAIN}")
        assert await mailboxes.delivery_target(session, f"nobody@{DOMAIN}") is None
        assert await domains.is_hosted(session, DOMAIN)
        assert not await domains.is_hosted(session, "ailleurs.fr")
    assert target == mailboxes.DeliveryTarget(
        box_id, f"jean@{DOMAIN}", MailboxType.PER, MailboxState.DISABLED, 5000, 0, inbox
    )


async def test_blob_meta_is_sealed_bound_to_its_blob_and_kept_once(store: Store) -> None:
    cipher = store.cipher
    one, two = _body("m1"), _body("m2")
    async with store.session() as session:
        first_id = await blobs.put_blob(session, cipher, one)
        second_id = await blobs.put_blob(session, cipher, two)
        await blobmeta.put_blob_meta(
            session, [(first_id, blobmeta.seal_meta(cipher, cipher.digest(one), b'{"a":1}'))]
        )
        await blobmeta.put_blob_meta(
            session,
            [
                (first_id, blobmeta.seal_meta(cipher, cipher.digest(one), b'{"a":2}')),
                (second_id, blobmeta.seal_meta(cipher, cipher.digest(two), b'{"b":1}')),
            ],
        )
        await session.commit()
    async with store.read_session() as session:
        assert await blobmeta.get_blob_meta(session, cipher, first_id) == b'{"a":1}'
        assert await blobmeta.get_blob_meta(session, cipher, second_id) == b'{"b":1}'
        with pytest.raises(NotFound):
            await blobmeta.get_blob_meta(session, cipher, 999_999)
    # The sealed structure of one blob, copied onto another, does not open there.
    async with store.session() as session:
        await session.execute(
            text(
                "UPDATE blob_meta SET ciphertext = (SELECT ciphertext FROM blob_meta WHERE "
                "blob_id = :src), nonce = (SELECT nonce FROM blob_meta WHERE blob_id = :src) "
                "WHERE blob_id = :dst"
            ),
            {"src": first_id, "dst": second_id},
        )
        await session.commit()
    async with store.read_session() as session:
        with pytest.raises(BlobTampered):
            await blobmeta.get_blob_meta(session, cipher, second_id)


async def test_rekey_reseals_the_structure_too(store: Store) -> None:
    cipher = store.cipher
    plain, twin = _body("rekey"), _body("twin")
    inbox = (await _mailbox(store, "r"))[1]
    async with store.session() as session:
        kept = await blobs.put_blob(session, cipher, plain)
        old_twin = await blobs.put_blob(session, cipher, twin)
        await blobmeta.put_blob_meta(
            session,
            [
                (kept, blobmeta.seal_meta(cipher, cipher.digest(plain), b"structure-1")),
                (old_twin, blobmeta.seal_meta(cipher, cipher.digest(twin), b"structure-2")),
            ],
        )
        await msgs.append_message(session, inbox, old_twin, len(twin), NOW)
        await session.commit()
    rotated = Store(store.engine, BlobCipher({"k1": KEY_1, "k2": KEY_2}, "k2"))
    async with rotated.session() as session:
        # The twin's content stored again under the new key, without a structure yet.
        new_twin = await blobs.put_blob(session, rotated.cipher, twin)
        await session.commit()
    assert await blobs.rekey(rotated) == 2
    only_new = BlobCipher({"k2": KEY_2}, "k2")
    async with store.read_session() as session:
        assert await blobmeta.get_blob_meta(session, only_new, kept) == b"structure-1"
        assert await blobmeta.get_blob_meta(session, only_new, new_twin) == b"structure-2"
        assert set((await session.scalars(select(BlobMetaRow.key_id))).all()) == {"k2"}
        assert await session.scalar(select(func.count()).select_from(BlobMetaRow)) == 2


async def test_rekey_rewrites_a_version_1_structure_record_as_version_2(store: Store) -> None:
    cipher = store.cipher
    raw = b"From: a@b.fr\r\nSubject: ancien\r\n\r\ncorps\r\n"
    structure = mime.parse(raw)
    async with store.session() as session:
        blob_id = await blobs.put_blob(session, cipher, raw)
        old = blobmeta.seal_meta(cipher, cipher.digest(raw), mime.to_json(structure))
        await blobmeta.put_blob_meta(session, [(blob_id, old)])
        await session.commit()
    async with store.read_session() as session:
        before = metarecord.read(await blobmeta.get_blob_meta(session, cipher, blob_id))
    assert before.header is None  # version 1: no stored header, responses rendered on demand
    rotated = Store(store.engine, BlobCipher({"k1": KEY_1, "k2": KEY_2}, "k2"))
    assert await blobs.rekey(rotated) == 1
    async with store.read_session() as session:
        plain = await blobmeta.get_blob_meta(session, rotated.cipher, blob_id)
    after = metarecord.read(plain)
    assert plain.startswith(metarecord.MAGIC)
    assert after.header == b"From: a@b.fr\r\nSubject: ancien\r\n\r\n"
    assert after.envelope == before.envelope and after.bodystructure == before.bodystructure
    assert after.message == structure


async def test_dsn_requests_record_list_and_mark(store: Store) -> None:
    inbox = (await _mailbox(store, "d"))[1]
    async with store.session() as session:
        blob_id = await blobs.put_blob(session, store.cipher, _body("dsn"))
        (m1, m2, m3) = await msgs.append_messages(
            session, [msgs.NewMessage(inbox, blob_id, 1, NOW) for _ in range(3)]
        )
        await dsn.record_requests(
            session,
            [
                dsn.NewDsnRequest(
                    m1.id, blob_id, "s@peer.fr", f"d@{DOMAIN}", frozenset({"SUCCESS", "FAILURE"}),
                    "rfc822;d@" + DOMAIN, DsnRet.HDRS, "env-1",
                ),
                dsn.NewDsnRequest(
                    m2.id, blob_id, "", f"d@{DOMAIN}", frozenset({"SUCCESS"}), None, None, None
                ),
                dsn.NewDsnRequest(
                    m3.id, blob_id, "s@peer.fr", f"d@{DOMAIN}", frozenset({"NEVER"}), None,
                    DsnRet.FULL, None,
                ),
            ],
        )  # fmt: skip
        await session.commit()
    assert dsn.owed_state("", frozenset({"SUCCESS"})) is DsnState.NOT_REQUESTED
    async with store.session() as session:
        pending = await dsn.list_requests(session, state=DsnState.PENDING)
        assert [(p.message_id, p.notify, p.orcpt, p.ret, p.envid) for p in pending] == [
            (m1.id, frozenset({"SUCCESS", "FAILURE"}), f"rfc822;d@{DOMAIN}", DsnRet.HDRS, "env-1")
        ]
        assert len(await dsn.list_requests(session, state=DsnState.NOT_REQUESTED)) == 2
        assert await dsn.mark_sent(session, [p.id for p in pending]) == 1
        assert await dsn.mark_sent(session, [p.id for p in pending]) == 0
        await session.commit()
    async with store.read_session() as session:
        (sent,) = await dsn.list_requests(session, state=DsnState.SENT)
        assert sent.message_id == m1.id
        raw = await session.scalar(
            text("SELECT notify FROM dsn_requests WHERE id = :i"), {"i": sent.id}
        )
    assert raw == "SUCCESS,FAILURE"


async def test_record_many_writes_every_trace(store: Store) -> None:
    async with store.session() as session:
        await audit.record_many(
            session,
            [
                audit.Trace("delivery.ok", "ok", actor="a@b.fr", target=f"t{i}@{DOMAIN}",
                            details={"size": i})
                for i in range(3)
            ],
        )  # fmt: skip
        await session.commit()
        with pytest.raises(ValueError, match="dotted"):
            await audit.record_many(session, [audit.Trace("bad", "ok")])
    async with store.read_session() as session:
        events = await audit.recent(session, event="delivery.ok")
    assert sorted(e.target or "" for e in events) == [f"t{i}@{DOMAIN}" for i in range(3)]
    assert {e.details["size"] for e in events if e.details} == {0, 1, 2}


async def test_migration_0002_counts_existing_messages(store_url: str) -> None:
    await upgrade(store_url, "0001")
    engine = create_engine(store_url)
    now = datetime.now(UTC)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text("INSERT INTO domains (id, name, created_at) VALUES (1, 'a.fr', :t)"),
                {"t": now},
            )
            for box in (1, 2):
                await conn.execute(
                    text(
                        "INSERT INTO mailboxes (id, address, domain_id, type, display_name, state,"
                        " last_uidvalidity, created_at, updated_at) VALUES (:id, :a, 1, 'PER',"
                        " '', 'active', 1, :t, :t)"
                    ),
                    {"id": box, "a": f"u{box}@a.fr", "t": now},
                )
                await conn.execute(
                    text(
                        "INSERT INTO folders (id, mailbox_id, name, subscribed, uidvalidity,"
                        " uidnext, highest_modseq, created_at) VALUES (:id, :id, 'INBOX', true,"
                        " 1, 1, 1, :t)"
                    ),
                    {"id": box, "t": now},
                )
            await conn.execute(
                text(
                    "INSERT INTO blobs (id, digest, key_id, nonce, ciphertext, size, created_at)"
                    " VALUES (1, 'd', 'k1', :n, :c, 3, :t)"
                ),
                {"n": b"\0" * 12, "c": b"x", "t": now},
            )
            for uid, size in ((1, 1000), (2, 234)):
                await conn.execute(
                    text(
                        "INSERT INTO messages (folder_id, uid, blob_id, size, internal_date,"
                        " modseq, seen, answered, flagged, deleted, draft, keywords, created_at)"
                        " VALUES (1, :u, 1, :s, :t, 1, false, false, false, false, false, '', :t)"
                    ),
                    {"u": uid, "s": size, "t": now},
                )
        await upgrade(store_url)
        async with engine.connect() as conn:
            used = (
                await conn.execute(text("SELECT id, used_bytes FROM mailboxes ORDER BY id"))
            ).all()
        assert [tuple(r) for r in used] == [(1, 1234), (2, 0)]
        await downgrade(store_url, "0001")
        async with engine.connect() as conn:
            # No rebuild of `mailboxes`, hence no cascade: folders and messages are all there.
            assert (await conn.execute(text("SELECT count(*) FROM messages"))).scalar() == 2
            assert (await conn.execute(text("SELECT count(*) FROM folders"))).scalar() == 2
            columns = await conn.run_sync(
                lambda c: [col["name"] for col in inspect(c).get_columns("mailboxes")]
            )
        assert "used_bytes" not in columns
    finally:
        await engine.dispose()


async def test_structure_not_readable_on_disk(store_url: str, store: Store) -> None:
    marker = f"Oncologie-Dupont-{secrets.token_hex(8)}".encode()
    cipher = store.cipher
    body = _body("disk")
    async with store.session() as session:
        blob_id = await blobs.put_blob(session, cipher, body)
        await blobmeta.put_blob_meta(
            session, [(blob_id, blobmeta.seal_meta(cipher, cipher.digest(body), marker * 4))]
        )
        await session.commit()
    if store.dialect == "postgresql":
        async with store.engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text("CHECKPOINT"))
            paths = (
                await conn.execute(
                    text(
                        "SELECT pg_relation_filepath('blob_meta'::regclass) UNION ALL "
                        "SELECT 'pg_wal/' || pg_walfile_name(pg_current_wal_lsn())"
                    )
                )
            ).scalars()
            raw = b"".join(
                [
                    (
                        await conn.execute(text("SELECT pg_read_binary_file(:p)"), {"p": p})
                    ).scalar_one()
                    for p in paths
                ]
            )
    else:
        path = Path(str(database_url(store_url).database))
        raw = b"".join(
            f.read_bytes() for f in (path, path.with_name(path.name + "-wal")) if f.exists()
        )
    async with store.read_session() as session:
        ciphertext = await session.scalar(select(BlobMetaRow.ciphertext))
    assert ciphertext is not None and ciphertext[:32] in raw
    assert marker not in raw
