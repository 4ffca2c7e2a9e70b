"""QUOTA (rfc/9208): GETQUOTAROOT, GETQUOTA, SETQUOTA and the STATUS item DELETED-STORAGE.

The quota is the one Delivery and APPEND enforce: the mailbox's `quota_bytes`, or
`storage.default_quota_bytes` when NULL, 0 meaning none; the usage is the mailbox's
`used_bytes` (the sum of its messages' RFC822.SIZE, kept by every append and removal).

Decisions where the RFC leaves room:

- One quota root per account, named `""` (the account's whole personal namespace shares one
  limit). It exists only while a limit applies: with none (0), GETQUOTAROOT lists no root (the
  rfc/9208 §4.1.2 form for a mailbox without quota) and GETQUOTA "" is `NO [NONEXISTENT]`, as
  is any other root name. A shared mailbox's folders (`Shared/<owner>/…`) are governed by
  their owner's quota, root `Shared/<owner>`, visible only to its grantees.
- STORAGE is in units of 1024 octets (rfc/9208 §5.1): the usage rounded up (a 1-octet message
  uses 1), the limit rounded down, so a client never believes there is more room than there is.
- SETQUOTA is refused with `NO [NOPERM]`: quotas are set by the operator (`mssante mailbox
  quota`); QUOTASET is not advertised, which rfc/9208 §4.1.3 allows.
- DELETED-STORAGE (rfc/9208 §4.2.2, required with QUOTA=RES-STORAGE by §5.1) is exact: the sum
  of the RFC822.SIZE of the folder's \\Deleted messages, in octets, which is what an EXPUNGE
  takes off `used_bytes`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from sqlalchemy import func, select

from mssante.operator.imap import queries, responses, shared
from mssante.operator.imap.commands import GetQuota, GetQuotaRoot, SetQuota
from mssante.operator.store.schema import MessageRow

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from mssante.operator.imap.session import ImapSession

ROOT: Final = ""  # the account's quota root
STORAGE_UNIT: Final = 1024  # rfc/9208 §5.1: STORAGE counts units of 1024 octets


def quota_root(mailbox: str) -> str | None:
    """The quota root governing a mailbox name (which need not exist, rfc/9208 §4.1.2), or None.

    The user's own folders share the account's root `""`. A shared mailbox's folders
    (`Shared/<owner>/…`) count against their owner's quota, so their root is
    `Shared/<owner>`; whether this user may see it is checked by `_owner_of`.
    """
    if not shared.in_namespace(mailbox):
        return ROOT
    parts = mailbox.split(shared.DELIMITER, 2)
    if len(parts) < 2 or not parts[1]:
        return None  # the namespace root itself
    return shared.DELIMITER.join((shared.PREFIX, parts[1].lower()))


async def _owner_of(imap: ImapSession, root: str) -> int | None:
    """The mailbox whose quota a root is, if this user may see it. A shared root without a
    grant is answered like a root that does not exist (no existence leak)."""
    assert imap.account is not None
    if root == ROOT:
        return imap.account.mailbox_id
    parts = root.split(shared.DELIMITER)
    if len(parts) != 2 or parts[0] != shared.PREFIX or not parts[1]:
        return None
    async with imap.server.store.read_session() as session:
        access = await shared.access_by_address(session, imap.account.mailbox_id, parts[1].lower())
    return None if access is None else access.owner_id


def storage_resource(used_bytes: int, limit_bytes: int) -> tuple[str, int, int]:
    """("STORAGE", usage, limit) in units of 1024 octets: usage up, limit down (rfc/9208 §5.1)."""
    return ("STORAGE", -(-used_bytes // STORAGE_UNIT), limit_bytes // STORAGE_UNIT)


async def _storage(imap: ImapSession, root: str) -> tuple[str, int, int] | None:
    """The root's STORAGE resource; None when the root is not this user's to see or no limit
    applies."""
    owner = await _owner_of(imap, root)
    if owner is None:
        return None
    async with imap.server.store.read_session() as session:
        usage = await queries.mailbox_usage(session, owner)
    limit = imap._quota_limit(usage)
    return storage_resource(usage.used_bytes, limit) if limit > 0 else None


async def getquotaroot(imap: ImapSession, cmd: GetQuotaRoot) -> None:
    """rfc/9208 §4.1.2: QUOTAROOT with the mailbox's roots, then QUOTA for each."""
    root = quota_root(cmd.mailbox)
    storage = await _storage(imap, root) if root is not None else None
    if root is None or storage is None:
        await imap._send(
            responses.quotaroot(cmd.mailbox, [], utf8=imap.rev2),
            responses.tagged(cmd.tag, "OK", "GETQUOTAROOT completed"),
        )
        return
    await imap._send(
        responses.quotaroot(cmd.mailbox, [root], utf8=imap.rev2),
        responses.quota(root, [storage]),
        responses.tagged(cmd.tag, "OK", "GETQUOTAROOT completed"),
    )


async def getquota(imap: ImapSession, cmd: GetQuota) -> None:
    """rfc/9208 §4.1.1: the root's usage and limits; an unknown root is NONEXISTENT."""
    root = cmd.root
    if shared.in_namespace(root):
        root = root[: len(shared.PREFIX) + 1] + root[len(shared.PREFIX) + 1 :].lower()
    storage = await _storage(imap, root)
    if storage is None:
        await imap._send(
            responses.tagged(cmd.tag, "NO", "no such quota root", responses.NONEXISTENT)
        )
        return
    await imap._send(
        responses.quota(root, [storage]),
        responses.tagged(cmd.tag, "OK", "GETQUOTA completed"),
    )


async def setquota(imap: ImapSession, cmd: SetQuota) -> None:
    """rfc/9208 §4.1.3: refused; the operator sets quotas (QUOTASET is not advertised)."""
    await imap._send(
        responses.tagged(
            cmd.tag, "NO", "quotas are set by the operator, not over IMAP", responses.NOPERM
        )
    )


async def deleted_storage(session: AsyncSession, folder_id: int) -> int:
    """STATUS DELETED-STORAGE (rfc/9208 §4.2.2): octets an EXPUNGE of the folder would free."""
    total = await session.scalar(
        select(func.coalesce(func.sum(MessageRow.size), 0)).where(
            MessageRow.folder_id == folder_id, MessageRow.deleted.is_(True)
        )
    )
    return int(total or 0)
