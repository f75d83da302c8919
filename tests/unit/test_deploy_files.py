"""The reference deployment (deploy/k8s, deploy/compose, deploy/images) parses with real parsers, is valid
against Kubernetes' own schemas, runs non-root on read-only root filesystems, and its generated topics
and users are what `lianfang topics apply` / `acls apply` would create. Strimzi's schemas:
tests/integration/test_deploy_strimzi.py (they come from Maven Central)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import podman_compose
import pytest
import yaml
from compose_spec import PyCompose

from deploy.k8s import generate
from services import trust
from services.bus import cluster, strimzi
from services.console.settings import ConsoleSettings
from services.gateway.app import GatewaySettings
from services.hub.app import HubSettings
from services.kernel import principals
from services.pseudonymizer.app import PseudonymizerSettings
from services.router.app import RouterSettings
from services.timestamp.app import TimestampSettings

pytestmark = pytest.mark.unit

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S_VERSION = "1.33"
HOME = PurePosixPath("/var/lib/lianfang/home")  # LIANFANG_HOME in deploy/images/Containerfile

# What each service needs from the trust domain beside the public registry and anchor, and whom it logs
# in to Kafka as: the paths are where the code looks (services/trust), so a renamed file fails here.
KEYS = {
    "timestamp": ("timestamp", [HOME / f"{trust.TIMESTAMP_STORE}.key"]),
    "pseudonymizer": ("plc", [HOME / "keys" / "plc.key", HOME / trust.PSEUDONYMIZER_KEY.as_posix()]),
    "router": ("router", [HOME / "keys" / "router.key"]),
    "hub": ("hub", [HOME / "keys" / "hub.key"]),
    "console": ("coordinators", [HOME / "keys" / "coordinators.key"]),
}
# Where each service serves /metrics by default, and the variable that opens it beyond loopback.
METRICS_PORT = {
    "router": RouterSettings.model_fields["metrics_port"].default,
    "hub": HubSettings.model_fields["metrics_port"].default,
    "console": ConsoleSettings.model_fields["metrics_port"].default,
    "timestamp": TimestampSettings.model_fields["metrics_port"].default,
    "gateway": GatewaySettings.model_fields["port"].default,
    "pseudonymizer": PseudonymizerSettings.model_fields["port"].default,
}
METRICS_ADDRESS = {
    s: f"LIANFANG_{s.upper()}_METRICS_ADDRESS" for s in ("router", "hub", "console", "timestamp")
}


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


SERVICES = _documents(DEPLOY / "k8s" / "services.yaml")
DEPLOYMENTS = [d for d in SERVICES if d["kind"] == "Deployment"]


def _compose(env: dict[str, str]) -> dict[str, Any]:
    """The compose file as `podman compose` reads it (YAML merge keys, then variables), parsed strictly."""
    raw = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text(encoding="utf-8"))
    interpolated = podman_compose.rec_subs(raw, env)
    spec = {k: v for k, v in interpolated.items() if not k.startswith("x-")}
    parsed: dict[str, Any] = PyCompose.from_json(json.dumps(spec)).to_dict()
    return parsed


def _example_env() -> dict[str, str]:
    lines = (DEPLOY / "compose" / "env.example").read_text(encoding="utf-8").splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


@pytest.mark.parametrize("document", SERVICES, ids=[f"{d['kind']} {d['metadata']['name']}" for d in SERVICES])
def test_every_kubernetes_object_is_valid_against_the_kubernetes_schema(document: dict[str, Any]) -> None:
    kubernetes_validate.validate(document, K8S_VERSION, strict=True)


def test_a_misspelt_field_is_caught_by_the_kubernetes_schema() -> None:
    broken = json.loads(json.dumps(DEPLOYMENTS[0]))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["metadata"]["name"] for d in DEPLOYMENTS])
def test_every_service_runs_non_root_on_a_read_only_root_with_both_probes(deployment: dict[str, Any]) -> None:
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert container["readinessProbe"]
        assert container["livenessProbe"]


def _component(document: dict[str, Any]) -> str:
    return str(document["metadata"]["labels"]["app.kubernetes.io/component"])


def _kind(component: str) -> str:
    """The service a Deployment or compose service runs: ``gateway-police`` → gateway, ``hub-2`` → hub."""
    return "gateway" if component.startswith("gateway-") else re.sub(r"-\d+$", "", component)


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_router_and_hub_run_twice_with_a_disruption_budget_each() -> None:
    replicas = {d["metadata"]["name"]: d["spec"]["replicas"] for d in DEPLOYMENTS}
    assert replicas["lianfang-router"] == replicas["lianfang-hub"] == 2
    budgets = {
        d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]: d["spec"]
        for d in SERVICES
        if d["kind"] == "PodDisruptionBudget"
    }
    assert set(budgets) == {"router", "hub", "timestamp", "pseudonymizer"}
    assert budgets["router"]["minAvailable"] == budgets["hub"]["minAvailable"] == 1
    assert any(d["kind"] == "NetworkPolicy" and "Egress" in d["spec"]["policyTypes"] for d in SERVICES)


def test_the_timestamp_service_and_the_pseudonymizer_run_once_each_and_never_two_at_a_time() -> None:
    deployments = {_component(d): d["spec"] for d in DEPLOYMENTS}
    for component in ("timestamp", "pseudonymizer"):
        assert deployments[component]["replicas"] == 1
        assert deployments[component]["strategy"] == {"type": "Recreate"}


@pytest.mark.parametrize("component", KEYS)
def test_each_kubernetes_service_logs_in_as_its_principal_and_mounts_the_keys_it_reads(
    component: str,
) -> None:
    (deployment,) = [d for d in DEPLOYMENTS if _component(d) == component]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    login, keys = KEYS[component]
    env = _env(container)
    assert container["args"] == ["serve", component]
    assert env["LIANFANG_HOME"] == str(HOME)
    assert env["LIANFANG_KAFKA_SASL_USERNAME"] == login
    assert env["LIANFANG_KAFKA_SASL_PASSWORD"] == {"secretKeyRef": {"name": login, "key": "password"}}
    assert env["LIANFANG_PASSPHRASE"]["secretKeyRef"]["key"] == "passphrase"
    secrets = {v["name"] for v in deployment["spec"]["template"]["spec"]["volumes"] if "secret" in v}
    mounted = {
        PurePosixPath(m["mountPath"]) for m in container["volumeMounts"] if m["name"] in secrets | {"trust"}
    }
    assert mounted == {
        HOME / "registry.json",
        HOME / "root.json",
        PurePosixPath("/etc/lianfang/kafka-ca"),
        *keys,
    }


def test_every_kafka_login_of_the_kubernetes_services_is_a_kafka_user() -> None:
    users = {u["metadata"]["name"] for u in _documents(DEPLOY / "k8s" / "users.yaml")}
    logins = {
        _env(c)["LIANFANG_KAFKA_SASL_USERNAME"]
        for d in DEPLOYMENTS
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert {"timestamp", "plc", "router", "hub", "coordinators"} <= logins
    assert logins <= users


def test_the_gateways_may_reach_the_pseudonymizer_through_the_network_policies() -> None:
    policies = [d for d in SERVICES if d["kind"] == "NetworkPolicy"]
    gateways = [_component(d) for d in DEPLOYMENTS if _kind(_component(d)) == "gateway"]
    assert gateways

    def selects(selector: dict[str, Any], component: str) -> bool:
        labels = {"app.kubernetes.io/name": "lianfang", "app.kubernetes.io/component": component}
        if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
            return False
        return all(labels.get(e["key"]) in e["values"] for e in selector.get("matchExpressions", []))

    for gateway in gateways:
        out = [
            rule
            for p in policies
            if "Egress" in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], gateway)
            for rule in p["spec"].get("egress", [])
        ]
        assert any(
            selects(peer["podSelector"], "pseudonymizer")
            and {"protocol": "TCP", "port": 8090} in rule["ports"]
            for rule in out
            for peer in rule["to"]
            if "podSelector" in peer and "namespaceSelector" not in peer
        ), gateway
        into = [
            rule
            for p in policies
            if "Ingress" in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], "pseudonymizer")
            for rule in p["spec"].get("ingress", [])
        ]
        assert any(
            "podSelector" in peer and selects(peer["podSelector"], gateway)
            for rule in into
            for peer in rule["from"]
        ), gateway


def _relabel(labels: dict[str, str], configs: list[dict[str, Any]]) -> dict[str, str] | None:
    """Prometheus's relabelling (keep, drop, replace), enough for deploy/k8s/prometheus.yml."""
    labels = dict(labels)
    for config in configs:
        value = config.get("separator", ";").join(labels.get(s, "") for s in config.get("source_labels", []))
        match = re.fullmatch(config.get("regex", "(.*)"), value)
        action = config.get("action", "replace")
        if (action == "keep" and not match) or (action == "drop" and match):
            return None
        if action == "replace" and match:
            template = re.sub(r"\$(\d+)", r"\\g<\1>", config.get("replacement", "$1"))
            labels[config["target_label"]] = match.expand(template)
        elif action not in {"keep", "drop", "replace"}:
            raise AssertionError(f"the test does not know relabel action {action}")
    return labels


