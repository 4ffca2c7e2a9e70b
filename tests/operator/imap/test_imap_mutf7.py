"""Modified UTF-7 (rfc/3501 §5.1.3): known encodings, strict refusals, round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mssante.operator.imap import mutf7


@pytest.mark.parametrize(
    ("name", "encoded"),
    [
        ("INBOX", "INBOX"),
        ("", ""),
        ("&", "&-"),
        ("a&b", "a&-b"),
        # The example of rfc/3501 §5.1.3.
        ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
        ("Éléments envoyés", "&AMk-l&AOk-ments envoy&AOk-s"),
        ("Corbeille/été", "Corbeille/&AOk-t&AOk-"),
        ("😀", "&2D3eAA-"),  # a surrogate pair
        ("\t", "&AAk-"),
        ("~", "~"),
    ],
)
def test_known_encodings(name: str, encoded: str) -> None:
    assert mutf7.encode(name) == encoded
    assert mutf7.decode(encoded) == name
    assert mutf7.decode(encoded.encode("ascii")) == name


@pytest.mark.parametrize(
    "bad",
    [
        "&",  # unterminated
        "&AOk",  # unterminated run
        "&AOk-&AOk-",  # two adjacent runs: canonical form is one
        "&AGE-",  # "a" shifted: printable ASCII must stand for itself
        "&ACY-",  # "&" shifted
        "&AOl-",  # non-zero padding bits
        "&AOkA-",  # a superfluous base64 character
        "&A-",  # too short for a UTF-16 unit
        "&AO/-",  # "/" is "," in modified base64
        "&2D0-",  # a lone high surrogate
        "&3gA-",  # a lone low surrogate
        "caf\xe9",  # 8-bit
        "a\tb",  # control character sent raw
        "&AOk=-",  # padding
    ],
)
def test_strict_decoding(bad: str) -> None:
    with pytest.raises(ValueError):
        mutf7.decode(bad)


def test_lone_surrogate_cannot_be_encoded() -> None:
    with pytest.raises(ValueError):
        mutf7.encode("a\ud800")


names = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@given(names)
def test_round_trip(name: str) -> None:
    encoded = mutf7.encode(name)
    assert encoded.isascii()
    assert all(0x20 <= ord(c) <= 0x7E for c in encoded)
    assert mutf7.decode(encoded) == name


@given(st.binary(max_size=30))
def test_decode_is_canonical(raw: bytes) -> None:
    """Whatever decodes must re-encode to exactly the same bytes: one name, one encoding."""
    try:
        name = mutf7.decode(raw)
    except ValueError:
        return
    assert mutf7.encode(name).encode("ascii") == raw
