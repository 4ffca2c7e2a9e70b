"""The untagged updates a session owes its client about the selected folder, as pure functions.

Other sessions, Delivery and other processes change the folder a session has selected; the
session tells its client at the moments the RFCs allow (rfc/3501 §7, §7.4.1; rfc/9051 §7.5.1):

- removed messages: `* n EXPUNGE`, highest number first, or `* VANISHED uids` once QRESYNC is
  enabled (rfc/7162 §3.2.10); only at NOOP, CHECK, IDLE and with commands other than FETCH,
  STORE and SEARCH (UID FETCH, UID STORE and UID SEARCH are other commands, §7.4.1 note);
- new messages: `* n EXISTS`;
- flag changes: `* n FETCH (UID u FLAGS (…) [MODSEQ (m)])` with any command response
  (rfc/3501 §7.4.2; rfc/9051 §7.5.2 and rfc/7162 §3.2.4 want the UID in an unsolicited
  FETCH; §3.1.4.1 adds MODSEQ when CONDSTORE is on).

`compute` decides from the session's snapshot (its UIDs, the highest MODSEQ it has reported),
the folder's UIDs and its messages changed since that MODSEQ (`changed_since`: one indexed
query, ix_messages_folder_id_modseq). `vanished_since` reads the `expunged` table for QRESYNC
(rfc/7162 §3.2.5, §3.2.6). The `expunged` rows are kept as long as their folder: nothing
prunes them, so a `VANISHED (EARLIER)` answer is always exact.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from mssante.operator.imap import responses
from mssante.operator.imap.queries import flag_columns, flags_of
from mssante.operator.imap.sequence import SequenceSet
from mssante.operator.store.schema import ExpungedRow, MessageRow


@dataclass(frozen=True, slots=True)
class Changed:
    """A message of the folder whose MODSEQ is above what the session has reported."""

    uid: int
    modseq: int
    flags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Updates:
    """What to send (in order) and the session's view afterwards."""

    lines: tuple[bytes, ...]
    uids: tuple[int, ...]
    modseq: int


def removal_lines(snapshot: Sequence[int], removed: Sequence[int], *, qresync: bool) -> list[bytes]:
    """The responses announcing that `removed` left the view `snapshot` (ascending UIDs):
    `* VANISHED uids` with QRESYNC (rfc/7162 §3.2.10), else one `* n EXPUNGE` per message,
    highest number first so every number stays valid as each one is read (rfc/3501 §7.4.1)."""
    gone = set(removed)
    if not gone.intersection(snapshot):
        return []
    if qresync:
        return [responses.vanished(u for u in snapshot if u in gone)]
    return [
        responses.expunge(i + 1) for i in range(len(snapshot) - 1, -1, -1) if snapshot[i] in gone
    ]


def flag_lines(
    snapshot: Sequence[int],
    changed: Sequence[Changed],
    *,
    reported: Mapping[int, int],
    condstore: bool,
) -> list[bytes]:
    """Unsolicited `* n FETCH (UID u FLAGS (…) [MODSEQ (m)])` for the messages of `snapshot`
    in `changed`, by sequence number; a change this session already reported itself (its own
    STORE, or the \\Seen set by its FETCH: `reported` maps UID to that MODSEQ) is not echoed."""
    seq_of = {u: i + 1 for i, u in enumerate(snapshot)}
    out: list[tuple[int, bytes]] = []
    for change in changed:
        seq = seq_of.get(change.uid)
        if seq is None or reported.get(change.uid) == change.modseq:
            continue
        items = [
            ("UID", responses.number(change.uid)),
            ("FLAGS", responses.flag_list(change.flags)),
        ]
        if condstore:
            items.append(("MODSEQ", b"(" + responses.number(change.modseq) + b")"))
        out.append((seq, responses.fetch(seq, items)))
    return [line for _, line in sorted(out)]


def compute(
    snapshot: Sequence[int],
    current: Sequence[int],
    changed: Sequence[Changed],
    *,
    modseq: int,
    reported: Mapping[int, int],
    expunge: bool,
    qresync: bool,
    condstore: bool,
) -> Updates:
    """The pending updates of a view `snapshot` (ascending UIDs) given the folder's `current`
    UIDs (ascending) and its messages `changed` since `modseq`, the highest MODSEQ reported so
    far. `expunge`: whether removals may be announced now; if not, removed UIDs stay in the view
    (their numbers stay valid) until a moment that allows it. Order: removals, EXISTS, FETCH."""
    present = set(current)
    lines: list[bytes] = []
    view = list(snapshot)
    if expunge:
        removed = [u for u in view if u not in present]
        lines += removal_lines(view, removed, qresync=qresync)
        view = [u for u in view if u in present]
    last = snapshot[-1] if snapshot else 0
    new = [u for u in current if u > last]
    known = list(view)
    if new:
        view += new
        lines.append(responses.exists(len(view)))
    # Only messages the client knew before this update: a new one is read by the client anyway.
    lines += flag_lines(known, changed, reported=reported, condstore=condstore)
    highest = max([modseq, *(c.modseq for c in changed)])
    return Updates(tuple(lines), tuple(view), highest)


def vanished_earlier(
    expunged: Sequence[int], known: SequenceSet | None, view: Sequence[int]
) -> bytes | None:
    """`* VANISHED (EARLIER) uids` (rfc/7162 §3.2.5.2, §3.2.6) for the removed UIDs `expunged`
    that lie in `known` (the client's known UIDs or the UID FETCH set; None: all) and are not in
    the session's view (a UID still in the view is announced by a plain VANISHED later: EARLIER
    does not change the message count). None when there is nothing to say."""
    in_view = set(view)
    candidates = sorted(u for u in set(expunged) if u not in in_view)
    if known is not None and candidates:
        runs = known.resolve(max(candidates[-1], view[-1] if view else 0))
        lows = [lo for lo, _ in runs]  # sorted and disjoint: one bisection per UID
        candidates = [u for u in candidates if _in_runs(u, runs, lows)]
    if not candidates:
        return None
    return responses.vanished(candidates, earlier=True)


def _in_runs(uid: int, runs: Sequence[tuple[int, int]], lows: Sequence[int]) -> bool:
    index = bisect.bisect_right(lows, uid) - 1
    return index >= 0 and uid <= runs[index][1]


# --- the queries --------------------------------------------------------------------------------


async def changed_since(
    session: AsyncSession, folder_id: int, modseq: int, *, reader_id: int | None = None
) -> list[Changed]:
    """The folder's messages with a MODSEQ above `modseq`, ascending by UID: one SELECT.
    `reader_id`: a grantee of a shared folder, whose \\Seen is their own (store.seen)."""
    rows = (
        await session.execute(
            select(MessageRow.uid, MessageRow.modseq, *flag_columns(reader_id))
            .where(MessageRow.folder_id == folder_id, MessageRow.modseq > modseq)
            .order_by(MessageRow.uid)
        )
    ).all()
    return [Changed(int(r[0]), int(r[1]), flags_of(r[2:8])) for r in rows]


async def vanished_since(session: AsyncSession, folder_id: int, modseq: int) -> list[int]:
    """UIDs removed from the folder with a MODSEQ above `modseq`, ascending: one SELECT
    (ix_expunged_folder_id_modseq)."""
    result = await session.execute(
        select(ExpungedRow.uid)
        .where(ExpungedRow.folder_id == folder_id, ExpungedRow.modseq > modseq)
        .order_by(ExpungedRow.uid)
    )
    return [int(u) for u in result.scalars()]
