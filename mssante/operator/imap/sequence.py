"""Sequence sets: message numbers and UIDs as ranges (rfc/9051 §9 `sequence-set`).

`*` is "the largest number in use" (rfc/9051 §6.4.5 and §9 `seq-number`) and is kept symbolic
until the mailbox size is known; `$` is the saved search result of rfc/5182 §2.1 (the
`SEARCHRES` capability, part of rfc/9051). Numbers are non-zero 32-bit (`nz-number`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

MAX_NUMBER: Final = 2**32 - 1  # rfc/9051 §9 `number`: unsigned 32-bit


class Star(enum.Enum):
    """The `*` of a sequence set."""

    STAR = "*"

    def __str__(self) -> str:
        return "*"


STAR: Final = Star.STAR
SeqNumber = int | Literal[Star.STAR]


@dataclass(frozen=True, slots=True)
class SeqRange:
    """`first:last` as written (rfc/9051 §9: "4:2" is the same set as "2:4"); a single number
    has `first == last`."""

    first: SeqNumber
    last: SeqNumber

    def __str__(self) -> str:
        if self.first == self.last:
            return str(self.first)
        return f"{self.first}:{self.last}"

    def bounds(self, largest: int) -> tuple[int, int]:
        """(low, high) once `*` is known to be `largest`."""
        a = largest if self.first is STAR else self.first
        b = largest if self.last is STAR else self.last
        return (a, b) if a <= b else (b, a)


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """A parsed sequence set: either `ranges` in the client's order, or `saved` (`$`)."""

    ranges: tuple[SeqRange, ...] = ()
    saved: bool = False

    def __post_init__(self) -> None:
        if self.saved == bool(self.ranges):
            raise ValueError("a sequence set is either `$` or a non-empty list of ranges")
        for r in self.ranges:
            for n in (r.first, r.last):
                if n is not STAR and not (isinstance(n, int) and 1 <= n <= MAX_NUMBER):
                    raise ValueError(f"sequence number out of range: {n!r}")

    def __str__(self) -> str:
        if self.saved:
            return "$"
        return ",".join(str(r) for r in self.ranges)

    @property
    def has_star(self) -> bool:
        return any(r.first is STAR or r.last is STAR for r in self.ranges)

    def resolve(self, largest: int) -> list[tuple[int, int]]:
        """Sorted, merged, disjoint (low, high) ranges with `*` read as `largest`.

        `$` cannot be resolved here: the session holds the saved result.
        """
        if self.saved:
            raise ValueError("`$` is resolved by the session, not the sequence set")
        spans = sorted(r.bounds(largest) for r in self.ranges)
        merged: list[tuple[int, int]] = []
        for lo, hi in spans:
            if merged and lo <= merged[-1][1] + 1:
                if hi > merged[-1][1]:
                    merged[-1] = (merged[-1][0], hi)
            else:
                merged.append((lo, hi))
        return merged

    @classmethod
    def of(cls, numbers: Iterable[int]) -> SequenceSet:
        """The compact set for `numbers` (sorted, runs compressed): [1, 2, 3, 5] → 1:3,5."""
        ranges: list[SeqRange] = []
        for lo, hi in compress(numbers):
            ranges.append(SeqRange(lo, hi))
        return cls(tuple(ranges))


def compress(numbers: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted unique `numbers` as (low, high) runs."""
    runs: list[tuple[int, int]] = []
    for n in sorted(set(numbers)):
        if runs and n == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], n)
        else:
            runs.append((n, n))
    return runs


def format_numbers(numbers: Iterable[int]) -> str:
    """`numbers` as a compact sequence set ("1:3,5,7:9"); used in responses such as
    `[COPYUID …]` (rfc/4315 §3) and `VANISHED` (rfc/7162 §3.2.10). Empty input is refused:
    the grammar has no empty sequence set."""
    runs = compress(numbers)
    if not runs:
        raise ValueError("an empty sequence set cannot be written")
    if runs[0][0] < 1 or runs[-1][1] > MAX_NUMBER:
        raise ValueError("sequence numbers must be 1..2^32-1")
    return ",".join(str(lo) if lo == hi else f"{lo}:{hi}" for lo, hi in runs)
