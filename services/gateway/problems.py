"""ProblemError details (RFC 9457) of the gateway: one closed catalogue of problem types, built without I/O.

Every refusal is ``application/problem+json`` with ``type``, ``title``, ``status`` and ``detail``; a
validation problem adds ``errors``, one entry per field: a JSON Pointer (RFC 6901) into the request
body, a reason and a stable code. Neither ``detail`` nor ``errors`` ever repeats a submitted value:
request bodies hold personal data. The problem code doubles as the ``reason`` label of the rejection
metric, so the set is closed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

from pydantic import ValidationError

from services.kernel.errors import LianfangError

__all__ = [
    "MEDIA_TYPE",
    "PROBLEMS",
    "TYPE_BASE",
    "FieldError",
    "ProblemCode",
    "ProblemError",
    "field_errors",
    "json_pointer",
]

MEDIA_TYPE: Final = "application/problem+json"
TYPE_BASE: Final = "https://lianfang.example/problems/"
"""ProblemError type URIs are identifiers (the host is a reserved example name and is never fetched);
the OpenAPI document lists every type with its meaning."""

ProblemCode = Literal[
    "malformed_json",
    "invalid_request",
    "invalid_cursor",
    "signature_missing",
    "signature_malformed",
    "signature_components",
    "signature_stale",
    "signature_invalid",
    "digest_missing",
    "digest_mismatch",
    "unknown_key",
    "key_revoked",
    "key_expired",
    "not_served",
    "not_permitted",
    "not_found",
    "method_not_allowed",
    "idempotency_conflict",
    "in_progress",
    "too_large",
    "unsupported_media_type",
    "registry_expired",
    "registry_stale",
    "pseudonymizer_unavailable",
    "unavailable",
    "internal",
]
PROBLEM_CODES: Final[tuple[ProblemCode, ...]] = get_args(ProblemCode)

PROBLEMS: Final[dict[ProblemCode, tuple[int, str]]] = {
    "malformed_json": (400, "The body is not valid JSON"),
    "invalid_request": (422, "The request does not match the schema"),
    "invalid_cursor": (400, "The cursor is not one this gateway issued"),
    "signature_missing": (401, "The request is not signed"),
    "signature_malformed": (401, "The signature headers are malformed"),
    "signature_components": (401, "The signature does not cover what it must"),
    "signature_stale": (401, "The signature was not created within the allowed window"),
    "signature_invalid": (401, "The signature does not verify"),
    "digest_missing": (401, "Content-Digest is missing"),
    "digest_mismatch": (401, "Content-Digest does not match the body"),
    "unknown_key": (401, "The key id is not a signing key of any participant"),
    "key_revoked": (401, "The signing key has been revoked"),
    "key_expired": (401, "The signing key is not valid now"),
    "not_served": (403, "This gateway does not serve the participant"),
    "not_permitted": (403, "The participant may not publish this event type"),
    "not_found": (404, "No such resource"),
    "method_not_allowed": (405, "Method not allowed"),
    "idempotency_conflict": (409, "The Idempotency-Key was used with a different body"),
    "in_progress": (409, "Another process of the gateway is accepting this request; retry after a second"),
    "too_large": (413, "The body is too large"),
    "unsupported_media_type": (415, "The body must be application/json"),
    "registry_expired": (503, "The trust registry has expired"),
    "registry_stale": (
        503,
        "The trust registry is not known to be the newest (no fresh timestamp statement)",
    ),
    "pseudonymizer_unavailable": (
        503,
        "The pseudonymizer gave no answer the gateway can trust; nothing was accepted, retry later",
    ),
    "unavailable": (503, "The gateway cannot accept events right now"),
    "internal": (500, "Internal error"),
}
if set(PROBLEMS) != set(PROBLEM_CODES):  # pragma: no cover - guards the catalogue against drift
    raise TypeError("every problem code needs a status and a title")


@dataclass(frozen=True, slots=True)
class FieldError:
    """One invalid field: where (a JSON Pointer into the request body), why, and a stable code."""

    pointer: str
    detail: str
    code: str

    def as_json(self) -> dict[str, str]:
        return {"pointer": self.pointer, "detail": self.detail, "code": self.code}


class ProblemError(LianfangError):
    """A refusal: raise it in a handler; the application renders it with :meth:`body`."""

    def __init__(
        self,
        code: ProblemCode,
        detail: str,
        *,
        errors: Sequence[FieldError] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code}: {detail}")
        self.code: ProblemCode = code
        self.detail = detail
        self.errors = tuple(errors)
        self.headers = dict(headers or {})

    @property
    def status(self) -> int:
        return PROBLEMS[self.code][0]

    @property
    def title(self) -> str:
        return PROBLEMS[self.code][1]

    @property
    def type(self) -> str:
        return TYPE_BASE + self.code.replace("_", "-")

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors:
            out["errors"] = [e.as_json() for e in self.errors]
        return out

    def body(self) -> bytes:
        return json.dumps(self.as_json(), ensure_ascii=False).encode("utf-8")


def json_pointer(path: Iterable[str | int]) -> str:
    """RFC 6901: ``("event", "victim", "phone")`` → ``/event/victim/phone``."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def field_errors(error: ValidationError, prefix: Sequence[str | int] = ()) -> list[FieldError]:
    """One :class:`FieldError` per pydantic error, located under ``prefix``, values left out."""
    return [
        FieldError(json_pointer([*prefix, *err["loc"]]), str(err["msg"]), str(err["type"]))
        for err in error.errors(include_input=False, include_url=False, include_context=False)
    ]
