"""Reading the ANS ``ListeBlancheMSSante`` XML document into a :class:`Whitelist`.

The document (see :mod:`mssante.whitelist.xmlwriter` for its shape) comes from the network, so
the parser trusts nothing:

- it is :mod:`xml.parsers.expat` driven directly, with any DOCTYPE refused at its first line:
  no DTD means no entity declarations, hence no external entities (XXE) and no entity expansion
  bombs ("billion laughs"); parameter entities are off and external references refused too;
- the input is bounded (:data:`MAX_WHITELIST_BYTES`), as are nesting depth and field lengths;
- anything wrong is a :class:`WhitelistError` naming the source and the line, and the whole
  list is refused: a list we half understood is not a list we may trust.

It is tolerant where the published list varies without changing meaning: whitespace around
values, the order of elements inside ``<Domaine>``, elements it does not know (ignored, as are
attributes, comments and processing instructions), and timestamps in any ISO 8601 form, with or
without a time zone (UTC assumed without one, as ANS writes its timestamps in UTC).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, NoReturn
from xml.parsers import expat

from mssante.pki.dn import normalize_dn
from mssante.pki.errors import DnError
from mssante.whitelist.errors import WhitelistError
from mssante.whitelist.model import Whitelist, normalize_domain
from mssante.whitelist.xmlwriter import NAMESPACE

# The real list is a few megabytes (about 6,500 entries); leave room for growth, not for abuse.
MAX_WHITELIST_BYTES: Final = 64 * 1024 * 1024
# The document is four levels deep; unknown extensions may add a few.
MAX_DEPTH: Final = 32
# Longer than any domain (253) or DN (4096, mssante.pki.dn.MAX_DN_LENGTH) we would accept.
MAX_FIELD_CHARS: Final = 8192

_ROOT: Final = "ListeBlancheMSSante"
_SEPARATOR: Final = " "  # expat joins namespace URI and local name with it; URIs hold no space


@dataclass
class _Field:
    line: int
    chunks: list[str]
    size: int = 0

    @property
    def text(self) -> str:
        return "".join(self.chunks).strip()


@dataclass
class _Entry:
    line: int
    name: _Field | None = None
    dn: _Field | None = None


class _Problem(Exception):  # noqa: N818 - internal: carries a line out of an expat handler
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def parse_timestamp(text: str) -> datetime:
    """An ISO 8601 date or date-time as an aware UTC datetime; naive values are taken as UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"not an ISO 8601 date: {text.strip()!r}") from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def parse_whitelist(data: bytes, source: str, *, max_bytes: int = MAX_WHITELIST_BYTES) -> Whitelist:
    """Parse the XML list ``data``; ``source`` (a path or URL) only names it in error messages.

    Raises :class:`WhitelistError` with a message ``"<source>, line <n>: <problem>"``.
    """
    if len(data) > max_bytes:
        raise WhitelistError(f"{source}: larger than {max_bytes} bytes")
    reader = _Reader()
    try:
        reader.parse(data)
    except _Problem as problem:
        raise WhitelistError(f"{source}, line {problem.line}: {problem.message}") from None
    except expat.ExpatError as exc:
        raise WhitelistError(
            f"{source}, line {exc.lineno}, column {exc.offset + 1}: malformed XML: "
            f"{expat.ErrorString(exc.code)}"
        ) from None
    return Whitelist.from_normalized(reader.pairs, reader.generated)


