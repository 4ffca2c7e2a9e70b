"""The `mssante` command: one subcommand per component, documented in docs/cli.md.

Errors are one line on stderr and a non-zero exit (1 for a refused operation, 2 for a usage
error, 70 for an internal error); a traceback only with `--debug`.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from mssante import __version__, logs
from mssante.config import ConfigError, Settings, config_path, load_settings

if TYPE_CHECKING:  # the admin layer imports the store: loaded only by commands that need it
    from mssante.admin import Admin

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 70

MAILBOX_TYPES = ("PER", "ORG", "APP", "CAB", "PATIENT")


class CliError(Exception):
    """A refused operation: printed as one line, exit status 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


# --- helpers ---------------------------------------------------------------------------------


def _settings(args: argparse.Namespace, *, check: bool = True) -> Settings:
    settings = load_settings(config_path(args.config), check=check)
    logs.setup(args.log_format or settings.logging.format, args.log_level or settings.logging.level)
    return settings


def _run(coro: Coroutine[Any, Any, int | None]) -> int:
    return asyncio.run(coro) or 0


def _read_password(args: argparse.Namespace, *, required: bool) -> str | None:
    """The new password from --password-stdin, a generated one, or an interactive prompt."""
    from mssante.operator.passwords import check_policy, generate_password

    if getattr(args, "generate_password", False):
        password = generate_password()
        print(f"password: {password}")
        return password
    if getattr(args, "password_stdin", False):
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = getpass.getpass("New password: ")
        if getpass.getpass("Again: ") != password:
            raise CliError("the two passwords differ")
    elif required:
        raise CliError("no password given: use --password-stdin or --generate-password")
    else:
        return None
    check_policy(password)
    return password


# --- commands --------------------------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    path = Path(args.file) if args.file else config_path(args.config)
    settings = load_settings(path)
    print(
        f"{path}: ok (operator {settings.operator.hostname}, database "
        f"{_mask(settings.database_url)}, TLS profile {settings.pki.tls_profile})"
    )
    return 0


def _mask(url: str) -> str:
    from mssante.operator.store.db import mask_url

    return mask_url(url)


def cmd_keygen(args: argparse.Namespace) -> int:
    from mssante.operator.store.crypto import generate_key

    print(generate_key())
    return 0


def _use_uvloop() -> None:
    """uvloop's event loop where installed: the same asyncio API, a faster I/O core."""
    try:
        import uvloop
    except ImportError:
        return
    uvloop.install()


def cmd_serve(args: argparse.Namespace) -> int:
    from mssante.server import serve

    settings = _settings(args)
    _use_uvloop()
    return _run(serve(settings))


def cmd_db(args: argparse.Namespace) -> int:
    from mssante import admin

    settings = _settings(args, check=False)

    async def go() -> int:
        if args.db_command == "upgrade":
            before, after = await admin.db_upgrade(settings)
            print(
                f"database at revision {after}"
                + ("" if before == after else f" (was {before or 'empty'})")
            )
        elif args.db_command == "status":
            current, head = await admin.db_status(settings)
            state = "up to date" if current == head else "OUTDATED: run `mssante db upgrade`"
            print(
                f"database {_mask(settings.database_url)}: revision {current or 'none'}, "
                f"code expects {head}: {state}"
            )
            return 0 if current == head else EXIT_REFUSED
        elif args.db_command == "rekey":
            count = await admin.db_rekey(settings)
            print(f"{count} blob(s) re-encrypted under key {settings.storage.current_key_id}")
        return 0

    return _run(go())


def _with_admin(args: argparse.Namespace, body: Callable[[Admin], Awaitable[None]]) -> int:
    """Run `body` with the administrative operations of the configured store."""
    from mssante import admin

    settings = _settings(args, check=False)

    async def go() -> None:
        async with admin.open_admin(settings) as ops:
            await body(ops)

    return _run(go())


def cmd_domain(args: argparse.Namespace) -> int:
    async def body(ops: Admin) -> None:
        if args.domain_command == "add":
            print(f"domain {await ops.add_domain(args.domain)} is now hosted")
        else:
            for name in await ops.list_domains():
                print(name)

    return _with_admin(args, body)


