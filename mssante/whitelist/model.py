"""An immutable snapshot of the ANS whitelist, and the matching rules.

The list says which operator certificate may speak for which mail domain: one ``<Domaine>``
entry per (domain, certificate subject DN) pair, so a domain served by several operator
certificates appears several times, and one certificate usually serves many domains. The rules
(``docs/whitelist.md``):

- domains match exactly, case-insensitively, with or without a trailing dot, and an
  internationalised domain matches its A-label (``xn--…``) form; there is no wildcard and a
  sub-domain is not covered by its parent;
- DNs match by :func:`mssante.pki.dn.normalize_dn`: case, insignificant spaces and attribute
  order do not matter.

A :class:`Whitelist` never changes once built; the store replaces the whole object on refresh,
so a reader holding one sees a consistent list for as long as it keeps it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Final

from cryptography import x509

from mssante.pki.dn import normalize_dn
from mssante.pki.errors import DnError
from mssante.whitelist.errors import WhitelistError

# RFC 1035 §2.3.4: 255 octets on the wire, hence 253 characters in text without the final dot;
# labels of 63 octets at most.
MAX_DOMAIN_LENGTH: Final = 253
_LABEL: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")

_NO_NAMES: Final[frozenset[str]] = frozenset()


def normalize_domain(domain: str) -> str:
    """The form under which a domain is stored and looked up: lower-case A-labels, no final dot.

    Raises :class:`ValueError` for something that is not a domain name: RFC 5321 §4.1.2 domains
    are dot-separated letter-digit-hyphen labels; a U-label is converted to its A-label with
    Python's IDNA codec (RFC 3490), the form it takes on the wire without SMTPUTF8.
    """
    text = domain.strip().removesuffix(".")
    if not text.isascii():
        try:
            text = text.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise ValueError(f"invalid internationalised domain {domain!r}: {exc}") from None
    text = text.lower()
    if not text or len(text) > MAX_DOMAIN_LENGTH:
        raise ValueError(f"invalid domain {domain!r}: empty or longer than {MAX_DOMAIN_LENGTH}")
    for label in text.split("."):
        if not _LABEL.fullmatch(label):
            raise ValueError(f"invalid domain {domain!r}: bad label {label!r}")
    return text


def _domain_key(domain: str) -> str | None:
    """:func:`normalize_domain` for a lookup: ``None`` when ``domain`` cannot be listed."""
    if domain.isascii():
        # The hot path (every SMTP transaction): a listed domain was validated when the list
        # was built, so anything that is not one simply finds nothing.
        return domain.lower().removesuffix(".")
    try:
        return normalize_domain(domain)
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)
def _dn_key(dn: str | x509.Name) -> str | None:
    # Normalising a DN costs tens of microseconds and the same few hundred peer DNs come back
    # all day: cache them, so a lookup costs about a dict access. ``None``: cannot be listed.
    try:
        return normalize_dn(dn)
    except DnError:
        return None


@dataclass(frozen=True, eq=False)
class Whitelist:
    """One version of the list. Build it with :meth:`from_entries`, :meth:`empty` or the parser.

    ``generated`` is the list's ``DateDeGeneration`` (aware, UTC), ``None`` if absent.
    ``entries`` counts distinct (domain, DN) pairs (a ``<Domaine>`` repeated word for word counts
    once); :attr:`domains` and :attr:`operators` count distinct domains and DNs.
    """

    generated: datetime | None
    entries: int
    _by_domain: Mapping[str, frozenset[str]] = field(repr=False)
    _by_dn: Mapping[str, frozenset[str]] = field(repr=False)

    @classmethod
    def empty(cls) -> Whitelist:
        """The list before any is loaded: no domain, no operator, every peer refused."""
        return cls.from_normalized((), None)

    @classmethod
    def from_entries(
        cls, entries: Iterable[tuple[str, str | x509.Name]], generated: datetime | None = None
    ) -> Whitelist:
        """Build from (domain, DN) pairs as written anywhere; :class:`WhitelistError` if bad."""
        pairs: list[tuple[str, str]] = []
        for index, (domain, dn) in enumerate(entries):
            try:
                pairs.append((normalize_domain(domain), normalize_dn(dn)))
            except ValueError as exc:  # DnError is a ValueError
                raise WhitelistError(f"entry {index}: {exc}") from None
        return cls.from_normalized(pairs, generated)

    @classmethod
    def from_normalized(
        cls, pairs: Iterable[tuple[str, str]], generated: datetime | None
    ) -> Whitelist:
        """Build from pairs already in :func:`normalize_domain` / ``normalize_dn`` form."""
        by_domain: dict[str, set[str]] = {}
        by_dn: dict[str, set[str]] = {}
        for domain, dn in pairs:
            by_domain.setdefault(domain, set()).add(dn)
            by_dn.setdefault(dn, set()).add(domain)
        return cls(
            generated=generated,
            entries=sum(len(dns) for dns in by_domain.values()),
            _by_domain=MappingProxyType({d: frozenset(s) for d, s in by_domain.items()}),
            _by_dn=MappingProxyType({d: frozenset(s) for d, s in by_dn.items()}),
        )

    @property
    def domains(self) -> int:
        """How many distinct domains are listed."""
        return len(self._by_domain)

    @property
    def operators(self) -> int:
        """How many distinct operator certificate DNs are listed."""
        return len(self._by_dn)

    def allows(self, domain: str, dn: str | x509.Name) -> bool:
        """True when the certificate named ``dn`` may speak for ``domain``.

        The ANS rule for both directions: accept a peer's mail from ``domain`` only if the
        peer's verified certificate DN is listed for it, and relay to ``domain`` only to a server
        whose certificate DN is listed for it.
        """
        domain_key = _domain_key(domain)
        if domain_key is None:
            return False
        listed = self._by_domain.get(domain_key)
        if listed is None:
            return False
        dn_key = _dn_key(dn)
        return dn_key is not None and dn_key in listed

    def has_domain(self, domain: str) -> bool:
        """True when ``domain`` is listed (for any operator): we may relay to it."""
        key = _domain_key(domain)
        return key is not None and key in self._by_domain

    def is_listed_operator(self, dn: str | x509.Name) -> bool:
        """True when ``dn`` is listed for at least one domain.

        Used for the null reverse-path ``<>`` of DSNs and MDNs (RFC 5321 §4.5.5), which has no
        domain to check: any whitelisted operator may send one.
        """
        key = _dn_key(dn)
        return key is not None and key in self._by_dn

    def domains_for(self, dn: str | x509.Name) -> frozenset[str]:
        """The domains (normalised) the certificate named ``dn`` may speak for."""
        key = _dn_key(dn)
        if key is None:
            return _NO_NAMES
        return self._by_dn.get(key, _NO_NAMES)

    def operators_for(self, domain: str) -> frozenset[str]:
        """The normalised DNs of the certificates listed for ``domain``."""
        key = _domain_key(domain)
        if key is None:
            return _NO_NAMES
        return self._by_domain.get(key, _NO_NAMES)

    def domain_names(self) -> frozenset[str]:
        """Every listed domain (normalised), e.g. to report what a refresh added or removed."""
        return frozenset(self._by_domain)
