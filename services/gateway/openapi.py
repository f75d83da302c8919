"""The gateway's OpenAPI 3.1 document, built from the event JSON Schemas in ``schemas/json/``.

Each event schema is embedded whole under ``components/schemas/<type>`` with its own ``$id``, so its
internal ``#/$defs/...`` references resolve inside it (JSON Schema 2020-12, which OpenAPI 3.1 uses).
A lead is submitted without pseudonyms, so ``lead.reported.submission`` is the lead's schema with the
computed fields taken out. Pure: :func:`document` reads the schema files and returns a dict.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Final

from schemas.events import EVENT_MODELS
from schemas.export import SCHEMA_DIR
from services.gateway import httpsig
from services.gateway.api import COMPUTED_LEAD_FIELDS, ContextIn
from services.gateway.problems import PROBLEMS, TYPE_BASE

LEAD_SUBMISSION: Final = "lead.reported.submission"
PROBLEM_JSON: Final = "application/problem+json"

_SIGNING = f"""Every request to `/v1/events` and `/v1/inbox` is signed with HTTP Message Signatures
(RFC 9421) using the agency's Ed25519 signing key registered in the trust registry; there are no
passwords or API keys. Send `Signature-Input` and `Signature` with one signature whose parameters are
`created` (Unix seconds, within {httpsig.MAX_SKEW_S} s of the gateway's clock), `keyid` (your registry
signing key id), `alg="ed25519"` and `tag="{httpsig.REQUEST_TAG}"`. A POST covers `"@method"
"@target-uri" "content-digest" "content-type"` (and `"idempotency-key"` when that header is sent) and
carries `Content-Digest: sha-256=:<base64>:` (RFC 9530) of the exact body; a GET covers `"@method"
"@target-uri"`. The signature base is RFC 9421 section 2.5: one `"<component>": <value>` line per
covered component, then the `"@signature-params"` line, joined by LF, signed with pure Ed25519.
Example base:

    "@method": POST
    "@target-uri": https://gateway.example/v1/events
    "content-digest": sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:
    "content-type": application/json
    "@signature-params": ("@method" "@target-uri" "content-digest" "content-type")\
;created=1767254400;keyid="0123456789abcdef";alg="ed25519";tag="lianfang"
"""


def _event_schema(event_type: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SCHEMA_DIR / f"{event_type}.schema.json").read_text(encoding="utf-8"))
    data.pop("$schema", None)  # the dialect is OpenAPI 3.1's (JSON Schema 2020-12)
    return data


def lead_submission_schema() -> dict[str, Any]:
    """The lead's schema without the fields the gateway computes (the pseudonyms)."""
    schema = copy.deepcopy(_event_schema("lead.reported"))
    schema["$id"] = schema["$id"].replace("lead.reported.schema.json", f"{LEAD_SUBMISSION}.schema.json")
    schema["title"] = "LeadReportedSubmission"
    schema["description"] = (
        schema.get("description", "")
        + " Submitted through the gateway without pseudonyms: the gateway computes victim_pseudonym,"
        " suspect_pseudonyms and each suspect's pseudonym from the identifiers given."
    )
    for name in COMPUTED_LEAD_FIELDS:
        schema["properties"].pop(name, None)
    schema["required"] = [r for r in schema.get("required", []) if r not in COMPUTED_LEAD_FIELDS]
    suspect = schema.get("$defs", {}).get("Suspect")
    if suspect is not None:
        suspect["properties"].pop("pseudonym", None)
        suspect["required"] = [r for r in suspect.get("required", []) if r != "pseudonym"]
    return schema


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _request_variant(event_type: str) -> dict[str, Any]:
    event = LEAD_SUBMISSION if event_type == "lead.reported" else event_type
    properties: dict[str, Any] = {
        "type": {"const": event_type},
        "event": _ref(event),
        "urgency": _ref("Urgency"),
        "refs": {"type": "array", "items": _ref("EventId"), "uniqueItems": True, "maxItems": 100},
    }
    required = ["type", "event"]
    if event_type != "lead.reported":
        properties["context"] = _ref("Context")
        required.append("context")
    return {
        "type": "object",
        "title": f"Publish {event_type}",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def _problem_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "RFC 9457 problem details; never repeats a submitted value (personal data).",
        "properties": {
            "type": {"type": "string", "format": "uri", "enum": [_type(code) for code in PROBLEMS]},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "errors": {
                "type": "array",
                "description": "For 422: one entry per invalid field.",
                "items": {
                    "type": "object",
                    "properties": {
                        "pointer": {
                            "type": "string",
                            "description": "JSON Pointer (RFC 6901) into the body, e.g. /event/victim/phone",
                        },
                        "detail": {"type": "string", "description": "why the field is invalid"},
                        "code": {
                            "type": "string",
                            "description": "a stable code, e.g. string_pattern_mismatch",
                        },
                    },
                    "required": ["pointer", "detail", "code"],
                },
            },
        },
        "required": ["type", "title", "status", "detail"],
    }


