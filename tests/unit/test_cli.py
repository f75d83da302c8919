"""The `lianfang` command for the trust domain: init, registry show|verify|sign|renew|rotate-roots,
keys new|rotate|revoke, pseudonymizer rotate|migrate|end-transition."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from schemas.registry import PublicKey, Roots
from services import cli, trust
from services.audit.chain import AuditEntry, parse_line
from services.audit.trail import read_file
from services.kernel.errors import KeyRevokedError
from services.kernel.registry import Registry
from services.pseudonymizer.core import PseudonymizerKey
from services.simulator import district
from services.trust.files import load_keystore

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


@dataclass
class Lianfang:
    """Runs `lianfang --home HOME --now NOW ...` in-process and keeps everything it printed."""

    home: Path
    capsys: pytest.CaptureFixture[str]
    transcript: list[str] = field(default_factory=list)

    def __call__(self, *argv: str, now: datetime | None = NOW) -> Result:
        clock = ["--now", now.isoformat()] if now is not None else []
        code = cli.main(["--home", str(self.home), *clock, *argv])
        captured = self.capsys.readouterr()
        self.transcript += [captured.out, captured.err]
        return Result(code, captured.out, captured.err)

    def registry(self, at: datetime = NOW) -> Registry:
        return trust.open_domain(self.home).registry(at)

    def keys_of(self, participant: str, at: datetime = NOW) -> list[PublicKey]:
        return self.registry(at).participant(participant).keys


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cli.FAST_KDF_ENV, "1")
    monkeypatch.delenv("LIANFANG_PASSPHRASE", raising=False)
    monkeypatch.delenv("LIANFANG_HOME", raising=False)
    # No broker: with one exported, each registry change a command makes was published to it (or, with
    # none listening there, waited 10 s for it): the unit suite took 4 – 8 minutes instead of one.
    monkeypatch.delenv("LIANFANG_BOOTSTRAP", raising=False)


@pytest.fixture
def lianfang(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Lianfang:
    return Lianfang(home=tmp_path / "domain", capsys=capsys)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One demo trust domain made by `lianfang init` at NOW, copied for each test that needs one."""
    home = tmp_path_factory.mktemp("pristine") / "domain"
    with pytest.MonkeyPatch.context() as env:
        env.setenv(cli.FAST_KDF_ENV, "1")
        env.delenv("LIANFANG_PASSPHRASE", raising=False)
        assert cli.main(["--home", str(home), "--now", NOW.isoformat(), "init"]) == 0
    return home


@pytest.fixture
def domain(lianfang: Lianfang, pristine: Path) -> Lianfang:
    """A copy of the demo trust domain, private to this test."""
    shutil.copytree(pristine, lianfang.home)
    return lianfang


def _root_kid(home: Path, holder: str) -> str:
    roots = Roots.model_validate_json((home / "root.json").read_bytes())
    (kid,) = [k.kid for k in roots.keys if k.holder == holder]
    return kid


def _keep_only_signatures_of(path: Path, kids: set[str]) -> None:
    block, payload = path.read_bytes().split(b"\n", 1)
    signatures = json.loads(block)
    signatures["signatures"] = [s for s in signatures["signatures"] if s["keyid"] in kids]
    path.write_bytes(json.dumps(signatures, separators=(",", ":"), sort_keys=True).encode() + b"\n" + payload)


def _private_key_texts(home: Path, passphrase: str) -> Iterator[str]:
    """Every private key of the domain as base64, base64url and hex."""
    for path in [*(home / "keys").glob("*.key"), *(home / "roots").glob("*.key")]:
        store = load_keystore(path, passphrase)
        raws = [k.private_bytes_raw() for k in store.signing.values()]
        raws += [k.private_bytes_raw() for k in store.encryption.values()]
        for raw in raws:
            yield base64.b64encode(raw).decode()
            yield base64.urlsafe_b64encode(raw).decode().rstrip("=")
            yield raw.hex()


# -- init and verify


def test_a_fresh_domain_verifies_and_a_renamed_participant_breaks_its_signatures(
    domain: Lianfang,
) -> None:
    result = domain("registry", "verify")
    assert result.code == 0
    assert result.out.startswith("OK: registry v1, signed by 2 of 3 roots (plc/")
    assert "2 needed" in result.out

    path = domain.home / "registry.json"
    path.write_text(path.read_text(encoding="utf-8").replace("区公安局", "区公安分局"), encoding="utf-8")
    result = domain("registry", "verify")
    assert result.code == 1
    assert result.err.startswith("FAILED [bad_signature]: 0 of 2 required root signatures valid")
    assert "changed after it was signed" in result.err
    assert "Traceback" not in result.err


