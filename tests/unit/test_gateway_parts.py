"""The gateway's pure parts: problem details, request parsing into events, inbox cursors, webhook
back-off, settings and the idempotency store."""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas.events import LeadAcknowledged, LeadReported
from services.gateway.api import ContextIn, PublishRequest, parse_submission
from services.gateway.app import GatewaySettings
from services.gateway.idempotency import IdempotencyStore
from services.gateway.inbox import decode_cursor, encode_cursor
from services.gateway.problems import PROBLEMS, ProblemError, field_errors, json_pointer
from services.gateway.webhooks import Backoff, signing_kid
from services.kernel.pseudonym import normalize_subject
from services.sdk.deferred import StandIn
from tests.kit import NOW, DemoDomain, until

pytestmark = pytest.mark.unit


def lead(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "category": "sexual_assault",
        "channel": "school",
        "town": "mapo",
        "victim": {"name": "小某", "id_number": "110113201001010010", "is_minor": True, "age": 13},
        "suspects": [
            {"name": "某老师", "phone": "13911112222", "is_minor": False, "relationship": "teacher"},
            {"name": "不详", "is_minor": False, "relationship": "stranger"},
        ],
        "minor": True,
        "school_related": True,
        "narrative": "学生向班主任反映遭受侵害。",
        "requests_joint_meeting": True,
    }
    event.update(overrides)
    return event


def parse(domain: DemoDomain, request: dict[str, Any], participant: str = "education") -> Any:
    body = json.dumps(request, ensure_ascii=False).encode()
    return parse_submission(
        body, participant=participant, registry=domain.registry, pseudonymizer=domain.pseudonymizer
    )


# --------------------------------------------------------------------------- problems


def test_a_problem_renders_as_rfc_9457_with_only_the_standard_members_and_errors() -> None:
    problem = ProblemError(
        "invalid_request", "2 field(s) are invalid", errors=field_errors(_error(), ("event",))
    )
    body = json.loads(problem.body())
    assert set(body) == {"type", "title", "status", "detail", "errors"}
    assert body["type"] == "https://lianfang.example/problems/invalid-request"
    assert body["status"] == 422 == problem.status
    assert {e["pointer"] for e in body["errors"]} == {"/event/victim/phone", "/event/narrative"}
    assert all(set(e) == {"pointer", "detail", "code"} for e in body["errors"])
    assert "SECRET" not in problem.body().decode()


def _error() -> ValidationError:
    data = lead(victim={"name": "SECRET", "phone": "SECRET-PHONE-" * 3, "is_minor": True}, narrative=7)
    data["victim_pseudonym"] = "p1." + "A" * 43
    data["suspects"], data["suspect_pseudonyms"] = [], []
    try:
        LeadReported.model_validate_json(json.dumps(data))
    except ValidationError as e:
        return e
    raise AssertionError("expected a validation error")


def test_a_problem_without_field_errors_has_no_errors_member() -> None:
    assert "errors" not in json.loads(ProblemError("too_large", "over").body())


def test_every_problem_code_has_a_client_or_server_error_status() -> None:
    assert all(400 <= status < 600 and title for status, title in PROBLEMS.values())


@pytest.mark.parametrize(
    ("path", "pointer"),
    [(("event", "victim", "phone"), "/event/victim/phone"), (("a/b", "m~n", 0), "/a~1b/m~0n/0"), ((), "")],
)
def test_json_pointers_escape_slash_and_tilde(path: tuple[Any, ...], pointer: str) -> None:
    assert json_pointer(path) == pointer


# --------------------------------------------------------------------------- request → event


def test_a_lead_gets_the_pseudonyms_the_sdk_would_compute(domain: DemoDomain) -> None:
    sub = parse(domain, {"type": "lead.reported", "event": lead()})
    key = domain.pseudonymizer()
    assert isinstance(sub.event, LeadReported)
    assert (
        sub.event.victim_pseudonym == key.pseudonyms([normalize_subject(id_number="110113201001010010")])[0]
    )
    assert sub.event.suspects[0].pseudonym == key.pseudonyms([normalize_subject(phone="13911112222")])[0]
    assert sub.event.suspects[1].pseudonym is None
    assert sub.event.suspect_pseudonyms == [sub.event.suspects[0].pseudonym]
    assert sub.context.subject == sub.event.victim_pseudonym
    assert sub.context.school_related is True
    assert sub.urgency == "immediate", "a minor victim of sexual assault is immediate by default"


