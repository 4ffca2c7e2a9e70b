"""The pending untagged updates of a session (updates.py), byte for byte, without a server."""

from __future__ import annotations

from mssante.operator.imap.sequence import STAR, SeqRange, SequenceSet
from mssante.operator.imap.updates import (
    Changed,
    Updates,
    compute,
    flag_lines,
    removal_lines,
    vanished_earlier,
)


def test_removals_are_expunge_highest_first_or_one_vanished() -> None:
    view = [3, 5, 7, 9, 11]
    assert removal_lines(view, [5, 9, 10], qresync=False) == [
        b"* 4 EXPUNGE\r\n",
        b"* 2 EXPUNGE\r\n",
    ]
    assert removal_lines(view, [5, 9, 10, 11], qresync=True) == [b"* VANISHED 5,9,11\r\n"]
    assert removal_lines(view, [1, 2], qresync=True) == []  # none of them was in the view
    assert removal_lines(view, [], qresync=False) == []


def test_flag_lines_carry_uid_and_modseq_and_skip_own_changes() -> None:
    view = [3, 5, 7]
    changed = [
        Changed(3, 20, ("\\Seen",)),
        Changed(7, 21, ()),
        Changed(5, 22, ("\\Flagged", "$Label")),
        Changed(8, 23, ("\\Seen",)),  # not in the view: a new message, read by the client anyway
    ]
    assert flag_lines(view, changed, reported={}, condstore=False) == [
        b"* 1 FETCH (UID 3 FLAGS (\\Seen))\r\n",
        b"* 2 FETCH (UID 5 FLAGS (\\Flagged $Label))\r\n",
        b"* 3 FETCH (UID 7 FLAGS ())\r\n",
    ]
    # Its own STORE gave message 5 MODSEQ 22: not echoed. A later change (3 at 20, reported
    # at 19) is.
    assert flag_lines(view, changed, reported={5: 22, 3: 19}, condstore=True) == [
        b"* 1 FETCH (UID 3 FLAGS (\\Seen) MODSEQ (20))\r\n",
        b"* 3 FETCH (UID 7 FLAGS () MODSEQ (21))\r\n",
    ]


def test_compute_orders_removals_exists_then_flags() -> None:
    result = compute(
        [3, 5, 7],
        [3, 7, 8, 9],
        [Changed(7, 31, ("\\Answered",)), Changed(8, 30, ())],
        modseq=25,
        reported={},
        expunge=True,
        qresync=False,
        condstore=True,
    )
    assert result == Updates(
        (
            b"* 2 EXPUNGE\r\n",
            b"* 4 EXISTS\r\n",
            b"* 2 FETCH (UID 7 FLAGS (\\Answered) MODSEQ (31))\r\n",
        ),
        (3, 7, 8, 9),
        31,
    )


def test_compute_holds_removals_back_when_expunge_is_not_allowed() -> None:
    # During FETCH, STORE, SEARCH (rfc/3501 §7.4.1): the view keeps 5, numbers stay valid.
    result = compute(
        [3, 5, 7],
        [3, 7, 8],
        [Changed(7, 31, ("\\Seen",))],
        modseq=25,
        reported={},
        expunge=False,
        qresync=True,
        condstore=False,
    )
    assert result == Updates(
        (b"* 4 EXISTS\r\n", b"* 3 FETCH (UID 7 FLAGS (\\Seen))\r\n"), (3, 5, 7, 8), 31
    )
    # Next NOOP: the removal as VANISHED, nothing else changed.
    later = compute(
        list(result.uids),
        [3, 7, 8],
        [],
        modseq=31,
        reported={},
        expunge=True,
        qresync=True,
        condstore=False,
    )
    assert later == Updates((b"* VANISHED 5\r\n",), (3, 7, 8), 31)


def test_compute_with_nothing_changed_says_nothing() -> None:
    assert compute(
        [1, 2],
        [1, 2],
        [],
        modseq=9,
        reported={},
        expunge=True,
        qresync=False,
        condstore=True,
    ) == Updates((), (1, 2), 9)
    assert compute(
        [], [], [], modseq=0, reported={}, expunge=True, qresync=True, condstore=True
    ) == Updates((), (), 0)


def test_vanished_earlier_within_known_uids_and_outside_the_view() -> None:
    known = SequenceSet((SeqRange(1, 4), SeqRange(10, STAR)))  # 1:4,10:*
    assert vanished_earlier([2, 4, 5, 6, 12, 40], known, [1, 3, 20]) == (
        b"* VANISHED (EARLIER) 2,4,12,40\r\n"
    )
    # No known UIDs: every removal; a UID still in the view is not EARLIER.
    assert vanished_earlier([2, 3, 5], None, [3]) == b"* VANISHED (EARLIER) 2,5\r\n"
    assert vanished_earlier([2], SequenceSet((SeqRange(5, 9),)), [1]) is None
    assert vanished_earlier([], None, [1]) is None


def test_vanished_earlier_with_many_known_ranges() -> None:
    odd = SequenceSet(tuple(SeqRange(n, n) for n in range(199, 0, -2)))  # 100 ranges, unordered
    gone = list(range(1, 301))
    line = vanished_earlier(gone, odd, [5])
    expected = ",".join(str(n) for n in range(1, 200, 2) if n != 5)
    assert line == b"* VANISHED (EARLIER) " + expected.encode() + b"\r\n"
