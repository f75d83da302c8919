"""The Prometheus configuration (deploy/prometheus) and the Grafana dashboard (deploy/grafana).

promtool, from Debian's ``prometheus`` package, checks the scrape configuration and the rules and runs
the rules' unit tests; it needs no network. Beside it: every alerting rule has a unit test that fires it
and one that keeps it quiet, and every series the rules and the dashboard read is one that a Lianfang
service declares in its metrics module, so a renamed metric breaks a test and not an alert.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from services.cli import reference
from services.cli.bus import SERVICES
from services.console.settings import ConsoleSettings
from services.gateway.app import GatewaySettings
from services.hub.app import HubSettings
from services.pseudonymizer.app import PseudonymizerSettings
from services.router.app import RouterSettings
from services.timestamp.app import TimestampSettings

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "deploy" / "prometheus"
RULE_FILES = [PROMETHEUS / "rules" / "recording.yml", PROMETHEUS / "rules" / "alerts.yml"]
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))
DASHBOARDS = sorted((REPO / "deploy" / "grafana").glob("*.json"))

SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
}


def promtool() -> str:
    """The promtool binary; its absence fails the test (never skips it) and says how to install it."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not installed: it comes with Debian's prometheus package. "
            "Run `make deps` (or `apt-get install prometheus`), then run the tests again.",
            pytrace=False,
        )
    return path


def run(*args: str | Path) -> str:
    result = subprocess.run(
        [promtool(), *map(str, args)], capture_output=True, text=True, timeout=120, cwd=REPO, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(map(str, args))} failed:\n{output}"
    return output


# --------------------------------------------------------------------------- reading our own files


def exprs(path: Path) -> Iterator[str]:
    """The ``expr`` of every rule of a rules file (one line, or a ``|`` block below it)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)expr:\s*(.*)$", line)
        if not match:
            continue
        indent, value = len(match.group(1)), match.group(2).strip()
        if value not in {"|", "|-", ">", ">-"}:
            yield value
            continue
        block = []
        for following in lines[i + 1 :]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            block.append(following.strip())
        yield " ".join(block).strip()


def names_after(key: str, paths: list[Path]) -> list[str]:
    """Values of ``- key: NAME`` lines (rule names)."""
    pattern = re.compile(rf"^\s*-\s*{key}:\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*$")
    return [m.group(1) for p in paths for line in p.read_text().splitlines() if (m := pattern.match(line))]


def dashboard_targets(path: Path) -> Iterator[tuple[str, str]]:
    """(panel title, expr) of every query of a dashboard, rows' nested panels included."""

    def walk(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
        for panel in panels:
            for target in panel.get("targets", []):
                yield panel.get("title", "?"), target["expr"]
            yield from walk(panel.get("panels", []))

    yield from walk(json.loads(path.read_text(encoding="utf-8"))["panels"])


def referenced_names(expr: str) -> set[str]:
    """Lianfang metric names and recording-rule names an expression reads (not inside strings)."""
    without_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    tokens = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", without_strings))
    return {t for t in tokens if t.startswith("lianfang_") or ":" in t}


def declared_series() -> set[str]:
    """Every sample name the services' metrics modules declare, each service in a fresh registry of
    its own (as each runs in its own process; some share a series name, such as consumer lag)."""
    return set().union(*(names_of(registry) for registry in reference.service_registries().values()))


def names_of(registry: CollectorRegistry) -> set[str]:
    names = set()
    for family in registry.collect():
        for suffix in SUFFIXES.get(family.type, ("",)):
            names.add(family.name + suffix)
    return names


# --------------------------------------------------------------------------- promtool


def test_the_scrape_configuration_and_the_rule_files_it_names_are_valid() -> None:
    output = run("check", "config", PROMETHEUS / "prometheus.yml")
    assert "2 rule files found" in output


def test_the_local_scrape_configuration_has_a_job_for_every_service_serve_all_starts_on_its_port() -> None:
    jobs = {
        job["job_name"]: [t for s in job["static_configs"] for t in s["targets"]]
        for job in yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text(encoding="utf-8"))[
            "scrape_configs"
        ]
    }
    ports = {
        "router": RouterSettings().metrics_port,
        "hub": HubSettings().metrics_port,
        "gateway": GatewaySettings().port,
        "console": ConsoleSettings().metrics_port,
        "timestamp": TimestampSettings().metrics_port,
        "pseudonymizer": PseudonymizerSettings().port,
    }
    assert set(ports) == set(SERVICES)
    assert {f"lianfang-{name}": [f"127.0.0.1:{port}"] for name, port in ports.items()}.items() <= jobs.items()


def test_the_recording_and_alerting_rules_are_valid() -> None:
    run("check", "rules", *RULE_FILES)


