"""The command reader as a state machine: literals, continuations, bounds, modes."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from imap_helpers import drive
from test_imap_commands import CASES
from test_imap_malformed import CORPUS

from mssante.operator.imap.commands import (
    Append,
    AppendMessage,
    Authenticate,
    Command,
    FlagKey,
    Idle,
    Login,
    Noop,
    Search,
    Select,
    StartTLS,
)
from mssante.operator.imap.limits import Limit, Limits
from mssante.operator.imap.reader import (
    CommandReader,
    IdleDone,
    NeedContinuation,
    ParseError,
    SaslResponse,
    TooBig,
)

# --- literals and continuations ---------------------------------------------------------------


def test_synchronising_literal_asks_for_continuation_first() -> None:
    r = CommandReader()
    assert r.feed(b"a LOGIN {3}\r\n") == [NeedContinuation("a", 3)]
    assert r.feed(b"jo") == []
    assert r.feed(b"e {6}\r\n") == [NeedContinuation("a", 6)]
    assert r.feed(b"secret\r\n") == [Login("a", "joe", "secret")]


def test_non_synchronising_literal_needs_no_continuation() -> None:
    assert CommandReader().feed(b"a LOGIN {3+}\r\njoe {6+}\r\nsecret\r\n") == [
        Login("a", "joe", "secret")
    ]


def test_zero_length_synchronising_literal() -> None:
    r = CommandReader()
    assert r.feed(b"a LOGIN {0}\r\n") == [NeedContinuation("a", 0)]
    assert r.feed(b" x\r\n") == [Login("a", "", "x")]


def test_literal8_in_append_is_synchronising() -> None:
    r = CommandReader()
    assert r.feed(b"a APPEND INBOX ~{4}\r\n") == [NeedContinuation("a", 4)]
    assert r.feed(b"\x00\x01\r\n\r\n") == [
        Append("a", "INBOX", (AppendMessage(b"\x00\x01\r\n", binary=True),))
    ]


def test_literal_marker_inside_quotes_is_not_a_literal() -> None:
    r = CommandReader()
    assert r.feed(b'a LOGIN x "{3}"\r\n') == [Login("a", "x", "{3}")]
    assert r.feed(b'a LOGIN x "\\" {3}\r\n') == [ParseError("a", "invalid quoted string")]


def test_refused_literal_drops_the_command() -> None:
    r = CommandReader()
    assert r.feed(b"a APPEND Nope {100}\r\n") == [NeedContinuation("a", 100)]
    r.refuse_literal()  # the server answered "a NO [TRYCREATE]" instead of "+"
    assert r.feed(b"b NOOP\r\n") == [Noop("b")]
    with pytest.raises(RuntimeError):
        r.refuse_literal()


# --- feeding in pieces ------------------------------------------------------------------------

STREAM = b"".join(wire for wire, _ in CASES) + b"".join(wire for wire, _ in CORPUS)


def test_one_byte_at_a_time_is_the_same_as_all_at_once() -> None:
    whole = drive(CommandReader(), [STREAM])
    assert drive(CommandReader(), [STREAM[i : i + 1] for i in range(len(STREAM))]) == whole
    assert sum(not isinstance(e, NeedContinuation | ParseError) for e in whole) == len(CASES)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_split_is_the_same_as_all_at_once(data: st.DataObject) -> None:
    cases = data.draw(st.lists(st.sampled_from(CASES + CORPUS), min_size=1, max_size=12))
    stream = b"".join(c[0] for c in cases)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(stream)), max_size=20)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert drive(CommandReader(), chunks) == drive(CommandReader(), [stream])


# --- bounds -----------------------------------------------------------------------------------

SMALL = Limits(
    max_line=100,
    max_literal=50,
    max_nonsync_literal=10,
    max_literal_total=60,
    max_literals=3,
    max_depth=3,
    max_list_items=3,
    max_sequence_ranges=3,
    max_search_keys=4,
    max_errors=100,
)
NEXT = b"z NOOP\r\n"


def events_of(data: bytes, limits: Limits = SMALL, *, bytewise: bool = False) -> list[object]:
    chunks = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    return list(drive(CommandReader(limits), chunks))


@pytest.mark.parametrize("bytewise", [False, True])
@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        # LITERAL- (rfc/7888 §4): the literal is refused, skipped, and reading goes on.
        (b"a LOGIN {11+}\r\nabcdefghijk x\r\n", [TooBig("a", Limit.NONSYNC_LITERAL)]),
        (b"a LOGIN {51}\r\n", [TooBig("a", Limit.LITERAL)]),
        (
            b"a APPEND x {40}\r\n" + b"m" * 40 + b" {21}\r\n",
            [NeedContinuation("a", 40), TooBig("a", Limit.LITERAL_TOTAL)],
        ),
        (
            b"a APPEND x {1+}\r\nm {1+}\r\nm {1+}\r\nm {1}\r\n",
            [TooBig("a", Limit.LITERAL_COUNT)],
        ),
        (b"a LOGIN " + b"x" * 100 + b" y\r\n", [TooBig("a", Limit.LINE)]),
        (b"a LOGIN {1+}\r\nx " + b"y" * 90 + b"\r\n", [TooBig("a", Limit.LINE)]),
        (b"a SEARCH ((((SEEN))))\r\n", [TooBig("a", Limit.DEPTH)]),
        (b"a SEARCH NOT NOT NOT NOT SEEN\r\n", [TooBig("a", Limit.DEPTH)]),
        (b"a FETCH 1 BODY[1.2.3.4]\r\n", [TooBig("a", Limit.DEPTH)]),
        (b"a FETCH 1 (FLAGS UID ENVELOPE BODY)\r\n", [TooBig("a", Limit.LIST_ITEMS)]),
        (b"a STORE 1 +FLAGS a b c d\r\n", [TooBig("a", Limit.LIST_ITEMS)]),
        (b"a ENABLE A B C D\r\n", [TooBig("a", Limit.LIST_ITEMS)]),
        (b"a FETCH 1,2,3,4 FLAGS\r\n", [TooBig("a", Limit.SEQUENCE_RANGES)]),
        (b"a SEARCH SEEN SEEN SEEN SEEN SEEN\r\n", [TooBig("a", Limit.SEARCH_KEYS)]),
        (b"a SEARCH OR OR SEEN SEEN SEEN\r\n", [TooBig("a", Limit.SEARCH_KEYS)]),
    ],
)
def test_every_bound_is_refused_and_reading_goes_on(
    wire: bytes, expected: list[object], bytewise: bool
) -> None:
    assert events_of(wire + NEXT, bytewise=bytewise) == [*expected, Noop("z")]


def test_within_bounds_is_accepted() -> None:
    assert events_of(b"a LOGIN {10+}\r\nabcdefghij x\r\n") == [Login("a", "abcdefghij", "x")]
    assert events_of(b"a SEARCH (((SEEN)))\r\n") == [Search("a", (FlagKey("SEEN"),))]


def test_overlong_line_is_refused_before_it_ends() -> None:
    r = CommandReader(SMALL)
    assert r.feed(b"a LOGIN " + b"x" * 200) == [TooBig("a", Limit.LINE)]
    assert r.feed(b"y" * 10_000) == []
    assert r.pending <= 32  # what is dropped is not kept
    assert r.feed(b" z\r\n" + NEXT) == [Noop("z")]


def test_overlong_line_ending_in_a_nonsync_literal_skips_it() -> None:
    events = events_of(b"a LOGIN " + b"x" * 200 + b" {5+}\r\n12345 rest\r\n" + NEXT)
    assert events == [TooBig("a", Limit.LINE), Noop("z")]


def test_nonsync_literal_too_big_to_skip_closes() -> None:
    r = CommandReader(SMALL)
    assert r.feed(b"a APPEND x {51+}\r\n" + b"m" * 51 + b"\r\n" + NEXT) == [
        TooBig("a", Limit.LITERAL, close=True)
    ]
    assert r.closed
    assert r.feed(NEXT) == []


def test_huge_literal_number() -> None:
    assert events_of(b"a LOGIN {99999999999999999999}\r\n" + NEXT) == [
        TooBig("a", Limit.LITERAL),
        Noop("z"),
    ]
    assert events_of(b"a LOGIN {99999999999999999999+}\r\n") == [
        TooBig("a", Limit.LITERAL, close=True)
    ]


def test_consecutive_errors_close_and_a_good_command_resets_the_count() -> None:
    r = CommandReader(Limits(max_errors=3))
    assert r.feed(b"a FOO\r\nb FOO\r\nc NOOP\r\nd FOO\r\ne FOO\r\n") == [
        ParseError("a", "unknown command"),
        ParseError("b", "unknown command"),
        Noop("c"),
        ParseError("d", "unknown command"),
        ParseError("e", "unknown command"),
    ]
    assert r.feed(b"f FOO\r\ng NOOP\r\n") == [ParseError("f", "unknown command", close=True)]
    assert r.closed and r.feed(b"h NOOP\r\n") == []


# --- modes: AUTHENTICATE, IDLE, STARTTLS ------------------------------------------------------


def test_authenticate_exchange() -> None:
    r = CommandReader()
    assert r.feed(b"a AUTHENTICATE PLAIN\r\nAGpvZQBzZWNyZXQ=\r\n") == [Authenticate("a", "PLAIN")]
    assert r.paused and r.pending > 0
    assert r.feed(b"") == []  # nothing moves until the server says
    assert r.expect_sasl_response("a") == [SaslResponse("a", b"\x00joe\x00secret")]
    assert r.paused
    assert r.feed(b"\r\n") == []
    assert r.expect_sasl_response("a") == [SaslResponse("a", b"")]
    assert r.expect_sasl_response("a") == []
    assert r.feed(b"*\r\n") == [SaslResponse("a", None)]
    assert r.expect_sasl_response("a") == []
    assert r.feed(b"not base64!\r\n") == [ParseError("a", "invalid base64 in SASL response")]
    assert r.resume() == []
    assert r.feed(b"b NOOP\r\n") == [Noop("b")]


def test_sasl_ir() -> None:
    r = CommandReader()
    assert r.feed(b"a AUTHENTICATE PLAIN AGpvZQBzZWNyZXQ=\r\nb NOOP\r\n") == [
        Authenticate("a", "PLAIN", b"\x00joe\x00secret")
    ]
    assert r.resume() == [Noop("b")]


def test_idle_done() -> None:
    r = CommandReader()
    assert r.feed(b"a IDLE\r\nDONE\r\nb NOOP\r\n") == [Idle("a")]
    assert r.expect_idle_done("a") == [IdleDone("a"), Noop("b")]
    assert r.feed(b"c IDLE\r\n") == [Idle("c")]
    assert r.expect_idle_done("c") == []
    assert r.feed(b"done\r\n") == [IdleDone("c")]
    r.feed(b"d IDLE\r\n")
    assert r.expect_idle_done("d") == []
    assert r.feed(b"e NOOP\r\nf NOOP\r\n") == [ParseError("d", "expected DONE"), Noop("f")]


def test_starttls_pauses_so_injected_commands_can_be_dropped() -> None:
    r = CommandReader()
    assert r.feed(b"a STARTTLS\r\nb LOGIN joe secret\r\n") == [StartTLS("a")]
    assert r.pending == len(b"b LOGIN joe secret\r\n")
    assert r.discard_pending() == len(b"b LOGIN joe secret\r\n")
    assert r.resume() == []
    assert r.feed(b"c NOOP\r\n") == [Noop("c")]


def test_pending_bytes_are_bounded_while_paused() -> None:
    r = CommandReader(SMALL)
    assert r.feed(b"a IDLE\r\n") == [Idle("a")]
    assert r.feed(b"x" * 101) == [TooBig(None, Limit.PENDING, close=True)]
    assert r.closed


def test_overlong_lines_in_modes() -> None:
    r = CommandReader(SMALL)
    r.feed(b"a IDLE\r\n")
    r.expect_idle_done("a")
    assert r.feed(b"D" * 150) == [TooBig("a", Limit.LINE)]
    assert r.feed(b"ONE\r\nb NOOP\r\n") == [Noop("b")]
    r.feed(b"c AUTHENTICATE PLAIN\r\n")
    r.expect_sasl_response("c")
    assert r.feed(b"A" * 150 + b"\r\n") == [TooBig("c", Limit.LINE)]
    assert r.paused


def test_mode_switches_need_a_pause() -> None:
    r = CommandReader()
    with pytest.raises(RuntimeError):
        r.resume()
    with pytest.raises(RuntimeError):
        r.expect_idle_done("a")
    with pytest.raises(RuntimeError):
        r.expect_sasl_response("a")


def test_enable_utf8_switches_mailbox_decoding() -> None:
    r = CommandReader()
    [error] = r.feed(b'a SELECT "\xc3\xa9"\r\n')
    assert isinstance(error, ParseError) and error.tag == "a"
    r.enable_utf8()
    assert r.feed(b'a SELECT "\xc3\xa9"\r\n') == [Select("a", "é")]


# --- never raises -----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=10))
def test_random_bytes_only_produce_events(chunks: list[bytes]) -> None:
    r = CommandReader(SMALL)
    for chunk in chunks:
        for event in r.feed(chunk):
            assert isinstance(event, Command | NeedContinuation | ParseError | TooBig)
            if isinstance(event, ParseError | TooBig) and event.tag is not None:
                assert event.tag.encode() in b"".join(chunks)
        if r.paused:
            r.resume()


TOKENS = [
    b"a ",
    b"UID ",
    b"FETCH ",
    b"SEARCH ",
    b"APPEND ",
    b"LOGIN ",
    b"SELECT ",
    b"STORE ",
    b"LIST ",
    b"(",
    b")",
    b" ",
    b"{3}\r\n",
    b"{2+}\r\n",
    b"~{1}\r\n",
    b'"',
    b"\\",
    b"*",
    b"$",
    b"1:*",
    b"1,2",
    b"BODY[",
    b"]",
    b"<0.5>",
    b"NOT ",
    b"OR ",
    b"\r\n",
    b"\n",
    b"INBOX",
    b"&AOk-",
    b"\x00",
    b"\xff",
    b"+FLAGS ",
    b"\\Seen",
    b"RETURN ",
    b"CHARSET ",
    b"NIL",
    b"AUTHENTICATE PLAIN ",
    b"IDLE",
    b"DONE",
    b"=",
    b"AGpvZQ==",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=40), st.integers(1, 7))
def test_grammar_shaped_noise_only_produces_events(tokens: list[bytes], step: int) -> None:
    data = b"".join(tokens)
    r = CommandReader(SMALL)
    for i in range(0, len(data), step):
        r.feed(data[i : i + step])
        if r.paused:
            r.resume()


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        Limits(max_line=0)
    with pytest.raises(ValueError):
        Limits(max_literal=100, max_nonsync_literal=200)


def test_literal_marker_edge_cases() -> None:
    assert events_of(b"a LOGIN x}\r\n" + NEXT) == [ParseError("a", "expected a space"), Noop("z")]
    assert events_of(b"a LOGIN x {3}}\r\n" + NEXT)[-1] == Noop("z")
    assert events_of(b"a LOGIN x ~{3}\r\n") == [NeedContinuation("a", 3)]