def test_init_summarizes_the_domain_without_its_secrets(lianfang: Lianfang) -> None:
    result = lianfang("init")
    assert result.code == 0
    assert f"{len(district.participants())} participants" in result.out
    assert "signed by 2 of 3 roots" in result.out
    assert "root keys held by plc, procuratorate, womens_federation" in result.out
    assert str(lianfang.home / "passphrase") in result.out
    assert (NOW + trust.DEFAULT_LIFETIME).isoformat() in result.out
    assert (lianfang.home / "passphrase").read_text().strip() not in result.out + result.err


def test_init_refuses_to_overwrite_a_domain_without_force(domain: Lianfang) -> None:
    before = (domain.home / "registry.json").read_bytes()
    result = domain("init")
    assert result.code == 2
    assert "already holds a trust domain; pass --force" in result.err
    assert (domain.home / "registry.json").read_bytes() == before

    assert domain("init", "--force").code == 0
    assert (domain.home / "registry.json").read_bytes() != before


def test_one_root_signature_where_two_are_needed_fails_until_a_second_root_signs(
    domain: Lianfang,
) -> None:
    path = domain.home / "registry.json"
    _keep_only_signatures_of(path, {_root_kid(domain.home, "plc")})

    result = domain("registry", "verify")
    assert result.code == 1
    assert result.err.startswith("FAILED [bad_signature]: 1 of 2 required root signatures valid (plc/")
    assert "1 missing" in result.err
    assert "not signed by procuratorate, womens_federation" in result.err

    result = domain("registry", "sign", "--root", "womens_federation")
    assert result.code == 0
    assert "2 of 2 required root signatures valid" in result.out
    assert "enough to verify" in result.out

    result = domain("registry", "verify", str(path))
    assert result.code == 0
    assert f"womens_federation/{_root_kid(domain.home, 'womens_federation')}" in result.out


def test_signing_as_someone_who_holds_no_root_key_is_a_usage_error(domain: Lianfang) -> None:
    result = domain("registry", "sign", "--root", "police")
    assert result.code == 2
    assert result.err == (
        "error: 'police' holds no root key of this trust domain "
        "(root holders: plc, procuratorate, womens_federation)\n"
    )


def test_an_expired_registry_fails_with_registry_expired(lianfang: Lianfang) -> None:
    assert lianfang("init", "--lifetime-days", "1").code == 0
    assert lianfang("registry", "verify", now=NOW + timedelta(hours=23)).code == 0

    result = lianfang("registry", "verify", now=NOW + timedelta(days=2))
    assert result.code == 1
    assert result.err.startswith("FAILED [registry_expired]: registry version 1 expired at")


def test_show_and_verify_need_neither_the_passphrase_nor_private_keys(domain: Lianfang) -> None:
    (domain.home / "passphrase").unlink()
    for folder in ("keys", "roots"):
        for path in (domain.home / folder).glob("*.key"):
            path.unlink()

    assert domain("registry", "verify").code == 0
    result = domain("registry", "show")
    assert result.code == 0
    assert "registry v1" in result.out
    assert "police" in result.out
    assert "区公安局" in result.out
    assert "policy v1" in result.out
    assert "domestic_violence" in result.out

    result = domain("registry", "show", "--json")
    assert result.code == 0
    assert json.loads(result.out)["version"] == 1


# -- keys


def test_a_key_change_lands_in_the_root_holders_signed_audit_chain(domain: Lianfang) -> None:
    later = NOW + timedelta(days=1)
    assert domain("keys", "rotate", "--as", "police", now=later).code == 0
    assert (
        domain("keys", "revoke", "--as", "court", "--kid", domain.keys_of("court")[0].kid, now=later).code
        == 0
    )
    (path,) = (domain.home / "audit" / "plc").glob("*.audit.jsonl")
    items = [parse_line(line) for line in read_file(path)]
    entries = [i for i in items if isinstance(i, AuditEntry)]
    assert [(e.action, e.subject, e.object) for e in entries] == [
        ("key_change", "police", "registry.v2"),
        ("key_change", "court", "registry.v3"),
    ]
    result = domain("audit", "verify", str(path), "--require-checkpoint", now=later)
    assert result.code == 0, result.err
    assert "2 signed checkpoint(s)" in result.out