def test_prometheus_on_kubernetes_scrapes_each_service_once_on_its_metrics_port_under_its_job() -> None:
    config = yaml.safe_load((DEPLOY / "k8s" / "prometheus.yml").read_text(encoding="utf-8"))
    (job,) = config["scrape_configs"]
    jobs: dict[str, str] = {}
    for deployment in DEPLOYMENTS:
        component = _component(deployment)
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        scraped = []
        for port in container["ports"]:
            labels = {
                "__address__": f"10.0.0.1:{port['containerPort']}",
                "__meta_kubernetes_namespace": "lianfang",
                "__meta_kubernetes_pod_name": f"{deployment['metadata']['name']}-0",
                "__meta_kubernetes_pod_container_port_name": port["name"],
                **{
                    "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", k): v
                    for k, v in deployment["spec"]["template"]["metadata"]["labels"].items()
                },
            }
            if (kept := _relabel(labels, job["relabel_configs"])) is not None:
                scraped.append((kept["job"], port["containerPort"]))
        assert scraped == [(f"lianfang-{_kind(component)}", METRICS_PORT[_kind(component)])], component
        jobs[component] = scraped[0][0]
        if _kind(component) in METRICS_ADDRESS:
            assert _env(container)[METRICS_ADDRESS[_kind(component)]] == "0.0.0.0", component
    assert set(jobs.values()) == {f"lianfang-{s}" for s in METRICS_PORT}


