"""`mssante demo`: a self-contained operator in one directory, started with one command.

The directory holds a configuration, a copy of the test PKI, a whitelist in the official ANS
XML format naming the demo peers, an SQLite database with a mailbox of every type, and
`demo.json`, the stable description scripts read (documented in docs/demo.md). Running the
command again reuses what it built (same passwords, same mail); `--reset` starts afresh.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mssante
from mssante import admin
from mssante.config import load_settings
from mssante.operator import dkim_sign
from mssante.operator.passwords import generate_password
from mssante.operator.store.crypto import generate_key
from mssante.pki.anchors import load_certificates
from mssante.pki.identity import identity_of
from mssante.pki.testca import write_test_hierarchy
from mssante.server import Running, serve
from mssante.whitelist.xmlwriter import WhitelistEntry, write_whitelist

OPERATOR_HOST = "mx.demo.mssante.test"
DOMAIN = "demo.mssante.test"
PATIENT_DOMAIN = "patient.mssante.test"

# Offsets from --port-base, mnemonic of the standard ports. Later listeners take theirs here.
PORT_OFFSETS = {
    "relay": 25,
    "submission": 587,
    "smtps": 465,
    "imap": 143,
    "imaps": 993,
    "webmail": 443,
    "metrics": 80,
}

# The test PKI's peers that the demo whitelist lists, with the domain each speaks for.
PEERS = (("peer-a", "hopital-a.mssante.test"), ("peer-b", "clinique-b.fr"))


@dataclass(frozen=True)
class DemoMailbox:
    address: str
    type: str
    display_name: str
    national_id: str | None


MAILBOXES = (
    DemoMailbox(f"jean.dupont@{DOMAIN}", "PER", "Dr Jean DUPONT", "810001234567"),
    DemoMailbox(f"marie.martin@{DOMAIN}", "PER", "Dr Marie MARTIN", "810009876543"),
    DemoMailbox(f"claire.petit@{DOMAIN}", "PER", "Claire PETIT (secrétariat)", "810005550001"),
    DemoMailbox(f"cardiologie@{DOMAIN}", "ORG", "Service de cardiologie", "1750712184"),
    DemoMailbox(f"dpi-noreply@{DOMAIN}", "APP", "DPI (envois automatiques)", "1750712184"),
    DemoMailbox(f"cabinet.dupont@{DOMAIN}", "CAB", "Cabinet du Dr Dupont", None),
    DemoMailbox(f"146026322000196@{PATIENT_DOMAIN}", "PATIENT", "Patient de démonstration", None),
)

# (owner, grantee, rights): a PER delegated to a secretary, an ORG with two members, a CAB.
GRANTS = (
    (f"jean.dupont@{DOMAIN}", f"claire.petit@{DOMAIN}", {"read", "write", "send-as"}),
    (f"cardiologie@{DOMAIN}", f"jean.dupont@{DOMAIN}", {"read", "write", "send-as"}),
    (f"cardiologie@{DOMAIN}", f"marie.martin@{DOMAIN}", {"read", "write"}),
    (f"cabinet.dupont@{DOMAIN}", f"jean.dupont@{DOMAIN}", {"read", "write", "send-as"}),
)


class DemoError(admin.AdminError):
    pass


def _fixtures_dir() -> Path | None:
    """The committed test PKI, when running from a source checkout."""
    candidate = Path(mssante.__file__).resolve().parents[1] / "tls-fixtures"
    return candidate if (candidate / "ca-bundle.pem").is_file() else None


DKIM_SELECTOR = "demo"
DKIM_KEY = "dkim/demo.key"


def _config_text(key: str, port_base: int, dkim_record: str) -> str:
    return f"""\
# Demo operator written by `mssante demo`. Test certificates and keys: never use in production.
[operator]
hostname = "{OPERATOR_HOST}"
data_dir = "data"
patient_domain = "{PATIENT_DOMAIN}"

[pki]
trust_anchors = "tls/ca-bundle.pem"
certificate = "tls/operator.pem"
private_key = "tls/operator.key"
crls = ["tls/root-ca.crl.pem", "tls/org-ca.crl.pem", "tls/pro-ca.crl.pem"]
tls_profile = "mssante"

[storage.keys]
demo = "{key}"

[logging]
format = "kv"
level = "info"

[metrics]
listen = "127.0.0.1:{port_base + PORT_OFFSETS["metrics"]}"

[relay]
listen = "127.0.0.1:{port_base + PORT_OFFSETS["relay"]}"

[imap]
enabled = true
listen = "127.0.0.1:{port_base + PORT_OFFSETS["imap"]}"
implicit_tls_listen = "127.0.0.1:{port_base + PORT_OFFSETS["imaps"]}"