def _type(code: str) -> str:
    return TYPE_BASE + code.replace("_", "-")


def _problems(*statuses: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status in statuses:
        codes = [code for code, (s, _t) in PROBLEMS.items() if s == status]
        listing = "; ".join(f"`{_type(c)}`: {PROBLEMS[c][1]}" for c in codes)
        out[str(status)] = {
            "description": listing,
            "content": {PROBLEM_JSON: {"schema": _ref("ProblemError")}},
        }
    return out


def _header_parameters(*, body: bool) -> list[dict[str, Any]]:
    params = [
        {
            "name": "Signature-Input",
            "in": "header",
            "required": True,
            "schema": {"type": "string"},
            "example": 'sig1=("@method" "@target-uri" "content-digest" "content-type");created=1767254400;'
            'keyid="0123456789abcdef";alg="ed25519";tag="lianfang"',
            "description": "RFC 9421 signature parameters (see the API description)",
        },
        {
            "name": "Signature",
            "in": "header",
            "required": True,
            "schema": {"type": "string"},
            "example": "sig1=:<base64 of 64 bytes>:",
            "description": "RFC 9421 signature (Ed25519)",
        },
    ]
    if body:
        params += [
            {
                "name": "Content-Digest",
                "in": "header",
                "required": True,
                "schema": {"type": "string"},
                "example": "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:",
                "description": "RFC 9530 digest of the exact body bytes (sha-256 required)",
            },
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                "description": "Retries with the same key and the same body get the same 202 and make no "
                "second event; the same key with a different body is refused with 409 "
                "idempotency-conflict. A gateway of several processes answers 409 in-progress, with "
                "Retry-After, while another of its processes is still accepting the key's request: "
                "retry it with the same key and body. Must be covered by the signature when sent. "
                "Remembered for 7 days by default.",
            },
        ]
    return params