def cmd_mailbox(args: argparse.Namespace) -> int:
    sub = args.mailbox_command
    password: str | None = None
    if sub in ("add", "passwd"):
        password = _read_password(args, required=sub == "passwd")

    async def body(ops: Admin) -> None:
        if sub == "add":
            box = await ops.add_mailbox(
                args.address,
                args.type,
                display_name=args.name,
                national_id=args.national_id,
                password=password,
                state=args.state,
            )
            print(f"mailbox {box.address} ({box.type}, {box.state}) created")
        elif sub == "list":
            rows = await ops.list_mailboxes(args.type)
            if args.json:
                print(json.dumps([r.as_json() for r in rows], ensure_ascii=False, indent=2))
            else:
                for r in rows:
                    print(f"{r.address:<45} {r.type:<8} {r.state:<9} {r.display_name}")
        elif sub == "show":
            info = await ops.show_mailbox(args.address)
            print(json.dumps(info, ensure_ascii=False, indent=2, default=str))
        elif sub in ("disable", "enable", "activate", "close"):
            box = await ops.change_state(args.address, sub)
            print(f"mailbox {box.address} is now {box.state}")
        elif sub == "passwd":
            assert password is not None  # required=True above
            await ops.set_password(args.address, password)
            print(f"password of {args.address.lower()} changed")
        elif sub == "quota":
            address, value = await ops.set_quota(args.address, args.size)
            shown = "the default" if value is None else "none" if value == 0 else f"{value} bytes"
            print(f"quota of {address} is now {shown}")
        elif sub == "bind-cert":
            binding = await ops.bind_certificate(args.address, Path(args.certificate))
            print(f"{args.address.lower()}: bound to certificate {binding}")

    return _with_admin(args, body)


def cmd_delegate(args: argparse.Namespace) -> int:
    from mssante.admin import parse_rights

    async def body(ops: Admin) -> None:
        if args.delegate_command == "grant":
            rights = parse_rights(args.rights)
            await ops.grant(args.owner, args.grantee, rights)
            print(
                f"{args.grantee.lower()} may now {', '.join(sorted(rights))} {args.owner.lower()}"
            )
        elif args.delegate_command == "revoke":
            await ops.revoke(args.owner, args.grantee)
            print(f"{args.grantee.lower()} no longer has access to {args.owner.lower()}")
        else:
            for g in await ops.list_grants(args.address):
                print(f"{g.owner:<40} {g.grantee:<40} {','.join(g.rights)}")

    return _with_admin(args, body)


def cmd_audit(args: argparse.Namespace) -> int:
    async def body(ops: Admin) -> None:
        for line in await ops.audit(args.limit, args.event):
            print(json.dumps(line, ensure_ascii=False, default=str))

    return _with_admin(args, body)


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
QUEUE_STATES = ("queued", "in_flight", "delivered", "deferred", "failed", "expired")


def parse_duration(text: str) -> float:
    """`0`, `90s`, `30m`, `12h`, `7d` (a bare number is seconds) → seconds."""
    value = text.strip().lower()
    unit = value[-1:] if value[-1:] in _DURATION_UNITS else "s"
    number = value[:-1] if value[-1:] in _DURATION_UNITS else value
    if not number.isdigit():
        raise CliError(f"duration {text!r}: expected a number with s, m, h or d, e.g. 7d")
    return int(number) * _DURATION_UNITS[unit]


