"""The operators' references (docs/configuration.md, docs/metrics.md) are the ones the code gives."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest
from pydantic import ValidationError
from pydantic_settings import BaseSettings

import services
from services.cli import reference
from services.gateway.app import GatewaySettings

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
REGENERATE = "out of date with the code: run `make docs` and commit the result"


def test_the_configuration_reference_in_docs_is_the_one_the_settings_classes_give() -> None:
    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert text == reference.configuration_markdown(), f"docs/configuration.md is {REGENERATE}"


def test_the_metrics_reference_in_docs_is_the_one_the_metrics_modules_give() -> None:
    text = (REPO / "docs" / "metrics.md").read_text(encoding="utf-8")
    assert text == reference.metrics_markdown(), f"docs/metrics.md is {REGENERATE}"


def test_every_settings_class_of_the_services_is_in_the_configuration_reference() -> None:
    for module in pkgutil.walk_packages(services.__path__, "services."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    defined = {
        c
        for c in _subclasses(BaseSettings)
        if c.__module__.startswith("services.") and not c.__subclasses__()
    }
    assert defined - {cls for _, cls in reference.SETTINGS} == set()


def test_every_setting_says_what_it_is_for() -> None:
    undescribed = [
        s.variable for _, cls in reference.SETTINGS for s in reference.settings_of(cls) if not s.description
    ]
    assert undescribed == []


def test_every_series_the_code_declares_is_in_the_metrics_reference() -> None:
    declaration = re.compile(
        r"(?:Counter|Gauge|Histogram|Summary|MetricFamily)\(\s*\"(lianfang_[a-z0-9_]+)\""
    )
    declared = {
        name
        for path in (REPO / "services").rglob("*.py")
        for name in declaration.findall(path.read_text(encoding="utf-8"))
    }
    documented = set(re.findall(r"^\| `(lianfang_[a-z0-9_]+)`", reference.metrics_markdown(), re.MULTILINE))
    assert len(declared) > 80
    missing = {name for name in declared if name not in documented and f"{name}_total" not in documented}
    assert missing == set()


def test_a_setting_is_listed_under_its_environment_variable_with_its_default() -> None:
    rows = {s.variable: s for s in reference.settings_of(reference.SETTINGS[3][1])}  # the router's
    assert rows["LIANFANG_ROUTER_METRICS_PORT"].default == "9102"
    assert rows["LIANFANG_BOOTSTRAP"].default == "(none)"
    assert rows["LIANFANG_ROUTER_REQUIRE_FRESHNESS"].default == "true"
    assert "LIANFANG_ROUTER_KAFKA_SECURITY" not in rows, "the login has a section of its own"


def _subclasses(cls: type) -> set[type]:
    direct = set(cls.__subclasses__())
    return direct.union(*(_subclasses(c) for c in direct)) if direct else set()


def test_a_refused_setting_is_never_echoed_in_the_error_a_service_prints(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LIANFANG_GATEWAY_WEBHOOKS", "stranger=https://hooks.example/x?token=S3CRET")
    monkeypatch.setenv("LIANFANG_GATEWAY_PARTICIPANTS", "police")
    with pytest.raises(ValidationError) as refused:
        GatewaySettings()
    assert "S3CRET" not in str(refused.value)
    echoing = [
        cls.__name__ for _, cls in reference.SETTINGS if not cls.model_config.get("hide_input_in_errors")
    ]
    assert echoing == [], "their errors quote the values they refused (a password, a token in a URL)"


@pytest.mark.parametrize(
    ("name", "cls"), [(title, cls) for title, cls in reference.SETTINGS if "home" in cls.model_fields]
)
def test_a_service_started_without_lianfang_home_does_not_take_the_shell_s_home_for_its_trust_domain(
    name: str, cls: type[BaseSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LIANFANG_HOME", raising=False)
    monkeypatch.delenv("LIANFANG_BOOTSTRAP", raising=False)
    monkeypatch.setenv("HOME", "/home/someone")
    monkeypatch.setenv("BOOTSTRAP", "elsewhere:9092")
    settings = cls()
    assert str(settings.home) == ".lianfang", name  # type: ignore[attr-defined]
    if "bootstrap" in cls.model_fields:
        assert settings.bootstrap == "", name  # type: ignore[attr-defined]
    monkeypatch.setenv("LIANFANG_HOME", "/srv/lianfang")
    assert str(cls().home) == "/srv/lianfang"  # type: ignore[attr-defined]
