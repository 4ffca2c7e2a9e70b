"""A corpus of malformed commands: each one gets a ParseError (with its tag when one could be
read) and the reader goes on with the next command."""

from __future__ import annotations

import pytest
from imap_helpers import drive

from mssante.operator.imap.commands import Noop
from mssante.operator.imap.reader import CommandReader, NeedContinuation, ParseError

T = "t1"

# (wire bytes, the tag the error must carry)
CORPUS: list[tuple[bytes, str | None]] = [
    # tags and command names
    (b"\r\n", None),
    (b" NOOP\r\n", None),
    (b"NOOP\r\n", None),
    (b"+ NOOP\r\n", None),
    (b"a+b NOOP\r\n", None),
    (b"* NOOP\r\n", None),
    (b"a(b NOOP\r\n", None),
    (b'"a" NOOP\r\n', None),
    (b"{3+}\r\nabc NOOP\r\n", None),
    (b"\xc3\xa9 NOOP\r\n", None),
    (b"t1\r\n", None),
    (b"t1 \r\n", T),
    (b"t1  NOOP\r\n", T),
    (b"t1 FOO\r\n", T),
    (b"t1 NOOP2\r\n", T),
    (b"t1 NOOP \r\n", T),
    (b"t1 NOOP x\r\n", T),
    (b"t1 NOOP\r\r\n", T),
    (b"t1 NO\x00OP\r\n", T),
    (b"t1 UID NOOP\r\n", T),
    (b"t1 UID\r\n", T),
    (b"t1 UID SELECT INBOX\r\n", T),
    (b"t1 CAPABILITY extra\r\n", T),
    (b"t1 LOGOUT\tx\r\n", T),
    # strings, literals
    (b"t1 LOGIN\r\n", T),
    (b"t1 LOGIN joe\r\n", T),
    (b"t1 LOGIN joe \r\n", T),
    (b"""t1 LOGIN "joe secret\r\n""", T),
    (b't1 LOGIN "jo\\e" x\r\n', T),
    (b't1 LOGIN "joe"x y\r\n', T),
    (b"t1 LOGIN joe (x)\r\n", T),
    (b"t1 LOGIN joe {3}x\r\n", T),
    (b"t1 LOGIN joe {3} \r\n", T),
    (b"t1 LOGIN {3}\r\njoe\r\n", T),
    (b"t1 LOGIN joe {3}\r\nabcd\r\n", T),
    (b"t1 LOGIN joe {1}\r\n\x00\r\n", T),
    (b"t1 LOGIN joe ~{3}\r\nabc\r\n", T),
    (b"""t1 LOGIN "\xff" x\r\n""", T),
    (b"t1 LOGIN {2}\r\n\xff\xfe x\r\n", T),
    (b"t1 LOGIN joe x y\r\n", T),
    # AUTHENTICATE, ENABLE, ID
    (b"t1 AUTHENTICATE\r\n", T),
    (b"t1 AUTHENTICATE PLAIN AGpvZQ\r\n", T),
    (b"t1 AUTHENTICATE PLAIN ==\r\n", T),
    (b"t1 AUTHENTICATE PLAIN a*b=\r\n", T),
    (b"t1 AUTHENTICATE PLAIN = x\r\n", T),
    (b"t1 ENABLE\r\n", T),
    (b"t1 ENABLE (CONDSTORE)\r\n", T),
    (b"t1 ID\r\n", T),
    (b"""t1 ID ("name")\r\n""", T),
    (b"""t1 ID (name "x")\r\n""", T),
    (b"""t1 ID ("a" "b"\r\n""", T),
    (b"t1 ID (" + b'"f" "v" ' * 31 + b")\r\n", T),
    (b'''t1 ID ("''' + b"f" * 31 + b"""" "v")\r\n""", T),
    # SELECT, CREATE, mailbox names
    (b"t1 SELECT\r\n", T),
    (b"t1 SELECT (INBOX)\r\n", T),
    (b"t1 SELECT INBOX ()\r\n", T),
    (b"t1 SELECT INBOX (FOO)\r\n", T),
    (b"t1 SELECT INBOX (CONDSTORE CONDSTORE)\r\n", T),
    (b"t1 SELECT INBOX (QRESYNC)\r\n", T),
    (b"t1 SELECT INBOX (QRESYNC (0 5))\r\n", T),
    (b"t1 SELECT INBOX (QRESYNC (1 0))\r\n", T),
    (b"t1 SELECT INBOX (QRESYNC (1 2 1:*))\r\n", T),
    (b"t1 SELECT INBOX (QRESYNC (1 2 1:3 (1)))\r\n", T),
    (b"t1 SELECT INBOX (QRESYNC (1 2 1:3 4))\r\n", T),
    (b"t1 SELECT &AGE-\r\n", T),
    (b"t1 SELECT &AOk\r\n", T),
    (b"""t1 SELECT "caf\xc3\xa9"\r\n""", T),
    (b"t1 SELECT {3}\r\na\r\nb\r\n", T),
    (b"t1 SELECT &AAk-\r\n", T),
    (b"t1 SELECT a%b\r\n", T),
    (b"t1 SELECT a*b\r\n", T),
    (b"t1 CREATE x (USE)\r\n", T),
    (b"t1 CREATE x (USE (Sent))\r\n", T),
    (b"t1 CREATE x (FOO (\\Sent))\r\n", T),
    (b"t1 RENAME a\r\n", T),
    (b"t1 DELETE\r\n", T),
    # LIST, STATUS
    (b"t1 LIST\r\n", T),
    (b"""t1 LIST ""\r\n""", T),
    (b"""t1 LIST "" ()\r\n""", T),
    (b"""t1 LIST (FOO) "" *\r\n""", T),
    (b"""t1 LIST (RECURSIVEMATCH) "" *\r\n""", T),
    (b"""t1 LIST (RECURSIVEMATCH REMOTE) "" *\r\n""", T),
    (b"""t1 LIST "" * RETURN\r\n""", T),
    (b"""t1 LIST "" * RETURN (FOO)\r\n""", T),
    (b"""t1 LIST "" * RETURN (STATUS ())\r\n""", T),
    (b"""t1 LIST "" * RETURN (STATUS (MESSAGES) STATUS (UNSEEN))\r\n""", T),
    (b"""t1 LIST "" * EXTRA (CHILDREN)\r\n""", T),
    (b"t1 STATUS INBOX\r\n", T),
    (b"t1 STATUS INBOX ()\r\n", T),
    (b"t1 STATUS INBOX (FOO)\r\n", T),
    (b"t1 STATUS INBOX MESSAGES\r\n", T),
    # APPEND
    (b"t1 APPEND INBOX\r\n", T),
    (b"t1 APPEND INBOX hello\r\n", T),
    (b"""t1 APPEND INBOX "hello"\r\n""", T),
    (b"t1 APPEND INBOX (\\Seen)\r\n", T),
    (b"t1 APPEND INBOX (\\Seen {1}\r\nx\r\n", T),
    (b"""t1 APPEND INBOX "32-Jan-2024 00:00:00 +0000" {1}\r\nx\r\n""", T),
    (b"""t1 APPEND INBOX "01-Foo-2024 00:00:00 +0000" {1}\r\nx\r\n""", T),
    (b"""t1 APPEND INBOX "01-Jan-2024 24:00:00 +0000" {1}\r\nx\r\n""", T),
    (b"""t1 APPEND INBOX "01-Jan-2024 00:00:00 +0060" {1}\r\nx\r\n""", T),
    (b"""t1 APPEND INBOX "01-Jan-2024 00:00:00" {1}\r\nx\r\n""", T),
    (b"t1 APPEND INBOX {1}\r\nx y\r\n", T),
    (b"t1 APPEND INBOX {1}\r\nx \r\n", T),
    (b"t1 APPEND INBOX {1}\r\n\x00\r\n", T),
    (b"t1 APPEND INBOX (\\*) {1}\r\nx\r\n", T),
    # sequence sets
    (b"t1 FETCH 0 FLAGS\r\n", T),
    (b"t1 FETCH 01 FLAGS\r\n", T),
    (b"t1 FETCH 4294967296 FLAGS\r\n", T),
    (b"t1 FETCH 1: FLAGS\r\n", T),
    (b"t1 FETCH :1 FLAGS\r\n", T),
    (b"t1 FETCH 1:2:3 FLAGS\r\n", T),
    (b"t1 FETCH 1,,2 FLAGS\r\n", T),
    (b"t1 FETCH 1, FLAGS\r\n", T),
    (b"t1 FETCH 1,$ FLAGS\r\n", T),
    (b"t1 FETCH $$ FLAGS\r\n", T),
    (b"t1 FETCH ** FLAGS\r\n", T),
    (b"t1 FETCH -1 FLAGS\r\n", T),
    (b"t1 FETCH a FLAGS\r\n", T),
    # FETCH items
    (b"t1 FETCH 1\r\n", T),
    (b"t1 FETCH 1 ()\r\n", T),
    (b"t1 FETCH 1 FOO\r\n", T),
    (b"t1 FETCH 1 (FLAGS\r\n", T),
    (b"t1 FETCH 1 FLAGS)\r\n", T),
    (b"t1 FETCH 1 (ALL)\r\n", T),
    (b"t1 FETCH 1 BODY[\r\n", T),
    (b"t1 FETCH 1 BODY[FOO]\r\n", T),
    (b"t1 FETCH 1 BODY[MIME]\r\n", T),
    (b"t1 FETCH 1 BODY[0]\r\n", T),
    (b"t1 FETCH 1 BODY[1.]\r\n", T),
    (b"t1 FETCH 1 BODY[HEADER.FIELDS]\r\n", T),
    (b"t1 FETCH 1 BODY[HEADER.FIELDS ()]\r\n", T),
    (b"t1 FETCH 1 BODY[HEADER.FIELDS (a:b)]\r\n", T),
    (b"t1 FETCH 1 BODY[TEXT (From)]\r\n", T),
    (b"t1 FETCH 1 BODY[]<0>\r\n", T),
    (b"t1 FETCH 1 BODY[]<0.0>\r\n", T),
    (b"t1 FETCH 1 BODY[]<.5>\r\n", T),
    (b"t1 FETCH 1 BODY.PEEK\r\n", T),
    (b"t1 FETCH 1 BINARY\r\n", T),
    (b"t1 FETCH 1 BINARY[TEXT]\r\n", T),
    (b"t1 FETCH 1 BINARY.SIZE[1]<0.1>\r\n", T),
    (b"t1 FETCH 1 FLAGS (VANISHED)\r\n", T),
    (b"t1 UID FETCH 1 FLAGS (VANISHED)\r\n", T),
    (b"t1 FETCH 1 FLAGS (CHANGEDSINCE 1 VANISHED)\r\n", T),
    (b"t1 FETCH 1 FLAGS (CHANGEDSINCE 0)\r\n", T),
    (b"t1 FETCH 1 FLAGS (CHANGEDSINCE 9223372036854775808)\r\n", T),
    (b"t1 FETCH 1 FLAGS (CHANGEDSINCE 1 CHANGEDSINCE 2)\r\n", T),
    (b"t1 FETCH 1 FLAGS (FOO)\r\n", T),
    (b"t1 FETCH 1 FLAGS ()\r\n", T),
    # STORE
    (b"t1 STORE 1 FLAGS\r\n", T),
    (b"t1 STORE 1 +FLAGS\r\n", T),
    (b"t1 STORE 1 *FLAGS (\\Seen)\r\n", T),
    (b"t1 STORE 1 FLAGS.LOUD (\\Seen)\r\n", T),
    (b"t1 STORE 1 +FLAGS (\\Seen\r\n", T),
    (b"t1 STORE 1 +FLAGS \\*\r\n", T),
    (b"t1 STORE 1 +FLAGS (\\)\r\n", T),
    (b"t1 STORE 1 (UNCHANGEDSINCE) +FLAGS \\Seen\r\n", T),
    (b"t1 STORE 1 (FOO 1) +FLAGS \\Seen\r\n", T),
    (b"t1 STORE 1 (UNCHANGEDSINCE 1 UNCHANGEDSINCE 2) +FLAGS \\Seen\r\n", T),
    # SEARCH
    (b"t1 SEARCH\r\n", T),
    (b"t1 SEARCH FOO\r\n", T),
    (b"t1 SEARCH ()\r\n", T),
    (b"t1 SEARCH (SEEN\r\n", T),
    (b"t1 SEARCH SEEN)\r\n", T),
    (b"t1 SEARCH NOT\r\n", T),
    (b"t1 SEARCH OR SEEN\r\n", T),
    (b"t1 SEARCH FROM\r\n", T),
    (b"t1 SEARCH BEFORE 31-Feb-2024\r\n", T),
    (b"t1 SEARCH BEFORE 1-Feb-24\r\n", T),
    (b"t1 SEARCH BEFORE 1/2/2024\r\n", T),
    (b"""t1 SEARCH ON "1-Feb-2024\r\n""", T),
    (b"t1 SEARCH LARGER x\r\n", T),
    (b"t1 SEARCH LARGER 9223372036854775808\r\n", T),
    (b"t1 SEARCH KEYWORD \\Seen\r\n", T),
    (b"t1 SEARCH HEADER\r\n", T),
    (b"t1 SEARCH HEADER Subject\r\n", T),
    (b"""t1 SEARCH HEADER "Sub ject" x\r\n""", T),
    (b"t1 SEARCH UID\r\n", T),
    (b"t1 SEARCH UID x\r\n", T),
    (b"t1 SEARCH MODSEQ\r\n", T),
    (b"""t1 SEARCH MODSEQ "/flags/" all 1\r\n""", T),
    (b"""t1 SEARCH MODSEQ "/other/x" all 1\r\n""", T),
    (b"""t1 SEARCH MODSEQ "/flags/x" mine 1\r\n""", T),
    (b"t1 SEARCH CHARSET\r\n", T),
    (b"t1 SEARCH CHARSET UTF-8\r\n", T),
    (b"t1 SEARCH RETURN (FOO) ALL\r\n", T),
    (b"t1 SEARCH RETURN ALL\r\n", T),
    (b"t1 SEARCH RETURN (MIN)\r\n", T),
    (b"t1 SEARCH ALL CHARSET UTF-8\r\n", T),
    # EXPUNGE, COPY, MOVE, quota
    (b"t1 EXPUNGE 1\r\n", T),
    (b"t1 UID EXPUNGE\r\n", T),
    (b"t1 COPY 1\r\n", T),
    (b"t1 COPY INBOX 1\r\n", T),
    (b"t1 MOVE 1 \r\n", T),
    (b"t1 GETQUOTA\r\n", T),
    (b"t1 GETQUOTAROOT\r\n", T),
    (b"""t1 SETQUOTA "" STORAGE 1\r\n""", T),
    (b"""t1 SETQUOTA "" (STORAGE)\r\n""", T),
    (b"""t1 SETQUOTA "" (STORAGE x)\r\n""", T),
    (b"t1 IDLE now\r\n", T),
    (b"t1 STARTTLS please\r\n", T),
]


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 100
    assert len({wire for wire, _ in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize(("wire", "tag"), CORPUS, ids=[w[:40].decode("latin-1") for w, _ in CORPUS])
def test_malformed_then_next_command(wire: bytes, tag: str | None) -> None:
    reader = CommandReader()
    events = [
        e for e in drive(reader, [wire, b"z NOOP\r\n"]) if not isinstance(e, NeedContinuation)
    ]
    assert len(events) == 2, events
    error, after = events
    assert isinstance(error, ParseError), error
    assert error.tag == tag
    assert not error.close
    assert error.message and "\r" not in error.message and "\n" not in error.message
    assert after == Noop("z")


def test_whole_corpus_in_one_stream() -> None:
    """Pipelined: every bad command answered, every good one in between still parsed."""
    reader = CommandReader()
    data = b"".join(wire + b"z%d NOOP\r\n" % i for i, (wire, _) in enumerate(CORPUS))
    events = [e for e in drive(reader, [data]) if not isinstance(e, NeedContinuation)]
    assert len(events) == 2 * len(CORPUS)
    for i, (_, tag) in enumerate(CORPUS):
        bad, good = events[2 * i], events[2 * i + 1]
        assert isinstance(bad, ParseError) and bad.tag == tag
        assert good == Noop(f"z{i}")
