"""Parsing the ANS XML list (mssante.whitelist.parse): the committed fixture, tolerance,
refusals with the line at fault, hostile documents, a list of the real size."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cryptography import x509
from wl_support import FIXTURES_DIR, fixtures_index, listing, subject

from mssante.whitelist.errors import WhitelistError
from mssante.whitelist.model import Whitelist
from mssante.whitelist.parse import parse_timestamp, parse_whitelist

NS = "https://listeblanche.mssante.fr/schema"
DN_A = subject("peer-a")
DN_B = subject("peer-b")


@pytest.fixture(scope="module")
def committed() -> Whitelist:
    return parse_whitelist((FIXTURES_DIR / "whitelist.xml").read_bytes(), "whitelist.xml")


def _cert_subject(name: str) -> x509.Name:
    return x509.load_pem_x509_certificate((FIXTURES_DIR / f"{name}.pem").read_bytes()).subject


def test_committed_fixture_matches_its_index(committed: Whitelist) -> None:
    entries = fixtures_index()["files"]["whitelist.xml"]["entries"]
    for entry in entries:
        assert committed.allows(entry["domain"], entry["dn"]), entry
        # The DN as the TLS handshake gives it: an x509.Name, in certificate (C first) order.
        assert committed.allows(entry["domain"], _cert_subject(entry["certificate"][:-4]))
    assert committed.entries == len(entries) == 7
    assert committed.domains == len({e["domain"] for e in entries}) == 6
    assert committed.operators == 6
    assert committed.generated == datetime(2025, 1, 1, tzinfo=UTC)


def test_a_domain_listed_twice_accepts_both_operators(committed: Whitelist) -> None:
    assert committed.allows("clinique-b.fr", DN_A)
    assert committed.allows("clinique-b.fr", DN_B)
    assert len(committed.operators_for("clinique-b.fr")) == 2
    assert committed.domains_for(DN_A) == {"hopital-a.mssante.test", "clinique-b.fr"}


def test_dn_matching_ignores_order_and_case(committed: Whitelist) -> None:
    reversed_dn = ",".join(reversed(DN_A.split(",")))
    assert reversed_dn.startswith("C=FR")
    assert committed.allows("hopital-a.mssante.test", reversed_dn)
    assert committed.allows("hopital-a.mssante.test", DN_A.upper())
    assert committed.allows("hopital-a.mssante.test", DN_A.replace(",", " , "))


def test_domain_matching_ignores_case(committed: Whitelist) -> None:
    assert committed.allows("Clinique-B.FR", DN_B)
    assert committed.allows("CLINIQUE-B.FR.", DN_B)
    assert committed.has_domain("Demo.MSSante.Test")


def test_unlisted_dn_and_dn_listed_for_another_domain(committed: Whitelist) -> None:
    not_listed = subject("peer-c")
    assert not committed.allows("labo-c.mssante.test", not_listed)
    assert not committed.has_domain("labo-c.mssante.test")
    assert not committed.is_listed_operator(not_listed)
    # peer-b is listed, but only for clinique-b.fr.
    assert committed.is_listed_operator(DN_B)
    assert not committed.allows("hopital-a.mssante.test", DN_B)
    # The foreign certificate has peer-a's very DN: by name it is listed. Refusing it is the
    # job of chain validation, which runs before any whitelist lookup.
    assert committed.allows("hopital-a.mssante.test", subject("foreign"))


def test_null_sender_is_any_listed_operator(committed: Whitelist) -> None:
    for name in ("operator", "peer-a", "peer-b", "peer-revoked"):
        assert committed.is_listed_operator(subject(name))
        assert committed.is_listed_operator(_cert_subject(name))
    assert not committed.is_listed_operator(_cert_subject("peer-c"))


# -- tolerance ---------------------------------------------------------------------------------


def test_tolerates_layout_order_unknown_elements_and_prefixes() -> None:
    document = f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- a comment before the root -->
<lb:ListeBlancheMSSante xmlns:lb="{NS}" xmlns:x="urn:example:extension" version="2">
  <lb:Editeur>ANS</lb:Editeur>
  <lb:DateDeGeneration>
      2025-03-13T14:54:10+01:00
  </lb:DateDeGeneration>
  <lb:ListeDomaines count="2">
    <lb:Domaine id="1">
      <lb:DateMAJ>pas une date</lb:DateMAJ>
      <lb:DNCertificatOperateur>
        {DN_B}
      </lb:DNCertificatOperateur>
      <x:Extension><lb:Nom>ignored.example</lb:Nom></x:Extension>
      <x:Nom>ignored-too.example</x:Nom>
      <lb:Inconnu><lb:Profond>texte</lb:Profond></lb:Inconnu>
      <?processing instruction?>
      <lb:Nom>  Clinique-B.fr  </lb:Nom>
    </lb:Domaine>
    <lb:Domaine>
      <lb:Nom><![CDATA[hopital-a.mssante.test]]></lb:Nom>
      <lb:DNCertificatOperateur>{DN_A.replace("&", "&amp;")}</lb:DNCertificatOperateur>
    </lb:Domaine>
  </lb:ListeDomaines>
  <x:ListeDomaines>
    <lb:Domaine>
      <lb:Nom>foreign-wrapper.example</lb:Nom>
      <lb:DNCertificatOperateur>{DN_A}</lb:DNCertificatOperateur>
    </lb:Domaine>
  </x:ListeDomaines>
</lb:ListeBlancheMSSante>
""".encode()
    whitelist = parse_whitelist(document, "tolerant.xml")
    assert whitelist.entries == 2
    assert whitelist.allows("clinique-b.fr", DN_B)
    assert whitelist.allows("hopital-a.mssante.test", DN_A)
    assert whitelist.domains == 2
    assert not whitelist.has_domain("ignored.example")
    assert not whitelist.has_domain("ignored-too.example")
    assert not whitelist.has_domain("foreign-wrapper.example")
    assert whitelist.generated == datetime(2025, 3, 13, 13, 54, 10, tzinfo=UTC)


