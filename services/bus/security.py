"""How a client proves who it is to Kafka and checks the broker: TLS, SASL mechanism and credentials.

One frozen settings object, read from the environment, turned into keyword arguments for kafka-python
(``KafkaProducer``, ``KafkaConsumer``, ``KafkaAdminClient``) and for aiokafka (and so faust). The
password is a :class:`~pydantic.SecretStr`: neither the repr nor any message here shows it, and
kafka-python's admin client, which logs the configuration it is given at DEBUG, shows it as ``[hidden]``
(:class:`RedactedConfig`). No Lianfang process logs at DEBUG when it makes one (the hub's faust worker
lowers its level only after its topics are prepared); a program of an operator's that calls
:mod:`services.bus.cluster` with DEBUG logging would have printed it.

Environment:

- ``LIANFANG_KAFKA_SECURITY_PROTOCOL``: ``PLAINTEXT`` (default), ``SSL``, ``SASL_PLAINTEXT``, ``SASL_SSL``
- ``LIANFANG_KAFKA_SASL_MECHANISM``: ``SCRAM-SHA-512`` (default), ``SCRAM-SHA-256`` or ``PLAIN``
- ``LIANFANG_KAFKA_SASL_USERNAME``: the principal's name (``User:<name>`` in ACLs); a participant id
- ``LIANFANG_KAFKA_SASL_PASSWORD``: its password
- ``LIANFANG_KAFKA_CA_FILE``: PEM file of the CA that signed the broker certificate (default: the
  system's trust store)
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.kernel.errors import UsageError, validation_summary

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]


class KafkaSecuritySettings(BaseSettings):
    """Client-side Kafka security. Environment: ``LIANFANG_KAFKA_<NAME>`` (see the module docstring)."""

    model_config = SettingsConfigDict(
        env_prefix="LIANFANG_KAFKA_", frozen=True, extra="ignore", hide_input_in_errors=True
    )

    security_protocol: SecurityProtocol = Field(
        default="PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
    )
    sasl_mechanism: SaslMechanism = Field(default="SCRAM-SHA-512", description="used with SASL_*")
    sasl_username: str = Field(default="", description="SASL user (the Kafka principal User:<name>)")
    sasl_password: SecretStr = Field(default=SecretStr(""), description="SASL password (never logged)")
    ca_file: Path | None = Field(default=None, description="PEM CA bundle; default: system trust store")

    @model_validator(mode="after")
    def _complete(self) -> KafkaSecuritySettings:
        if self.sasl and not (self.sasl_username and self.sasl_password.get_secret_value()):
            raise ValueError(
                f"security protocol {self.security_protocol} needs LIANFANG_KAFKA_SASL_USERNAME and "
                "LIANFANG_KAFKA_SASL_PASSWORD"
            )
        return self

    @property
    def sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def principal(self) -> str | None:
        """The principal the broker sees (``User:<name>``) when SASL is on, else ``None``."""
        return f"User:{self.sasl_username}" if self.sasl else None

    def check_ca_file(self) -> None:
        """With TLS on, a CA file that was named must exist: raise :class:`UsageError` naming it."""
        if self.tls and self.ca_file is not None and not self.ca_file.is_file():
            raise UsageError(f"the Kafka CA file {self.ca_file} does not exist (LIANFANG_KAFKA_CA_FILE)")

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client TLS context that verifies the broker (hostname included) against ``ca_file``."""
        if not self.tls:
            return None
        self.check_ca_file()
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context


def load_security() -> KafkaSecuritySettings:
    """The settings from the environment; an incomplete set is a :class:`UsageError` naming the fix.

    Services call it once at startup, so that a mistake stops them before they touch Kafka: SASL
    without a user or password, a CA file that does not exist, or credentials given while the
    protocol would not send them (PLAINTEXT or SSL would connect without logging in).
    """
    try:
        settings = KafkaSecuritySettings()
    except ValidationError as e:
        raise UsageError(
            f"Kafka security settings are incomplete: {validation_summary(e, limit=None)}"
        ) from e
    settings.check_ca_file()
    if not settings.sasl and (settings.sasl_username or settings.sasl_password.get_secret_value()):
        raise UsageError(
            f"LIANFANG_KAFKA_SASL_USERNAME/_PASSWORD are set but LIANFANG_KAFKA_SECURITY_PROTOCOL is "
            f"{settings.security_protocol}, which does not log in: set it to SASL_SSL (or SASL_PLAINTEXT)"
        )
    return settings


