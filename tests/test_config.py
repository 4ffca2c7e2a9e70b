"""Configuration: every kind of error stops with one message naming the key or the path."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mssante.config import ConfigError, check_files, load_settings, parse_settings

FIXTURES = Path(__file__).parents[1] / "tls-fixtures"
KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="  # 32 bytes, base64

MINIMAL = f"""
[operator]
hostname = "mx.example.mssante.fr"

[pki]
trust_anchors = "tls/ca-bundle.pem"
certificate = "tls/operator.pem"
private_key = "tls/operator.key"

[storage.keys]
k1 = "{KEY}"
"""


def parse(text: str, env: dict[str, str] | None = None, where: Path = Path("/etc/m/x.toml")):  # type: ignore[no-untyped-def]
    return parse_settings(text, where, env or {})


def test_minimal_file_gets_documented_defaults() -> None:
    s = parse(MINIMAL)
    assert s.operator.data_dir == Path("/etc/m/data")
    assert s.database_url == "sqlite+aiosqlite:////etc/m/data/mssante.db"
    assert s.storage.current_key_id == "k1"
    assert s.storage.max_message_size == 25 * 1024 * 1024
    assert s.pki.tls_profile == "mssante"
    assert s.pki.certificate == Path("/etc/m/tls/operator.pem")
    assert s.crl_cache_dir == Path("/etc/m/data/crl")
    assert s.logging.format == "kv"
    assert s.metrics.listen == "127.0.0.1:9180"
    assert (s.submission.listen, s.submission.implicit_tls_listen) == ("0.0.0.0:587", "0.0.0.0:465")
    assert s.submission.save_sent and s.submission.check_directory


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("[operator.extra]\n", r"operator\.extra: unknown key in \[operator\]"),
        ("[bogus]\nx = 1\n", r"bogus: unknown key in top level"),
        ("[logging]\nformat = 'xml'\n", r"logging\.format: expected one of 'kv', 'json'"),
        ("[logging]\nlevel = 3\n", r"logging\.level: expected one of .*, got integer 3"),
        (
            "[storage]\nmax_message_size = '25M'\n",
            r"storage\.max_message_size: expected an integer, got string '25M'",
        ),
        (
            "[storage]\nmax_message_size = true\n",
            r"storage\.max_message_size: expected an integer, got boolean True",
        ),
        ("[storage]\nmax_message_size = 0\n", r"storage\.max_message_size: must be a positive"),
        ("[metrics]\nenabled = 'yes'\n", r"metrics\.enabled: expected a boolean"),
        ("[metrics]\nlisten = 'localhost'\n", r"metrics\.listen: expected HOST:PORT"),
        ("[pki.crls]\n", r"pki\.crls: expected a list of string, got table"),
        ("[database]\nurl = ['x']\n", r"database\.url: expected a string, got array"),
        ("[submission]\nlisten = '587'\n", r"submission\.listen: expected HOST:PORT"),
        ("[submission]\nimplicit_tls_listen = 'x'\n", r"submission\.implicit_tls_listen"),
        ("[submission]\nmax_recipients = 0\n", r"submission\.max_recipients: must be at least 1"),
        ("[submission]\nmax_connections_per_ip = 0\n", r"submission\.max_connections_per_ip"),
        ("[submission]\nmax_line_length = 999\n", r"submission\.max_line_length: must be at"),
        ("[submission]\nsave_sent = 1\n", r"submission\.save_sent: expected a boolean"),
        ("[relay]\nmax_commands = 0\n", r"relay\.max_commands: must be at least 1"),
        ("[imap]\nmax_connections = 0\n", r"imap\.max_connections: must be at least 1"),
    ],
)
def test_type_and_key_errors_name_the_key(extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(MINIMAL + extra)


def test_wrong_type_in_existing_table() -> None:
    text = MINIMAL.replace('hostname = "mx.example.mssante.fr"', "hostname = 25")
    with pytest.raises(ConfigError, match=r"operator\.hostname: expected a string, got integer 25"):
        parse(text)


def test_missing_required_key_and_table() -> None:
    with pytest.raises(ConfigError, match=r"pki\.certificate: missing required key"):
        parse(MINIMAL.replace('certificate = "tls/operator.pem"', ""))
    with pytest.raises(ConfigError, match=r"\[operator\]: missing required table"):
        parse(MINIMAL.replace("[operator]", "[metrics]").replace("hostname", "listen"))


def test_invalid_toml_names_the_file() -> None:
    with pytest.raises(ConfigError, match=r"x\.toml: not valid TOML"):
        parse("[operator\n")


def test_hostname_must_be_qualified() -> None:
    with pytest.raises(ConfigError, match=r"operator\.hostname: expected a fully qualified"):
        parse(MINIMAL.replace("mx.example.mssante.fr", "localhost"))


def test_storage_key_errors() -> None:
    no_keys = MINIMAL.replace(f'[storage.keys]\nk1 = "{KEY}"', "")
    with pytest.raises(ConfigError, match=r"storage\.keys: no message encryption key"):
        parse(no_keys)
    with pytest.raises(ConfigError, match=r"storage\.keys\.k1: "):
        parse(MINIMAL.replace(KEY, "c2hvcnQ="))
    two = MINIMAL + f'k2 = "{KEY}"\n'
    with pytest.raises(ConfigError, match=r"storage\.current_key_id: required when several"):
        parse(two)
    with pytest.raises(ConfigError, match=r"'k9' is not one of storage\.keys"):
        parse(two.replace("[storage.keys]", '[storage]\ncurrent_key_id = "k9"\n[storage.keys]'))


def test_secrets_come_from_the_environment() -> None:
    no_keys = MINIMAL.replace(f'[storage.keys]\nk1 = "{KEY}"', "")
    s = parse(
        no_keys,
        env={
            "MSSANTE_DATABASE_URL": "postgresql://mss@db/mss",
            "MSSANTE_STORAGE_KEYS": f"old={KEY}, new={KEY}",
            "MSSANTE_STORAGE_KEY_ID": "new",
            "MSSANTE_TLS_KEY_PASSWORD": "s3cret",
        },
    )
    assert s.database_url == "postgresql://mss@db/mss"
    assert set(s.storage.keys) == {"old", "new"}
    assert s.storage.current_key_id == "new"
    assert s.pki.private_key_password == "s3cret"
    with pytest.raises(ConfigError, match="MSSANTE_STORAGE_KEYS: expected KEY_ID=KEY"):
        parse(no_keys, env={"MSSANTE_STORAGE_KEYS": KEY})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: configuration file not found"):
        load_settings(tmp_path / "nope.toml")


def _install(tmp_path: Path, text: str = MINIMAL) -> Path:
    tls = tmp_path / "tls"
    tls.mkdir()
    for name in ("ca-bundle.pem", "operator.pem", "operator.key", "pro-ca.crl.pem"):
        shutil.copy(FIXTURES / name, tls / name)
    path = tmp_path / "mssante.toml"
    path.write_text(text)
    return path


def test_valid_files_pass(tmp_path: Path) -> None:
    text = MINIMAL.replace("[storage.keys]", 'crls = ["tls/pro-ca.crl.pem"]\n[storage.keys]')
    settings = load_settings(_install(tmp_path, text))
    assert settings.pki.crls == [str(tmp_path / "tls" / "pro-ca.crl.pem")]


def test_missing_certificate_names_key_and_path(tmp_path: Path) -> None:
    path = _install(tmp_path)
    (tmp_path / "tls" / "operator.pem").unlink()
    with pytest.raises(ConfigError, match=r"pki\.certificate: .*operator\.pem: no such file"):
        load_settings(path)


def test_unreadable_certificate_names_the_path(tmp_path: Path) -> None:
    path = _install(tmp_path)
    (tmp_path / "tls" / "operator.pem").write_text("-----BEGIN CERTIFICATE-----\ngarbage\n")
    with pytest.raises(ConfigError, match=r"operator\.pem"):
        load_settings(path)


def test_garbage_trust_anchors_named(tmp_path: Path) -> None:
    path = _install(tmp_path)
    (tmp_path / "tls" / "ca-bundle.pem").write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"pki\.trust_anchors: .*ca-bundle\.pem"):
        load_settings(path)


def test_key_that_does_not_match_the_certificate(tmp_path: Path) -> None:
    path = _install(tmp_path)
    shutil.copy(FIXTURES / "peer-a.key", tmp_path / "tls" / "operator.key")
    with pytest.raises(ConfigError, match=r"pki\.certificate/pki\.private_key"):
        load_settings(path)


def test_missing_crl_file(tmp_path: Path) -> None:
    text = MINIMAL.replace("[storage.keys]", 'crls = ["tls/none.crl"]\n[storage.keys]')
    with pytest.raises(ConfigError, match=r"pki\.crls\[0\]: .*none\.crl: no such file"):
        load_settings(_install(tmp_path, text))


def test_check_files_is_separate_from_parsing(tmp_path: Path) -> None:
    settings = load_settings(_install(tmp_path), check=False)
    (tmp_path / "tls" / "ca-bundle.pem").unlink()
    with pytest.raises(ConfigError, match=r"pki\.trust_anchors"):
        check_files(settings)


def test_every_key_is_documented_with_its_default() -> None:
    import dataclasses
    import typing

    from mssante.config import Settings

    doc = (Path(__file__).parents[1] / "docs" / "configuration.md").read_text()
    for name, table in typing.get_type_hints(Settings).items():
        if name == "source":
            continue
        assert f"## `[{name}]`" in doc, name
        section = doc.split(f"## `[{name}]`", 1)[1].split("\n## ", 1)[0]
        for key in dataclasses.fields(table):
            assert f"| `{key.name}` |" in section, f"{name}.{key.name}"
