"""A session's view of its selected folder: ascending UIDs, sequence number n being the n-th
(rfc/3501 §2.3.1.2), kept small because an idle client holds it for days.

A folder's UIDs are mostly runs of consecutive numbers (messages arrive in order; expunges
cut a few holes), so the view keeps the runs: the first UID of each and how many messages
come before it, in two arrays of 32-bit unsigned integers (rfc/3501 §9 uniqueid); a number
and a UID are found from each other by bisection. A folder so riddled with holes that the
runs would take more room than the UIDs themselves is kept as a plain array instead. A
10,000-message INBOX read in order is one run: a few dozen octets instead of 40 KB.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from typing import overload


class UidView(Sequence[int]):
    """Immutable; built from ascending, distinct UIDs (ValueError otherwise)."""

    __slots__ = ("_len", "_offsets", "_plain", "_starts")

    def __init__(self, uids: Iterable[int] = ()) -> None:
        plain = array("I", uids)
        starts = array("I")
        offsets = array("I")
        previous = -1
        for index, uid in enumerate(plain):
            if uid <= previous:
                raise ValueError("UIDs must be ascending and distinct")
            if uid != previous + 1 or index == 0:
                starts.append(uid)
                offsets.append(index)
            previous = uid
        self._len = len(plain)
        if 2 * len(starts) < len(plain):
            self._starts: array[int] | None = starts
            self._offsets: array[int] | None = offsets
            self._plain: array[int] | None = None
        else:
            self._starts = self._offsets = None
            self._plain = plain

    def __len__(self) -> int:
        return self._len

    @overload
    def __getitem__(self, index: int) -> int: ...

    @overload
    def __getitem__(self, index: slice) -> list[int]: ...

    def __getitem__(self, index: int | slice) -> int | list[int]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._len))]
        if index < 0:
            index += self._len
        if not 0 <= index < self._len:
            raise IndexError("sequence number out of range")
        if self._plain is not None:
            return int(self._plain[index])
        assert self._starts is not None and self._offsets is not None
        run = bisect_right(self._offsets, index) - 1
        return int(self._starts[run] + (index - self._offsets[run]))

    def __iter__(self) -> Iterator[int]:
        if self._plain is not None:
            yield from self._plain
            return
        assert self._starts is not None and self._offsets is not None
        runs = len(self._starts)
        for run in range(runs):
            end = self._offsets[run + 1] if run + 1 < runs else self._len
            start = self._starts[run]
            yield from range(start, start + end - self._offsets[run])

    def index(self, uid: object, start: int = 0, stop: int | None = None) -> int:
        """The position of `uid` (its sequence number minus one), by bisection."""
        position = self._position(uid)
        if position is None or position < start or (stop is not None and position >= stop):
            raise ValueError(f"{uid!r} is not in the view")
        return position

    def __contains__(self, uid: object) -> bool:
        return self._position(uid) is not None

    def _position(self, uid: object) -> int | None:
        if not isinstance(uid, int):
            return None
        if self._plain is not None:
            at = bisect_right(self._plain, uid) - 1
            return at if at >= 0 and self._plain[at] == uid else None
        assert self._starts is not None and self._offsets is not None
        run = bisect_right(self._starts, uid) - 1
        if run < 0:
            return None
        end = self._offsets[run + 1] if run + 1 < len(self._starts) else self._len
        position = self._offsets[run] + (uid - self._starts[run])
        return position if position < end else None

    def __repr__(self) -> str:
        kind = "plain" if self._plain is not None else f"{len(self._starts or ())} runs"
        return f"UidView({self._len} UIDs, {kind})"