def document(*, max_body_bytes: int, server_url: str | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the gateway."""
    event_types = sorted(EVENT_MODELS)
    schemas: dict[str, Any] = {t: _event_schema(t) for t in event_types}
    schemas[LEAD_SUBMISSION] = lead_submission_schema()
    schemas["PublishRequest"] = {
        "oneOf": [_ref(f"PublishRequest.{t}") for t in event_types],
        "discriminator": {
            "propertyName": "type",
            "mapping": {t: f"#/components/schemas/PublishRequest.{t}" for t in event_types},
        },
    }
    for t in event_types:
        schemas[f"PublishRequest.{t}"] = _request_variant(t)
    schemas["Urgency"] = {"type": "string", "enum": ["immediate", "urgent", "routine"]}
    schemas["EventId"] = {
        "type": "string",
        "pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
    }
    # The gateway's own model, so the document states each pattern and choice the gateway enforces.
    schemas["Context"] = ContextIn.model_json_schema() | {
        "description": "The clear-header facts of the case a follow-up belongs to: copy `context` from the "
        "inbox event it follows.",
    }
    schemas["Accepted"] = {
        "type": "object",
        "properties": {"event_id": _ref("EventId")},
        "required": ["event_id"],
    }
    schemas["InboxEvent"] = {
        "type": "object",
        "description": "One opened event: its clear header, the sections sealed to you, and the context "
        "a follow-up about it sends.",
        "properties": {
            "header": {"type": "object", "description": "the signed clear header (CloudEvents attributes)"},
            "sections": {
                "type": "object",
                "properties": {"triage": {"type": "object"}, "details": {"type": "object"}},
            },
            "context": _ref("Context"),
        },
        "required": ["header", "sections", "context"],
    }
    schemas["InboxPage"] = {
        "type": "object",
        "properties": {
            "events": {"type": "array", "items": _ref("InboxEvent")},
            "cursor": {"type": "string", "description": "pass it back to read on from here"},
            "more": {"type": "boolean", "description": "more events are waiting after this page"},
        },
        "required": ["events", "cursor", "more"],
    }
    schemas["ProblemError"] = _problem_schema()

    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Lianfang (联防) gateway",
            "version": "1",
            "description": "HTTP ingest and inbox for agency systems on the Lianfang bus.\n\n" + _SIGNING,
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": {
            "/v1/events": {
                "post": {
                    "operationId": "publishEvent",
                    "summary": "Publish an event (sealed, signed and spooled by the gateway)",
                    "description": "Validated against the event's schema; for a lead the gateway computes "
                    "the pseudonyms. 202 means the sealed event is on the gateway's disk (fsync'd) and "
                    "will reach Kafka through broker outages and gateway restarts; a lead accepted while "
                    "the pseudonymizer does not answer waits there encrypted and is sealed and sent once "
                    "it does. Body limit: "
                    f"{max_body_bytes} bytes.",
                    "parameters": _header_parameters(body=True),
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("PublishRequest")}},
                    },
                    "responses": {
                        "202": {
                            "description": "accepted: in the durable outbox",
                            "content": {"application/json": {"schema": _ref("Accepted")}},
                        },
                        **_problems(400, 401, 403, 409, 413, 415, 422, 503),
                    },
                }
            },
            "/v1/inbox": {
                "get": {
                    "operationId": "readInbox",
                    "summary": "Read your inbox after a cursor",
                    "parameters": [
                        *_header_parameters(body=False),
                        {
                            "name": "cursor",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string"},
                            "description": "from the previous page; omit to start at the oldest event kept",
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 100},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "events after the cursor, oldest first within a partition; "
                            "each event id once (a second copy is left out); an event you cannot open "
                            "is left out and reported on the dead-letter topic",
                            "content": {"application/json": {"schema": _ref("InboxPage")}},
                        },
                        **_problems(400, 401, 403, 422, 503),
                    },
                }
            },
            "/v1/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}},
                }
            },
        },
        "webhooks": {
            "inboxEvent": {
                "post": {
                    "summary": "An inbox event pushed to the participant's own system",
                    "description": "Signed like requests (RFC 9421, Ed25519) but with "
                    f'tag="{httpsig.WEBHOOK_TAG}", covering "@method" "@target-uri" "content-digest" '
                    '"content-type" "idempotency-key", with the receiving participant\'s own signing '
                    "key: verify it against your public key in the registry. Idempotency-Key is the "
                    "event id (delivery is at least once). Answer 2xx to take the event; anything "
                    "else is retried with exponential back-off, in order.",
                    "requestBody": {"content": {"application/json": {"schema": _ref("InboxEvent")}}},
                    "responses": {"2XX": {"description": "taken; the next event follows"}},
                }
            }
        },
        "components": {"schemas": schemas},
        "x-lianfang-problem-types": {
            _type(code): {"status": status, "title": title} for code, (status, title) in PROBLEMS.items()
        },
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc
