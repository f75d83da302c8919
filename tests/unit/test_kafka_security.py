"""Client security settings: read from the environment, turned into client kwargs, secrets kept out of sight."""

from __future__ import annotations

import contextlib
import logging
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from kafka import KafkaAdminClient
from kafka.errors import KafkaError
from pydantic import SecretStr

from services.bus.security import (
    KafkaSecuritySettings,
    RedactedConfig,
    aiokafka_kwargs,
    kafka_python_kwargs,
    load_security,
)
from services.gateway.app import GatewaySettings
from services.hub.app import HubSettings
from services.kernel.errors import UsageError
from services.router.app import RouterSettings
from services.sdk.client import Client

if TYPE_CHECKING:
    from tests.kit import DemoDomain

pytestmark = pytest.mark.unit

SECRET = "s3cret-never-shown"


def test_plaintext_is_the_default_and_adds_nothing_but_the_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SECURITY_PROTOCOL", "SASL_USERNAME", "SASL_PASSWORD", "CA_FILE"):
        monkeypatch.delenv(f"LIANFANG_KAFKA_{name}", raising=False)
    settings = load_security()
    assert kafka_python_kwargs(settings) == {"security_protocol": "PLAINTEXT"}
    assert aiokafka_kwargs(settings) == {"security_protocol": "PLAINTEXT"}


def test_sasl_ssl_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("not read by kafka_python_kwargs")
    monkeypatch.setenv("LIANFANG_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("LIANFANG_KAFKA_SASL_USERNAME", "police")
    monkeypatch.setenv("LIANFANG_KAFKA_SASL_PASSWORD", SECRET)
    monkeypatch.setenv("LIANFANG_KAFKA_CA_FILE", str(ca))
    settings = load_security()
    assert settings.principal == "User:police"
    assert kafka_python_kwargs(settings) == {
        "security_protocol": "SASL_SSL",
        "ssl_check_hostname": True,
        "ssl_cafile": str(ca),
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "police",
        "sasl_plain_password": SECRET,
    }
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)


def test_aiokafka_gets_a_verifying_tls_context() -> None:
    settings = KafkaSecuritySettings(
        security_protocol="SASL_SSL",
        sasl_username="hub",
        sasl_password=SECRET,  # type: ignore[arg-type]
    )
    kwargs = aiokafka_kwargs(settings)
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert kwargs["sasl_plain_username"] == "hub"


def test_sasl_without_a_password_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIANFANG_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("LIANFANG_KAFKA_SASL_USERNAME", "police")
    monkeypatch.delenv("LIANFANG_KAFKA_SASL_PASSWORD", raising=False)
    with pytest.raises(UsageError, match="LIANFANG_KAFKA_SASL_PASSWORD"):
        load_security()


def test_a_missing_ca_file_is_named() -> None:
    settings = KafkaSecuritySettings(security_protocol="SSL", ca_file=Path("/nonexistent/ca.crt"))
    with pytest.raises(UsageError, match=r"/nonexistent/ca\.crt"):
        aiokafka_kwargs(settings)


# -- read once at startup: every service's settings carry the login, an incomplete one stops it

SECURE_ENV = {
    "LIANFANG_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "LIANFANG_KAFKA_SASL_USERNAME": "router",
    "LIANFANG_KAFKA_SASL_PASSWORD": SECRET,
}


