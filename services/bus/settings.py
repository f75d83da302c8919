"""What the settings of every long-running service share: where Kafka is, where the trust domain is,
and how the settings behave. Each service's settings class adds its own ``LIANFANG_<SERVICE>_`` prefix
and fields (``docs/configuration.md`` lists them all)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

__all__ = ["ServiceSettings"]

SHARED: dict[str, str] = {"home": "LIANFANG_HOME", "bootstrap": "LIANFANG_BOOTSTRAP"}
"""The fields every service reads from one unprefixed variable each."""


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

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _OnlyOurNames(settings_cls, env_settings), dotenv_settings, file_secret_settings


class _OnlyOurNames(PydanticBaseSettingsSource):
    """The environment, but ``home`` and ``bootstrap`` only from ``LIANFANG_HOME`` and
    ``LIANFANG_BOOTSTRAP``: their short aliases (for keyword arguments) would otherwise match the
    shell's own ``$HOME``, names being matched regardless of case, and a service started without
    ``LIANFANG_HOME`` took the user's home folder for its trust domain."""

    def __init__(self, settings_cls: type[BaseSettings], env: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self._env = env

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._env.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        values = self._env()
        for name, variable in SHARED.items():
            if variable not in os.environ:  # whatever matched was another variable (the source keys it
                values.pop(name, None)  # by the field's name or its first alias)
                values.pop(variable, None)
        return values
