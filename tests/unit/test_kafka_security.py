"""Client security settings: read from the environment, turned into client kwargs, secrets kept out of sight."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from services.kernel.errors import UsageError
from services.kernel.kafka_security import (
    KafkaSecuritySettings,
    aiokafka_kwargs,
    kafka_python_kwargs,
    load_security,
)

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