def test_a_lead_to_wait_for_the_pseudonymizer_is_validated_with_stand_ins_and_kept_as_submitted(
    domain: DemoDomain,
) -> None:
    def unreachable() -> Any:
        raise AssertionError("a lead that waits does not ask the pseudonymizer")

    body = json.dumps({"type": "lead.reported", "event": lead()}, ensure_ascii=False).encode()
    sub = parse_submission(
        body, participant="education", registry=domain.registry, pseudonymizer=unreachable,
        stand_in=StandIn(1),
    )  # fmt: skip
    assert sub.waiting == lead()
    assert sub.urgency == "immediate"
    wrong = json.dumps({"type": "lead.reported", "event": lead(channel="fax")}).encode()
    with pytest.raises(ProblemError) as e:
        parse_submission(
            wrong, participant="education", registry=domain.registry, pseudonymizer=unreachable,
            stand_in=StandIn(1),
        )  # fmt: skip
    assert {err.pointer for err in e.value.errors} == {"/event/channel"}


def test_an_explicit_urgency_and_refs_are_kept(domain: DemoDomain) -> None:
    ref = "0190b4d0-0000-7000-8000-000000000001"
    sub = parse(domain, {"type": "lead.reported", "event": lead(), "urgency": "routine", "refs": [ref]})
    assert sub.urgency == "routine"
    assert sub.refs == (ref,)


def test_a_follow_up_takes_its_context_and_defaults_to_routine(domain: DemoDomain) -> None:
    lead_id = "0190b4d0-0000-7000-8000-000000000002"
    context = ContextIn(
        subject="p1." + "A" * 43, category="sexual_assault", minor=True, town="mapo", lead_id=lead_id
    )
    ack = {"lead_id": lead_id, "agency": "education", "acknowledged_at": NOW.isoformat()}
    sub = parse(domain, {"type": "lead.acknowledged", "event": ack, "context": context.model_dump()})
    assert isinstance(sub.event, LeadAcknowledged)
    assert sub.context.lead_id == lead_id
    assert sub.urgency == "routine"


def test_all_invalid_fields_are_reported_at_once(domain: DemoDomain) -> None:
    event = lead(
        channel="fax", minor="yes", victim={"name": "", "id_number": "110113201001010010", "is_minor": True}
    )
    with pytest.raises(ProblemError) as e:
        parse(domain, {"type": "lead.reported", "event": event})
    pointers = {err.pointer for err in e.value.errors}
    assert {"/event/channel", "/event/minor", "/event/victim/name"} <= pointers


def test_an_id_number_with_a_wrong_check_digit_is_accepted_and_flagged_unverified(domain: DemoDomain) -> None:
    submission = parse(
        domain,
        {
            "type": "lead.reported",
            "event": lead(victim={"name": "小某", "id_number": "110113201001010017", "is_minor": True}),
        },
    )
    assert isinstance(submission.event, LeadReported)
    assert submission.event.victim.id_number_unverified is True


def test_the_right_to_publish_is_checked_before_the_event(domain: DemoDomain) -> None:
    with pytest.raises(ProblemError) as e:
        parse(
            domain,
            {"type": "joint_meeting.alert", "event": {}, "context": {"subject": "p1." + "A" * 43}},
            "police",
        )
    assert e.value.code == "not_permitted"


@given(st.binary(max_size=200))
def test_any_bytes_are_parsed_or_refused_with_a_validation_error_and_nothing_else(data: bytes) -> None:
    with contextlib.suppress(ValidationError):
        PublishRequest.model_validate_json(data)


# --------------------------------------------------------------------------- cursors, back-off, settings


@given(
    st.dictionaries(
        st.integers(min_value=0, max_value=1000), st.integers(min_value=0, max_value=2**62), max_size=20
    )
)
def test_a_cursor_round_trips(offsets: dict[int, int]) -> None:
    assert decode_cursor(encode_cursor(offsets)) == offsets


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "v2.e30",
        "v1.!!!",
        "v1." + "e30" * 2000,
        encode_cursor({0: 1})[:-2] + "xx",
        "v1.WzFd",
        "v1.eyIwIjotMX0",
        "v1.eyJhIjoxfQ",
    ],
    ids=[
        "empty",
        "another version",
        "not base64",
        "too long",
        "corrupted",
        "a list",
        "a negative offset",
        "a named partition",
    ],
)
def test_a_cursor_the_gateway_did_not_issue_is_refused(cursor: str) -> None:
    with pytest.raises(ProblemError) as e:
        decode_cursor(cursor)
    assert e.value.code == "invalid_cursor"


