"""The declarative topic list (``deploy/topics.toml``), expanded for a registry and a cluster size."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from services.kernel.errors import MalformedError, TransportError
from services.kernel.kafka import TopicSpec, ensure_topics
from services.kernel.kafka_security import KafkaSecuritySettings, kafka_python_kwargs, load_security

TOPICS_FILE = Path(__file__).resolve().parents[2] / "deploy" / "topics.toml"

EVENTS = "lianfang.events.v1"
DEADLETTER = "lianfang.deadletter.v1"
REGISTRY = "lianfang.registry.v1"
AUDIT = "lianfang.audit.v1"
ROUTER_REPLAY = "lianfang.router.replay.v1"
HUB_CLOCK = "lianfang.hub.clock.v1"
HUB_SUSPECTS = "lianfang.hub.suspects.v1"
HUB_SERIAL = "lianfang.hub.serial.v1"


def inbox(participant: str) -> str:
    """The inbox topic of one participant (only the router writes to it)."""
    return f"lianfang.inbox.{participant}.v1"


@dataclass(frozen=True, slots=True)
class TopicNames:
    """The bus's topic names under an optional prefix (tests give each run its own namespace)."""

    prefix: str = ""

    @property
    def events(self) -> str:
        return self.prefix + EVENTS

    @property
    def deadletter(self) -> str:
        return self.prefix + DEADLETTER

    @property
    def registry(self) -> str:
        return self.prefix + REGISTRY

    @property
    def audit(self) -> str:
        return self.prefix + AUDIT

    @property
    def router_replay(self) -> str:
        return self.prefix + ROUTER_REPLAY

    @property
    def hub_clock(self) -> str:
        return self.prefix + HUB_CLOCK

    @property
    def hub_suspects(self) -> str:
        return self.prefix + HUB_SUSPECTS

    @property
    def hub_serial(self) -> str:
        return self.prefix + HUB_SERIAL

    def inbox(self, participant: str) -> str:
        return self.prefix + inbox(participant)


def load_specs(
    participants: Iterable[str], *, brokers: int, path: Path = TOPICS_FILE, prefix: str = ""
) -> list[TopicSpec]:
    """Every topic of the list, ``{participant}`` expanded, replication fitted to ``brokers``.

    ``prefix`` renames every topic (tests give each run its own namespace on a shared broker).
    """
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise MalformedError(f"cannot read the topic list {path}: {e}") from e
    default_rf = data.get("defaults", {}).get("replication", "auto")
    specs = []
    for topic in data.get("topic", []):
        rf_setting = topic.get("replication", default_rf)
        rf = min(3, brokers) if rf_setting == "auto" else int(rf_setting)
        configs = {k: str(v) for k, v in topic.get("config", {}).items()}
        if rf >= 3:
            configs.setdefault("min.insync.replicas", "2")
        names = (
            [topic["name"].format(participant=p) for p in participants]
            if "{participant}" in topic["name"]
            else [topic["name"]]
        )
        specs += [TopicSpec(prefix + name, int(topic["partitions"]), rf, configs) for name in names]
    return specs


def broker_count(bootstrap: str, security: KafkaSecuritySettings | None = None) -> int:
    """How many brokers the cluster has (``security``: ``None`` is the ``LIANFANG_KAFKA_*`` environment)."""
    auth = kafka_python_kwargs(security if security is not None else load_security())
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="lianfang-topics", **auth)
        try:
            return len(admin.describe_cluster()["brokers"])
        finally:
            admin.close()
    except KafkaError as e:
        raise TransportError(f"cannot reach Kafka at {bootstrap}: {e}") from e


def apply(
    bootstrap: str,
    participants: Iterable[str],
    *,
    prefix: str = "",
    security: KafkaSecuritySettings | None = None,
) -> list[TopicSpec]:
    """Create every topic of the list that does not exist yet; returns the specs applied.

    ``security`` logs in (``None``: the ``LIANFANG_KAFKA_*`` environment); on a secured broker only the
    operator may create topics.
    """
    security = security if security is not None else load_security()
    specs = load_specs(participants, brokers=broker_count(bootstrap, security), prefix=prefix)
    ensure_topics(bootstrap, specs, security=security)
    return specs
