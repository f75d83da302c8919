"""Settings of the coordinator console: one frozen object from ``LIANFANG_CONSOLE_<NAME>``, plus
``LIANFANG_BOOTSTRAP`` (Kafka) and ``LIANFANG_HOME`` (the trust domain: the coordinators' keystore, the
registry, and the console's accounts and audit log under ``HOME/console/``)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from services.bus import metrics_endpoint
from services.bus.settings import ServiceSettings
from services.console.accounts import accounts_path
from services.console.audit import audit_path
from services.kernel import ids


class ConsoleSettings(ServiceSettings):
    """Every option of the console, with its environment variable ``LIANFANG_CONSOLE_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="LIANFANG_CONSOLE_")

    topic_prefix: str = Field(default="", description="prefix of every topic name (tests use one per run)")
    participant: str = Field(default=ids.COORDINATORS, description="whose inbox the console reads")
    host: str = Field(default="127.0.0.1", description="address to listen on")
    port: int = Field(default=8088, ge=0, le=65535, description="port to listen on; 0 picks a free one")
    data_dir: Path = Field(
        default=Path(".run/console"),
        description="the inbox as received (sealed records, re-opened at start) and the outbox",
    )
    cookie_secure: bool = Field(
        default=True,
        description="mark cookies Secure (HTTPS only); turn off only for plain http on loopback",
    )
    session_idle_s: float = Field(default=30 * 60, gt=0, description="a session ends after this idle time")
    session_max_s: float = Field(default=12 * 3600, gt=0, description="and after this in any case")
    lockout_failures: int = Field(default=5, ge=1, description="failed sign-ins in a row that lock")
    lockout_minutes: float = Field(default=15, gt=0, description="how long an account stays locked")
    timezone: str = Field(default="Asia/Shanghai", description="times are shown and entered in this zone")
    publish_wait_s: float = Field(
        default=5.0, ge=0, description="how long an action waits for Kafka before saying it was queued"
    )
    time_scale: float = Field(
        default=1.0,
        gt=0,
        description="as the hub's LIANFANG_HUB_TIME_SCALE: the alerts' deadlines are the hub's divided by it",
    )
    metrics_port: int = Field(default=9104, ge=0, description="port of /metrics; 0 turns it off")
    metrics_address: str = Field(default=metrics_endpoint.LOOPBACK, description=metrics_endpoint.ADDRESS_HELP)
    log_level: str = Field(default="info", description="debug, info, warning or error")
    require_freshness: bool = Field(
        default=True,
        description="read the inbox only with a fresh timestamp statement; false (logged as a warning) "
        "only where no timestamp service runs",
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as e:
            raise ValueError(f"unknown time zone {value!r} (an IANA name such as Asia/Shanghai)") from e
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def accounts_path(self) -> Path:
        return accounts_path(self.home)

    @property
    def audit_path(self) -> Path:
        return audit_path(self.home)

    @property
    def session_idle(self) -> timedelta:
        return timedelta(seconds=self.session_idle_s)

    @property
    def session_max(self) -> timedelta:
        return timedelta(seconds=self.session_max_s)

    @property
    def lockout(self) -> timedelta:
        return timedelta(minutes=self.lockout_minutes)

    def url(self, port: int | None = None) -> str:
        """The address people open (``port`` when the server picked one)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if host in ("0.0.0.0", "[::]"):  # noqa: S104 - describing the address, not binding to it
            host = "127.0.0.1"
        return f"http://{host}:{port or self.port}/"