def cmd_queue(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from mssante.operator.queue import Queue, Selection
    from mssante.operator.store.schema import QueueState

    sub = args.queue_command
    older_than = parse_duration(args.older_than) if sub == "purge-expired" else 0.0

    def selection() -> Selection:
        state = getattr(args, "state", None)
        return Selection(
            queue_ids=tuple(getattr(args, "ids", None) or ()),
            state=QueueState(state) if state else None,
            recipient=getattr(args, "recipient", None),
            domain=getattr(args, "domain", None),
            everything=getattr(args, "all", False),
        )

    async def body(ops: Admin) -> None:
        queue = Queue(ops.store)
        if sub == "list":
            rows = await queue.list_recipients(selection(), args.limit)
            if args.json:
                print(json.dumps([r.as_json() for r in rows], ensure_ascii=False, indent=2))
                return
            for r in rows:
                when = (
                    r.next_attempt_at.strftime("%Y-%m-%dT%H:%M:%SZ") if r.next_attempt_at else "-"
                )
                reply = " ".join(
                    str(p) for p in (r.last_code, r.last_enhanced, r.last_text) if p is not None
                )
                print(
                    f"{r.queue_id:>8} {r.id:>8} {r.state.value:<9} {r.attempts:>3} {when:<20} "
                    f"{r.address:<40} {reply}".rstrip()
                )
        elif sub == "show":
            view = await queue.show(args.id)
            print(json.dumps(view.as_json(), ensure_ascii=False, indent=2))
        elif sub == "retry":
            count = await queue.retry_now(selection(), ops.actor)
            print(f"{count} recipient(s) due now")
        elif sub == "delete":
            removed, kept = await queue.delete(selection(), ops.actor)
            print(
                f"{removed} recipient(s) deleted"
                + (f", {kept} in flight kept (retry later)" if kept else "")
            )
        elif sub == "purge-expired":
            count = await queue.purge_finished(timedelta(seconds=older_than), ops.actor)
            print(f"{count} finished message(s) purged")

    return _with_admin(args, body)


def cmd_whitelist(args: argparse.Namespace) -> int:
    from mssante.whitelist import commands

    if args.whitelist_command == "check":
        if args.file:
            allowed = commands.check_file(Path(args.file), args.domain, args.dn)
        else:
            settings = _settings(args, check=False)
            allowed = commands.check_cached(settings.whitelist_cache_dir, args.domain, args.dn)
        print("yes" if allowed else "no")
        return 0 if allowed else EXIT_REFUSED
    settings = _settings(args, check=False)
    if args.whitelist_command == "show":
        report = commands.show(settings.whitelist_cache_dir, settings.whitelist.source)
        print(json.dumps(report, ensure_ascii=False, indent=2, default=str))
        return 0
    from mssante.server import whitelist_store

    report = _run_value(commands.refresh_now(whitelist_store(settings)))
    print(json.dumps(report, ensure_ascii=False, indent=2, default=str))
    return EXIT_REFUSED if report.get("last_error") else 0


def cmd_pki(args: argparse.Namespace) -> int:
    from mssante.pki import commands

    if args.pki_command == "test-hierarchy":
        commands.test_hierarchy(Path(args.outdir), args.operator_host)
        print(f"test PKI written to {args.outdir} (see its README.md)")
        return 0
    if args.pki_command == "show":
        print(json.dumps(commands.show(Path(args.certificate)), ensure_ascii=False, indent=2))
        return 0
    # verify: against the configured trust anchors and CRLs, or the ones given.
    trust = Path(args.trust) if args.trust else None
    crls: list[str] = list(args.crl or [])
    if trust is None:
        settings = _settings(args, check=False)
        trust = settings.pki.trust_anchors
        crls = crls or settings.pki.crls
    report = _run_value(commands.verify(Path(args.certificate), trust, crls, args.purpose))
    print(json.dumps(report, ensure_ascii=False, indent=2))
    return 0 if report["valid"] else EXIT_REFUSED


def cmd_dkim(args: argparse.Namespace) -> int:
    from mssante.operator import dkim_sign

    if args.dkim_command == "genkey":
        dkim_sign.generate_key(Path(args.file), args.type, args.bits)
        print(f"DKIM {args.type} key written to {args.file} (mode 0600)")
        print("next: set [dkim] private_key, selector and domains, then publish the record of")
        print("`mssante dkim dns-record`")
        return 0
    # dns-record: the configured key, selector and domains unless given on the command line.
    key_file = Path(args.key) if args.key else None
    selector: str = args.selector or ""
    domains: list[str] = list(args.domain or [])
    if key_file is None or not selector or not domains:
        settings = _settings(args, check=False)
        key_file = key_file or settings.dkim.private_key
        selector = selector or settings.dkim.selector
        domains = domains or settings.dkim.domains
    if key_file is None:
        raise CliError("no DKIM key: set [dkim] private_key or give --key")
    if not selector:
        raise CliError("no DKIM selector: set [dkim] selector or give --selector")
    if not domains:
        raise CliError("no signing domain: set [dkim] domains or give --domain")
    key = dkim_sign.load_signing_key(key_file)
    for domain in domains:
        print(dkim_sign.dns_record(selector, domain, key))
    return 0


def _run_value(coro: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    return asyncio.run(coro)


def cmd_demo(args: argparse.Namespace) -> int:
    from mssante import demo

    logs.setup(args.log_format or "kv", args.log_level or "warning")
    _use_uvloop()
    return _run(demo.run(Path(args.dir), port_base=args.port_base, reset=args.reset))


# --- parser ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mssante", description="An MSSanté operator: secure health e-mail.")
    p.add_argument("--version", action="version", version=f"mssante {__version__}")
    p.add_argument(
        "-c", "--config", help="configuration file (default: $MSSANTE_CONFIG, else ./mssante.toml)"
    )
    p.add_argument("--log-format", choices=("kv", "json"), help="override logging.format")
    p.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), help="override logging.level"
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    s = sub.add_parser("serve", help="start every enabled listener")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("check-config", help="validate a configuration file; start nothing")
    s.add_argument("file", nargs="?", help="file to check (default: the --config file)")
    s.set_defaults(func=cmd_check_config)

    s = sub.add_parser("keygen", help="print a new random message-encryption key (base64)")
    s.set_defaults(func=cmd_keygen)

    s = sub.add_parser("db", help="database schema")
    dsub = s.add_subparsers(
        dest="db_command", required=True, metavar="ACTION", parser_class=_Parser
    )
    dsub.add_parser("upgrade", help="create or migrate the schema to this version")
    dsub.add_parser("status", help="show the schema revision; exit 1 if outdated")
    dsub.add_parser("rekey", help="re-encrypt every message body under storage.current_key_id")
    s.set_defaults(func=cmd_db)

    s = sub.add_parser("domain", help="hosted mail domains")
    dsub = s.add_subparsers(
        dest="domain_command", required=True, metavar="ACTION", parser_class=_Parser
    )
    a = dsub.add_parser("add", help="host a domain")
    a.add_argument("domain")
    dsub.add_parser("list", help="list hosted domains")
    s.set_defaults(func=cmd_domain)

    s = sub.add_parser("mailbox", help="mailboxes (PER, ORG, APP, CAB, PATIENT)")
    msub = s.add_subparsers(
        dest="mailbox_command", required=True, metavar="ACTION", parser_class=_Parser
    )
    a = msub.add_parser("add", help="create a mailbox and its standard folders")
    a.add_argument("address")
    a.add_argument("--type", required=True, choices=MAILBOX_TYPES, type=str.upper)
    a.add_argument("--name", default="", help="display name")
    a.add_argument(
        "--national-id",
        help="holder's id: 8+RPPS (PER), 1+FINESS or 3+SIRET "
        "(ORG, APP, CAB); for PATIENT the INS is taken from the address",
    )
    a.add_argument(
        "--state",
        choices=("active", "disabled", "pending"),
        help="initial state (default: active; pending for PATIENT)",
    )
    _password_options(a)
    a = msub.add_parser("list", help="list mailboxes")
    a.add_argument("--type", choices=MAILBOX_TYPES, type=str.upper)
    a.add_argument("--json", action="store_true", help="machine-readable output")
    for name, text in (
        ("show", "show a mailbox, its folders, grants and certificate bindings"),
        ("disable", "refuse mail and logins for a mailbox (kept, reversible)"),
        ("enable", "re-enable a disabled mailbox"),
        ("activate", "activate a pending PATIENT mailbox"),
        ("close", "close a PATIENT mailbox (no more mail, no login)"),
    ):
        a = msub.add_parser(name, help=text)
        a.add_argument("address")
    a = msub.add_parser("passwd", help="set a mailbox's password")
    a.add_argument("address")
    _password_options(a)
    a = msub.add_parser("quota", help="set a mailbox's quota")
    a.add_argument("address")
    a.add_argument("size", help="e.g. 500M, 2G, a number of bytes; 0 = no quota; default")
    a = msub.add_parser("bind-cert", help="let a certificate log in to a mailbox (EXTERNAL)")
    a.add_argument("address")
    a.add_argument("certificate", help="PEM file of the client certificate")
    s.set_defaults(func=cmd_mailbox)

    s = sub.add_parser("delegate", help="delegations and ORG/CAB memberships")
    gsub = s.add_subparsers(
        dest="delegate_command", required=True, metavar="ACTION", parser_class=_Parser
    )
    a = gsub.add_parser("grant", help="give GRANTEE rights on OWNER's mailbox")
    a.add_argument("owner")
    a.add_argument("grantee")
    a.add_argument(
        "--rights", default="read", help="comma-separated: read, write, send-as (default: read)"
    )
    a = gsub.add_parser("revoke", help="remove every right of GRANTEE on OWNER")
    a.add_argument("owner")
    a.add_argument("grantee")
    a = gsub.add_parser("list", help="list grants (of one mailbox, as owner or grantee)")
    a.add_argument("address", nargs="?")
    s.set_defaults(func=cmd_delegate)

    s = sub.add_parser("audit", help="show recent audit events (JSON lines)")
    s.add_argument("--limit", type=int, default=50)
    s.add_argument("--event", help="only events of this kind, e.g. mailbox.add")
    s.set_defaults(func=cmd_audit)

    s = sub.add_parser("queue", help="the outbound queue to other operators")
    qsub = s.add_subparsers(
        dest="queue_command", required=True, metavar="ACTION", parser_class=_Parser
    )
    a = qsub.add_parser("list", help="queued recipients: message, id, state, attempts, reply")
    _queue_filters(a, QUEUE_STATES)
    a.add_argument("--limit", type=int, default=1000, help="at most this many (default 1000)")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    a = qsub.add_parser("show", help="a queued message, its recipients and attempts (JSON)")
    a.add_argument("id", type=int, help="queue id of the message (first column of list)")
    a = qsub.add_parser("retry", help="make waiting recipients (queued, deferred) due now")
    _queue_filters(a, ("queued", "deferred"), ids=True)
    a = qsub.add_parser("delete", help="remove recipients from the queue, without any DSN")
    _queue_filters(a, QUEUE_STATES, ids=True)
    a = qsub.add_parser(
        "purge-expired", help="remove finished messages (every recipient final, no DSN owed)"
    )
    a.add_argument(
        "--older-than",
        default="0",
        help="only those finished at least this long ago: 90s, 30m, 12h, 7d (default 0)",
    )
    s.set_defaults(func=cmd_queue)

    s = sub.add_parser("whitelist", help="the ANS whitelist of operators and domains")
    wsub = s.add_subparsers(
        dest="whitelist_command", required=True, metavar="ACTION", parser_class=_Parser
    )
    wsub.add_parser("show", help="source, generation date, counts, age, last error (JSON)")
    a = wsub.add_parser("check", help="may this certificate DN speak for this domain?")
    a.add_argument("domain")
    a.add_argument("dn", help='subject DN, e.g. "CN=smtp.x.fr,OU=318…,O=…,C=FR"')
    a.add_argument("--file", help="check against this list file, without any configuration")
    wsub.add_parser("refresh", help="download and verify the list now")
    s.set_defaults(func=cmd_whitelist)

    s = sub.add_parser("pki", help="certificates and the test PKI")
    psub = s.add_subparsers(
        dest="pki_command", required=True, metavar="ACTION", parser_class=_Parser
    )
    a = psub.add_parser("test-hierarchy", help="write a test PKI modelled on IGC-Santé")
    a.add_argument("outdir")
    a.add_argument("--operator-host", default="mx.demo.mssante.test")
    a = psub.add_parser("show", help="print a certificate's identity (DN, ids, validity)")
    a.add_argument("certificate")
    a = psub.add_parser("verify", help="validate a certificate chain and revocation")
    a.add_argument("certificate")
    a.add_argument(
        "--purpose",
        choices=("server", "client", "peer"),
        default="peer",
        help="server: operator server; client: professional; peer: operator as "
        "mutual-TLS client (default)",
    )
    a.add_argument("--trust", help="trust-anchor bundle (default: pki.trust_anchors)")
    a.add_argument("--crl", action="append", help="CRL file or URL (repeatable; default: pki.crls)")
    s.set_defaults(func=cmd_pki)

    s = sub.add_parser("dkim", help="DKIM signing key and the DNS record to publish")
    ksub = s.add_subparsers(
        dest="dkim_command", required=True, metavar="ACTION", parser_class=_Parser
    )
    a = ksub.add_parser("genkey", help="write a new private signing key (mode 0600)")
    a.add_argument("file", help="where to write it; an existing file is never overwritten")
    a.add_argument("--type", choices=("rsa", "ed25519"), default="rsa", help="default: rsa")
    a.add_argument("--bits", type=int, default=2048, help="RSA key size (default: 2048)")
    a = ksub.add_parser("dns-record", help="print the TXT record(s) publishing the public key")
    a.add_argument("--key", help="private key file (default: dkim.private_key)")
    a.add_argument("--selector", help="default: dkim.selector")
    a.add_argument(
        "--domain", action="append", help="signing domain, repeatable (default: dkim.domains)"
    )
    s.set_defaults(func=cmd_dkim)

    s = sub.add_parser("demo", help="build and start a self-contained demo operator")
    s.add_argument("--dir", default="demo", help="where to build it (default: ./demo)")
    s.add_argument(
        "--port-base",
        type=int,
        default=10000,
        help="listeners go on base+25 (relay), base+587, base+143, base+993, "
        "base+80 (metrics)… (default: 10000)",
    )
    s.add_argument("--reset", action="store_true", help="rebuild the demo from scratch")
    s.set_defaults(func=cmd_demo)
    return p


def _queue_filters(
    parser: argparse.ArgumentParser, states: Sequence[str], *, ids: bool = False
) -> None:
    if ids:
        parser.add_argument("ids", nargs="*", type=int, metavar="ID", help="queue ids of messages")
        parser.add_argument("--all", action="store_true", help="every recipient matching")
    parser.add_argument("--state", choices=states)
    parser.add_argument("--recipient", help="exact recipient address (any case)")
    parser.add_argument("--domain", help="destination domain (any case)")


def _password_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input",
    )
    group.add_argument(
        "--generate-password", action="store_true", help="generate a random password and print it"
    )


def _known_errors() -> tuple[type[BaseException], ...]:
    from mssante.admin import AdminError
    from mssante.operator.addresses import AddressError
    from mssante.operator.dkim_sign import DkimKeyError
    from mssante.operator.passwords import PasswordPolicyError
    from mssante.operator.store.errors import StoreError
    from mssante.pki.errors import PkiError
    from mssante.server import StartupError
    from mssante.whitelist.errors import WhitelistError

    return (
        CliError,
        ConfigError,
        AdminError,
        AddressError,
        DkimKeyError,
        PasswordPolicyError,
        StoreError,
        PkiError,
        StartupError,
        WhitelistError,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # The error types are looked up only when something failed: importing them all
        # (the server among them) would slow every command down.
        if isinstance(exc, _known_errors()):
            print(f"mssante: error: {exc}", file=sys.stderr)
            return EXIT_REFUSED
        if args.debug:
            raise
        logging.getLogger("mssante").debug("internal error", exc_info=True)
        print(
            f"mssante: internal error: {type(exc).__name__}: {exc} (run with --debug for details)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
