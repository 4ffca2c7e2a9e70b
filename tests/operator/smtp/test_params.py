"""MAIL/RCPT argument parsing: paths, SIZE, BODY, SMTPUTF8 and the DSN parameters."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mssante.operator.errors import MailError
from mssante.operator.smtp.params import decode_xtext, parse_mail, parse_rcpt

LIMIT = 1000


def test_plain_mail_from() -> None:
    p = parse_mail("FROM:<dr.house@hopital-a.mssante.test>", size_limit=LIMIT)
    assert (p.sender, p.size, p.body, p.smtputf8, p.ret, p.envid) == (
        "dr.house@hopital-a.mssante.test",
        None,
        "7BIT",
        False,
        None,
        None,
    )


def test_null_sender_and_every_parameter() -> None:
    p = parse_mail(
        "from: <> SIZE=999 BODY=8bitmime SMTPUTF8 RET=hdrs ENVID=QQ+2B314", size_limit=LIMIT
    )
    assert (p.sender, p.size, p.body, p.smtputf8, p.ret, p.envid) == (
        "",
        999,
        "8BITMIME",
        True,
        "HDRS",
        "QQ+314",
    )


def test_source_route_is_ignored() -> None:
    assert parse_mail("FROM:<@a.test,@b.test:x@c.test>", size_limit=LIMIT).sender == "x@c.test"


@pytest.mark.parametrize(
    ("arg", "code", "enhanced"),
    [
        ("FROM:x@y.fr", 501, "5.5.4"),
        ("TO:<x@y.fr>", 501, "5.5.4"),
        (None, 501, "5.5.4"),
        ("FROM:<x@y.fr", 501, "5.5.4"),
        ("FROM:<not an address>", 501, "5.1.7"),
        ("FROM:<x@y.fr> SIZE=1001", 552, "5.3.4"),
        ("FROM:<x@y.fr> SIZE=abc", 501, "5.5.4"),
        ("FROM:<x@y.fr> BODY=BINARYMIME", 501, "5.5.4"),
        ("FROM:<x@y.fr> RET=ALL", 501, "5.5.4"),
        ("FROM:<x@y.fr> ENVID=" + "a" * 101, 501, "5.5.4"),
        ("FROM:<x@y.fr> ENVID=a=b", 501, "5.5.4"),
        ("FROM:<x@y.fr> SMTPUTF8=yes", 501, "5.5.4"),
        ("FROM:<x@y.fr> AUTH=<>", 555, "5.5.4"),
        ("FROM:<x@y.fr> SIZE=1 SIZE=2", 501, "5.5.4"),
        ("FROM:<é@y.fr>", 553, "5.6.7"),
    ],
)
def test_mail_refusals(arg: str | None, code: int, enhanced: str) -> None:
    with pytest.raises(MailError) as exc:
        parse_mail(arg, size_limit=LIMIT)
    assert (exc.value.code, exc.value.enhanced) == (code, enhanced)


def test_rcpt_with_dsn_parameters() -> None:
    r = parse_rcpt(
        "TO:<Jean.Dupont@demo.mssante.test> NOTIFY=SUCCESS,failure "
        "ORCPT=rfc822;jean.dupont+2Bx@demo.mssante.test",
        smtputf8=False,
    )
    assert r.recipient == "Jean.Dupont@demo.mssante.test"
    assert r.notify == frozenset({"SUCCESS", "FAILURE"})
    assert r.orcpt == "rfc822;jean.dupont+x@demo.mssante.test"
    assert parse_rcpt("TO:<a@b.fr> NOTIFY=NEVER", smtputf8=False).notify == frozenset()
    assert parse_rcpt("TO:<a@b.fr>", smtputf8=False).notify is None


@pytest.mark.parametrize(
    "arg",
    [
        "TO:<a@b.fr> NOTIFY=NEVER,SUCCESS",
        "TO:<a@b.fr> NOTIFY=SOMETIMES",
        "TO:<a@b.fr> NOTIFY=",
        "TO:<a@b.fr> ORCPT=nosemicolon",
        "TO:<a@b.fr> ORCPT=rfc822;",
        "TO:<a@b.fr> NOTIFY=SUCCESS,SUCCESS",
        "TO:<>",
        "TO:<a b@c.fr>",
    ],
)
def test_rcpt_refusals(arg: str) -> None:
    with pytest.raises(MailError) as exc:
        parse_rcpt(arg, smtputf8=False)
    assert exc.value.code == 501


def test_unknown_rcpt_parameter_is_555() -> None:
    with pytest.raises(MailError) as exc:
        parse_rcpt("TO:<a@b.fr> FOO=bar", smtputf8=False)
    assert (exc.value.code, exc.value.enhanced) == (555, "5.5.4")


def test_non_ascii_recipient_needs_smtputf8() -> None:
    with pytest.raises(MailError) as exc:
        parse_rcpt("TO:<dépôt@b.fr>", smtputf8=False)
    assert exc.value.enhanced == "5.6.7"
    assert parse_rcpt("TO:<dépôt@b.fr>", smtputf8=True).recipient == "dépôt@b.fr"


def test_xtext() -> None:
    assert decode_xtext("a+2Bb+3Dc") == "a+b=c"
    for bad in ("a+2b", "a+", "a=b", "a b"):
        with pytest.raises(MailError):
            decode_xtext(bad)


@given(st.text(max_size=300))
def test_random_arguments_never_crash(arg: str) -> None:
    for parse in (
        lambda a: parse_mail(a, size_limit=LIMIT),
        lambda a: parse_rcpt(a, smtputf8=True),
    ):
        try:
            parse(arg)
        except MailError as exc:
            assert 400 <= exc.code < 600