def test_entities_of_xml_itself_are_fine() -> None:
    # The writer escapes "&" itself; the document holds "&amp;", which the parser expands.
    document = listing([("clinique-b.fr", "CN=B & fils,O=x,C=FR")])
    assert b"CN=B &amp; fils" in document
    whitelist = parse_whitelist(document, "amp.xml")
    assert whitelist.allows("clinique-b.fr", "CN=B & fils,O=x,C=FR")


def test_latin1_document() -> None:
    document = (
        f'<?xml version="1.0" encoding="ISO-8859-1"?>\n<ListeBlancheMSSante xmlns="{NS}">'
        "<ListeDomaines><Domaine><Nom>a.fr</Nom>"
        "<DNCertificatOperateur>CN=x,ST=Rhône (69),C=FR</DNCertificatOperateur>"
        "</Domaine></ListeDomaines></ListeBlancheMSSante>"
    ).encode("latin-1")
    assert parse_whitelist(document, "latin1.xml").allows("a.fr", "CN=x,ST=RHÔNE (69),C=FR")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-03-13T14:54:10Z", datetime(2025, 3, 13, 14, 54, 10, tzinfo=UTC)),
        ("2025-03-13T14:54:10+01:00", datetime(2025, 3, 13, 13, 54, 10, tzinfo=UTC)),
        ("2025-03-13T14:54:10", datetime(2025, 3, 13, 14, 54, 10, tzinfo=UTC)),
        ("2025-03-13T14:54:10.250Z", datetime(2025, 3, 13, 14, 54, 10, 250000, tzinfo=UTC)),
        ("2025-03-13 14:54:10", datetime(2025, 3, 13, 14, 54, 10, tzinfo=UTC)),
        (" 2025-03-13 ", datetime(2025, 3, 13, tzinfo=UTC)),
    ],
)
def test_timestamps(text: str, expected: datetime) -> None:
    parsed = parse_timestamp(text)
    assert parsed == expected
    assert parsed.tzinfo is UTC


def test_list_without_generation_date() -> None:
    document = (
        listing([("a.fr", DN_A)])
        .replace(b"<DateDeGeneration>", b"<!--")
        .replace(b"</DateDeGeneration>", b"-->")
    )
    whitelist = parse_whitelist(document, "nodate.xml")
    assert whitelist.generated is None
    assert whitelist.allows("a.fr", DN_A)


