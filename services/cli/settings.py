"""Settings shared by every service: where Kafka is and where the trust domain lives."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class KafkaSettings(BaseSettings):
    """How to reach Kafka. Environment: ``LIANFANG_BOOTSTRAP``."""

    model_config = SettingsConfigDict(
        env_prefix="LIANFANG_", frozen=True, extra="ignore", hide_input_in_errors=True
    )

    bootstrap: str = Field(
        default="",
        description="Kafka bootstrap servers, host:port[,host:port]. Empty: none configured.",
    )


class HomeSettings(BaseSettings):
    """Where the trust domain (registry, keystores) lives. Environment: ``LIANFANG_HOME``."""

    model_config = SettingsConfigDict(
        env_prefix="LIANFANG_", frozen=True, extra="ignore", hide_input_in_errors=True
    )

    home: Path = Field(default=Path(".lianfang"), description="Folder of the demo trust domain.")