[submission]
enabled = true
listen = "127.0.0.1:{port_base + PORT_OFFSETS["submission"]}"
implicit_tls_listen = "127.0.0.1:{port_base + PORT_OFFSETS["smtps"]}"

[whitelist]
source = "whitelist.xml"

[dkim]
# Outbound mail is signed with this key; the record that DNS would publish is given here too,
# so that the demo verifies its own signatures without a DNS zone.
private_key = "{DKIM_KEY}"
selector = "{DKIM_SELECTOR}"
domains = ["{DOMAIN}"]

[dkim.static_keys]
"{DKIM_SELECTOR}._domainkey.{DOMAIN}" = "{dkim_record}"
"""


def _write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only, atomically (readers never see half of it)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    tmp.replace(path)


def _existing_key(config: Path) -> str | None:
    if not config.is_file():
        return None
    try:
        settings = load_settings(config, check=False)
    except Exception:
        return None
    return settings.storage.keys.get("demo")


MARKER = ".mssante-demo"  # present in every directory `mssante demo` built


def _prepare_files(directory: Path, port_base: int, reset: bool) -> tuple[Path, bool]:
    """Lay out the directory; returns the config path and whether mailboxes exist already."""
    if not 1024 <= port_base <= 65535 - max(PORT_OFFSETS.values()):
        raise DemoError(f"--port-base {port_base}: must leave every port between 1024 and 65535")
    is_demo = (directory / MARKER).is_file()
    if directory.exists() and any(directory.iterdir()) and not is_demo:
        raise DemoError(
            f"{directory}: exists and is not a demo directory; refusing to use or delete it "
            f"(choose another --dir)"
        )
    state_file = directory / "demo.json"
    if reset and directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MARKER).touch()
    built = state_file.is_file()
    if not built:
        # A build that stopped half-way (no demo.json yet) starts again from an empty database.
        shutil.rmtree(directory / "data", ignore_errors=True)
    config = directory / "mssante.toml"
    key = _existing_key(config) or generate_key()
    dkim_key = directory / DKIM_KEY
    if not dkim_key.is_file():
        dkim_key.parent.mkdir(exist_ok=True)
        dkim_sign.generate_key(dkim_key)
    record = dkim_sign.load_signing_key(dkim_key).public_record
    _write_private(config, _config_text(key, port_base, record))

    tls = directory / "tls"
    if not (tls / "ca-bundle.pem").is_file():
        fixtures = _fixtures_dir()
        if fixtures is not None:
            shutil.copytree(fixtures, tls, dirs_exist_ok=True)
        else:  # installed without the source tree: make a fresh test hierarchy
            write_test_hierarchy(tls, OPERATOR_HOST)
        for private in tls.glob("*.key"):  # git does not keep file modes: keys private again
            private.chmod(0o600)
    _write_demo_whitelist(directory / "whitelist.xml", tls)
    return config, built


async def build(directory: Path, port_base: int, reset: bool) -> tuple[Path, list[dict[str, Any]]]:
    """Create (or reuse) the demo directory; returns the config path and the mailboxes."""
    config, built = await asyncio.to_thread(_prepare_files, directory, port_base, reset)
    settings = load_settings(config)
    await admin.db_upgrade(settings)
    state_file = directory / "demo.json"
    if built:
        previous = json.loads(await asyncio.to_thread(state_file.read_text, encoding="utf-8"))
        mailboxes: list[dict[str, Any]] = previous["mailboxes"]
        return config, mailboxes

    mailboxes = []
    async with admin.open_admin(settings, actor="demo") as ops:
        for domain in (DOMAIN, PATIENT_DOMAIN):
            await ops.add_domain(domain)
        for box in MAILBOXES:
            password = generate_password()
            await ops.add_mailbox(
                box.address,
                box.type,
                display_name=box.display_name,
                national_id=box.national_id,
                password=password,
                state="active",
            )
            mailboxes.append(
                {
                    "address": box.address,
                    "type": box.type,
                    "password": password,
                    "display_name": box.display_name,
                }
            )
        for owner, grantee, rights in GRANTS:
            await ops.grant(owner, grantee, frozenset(rights))
    # Written now, completed with the listeners once they accept: a later run reuses the build.
    _write_private(state_file, json.dumps({"mailboxes": mailboxes}, indent=2) + "\n")
    return config, mailboxes


def _write_demo_whitelist(path: Path, tls: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    entries = [
        WhitelistEntry(
            domain=DOMAIN,
            dn=_dn(tls / "operator.pem"),
            description="Opérateur de démonstration",
            contact="admin@" + DOMAIN,
            updated=now,
        )
    ]
    for name, domain in PEERS:
        entries.append(
            WhitelistEntry(
                domain=domain,
                dn=_dn(tls / f"{name}.pem"),
                description=f"Pair de démonstration {name}",
                contact=f"postmaster@{domain}",
                updated=now,
            )
        )
    write_whitelist(path, entries, now)


def _dn(cert: Path) -> str:
    return identity_of(load_certificates(cert)[0]).subject_dn


def describe(
    directory: Path, config: Path, running: Running, mailboxes: list[dict[str, Any]]
) -> dict[str, Any]:
    """The demo.json document (docs/demo.md): a stable interface for scripts."""
    tls = directory.resolve() / "tls"
    peer_name, peer_domain = PEERS[0]
    return {
        "operator": running.settings.operator.hostname,
        "config": str(config.resolve()),
        "listeners": dict(running.listeners),
        "mailboxes": mailboxes,
        "delegations": [{"owner": o, "grantee": g, "rights": sorted(r)} for o, g, r in GRANTS],
        "ca": str(tls / "ca-bundle.pem"),
        "whitelist": str(directory.resolve() / "whitelist.xml"),
        "peer": {
            "domain": peer_domain,
            "sender": f"dr.house@{peer_domain}",
            "cert": str(tls / f"{peer_name}.pem"),
            "key": str(tls / f"{peer_name}.key"),
        },
        "pid": os.getpid(),
    }


def _print_summary(info: dict[str, Any]) -> None:
    lines = [f"MSSanté demo operator {info['operator']} is running (Ctrl-C stops it).", ""]
    lines.append("Listeners:")
    for name, where in info["listeners"].items():
        lines.append(f"  {name:<12} {where}")
    lines += ["", "Mailboxes (log in with the address and the password):"]
    for box in info["mailboxes"]:
        lines.append(f"  {box['type']:<8} {box['address']:<45} {box['password']}")
    lines += ["", "Delegations and memberships:"]
    for grant in info["delegations"]:
        lines.append(f"  {grant['grantee']} → {grant['owner']}: {', '.join(grant['rights'])}")
    relay = info["listeners"].get("relay")
    if relay:
        host, port = relay.rsplit(":", 1)
        peer = info["peer"]
        first = info["mailboxes"][0]["address"]
        lines += [
            "",
            "Deliver a message as the whitelisted peer operator:",
            f"  swaks --server {host} --port {port} --tls --tls-cert {peer['cert']} \\",
            f"        --tls-key {peer['key']} --from {peer['sender']} --to {first}",
        ]
    submission = info["listeners"].get("submission")
    if submission:
        host, port = submission.rsplit(":", 1)
        box = info["mailboxes"][0]
        to = info["mailboxes"][1]["address"]
        lines += [
            "",
            f"Send a message as {box['address']} (submission, AUTH after STARTTLS):",
            f"  swaks --server {host} --port {port} --tls --auth PLAIN \\",
            f"        --auth-user {box['address']} --auth-password '{box['password']}' \\",
            f"        --from {box['address']} --to {to}",
        ]
    imaps = info["listeners"].get("imaps")
    imap = info["listeners"].get("imap")
    if imaps or imap:
        lines += ["", "Thunderbird (docs/demo.md): server 127.0.0.1, normal password,"]
        if imaps:
            lines.append(f"  IMAP port {imaps.rsplit(':', 1)[1]} with SSL/TLS")
        if imap:
            lines.append(f"  or port {imap.rsplit(':', 1)[1]} with STARTTLS")
        smtps = info["listeners"].get("smtps")
        if smtps:
            lines.append(f"  SMTP port {smtps.rsplit(':', 1)[1]} with SSL/TLS")
        if submission:
            lines.append(f"  or port {submission.rsplit(':', 1)[1]} with STARTTLS")
        lines.append(f"  trust {info['ca']} or accept the certificate exception")
    lines += [
        "",
        f"Trust anchors: {info['ca']}",
        f"Whitelist:     {info['whitelist']}",
        f"Peer operator: {info['peer']['cert']} (speaks for {info['peer']['domain']})",
        f"Configuration: {info['config']}",
        f"Written to:    {info['demo_json']}",
    ]
    print("\n".join(lines), flush=True)


async def run(directory: Path, *, port_base: int = 10000, reset: bool = False) -> int:
    config, mailboxes = await build(directory, port_base, reset)
    settings = load_settings(config)

    async def ready(running: Running) -> None:
        info = describe(directory, config, running, mailboxes)
        state_file = directory / "demo.json"
        info["demo_json"] = str(state_file.resolve())
        _write_private(state_file, json.dumps(info, ensure_ascii=False, indent=2) + "\n")
        _print_summary(info)

    return await serve(settings, on_ready=ready)
