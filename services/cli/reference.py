"""The operators' references, written from the code: every setting and every metric. Pure.

``docs/configuration.md`` lists each service's environment variables (from its frozen settings class:
name, type, default, description) and ``docs/metrics.md`` each service's Prometheus series (from its
metrics module, declared in a registry of its own: name, type, labels, help). A unit test holds both
files to what this module renders, so a new setting or series is documented by regenerating them:
``make docs`` (``python -m services.cli.reference configuration|metrics``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector
from pydantic import AliasChoices, SecretStr
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

from services.bus.security import KafkaSecuritySettings
from services.cli.settings import HomeSettings, KafkaSettings
from services.console.metrics import ConsoleMetrics
from services.console.settings import ConsoleSettings
from services.gateway.app import GatewaySettings
from services.gateway.metrics import GatewayMetrics
from services.hub.app import HubSettings
from services.hub.metrics import HubMetrics
from services.kernel.allocator import Jemalloc, JemallocCollector, MallocSettings
from services.kernel.heapwatch import HeapwatchSettings
from services.pseudonymizer.app import PseudonymizerSettings
from services.pseudonymizer.client import ClientMetrics
from services.pseudonymizer.metrics import PseudonymizerMetrics
from services.router.app import RouterSettings
from services.router.metrics import RouterMetrics
from services.sdk.metrics import SdkMetrics
from services.timestamp.app import TimestampSettings
from services.timestamp.metrics import TimestampMetrics

__all__ = ["METRICS", "SETTINGS", "configuration_markdown", "main", "metrics_markdown", "service_registries"]

SETTINGS: Final[tuple[tuple[str, type[BaseSettings]], ...]] = (
    ("Every command and service: Kafka", KafkaSettings),
    ("Every command and service: the trust domain", HomeSettings),
    ("Every Kafka client: TLS and login", KafkaSecuritySettings),
    ("The router (`lianfang serve router`)", RouterSettings),
    ("The hub (`lianfang serve hub`)", HubSettings),
    ("The HTTP gateway (`lianfang serve gateway`)", GatewaySettings),
    ("The coordinators' console (`lianfang serve console`)", ConsoleSettings),
    ("The timestamp service (`lianfang serve timestamp`)", TimestampSettings),
    ("The pseudonymizer (`lianfang serve pseudonymizer`)", PseudonymizerSettings),
    ("Every long-running service: the C allocator", MallocSettings),
    ("Every long-running service: where memory grows (a diagnostic)", HeapwatchSettings),
)
"""Each settings class, under the title its section gets, in the order of the reference."""


def _jemalloc_series(registry: CollectorRegistry) -> None:
    """``lianfang_malloc_bytes``, as a service on jemalloc registers it (here without jemalloc)."""

    class _NoCounters:
        def stats(self) -> dict[str, int]:
            return {}

    registry.register(JemallocCollector(cast(Jemalloc, _NoCounters())))


def _gateway(registry: CollectorRegistry) -> None:
    GatewayMetrics(registry).watch_outboxes({"police": lambda: 0.0}, {"police": lambda: 0.0})


METRICS: Final[tuple[tuple[str, Callable[[CollectorRegistry], object]], ...]] = (
    ("router", RouterMetrics),
    ("hub", HubMetrics),
    ("gateway", _gateway),
    ("console", ConsoleMetrics),
    ("timestamp", TimestampMetrics),
    ("pseudonymizer", PseudonymizerMetrics),
    ("sdk", SdkMetrics),
    ("pseudonymizer client", ClientMetrics),
    ("allocator", _jemalloc_series),
)
"""Each service's metrics module (and the parts several services embed), by the name its section gets."""

_SERVICES_WITH: Final = {
    "sdk": "every process that embeds the SDK: an agency's program, `lianfang import`, gateway, console",
    "pseudonymizer client": "every process that embeds the SDK, where the registry names a pseudonymizer",
    "allocator": "every service that runs on jemalloc (`LIANFANG_MALLOC_PRELOAD`)",
}

_STANDARD_PREFIXES: Final = ("process_", "python_")  # prometheus_client's own collectors


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True)
class Setting:
    variable: str
    type: str
    default: str
    description: str


