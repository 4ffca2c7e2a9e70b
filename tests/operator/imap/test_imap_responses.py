"""Byte-exact responses, and round trips between what we write and what we parse."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from imap_helpers import one_command

from mssante.operator.imap import responses as r
from mssante.operator.imap.commands import Fetch, FetchAttr, Login, Select
from mssante.operator.imap.sequence import MAX_NUMBER, SequenceSet, compress, format_numbers

# --- status responses and codes ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("built", "wire"),
    [
        (r.tagged("a1", "OK", "LOGIN completed"), b"a1 OK LOGIN completed\r\n"),
        (
            r.tagged("a1", "NO", "No such mailbox", r.TRYCREATE),
            b"a1 NO [TRYCREATE] No such mailbox\r\n",
        ),
        (r.tagged("a", "BAD", "Line too long", r.TOOBIG), b"a BAD [TOOBIG] Line too long\r\n"),
        (
            r.tagged("a", "NO", "Authentication failed", r.AUTHENTICATIONFAILED),
            b"a NO [AUTHENTICATIONFAILED] Authentication failed\r\n",
        ),
        (r.tagged("a", "NO", "Cannot", r.CANNOT), b"a NO [CANNOT] Cannot\r\n"),
        (
            r.tagged("a", "OK", "SELECT completed", r.READ_WRITE),
            b"a OK [READ-WRITE] SELECT completed\r\n",
        ),
        (
            r.untagged("OK", "UIDs valid", r.uidvalidity(3857529045)),
            b"* OK [UIDVALIDITY 3857529045] UIDs valid\r\n",
        ),
        (r.untagged("OK", "Predicted", r.uidnext(4392)), b"* OK [UIDNEXT 4392] Predicted\r\n"),
        (
            r.untagged("OK", "Ok", r.highestmodseq(715194045007)),
            b"* OK [HIGHESTMODSEQ 715194045007] Ok\r\n",
        ),
        (r.untagged("OK", "Sorry", r.NOMODSEQ), b"* OK [NOMODSEQ] Sorry\r\n"),
        (r.untagged("OK", "Hello", r.ALERT), b"* OK [ALERT] Hello\r\n"),
        (r.untagged("OK", "Closed", r.CLOSED), b"* OK [CLOSED] Closed\r\n"),
        (
            r.untagged("OK", "Limited", r.permanentflags(["\\Seen", "\\Deleted", "\\*"])),
            b"* OK [PERMANENTFLAGS (\\Seen \\Deleted \\*)] Limited\r\n",
        ),
        (r.untagged("OK", "x", r.unseen(12)), b"* OK [UNSEEN 12] x\r\n"),
        (
            r.untagged("OK", "ready", r.capability_code(["IMAP4rev1", "IMAP4rev2", "AUTH=PLAIN"])),
            b"* OK [CAPABILITY IMAP4rev1 IMAP4rev2 AUTH=PLAIN] ready\r\n",
        ),
        (
            r.tagged("A003", "OK", "APPEND completed", r.appenduid(38505, [3955])),
            b"A003 OK [APPENDUID 38505 3955] APPEND completed\r\n",
        ),
        (
            r.tagged("A003", "OK", "done", r.appenduid(38505, [3955, 3956, 3957, 4000])),
            b"A003 OK [APPENDUID 38505 3955:3957,4000] done\r\n",
        ),
        (
            r.tagged(
                "A004",
                "OK",
                "Done",
                r.copyuid(38505, [304, 319, 320, 321], [3956, 3957, 3958, 3959]),
            ),
            b"A004 OK [COPYUID 38505 304,319:321 3956:3959] Done\r\n",
        ),
        (
            r.tagged("A", "OK", "Done", r.copyuid(1, [5, 4], [10, 11])),
            b"A OK [COPYUID 1 5,4 10:11] Done\r\n",
        ),
        (
            r.tagged("a", "OK", "Conditional STORE failed", r.modified([7, 9, 8, 12])),
            b"a OK [MODIFIED 7:9,12] Conditional STORE failed\r\n",
        ),
        (r.tagged("a", "NO", "x", r.badcharset()), b"a NO [BADCHARSET] x\r\n"),
        (
            r.tagged("a", "NO", "x", r.badcharset(["UTF-8", "US-ASCII"])),
            b"a NO [BADCHARSET (UTF-8 US-ASCII)] x\r\n",
        ),
        (r.tagged("a", "NO", "Quota", r.OVERQUOTA), b"a NO [OVERQUOTA] Quota\r\n"),
        (r.tagged("a", "NO", "x", r.USEATTR), b"a NO [USEATTR] x\r\n"),
        (r.bye("Autologout; idle for too long"), b"* BYE Autologout; idle for too long\r\n"),
        (r.untagged("PREAUTH", "Welcome"), b"* PREAUTH Welcome\r\n"),
        (r.continuation(), b"+ Ready\r\n"),
        (r.continuation("idling"), b"+ idling\r\n"),
        (r.challenge(b""), b"+ \r\n"),
        (r.challenge(b"\x00abc"), b"+ AGFiYw==\r\n"),
        (r.tagged("a", "OK", "Fin \u00e9t\u00e9"), "a OK Fin \u00e9t\u00e9\r\n".encode()),
    ],
)
def test_status_responses(built: bytes, wire: bytes) -> None:
    assert built == wire


@pytest.mark.parametrize(
    "call",
    [
        lambda: r.tagged("a", "OK", "two\r\nlines"),
        lambda: r.tagged("a", "OK", ""),
        lambda: r.tagged("a", "OK", "[ALERT] forged"),
        lambda: r.tagged("a b", "OK", "x"),
        lambda: r.tagged("a+", "OK", "x"),
        lambda: r.untagged("OK", "x", r.Code("UIDVALIDITY", "1]")),
        lambda: r.uidvalidity(0),
        lambda: r.uidvalidity(2**32),
        lambda: r.appenduid(1, []),
        lambda: r.copyuid(1, [1, 2], [3]),
        lambda: r.exists(-1),
        lambda: r.expunge(0),
        lambda: r.vanished([]),
        lambda: r.flags(["bad flag"]),
        lambda: r.literal(b"\x00"),
        lambda: r.string(b"a\x00"),
        lambda: r.date_time(dt.datetime(2024, 1, 1)),
        lambda: r.fetch(1, []),
        lambda: r.fetch(1, [("BODY[]\r\n", b"x")]),
        lambda: r.list_item([], "//", "x"),
        lambda: r.capability([]),
    ],
)
def test_refused_responses(call: object) -> None:
    assert callable(call)
    with pytest.raises(ValueError):
        call()


# --- untagged data ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("built", "wire"),
    [
        (r.exists(23), b"* 23 EXISTS\r\n"),
        (r.exists(0), b"* 0 EXISTS\r\n"),
        (r.recent(5), b"* 5 RECENT\r\n"),
        (r.expunge(44), b"* 44 EXPUNGE\r\n"),
        (r.vanished([405, 406, 407, 408, 409, 410, 411]), b"* VANISHED 405:411\r\n"),
        (r.vanished([41, 43, 44, 45, 100], earlier=True), b"* VANISHED (EARLIER) 41,43:45,100\r\n"),
        (
            r.flags(["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "$Junk"]),
            b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Junk)\r\n",
        ),
        (r.flags([]), b"* FLAGS ()\r\n"),
        (
            r.capability(["IMAP4rev1", "STARTTLS", "LOGINDISABLED"]),
            b"* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED\r\n",
        ),
        (r.enabled(["CONDSTORE", "QRESYNC"]), b"* ENABLED CONDSTORE QRESYNC\r\n"),
        (r.enabled([]), b"* ENABLED\r\n"),
        (r.search([2, 3, 6]), b"* SEARCH 2 3 6\r\n"),
        (r.search([]), b"* SEARCH\r\n"),
        (r.search([2, 5], modseq=917162500), b"* SEARCH 2 5 (MODSEQ 917162500)\r\n"),
        (
            r.esearch("A282", min_=2, count=3),
            b'* ESEARCH (TAG "A282") MIN 2 COUNT 3\r\n',
        ),
        (
            r.esearch("A283", uid=True, all_=[2, 10, 11, 12, 13, 14, 15, 44], max_=44),
            b'* ESEARCH (TAG "A283") UID MAX 44 ALL 2,10:15,44\r\n',
        ),
        (r.esearch("A284", all_=[], count=0), b'* ESEARCH (TAG "A284") COUNT 0\r\n'),
        (r.esearch(None, count=1, modseq=5), b"* ESEARCH COUNT 1 MODSEQ 5\r\n"),
        (
            r.list_item(["\\HasNoChildren", "\\Sent"], "/", "Sent"),
            b'* LIST (\\HasNoChildren \\Sent) "/" "Sent"\r\n',
        ),
        (r.list_item(["\\Noselect"], None, ""), b'* LIST (\\Noselect) NIL ""\r\n'),
        (
            r.list_item([], "/", "Corbeille/\u00e9t\u00e9"),
            b'* LIST () "/" "Corbeille/&AOk-t&AOk-"\r\n',
        ),
        (
            r.list_item([], "/", "\u00e9t\u00e9", utf8=True),
            '* LIST () "/" "\u00e9t\u00e9"\r\n'.encode(),
        ),
        (r.list_item([], "\\", 'a"b\\c'), b'* LIST () "\\\\" "a\\"b\\\\c"\r\n'),
        (r.list_item([], ".", "x", command="LSUB"), b'* LSUB () "." "x"\r\n'),
        (
            r.status("blurdybloop", [("MESSAGES", 231), ("UIDNEXT", 44292)]),
            b'* STATUS "blurdybloop" (MESSAGES 231 UIDNEXT 44292)\r\n',
        ),
        (
            r.fetch(
                12,
                [
                    ("UID", r.number(4827313)),
                    ("FLAGS", r.flag_list(["\\Seen"])),
                    (
                        "INTERNALDATE",
                        r.date_time(
                            dt.datetime(
                                1996, 7, 17, 2, 44, 25, tzinfo=dt.timezone(-dt.timedelta(hours=7))
                            )
                        ),
                    ),
                    ("RFC822.SIZE", r.number(4286)),
                    ("MODSEQ", b"(624140003)"),
                ],
            ),
            b'* 12 FETCH (UID 4827313 FLAGS (\\Seen) INTERNALDATE "17-Jul-1996 02:44:25 -0700" '
            b"RFC822.SIZE 4286 MODSEQ (624140003))\r\n",
        ),
        (
            r.fetch(
                1, [("INTERNALDATE", r.date_time(dt.datetime(2024, 3, 5, 9, 0, 0, tzinfo=dt.UTC)))]
            ),
            b'* 1 FETCH (INTERNALDATE " 5-Mar-2024 09:00:00 +0000")\r\n',
        ),
        (
            r.fetch(2, [("BODY[HEADER.FIELDS (FROM)]", r.string(b"From: a@b\r\n\r\n"))]),
            b"* 2 FETCH (BODY[HEADER.FIELDS (FROM)] {13}\r\nFrom: a@b\r\n\r\n)\r\n",
        ),
        (
            r.fetch(3, [("BINARY[1]", r.literal8(b"\x00\x01")), ("BODY[1]", r.nstring(None))]),
            b"* 3 FETCH (BINARY[1] ~{2}\r\n\x00\x01 BODY[1] NIL)\r\n",
        ),
    ],
)
def test_untagged(built: bytes, wire: bytes) -> None:
    assert built == wire


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (b"", b'""'),
        (b"hello world", b'"hello world"'),
        (b'say "hi"', b'"say \\"hi\\""'),
        (b"back\\slash", b'"back\\\\slash"'),
        (b"two\r\nlines", b"{10}\r\ntwo\r\nlines"),
        (b"caf\xc3\xa9", b"{5}\r\ncaf\xc3\xa9"),
        (b"x" * 1025, b"{1025}\r\n" + b"x" * 1025),
        ("\u00e9t\u00e9", b"{5}\r\n\xc3\xa9t\xc3\xa9"),
    ],
)
def test_string_quoted_or_literal(value: bytes | str, wire: bytes) -> None:
    assert r.string(value) == wire


def test_strings_with_utf8_enabled() -> None:
    assert r.string(b"caf\xc3\xa9", utf8=True) == b'"caf\xc3\xa9"'
    assert r.string(b"caf\xe9", utf8=True) == b"{4}\r\ncaf\xe9"  # not UTF-8: literal
    assert r.nstring(None) == b"NIL"
    assert r.astring("INBOX") == b"INBOX"
    assert r.astring("nil") == b'"nil"'
    assert r.astring("a b") == b'"a b"'
    assert r.astring("") == b'""'


# --- round trips ------------------------------------------------------------------------------

numbers = st.lists(st.integers(1, MAX_NUMBER), min_size=1, max_size=40)


@given(numbers)
def test_sequence_set_format_then_parse(values: list[int]) -> None:
    text = format_numbers(values)
    parsed = one_command(b"a UID FETCH " + text.encode() + b" UID\r\n")
    assert isinstance(parsed, Fetch)
    assert parsed.sequence == SequenceSet.of(values)
    assert str(parsed.sequence) == text
    assert parsed.sequence.resolve(MAX_NUMBER) == compress(values)


@given(
    st.lists(
        st.tuples(st.integers(1, 500), st.integers(1, 500) | st.just(0)), min_size=1, max_size=20
    )
)
def test_parsed_sequence_sets_print_back_identically(pairs: list[tuple[int, int]]) -> None:
    text = ",".join(f"{a}" if b in (0, a) else f"{a}:{'*' if b == 500 else b}" for a, b in pairs)
    parsed = one_command(f"a FETCH {text} FLAGS\r\n".encode())
    assert parsed == Fetch("a", parsed.sequence, (FetchAttr("FLAGS"),))  # type: ignore[union-attr]
    assert isinstance(parsed, Fetch) and str(parsed.sequence) == text


@settings(max_examples=200)
@given(st.binary(max_size=200).filter(lambda b: b"\x00" not in b), st.booleans())
def test_string_serialisation_then_parse(value: bytes, utf8: bool) -> None:
    """What `string` writes, the parser reads back as the same octets (as a LOGIN password)."""
    try:
        password = value.decode("utf-8")
    except UnicodeDecodeError:
        return  # LOGIN wants UTF-8; the octet-exactness is checked below with SEARCH
    wire = b"a LOGIN u " + r.string(value, utf8=utf8) + b"\r\n"
    assert one_command(wire) == Login("a", "u", password)


@settings(max_examples=200)
@given(st.binary(max_size=200).filter(lambda b: b"\x00" not in b))
def test_string_octets_round_trip(value: bytes) -> None:
    from mssante.operator.imap.commands import Search, TextKey

    wire = b"a SEARCH BODY " + r.string(value) + b"\r\n"
    assert one_command(wire) == Search("a", (TextKey("BODY", value),))


@given(st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30))
def test_mailbox_name_round_trip(name: str) -> None:
    expected = "INBOX" if name.upper() == "INBOX" else name
    assert one_command(b"a SELECT " + r.mailbox(name) + b"\r\n") == Select("a", expected)
    assert one_command(b"a SELECT " + r.mailbox(name, utf8=True) + b"\r\n", utf8=True) == Select(
        "a", expected
    )


@given(
    st.datetimes(
        min_value=dt.datetime(1000, 1, 1),
        max_value=dt.datetime(9999, 12, 31),
        timezones=st.sampled_from(
            [
                dt.UTC,
                dt.timezone(dt.timedelta(hours=-7, minutes=-30)),
                dt.timezone(dt.timedelta(hours=14)),
            ]
        ),
    ).map(lambda d: d.replace(microsecond=0))
)
def test_date_time_round_trip(value: dt.datetime) -> None:
    from mssante.operator.imap.commands import Append, AppendMessage

    wire = b"a APPEND INBOX " + r.date_time(value) + b" {1}\r\nx\r\n"
    parsed = one_command(wire)
    assert parsed == Append("a", "INBOX", (AppendMessage(b"x", (), value),))
    assert isinstance(parsed, Append)
    assert parsed.messages[0].internal_date.utcoffset() == value.utcoffset()  # type: ignore[union-attr]