SECRET_CONFIG_WORDS = ("password", "secret", "token")
"""A client configuration key with one of these in its name holds a secret (``sasl_plain_password``,
``ssl_password``, ``sasl_oauth_token_provider``)."""


class RedactedConfig(logging.Filter):
    """Hides the secrets of a client configuration a log record carries as an argument: kafka-python's
    ``KafkaAdminClient`` logs its whole configuration at DEBUG, the SASL password in it. The record's
    mapping arguments are replaced by copies whose secret values read ``[hidden]``; the record is kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, Mapping):  # logging unwraps a lone mapping argument
            record.args = _redacted(args)
        elif isinstance(args, tuple) and any(isinstance(a, Mapping) for a in args):
            record.args = tuple(_redacted(a) if isinstance(a, Mapping) else a for a in args)
        return True


def _redacted(config: Mapping[Any, Any]) -> dict[Any, Any]:
    return {
        k: "[hidden]" if v and any(w in str(k).lower() for w in SECRET_CONFIG_WORDS) else v
        for k, v in config.items()
    }


KAFKA_PYTHON_CONFIG_LOGGERS = ("kafka.admin.client",)
"""kafka-python's loggers that log a client's configuration (at DEBUG)."""
_REDACTED_CONFIG = RedactedConfig()


def kafka_python_kwargs(settings: KafkaSecuritySettings) -> dict[str, Any]:
    """Keyword arguments for kafka-python's ``KafkaProducer``/``KafkaConsumer``/``KafkaAdminClient``.

    Every kafka-python client of Lianfang is configured here, so this is also where the loggers that
    would print the password it returns get :class:`RedactedConfig` (once)."""
    for name in KAFKA_PYTHON_CONFIG_LOGGERS:
        logging.getLogger(name).addFilter(_REDACTED_CONFIG)  # a filter already there is not added twice
    kwargs: dict[str, Any] = {"security_protocol": settings.security_protocol}
    if settings.tls:
        settings.check_ca_file()
        kwargs["ssl_check_hostname"] = True
        if settings.ca_file is not None:
            kwargs["ssl_cafile"] = str(settings.ca_file)
    if settings.sasl:
        kwargs["sasl_mechanism"] = settings.sasl_mechanism
        kwargs["sasl_plain_username"] = settings.sasl_username
        kwargs["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    return kwargs


def aiokafka_kwargs(settings: KafkaSecuritySettings) -> dict[str, Any]:
    """Keyword arguments for aiokafka's ``AIOKafkaProducer``/``AIOKafkaConsumer``/admin client."""
    kwargs: dict[str, Any] = {"security_protocol": settings.security_protocol}
    if settings.tls:
        kwargs["ssl_context"] = settings.ssl_context()
    if settings.sasl:
        kwargs["sasl_mechanism"] = settings.sasl_mechanism
        kwargs["sasl_plain_username"] = settings.sasl_username
        kwargs["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    return kwargs


def faust_credentials(settings: KafkaSecuritySettings) -> Any:
    """The ``broker_credentials`` of a ``faust.App`` (``None`` for PLAINTEXT)."""
    import faust  # noqa: PLC0415 - only the faust services need it
    from faust.types.auth import SASLMechanism  # noqa: PLC0415

    if settings.sasl:
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password.get_secret_value(),
            ssl_context=settings.ssl_context(),
            mechanism=SASLMechanism(settings.sasl_mechanism),
        )
    if settings.tls:
        return faust.SSLCredentials(settings.ssl_context())
    return None