def settings_of(cls: type[BaseSettings]) -> list[Setting]:
    """The environment variables ``cls`` reads, in declaration order (a nested settings class, the
    Kafka login each service reads from ``LIANFANG_KAFKA_*``, has a section of its own)."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    rows = []
    for name, field in cls.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseSettings):
            continue
        alias = field.validation_alias
        variable = alias.choices[0] if isinstance(alias, AliasChoices) else (prefix + name)
        rows.append(
            Setting(
                variable=str(variable).upper(),
                type=_type_name(annotation),
                default=_default(field.default, field.default_factory),
                description=field.description or "",
            )
        )
    return rows


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    text = text or str(annotation)
    return text.replace("typing.", "").replace("pathlib.", "").replace("pydantic.types.", "")


def _default(value: Any, factory: Any) -> str:
    if value is PydanticUndefined:
        value = factory() if callable(factory) else None
    if isinstance(value, bool):
        return "true" if value else "false"
    if (
        isinstance(value, SecretStr)
        or value is None
        or value == ""
        or (isinstance(value, tuple | dict) and not value)
    ):
        return "(none)"
    return str(value)


def configuration_markdown() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Every environment variable a Lianfang command or service reads, with its type, default and",
        "meaning, written from the settings classes by `make docs` (a unit test holds this file to them).",
        "Each service reads its own prefix once at start; the settings are frozen from then on. Where a",
        "section of the README or the operators' guide explains a setting, it says why to change it.",
        "",
    ]
    for title, cls in SETTINGS:
        lines += [f"## {title}", "", "| variable | type | default | meaning |", "|---|---|---|---|"]
        lines += [
            f"| `{s.variable}` | {_cell(s.type)} | {_cell(s.default)} | {_cell(s.description)} |"
            for s in settings_of(cls)
        ]
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- metrics


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    type: str
    labels: tuple[str, ...]
    help: str


def service_registries() -> dict[str, CollectorRegistry]:
    """Each metrics module of :data:`METRICS`, declared in a fresh registry of its own (as each service
    runs in a process of its own; several declare the same shared series)."""
    registries = {}
    for name, declare in METRICS:
        registries[name] = registry = CollectorRegistry()
        declare(registry)
    return registries


def series_of(registry: CollectorRegistry) -> list[Series]:
    """The series ``registry`` declares, by name (counters with their ``_total``)."""
    found: dict[str, Series] = {}
    for collector in _collectors(registry):
        for series in _described(collector):
            if not series.name.startswith(_STANDARD_PREFIXES):
                found[series.name] = series
    return [found[name] for name in sorted(found)]


def _collectors(registry: CollectorRegistry) -> list[Collector]:
    # prometheus_client keeps no public list of a registry's collectors.
    return list(registry._collector_to_names)


def _described(collector: Collector) -> Iterator[Series]:
    if isinstance(collector, MetricWrapperBase):
        kind = str(collector._type)
        name = collector._name + ("_total" if kind == "counter" else "")
        yield Series(name, kind, tuple(collector._labelnames), collector._documentation)
        return
    for family in collector.collect():
        labels = tuple(getattr(family, "_labelnames", ()))
        name = family.name + ("_total" if family.type == "counter" else "")
        yield Series(name, family.type, labels, family.documentation)


def metrics_markdown() -> str:
    per_service = {name: series_of(registry) for name, registry in service_registries().items()}
    exporters: dict[str, list[str]] = {}
    for service, declared in per_service.items():
        for s in declared:
            exporters.setdefault(s.name, []).append(service)
    shared = {name for name, services in exporters.items() if len(services) > 1}
    lines = [
        "# Metrics reference",
        "",
        "Every Prometheus series a Lianfang service exports, with its type, labels and help, written from",
        "the services' metrics modules by `make docs` (a unit test holds this file to them). Every service",
        "also exports prometheus_client's `process_*` (and, but the pseudonymizer, `python_*`) series.",
        "Labels are bounded sets (reason codes, event types, participants, rules); no label carries a",
        "pseudonym or anything of a case. The alerts on these series are `deploy/prometheus/rules/`, each",
        "with its entry in [the operators' runbook](operations.md#runbook-one-entry-per-alert).",
        "",
        "## Shared by several services",
        "",
        "| series | type | labels | exported by | help |",
        "|---|---|---|---|---|",
    ]
    first: dict[str, Series] = {}
    for declared in per_service.values():  # the help of the first service that declares a series
        for s in declared:
            first.setdefault(s.name, s)
    for name in sorted(shared):
        s, where = first[name], ", ".join(exporters[name])
        lines.append(f"| `{s.name}` | {s.type} | {_labels(s.labels)} | {where} | {_cell(s.help)} |")
    lines.append("")
    for service, declared in per_service.items():
        own = [s for s in declared if s.name not in shared]
        if not own:
            continue
        exported_by = _SERVICES_WITH.get(service)
        lines += [f"## {service}", ""]
        lines += [f"Exported by {exported_by}.", ""] if exported_by else []
        lines += ["| series | type | labels | help |", "|---|---|---|---|"]
        lines += [f"| `{s.name}` | {s.type} | {_labels(s.labels)} | {_cell(s.help)} |" for s in own]
        lines.append("")
    return "\n".join(lines)


def _labels(labels: Sequence[str]) -> str:
    return ", ".join(f"`{label}`" for label in labels) if labels else "—"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def main(argv: Sequence[str]) -> int:
    renders = {"configuration": configuration_markdown, "metrics": metrics_markdown}
    if len(argv) != 1 or argv[0] not in renders:
        print(f"usage: python -m services.cli.reference {'|'.join(renders)}", file=sys.stderr)
        return 2
    sys.stdout.write(renders[argv[0]]())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
