"""Writing a whitelist file in the ANS ``ListeBlancheMSSante`` format (for tests and demos).

The structure follows the list ANS publishes (``listeblanchemssante.xml``, namespace
``https://listeblanche.mssante.fr/schema``)::

    <ListeBlancheMSSante xmlns="https://listeblanche.mssante.fr/schema">
      <DateDeGeneration>2025-03-13T14:54:10Z</DateDeGeneration>
      <ListeDomaines>
        <Domaine>
          <Nom>…</Nom> <Description>…</Description> <DNCertificatOperateur>…</DNCertificatOperateur>
          <ResponsableContact>…</ResponsableContact> <SupportContact>…</SupportContact>
          <DateMAJ>…</DateMAJ>
        </Domaine> …
      </ListeDomaines>
    </ListeBlancheMSSante>

A domain appears once per operator certificate allowed to speak for it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

NAMESPACE: Final = "https://listeblanche.mssante.fr/schema"


@dataclass(frozen=True)
class WhitelistEntry:
    """One ``<Domaine>`` element.

    ``contact`` fills ``<ResponsableContact>``; ``support_contact`` fills ``<SupportContact>``
    and defaults to ``contact``.
    """

    domain: str
    dn: str
    description: str
    contact: str
    updated: datetime
    support_contact: str | None = None


def format_timestamp(moment: datetime) -> str:
    """ANS timestamps are UTC with a ``Z`` suffix, to the second."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def whitelist_xml(entries: Sequence[WhitelistEntry], generated: datetime) -> bytes:
    """The whitelist document as UTF-8 bytes, with an XML declaration."""
    ET.register_namespace("", NAMESPACE)
    root = ET.Element(_tag("ListeBlancheMSSante"))
    ET.SubElement(root, _tag("DateDeGeneration")).text = format_timestamp(generated)
    domains = ET.SubElement(root, _tag("ListeDomaines"))
    for entry in entries:
        element = ET.SubElement(domains, _tag("Domaine"))
        for name, value in (
            ("Nom", entry.domain),
            ("Description", entry.description),
            ("DNCertificatOperateur", entry.dn),
            ("ResponsableContact", entry.contact),
            ("SupportContact", entry.support_contact or entry.contact),
            ("DateMAJ", format_timestamp(entry.updated)),
        ):
            ET.SubElement(element, _tag(name)).text = value
    ET.indent(root, space="    ")
    body: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return body + b"\n"


def write_whitelist(path: Path, entries: Sequence[WhitelistEntry], generated: datetime) -> None:
    """Write the whitelist document to ``path``."""
    path.write_bytes(whitelist_xml(entries, generated))


def _tag(name: str) -> str:
    return f"{{{NAMESPACE}}}{name}"
