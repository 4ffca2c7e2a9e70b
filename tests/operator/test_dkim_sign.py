"""DKIM signing: messages signed with keys written by our genkey verify with our own verifier
(keys from `[dkim] static_keys`) and with dkimpy directly; the DNS record we print parses and
carries the right public key; bad configurations are clear errors."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import dkim as dkimpy  # type: ignore[import-untyped]
import dns.rdata
import dns.zone
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mssante.cli import main
from mssante.config import ConfigError, DkimSettings, load_settings
from mssante.operator.dkim import THREAD_THRESHOLD, DkimResult, DkimVerifier, signature_tags
from mssante.operator.dkim_sign import (
    SIGNED_FIELDS,
    DkimKeyError,
    DkimSigner,
    dns_record,
    generate_key,
    load_signing_key,
)
from mssante.operator.mime import split_header

SELECTOR = "s2026"
DOMAIN = "demo.mssante.test"
MESSAGE = (
    b"From: Dr Jean Dupont <jean.dupont@demo.mssante.test>\r\n"
    b"To: secretariat@hopital-a.mssante.test\r\n"
    b"Subject: Compte rendu\r\n"
    b"Date: Mon, 24 Nov 2025 09:30:00 +0100\r\n"
    b"Message-ID: <cr-1@demo.mssante.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Bonjour,\r\nci-joint le compte rendu.\r\n"
)


@pytest.fixture(scope="module")
def rsa_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dkim") / "rsa.key"
    generate_key(path, "rsa")
    return path


@pytest.fixture(scope="module")
def ed_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dkim") / "ed.key"
    generate_key(path, "ed25519")
    return path


def signer_for(path: Path, domains: tuple[str, ...] = (DOMAIN,)) -> DkimSigner:
    return DkimSigner(load_signing_key(path), SELECTOR, domains)


def verifier_for(signer: DkimSigner, domain: str = DOMAIN) -> DkimVerifier:
    name = f"{SELECTOR}._domainkey.{domain}"
    return DkimVerifier(DkimSettings(static_keys={name: signer.key.public_record}))


def dkim_fields(message: bytes) -> list[str]:
    return [f.value for f in split_header(message).fields if f.name == "dkim-signature"]


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
async def test_signed_message_verifies_with_our_verifier_and_with_dkimpy(
    kind: str, rsa_key: Path, ed_key: Path
) -> None:
    signer = signer_for(rsa_key if kind == "rsa" else ed_key)
    signed = await signer.sign(MESSAGE)
    assert signed.endswith(MESSAGE)
    tags = signature_tags(dkim_fields(signed)[0])
    assert tags["a"] == ("rsa-sha256" if kind == "rsa" else "ed25519-sha256")
    assert (tags["c"], tags["d"], tags["s"]) == ("relaxed/relaxed", DOMAIN, SELECTOR)

    verdict = await verifier_for(signer).verify(signed, dkim_fields(signed))
    assert verdict.results == (DkimResult("pass", DOMAIN, SELECTOR),)

    record = signer.key.public_record.encode()

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return record if name.decode().rstrip(".") == f"{SELECTOR}._domainkey.{DOMAIN}" else None

    assert dkimpy.verify(signed, dnsfunc=dnsfunc) is True


AWKWARD = (
    b"from:  Dr Jean Dupont\r\n\t<jean.dupont@demo.mssante.test>  \r\n"
    b"To: a@hopital-a.mssante.test\r\n"
    b"TO: b@hopital-a.mssante.test\r\n"
    b"Subject:\tR\xc3\xa9sultats  \t d'analyses\r\n"
    b"Date: Mon, 24 Nov 2025 09:30:00 +0100\r\n"
    b"\r\n"
    b"ligne avec  espaces \t \r\n"
    b"\r\n"
    b"\ttabulation en t\xc3\xaate\r\n"
    b"\r\n\r\n\r\n"
)


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
@pytest.mark.parametrize(
    "message",
    [AWKWARD, MESSAGE.split(b"\r\n\r\n")[0] + b"\r\n\r\n", MESSAGE.replace(b"\r\n", b"\n")],
    ids=["white-space-and-repeated-fields", "empty-body", "bare-lf"],
)
async def test_canonicalisation_agrees_with_dkimpy(
    kind: str, message: bytes, rsa_key: Path, ed_key: Path
) -> None:
    """Our relaxed canonicalisation (RFC 6376 §3.4.2, §3.4.4) against dkimpy's verifier on the
    cases it is easy to get wrong: folded and mixed-case names, repeated fields (signed from the
    bottom up), white space runs and trailing white space, empty lines at the end, no body,
    and LF line ends (signed as the CRLF they travel as)."""
    signer = signer_for(rsa_key if kind == "rsa" else ed_key)
    signed = (await signer.sign(message)).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    record = signer.key.public_record.encode()

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return record if name.decode().rstrip(".") == f"{SELECTOR}._domainkey.{DOMAIN}" else None

    assert dkimpy.verify(signed, dnsfunc=dnsfunc) is True
    tampered = signed.replace(b"b@hopital-a", b"c@hopital-a").replace(b"Date: Mon", b"Date: Tue")
    assert dkimpy.verify(tampered, dnsfunc=dnsfunc) is False


async def test_modified_body_or_added_header_fails(rsa_key: Path) -> None:
    signer = signer_for(rsa_key)
    signed = await signer.sign(MESSAGE)
    verifier = verifier_for(signer)
    altered = signed.replace(b"compte rendu.", b"compte rendu!")
    verdict = await verifier.verify(altered, dkim_fields(altered))
    assert verdict.results == (DkimResult("fail", DOMAIN, SELECTOR, "body hash mismatch"),)
    # A second From: (oversigned) or a Reply-To: (absent, signed as absent) added later.
    for extra in (b"From: evil@attacker.test\r\n", b"Reply-To: evil@attacker.test\r\n"):
        head, _, body = signed.partition(b"\r\n\r\n")
        tampered = head + b"\r\n" + extra + b"\r\n" + body
        verdict = await verifier.verify(tampered, dkim_fields(tampered))
        assert verdict.summary == "fail", extra


async def test_relaxed_canonicalisation_survives_refolding(rsa_key: Path) -> None:
    signer = signer_for(rsa_key)
    signed = await signer.sign(MESSAGE)
    # A relay rewraps the Subject and adds trailing white space: relaxed/relaxed still passes.
    refolded = signed.replace(b"Subject: Compte rendu", b"Subject:  Compte\r\n   rendu  ")
    refolded = refolded.replace(b"Bonjour,\r\n", b"Bonjour,   \r\n")
    verdict = await verifier_for(signer).verify(refolded, dkim_fields(refolded))
    assert verdict.summary == "pass"


def test_signed_field_list(rsa_key: Path) -> None:
    signer = signer_for(rsa_key)
    field = signer.signature_field(MESSAGE).decode()
    h = [name.strip() for name in signature_tags(field.partition(":")[2])["h"].split(":")]
    # Every listed field once (present or not: absence is signed), From once more.
    assert sorted(h) == sorted([*SIGNED_FIELDS, "from"])
    assert h.count("from") == 2
    for name in ("sender", "reply-to", "cc", "in-reply-to", "references", "mime-version"):
        assert name in h


def test_signing_domain_follows_from(rsa_key: Path) -> None:
    signer = signer_for(rsa_key, ("other.test", DOMAIN))
    assert signer.domain_for(MESSAGE) == DOMAIN
    sub = MESSAGE.replace(b"@demo.mssante.test>", b"@pole.demo.mssante.test>", 1)
    assert signer.domain_for(sub) == DOMAIN
    foreign = MESSAGE.replace(b"@demo.mssante.test>", b"@elsewhere.test>", 1)
    assert signer.domain_for(foreign) == "other.test"
    assert signer.domain_for(b"Subject: no from\r\n\r\nbody\r\n") == "other.test"


async def test_large_message_is_signed_off_the_loop_and_verifies(rsa_key: Path) -> None:
    signer = signer_for(rsa_key)
    big = MESSAGE + (b"x" * 998 + b"\r\n") * (THREAD_THRESHOLD // 1000 + 10)
    signed = await signer.sign(big)
    verdict = await verifier_for(signer).verify(signed, dkim_fields(signed))
    assert verdict.summary == "pass"


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_dns_record_parses_and_carries_the_public_key(
    kind: str, rsa_key: Path, ed_key: Path
) -> None:
    path = rsa_key if kind == "rsa" else ed_key
    key = load_signing_key(path)
    line = dns_record(SELECTOR, DOMAIN, key)
    assert line.startswith(f"{SELECTOR}._domainkey.{DOMAIN}. IN TXT ")
    zone = dns.zone.from_text(
        "$TTL 3600\n" + line + "\n", origin=DOMAIN + ".", relativize=False, check_origin=False
    )
    rdataset = zone.find_rdataset(f"{SELECTOR}._domainkey.{DOMAIN}.", "TXT")
    (rdata,) = list(rdataset)
    strings = rdata.strings
    assert all(len(s) <= 255 for s in strings)
    if kind == "rsa":
        assert len(strings) >= 2  # a 2048-bit key does not fit in one string
    value = b"".join(strings).decode()
    assert value == key.public_record
    tags = dict(t.strip().split("=", 1) for t in value.split(";"))
    assert tags["v"] == "DKIM1" and tags["k"] == kind
    private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if kind == "rsa":
        expected = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    else:
        expected = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
    assert base64.b64decode(tags["p"]) == expected


def test_genkey_writes_0600_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    generate_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = path.read_bytes()
    with pytest.raises(DkimKeyError, match="refusing to overwrite"):
        generate_key(path)
    assert path.read_bytes() == before
    with pytest.raises(DkimKeyError, match="at least 2048"):
        generate_key(tmp_path / "small.pem", "rsa", 1024)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_unusable_key_files_are_refused(tmp_path: Path) -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the refused case
    cases = {
        "missing.pem": (None, "no such file"),
        "garbage.pem": (b"not a key\n", "not a PEM private key"),
        "small.pem": (
            small.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            "1024 bits",
        ),
        "encrypted.pem": (
            small.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            ),
            "encrypted",
        ),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / name
        if data is not None:
            _write(path, data)
        with pytest.raises(DkimKeyError, match=message):
            load_signing_key(path)


def _config(write_config: object, dkim: str) -> Path:
    path: Path = write_config(extra=f"[dkim]\n{dkim}\n")  # type: ignore[operator]
    return path


def test_config_accepts_a_signing_key(write_config: object, rsa_key: Path) -> None:
    path = _config(
        write_config, f'private_key = "{rsa_key}"\nselector = "{SELECTOR}"\ndomains = ["{DOMAIN}"]'
    )
    settings = load_settings(path)
    signer = DkimSigner.from_settings(settings.dkim)
    assert signer is not None and signer.domains == (DOMAIN,)
    assert DkimSigner.from_settings(DkimSettings()) is None


@pytest.mark.parametrize(
    ("dkim", "message"),
    [
        (f'private_key = "KEY"\ndomains = ["{DOMAIN}"]', r"dkim\.selector: required"),
        ('private_key = "KEY"\nselector = "s1"', r"dkim\.domains: at least one"),
        (
            f'private_key = "KEY"\nselector = "bad selector"\ndomains = ["{DOMAIN}"]',
            r"dkim\.selector: 'bad selector'",
        ),
        (
            'private_key = "KEY"\nselector = "s1"\ndomains = ["not a domain"]',
            r"dkim\.domains\[0\]",
        ),
        (f'selector = "s1"\ndomains = ["{DOMAIN}"]', r"dkim\.private_key: required"),
        (
            f'private_key = "MISSING"\nselector = "s1"\ndomains = ["{DOMAIN}"]',
            r"dkim\.private_key: .*no such file",
        ),
        (
            f'private_key = "GARBAGE"\nselector = "s1"\ndomains = ["{DOMAIN}"]',
            r"dkim\.private_key: .*not a PEM private key",
        ),
    ],
)
def test_config_errors(
    write_config: object, rsa_key: Path, tmp_path: Path, dkim: str, message: str
) -> None:
    garbage = _write(tmp_path / "garbage.pem", b"-----BEGIN PRIVATE KEY-----\nxx\n")
    text = (
        dkim.replace("KEY", str(rsa_key))
        .replace("MISSING", str(tmp_path / "nope.pem"))
        .replace("GARBAGE", str(garbage))
    )
    with pytest.raises(ConfigError, match=message):
        load_settings(_config(write_config, text))


def _mssante(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_genkey_and_dns_record(
    tmp_path: Path,
    write_config: object,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MSSANTE_CONFIG", str(tmp_path / "none.toml"))
    code, _, err = _mssante(capsys, "dkim", "genkey", "k.pem", "--type", "ed25519")
    assert code == 0, err
    assert stat.S_IMODE((tmp_path / "k.pem").stat().st_mode) == 0o600
    code, _, err = _mssante(capsys, "dkim", "genkey", "k.pem")
    assert code == 1 and "refusing to overwrite" in err
    code, out, err = _mssante(
        capsys, "dkim", "dns-record", "--key", "k.pem", "--selector", "s1", "--domain", DOMAIN
    )
    assert code == 0, err
    expected = dns_record("s1", DOMAIN, load_signing_key(tmp_path / "k.pem"))
    assert out == expected + "\n" and "k=ed25519" in out
    # From the configuration: one line per signing domain.
    config = _config(
        write_config,
        f'private_key = "{tmp_path / "k.pem"}"\nselector = "s1"\ndomains = ["{DOMAIN}", "b.test"]',
    )
    code, out, err = _mssante(capsys, "--config", str(config), "dkim", "dns-record")
    assert code == 0, err
    assert [line.split()[0] for line in out.splitlines()] == [
        f"s1._domainkey.{DOMAIN}.",
        "s1._domainkey.b.test.",
    ]
    code, _, err = _mssante(capsys, "dkim", "dns-record", "--key", "k.pem")
    assert code == 1 and "configuration file not found" in err
    dns.rdata.from_text("IN", "TXT", expected.split(" IN TXT ", 1)[1])
