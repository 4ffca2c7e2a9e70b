"""imap/uidview.py against a plain list of UIDs: every operation, on run-length and plain
forms, with Hypothesis; and the size that is the point of it."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mssante.operator.imap.uidview import UidView

ascending = st.lists(st.integers(min_value=1, max_value=2**32 - 1), max_size=300, unique=True).map(
    sorted
)
# Mostly consecutive, with holes: what real folders look like (the run-length form).
runs = st.lists(
    st.tuples(st.integers(min_value=1, max_value=50), st.integers(min_value=1, max_value=40)),
    max_size=20,
).map(lambda parts: _from_runs(parts))


def _from_runs(parts: list[tuple[int, int]]) -> list[int]:
    out: list[int] = []
    uid = 0
    for gap, length in parts:
        uid += gap
        out.extend(range(uid, uid + length))
        uid += length
    return out


@settings(max_examples=300, deadline=None)
@given(st.one_of(ascending, runs), st.integers(min_value=-5, max_value=2**32 + 5))
def test_view_behaves_as_the_list(uids: list[int], probe: int) -> None:
    view = UidView(uids)
    assert len(view) == len(uids)
    assert list(view) == uids
    assert bool(view) == bool(uids)
    for i in range(-len(uids), len(uids)):
        assert view[i] == uids[i]
    for bad in (len(uids), -len(uids) - 1):
        with pytest.raises(IndexError):
            view[bad]
    assert view[1:-1:2] == uids[1:-1:2]
    for uid in {*uids[:20], probe, probe + 1}:
        assert (uid in view) == (uid in uids)
        if uid in uids:
            assert view.index(uid) == uids.index(uid)
        else:
            with pytest.raises(ValueError):
                view.index(uid)
    assert list(reversed(view)) == uids[::-1]


def test_refuses_what_is_not_ascending() -> None:
    for bad in ([2, 1], [1, 1], [-1]):
        with pytest.raises((ValueError, OverflowError)):
            UidView(bad)


def test_a_folder_read_in_order_costs_a_few_octets() -> None:
    contiguous = UidView(range(1, 10_001))
    assert "1 runs" in repr(contiguous)
    holes = UidView(u for u in range(1, 10_001) if u % 1000)  # 10 expunged
    assert "10 runs" in repr(holes) or "11 runs" in repr(holes)
    sparse = UidView(range(1, 20_001, 2))  # every other one: plain is smaller
    assert "plain" in repr(sparse)
    assert list(sparse) == list(range(1, 20_001, 2))
    size = sys.getsizeof(contiguous._starts) + sys.getsizeof(contiguous._offsets)
    assert size < 200  # against 40 KB as one array of 10,000 32-bit UIDs