def test_the_kubernetes_scrape_configuration_passes_promtool(tmp_path: Path) -> None:
    """Debian's promtool has no Kubernetes discovery: the same job with static targets is checked."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: `make deps` (Debian's prometheus package)", pytrace=False)
    config = yaml.safe_load((DEPLOY / "k8s" / "prometheus.yml").read_text(encoding="utf-8"))
    for job in config["scrape_configs"]:
        assert job.pop("kubernetes_sd_configs")[0]["namespaces"]["names"] == ["lianfang"]
        job["static_configs"] = [{"targets": ["10.0.0.1:9102"]}]
    shutil.copytree(DEPLOY / "prometheus" / "rules", tmp_path / "rules")
    (tmp_path / "prometheus.yml").write_text(json.dumps(config))
    result = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 rule files found" in result.stdout + result.stderr


def test_the_generated_topics_and_users_are_up_to_date() -> None:
    for path, text in generate.files().items():
        assert path.read_text(encoding="utf-8") == text, f"{path} is stale: python -m deploy.k8s.generate"


def test_the_kafka_topics_are_the_topics_that_topics_apply_creates() -> None:
    topics = _documents(DEPLOY / "k8s" / "topics.yaml")
    specs = cluster.load_specs(generate.district_ids(), brokers=3)
    assert {
        t["spec"]["topicName"]: (t["spec"]["partitions"], t["spec"]["replicas"], t["spec"]["config"])
        for t in topics
    } == {s.name: (s.partitions, s.replication, s.configs) for s in specs}


def test_the_kafka_users_grant_the_acls_that_acls_apply_creates_under_kubernetes_names() -> None:
    users = _documents(DEPLOY / "k8s" / "users.yaml")
    rules = principals.deployment_rules(generate.district_ids())
    expected = {
        (f"User:{strimzi.user_name(r.principal)}", r.resource, r.pattern, r.name, r.operation) for r in rules
    }
    assert strimzi.rules_of(users) == expected
    assert {u["metadata"]["name"] for u in users} >= {
        "operator",
        "router",
        "hub",
        "womens-federation",
        "timestamp",
        "plc",
    }


def test_the_compose_file_parses_strictly_with_the_example_environment() -> None:
    services = _compose(_example_env())["services"]
    assert {f"kafka-{n}" for n in (1, 2, 3)} <= set(services)
    assert {"timestamp", "pseudonymizer", "router-1", "router-2", "hub-1", "hub-2", "console"} <= set(
        services
    )
    assert {"prometheus", "grafana"} <= set(services)
    assert any(name.startswith("gateway-") for name in services)
    ours = [s for s in services.values() if str(s.get("image", "")).startswith("lianfang:")]
    assert len(ours) >= 10
    for service in ours:
        assert service["read_only"] is True
        assert service["user"] == "10001:10001"


def test_a_gateway_logs_in_as_its_own_agency_and_holds_only_its_keystore() -> None:
    services = _compose(_example_env())["services"]
    gateways = {name: s for name, s in services.items() if name.startswith("gateway-")}
    for service in gateways.values():
        served = service["environment"]["LIANFANG_GATEWAY_PARTICIPANTS"]
        assert service["environment"]["LIANFANG_KAFKA_SASL_USERNAME"] == served
        keystores = [v for v in service["volumes"] if "/keys/" in str(v)]
        assert keystores == [f"./secrets/keys/{served}.key:/var/lib/lianfang/home/keys/{served}.key:ro"]


@pytest.mark.parametrize(
    "secret",
    [
        "LIANFANG_ROUTER_PASSWORD",
        "LIANFANG_TIMESTAMP_PASSWORD",
        "LIANFANG_TIMESTAMP_PASSPHRASE",
        "LIANFANG_PLC_PASSWORD",
        "LIANFANG_PLC_PASSPHRASE",
    ],
)
def test_the_compose_file_refuses_to_start_without_a_secret(secret: str) -> None:
    env = _example_env()
    del env[secret]
    with pytest.raises(ValueError, match=secret):
        _compose(env)


@pytest.mark.parametrize("name", KEYS)
def test_each_compose_service_logs_in_as_its_principal_and_mounts_the_keys_it_reads(name: str) -> None:
    services = _compose(_example_env())["services"]
    login, keys = KEYS[name]
    for service in [s for n, s in services.items() if _kind(n) == name]:
        assert service["command"] == ["serve", name]
        assert service["environment"]["LIANFANG_KAFKA_SASL_USERNAME"] == login
        mounted = {
            PurePosixPath(str(v).split(":")[1]) for v in service["volumes"] if str(v).startswith("./secrets/")
        }
        assert mounted - {PurePosixPath("/etc/lianfang/kafka-ca.crt")} == set(keys), name


def test_prometheus_in_compose_scrapes_every_service_on_its_metrics_port_under_its_job() -> None:
    services = _compose(_example_env())["services"]
    config = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text(encoding="utf-8"))
    targets = {
        target: job["job_name"]
        for job in config["scrape_configs"]
        for s in job["static_configs"]
        for target in s["targets"]
    }
    ours = {
        n: s
        for n, s in services.items()
        if str(s.get("image", "")).startswith("lianfang:") and s["restart"] != "no"
    }
    expected = {f"{n}:{METRICS_PORT[_kind(n)]}": f"lianfang-{_kind(n)}" for n in ours}
    assert targets == expected
    assert set(targets.values()) == {f"lianfang-{s}" for s in METRICS_PORT}
    for name, service in ours.items():
        if _kind(name) in METRICS_ADDRESS:
            assert service["environment"][METRICS_ADDRESS[_kind(name)]] == "0.0.0.0", name


def test_the_image_is_built_from_the_wheel_and_runs_as_a_user() -> None:
    lines = (DEPLOY / "images" / "Containerfile").read_text(encoding="utf-8").splitlines()
    instructions = [line.split(None, 1) for line in lines if line and not line.startswith(("#", " "))]
    assert ["USER", "10001:10001"] in instructions
    assert any(k == "RUN" and "pip wheel" in v for k, v in instructions)
    assert any(k == "RUN" and "pip install --no-cache-dir /wheels/*.whl" in v for k, v in instructions)
    assert instructions[-2:] == [["ENTRYPOINT", '["lianfang"]'], ["CMD", '["--help"]']]
