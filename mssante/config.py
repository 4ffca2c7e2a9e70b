"""One typed, validated settings object, loaded from `mssante.toml` (+ environment for secrets).

Every key is documented in docs/configuration.md with its default. Validation is strict on
purpose: an operator of health data must not start half-configured. An unknown key, a wrong
type, a missing file or an unreadable certificate stops the program with *one* message naming
the key or the path and what is wrong (`ConfigError`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

DEFAULT_CONFIG_NAME = "mssante.toml"

# Secrets may come from the environment instead of the file (12-factor style, and so that the
# file can be world-readable). The environment wins over the file.
ENV_CONFIG = "MSSANTE_CONFIG"
ENV_DATABASE_URL = "MSSANTE_DATABASE_URL"
ENV_STORAGE_KEYS = "MSSANTE_STORAGE_KEYS"
ENV_STORAGE_KEY_ID = "MSSANTE_STORAGE_KEY_ID"
ENV_TLS_KEY_PASSWORD = "MSSANTE_TLS_KEY_PASSWORD"  # noqa: S105 - a variable name, not a secret


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key or path and the problem."""


TlsProfile = Literal["mssante", "modern"]
LogFormat = Literal["kv", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]


@dataclass(frozen=True)
class OperatorSettings:
    hostname: str
    """Our public host name: SMTP greeting, Received: headers, the CN of our certificate."""
    data_dir: Path = Path("data")
    patient_domain: str = "patient.mssante.fr"


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = ""
    """Empty means the embedded SQLite file `<data_dir>/mssante.db`."""


@dataclass(frozen=True)
class StorageSettings:
    current_key_id: str = ""
    keys: dict[str, str] = field(default_factory=dict)
    max_message_size: int = 25 * 1024 * 1024
    default_quota_bytes: int = 10 * 1024**3
    """Quota of a mailbox without its own; 0 means no quota."""


@dataclass(frozen=True)
class RelaySettings:
    """The listener for peer operators (server-to-server SMTP, mutual TLS)."""

    enabled: bool = True
    listen: str = "0.0.0.0:25"
    implicit_tls_listen: str = ""
    """Empty: no implicit-TLS listener. Else HOST:PORT where TLS starts at connect."""
    max_connections: int = 200
    max_connections_per_peer: int = 20
    max_commands: int = 2000
    max_recipients: int = 100
    max_line_length: int = 1000
    idle_timeout_seconds: int = 300


@dataclass(frozen=True)
class ImapSettings:
    """The IMAP listeners for professionals' mail clients (docs/imap.md)."""

    enabled: bool = True
    listen: str = "0.0.0.0:143"
    """HOST:PORT of the listener where clients start TLS with STARTTLS."""
    implicit_tls_listen: str = "0.0.0.0:993"
    """Empty: no implicit-TLS listener (RFC 8314 recommends offering it)."""
    max_connections: int = 1000
    max_connections_per_ip: int = 50
    idle_timeout_seconds: int = 1800
    """RFC 9051 §5.4: an inactivity autologout timer of at least 30 minutes."""
    unauthenticated_timeout_seconds: int = 60
    """Before login the RFC sets no minimum: a silent unauthenticated connection goes sooner."""
    login_failures_before_delay: int = 3
    login_delay_max_seconds: int = 30
    idle_poll_seconds: float = 1.0
    """SQLite only: how often IDLE looks for changes written by another process (one query for
    every watched folder). PostgreSQL pushes them (LISTEN/NOTIFY)."""


@dataclass(frozen=True)
class SubmissionSettings:
    """The submission listeners for mail clients and software (docs/submission.md)."""

    enabled: bool = True
    listen: str = "0.0.0.0:587"
    """HOST:PORT of the listener where clients start TLS with STARTTLS (RFC 6409)."""
    implicit_tls_listen: str = "0.0.0.0:465"
    """Empty: no implicit-TLS listener (RFC 8314 recommends offering it)."""
    max_connections: int = 500
    max_connections_per_ip: int = 20
    max_commands: int = 1000
    max_recipients: int = 100
    max_line_length: int = 1000
    idle_timeout_seconds: int = 300
    save_sent: bool = True
    """Store a copy of each submitted message, marked \\Seen, in the sender's Sent folder."""
    check_directory: bool = True
    """Refuse remote recipients missing from the national directory mirror (550 5.1.1)."""


