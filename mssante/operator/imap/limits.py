"""The bounds the IMAP command reader and parser enforce on what a client sends.

Everything from the network is bounded (docs/imap.md lists these values): a client that goes
over a bound gets a `TooBig` event naming the `Limit`, never an unbounded buffer.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

KIB = 1024
MIB = 1024 * KIB


class Limit(enum.Enum):
    """Which bound a client went over (carried by the `TooBig` event)."""

    LINE = "line"  # non-literal bytes of one command
    LITERAL = "literal"  # one literal's size
    NONSYNC_LITERAL = "nonsync-literal"  # a {N+} over the LITERAL- bound (rfc/7888 §4)
    LITERAL_TOTAL = "literal-total"  # all literals of one command
    LITERAL_COUNT = "literal-count"  # number of literals in one command
    DEPTH = "depth"  # nesting of parentheses, NOT and OR
    LIST_ITEMS = "list-items"  # items of one parenthesised list
    SEQUENCE_RANGES = "sequence-ranges"  # comma-separated ranges of one sequence set
    SEARCH_KEYS = "search-keys"  # search keys of one SEARCH command
    PENDING = "pending"  # bytes a client sent while the reader waited for the server


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds, with defaults fit for a professional mail store.

    - `max_line`: non-literal bytes of one command, all its lines together (64 KiB; rfc/7162
      §4 asks clients to keep lines under 8192 octets, servers to accept more).
    - `max_literal`: one literal, i.e. the largest message APPEND accepts (25 MiB, the
      APPENDLIMIT advertised, rfc/7889).
    - `max_nonsync_literal`: the LITERAL- bound of rfc/7888 §4 (4096 octets). Set it to
      `max_literal` to offer LITERAL+ instead.
    - `max_literal_total`: all literals of one command (MULTIAPPEND, rfc/3502): 50 MiB.
    - `max_literals`: literals in one command: 256.
    - `max_depth`: nesting of parentheses, NOT and OR: 32.
    - `max_list_items`: items in one parenthesised list: 1000.
    - `max_sequence_ranges`: comma-separated ranges in one sequence set: 16384.
    - `max_search_keys`: search keys in one SEARCH: 1000.
    - `max_errors`: consecutive BAD commands before the reader asks to close: 10.
    """

    max_line: int = 64 * KIB
    max_literal: int = 25 * MIB
    max_nonsync_literal: int = 4096
    max_literal_total: int = 50 * MIB
    max_literals: int = 256
    max_depth: int = 32
    max_list_items: int = 1000
    max_sequence_ranges: int = 16384
    max_search_keys: int = 1000
    max_errors: int = 10

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            if getattr(self, name) < 1:
                raise ValueError(f"IMAP limit {name} must be positive")
        if self.max_nonsync_literal > self.max_literal:
            raise ValueError("max_nonsync_literal cannot exceed max_literal")


DEFAULT_LIMITS = Limits()
