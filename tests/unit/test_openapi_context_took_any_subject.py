"""Regression: the OpenAPI document described a follow-up's ``context`` more loosely than the gateway
checks it (any string as ``subject``, ``category`` and ``town``), so a client built from the document,
or schemathesis fuzzing the gateway, sent contexts the gateway refused with 422. The document now takes
the schema from the gateway's own model."""

from __future__ import annotations

from typing import Any

import jsonschema_rs  # schemathesis's validator, a dev dependency through it
import pytest
from pydantic import ValidationError

from services.gateway.api import ContextIn
from services.gateway.openapi import document

pytestmark = pytest.mark.unit

SUBJECT = "p1." + "A" * 43

CONTEXTS: list[tuple[str, dict[str, Any]]] = [
    ("a context copied from an inbox event", {"subject": SUBJECT, "category": "domestic_violence"}),
    ("a subject that is not a pseudonym", {"subject": "张三"}),
    ("a pseudonym with a second spelling", {"subject": "p1." + "A" * 42 + "B"}),
    ("a category outside the catalogue", {"subject": SUBJECT, "category": "burglary"}),
    ("a town id with capitals and spaces", {"subject": SUBJECT, "town": "Ren He"}),
    ("a lead id that is not a UUID", {"subject": SUBJECT, "lead_id": "lead-1"}),
    ("a field the model does not know", {"subject": SUBJECT, "victim": "x"}),
]


@pytest.mark.parametrize(("case", "context"), CONTEXTS, ids=[c for c, _ in CONTEXTS])
def test_the_documented_context_schema_accepts_exactly_what_the_gateway_accepts(
    case: str, context: dict[str, Any]
) -> None:
    schema = document(max_body_bytes=1024)["components"]["schemas"]["Context"]
    try:
        ContextIn.model_validate(context)
        gateway_accepts = True
    except ValidationError:
        gateway_accepts = False
    assert jsonschema_rs.validator_for(schema).is_valid(context) is gateway_accepts, case