@dataclass(frozen=True)
class WhitelistSettings:
    """The ANS whitelist: which operator certificate may speak for which domain."""

    source: str = ""
    """A file path or an https:// URL of the ANS XML list. Empty: every peer is refused."""
    checksum: str = ""
    """The published SHA-256: a file path or URL of the checksum file, or the hex digest."""
    refresh_seconds: int = 3600
    cache_dir: Path | None = None
    client_certificate: bool = False
    """Present our operator certificate when downloading over HTTPS."""


@dataclass(frozen=True)
class DkimSettings:
    verify: bool = True
    dns_timeout_seconds: float = 5.0
    static_keys: dict[str, str] = field(default_factory=dict)
    """`selector._domainkey.domain` → TXT record value, consulted before DNS (tests, private
    networks)."""
    private_key: Path | None = None
    """The signing key (PEM, RSA ≥ 2048 bits or Ed25519). Unset: outbound mail is not signed."""
    selector: str = ""
    domains: list[str] = field(default_factory=list)
    """The signing domains (d=); the From: domain is used when listed, else the first."""


@dataclass(frozen=True)
class OutboundSettings:
    """The SMTP client to peer operators (docs/outbound.md)."""

    routes: dict[str, str] = field(default_factory=dict)
    """Mail domain → HOST:PORT, used instead of the MX lookup (tests, private networks)."""
    mx_port: int = 25
    """The port of the hosts found by MX lookup (RFC 5321 §4.5.4.2: 25)."""
    max_connections_per_destination: int = 4
    max_messages_per_connection: int = 100
    connection_cache_seconds: float = 10.0
    """A connection is kept open this long after a delivery, for the next one to the same
    destination (checked with RSET before reuse); 0: closed after each delivery."""
    connect_timeout_seconds: float = 30.0
    command_timeout_seconds: float = 300.0
    """Each reply (greeting, EHLO, STARTTLS, MAIL, RCPT…): RFC 5321 §4.5.3.2 asks 5 minutes."""
    data_timeout_seconds: float = 600.0
    """The reply to the end of the message: RFC 5321 §4.5.3.2.6 asks 10 minutes."""
    dns_timeout_seconds: float = 10.0


@dataclass(frozen=True)
class QueueSettings:
    """The outbound queue's worker and retry schedule (docs/queue.md)."""

    enabled: bool = True
    """Run the outbound worker in this process (several processes may run one each)."""
    workers: int = 4
    """Delivery loops in this process, each claiming a batch of due recipients at a time."""
    claim_batch: int = 100
    """Recipients one loop claims at a time."""
    poll_seconds: float = 5.0
    """How often due retries are looked for when no new message wakes the worker."""
    retry_delays_seconds: list[float] = field(
        default_factory=lambda: [60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0]
    )
    """The wait after the 1st, 2nd… failed attempt."""
    retry_every_seconds: float = 14400.0
    """The wait after every later failed attempt."""
    retry_jitter: float = 0.1
    """Each wait is spread by ± this fraction."""
    expire_after_seconds: float = 432000.0
    """A recipient not delivered this long after it was queued expires (failure DSN)."""
    delay_notice_after_seconds: float = 14400.0
    """A delay DSN is sent once, when a recipient has waited this long."""
    lease_seconds: float = 600.0
    """How long a claimed recipient stays in flight before another process may take it back."""


@dataclass(frozen=True)
class PkiSettings:
    trust_anchors: Path
    certificate: Path
    private_key: Path
    private_key_password: str = ""
    tls_profile: TlsProfile = "mssante"
    crls: list[str] = field(default_factory=list)
    crl_cache_dir: Path | None = None
    crl_refresh_seconds: int = 3600
    require_crl: bool = False


@dataclass(frozen=True)
class LoggingSettings:
    format: LogFormat = "kv"
    level: LogLevel = "info"


@dataclass(frozen=True)
class MetricsSettings:
    enabled: bool = True
    listen: str = "127.0.0.1:9180"