def test_rotating_keys_makes_version_2_where_the_old_keys_are_retired_and_still_listed(
    domain: Lianfang,
) -> None:
    old = {k.kid: k for k in domain.keys_of("police")}
    later = NOW + timedelta(days=1)

    result = domain("keys", "rotate", "--as", "police", now=later)
    assert result.code == 0
    assert result.out.startswith("registry v2 written to")
    for kid in old:
        assert kid in result.out

    registry = domain.registry(later)
    assert registry.version == 2
    assert registry.document.issued == later
    keys = {k.kid: k for k in registry.participant("police").keys}
    assert set(old) < set(keys)
    for kid in old:
        assert keys[kid].status == "retired"
        assert keys[kid].valid_until == later
    new = [k for k in keys.values() if k.kid not in old]
    assert sorted(k.use for k in new) == ["encrypt", "sign"]
    assert all(k.status == "active" and k.valid_from == later for k in new)

    # What the old signing key signed while valid still verifies; the new one signs from now on.
    (old_sign,) = [kid for kid, k in old.items() if k.use == "sign"]
    registry.signing_key("police", old_sign, at=NOW + timedelta(hours=1))

    # The new registry names the same pseudonymizer and, like the first, seals no pseudonym secret.
    store = trust.open_domain(domain.home).keystore("police")
    assert set(old) | {k.kid for k in new} == set(store.signing) | set(store.encryption)
    assert registry.document.pseudonym_key is None
    operated = PseudonymizerKey.from_json(domain.home.joinpath(trust.PSEUDONYMIZER_KEY).read_bytes())
    assert registry.pseudonymizer == operated.role(trust.DEFAULT_PSEUDONYMIZER_URL)

    show = domain("registry", "show", now=later).out
    (row,) = [line for line in show.splitlines() if line.strip().startswith("police ")]
    assert row.count("1 active, 1 retired") == 2


def test_revoking_the_only_encryption_key_warns_that_nothing_can_be_sealed_to_its_owner(
    domain: Lianfang,
) -> None:
    (kid,) = [k.kid for k in domain.keys_of("police") if k.use == "encrypt"]
    later = NOW + timedelta(days=1)
    result = domain("keys", "revoke", "--as", "police", "--kid", kid, "--at", NOW.isoformat(), now=later)
    assert result.code == 0
    assert "warning: police has no usable encryption key: nothing can be sealed to it" in result.err
    assert domain.registry(later).document.pseudonym_key is None


def test_revoking_a_key_marks_it_revoked_from_the_given_time(domain: Lianfang) -> None:
    (kid,) = [k.kid for k in domain.keys_of("police") if k.use == "sign"]
    at, later = NOW + timedelta(hours=2), NOW + timedelta(days=1)

    result = domain("keys", "revoke", "--as", "police", "--kid", kid, "--at", at.isoformat(), now=later)
    assert result.code == 0
    assert result.out.startswith("registry v2 written to")
    assert f"revoked signing key {kid}" in result.out

    registry = domain.registry(later)
    (key,) = [k for k in registry.participant("police").keys if k.kid == kid]
    assert key.status == "revoked"
    assert key.revoked_at == at
    registry.signing_key("police", kid, at=at - timedelta(minutes=1))
    with pytest.raises(KeyRevokedError):
        registry.signing_key("police", kid, at=at)

    again = domain("keys", "revoke", "--as", "police", "--kid", kid, now=later)
    assert again.code == 2
    assert "already revoked" in again.err


def test_revoking_without_a_time_revokes_from_now(domain: Lianfang) -> None:
    (kid,) = [k.kid for k in domain.keys_of("court") if k.use == "encrypt"]
    assert domain("keys", "revoke", "--as", "court", "--kid", kid).code == 0
    (key,) = [k for k in domain.keys_of("court") if k.kid == kid]
    assert key.revoked_at == NOW


