"""QUOTA (rfc/9208) and STATUS=SIZE (rfc/8438): the response writers byte for byte, the root
resolution and units of `imap/quota.py`, then GETQUOTAROOT / GETQUOTA / SETQUOTA and STATUS
through imaplib against the real operator, on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import imaplib

import pytest
from sqlalchemy import update
from test_imap_server import (  # the shared server fixture and helpers
    MESSAGE,
    PASSWORD,
    USER,
    Imap,
    _in_thread,
    imap,  # noqa: F401 - a fixture
)

from mssante.operator.imap import quota, responses
from mssante.operator.store.schema import MailboxRow

GIB_IN_KIB = 10 * 1024 * 1024  # the default storage.default_quota_bytes, 10 GiB


def _kib(octets: int) -> int:
    return -(-octets // 1024)  # rfc/9208 §5.1: usage in KiB, rounded up


KIB = _kib(len(MESSAGE))  # one MESSAGE
BIG = MESSAGE.replace(b"Bonjour,\r\n", b"Bonjour,\r\n" + b"ligne de texte\r\n" * 200)


# --- pure functions ---------------------------------------------------------------------------


def test_quota_writers_byte_exact() -> None:
    assert responses.quotaroot("INBOX", [""]) == b'* QUOTAROOT "INBOX" ""\r\n'
    assert responses.quotaroot("INBOX", []) == b'* QUOTAROOT "INBOX"\r\n'
    assert responses.quotaroot("Proj\u00e9", ["#user/x"]) == b'* QUOTAROOT "Proj&AOk-" #user/x\r\n'
    assert responses.quotaroot("Proj\u00e9", [""], utf8=True) == (
        b'* QUOTAROOT "Proj\xc3\xa9" ""\r\n'
    )
    assert responses.quota("", [("STORAGE", 3, 10)]) == b'* QUOTA "" (STORAGE 3 10)\r\n'
    assert responses.quota("r", [("STORAGE", 0, 1), ("MESSAGE", 2, 5)]) == (
        b"* QUOTA r (STORAGE 0 1 MESSAGE 2 5)\r\n"
    )
    assert responses.quota("", []) == b'* QUOTA "" ()\r\n'
    with pytest.raises(ValueError):
        responses.quota("", [("STOR AGE", 1, 2)])
    with pytest.raises(ValueError):
        responses.quota("", [("STORAGE", -1, 2)])


def test_root_and_units() -> None:
    assert quota.quota_root("INBOX") == "" == quota.quota_root("Projets/2026")
    assert quota.quota_root("Nulle-part") == ""  # rfc/9208 §4.1.2: need not exist
    assert quota.quota_root("Shared") is None
    # A shared mailbox's folders count against their owner's quota: the owner's root.
    assert quota.quota_root("Shared/Alice@X/INBOX") == "Shared/alice@x"
    assert quota.quota_root("Shared/alice@x") == "Shared/alice@x"
    assert quota.quota_root("Sharedx") == ""
    # rfc/9208 §5.1: units of 1024 octets, usage rounded up, limit down.
    assert quota.storage_resource(0, 1024) == ("STORAGE", 0, 1)
    assert quota.storage_resource(1, 2047) == ("STORAGE", 1, 1)
    assert quota.storage_resource(1025, 10 * 1024**3) == ("STORAGE", 2, GIB_IN_KIB)


# --- the server -------------------------------------------------------------------------------


def _login(server: Imap) -> imaplib.IMAP4_SSL:
    client = server.tls()
    client.login(USER, PASSWORD)
    return client


def _quotaroot(client: imaplib.IMAP4, mailbox: str) -> tuple[str, list[bytes]]:
    typ, lines = client._simple_command("GETQUOTAROOT", mailbox)
    roots = client._untagged_response(typ, lines, "QUOTAROOT")[1]
    quotas = client._untagged_response(typ, lines, "QUOTA")[1]
    return typ, [x for x in (*roots, *quotas) if isinstance(x, bytes)]


async def _set_quota(server: Imap, quota_bytes: int | None) -> None:
    async with server.running.store.session() as session:
        await session.execute(
            update(MailboxRow).where(MailboxRow.address == USER).values(quota_bytes=quota_bytes)
        )
        await session.commit()


async def test_quota_follows_append_and_expunge(imap: Imap) -> None:  # noqa: F811
    def scenario() -> None:
        client = _login(imap)
        for cap in ("QUOTA", "QUOTA=RES-STORAGE", "STATUS=SIZE"):
            assert cap in client.capabilities
        assert "QUOTASET" not in client.capabilities
        # The configured default (10 GiB) applies to a mailbox without its own quota.
        assert _quotaroot(client, "INBOX") == (
            "OK",
            [b'"INBOX" ""', b'"" (STORAGE 0 %d)' % GIB_IN_KIB],
        )
        assert client.append("INBOX", None, None, MESSAGE)[0] == "OK"
        assert client.append("Drafts", None, None, MESSAGE)[0] == "OK"
        # One root for every personal folder, existing or not (rfc/9208 §4.1.2).
        expected = [b'"" (STORAGE %d %d)' % (_kib(2 * len(MESSAGE)), GIB_IN_KIB)]
        assert _quotaroot(client, "Nulle-part") == ("OK", [b'"Nulle-part" ""', *expected])
        typ, data = client.getquota('""')
        assert (typ, data) == ("OK", expected)
        # STATUS SIZE (rfc/8438) and DELETED-STORAGE (rfc/9208 §4.2.2) in octets.
        client.select("INBOX")
        client.store("1", "+FLAGS", "(\\Deleted)")
        typ, status = client.status("INBOX", "(SIZE DELETED DELETED-STORAGE)")
        assert status == [b'"INBOX" (SIZE %d DELETED 1 DELETED-STORAGE %d)' % ((len(MESSAGE),) * 2)]
        typ, status = client.status("Drafts", "(DELETED-STORAGE SIZE)")
        assert status == [b'"Drafts" (DELETED-STORAGE 0 SIZE %d)' % len(MESSAGE)]
        client.expunge()
        typ, data = client.getquota('""')
        assert data == [b'"" (STORAGE %d %d)' % (KIB, GIB_IN_KIB)]
        typ, status = client.status("INBOX", "(SIZE DELETED-STORAGE)")
        assert status == [b'"INBOX" (SIZE 0 DELETED-STORAGE 0)']
        client.logout()

    await _in_thread(scenario)


async def test_quota_per_mailbox_none_and_refusals(imap: Imap) -> None:  # noqa: F811
    await _set_quota(imap, len(BIG) + 1500)

    def scenario_limited() -> None:
        client = _login(imap)
        limit = (len(BIG) + 1500) // 1024
        assert _quotaroot(client, "Sent") == ("OK", [b'"Sent" ""', b'"" (STORAGE 0 %d)' % limit])
        assert client.append("INBOX", None, None, BIG)[0] == "OK"
        assert client.getquota('""') == ("OK", [b'"" (STORAGE %d %d)' % (_kib(len(BIG)), limit)])
        # Over quota, APPEND is still refused (rfc/5530 OVERQUOTA) and the usage unchanged.
        assert client.append("INBOX", None, None, BIG) == ("NO", [b"[OVERQUOTA] over quota"])
        assert client.getquota('""') == ("OK", [b'"" (STORAGE %d %d)' % (_kib(len(BIG)), limit)])
        # Quotas are the operator's: SETQUOTA refused (rfc/9208 §4.1.3), nothing changes.
        typ, data = client._simple_command("SETQUOTA", '""', "(STORAGE 99999999)")
        assert (typ, data) == (
            "NO",
            [b"[NOPERM] quotas are set by the operator, not over IMAP"],
        )
        assert client.getquota('""') == ("OK", [b'"" (STORAGE %d %d)' % (_kib(len(BIG)), limit)])
        # Only "" is a root.
        typ, data = client._simple_command("GETQUOTA", '"#user/jean"')
        assert (typ, data) == ("NO", [b"[NONEXISTENT] no such quota root"])
        # A shared name without a grant: no root, as an unknown one (no existence leak).
        assert _quotaroot(client, "Shared/x") == ("OK", [b'"Shared/x"'])
        typ, data = client._simple_command("GETQUOTA", '"Shared/x"')
        assert (typ, data) == ("NO", [b"[NONEXISTENT] no such quota root"])
        # Before login: BAD, as every authenticated-state command.
        other = imap.tls()
        tag = other._new_tag()
        other.send(tag + b" GETQUOTAROOT INBOX\r\n")  # imaplib would refuse to send it
        assert other.readline() == tag + b" BAD log in first\r\n"
        other.logout()
        client.logout()

    await _in_thread(scenario_limited)

    # Quota 0: no limit, so no root at all (rfc/9208 §4.1.2) and GETQUOTA "" is unknown.
    await _set_quota(imap, 0)

    def scenario_none() -> None:
        client = _login(imap)
        assert _quotaroot(client, "INBOX") == ("OK", [b'"INBOX"'])
        typ, data = client._simple_command("GETQUOTA", '""')
        assert (typ, data) == ("NO", [b"[NONEXISTENT] no such quota root"])
        assert client.append("INBOX", None, None, MESSAGE)[0] == "OK"
        client.logout()

    await _in_thread(scenario_none)


async def test_quota_default_from_config(imap: Imap) -> None:  # noqa: F811
    # A mailbox without its own quota follows storage.default_quota_bytes, whatever it is.
    server = imap.running.imap
    assert server is not None
    settings = server.settings
    server.settings = dataclasses.replace(
        settings, storage=dataclasses.replace(settings.storage, default_quota_bytes=5 * 1024)
    )

    def scenario(expected: list[bytes]) -> None:
        client = _login(imap)
        assert _quotaroot(client, "INBOX") == ("OK", expected)
        client.logout()

    await _in_thread(lambda: scenario([b'"INBOX" ""', b'"" (STORAGE 0 5)']))
    server.settings = dataclasses.replace(
        settings, storage=dataclasses.replace(settings.storage, default_quota_bytes=0)
    )
    await _in_thread(lambda: scenario([b'"INBOX"']))
    # A quota of its own wins over the default.
    await _set_quota(imap, 2048)
    await _in_thread(lambda: scenario([b'"INBOX" ""', b'"" (STORAGE 0 2)']))