@dataclass(frozen=True)
class Settings:
    operator: OperatorSettings
    pki: PkiSettings
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    relay: RelaySettings = field(default_factory=RelaySettings)
    imap: ImapSettings = field(default_factory=ImapSettings)
    submission: SubmissionSettings = field(default_factory=SubmissionSettings)
    whitelist: WhitelistSettings = field(default_factory=WhitelistSettings)
    dkim: DkimSettings = field(default_factory=DkimSettings)
    outbound: OutboundSettings = field(default_factory=OutboundSettings)
    queue: QueueSettings = field(default_factory=QueueSettings)
    source: Path = Path(DEFAULT_CONFIG_NAME)
    """The file these settings were read from (not a key of the file)."""

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite+aiosqlite:///{self.operator.data_dir / 'mssante.db'}"

    @property
    def crl_cache_dir(self) -> Path:
        return self.pki.crl_cache_dir or self.operator.data_dir / "crl"

    @property
    def whitelist_cache_dir(self) -> Path:
        return self.whitelist.cache_dir or self.operator.data_dir / "whitelist"


_TYPE_NAMES: dict[type, str] = {
    str: "a string",
    int: "an integer",
    bool: "a boolean (true or false)",
    float: "a number",
    Path: "a path (string)",
}


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin is list:
        return "a list of " + _type_name(get_args(tp)[0]).removeprefix("a ").removeprefix("an ")
    if origin is dict:
        return "a table of " + _type_name(get_args(tp)[1]).removeprefix("a ").removeprefix("an ")
    if dataclasses.is_dataclass(tp):
        return "a table"
    return _TYPE_NAMES.get(tp, str(tp))


def _describe(value: object) -> str:
    kinds = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array"}
    for kind, name in kinds.items():
        if type(value) is kind:
            return f"{name} {value!r}" if not isinstance(value, list) else name
    if isinstance(value, dict):
        return "table"
    return type(value).__name__


