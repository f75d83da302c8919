"""deploy/k8s's Strimzi resources are valid against Strimzi's own CRDs, as strictly as
`kubectl apply --validate=strict` (an unknown field is an error, not silently pruned).

The CRDs are generated from Strimzi's published API by Strimzi's published generator, both fetched
from Maven Central once (deploy/k8s/crds.py); no Kafka is needed."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from deploy.k8s.crds import API_VERSION, KINDS, fetch_crds

pytestmark = pytest.mark.integration

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with unknown properties refused wherever the CRD lists the known ones."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


@pytest.fixture(scope="module")
def validators() -> dict[str, jsonschema.protocols.Validator]:
    folder = fetch_crds()
    out = {}
    for kind in KINDS:
        crd = yaml.safe_load((folder / f"{kind}.yaml").read_text())
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == API_VERSION.rsplit("/", 1)[-1]]
        schema = _strict(version["schema"]["openAPIV3Schema"])
        out[kind] = jsonschema.Draft7Validator(schema)
    return out


def _strimzi_documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for name in ("kafka.yaml", "topics.yaml", "users.yaml"):
        for document in yaml.safe_load_all((K8S / name).read_text(encoding="utf-8")):
            if document:
                found.append((f"{name}: {document['kind']} {document['metadata']['name']}", document))
    return found


def test_every_strimzi_resource_is_valid_against_strimzi_s_crd(
    validators: dict[str, jsonschema.protocols.Validator],
) -> None:
    documents = _strimzi_documents()
    assert {d["kind"] for _, d in documents} == set(KINDS)
    problems = [
        f"{where}: {error.json_path}: {error.message}"
        for where, document in documents
        for error in validators[document["kind"]].iter_errors(document)
    ]
    assert problems == []


def test_an_unknown_field_and_a_wrong_acl_operation_are_refused(
    validators: dict[str, jsonschema.protocols.Validator],
) -> None:
    user = next(
        d for _, d in _strimzi_documents() if d["kind"] == "KafkaUser" and d["spec"]["authorization"]["acls"]
    )
    typo = copy.deepcopy(user)
    typo["spec"]["authentcation"] = typo["spec"].pop("authentication")
    wrong = copy.deepcopy(user)
    wrong["spec"]["authorization"]["acls"][0]["operations"] = ["Fly"]
    assert list(validators["KafkaUser"].iter_errors(typo))
    assert list(validators["KafkaUser"].iter_errors(wrong))
