"""Byte-exact parsing of every command family into its typed value."""

from __future__ import annotations

import datetime as dt

import pytest
from imap_helpers import one_command

from mssante.operator.imap.commands import (
    AndKey,
    Append,
    AppendMessage,
    Authenticate,
    Capability,
    Check,
    Close,
    Command,
    Copy,
    Create,
    DateKey,
    Delete,
    Enable,
    Expunge,
    Fetch,
    FetchAttr,
    FetchBinary,
    FetchBinarySize,
    FetchBody,
    FlagKey,
    GetQuota,
    GetQuotaRoot,
    HeaderKey,
    Id,
    Idle,
    KeywordKey,
    List,
    Login,
    Logout,
    Lsub,
    ModSeqKey,
    Move,
    Namespace,
    Noop,
    NotKey,
    OrKey,
    Partial,
    Qresync,
    Rename,
    Search,
    Section,
    Select,
    SeqKey,
    SetQuota,
    SizeKey,
    StartTLS,
    Status,
    Store,
    StoreAction,
    Subscribe,
    TextKey,
    UidKey,
    Unselect,
    Unsubscribe,
)
from mssante.operator.imap.sequence import STAR, SeqRange, SequenceSet


def seq(*ranges: tuple[int | str, int | str] | int | str) -> SequenceSet:
    out = []
    for r in ranges:
        a, b = r if isinstance(r, tuple) else (r, r)
        out.append(SeqRange(STAR if a == "*" else int(a), STAR if b == "*" else int(b)))
    return SequenceSet(tuple(out))


SAVED = SequenceSet(saved=True)
UTC1 = dt.timezone(dt.timedelta(hours=1))
FLAGS = FetchAttr("FLAGS")
UID = FetchAttr("UID")

