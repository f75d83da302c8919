"""The reference deployment (deploy/k8s, deploy/compose, deploy/images) parses with real parsers, is valid
against Kubernetes' own schemas, runs non-root on read-only root filesystems, and its generated topics
and users are what `lianfang topics apply` / `acls apply` would create. Strimzi's schemas:
tests/integration/test_deploy_strimzi.py (they come from Maven Central)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import podman_compose
import pytest
import yaml
from compose_spec import PyCompose

from deploy.k8s import generate
from services.bus import cluster, strimzi
from services.kernel import principals

pytestmark = pytest.mark.unit

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S_VERSION = "1.33"


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


def test_router_and_hub_run_twice_with_a_disruption_budget_each() -> None:
    replicas = {d["metadata"]["name"]: d["spec"]["replicas"] for d in DEPLOYMENTS}
    assert replicas["lianfang-router"] == replicas["lianfang-hub"] == 2
    budgets = {d["metadata"]["name"] for d in SERVICES if d["kind"] == "PodDisruptionBudget"}
    assert budgets == {"lianfang-router", "lianfang-hub"}
    assert any(d["kind"] == "NetworkPolicy" and "Egress" in d["spec"]["policyTypes"] for d in SERVICES)


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
    assert {u["metadata"]["name"] for u in users} >= {"operator", "router", "hub", "womens-federation"}


def test_the_compose_file_parses_strictly_with_the_example_environment() -> None:
    services = _compose(_example_env())["services"]
    assert {f"kafka-{n}" for n in (1, 2, 3)} <= set(services)
    assert {"router-1", "router-2", "hub-1", "hub-2", "console", "prometheus", "grafana"} <= set(services)
    assert any(name.startswith("gateway-") for name in services)
    ours = [s for s in services.values() if str(s.get("image", "")).startswith("lianfang:")]
    assert len(ours) >= 8
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


def test_the_compose_file_refuses_to_start_without_a_secret() -> None:
    env = _example_env()
    del env["LIANFANG_ROUTER_PASSWORD"]
    with pytest.raises(ValueError, match="LIANFANG_ROUTER_PASSWORD"):
        _compose(env)


def test_the_image_is_built_from_the_wheel_and_runs_as_a_user() -> None:
    lines = (DEPLOY / "images" / "Containerfile").read_text(encoding="utf-8").splitlines()
    instructions = [line.split(None, 1) for line in lines if line and not line.startswith(("#", " "))]
    assert ["USER", "10001:10001"] in instructions
    assert any(k == "RUN" and "pip wheel" in v for k, v in instructions)
    assert any(k == "RUN" and "pip install --no-cache-dir /wheels/*.whl" in v for k, v in instructions)
    assert instructions[-2:] == [["ENTRYPOINT", '["lianfang"]'], ["CMD", '["--help"]']]