class _Reader:
    """expat callbacks building the (domain, DN) pairs; one instance per document."""

    def __init__(self) -> None:
        parser = expat.ParserCreate(namespace_separator=_SEPARATOR)
        # Without this, expat hands character data over in pieces split at buffer boundaries.
        parser.buffer_text = True
        parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        parser.StartDoctypeDeclHandler = self._doctype
        parser.EntityDeclHandler = self._entity
        parser.ExternalEntityRefHandler = self._external_entity
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.CharacterDataHandler = self._characters
        self._parser = parser
        # The open elements, root first: local names of ours, {namespace}local of others.
        self._path: list[str] = []
        self._field: _Field | None = None  # the element whose text we are collecting
        self._entry: _Entry | None = None
        self._generated: _Field | None = None
        self._raw_dns: dict[str, str] = {}  # raw DN text -> normalised: ~400 DNs, 6,500 uses
        self._canonical_dns: dict[str, str] = {}
        self._container_line = 1  # <ListeDomaines>, else the root: where entries belong
        self.pairs: list[tuple[str, str]] = []
        self.generated: datetime | None = None

    def parse(self, data: bytes) -> None:
        self._parser.Parse(data, True)
        if not self.pairs:
            # An empty list would refuse every peer: certainly a broken file, not ANS's intent.
            self._fail("no <Domaine> entry in the list", self._container_line)
        if self._generated is not None:
            try:
                self.generated = parse_timestamp(self._generated.text)
            except ValueError as exc:
                self._fail(f"<DateDeGeneration>: {exc}", self._generated.line)

    # -- expat handlers ----------------------------------------------------------------------

    def _doctype(self, *_: object) -> NoReturn:
        # The list has no use for a DTD and a DTD is what XXE and entity bombs need.
        self._fail("DOCTYPE declarations are not accepted")

    def _entity(self, *_: object) -> NoReturn:
        self._fail("entity declarations are not accepted")

    def _external_entity(self, *_: object) -> NoReturn:
        self._fail("external entities are not accepted")

    def _start(self, name: str, _attributes: dict[str, str]) -> None:
        namespace, _, local = name.rpartition(_SEPARATOR)
        depth = len(self._path)
        if depth == 0:
            self._check_root(namespace, local)
        elif self._field is not None:
            self._fail(f"unexpected element <{local}> inside <{self._path[-1]}>")
        elif depth >= MAX_DEPTH:
            self._fail(f"elements nested deeper than {MAX_DEPTH}")
        if namespace not in (NAMESPACE, ""):
            # An extension in another namespace: neither it nor anything inside is ours to
            # interpret, even under a familiar local name.
            self._path.append(f"{{{namespace}}}{local}")
            return
        self._path.append(local)
        line = self._parser.CurrentLineNumber
        parent = self._path[-2] if depth >= 1 else ""
        if depth == 0 or (depth == 1 and local == "ListeDomaines"):
            self._container_line = line
        elif depth == 1 and local == "DateDeGeneration":
            if self._generated is not None:
                self._fail("<DateDeGeneration> appears twice")
            self._generated = self._field = _Field(line, [])
        elif depth == 2 and parent == "ListeDomaines" and local == "Domaine":
            self._entry = _Entry(line)
        elif depth == 3 and parent == "Domaine" and self._entry is not None:
            if local == "Nom":
                if self._entry.name is not None:
                    self._fail("<Domaine> has two <Nom>")
                self._entry.name = self._field = _Field(line, [])
            elif local == "DNCertificatOperateur":
                if self._entry.dn is not None:
                    self._fail("<Domaine> has two <DNCertificatOperateur>")
                self._entry.dn = self._field = _Field(line, [])

    def _end(self, name: str) -> None:
        local = self._path.pop()
        self._field = None
        if len(self._path) == 2 and local == "Domaine" and self._entry is not None:
            entry, self._entry = self._entry, None
            self._finish(entry)

    def _characters(self, text: str) -> None:
        field = self._field
        if field is None:
            return
        field.size += len(text)
        if field.size > MAX_FIELD_CHARS:
            self._fail(f"<{self._path[-1]}> longer than {MAX_FIELD_CHARS} characters", field.line)
        field.chunks.append(text)

    # -- checks ------------------------------------------------------------------------------

    def _check_root(self, namespace: str, local: str) -> None:
        if local != _ROOT:
            self._fail(f"root element is <{local}>, expected <{_ROOT}> in namespace {NAMESPACE}")
        if namespace != NAMESPACE:
            found = f"namespace {namespace}" if namespace else "no namespace"
            self._fail(f"<{_ROOT}> is in {found}, expected namespace {NAMESPACE}")

    def _finish(self, entry: _Entry) -> None:
        if entry.name is None:
            self._fail("<Domaine> without <Nom>", entry.line)
        if entry.dn is None:
            self._fail("<Domaine> without <DNCertificatOperateur>", entry.line)
        try:
            domain = normalize_domain(entry.name.text)
        except ValueError as exc:
            self._fail(f"<Nom>: {exc}", entry.name.line)
        raw_dn = entry.dn.text
        dn = self._raw_dns.get(raw_dn)
        if dn is None:
            try:
                dn = normalize_dn(raw_dn)
            except DnError as exc:
                self._fail(f"<DNCertificatOperateur>: {exc}", entry.dn.line)
            # One string object per distinct DN, however it was written: thousands of entries
            # share a few hundred operator certificates.
            dn = self._raw_dns[raw_dn] = self._canonical_dns.setdefault(dn, dn)
        self.pairs.append((domain, dn))

    def _fail(self, message: str, line: int | None = None) -> NoReturn:
        raise _Problem(self._parser.CurrentLineNumber if line is None else line, message)
