"""What the settings of every long-running service share: where Kafka is, where the trust domain is,
and how the settings behave. Each service's settings class adds its own ``LIANFANG_<SERVICE>_`` prefix
and fields (``docs/configuration.md`` lists them all)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ServiceSettings"]


class ServiceSettings(BaseSettings):
    """Read once at start from the environment, then frozen; a value refused is never quoted in the error
    (it may be a password or a token in a URL). ``LIANFANG_BOOTSTRAP`` and ``LIANFANG_HOME`` carry no
    service prefix: one machine's services share them."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", hide_input_in_errors=True)

    bootstrap: str = Field(
        default="",
        validation_alias=AliasChoices("LIANFANG_BOOTSTRAP", "bootstrap"),
        description="Kafka bootstrap servers",
    )
    home: Path = Field(
        default=Path(".lianfang"),
        validation_alias=AliasChoices("LIANFANG_HOME", "home"),
        description="trust domain: the registry and the keystores this service uses",
    )