# -- refusals, with the line at fault ------------------------------------------------------------


def _doc(body: str, *, root: str = f'<ListeBlancheMSSante xmlns="{NS}">') -> bytes:
    # Line 1: declaration, line 2: root, then ``body`` from line 3, root closed on its own line.
    declaration = '<?xml version="1.0" encoding="UTF-8"?>'
    return f"{declaration}\n{root}\n{body}\n</ListeBlancheMSSante>\n".encode()


def _entry(name: str = "<Nom>a.fr</Nom>", dn: str | None = None) -> str:
    dn_line = f"<DNCertificatOperateur>{DN_A}</DNCertificatOperateur>" if dn is None else dn
    return f"<ListeDomaines>\n<Domaine>\n{name}\n{dn_line}\n</Domaine>\n</ListeDomaines>"


def _refused(document: bytes, source: str = "src.xml") -> str:
    with pytest.raises(WhitelistError) as caught:
        parse_whitelist(document, source)
    return str(caught.value)


def test_reference_document_parses() -> None:
    assert parse_whitelist(_doc(_entry()), "src.xml").allows("a.fr", DN_A)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        # Line 7 is "</Domaine>" while <DNCertificatOperateur> (line 6) is still open.
        (
            _doc(_entry(dn=f"<DNCertificatOperateur>{DN_A}")),
            "src.xml, line 7, column 3: malformed XML: mismatched tag",
        ),
        (
            _doc("<ListeDomaines>\n<Domaine a=1/>"),
            "src.xml, line 4, column 12: malformed XML: not well-formed",
        ),
        (b"", "src.xml, line 1, column 1: malformed XML: no element found"),
        (
            _doc(_entry()) + b"<trailing/>",
            "src.xml, line 10, column 1: malformed XML: junk after document element",
        ),
        (
            _doc(
                _entry(), root='<ListeBlancheMSSante xmlns="https://listeblanche.mssante.fr/other">'
            ),
            "src.xml, line 2: <ListeBlancheMSSante> is in namespace "
            "https://listeblanche.mssante.fr/other, expected namespace " + NS,
        ),
        (
            _doc(_entry(), root="<ListeBlancheMSSante>"),
            "src.xml, line 2: <ListeBlancheMSSante> is in no namespace, expected namespace " + NS,
        ),
        (
            f'<?xml version="1.0"?>\n\n<ListeBlanche xmlns="{NS}"/>'.encode(),
            "src.xml, line 3: root element is <ListeBlanche>, expected <ListeBlancheMSSante>",
        ),
        (_doc(_entry(name="")), "src.xml, line 4: <Domaine> without <Nom>"),
        (_doc(_entry(dn="")), "src.xml, line 4: <Domaine> without <DNCertificatOperateur>"),
        (_doc(_entry(name="<Nom>   </Nom>")), "src.xml, line 5: <Nom>: invalid domain ''"),
        (_doc(_entry(name="<Nom>a..fr</Nom>")), "src.xml, line 5: <Nom>: invalid domain 'a..fr'"),
        (
            _doc(_entry(name="<Nom>a.fr</Nom><Nom>b.fr</Nom>")),
            "src.xml, line 5: <Domaine> has two <Nom>",
        ),
        (
            _doc(_entry(dn="<DNCertificatOperateur>CN=x,\nFOO=y</DNCertificatOperateur>")),
            "src.xml, line 6: <DNCertificatOperateur>: unknown attribute type 'FOO'",
        ),
        (
            _doc(_entry(dn="<DNCertificatOperateur>\n</DNCertificatOperateur>")),
            "src.xml, line 6: <DNCertificatOperateur>: empty distinguished name",
        ),
        (
            _doc(_entry(name="<Nom>a<b>c</b>.fr</Nom>")),
            "src.xml, line 5: unexpected element <b> inside <Nom>",
        ),
        (
            _doc("<DateDeGeneration>\nhier\n</DateDeGeneration>\n" + _entry()),
            "src.xml, line 3: <DateDeGeneration>: not an ISO 8601 date: 'hier'",
        ),
        (
            _doc(
                "<DateDeGeneration>2025-01-01</DateDeGeneration>\n"
                "<DateDeGeneration>2025-01-02</DateDeGeneration>\n" + _entry()
            ),
            "src.xml, line 4: <DateDeGeneration> appears twice",
        ),
        (
            _doc("<ListeDomaines>\n</ListeDomaines>"),
            "src.xml, line 3: no <Domaine> entry in the list",
        ),
        # <Domaine> under another wrapper is not where the list puts entries.
        (
            _doc(_entry().replace("ListeDomaines>", "Autre>")),
            "src.xml, line 2: no <Domaine> entry in the list",
        ),
    ],
)
def test_refusals_name_source_and_line(document: bytes, message: str) -> None:
    assert _refused(document).startswith(message)