def test_a_new_participant_gets_keys_and_appears_in_registry_show(domain: Lianfang) -> None:
    result = domain(
        "keys", "new", "--as", "shelter", "--name-zh", "区反家暴庇护所", "--name-en", "DV Shelter"
    )
    assert result.code == 0
    assert "added participant shelter" in result.out

    registry = domain.registry()
    assert registry.version == 2
    shelter = registry.participant("shelter")
    assert shelter.name_zh == "区反家暴庇护所"
    assert shelter.may_publish == district.may_publish("shelter")
    store = trust.open_domain(domain.home).keystore("shelter")
    assert {k.kid for k in shelter.keys} == set(store.signing) | set(store.encryption)
    assert registry.document.pseudonym_key is None  # nothing to seal to the newcomer

    show = domain("registry", "show")
    assert "shelter" in show.out
    assert "区反家暴庇护所" in show.out
    assert "DV Shelter" in show.out


def test_keys_new_for_an_existing_participant_adds_one_key_pair(domain: Lianfang) -> None:
    before = {k.kid for k in domain.keys_of("health")}
    assert domain("keys", "new", "--as", "health").code == 0
    keys = domain.keys_of("health")
    assert len(keys) == len(before) + 2
    assert all(k.status == "active" for k in keys)


def test_a_new_participant_needs_both_names(domain: Lianfang) -> None:
    result = domain("keys", "new", "--as", "shelter", "--name-zh", "庇护所")
    assert result.code == 2
    assert "--name-zh and --name-en" in result.err
    assert domain.registry().version == 1


def test_a_change_without_a_threshold_of_root_keystores_changes_nothing(domain: Lianfang) -> None:
    (domain.home / "roots" / "plc.key").unlink()
    (domain.home / "roots" / "procuratorate.key").unlink()
    before = (domain.home / "registry.json").read_bytes()
    store_before = (domain.home / "keys" / "police.key").read_bytes()

    result = domain("keys", "rotate", "--as", "police")
    assert result.code == 2
    assert "needs 2 root signatures" in result.err
    assert (domain.home / "registry.json").read_bytes() == before
    assert (domain.home / "keys" / "police.key").read_bytes() == store_before


def test_unknown_participants_and_bad_ids_are_usage_errors(domain: Lianfang) -> None:
    assert domain("keys", "rotate", "--as", "nobody").code == 2
    result = domain("keys", "new", "--as", "../etc", "--name-zh", "x", "--name-en", "x")
    assert result.code == 2
    assert "is not a participant id" in result.err
    assert not (domain.home / "etc.key").exists()


# -- Kafka ACLs


