"""The gateway's request contract and how a request body becomes an event to publish: pure.

``POST /v1/events`` takes one JSON object::

    {"type": "lead.reported",            # an event type of the v1 catalogue
     "event": {...},                     # that type's fields (schemas/json/<type>.schema.json); for a
                                         # lead, without pseudonyms: the gateway computes them
     "urgency": "urgent",                # optional: immediate | urgent | routine
     "context": {...},                   # follow-ups only: the case's clear-header facts, as returned
                                         # with each event by GET /v1/inbox
     "refs": ["<event id>", ...]}        # optional: related events

:func:`parse_submission` turns the bytes into a validated :class:`Submission` or raises a
:class:`~services.gateway.problems.ProblemError` that names every wrong field by JSON Pointer, never its
value.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from pydantic import Field, ValidationError, field_validator

from schemas.common import Category, EventId, Pseudonym, Town, UniqueList, Urgency, WireModel
from schemas.events import EVENT_MODELS, EventModel, LeadReported, upcast
from services.gateway.problems import FieldError, ProblemError, field_errors
from services.kernel import jsonx
from services.kernel.envelope import new_event_id
from services.kernel.errors import (
    LianfangError,
    MalformedError,
    NotPermittedError,
    RegistryExpiredError,
    UntrustedInputError,
)
from services.kernel.policy import town_mediation
from services.kernel.pseudonym import Pseudonymizer
from services.kernel.registry import Registry
from services.sdk.client import CaseContext, default_urgency, lead_identities
from services.sdk.metrics import SdkMetrics

__all__ = [
    "COMPUTED_LEAD_FIELDS",
    "ContextIn",
    "PublishRequest",
    "Submission",
    "parse_submission",
    "sealing_problem",
]

LEAD: Final = LeadReported.EVENT_TYPE
COMPUTED_LEAD_FIELDS: Final = ("victim_pseudonym", "suspect_pseudonyms")
"""Fields of a lead that the gateway computes from the identifiers; a request must leave them out."""

# A syntactically valid pseudonym that stands in while a lead is validated, so that a victim who
# cannot be pseudonymized is reported once (at /event/victim) and not again as a missing field.
_PLACEHOLDER: Final = "p0." + "A" * 43


class ContextIn(WireModel):
    """The clear-header facts of a case, which a follow-up event carries (from the lead it follows)."""

    subject: Pseudonym = Field(description="当事人假名 / the case's subject pseudonym (the lead's `subject`)")
    category: Category | None = None
    minor: bool | None = None
    town: Town | None = None
    school_related: bool | None = None
    lead_id: EventId | None = Field(default=None, description="the lead this event follows")


class PublishRequest(WireModel):
    """The body of ``POST /v1/events``."""

    type: str = Field(max_length=64, description="事件类型 / event type of the v1 catalogue")
    event: dict[str, Any] = Field(description="the event's fields, per the type's JSON Schema")
    urgency: Urgency | None = Field(default=None, description="紧急程度; default: from the lead's facts")
    context: ContextIn | None = Field(default=None, description="follow-ups only: the case's facts")
    refs: UniqueList[EventId] = Field(default_factory=list, max_length=100, description="related event ids")

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in EVENT_MODELS:
            raise ValueError(f"unknown event type; the v1 catalogue has: {', '.join(sorted(EVENT_MODELS))}")
        return value


@dataclass(frozen=True, slots=True)
class Submission:
    """A validated request: the event model and what its clear header needs."""

    event: EventModel
    context: CaseContext
    urgency: str
    refs: tuple[str, ...]
    waiting: dict[str, Any] | None = None
    """A lead validated with stand-in pseudonyms: its fields as submitted, to be published by
    :meth:`~services.sdk.client.Client.defer_lead` once the pseudonymizer answers."""
    why: str = "earlier leads wait"
    """Why a lead waits (the pseudonymizer's problem code), for the log line."""

    @property
    def type(self) -> str:
        return self.event.EVENT_TYPE


def parse_submission(
    body: bytes,
    *,
    participant: str,
    registry: Registry,
    pseudonymizer: Callable[[], Pseudonymizer],
    metrics: SdkMetrics | None = None,
    stand_in: Pseudonymizer | None = None,
) -> Submission:
    """Validate a request body for ``participant``; raise :class:`ProblemError` (400, 403 or 422).

    A lead's pseudonyms come from ``pseudonymizer()`` (its invalid identifiers are counted in
    ``metrics``); while the pseudonymizer cannot answer, its
    :class:`~services.kernel.errors.TransportError` passes through. With ``stand_in`` a lead is
    validated with its pseudonyms instead and the submission carries it as ``waiting`` (the gateway
    accepts it to wait in the outbox for the pseudonymizer).

    Order: JSON syntax (400), the request's own fields (422), the participant's right to publish
    the type (403), then the event's fields (422, every wrong field at once).
    """
    try:
        raw = jsonx.strict_json(body, what="the request body")
    except MalformedError as e:
        raise ProblemError("malformed_json", str(e).removeprefix("[malformed] ")) from e
    if not isinstance(raw, dict):
        raise ProblemError(
            "invalid_request",
            "the body must be a JSON object",
            errors=[FieldError("", "expected an object with type and event", "model_type")],
        )
    try:
        request = PublishRequest.model_validate_json(json.dumps(raw))
    except ValidationError as e:
        raise _invalid(field_errors(e)) from e
    try:
        registry.check_may_publish(participant, request.type)
    except NotPermittedError as e:
        raise ProblemError("not_permitted", f"{participant} may not publish {request.type}") from e
    if request.type == LEAD:
        if stand_in is not None:
            waiting = _lead(request, lambda: stand_in, metrics)
            return dataclasses.replace(waiting, waiting=dict(request.event))
        return _lead(request, pseudonymizer, metrics)
    return _follow_up(request)


def sealing_problem(submission: Submission, error: LianfangError, registry: Registry) -> ProblemError:
    """The answer to a valid request whose event cannot be sealed: a 4xx naming the field to blame
    where one can be named, never a 500.

    Sealing looks up every recipient the sharing policy derives from the clear header; a fact the
    caller chose can name a participant the registry does not know (a town whose mediation committee
    is not registered). The error's message may quote that value, so it is never passed on.
    """
    if isinstance(error, NotPermittedError):
        return ProblemError("not_permitted", f"the participant may not publish {submission.type}")
    if isinstance(error, RegistryExpiredError):
        return ProblemError(
            "registry_expired", "the trust registry has expired", headers={"Retry-After": "60"}
        )
    errors = _blame(submission, registry)
    if errors:
        return _invalid(errors)
    if isinstance(error, UntrustedInputError):
        detail = (
            f"the event cannot be sealed for the recipients the sharing policy names ({error.reason}); "
            "check the case's facts (category, minor, town) against the registry"
        )
        return ProblemError("invalid_request", detail)
    return ProblemError("invalid_request", str(error))


def _blame(submission: Submission, registry: Registry) -> list[FieldError]:
    """The fields whose values name a recipient the registry does not know."""
    town = submission.context.town
    if town is None or town_mediation(town) in registry.participant_ids():
        return []
    pointer = "/event/town" if submission.type == LEAD else "/context/town"
    detail = (
        "no mediation committee of this town is a participant of the registry, so the sharing policy "
        "cannot seal the event for it; use a town the registry knows"
    )
    return [FieldError(pointer, detail, "unknown_town")]


def _invalid(errors: list[FieldError]) -> ProblemError:
    n = len(errors)
    where = ", ".join(e.pointer or "(body)" for e in errors[:5]) + (", ..." if n > 5 else "")
    return ProblemError("invalid_request", f"{n} field(s) are invalid: {where}", errors=errors[:100])


def _validate(event_type: str, data: Mapping[str, Any]) -> tuple[EventModel | None, list[FieldError]]:
    model = EVENT_MODELS[event_type]
    try:
        return model.model_validate_json(json.dumps(upcast(event_type, data))), []
    except ValidationError as e:
        return None, field_errors(e, ("event",))


def _follow_up(request: PublishRequest) -> Submission:
    errors: list[FieldError] = []
    if request.context is None:
        errors.append(
            FieldError(
                "/context",
                f"{request.type} needs the context of its case (copy `context` from the inbox event)",
                "missing",
            )
        )
    event, event_errors = _validate(request.type, request.event)
    errors += event_errors
    if errors or event is None or request.context is None:
        raise _invalid(errors)
    c = request.context
    context = CaseContext(
        subject=c.subject,
        category=c.category,
        minor=c.minor,
        town=c.town,
        school_related=c.school_related,
        lead_id=c.lead_id,
    )
    return Submission(event, context, request.urgency or "routine", tuple(request.refs))


def _lead(
    request: PublishRequest, pseudonymizer: Callable[[], Pseudonymizer], metrics: SdkMetrics | None
) -> Submission:
    errors: list[FieldError] = []
    if request.context is not None:
        errors.append(
            FieldError("/context", "a lead's context comes from its own fields; leave it out", "extra")
        )
    data, links, pseudonym_errors = _with_pseudonyms(pseudonymizer, request.event, metrics)
    event, event_errors = _validate(LEAD, data)
    errors += pseudonym_errors + event_errors
    if errors or not isinstance(event, LeadReported):
        raise _invalid(errors)
    context = CaseContext(
        subject=event.victim_pseudonym,
        category=event.category,
        minor=event.minor,
        town=event.town,
        school_related=event.school_related,
        links=links,
    )
    return Submission(event, context, request.urgency or default_urgency(event), tuple(request.refs))


def _with_pseudonyms(
    pseudonymizer: Callable[[], Pseudonymizer], event: Mapping[str, Any], metrics: SdkMetrics | None
) -> tuple[dict[str, Any], tuple[str, ...], list[FieldError]]:
    """The lead's fields with its identifiers flagged and the victim's and suspects' pseudonyms filled
    in (one batch, as the SDK does: :func:`~services.sdk.client.lead_identities`), the victim's links,
    and what stood in the way. No identifier stands in the way: an invalid one is flagged."""
    errors: list[FieldError] = []
    out = dict(event)
    for name in COMPUTED_LEAD_FIELDS:
        if name in out:
            errors.append(
                FieldError(
                    f"/event/{name}", "computed by the gateway from the identifiers; leave it out", "computed"
                )
            )
    suspects = out.get("suspects")
    if isinstance(suspects, list):
        out["suspects"] = [_without_pseudonym(i, given, errors) for i, given in enumerate(suspects)]
    if errors or not isinstance(out.get("victim"), Mapping) or not isinstance(out.get("suspects", []), list):
        out["victim_pseudonym"] = _PLACEHOLDER  # the schema reports what is wrong with the rest
        out["suspect_pseudonyms"] = []
        return out, (), errors
    identities = lead_identities(pseudonymizer(), out, token=new_event_id(), metrics=metrics)
    return identities.data, identities.links, errors


def _without_pseudonym(i: int, given: Any, errors: list[FieldError]) -> Any:
    """A suspect without a pseudonym of the caller's (the gateway computes it), and why not."""
    if not isinstance(given, Mapping) or "pseudonym" not in given:
        return given
    errors.append(
        FieldError(
            f"/event/suspects/{i}/pseudonym",
            "computed by the gateway from the identifiers; leave it out",
            "computed",
        )
    )
    return {name: value for name, value in given.items() if name != "pseudonym"}