def test_doctype_with_entity_bomb_is_refused_at_its_line() -> None:
    bomb = (
        '<?xml version="1.0"?>\n'
        "<!-- billion laughs -->\n"
        '<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n'
        ' <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">\n'
        ' <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">\n]>\n'
        f'<ListeBlancheMSSante xmlns="{NS}">&lol3;</ListeBlancheMSSante>\n'
    ).encode()
    assert _refused(bomb, "https://x/lb.xml") == (
        "https://x/lb.xml, line 3: DOCTYPE declarations are not accepted"
    )


def test_external_entity_is_refused(tmp_path: object) -> None:
    xxe = (
        '<?xml version="1.0"?>\n'
        '<!DOCTYPE ListeBlancheMSSante [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
        f'<ListeBlancheMSSante xmlns="{NS}"><ListeDomaines><Domaine><Nom>&xxe;</Nom>'
        "</Domaine></ListeDomaines></ListeBlancheMSSante>\n"
    ).encode()
    assert _refused(xxe) == "src.xml, line 2: DOCTYPE declarations are not accepted"
    external_dtd = b'<?xml version="1.0"?>\n<!DOCTYPE x SYSTEM "http://127.0.0.1:9/x.dtd">\n<x/>'
    assert _refused(external_dtd) == "src.xml, line 2: DOCTYPE declarations are not accepted"


def test_undeclared_entity_is_malformed() -> None:
    message = _refused(_doc(_entry(name="<Nom>&xxe;</Nom>")))
    assert message.startswith("src.xml, line 5, column 6: malformed XML: undefined entity")


def test_bounds() -> None:
    document = _doc(_entry())
    with pytest.raises(WhitelistError, match=r"^big\.xml: larger than 100 bytes$"):
        parse_whitelist(document, "big.xml", max_bytes=100)
    long_name = "<Nom>" + "a" * 9000 + "</Nom>"
    assert "line 5: <Nom> longer than 8192 characters" in _refused(_doc(_entry(name=long_name)))
    deep = "<x>" * 40 + "</x>" * 40
    assert "elements nested deeper than 32" in _refused(_doc(deep))


# -- the real size ---------------------------------------------------------------------------


def test_list_of_the_real_size() -> None:
    # ~5,000 domains and ~400 operator certificates; some domains served by two operators.
    operators = [
        f"CN=smtp{i}.operateur.test,OU=3{i:014d},O=OPERATEUR {i},ST=Paris (75),C=FR"
        for i in range(400)
    ]
    pairs: list[tuple[str, str]] = []
    for i in range(5_000):
        domain = f"etablissement-{i}.mssante.fr" if i % 3 else f"cabinet-{i}.example.fr"
        pairs.append((domain, operators[i % 400]))
        if i < 1_500:
            pairs.append((domain, operators[(i + 7) % 400]))
    document = listing(pairs, datetime(2026, 5, 1, 3, 0, tzinfo=UTC))
    whitelist = parse_whitelist(document, "big.xml")
    assert (whitelist.entries, whitelist.domains, whitelist.operators) == (6_500, 5_000, 400)
    assert whitelist.allows("cabinet-0.example.fr", operators[0])
    assert whitelist.allows("cabinet-0.example.fr", operators[7])
    assert not whitelist.allows("cabinet-0.example.fr", operators[1])
    assert whitelist.allows("ETABLISSEMENT-4999.mssante.fr", operators[4999 % 400].lower())
    # i ≡ 0 (mod 400): 13 domains; i < 1,500 with i + 7 ≡ 0 (mod 400): 3 more.
    assert len(whitelist.domains_for(operators[0])) == 13 + 3
