"""MIME structure for IMAP: ENVELOPE and BODYSTRUCTURE byte-exact, offsets, robustness."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mssante.operator import mime

# A report from a hospital: text, a PDF, and the request it answers (message/rfc822).
# Sizes below were counted by hand from these lines (CRLF = 2 octets).
REPORT = (
    b'From: "Dr. Jean Martin" <jean.martin@hopital-x.mssante.fr>\r\n'
    b"To: secretariat@cabinet-y.mssante.fr\r\n"
    b'Cc: Cardiologie <cardio@hopital-x.mssante.fr>, "Dupont, Anne"\r\n'
    b" <anne.dupont@hopital-x.mssante.fr>\r\n"
    b"Subject: Compte rendu de consultation\r\n"
    b"Date: Mon, 24 Nov 2025 09:30:00 +0100\r\n"
    b"Message-ID: <cr-42@hopital-x.mssante.fr>\r\n"
    b"In-Reply-To: <demande-7@cabinet-y.mssante.fr>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="=_sep1"\r\n'
    b"\r\n"
    b"This is a multi-part message in MIME format.\r\n"
    b"--=_sep1\r\n"
    b"Content-Type: text/plain; charset=UTF-8; format=flowed\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Bonjour,\r\n"  # 10
    b"ci-joint le compte rendu.\r\n"  # 27
    b"\r\n"  # 2
    b"Dr Martin\r\n"  # 9, its CRLF belongs to the delimiter: 48 octets, 4 lines
    b"--=_sep1\r\n"
    b'Content-Type: application/pdf; name="cr-42.pdf"\r\n'
    b'Content-Disposition: attachment; filename="cr-42.pdf"; size=24\r\n'
    b"Content-Transfer-Encoding: base64\r\n"
    b"Content-Description: Compte rendu (PDF)\r\n"
    b"Content-Language: fr\r\n"
    b"\r\n"
    b"JVBERi0xLjQKJcfsj6IKMSAw\r\n"  # 26
    b"b2JqCjw8L1R5cGUvQ2F0YWxv\r\n"  # 26
    b"ZwplbmRvYmoKJSVFT0YK\r\n"  # 20: 72 octets
    b"--=_sep1\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"Content-Disposition: inline\r\n"
    b"\r\n"
    b"From: secretariat@cabinet-y.mssante.fr\r\n"  # 40
    b"To: jean.martin@hopital-x.mssante.fr\r\n"  # 38
    b"Subject: Demande d'avis\r\n"  # 25
    b"Date: Fri, 21 Nov 2025 17:05:00 +0100\r\n"  # 39
    b"Message-ID: <demande-7@cabinet-y.mssante.fr>\r\n"  # 46
    b"Content-Type: text/plain\r\n"  # 26
    b"\r\n"  # 2: header 216 octets
    b"Merci de voir ce patient.\r\n"  # 25: message 241 octets, 8 lines
    b"--=_sep1--\r\n"
)

JEAN = b'("Dr. Jean Martin" NIL "jean.martin" "hopital-x.mssante.fr")'
SECRETARIAT = b'(NIL NIL "secretariat" "cabinet-y.mssante.fr")'

REPORT_ENVELOPE = (
    b'("Mon, 24 Nov 2025 09:30:00 +0100" "Compte rendu de consultation" '
    b"(" + JEAN + b") (" + JEAN + b") (" + JEAN + b") "
    b"(" + SECRETARIAT + b") "
    b'(("Cardiologie" NIL "cardio" "hopital-x.mssante.fr")'
    b'("Dupont, Anne" NIL "anne.dupont" "hopital-x.mssante.fr")) '
    b'NIL "<demande-7@cabinet-y.mssante.fr>" "<cr-42@hopital-x.mssante.fr>")'
)

INNER_ENVELOPE = (
    b'("Fri, 21 Nov 2025 17:05:00 +0100" "Demande d\'avis" '
    b"(" + SECRETARIAT + b") (" + SECRETARIAT + b") (" + SECRETARIAT + b") "
    b'((NIL NIL "jean.martin" "hopital-x.mssante.fr")) NIL NIL NIL '
    b'"<demande-7@cabinet-y.mssante.fr>")'
)

REPORT_BODYSTRUCTURE = (
    b'(("TEXT" "PLAIN" ("CHARSET" "UTF-8" "FORMAT" "flowed") NIL NIL "8BIT" 48 4 '
    b"NIL NIL NIL NIL)"
    b'("APPLICATION" "PDF" ("NAME" "cr-42.pdf") NIL "Compte rendu (PDF)" "BASE64" 72 '
    b'NIL ("ATTACHMENT" ("FILENAME" "cr-42.pdf" "SIZE" "24")) "fr" NIL)'
    b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 241 '
    + INNER_ENVELOPE
    + b' ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 25 1 NIL NIL NIL NIL) 8 '
    b'NIL ("INLINE" NIL) NIL NIL) '
    b'"MIXED" ("BOUNDARY" "=_sep1") NIL NIL NIL)'
)

REPORT_BODY = (
    b'(("TEXT" "PLAIN" ("CHARSET" "UTF-8" "FORMAT" "flowed") NIL NIL "8BIT" 48 4)'
    b'("APPLICATION" "PDF" ("NAME" "cr-42.pdf") NIL "Compte rendu (PDF)" "BASE64" 72)'
    b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 241 '
    + INNER_ENVELOPE
    + b' ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 25 1) 8) "MIXED")'
)


def _slice(data: bytes, part: mime.Part | None) -> bytes:
    assert part is not None
    return data[part.body_start : part.body_end]


def _mime_header(data: bytes, part: mime.Part | None) -> bytes:
    assert part is not None
    return data[part.header_start : part.body_start]


def test_envelope_is_rfc3501_exact() -> None:
    assert mime.imap_envelope(mime.parse(REPORT).envelope) == REPORT_ENVELOPE


def test_bodystructure_is_rfc3501_exact() -> None:
    assert mime.imap_body(mime.parse(REPORT).body) == REPORT_BODYSTRUCTURE


def test_body_without_extension_data() -> None:
    assert mime.imap_body(mime.parse(REPORT).body, extensible=False) == REPORT_BODY


def test_offsets_serve_every_section_by_slicing() -> None:
    message = mime.parse(REPORT)
    assert message.size == len(REPORT)
    header_end = REPORT.index(b"\r\n\r\n") + 4
    assert (message.body.header_start, message.body.body_start) == (0, header_end)
    assert message.body.body_end == len(REPORT)
    # RFC 3501 §6.4.5 part numbers.
    assert _slice(REPORT, mime.find_part(message, [1])) == (
        b"Bonjour,\r\nci-joint le compte rendu.\r\n\r\nDr Martin"
    )
    assert _mime_header(REPORT, mime.find_part(message, [1])) == (
        b"Content-Type: text/plain; charset=UTF-8; format=flowed\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n"
    )
    assert _slice(REPORT, mime.find_part(message, [2])) == (
        b"JVBERi0xLjQKJcfsj6IKMSAw\r\nb2JqCjw8L1R5cGUvQ2F0YWxv\r\nZwplbmRvYmoKJSVFT0YK"
    )
    rfc822 = mime.find_part(message, [3])
    assert rfc822 is not None and rfc822.message is not None
    inner = rfc822.message.body
    assert _slice(REPORT, rfc822).startswith(b"From: secretariat@")
    assert _slice(REPORT, rfc822).endswith(b"Merci de voir ce patient.")
    assert REPORT[inner.header_start : inner.body_start].endswith(
        b"Content-Type: text/plain\r\n\r\n"
    )  # BODY[3.HEADER]
    assert len(REPORT[inner.header_start : inner.body_start]) == 216
    assert REPORT[inner.body_start : inner.body_end] == b"Merci de voir ce patient."  # 3.TEXT
    assert _slice(REPORT, mime.find_part(message, [3, 1])) == b"Merci de voir ce patient."
    assert mime.find_part(message, [4]) is None
    assert mime.find_part(message, [1, 1]) == mime.find_part(message, [1])
    assert mime.find_part(message, [1, 2]) is None


def test_single_part_message_is_its_own_part_one() -> None:
    data = b"Subject: x\r\n\r\nhello\r\n"
    message = mime.parse(data)
    assert mime.find_part(message, [1]) == message.body
    assert mime.imap_body(message.body) == (
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 7 1 NIL NIL NIL NIL)'
    )


def test_json_round_trip_keeps_everything() -> None:
    for data in (REPORT, b"Subject: \xe9t\xe9 \xff\r\nFrom: \xc3\xa9@x\r\n\r\n\x00body"):
        message = mime.parse(data)
        assert mime.from_json(mime.to_json(message)) == message
    assert mime.to_json(mime.parse(REPORT)).isascii()


def test_non_utf8_header_bytes_come_back_as_literals() -> None:
    data = b"Subject: r\xe9sultat\r\n\r\n"
    envelope = mime.imap_envelope(mime.parse(data).envelope)
    assert b"{8}\r\nr\xe9sultat" in envelope


def test_addresses_groups_routes_comments_and_missing_domains() -> None:
    parsed = mime.parse_addresses(
        'Equipe: a@x.fr, "B, C" <b@y.fr>;, <@relay.fr,@r2.fr:d@z.fr>, '
        'e@w.fr (Dr E), nodomain, "quoted local"@q.fr, =?UTF-8?Q?Jos=C3=A9?= <j@k.fr>'
    )
    assert parsed == (
        mime.Address(None, None, "Equipe", None),
        mime.Address(None, None, "a", "x.fr"),
        mime.Address("B, C", None, "b", "y.fr"),
        mime.Address(None, None, None, None),
        mime.Address(None, "@relay.fr,@r2.fr", "d", "z.fr"),
        mime.Address("Dr E", None, "e", "w.fr"),
        mime.Address(None, None, "nodomain", mime.MISSING_HOST),
        mime.Address(None, None, '"quoted local"', "q.fr"),
        mime.Address("=?UTF-8?Q?Jos=C3=A9?=", None, "j", "k.fr"),
    )


def test_sender_and_reply_to_default_to_from() -> None:
    env = mime.parse(b"From: a@b.c\r\nSender:\r\nReply-To: r@b.c\r\n\r\n").envelope
    assert env.sender == env.from_ == (mime.Address(None, None, "a", "b.c"),)
    assert env.reply_to == (mime.Address(None, None, "r", "b.c"),)


def test_invalid_content_type_degrades_to_text_plain() -> None:
    for content_type in (b"text", b"/plain", b"multipart/mixed", b"multipart/mixed; boundary=zz"):
        data = b"Content-Type: " + content_type + b"\r\n\r\n--not a delimiter\r\nbody\r\n"
        body = mime.parse(data).body
        assert (body.type, body.subtype, body.params) == (
            "TEXT",
            "PLAIN",
            (("CHARSET", "US-ASCII"),),
        )
        assert body.parts == ()
        assert body.lines == 2


def test_missing_close_delimiter_ends_the_last_part_at_the_end() -> None:
    data = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\none\r\n--b\r\n\r\ntwo\r\n"
    body = mime.parse(data).body
    assert [_slice(data, p) for p in body.parts] == [b"one", b"two\r\n"]


def test_boundary_with_unquoted_tspecials_and_transport_padding() -> None:
    data = (
        b"Content-Type: multipart/alternative; boundary=----=_Part_1\r\n\r\n"
        b"------=_Part_1  \r\nContent-Type: text/html\r\n\r\n<p>x</p>\r\n"
        b"------=_Part_1X\r\nstill html\r\n"  # a longer boundary is not ours
        b"------=_Part_1--\r\n"
    )
    body = mime.parse(data).body
    assert body.subtype == "ALTERNATIVE"
    assert len(body.parts) == 1
    assert _slice(data, body.parts[0]) == b"<p>x</p>\r\n------=_Part_1X\r\nstill html"


def test_digest_parts_default_to_message_rfc822() -> None:
    data = (
        b"Content-Type: multipart/digest; boundary=d\r\n\r\n"
        b"--d\r\n\r\nSubject: one\r\n\r\nfirst\r\n--d--\r\n"
    )
    part = mime.parse(data).body.parts[0]
    assert (part.type, part.subtype) == ("MESSAGE", "RFC822")
    assert part.message is not None and part.message.envelope.subject == "one"


def test_encoded_message_rfc822_is_opaque() -> None:
    data = (
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
        b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"U3ViamVjdDogeA0KDQp5\r\n--b--\r\n"
    )
    part = mime.parse(data).body.parts[0]
    assert (part.type, part.subtype, part.message) == ("APPLICATION", "OCTET-STREAM", None)


def test_message_without_separator_or_headers() -> None:
    no_blank = mime.parse(b"Subject: x\r\nnot a header line\r\nmore\r\n")
    assert no_blank.envelope.subject == "x"
    assert no_blank.body.body_start == len(b"Subject: x\r\n")
    headers_only = mime.parse(b"Subject: y\r\nFrom: a@b.c")
    assert headers_only.envelope.subject == "y"
    assert headers_only.body.size == 0
    garbage = mime.parse(b"\x00\xff garbage without a colon\r\n")
    assert garbage.body.body_start == 0 and garbage.envelope.subject is None
    empty = mime.parse(b"")
    assert (empty.body.size, empty.body.lines) == (0, 0)


def test_split_header_marks_fields_and_separator() -> None:
    data = b"A: 1\r\nB: two\r\n\tlines\r\n\r\nbody"
    header = mime.split_header(data)
    assert [(f.name, f.value) for f in header.fields] == [("a", " 1"), ("b", " two\tlines")]
    assert [data[f.start : f.end] for f in header.fields] == [b"A: 1\r\n", b"B: two\r\n\tlines\r\n"]
    assert (header.body_start, header.separator) == (len(data) - 4, True)


def test_nesting_beyond_the_limit_becomes_opaque() -> None:
    depth = mime.MAX_DEPTH + 5
    data = (
        b"".join(
            b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
            for i in range(depth)
        )
        + b"\r\ndeep\r\n"
    )
    part = mime.parse(data).body
    levels = 0
    while part.parts:
        part = part.parts[0]
        levels += 1
    assert levels == mime.MAX_DEPTH
    assert (part.type, part.subtype) == ("APPLICATION", "OCTET-STREAM")


def test_part_count_is_bounded() -> None:
    data = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"--b\r\n\r\nx\r\n" * 2000
    body = mime.parse(data).body
    assert len(body.parts) < mime.MAX_PARTS


def _check_part(data: bytes, part: mime.Part, lo: int, hi: int) -> int:
    assert lo <= part.header_start <= part.body_start <= part.body_end <= hi
    count = 1
    for child in part.parts:
        count += _check_part(data, child, part.body_start, part.body_end)
    if part.message is not None:
        inner = part.message.body
        assert inner.header_start == part.body_start
        count += _check_part(data, inner, part.body_start, part.body_end)
    return count


def _check(data: bytes) -> None:
    message = mime.parse(data)
    count = _check_part(data, message.body, 0, len(data))
    assert count <= mime.MAX_PARTS + 1
    mime.imap_envelope(message.envelope)
    mime.imap_body(message.body)
    mime.imap_body(message.body, extensible=False)
    assert mime.from_json(mime.to_json(message)) == message


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_random_bytes_never_crash_the_parser(data: bytes) -> None:
    _check(data)


_PIECES = [
    b"Content-Type: multipart/mixed; boundary=b\r\n",
    b'Content-Type: multipart/alternative; boundary="c"\r\n',
    b"Content-Type: message/rfc822\r\n",
    b"Content-Type: multipart/digest; boundary=b\r\n",
    b'Content-Type: text/plain; charset="utf-8\r\n',
    b'Content-Type: ;;;=="\r\n',
    b"Content-Transfer-Encoding: base64\r\n",
    b'Content-Disposition: attachment; filename*0="a"; filename*1=b\r\n',
    b"Content-Language: fr, (comment) en\r\n",
    b'From: "unterminated <a@b\r\n',
    b"To: g: a@b, (c, <d@e>;, \\\r\n",
    b"Subject: =?utf-8?q?x?=\r\n",
    b" folded continuation\r\n",
    b"\r\n",
    b"--b\r\n",
    b"--b--\r\n",
    b"--c\r\n",
    b"--c--  \r\n",
    b"body line\r\n",
    b"\xff\xfe\x00\r\n",
    b"no-newline",
    b"\n",
    b"\r",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=80))
def test_random_mime_shapes_never_crash_the_parser(pieces: list[bytes]) -> None:
    _check(b"".join(pieces))