def test_acls_apply_dry_run_prints_each_rule_of_the_registry_and_touches_no_broker(
    domain: Lianfang, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LIANFANG_BOOTSTRAP", raising=False)
    result = domain("acls", "apply", "--dry-run")
    assert result.code == 0, result.err
    rows = [line.split() for line in result.out.splitlines()]
    assert all(len(row) == 5 for row in rows), "principal, operation, resource, pattern, name"
    assert ["User:police", "WRITE", "TOPIC", "LITERAL", "lianfang.events.v1"] in rows
    assert ["User:police", "READ", "TOPIC", "LITERAL", "lianfang.inbox.police.v1"] in rows
    assert ["User:police", "READ", "GROUP", "LITERAL", "lianfang-inbox-police"] in rows
    assert ["User:router", "WRITE", "TOPIC", "PREFIXED", "lianfang.inbox."] in rows
    assert not [r for r in rows if r[0] == "User:education" and r[4] == "lianfang.inbox.police.v1"]
    principals = {row[0] for row in rows}
    assert {f"User:{p}" for p in domain.registry().participant_ids()} <= principals
    assert (
        result.err.strip()
        == f"{len(rows)} ACL rules for {len(principals)} principals (dry run: nothing applied)"
    )


def test_acls_apply_dry_run_follows_the_topic_prefix(domain: Lianfang) -> None:
    result = domain("acls", "apply", "--dry-run", "--topic-prefix", "t-1.")
    names = {line.split()[4] for line in result.out.splitlines()}
    assert "t-1.lianfang.events.v1" in names
    assert "lianfang.events.v1" not in names


def test_acls_apply_without_a_login_is_a_usage_error_naming_what_to_set(
    domain: Lianfang, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LIANFANG_KAFKA_SECURITY_PROTOCOL", raising=False)
    result = domain("acls", "apply", "--bootstrap", "127.0.0.1:9")
    assert result.code == 2
    assert "LIANFANG_KAFKA_SASL_USERNAME=operator" in result.err
    assert result.out == ""


def test_serve_with_an_incomplete_kafka_login_stops_before_any_service_starts(
    domain: Lianfang, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIANFANG_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("LIANFANG_KAFKA_SASL_USERNAME", "router")
    monkeypatch.delenv("LIANFANG_KAFKA_SASL_PASSWORD", raising=False)
    for service in ("router", "all"):
        result = domain("serve", service, "--bootstrap", "127.0.0.1:9")
        assert result.code == 2
        assert "LIANFANG_KAFKA_SASL_PASSWORD" in result.err


# -- secrets


def test_no_command_prints_the_passphrase_or_any_private_key(domain: Lianfang) -> None:
    (kid,) = [k.kid for k in domain.keys_of("police") if k.use == "sign"]
    for argv in (
        ("registry", "show"),
        ("registry", "show", "--json"),
        ("registry", "verify"),
        ("keys", "new", "--as", "shelter", "--name-zh", "庇护所", "--name-en", "Shelter"),
        ("keys", "new", "--as", "police"),
        ("keys", "rotate", "--as", "police"),
        ("keys", "revoke", "--as", "police", "--kid", kid),
        ("registry", "sign", "--root", "womens_federation"),
        ("registry", "verify"),
    ):
        assert domain(*argv).code == 0, argv

    printed = "".join(domain.transcript)
    passphrase = (domain.home / "passphrase").read_text().strip()
    assert passphrase not in printed
    secrets = list(_private_key_texts(domain.home, passphrase))
    assert len(secrets) > 3 * 40
    assert not [s for s in secrets if s in printed]

    secret = domain.home.joinpath(trust.PSEUDONYMIZER_KEY).read_bytes()  # the pseudonymizer's seed
    secret = base64.b64decode(json.loads(secret)["seed"])
    for text in (base64.b64encode(secret).decode(), base64.urlsafe_b64encode(secret).decode(), secret.hex()):
        assert text.rstrip("=") not in printed


# -- the installed entry point


def test_the_installed_console_script_runs_the_command(domain: Lianfang, tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "lianfang"
    assert script.exists(), f"the console script is not installed next to {sys.executable}"
    env = {**os.environ, "LIANFANG_HOME": str(domain.home)}
    clock = ["--now", NOW.isoformat()]

    ok = subprocess.run(
        [script, *clock, "registry", "verify"], check=False, capture_output=True, text=True, env=env
    )
    assert (ok.returncode, ok.stderr) == (0, "")
    assert ok.stdout.startswith("OK: registry v1")

    empty = tmp_path / "empty"
    missing = subprocess.run(
        [script, "--home", str(empty), "registry", "verify"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
    )
    assert missing.returncode == 2
    assert missing.stderr.startswith("error: no registry at")
    assert "Traceback" not in missing.stderr


# --------------------------------------------------------------------------- root ceremony


def test_rotate_roots_signs_the_next_registry_by_the_old_and_new_roots_and_the_anchor_follows(
    domain: Lianfang,
) -> None:
    before = domain.registry()
    old_anchor = Roots.model_validate_json((domain.home / "root.json").read_bytes())
    result = domain(
        "registry", "rotate-roots", "--holder", "court", "--holder", "procuratorate", "--holder", "plc",
        "--threshold", "2",
    )  # fmt: skip
    assert result.code == 0, result.err
    data = (domain.home / "registry.json").read_bytes()
    rotated = Registry.from_bytes(data, trusted_roots=old_anchor, now=NOW)  # chained to the old roots
    assert rotated.version == before.version + 1
    assert [k.holder for k in rotated.document.roots.keys] == ["court", "procuratorate", "plc"]
    assert Roots.model_validate_json((domain.home / "root.json").read_bytes()) == rotated.document.roots
    (old_plc,) = [k.kid for k in old_anchor.keys if k.holder == "plc"]
    assert _root_kid(domain.home, "plc") != old_plc, "plc holds a new root key"
    assert (domain.home / "roots" / "retired" / f"plc.{old_plc}.key").exists()
    assert domain("keys", "rotate", "--as", "police").code == 0, "the new roots sign the next change"
    assert domain("registry", "verify").code == 0


def test_rotate_roots_refuses_an_impossible_threshold_and_a_holder_named_twice(domain: Lianfang) -> None:
    before = (domain.home / "registry.json").read_bytes()
    impossible = domain("registry", "rotate-roots", "--holder", "court", "--threshold", "2")
    assert (impossible.code, "cannot be met by 1 root keys" in impossible.err) == (2, True)
    twice = domain("registry", "rotate-roots", "--holder", "court", "--holder", "court", "--threshold", "1")
    assert (twice.code, "named twice" in twice.err) == (2, True)
    assert (domain.home / "registry.json").read_bytes() == before


def test_renew_writes_the_next_version_unchanged_but_for_its_dates_one_lifetime_from_now(
    domain: Lianfang,
) -> None:
    before = domain.registry()
    later = before.document.expires - timedelta(days=3)  # LianfangRegistryExpiresSoon has fired
    result = domain("registry", "renew", now=later)
    assert result.code == 0, result.err
    renewed = domain.registry(later)
    assert renewed.version == before.version + 1
    assert (renewed.document.issued, renewed.document.expires) == (
        later,
        later + (before.document.expires - before.document.issued),
    )
    assert (
        renewed.document.model_copy(
            update={
                "version": before.version,
                "issued": before.document.issued,
                "expires": before.document.expires,
            }
        )
        == before.document
    )
    assert "renewed: expires" in result.out
    (path,) = (domain.home / "audit" / "plc").glob("*.audit.jsonl")
    entries = [i for i in (parse_line(line) for line in read_file(path)) if isinstance(i, AuditEntry)]
    assert [(e.action, e.subject, e.object) for e in entries] == [("registry_change", None, "registry.v2")]


def test_an_expired_registry_is_renewed_with_the_lifetime_asked_for_and_verifies_again(
    lianfang: Lianfang,
) -> None:
    assert lianfang("init", "--lifetime-days", "1").code == 0
    after = NOW + timedelta(days=2)
    assert lianfang("registry", "verify", now=after).code == 1

    result = lianfang("registry", "renew", "--lifetime-days", "30", now=after)
    assert result.code == 0, result.err
    assert lianfang("registry", "verify", now=after).code == 0
    assert lianfang.registry(after).document.expires == after + timedelta(days=30)


def test_renew_refuses_a_registry_the_roots_did_not_sign(domain: Lianfang) -> None:
    path = domain.home / "registry.json"
    path.write_text(path.read_text(encoding="utf-8").replace("区公安局", "区公安分局"), encoding="utf-8")
    tampered = path.read_bytes()
    result = domain("registry", "renew")
    assert result.code == 1
    assert result.err.startswith("error: [bad_signature]"), result.err
    assert path.read_bytes() == tampered


def test_init_force_forgets_the_records_of_the_replaced_domains_registries(domain: Lianfang) -> None:
    record = domain.home / "trusted" / "router@lianfang.registry.v1.json"
    record.parent.mkdir()
    record.write_bytes((domain.home / "registry.json").read_bytes())
    assert domain("init", "--force").code == 0
    assert not record.exists()


def test_publish_occurred_at_sets_a_lead_s_incident_time_and_is_refused_for_a_type_without_one() -> None:
    from services.cli.bus import with_occurred_at
    from services.kernel.errors import UsageError

    at = datetime(2021, 3, 4, 21, 30, tzinfo=UTC)
    assert with_occurred_at("lead.reported", {"category": "domestic_violence"}, at) == {
        "category": "domestic_violence",
        "occurred_at": at.isoformat(),
    }
    with pytest.raises(UsageError, match="no occurred_at"):
        with_occurred_at("risk.assessed", {}, at)
    with pytest.raises(UsageError, match="not an event type"):
        with_occurred_at("lead.invented", {}, at)


def test_publish_occurred_at_without_a_utc_offset_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["publish", "--as", "police", "lead.json", "--occurred-at", "2021-03-04T21:30:00"]) != 0
    assert "no UTC offset" in capsys.readouterr().err


def test_make_run_s_demo_plays_a_week_at_its_time_scale_and_gives_the_hub_and_console_the_same_scale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.cli.bus import DEMO_TIME_SCALE, SIMULATOR_STATE, demo_simulation

    for name in ("LIANFANG_HUB_TIME_SCALE", "LIANFANG_CONSOLE_TIME_SCALE", "LIANFANG_HUB_REPORT_EVERY_S"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LIANFANG_HUB_TICK_INTERVAL_S", "2")
    simulate, env = demo_simulation(DEMO_TIME_SCALE, "127.0.0.1:9092", tmp_path)
    assert simulate[simulate.index("--speed") + 1] == "360"
    assert simulate[simulate.index("--days") + 1] == "7"
    assert simulate[simulate.index("--state") + 1] == str(SIMULATOR_STATE.resolve())
    assert "--seed" not in simulate, "a fixed seed would replay the same people every run"
    assert env["LIANFANG_HUB_TIME_SCALE"] == env["LIANFANG_CONSOLE_TIME_SCALE"] == "360"
    assert env["LIANFANG_HUB_REPORT_EVERY_S"] == "60"
    assert env["LIANFANG_HUB_TICK_INTERVAL_S"] == "2", "a variable already set wins"
    real, no_env = demo_simulation(1, "127.0.0.1:9092", tmp_path)
    assert "--speed" not in real
    assert no_env == {}


# -- pseudonymizer key epochs


def test_rotating_the_pseudonymizer_key_keeps_the_old_one_as_previous_until_the_transition_ends(
    domain: Lianfang,
) -> None:
    result = domain("pseudonymizer", "rotate")
    assert result.code == 0, result.err
    role = domain.registry().pseudonymizer
    assert role is not None
    assert role.previous is not None
    assert (role.version, role.previous.version) == (2, 1)
    assert role.transition_until == NOW + timedelta(days=373)  # the hub's retention, and a day
    new_file = domain.home / "pseudonymizer" / "key.v2.json"
    assert new_file.stat().st_mode & 0o777 == 0o600
    new_key = PseudonymizerKey.from_json(new_file.read_bytes())
    assert new_key.role(role.url).public == role.public
    assert "previous key v1" in domain("registry", "show").out

    assert "under way" in domain("pseudonymizer", "rotate").err
    early = domain("pseudonymizer", "end-transition", now=NOW + timedelta(days=30))
    assert early.code == 2
    assert "--force" in early.err
    assert (domain.home / trust.PSEUDONYMIZER_KEY).exists()

    forced = NOW + timedelta(days=30)
    result = domain("pseudonymizer", "end-transition", "--force", now=forced)
    assert result.code == 0, result.err
    role = domain.registry(forced).pseudonymizer
    assert role is not None
    assert (role.version, role.previous, role.transition_until) == (2, None, None)
    assert not (domain.home / trust.PSEUDONYMIZER_KEY).exists()  # the old key, destroyed
    assert new_file.exists()

    # A shorter transition ends without --force once its time has come.
    assert domain("pseudonymizer", "rotate", "--transition-days", "5", now=forced).code == 0
    result = domain("pseudonymizer", "end-transition", now=forced + timedelta(days=5))
    assert result.code == 0, result.err
    assert not new_file.exists()
    assert (domain.home / "pseudonymizer" / "key.v3.json").exists()
    seed = json.loads((domain.home / "pseudonymizer" / "key.v3.json").read_bytes())["seed"]
    assert not any(seed in text for text in domain.transcript)


def test_a_sealed_key_domain_migrates_and_at_the_end_the_sealed_key_is_gone_from_registry_and_records(
    lianfang: Lianfang,
) -> None:
    assert lianfang("init", "--sealed-pseudonym-key").code == 0
    result = lianfang("pseudonymizer", "migrate", "--url", "http://127.0.0.1:9")
    assert result.code == 0, result.err
    migrating = lianfang.registry()
    assert migrating.pseudonymizer is not None
    assert migrating.document.pseudonym_key is not None
    assert (migrating.pseudonymizer.version, migrating.document.pseudonym_key.version) == (2, 1)
    domain = trust.open_domain(lianfang.home)
    old_key = migrating.pseudonym_key("police", domain.keystore("police").encryption)

    # Keys change during the transition: the sealed key still follows them.
    assert lianfang("keys", "rotate", "--as", "police").code == 0
    rotated = lianfang.registry()
    assert rotated.pseudonym_key("police", domain.keystore("police").encryption) == old_key

    record = lianfang.home / "trusted" / "sdk.police@lianfang.registry.v1.json"
    record.parent.mkdir(mode=0o700)
    record.write_bytes(rotated.data)
    result = lianfang("pseudonymizer", "end-transition", "--force")
    assert result.code == 0, result.err
    after = lianfang.registry()
    assert after.document.pseudonym_key is None
    assert after.pseudonymizer is not None
    assert after.pseudonymizer.transition_until is None
    for text in (lianfang.home / "registry.json").read_bytes(), record.read_bytes():
        assert b'"sealed"' not in text
    assert "1 record(s)" in result.out
    assert "already names a pseudonymizer" in lianfang("pseudonymizer", "migrate").err