def test_back_off_doubles_up_to_its_cap_with_jitter_in_the_upper_half() -> None:
    backoff = Backoff(first_s=0.5, cap_s=8.0)
    assert [backoff.delay(n, rand=lambda: 1.0) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert [backoff.delay(n, rand=lambda: 0.0) for n in range(3)] == [0.25, 0.5, 1.0]
    rng = random.Random(1)
    assert all(4.0 <= backoff.delay(10, rand=rng.random) <= 8.0 for _ in range(100))


def test_webhooks_are_signed_with_a_key_the_registry_accepts_now(domain: DemoDomain) -> None:
    store = domain.keys("police")
    assert signing_kid(store, domain.registry, NOW) in store.signing
    from services.kernel.errors import UsageError

    with pytest.raises(UsageError):
        signing_kid(store, domain.registry, NOW - timedelta(days=1))


def test_settings_read_comma_lists_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIANFANG_GATEWAY_PARTICIPANTS", "police, womens_federation")
    monkeypatch.setenv("LIANFANG_GATEWAY_WEBHOOKS", "police=http://127.0.0.1:9999/hook")
    monkeypatch.setenv("LIANFANG_BOOTSTRAP", "127.0.0.1:9092")
    settings = GatewaySettings()
    assert settings.participants == ("police", "womens_federation")
    assert settings.webhook_urls == {"police": "http://127.0.0.1:9999/hook"}
    assert settings.bootstrap == "127.0.0.1:9092"
    assert settings.port == 8080
    assert settings.max_body_bytes == 256 * 1024


@pytest.mark.parametrize(
    "webhooks",
    ["health=http://127.0.0.1:1/h", "police=ftp://x", "police"],
    ids=["not served", "not http", "no url"],
)
def test_a_webhook_setting_that_cannot_work_is_refused(webhooks: str) -> None:
    with pytest.raises(ValidationError):
        GatewaySettings(participants=("police",), webhooks=(webhooks,))


# --------------------------------------------------------------------------- idempotency store


def test_a_reservation_keeps_the_first_id_and_pruning_forgets_signatures_first(tmp_path: Path) -> None:
    store = IdempotencyStore(tmp_path / "idem.sqlite")
    first = store.reserve("police", "key:a", "d1", "id-1")
    assert store.reserve("police", "key:a", "d2", "id-2") == first
    assert not first.accepted
    store.mark_accepted("police", "key:a")
    assert store.lookup("police", "key:a") is not None
    assert store.lookup("police", "key:a").accepted  # type: ignore[union-attr]
    store.reserve("police", "sig:b", "d3", "id-3")
    assert store.prune(keys_older_than_s=3600, signatures_older_than_s=600, now=time.time()) == 0
    later = time.time() + 1000
    assert store.prune(keys_older_than_s=3600, signatures_older_than_s=600, now=later) == 1
    assert store.lookup("police", "sig:b") is None
    assert store.lookup("police", "key:a") is not None


def test_a_lookup_sees_committed_reservations_without_waiting_for_a_commit_in_flight(tmp_path: Path) -> None:
    store = IdempotencyStore(tmp_path / "idem.sqlite")
    store.reserve("police", "key:a", "d1", "id-1")
    in_flight, release, looked = threading.Event(), threading.Event(), threading.Event()
    found: list[object] = []

    def commit_in_flight() -> None:  # holds the writer's lock as a commit does through its fsync
        with store._lock:
            in_flight.set()
            release.wait(10)

    def lookup() -> None:
        found.append(store.lookup("police", "key:a"))
        looked.set()

    holder = threading.Thread(target=commit_in_flight)
    holder.start()
    until(in_flight.is_set, "the commit in flight holding the writer's lock")
    threading.Thread(target=lookup).start()
    try:
        until(looked.is_set, "a lookup while a commit holds the writer's lock", deadline_s=5)
        assert [getattr(r, "event_id", None) for r in found] == ["id-1"]
    finally:
        release.set()
        holder.join(10)
        store.close()