def _clear(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SECURITY_PROTOCOL", "SASL_MECHANISM", "SASL_USERNAME", "SASL_PASSWORD", "CA_FILE"):
        monkeypatch.delenv(f"LIANFANG_KAFKA_{name}", raising=False)


def _service_settings() -> list[RouterSettings | HubSettings | GatewaySettings]:
    return [RouterSettings(), HubSettings(), GatewaySettings()]


def test_every_service_s_settings_default_to_plaintext(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear(monkeypatch)
    for settings in _service_settings():
        security = settings.kafka_security
        assert kafka_python_kwargs(security) == {"security_protocol": "PLAINTEXT"}, type(settings)


def test_every_service_s_settings_take_the_login_from_the_environment_and_never_show_the_password(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _clear(monkeypatch)
    ca = tmp_path / "ca.crt"
    ca.write_text("a CA")
    for name, value in {**SECURE_ENV, "LIANFANG_KAFKA_CA_FILE": str(ca)}.items():
        monkeypatch.setenv(name, value)
    for settings in _service_settings():
        security = settings.kafka_security
        assert security.principal == "User:router"
        assert security.ca_file == ca
        assert SECRET not in repr(settings)
        assert SECRET not in str(settings)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"LIANFANG_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "LIANFANG_KAFKA_SASL_PASSWORD"),
        (
            {"LIANFANG_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "LIANFANG_KAFKA_SASL_PASSWORD": SECRET},
            "LIANFANG_KAFKA_SASL_USERNAME",
        ),
        ({**SECURE_ENV, "LIANFANG_KAFKA_CA_FILE": "/nonexistent/ca.crt"}, "LIANFANG_KAFKA_CA_FILE"),
        ({"LIANFANG_KAFKA_SASL_USERNAME": "router", "LIANFANG_KAFKA_SASL_PASSWORD": SECRET}, "PLAINTEXT"),
        ({"LIANFANG_KAFKA_SECURITY_PROTOCOL": "KERBEROS"}, "SASL_SSL"),
    ],
    ids=[
        "sasl without a password",
        "sasl without a user",
        "a ca file that does not exist",
        "credentials with a protocol that would not send them",
        "an unknown protocol",
    ],
)
def test_an_incomplete_login_stops_every_service_at_startup_naming_what_to_set(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str
) -> None:
    _clear(monkeypatch)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for settings in (RouterSettings, HubSettings, GatewaySettings, load_security):
        with pytest.raises(UsageError, match=named) as caught:
            settings()
        assert SECRET not in str(caught.value)


def test_a_ca_file_removed_after_startup_is_named_when_a_kafka_python_client_is_made(tmp_path: Path) -> None:
    settings = KafkaSecuritySettings(security_protocol="SSL", ca_file=tmp_path / "gone.crt")
    with pytest.raises(UsageError, match="LIANFANG_KAFKA_CA_FILE"):
        kafka_python_kwargs(settings)


def test_the_sdk_client_logs_in_with_the_security_it_is_given(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, domain: DemoDomain
) -> None:
    _clear(monkeypatch)
    given = KafkaSecuritySettings(
        security_protocol="SASL_PLAINTEXT",
        sasl_username="police",
        sasl_password=SECRET,  # type: ignore[arg-type]
    )

    def client(name: str, security: KafkaSecuritySettings | None) -> Client:
        return Client(
            keystore=domain.keys("police"),
            registry=domain.registry,
            bootstrap="127.0.0.1:9",
            outbox_path=tmp_path / f"{name}.sqlite",
            start=False,
            security=security,
        )

    explicit, from_env = client("explicit", given), client("from-env", None)
    try:
        assert explicit.drainer.security is given
        assert explicit.security.principal == "User:police"
        assert from_env.drainer.security.principal is None, "no LIANFANG_KAFKA_*: plaintext"
    finally:
        explicit.close()
        from_env.close()


@pytest.mark.parametrize("service", ["router", "hub", "gateway", "console"])
def test_a_service_started_with_an_incomplete_login_says_which_variable_in_one_line(service: str) -> None:
    import os
    import subprocess
    import sys

    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LIANFANG_")},
        "LIANFANG_BOOTSTRAP": "127.0.0.1:9",
        "LIANFANG_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "LIANFANG_KAFKA_SASL_PASSWORD": "not-shown-anywhere",
    }
    done = subprocess.run(
        [sys.executable, "-m", f"services.{service}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "LIANFANG_KAFKA_SASL_USERNAME" in done.stderr
    assert "Traceback" not in done.stderr
    assert "not-shown-anywhere" not in done.stdout + done.stderr


def test_kafka_python_s_admin_client_logs_its_configuration_without_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = KafkaSecuritySettings(
        security_protocol="SASL_PLAINTEXT", sasl_username="police", sasl_password=SecretStr(SECRET)
    )
    auth = kafka_python_kwargs(settings)
    with caplog.at_level(logging.DEBUG, logger="kafka"), contextlib.suppress(KafkaError):
        # It logs the configuration it is given first, then refuses an option it does not know: the
        # test ends there instead of waiting for a broker.
        KafkaAdminClient(bootstrap_servers="127.0.0.1:1", no_such_option=True, **auth)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "Starting KafkaAdminClient with configuration" in logged
    assert "[hidden]" in logged
    assert SECRET not in logged


def test_a_redacted_record_keeps_what_is_not_secret() -> None:
    record = logging.LogRecord(
        "kafka.admin.client", logging.DEBUG, __file__, 1, "config %s, then %s", (
            {"sasl_plain_password": "p", "ssl_password": "q", "client_id": "lianfang", "ssl_password_unset": None},
            "more",
        ), None,
    )  # fmt: skip
    RedactedConfig().filter(record)
    assert record.getMessage() == (
        "config {'sasl_plain_password': '[hidden]', 'ssl_password': '[hidden]', 'client_id': 'lianfang', "
        "'ssl_password_unset': None}, then more"
    )