CASES: list[tuple[bytes, Command]] = [
    # --- any state (rfc/9051 §6.1) ----------------------------------------------------------
    (b"a CAPABILITY\r\n", Capability("a")),
    (b"a capability\r\n", Capability("a")),
    (b"A001 NOOP\r\n", Noop("A001")),
    (b"x.y-z_1 LOGOUT\r\n", Logout("x.y-z_1")),
    (b"t] noop\r\n", Noop("t]")),  # "]" is an ASTRING-CHAR, allowed in tags
    (b"a ID NIL\r\n", Id("a", None)),
    (
        b'a ID ("name" "Thunderbird" "version" NIL)\r\n',
        Id("a", (("name", "Thunderbird"), ("version", None))),
    ),
    (b"a ID ()\r\n", Id("a", ())),
    (b"a NAMESPACE\r\n", Namespace("a")),
    (b"a ENABLE CONDSTORE\r\n", Enable("a", ("CONDSTORE",))),
    (
        b"a ENABLE qresync utf8=accept IMAP4rev2\r\n",
        Enable("a", ("QRESYNC", "UTF8=ACCEPT", "IMAP4REV2")),
    ),
    # --- not authenticated (rfc/9051 §6.2) --------------------------------------------------
    (b"a STARTTLS\r\n", StartTLS("a")),
    (b"a LOGIN joe secret\r\n", Login("a", "joe", "secret")),
    (b'a LOGIN "joe" "s e\\"c\\\\r"\r\n', Login("a", "joe", 's e"c\\r')),
    (b"a LOGIN {3}\r\njoe {6+}\r\nsecret\r\n", Login("a", "joe", "secret")),
    (b'a LOGIN "j\xc3\xa9r\xc3\xb4me" x]\r\n', Login("a", "jérôme", "x]")),
    (b'a LOGIN "" ""\r\n', Login("a", "", "")),
    (b"a AUTHENTICATE PLAIN\r\n", Authenticate("a", "PLAIN")),
    (b"a authenticate plain =\r\n", Authenticate("a", "PLAIN", b"")),
    (b"a AUTHENTICATE PLAIN AGpvZQBzZWNyZXQ=\r\n", Authenticate("a", "PLAIN", b"\0joe\0secret")),
    (b"a AUTHENTICATE EXTERNAL =\r\n", Authenticate("a", "EXTERNAL", b"")),
    # --- authenticated (rfc/9051 §6.3) ------------------------------------------------------
    (b"a SELECT INBOX\r\n", Select("a", "INBOX")),
    (b"a select inbox\r\n", Select("a", "INBOX")),
    (b'a SELECT "InBox"\r\n', Select("a", "INBOX")),
    (b"a EXAMINE Archives/2024\r\n", Select("a", "Archives/2024", read_only=True)),
    (b"a SELECT Drafts (CONDSTORE)\r\n", Select("a", "Drafts", condstore=True)),
    (b"a SELECT &AOk-t&AOk-\r\n", Select("a", "été")),
    (b"a SELECT {8}\r\nA&AOk-/b\r\n", Select("a", "Aé/b")),
    (
        b"a SELECT INBOX (QRESYNC (67890007 20050715194045000))\r\n",
        Select("a", "INBOX", qresync=Qresync(67890007, 20050715194045000)),
    ),
    (
        b"a SELECT INBOX (QRESYNC (1 2 41,43:211))\r\n",
        Select("a", "INBOX", qresync=Qresync(1, 2, seq(41, (43, 211)))),
    ),
    (
        b"a EXAMINE INBOX (QRESYNC (1 2 1:9 (1,5 10,50)) CONDSTORE)\r\n",
        Select(
            "a",
            "INBOX",
            read_only=True,
            condstore=True,
            qresync=Qresync(1, 2, seq((1, 9)), seq(1, 5), seq(10, 50)),
        ),
    ),
    (
        b"a SELECT INBOX (QRESYNC (1 2 (1 10)))\r\n",
        Select("a", "INBOX", qresync=Qresync(1, 2, None, seq(1), seq(10))),
    ),
    (b"a CREATE Projets/2025\r\n", Create("a", "Projets/2025")),
    (b"a CREATE Sent (USE (\\Sent))\r\n", Create("a", "Sent", ("\\Sent",))),
    (
        b"a CREATE Pile (USE (\\archive \\junk \\X-Custom))\r\n",
        Create("a", "Pile", ("\\Archive", "\\Junk", "\\X-Custom")),
    ),
    (b"a DELETE Old\r\n", Delete("a", "Old")),
    (b'a RENAME "Old name" "New&AOk-"\r\n', Rename("a", "Old name", "Newé")),
    (b"a SUBSCRIBE Lists/imap\r\n", Subscribe("a", "Lists/imap")),
    (b"a UNSUBSCRIBE Lists/imap\r\n", Unsubscribe("a", "Lists/imap")),
    (b'a LIST "" *\r\n', List("a", "", ("*",))),
    (b'a LIST "" ""\r\n', List("a", "", ("",))),
    (b"a LIST ~/Mail/ %\r\n", List("a", "~/Mail/", ("%",))),
    (b'a LIST "" "INBOX/%/*"\r\n', List("a", "", ("INBOX/%/*",))),
    (b'a list "" inbox\r\n', List("a", "", ("INBOX",))),
    (
        b'a LIST (SUBSCRIBED) "" "*"\r\n',
        List("a", "", ("*",), frozenset({"SUBSCRIBED"}), extended=True),
    ),
    (b'a LIST () "" %\r\n', List("a", "", ("%",), extended=True)),
    (
        b'a LIST (SUBSCRIBED RECURSIVEMATCH REMOTE) "" (INBOX "Sent" %)\r\n',
        List(
            "a",
            "",
            ("INBOX", "Sent", "%"),
            frozenset({"SUBSCRIBED", "RECURSIVEMATCH", "REMOTE"}),
            extended=True,
        ),
    ),
    (
        b'a LIST (SPECIAL-USE) "" * RETURN (SPECIAL-USE)\r\n',
        List(
            "a",
            "",
            ("*",),
            frozenset({"SPECIAL-USE"}),
            return_special_use=True,
            extended=True,
        ),
    ),
    (
        b'a LIST "" % RETURN (CHILDREN SUBSCRIBED STATUS (MESSAGES UNSEEN SIZE))\r\n',
        List(
            "a",
            "",
            ("%",),
            return_subscribed=True,
            return_children=True,
            return_status=("MESSAGES", "UNSEEN", "SIZE"),
            extended=True,
        ),
    ),
    (b'a LIST "" % RETURN ()\r\n', List("a", "", ("%",), extended=True)),
    (b'a LSUB "" *\r\n', Lsub("a", "", "*")),
    (b"a LSUB #news. comp.mail.*\r\n", Lsub("a", "#news.", "comp.mail.*")),
    (
        b"a STATUS INBOX (MESSAGES UIDNEXT UIDVALIDITY UNSEEN DELETED SIZE)\r\n",
        Status("a", "INBOX", ("MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "DELETED", "SIZE")),
    ),
    (
        b"a status Sent (recent highestmodseq appendlimit)\r\n",
        Status("a", "Sent", ("RECENT", "HIGHESTMODSEQ", "APPENDLIMIT")),
    ),
    (
        b"a APPEND INBOX {5}\r\nhello\r\n",
        Append("a", "INBOX", (AppendMessage(b"hello"),)),
    ),
    (
        b'a APPEND Sent (\\Seen $MDNSent) "05-Jan-2025 09:03:07 +0100" {2+}\r\nhi\r\n',
        Append(
            "a",
            "Sent",
            (
                AppendMessage(
                    b"hi",
                    ("\\Seen", "$MDNSent"),
                    dt.datetime(2025, 1, 5, 9, 3, 7, tzinfo=UTC1),
                ),
            ),
        ),
    ),
    (
        b'a APPEND Sent " 5-Jan-2025 09:03:07 -0230" {0}\r\n\r\n',
        Append(
            "a",
            "Sent",
            (
                AppendMessage(
                    b"",
                    (),
                    dt.datetime(
                        2025, 1, 5, 9, 3, 7, tzinfo=dt.timezone(-dt.timedelta(hours=2, minutes=30))
                    ),
                ),
            ),
        ),
    ),
    (
        b"a APPEND Drafts () ~{3}\r\na\x00b\r\n",
        Append("a", "Drafts", (AppendMessage(b"a\x00b", binary=True),)),
    ),
    (  # MULTIAPPEND, rfc/3502 §6.3.11
        b"a APPEND INBOX (\\Seen) {1+}\r\nA (\\Flagged) {1+}\r\nB {1}\r\nC\r\n",
        Append(
            "a",
            "INBOX",
            (
                AppendMessage(b"A", ("\\Seen",)),
                AppendMessage(b"B", ("\\Flagged",)),
                AppendMessage(b"C"),
            ),
        ),
    ),
    (
        b"a APPEND INBOX {4}\r\n\r\n\r\n\r\n",  # literal octets are counted, CRLF included
        Append("a", "INBOX", (AppendMessage(b"\r\n\r\n"),)),
    ),
    (b"a IDLE\r\n", Idle("a")),
    (b'a GETQUOTA ""\r\n', GetQuota("a", "")),
    (b"a GETQUOTAROOT INBOX\r\n", GetQuotaRoot("a", "INBOX")),
    (
        b'a SETQUOTA "" (STORAGE 512 message 1000)\r\n',
        SetQuota("a", "", (("STORAGE", 512), ("MESSAGE", 1000))),
    ),
    (b"a SETQUOTA root ()\r\n", SetQuota("a", "root", ())),
    # --- selected (rfc/9051 §6.4) -----------------------------------------------------------
    (b"a CHECK\r\n", Check("a")),
    (b"a CLOSE\r\n", Close("a")),
    (b"a UNSELECT\r\n", Unselect("a")),
    (b"a EXPUNGE\r\n", Expunge("a")),
    (b"a UID EXPUNGE 3000:3002\r\n", Expunge("a", seq((3000, 3002)))),
    (b"a uid expunge $\r\n", Expunge("a", SAVED)),
    (b"a COPY 2:4 MEETING\r\n", Copy("a", seq((2, 4)), "MEETING")),
    (b"a UID COPY 1,3:* Trash\r\n", Copy("a", seq(1, (3, "*")), "Trash", uid=True)),
    (b"a MOVE $ Archive\r\n", Move("a", SAVED, "Archive")),
    (b'a UID MOVE 4:2 "Junk"\r\n', Move("a", seq((4, 2)), "Junk", uid=True)),
    # FETCH
    (b"a FETCH 1 FLAGS\r\n", Fetch("a", seq(1), (FLAGS,))),
    (
        b"a FETCH 1:* ALL\r\n",
        Fetch(
            "a",
            seq((1, "*")),
            (FLAGS, FetchAttr("INTERNALDATE"), FetchAttr("RFC822.SIZE"), FetchAttr("ENVELOPE")),
        ),
    ),
    (
        b"a FETCH * fast\r\n",
        Fetch("a", seq("*"), (FLAGS, FetchAttr("INTERNALDATE"), FetchAttr("RFC822.SIZE"))),
    ),
    (
        b"a FETCH 2 FULL\r\n",
        Fetch(
            "a",
            seq(2),
            (
                FLAGS,
                FetchAttr("INTERNALDATE"),
                FetchAttr("RFC822.SIZE"),
                FetchAttr("ENVELOPE"),
                FetchAttr("BODY"),
            ),
        ),
    ),
    (
        b"a UID FETCH 1:* (UID FLAGS ENVELOPE BODYSTRUCTURE RFC822.SIZE INTERNALDATE MODSEQ)\r\n",
        Fetch(
            "a",
            seq((1, "*")),
            (
                UID,
                FLAGS,
                FetchAttr("ENVELOPE"),
                FetchAttr("BODYSTRUCTURE"),
                FetchAttr("RFC822.SIZE"),
                FetchAttr("INTERNALDATE"),
                FetchAttr("MODSEQ"),
            ),
            uid=True,
        ),
    ),
    (
        b"a FETCH 1 (body rfc822 rfc822.header rfc822.text)\r\n",
        Fetch(
            "a",
            seq(1),
            (
                FetchAttr("BODY"),
                FetchAttr("RFC822"),
                FetchAttr("RFC822.HEADER"),
                FetchAttr("RFC822.TEXT"),
            ),
        ),
    ),
    (b"a FETCH 1 BODY[]\r\n", Fetch("a", seq(1), (FetchBody(Section()),))),
    (
        b"a FETCH 1 BODY.PEEK[]<0.1024>\r\n",
        Fetch("a", seq(1), (FetchBody(Section(), peek=True, partial=Partial(0, 1024)),)),
    ),
    (
        b"a FETCH 1 (BODY[HEADER] BODY[TEXT] BODY[1] BODY[1.2.3])\r\n",
        Fetch(
            "a",
            seq(1),
            (
                FetchBody(Section(text="HEADER")),
                FetchBody(Section(text="TEXT")),
                FetchBody(Section((1,))),
                FetchBody(Section((1, 2, 3))),
            ),
        ),
    ),
    (
        b"a FETCH 1 (BODY[1.MIME] body.peek[2.header] BODY[3.1.TEXT])\r\n",
        Fetch(
            "a",
            seq(1),
            (
                FetchBody(Section((1,), "MIME")),
                FetchBody(Section((2,), "HEADER"), peek=True),
                FetchBody(Section((3, 1), "TEXT")),
            ),
        ),
    ),
    (
        b'a FETCH 1 BODY.PEEK[HEADER.FIELDS (From To Subject "X-Prio")]\r\n',
        Fetch(
            "a",
            seq(1),
            (
                FetchBody(
                    Section(text="HEADER.FIELDS", headers=("From", "To", "Subject", "X-Prio")),
                    peek=True,
                ),
            ),
        ),
    ),
    (
        b"a FETCH 1 BODY[2.HEADER.FIELDS.NOT (Received)]<10.20>\r\n",
        Fetch(
            "a",
            seq(1),
            (
                FetchBody(
                    Section((2,), "HEADER.FIELDS.NOT", ("Received",)), partial=Partial(10, 20)
                ),
            ),
        ),
    ),
    (
        b"a FETCH 1 (BINARY[1] BINARY.PEEK[1.2]<0.100> BINARY.SIZE[1] BINARY[])\r\n",
        Fetch(
            "a",
            seq(1),
            (
                FetchBinary((1,)),
                FetchBinary((1, 2), peek=True, partial=Partial(0, 100)),
                FetchBinarySize((1,)),
                FetchBinary(()),
            ),
        ),
    ),
    (
        b"a FETCH 1:* (FLAGS) (CHANGEDSINCE 12345)\r\n",
        Fetch("a", seq((1, "*")), (FLAGS,), changed_since=12345),
    ),
    (
        b"a UID FETCH 300:500 (FLAGS) (CHANGEDSINCE 12345 VANISHED)\r\n",
        Fetch("a", seq((300, 500)), (FLAGS,), uid=True, changed_since=12345, vanished=True),
    ),
    (b"a FETCH 1,1 (FLAGS FLAGS)\r\n", Fetch("a", seq(1, 1), (FLAGS,))),
    (b"a FETCH 4294967295 UID\r\n", Fetch("a", seq(4294967295), (UID,))),
    # STORE
    (
        b"a STORE 2:4 +FLAGS (\\Deleted)\r\n",
        Store("a", seq((2, 4)), StoreAction.ADD, ("\\Deleted",)),
    ),
    (
        b"a STORE 1 -flags.silent \\seen\r\n",
        Store("a", seq(1), StoreAction.REMOVE, ("\\Seen",), silent=True),
    ),
    (
        b"a STORE 1 FLAGS ()\r\n",
        Store("a", seq(1), StoreAction.REPLACE, ()),
    ),
    (
        b"a UID STORE 1:* FLAGS.SILENT (\\Answered $Forwarded \\Draft)\r\n",
        Store(
            "a",
            seq((1, "*")),
            StoreAction.REPLACE,
            ("\\Answered", "$Forwarded", "\\Draft"),
            uid=True,
            silent=True,
        ),
    ),
    (
        b"a STORE 7 (UNCHANGEDSINCE 320162338) +FLAGS.SILENT \\Deleted \\Flagged\r\n",
        Store(
            "a",
            seq(7),
            StoreAction.ADD,
            ("\\Deleted", "\\Flagged"),
            silent=True,
            unchanged_since=320162338,
        ),
    ),
    (
        b"a STORE $ (UNCHANGEDSINCE 0) -FLAGS (\\Seen)\r\n",
        Store("a", SAVED, StoreAction.REMOVE, ("\\Seen",), unchanged_since=0),
    ),
    # SEARCH (rfc/9051 §6.4.4, rfc/3501 §6.4.4)
    (b"a SEARCH ALL\r\n", Search("a", (FlagKey("ALL"),))),
    (
        b"a SEARCH unseen flagged new old recent\r\n",
        Search(
            "a",
            (
                FlagKey("UNSEEN"),
                FlagKey("FLAGGED"),
                FlagKey("NEW"),
                FlagKey("OLD"),
                FlagKey("RECENT"),
            ),
        ),
    ),
    (
        b"a SEARCH ANSWERED DELETED DRAFT SEEN UNANSWERED UNDELETED UNDRAFT UNFLAGGED\r\n",
        Search(
            "a",
            tuple(
                FlagKey(n)
                for n in (
                    [
                        "ANSWERED",
                        "DELETED",
                        "DRAFT",
                        "SEEN",
                        "UNANSWERED",
                        "UNDELETED",
                        "UNDRAFT",
                        "UNFLAGGED",
                    ]
                )
            ),
        ),
    ),
    (
        b'a SEARCH FROM "Dr House" TO smith CC {3}\r\nabc BCC x SUBJECT "" BODY b TEXT t\r\n',
        Search(
            "a",
            (
                TextKey("FROM", b"Dr House"),
                TextKey("TO", b"smith"),
                TextKey("CC", b"abc"),
                TextKey("BCC", b"x"),
                TextKey("SUBJECT", b""),
                TextKey("BODY", b"b"),
                TextKey("TEXT", b"t"),
            ),
        ),
    ),
    (
        b"a SEARCH CHARSET UTF-8 SUBJECT {6}\r\ncaf\xc3\xa9!\r\n",
        Search("a", (TextKey("SUBJECT", b"caf\xc3\xa9!"),), charset="UTF-8"),
    ),
    (
        b'a SEARCH charset "iso-8859-1" BODY {4}\r\ncaf\xe9\r\n',
        Search("a", (TextKey("BODY", b"caf\xe9"),), charset="ISO-8859-1"),
    ),
    (
        b'a SEARCH BEFORE 1-Feb-2024 ON 29-feb-2024 SINCE "01-Jan-2023"\r\n',
        Search(
            "a",
            (
                DateKey("BEFORE", dt.date(2024, 2, 1)),
                DateKey("ON", dt.date(2024, 2, 29)),
                DateKey("SINCE", dt.date(2023, 1, 1)),
            ),
        ),
    ),
    (
        b"a SEARCH SENTBEFORE 1-Mar-2024 SENTON 2-Mar-2024 SENTSINCE 3-Mar-2024\r\n",
        Search(
            "a",
            (
                DateKey("SENTBEFORE", dt.date(2024, 3, 1)),
                DateKey("SENTON", dt.date(2024, 3, 2)),
                DateKey("SENTSINCE", dt.date(2024, 3, 3)),
            ),
        ),
    ),
    (
        b"a SEARCH LARGER 1024 SMALLER 9999999999\r\n",
        Search("a", (SizeKey("LARGER", 1024), SizeKey("SMALLER", 9999999999))),
    ),
    (
        b"a SEARCH KEYWORD $Junk UNKEYWORD NonJunk\r\n",
        Search("a", (KeywordKey("$Junk"), KeywordKey("NonJunk", negated=True))),
    ),
    (
        b'a SEARCH HEADER Message-ID "<a@b>" header X-Spam ""\r\n',
        Search("a", (HeaderKey("Message-ID", b"<a@b>"), HeaderKey("X-Spam", b""))),
    ),
    (
        b"a SEARCH NOT SEEN NOT NOT DELETED\r\n",
        Search("a", (NotKey(FlagKey("SEEN")), NotKey(NotKey(FlagKey("DELETED"))))),
    ),
    (
        b"a SEARCH OR SEEN (FLAGGED OR DRAFT ANSWERED)\r\n",
        Search(
            "a",
            (
                OrKey(
                    FlagKey("SEEN"),
                    AndKey((FlagKey("FLAGGED"), OrKey(FlagKey("DRAFT"), FlagKey("ANSWERED")))),
                ),
            ),
        ),
    ),
    (b"a SEARCH ((SEEN))\r\n", Search("a", (FlagKey("SEEN"),))),
    (
        b"a SEARCH 1:5,7 UID 100:* $\r\n",
        Search("a", (SeqKey(seq((1, 5), 7)), UidKey(seq((100, "*"))), SeqKey(SAVED))),
    ),
    (b"a UID SEARCH UID $\r\n", Search("a", (UidKey(SAVED),), uid=True)),
    (b"a SEARCH MODSEQ 620162338\r\n", Search("a", (ModSeqKey(620162338),))),
    (
        b'a SEARCH MODSEQ "/flags/\\\\draft" all 0\r\n',
        Search("a", (ModSeqKey(0, "/flags/\\draft", "all"),)),
    ),
    (
        b'a SEARCH modseq "/flags/$Junk" PRIV 7\r\n',
        Search("a", (ModSeqKey(7, "/flags/$Junk", "priv"),)),
    ),
    (
        b"a SEARCH RETURN (MIN MAX COUNT) UNSEEN\r\n",
        Search("a", (FlagKey("UNSEEN"),), returns=("MIN", "MAX", "COUNT")),
    ),
    (
        b"a UID SEARCH RETURN () ALL\r\n",
        Search("a", (FlagKey("ALL"),), uid=True, returns=("ALL",)),
    ),
    (
        b"a SEARCH RETURN (SAVE ALL) CHARSET UTF-8 FROM x\r\n",
        Search("a", (TextKey("FROM", b"x"),), charset="UTF-8", returns=("SAVE", "ALL")),
    ),
]


@pytest.mark.parametrize(
    ("wire", "expected"), CASES, ids=[c[0][:40].decode("latin-1") for c in CASES]
)
def test_command(wire: bytes, expected: Command) -> None:
    assert one_command(wire) == expected


def test_bare_lf_is_accepted_as_line_end() -> None:
    assert one_command(b"a NOOP\n") == Noop("a")
    assert one_command(b"a LOGIN {3}\njoe x\n") == Login("a", "joe", "x")


def test_utf8_mailbox_names_after_enable() -> None:
    # rfc/6855 §3: once UTF8=ACCEPT is on, names are UTF-8 and "&" is just "&".
    assert one_command(b'a SELECT "\xc3\xa9t\xc3\xa9 & co"\r\n', utf8=True) == Select(
        "a", "été & co"
    )
    assert one_command(b"a SELECT &AOk-\r\n", utf8=True) == Select("a", "&AOk-")
    assert one_command(b'a LIST "" "\xc3\xa9*" RETURN (STATUS (MESSAGES))\r\n', utf8=True) == List(
        "a", "", ("é*",), return_status=("MESSAGES",), extended=True
    )


def test_reply_names_of_sections() -> None:
    fetch = one_command(
        b'a FETCH 1 (BODY.PEEK[1.HEADER.FIELDS (From "X]Y")]<5.10> BINARY.PEEK[2]<0.3> '
        b"BINARY.SIZE[1.1] BODY[])\r\n"
    )
    assert isinstance(fetch, Fetch)
    names = [item.reply_name for item in fetch.items if not isinstance(item, FetchAttr)]
    assert names == [
        'BODY[1.HEADER.FIELDS (From "X]Y")]<5>',
        "BINARY[2]<0>",
        "BINARY.SIZE[1.1]",
        "BODY[]",
    ]


def test_sequence_set_resolution() -> None:
    s = seq((5, 3), (1, "*"), 9)
    assert s.resolve(7) == [(1, 7), (9, 9)]
    assert s.resolve(8) == [(1, 9)]
    assert seq((10, 12), 2, (4, 3)).resolve(100) == [(2, 4), (10, 12)]
    assert str(seq((1, "*"), 4, (7, 3))) == "1:*,4,7:3"
    assert SequenceSet.of([5, 1, 2, 3, 9, 10]) == seq((1, 3), 5, (9, 10))
    with pytest.raises(ValueError):
        SAVED.resolve(3)
    with pytest.raises(ValueError):
        SequenceSet(())
    with pytest.raises(ValueError):
        seq(0)