def _convert(value: object, tp: Any, key: str, base: Path) -> object:
    """Check `value` against the annotation `tp`; return it converted (paths made absolute)."""
    origin = get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        # Only `X | None` is used: TOML has no null, so the value is always an X.
        (inner,) = (a for a in get_args(tp) if a is not type(None))
        return _convert(value, inner, key, base)
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {_describe(value)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {_describe(value)}")
        (item,) = get_args(tp)
        return [_convert(v, item, f"{key}[{i}]", base) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {_describe(value)}")
        _, item = get_args(tp)
        return {str(k): _convert(v, item, f"{key}.{k}", base) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"[{key}]: expected a table, got {_describe(value)}")
        return _build(tp, value, key, base)  # type: ignore[arg-type]
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {_describe(value)}")
        path = Path(value).expanduser()
        return path if path.is_absolute() else (base / path)
    # bool is a subclass of int in Python; TOML keeps them apart, and so do we.
    if tp is int and (type(value) is not int):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {_describe(value)}")
    if tp is float and type(value) not in (int, float):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {_describe(value)}")
    if tp in (str, bool) and type(value) is not tp:
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {_describe(value)}")
    return value


def _build(cls: type[Any], table: Mapping[str, object], prefix: str, base: Path) -> Any:
    hints = typing.get_type_hints(cls)
    # `Settings.source` records where the settings came from; it is not a key of the file.
    fields = {
        f.name: f for f in dataclasses.fields(cls) if not (cls is Settings and f.name == "source")
    }
    for name in table:
        if name not in fields:
            where = f"[{prefix}]" if prefix else "top level"
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{_join(prefix, name)}: unknown key in {where} (known: {known})")
    values: dict[str, object] = {}
    for name, f in fields.items():
        key = _join(prefix, name)
        if name in table:
            values[name] = _convert(table[name], hints[name], key, base)
        elif isinstance(f.default, Path) and not f.default.is_absolute():
            values[name] = base / f.default  # default paths are relative to the file too
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            if dataclasses.is_dataclass(hints[name]):
                raise ConfigError(f"[{key}]: missing required table")
            raise ConfigError(f"{key}: missing required key")
    return cls(**values)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _apply_environment(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    """Secrets from the environment override the file (the file may then omit them)."""
    if url := env.get(ENV_DATABASE_URL):
        raw.setdefault("database", {})["url"] = url
    if keys := env.get(ENV_STORAGE_KEYS):
        storage = raw.setdefault("storage", {})
        parsed: dict[str, str] = {}
        for item in keys.split(","):
            key_id, sep, value = item.strip().partition("=")
            if not sep or not key_id.strip() or not value.strip():
                raise ConfigError(
                    f"{ENV_STORAGE_KEYS}: expected KEY_ID=KEY[,KEY_ID=KEY…], got an item "
                    f"without '=' or with an empty part"
                )
            parsed[key_id.strip()] = value.strip()
        storage["keys"] = parsed
    if current_id := env.get(ENV_STORAGE_KEY_ID):
        raw.setdefault("storage", {})["current_key_id"] = current_id
    if password := env.get(ENV_TLS_KEY_PASSWORD):
        raw.setdefault("pki", {})["private_key_password"] = password


def parse_settings(text: str, source: Path, env: Mapping[str, str] | None = None) -> Settings:
    """Parse and type-check a TOML document; relative paths are relative to its directory."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    _apply_environment(raw, os.environ if env is None else env)
    base = source.parent.resolve()
    settings: Settings = _build(Settings, raw, "", base)

    # CRL, whitelist and checksum sources are URLs or files; files, like every path, are
    # relative to the configuration file.
    def local(value: str) -> str:
        return (
            value
            if not value or "://" in value or _is_hex_digest(value)
            else str(base / Path(value).expanduser())
        )

    crls = [local(c) for c in settings.pki.crls]
    whitelist = dataclasses.replace(
        settings.whitelist,
        source=local(settings.whitelist.source),
        checksum=local(settings.whitelist.checksum),
    )
    settings = dataclasses.replace(
        settings,
        source=source,
        pki=dataclasses.replace(settings.pki, crls=crls),
        whitelist=whitelist,
    )
    return _check_values(settings)


def _is_hex_digest(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdefABCDEF" for c in value)


def _check_values(settings: Settings) -> Settings:
    """Constraints a type cannot express; returns the settings with derived defaults filled."""
    storage = settings.storage
    if not storage.keys:
        raise ConfigError(
            f"storage.keys: no message encryption key configured (set [storage.keys] or "
            f"{ENV_STORAGE_KEYS}; `mssante keygen` makes one)"
        )
    if not storage.current_key_id:
        if len(storage.keys) != 1:
            raise ConfigError("storage.current_key_id: required when several keys are configured")
        (only,) = storage.keys
        storage = dataclasses.replace(storage, current_key_id=only)
        settings = dataclasses.replace(settings, storage=storage)
    if storage.current_key_id not in storage.keys:
        raise ConfigError(
            f"storage.current_key_id: {storage.current_key_id!r} is not one of storage.keys "
            f"({', '.join(sorted(storage.keys))})"
        )
    from mssante.operator.store.crypto import parse_key  # the store defines the key format

    for key_id, text in storage.keys.items():
        try:
            parse_key(text)
        except ValueError as exc:
            raise ConfigError(f"storage.keys.{key_id}: {exc}") from None
    if storage.max_message_size <= 0:
        raise ConfigError("storage.max_message_size: must be a positive number of bytes")
    if settings.pki.crl_refresh_seconds < 60:
        raise ConfigError("pki.crl_refresh_seconds: must be at least 60")
    if not settings.operator.hostname or "." not in settings.operator.hostname:
        raise ConfigError(
            f"operator.hostname: expected a fully qualified host name, "
            f"got {settings.operator.hostname!r}"
        )
    if settings.metrics.enabled:
        parse_host_port(settings.metrics.listen, "metrics.listen")
    if storage.default_quota_bytes < 0:
        raise ConfigError("storage.default_quota_bytes: must be 0 (no quota) or positive")
    relay = settings.relay
    _check_listener(relay, "relay", relay.enabled, ("max_connections_per_peer", "max_commands"))
    # RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets with CRLF; never accept less.
    for name, smtp in (("relay", relay), ("submission", settings.submission)):
        if smtp.max_line_length < 1000:
            raise ConfigError(
                f"{name}.max_line_length: must be at least 1000 (RFC 5321 §4.5.3.1.6)"
            )
        for key in ("max_recipients", "idle_timeout_seconds"):
            if getattr(smtp, key) < 1:
                raise ConfigError(f"{name}.{key}: must be at least 1")
    imap = settings.imap
    _check_listener(
        imap,
        "imap",
        imap.enabled,
        ("max_connections_per_ip", "login_delay_max_seconds", "unauthenticated_timeout_seconds"),
    )
    if imap.login_failures_before_delay < 0:
        raise ConfigError("imap.login_failures_before_delay: must be 0 or more")
    if not 0.05 <= imap.idle_poll_seconds <= 60:
        raise ConfigError("imap.idle_poll_seconds: must be between 0.05 and 60")
    if imap.idle_timeout_seconds < 1800:
        raise ConfigError("imap.idle_timeout_seconds: must be at least 1800 (RFC 9051 §5.4)")
    submission = settings.submission
    _check_listener(
        submission, "submission", submission.enabled, ("max_connections_per_ip", "max_commands")
    )
    wl = settings.whitelist
    if wl.source and "://" in wl.source and not wl.source.startswith("https://"):
        raise ConfigError(f"whitelist.source: {wl.source}: only https:// URLs or files")
    if wl.refresh_seconds < 60:
        raise ConfigError("whitelist.refresh_seconds: must be at least 60")
    _check_dkim(settings.dkim)
    _check_outbound(settings.outbound)
    _check_queue(settings.queue)
    return settings


def _check_listener(
    section: RelaySettings | ImapSettings | SubmissionSettings,
    name: str,
    enabled: bool,
    at_least_one: tuple[str, ...],
) -> None:
    """A listener's addresses (when it is enabled) and its limits of at least 1."""
    if enabled:
        parse_host_port(section.listen, f"{name}.listen")
        if section.implicit_tls_listen:
            parse_host_port(section.implicit_tls_listen, f"{name}.implicit_tls_listen")
    for key in ("max_connections", *at_least_one):
        if getattr(section, key) < 1:
            raise ConfigError(f"{name}.{key}: must be at least 1")


# RFC 6376 §3.1/§3.5: selectors and signing domains are sequences of DNS labels.
_DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"^{_DNS_LABEL}(?:\.{_DNS_LABEL})*$")


def valid_dns_name(text: str) -> bool:
    """Letters, digits and hyphens in dot-separated labels, at most 253 characters."""
    return len(text) <= 253 and bool(_DNS_NAME.match(text))


def _check_dkim(dkim: DkimSettings) -> None:
    if dkim.dns_timeout_seconds <= 0:
        raise ConfigError("dkim.dns_timeout_seconds: must be positive")
    signing = dkim.private_key is not None
    if not signing:
        if dkim.selector or dkim.domains:
            raise ConfigError(
                "dkim.private_key: required when dkim.selector or dkim.domains is set "
                "(`mssante dkim genkey FILE` makes one)"
            )
        return
    if not dkim.selector:
        raise ConfigError(
            "dkim.selector: required when dkim.private_key is set (the public key is "
            "published at <selector>._domainkey.<domain>)"
        )
    if not valid_dns_name(dkim.selector):
        raise ConfigError(
            f"dkim.selector: {dkim.selector!r} is not made of DNS labels (RFC 6376 §3.1)"
        )
    if not dkim.domains:
        raise ConfigError("dkim.domains: at least one signing domain when dkim.private_key is set")
    for index, domain in enumerate(dkim.domains):
        if not valid_dns_name(domain.rstrip(".")) or "." not in domain.strip("."):
            raise ConfigError(f"dkim.domains[{index}]: {domain!r} is not a domain name")


def _check_outbound(outbound: OutboundSettings) -> None:
    for domain, target in outbound.routes.items():
        if not valid_dns_name(domain.rstrip(".")):
            raise ConfigError(f"outbound.routes: {domain!r} is not a domain name")
        parse_host_port(target, f"outbound.routes.{domain}")
    if not 0 < outbound.mx_port < 65536:
        raise ConfigError("outbound.mx_port: must be a port number (1-65535)")
    for key in ("max_connections_per_destination", "max_messages_per_connection"):
        if getattr(outbound, key) < 1:
            raise ConfigError(f"outbound.{key}: must be at least 1")
    if outbound.connection_cache_seconds < 0:
        raise ConfigError("outbound.connection_cache_seconds: must not be negative")
    for key in (
        "connect_timeout_seconds",
        "command_timeout_seconds",
        "data_timeout_seconds",
        "dns_timeout_seconds",
    ):
        if getattr(outbound, key) <= 0:
            raise ConfigError(f"outbound.{key}: must be positive")


def _check_queue(queue: QueueSettings) -> None:
    for key in ("workers", "claim_batch"):
        if getattr(queue, key) < 1:
            raise ConfigError(f"queue.{key}: must be at least 1")
    for key in (
        "poll_seconds",
        "retry_every_seconds",
        "expire_after_seconds",
        "delay_notice_after_seconds",
        "lease_seconds",
    ):
        if getattr(queue, key) <= 0:
            raise ConfigError(f"queue.{key}: must be positive")
    if not queue.retry_delays_seconds:
        raise ConfigError("queue.retry_delays_seconds: at least one wait")
    for index, wait in enumerate(queue.retry_delays_seconds):
        if wait <= 0:
            raise ConfigError(f"queue.retry_delays_seconds[{index}]: must be positive")
    if not 0 <= queue.retry_jitter < 1:
        raise ConfigError("queue.retry_jitter: must be at least 0 and below 1")


def parse_host_port(text: str, key: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` → (host, port); ConfigError naming `key` otherwise."""
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{key}: expected HOST:PORT, got {text!r}")
    return host, int(port_text)


def check_files(settings: Settings) -> None:
    """Every file the settings name exists and is what it should be.

    Done at start (and by `mssante check-config`), so a wrong path is reported before any
    listener opens, naming the key and the path.
    """
    # Late imports: the PKI layer is the one place that reads certificates and keys.
    from mssante.pki import anchors, tls
    from mssante.pki.errors import PkiError

    pki = settings.pki
    for key, path in (
        ("pki.trust_anchors", pki.trust_anchors),
        ("pki.certificate", pki.certificate),
        ("pki.private_key", pki.private_key),
    ):
        if not path.is_file():
            raise ConfigError(f"{key}: {path}: no such file")
        try:
            path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{key}: {path}: cannot read: {exc.strerror}") from None
    for index, crl in enumerate(pki.crls):
        if "://" not in crl and not Path(crl).is_file():
            raise ConfigError(f"pki.crls[{index}]: {crl}: no such file")
        if "://" in crl and not crl.startswith(("http://", "https://")):
            raise ConfigError(f"pki.crls[{index}]: {crl}: only http:// and https:// URLs")
    submission = settings.submission
    if submission.enabled:
        parse_host_port(submission.listen, "submission.listen")
        if submission.implicit_tls_listen:
            parse_host_port(submission.implicit_tls_listen, "submission.implicit_tls_listen")
    for key in (
        "max_connections",
        "max_connections_per_ip",
        "max_commands",
        "max_recipients",
        "idle_timeout_seconds",
    ):
        if getattr(submission, key) < 1:
            raise ConfigError(f"submission.{key}: must be at least 1")
    if submission.max_line_length < 1000:
        raise ConfigError("submission.max_line_length: must be at least 1000 (RFC 5321 §4.5.3.1.6)")
    wl = settings.whitelist
    if wl.source and "://" not in wl.source and not Path(wl.source).is_file():
        # A missing list file is only fatal when no cached copy exists either (checked at
        # start by the whitelist loader); here it is reported as the likely typo it is.
        cached = settings.whitelist_cache_dir
        if not cached.is_dir() or not any(cached.iterdir()):
            raise ConfigError(f"whitelist.source: {wl.source}: no such file")
    if settings.dkim.private_key is not None:
        from mssante.operator.dkim_sign import DkimKeyError, load_signing_key

        try:
            load_signing_key(settings.dkim.private_key)
        except DkimKeyError as exc:
            raise ConfigError(f"dkim.private_key: {exc}") from None
    try:
        anchors.load_certificates(pki.trust_anchors)
    except PkiError as exc:
        raise ConfigError(f"pki.trust_anchors: {exc}") from None
    try:
        # Building the server context loads the certificate and the key together, which is
        # exactly what the listeners will do: a key that does not match fails here, not later.
        tls.server_context(
            pki.tls_profile,
            pki.certificate,
            pki.private_key,
            pki.trust_anchors,
            client_cert="optional",
            key_password=pki.private_key_password or None,
        )
    except PkiError as exc:
        raise ConfigError(f"pki.certificate/pki.private_key: {exc}") from None


def config_path(explicit: str | os.PathLike[str] | None) -> Path:
    """The file to read: the --config option, else $MSSANTE_CONFIG, else ./mssante.toml."""
    if explicit:
        return Path(explicit)
    if env := os.environ.get(ENV_CONFIG):
        return Path(env)
    return Path(DEFAULT_CONFIG_NAME)


def load_settings(path: Path, *, check: bool = True) -> Settings:
    """Read, parse and validate the configuration file; with `check`, its files too."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    settings = parse_settings(text, path)
    if check:
        check_files(settings)
    return settings