def test_the_rules_unit_tests_pass() -> None:
    assert RULE_TESTS, "no promtool unit tests in deploy/prometheus/tests"
    output = run("test", "rules", *RULE_TESTS)
    assert "FAILED" not in output


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool has no expression checker: each query becomes a recording rule of a scratch file."""
    rules = [
        {"record": f"dashboard_query_{i}", "expr": expr}
        for i, (_title, expr) in enumerate(t for d in DASHBOARDS for t in dashboard_targets(d))
    ]
    assert rules, "no dashboard queries found in deploy/grafana"
    scratch = tmp_path / "dashboard.rules.json"  # JSON is YAML
    scratch.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    run("check", "rules", scratch)


# --------------------------------------------------------------------------- coverage and consistency


def test_every_alerting_rule_has_a_test_that_fires_it_and_one_that_keeps_it_quiet() -> None:
    alerts = set(names_after("alert", RULE_FILES))
    assert len(alerts) >= 8
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        current = None
        for line in path.read_text().splitlines():
            if m := re.match(r"^\s*alertname:\s*(\S+)\s*$", line):
                current = m.group(1)
            elif m := re.match(r"^\s*exp_alerts:\s*(.*)$", line):
                assert current is not None, f"{path.name}: exp_alerts before any alertname"
                (quiet if m.group(1).strip() == "[]" else fires).add(current)
    assert fires | quiet <= alerts, f"tests name alerts that do not exist: {sorted((fires | quiet) - alerts)}"
    assert alerts <= fires, f"alerts no test fires: {sorted(alerts - fires)}"
    assert alerts <= quiet, f"alerts no test shows quiet: {sorted(alerts - quiet)}"


def test_every_series_the_rules_and_dashboards_read_is_declared_by_a_service() -> None:
    declared = declared_series()
    recorded = set(names_after("record", RULE_FILES))
    reads = {f"{p.name}: {e}": referenced_names(e) for p in RULE_FILES for e in exprs(p)}
    reads |= {
        f"{d.name} / {title}: {e}": referenced_names(e)
        for d in DASHBOARDS
        for title, e in dashboard_targets(d)
    }
    assert len(reads) > 40
    unknown = {
        where: sorted(n for n in names if n not in declared and n not in recorded)
        for where, names in reads.items()
    }
    assert not {k: v for k, v in unknown.items() if v}, "names no service declares and no rule records"


REGISTRY_SERIES = {
    "lianfang_registry_version",
    "lianfang_registry_expiry_timestamp_seconds",
    "lianfang_registry_issued_timestamp_seconds",
    "lianfang_registry_updates_rejected_total",
}


@pytest.mark.parametrize(
    "service", ["router", "hub", "sdk", "gateway", "console", "timestamp", "pseudonymizer"]
)
def test_every_service_that_follows_the_registry_declares_the_registry_series(service: str) -> None:
    assert names_of(reference.service_registries()[service]) >= REGISTRY_SERIES


def test_the_registry_alerts_read_every_service_s_series_by_job_and_service() -> None:
    registry_alerts = [e for e in exprs(RULE_FILES[1]) if "lianfang_registry_expiry_timestamp_seconds" in e]
    assert len(registry_alerts) == 2
    for expr in registry_alerts:
        assert "by (job, service)" in expr, expr
        assert "{" not in expr, f"the expression selects some services only: {expr}"


def test_names_are_prefixed_and_labels_are_bounded() -> None:
    """Recording rules read `level:lianfang_metric:operations`; none keeps an unbounded label."""
    for name in names_after("record", RULE_FILES):
        level, metric, _ops = name.split(":")
        assert metric.startswith("lianfang_"), name
        assert not {"instance", "subject", "id", "event_id", "name"} & set(level.split("_")), name
    for alert in names_after("alert", RULE_FILES):
        assert alert.startswith("Lianfang"), alert
    for expr in (e for p in RULE_FILES for e in exprs(p)):
        assert not re.search(r"by \([^)]*\b(subject|event_id|id|name)\b", expr), expr


def test_the_dashboard_panels_do_not_overlap() -> None:
    for dashboard in DASHBOARDS:
        cells: dict[tuple[int, int], str] = {}
        for panel in json.loads(dashboard.read_text(encoding="utf-8"))["panels"]:
            g = panel["gridPos"]
            assert g["x"] + g["w"] <= 24, panel["title"]
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                    cells[(x, y)] = panel["title"]


def runbook_entries() -> set[str]:
    """The alerts the operator's guide has a runbook row for: ``| `Name` | ... |`` below its heading."""
    text = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    runbook = text.split("## Runbook", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\|\s*`(Lianfang[A-Za-z]+)`\s*\|", runbook, flags=re.MULTILINE))


def test_every_alerting_rule_has_a_runbook_entry_in_the_operators_guide() -> None:
    alerts = set(names_after("alert", RULE_FILES))
    entries = runbook_entries()
    assert alerts <= entries, (
        f"alerts without a runbook entry in docs/operations.md: {sorted(alerts - entries)}"
    )
    assert entries <= alerts, f"runbook entries for alerts that do not exist: {sorted(entries - alerts)}"
