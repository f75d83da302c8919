"""Linked subjects: the pure core (services/hub/links.py) and the worker that carries its records over
the links topic. A lead keyed by a mistyped ID number's fallback (the phone) joins the state of the
lead that named the phone as a link, so the several-agencies rule sees both."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import timedelta

import pytest

from services.hub import links, rules, supervision
from services.hub.config import HubConfig
from services.hub.errors import ObservationError, StateDecodeError
from services.hub.links import Forwarded, LinkNote
from services.hub.state import LinkState, Observation
from services.kernel import envelope
from tests import kit
from tests.kit import DemoDomain
from tests.unit.test_hub_rules import day, eid, lead, pseudonym
from tests.unit.test_hub_worker import NAMES, Harness, T, hub, reason_codes

__all__ = ["hub"]  # the worker's fixture, used here too

pytestmark = pytest.mark.unit

CFG = HubConfig()
LOW, HIGH = sorted([pseudonym("linked one"), pseudonym("linked two")])


# --------------------------------------------------------------------------- the pure core


def test_a_lead_sends_one_note_per_link_keyed_by_the_greater_pseudonym_of_the_pair() -> None:
    third = pseudonym("linked three")
    obs = Observation(
        event_id=eid(1),
        event_type="lead.reported",
        sender="police",
        time=day(0),
        subject=HIGH,
        urgency="urgent",
        links=(LOW, third, LOW, HIGH),
    )
    notes = links.notes_for(obs)
    assert notes == [
        LinkNote(alias=max(HIGH, LOW), into=min(HIGH, LOW)),
        LinkNote(alias=max(HIGH, third), into=min(HIGH, third)),
    ]
    assert all(note.into < note.alias for note in notes)


def test_only_a_lead_links_its_subject() -> None:
    obs = Observation(
        event_id=eid(1),
        event_type="risk.assessed",
        sender="police",
        time=day(0),
        subject=HIGH,
        urgency="urgent",
    )
    assert links.notes_for(replace(obs, links=(LOW,))) == []


def test_a_pseudonym_that_moves_brings_its_leads_and_risks_along() -> None:
    own, _ = rules.observe(None, lead(1, day(0), subject=HIGH, sender="health"), CFG)
    state, sends, refused = links.observe_note(None, own, LinkNote(alias=HIGH, into=LOW), CFG)
    assert refused is None
    assert state.into == LOW
    assert state.moves == 1
    [forwarded] = sends
    assert isinstance(forwarded, Forwarded)
    assert (forwarded.to, forwarded.origin, forwarded.obs.event_id) == (LOW, HIGH, eid(1))
    assert forwarded.obs.sender == "health"


def test_a_pseudonym_linked_twice_goes_to_the_lesser_and_tells_the_greater_to_follow() -> None:
    a, b, c, d = sorted(pseudonym(f"linked {i}") for i in range(4))
    state = LinkState(pseudonym=d, into=b, moves=1)
    same, sends, _ = links.observe_note(state, None, LinkNote(alias=d, into=c), CFG)
    assert same.into == b
    assert sends == [LinkNote(alias=c, into=b)]
    moved, sends, _ = links.observe_note(state, None, LinkNote(alias=d, into=a), CFG)
    assert (moved.into, moved.moves) == (a, 2)
    assert sends == [LinkNote(alias=b, into=a)]


def test_a_note_seen_again_changes_nothing() -> None:
    state = LinkState(pseudonym=HIGH, into=LOW, moves=1)
    assert links.observe_note(state, None, LinkNote(alias=HIGH, into=LOW), CFG) == (state, [], None)


def test_a_pseudonym_stops_moving_after_max_link_moves() -> None:
    state = LinkState(pseudonym=HIGH, into=None, moves=CFG.max_link_moves)
    assert links.observe_note(state, None, LinkNote(alias=HIGH, into=LOW), CFG) == (
        state,
        [],
        "too_many_moves",
    )


def test_a_note_that_points_uphill_is_refused() -> None:
    with pytest.raises(ObservationError):
        links.observe_note(None, None, LinkNote(alias=LOW, into=HIGH), CFG)
    with pytest.raises(StateDecodeError):
        links.read(json.dumps({"kind": "link", "alias": LOW, "into": HIGH}))


@pytest.mark.parametrize(
    "raw",
    [b"{", b"[]", b'{"kind":"other"}', b'{"kind":"event","to":"a","origin":"b","hops":"0","obs":{}}'],
    ids=["not JSON", "not an object", "an unknown kind", "a forwarded event without its event"],
)
def test_a_links_record_that_is_neither_kind_is_unreadable(raw: bytes) -> None:
    with pytest.raises(StateDecodeError):
        links.read(raw)


def test_a_forwarded_event_round_trips() -> None:
    obs = lead(7, day(1), subject=HIGH, sender="health", pj=True)
    record = Forwarded(to=LOW, origin=HIGH, obs=obs, hops=2)
    again = links.read(record.to_json())
    assert isinstance(again, Forwarded)
    assert (again.to, again.origin, again.hops) == (LOW, HIGH, 2)
    assert again.obs.event_id == obs.event_id
    assert again.obs.recipients == obs.recipients
    assert again.obs.triage["requests_joint_meeting"] is True


def test_a_subject_takes_events_from_at_most_max_linked_pseudonyms() -> None:
    cfg = HubConfig(max_linked=1)
    first = Forwarded(to=LOW, origin=HIGH, obs=lead(1, day(0), subject=HIGH))
    state, out, refused = links.route_forwarded(None, first, cfg)
    assert refused is None
    assert isinstance(out, Observation)
    assert (out.subject, out.origin) == (LOW, HIGH)
    assert state is not None
    assert state.linked == [HIGH]
    other = pseudonym("a third pseudonym")
    second = Forwarded(to=LOW, origin=other, obs=lead(2, day(0), subject=other))
    assert links.route_forwarded(state, second, cfg) == (state, None, "too_many_linked")


def test_a_forwarded_event_for_a_subject_that_moved_is_passed_on_a_bounded_number_of_times() -> None:
    lower = pseudonym("lower still")
    state = LinkState(pseudonym=LOW, into=lower, moves=1)
    record = Forwarded(to=LOW, origin=HIGH, obs=lead(1, day(0), subject=HIGH))
    _, out, refused = links.route_forwarded(state, record, CFG)
    assert refused is None
    assert out == Forwarded(to=lower, origin=HIGH, obs=record.obs, hops=1)
    tired = Forwarded(to=LOW, origin=HIGH, obs=record.obs, hops=links.MAX_HOPS - 1)
    assert links.route_forwarded(state, tired, CFG) == (state, None, "too_many_hops")


def test_a_linked_lead_counts_for_the_rules_but_sets_no_deadline_of_its_own() -> None:
    own, _ = rules.observe(None, lead(1, day(0), subject=LOW, sender="police"), CFG)
    linked = replace(lead(2, day(1), subject=LOW, sender="health"), origin=HIGH)
    state, emissions = rules.observe(own, linked, CFG)
    [alert] = emissions
    assert [r["code"] for r in alert.reasons] == ["convergence"]
    assert alert.related_events == [eid(1), eid(2)]
    assert [lead.via for lead in state.leads] == [None, HIGH]
    assert {w.lead_id for w in supervision.watches(state, CFG)} == {eid(1)}


def test_a_rule_that_only_a_linked_subjects_events_fire_is_left_to_that_subject() -> None:
    linked = replace(lead(1, day(0), subject=LOW, pj=True), origin=HIGH)
    state, emissions = rules.observe(None, linked, CFG)
    assert emissions == []
    assert state.alert is None


def test_forwardable_keeps_what_the_rules_read() -> None:
    own, _ = rules.observe(None, lead(1, day(0), subject=HIGH, sender="health", pj=True), CFG)
    [obs] = links.forwardable(own, CFG)
    assert obs.triage["requests_joint_meeting"] is True
    assert obs.origin == HIGH
    again, _ = rules.observe(None, replace(obs, subject=LOW), CFG)
    assert again.leads[0].acting == own.leads[0].acting
    assert links.forwardable(None, CFG) == []


# --------------------------------------------------------------------------- the worker, over dict tables


def sealed_lead(domain: DemoDomain, n: int, sender: str, subject: str, links_: list[str]) -> bytes:
    header = kit.header(
        id=eid(n),
        source=f"urn:lianfang:{sender}",
        time=T + timedelta(minutes=n),
        subject=subject,
        links=links_,
    )
    content = kit.sections_for(header, {"triage": {}, "details": {"narrative": "测试。"}})
    return envelope.seal(header, content, registry=domain.registry, signer=domain.keys(sender)).value


def deliver(hub: Harness, value: bytes, key: str) -> None:
    asyncio.run(hub.worker.on_inbox(value, key=key.encode(), partition=0, offset=0))


def pump(hub: Harness) -> int:
    """Hand every record sent to the links topic back to the worker, until none is left."""
    done = 0
    while len(records := hub.to(NAMES.hub_links)) > done:
        asyncio.run(hub.worker.on_link(records[done].value))
        done += 1
    return done


@pytest.mark.parametrize("phone_first", [False, True], ids=["the linking lead first", "the phone lead first"])
def test_a_lead_keyed_by_the_phone_joins_the_lead_that_links_the_phone(
    hub: Harness, phone_first: bool
) -> None:
    id_number, phone = pseudonym("cnid of the person"), pseudonym("phone of the person")
    linking = sealed_lead(hub.domain, 1, "police", id_number, [phone])
    keyed_by_phone = sealed_lead(hub.domain, 2, "health", phone, [])
    for value, key in [(linking, id_number), (keyed_by_phone, phone)][:: -1 if phone_first else 1]:
        deliver(hub, value, key)
    assert pump(hub) >= 2  # the note, and the phone lead forwarded
    [alert] = hub.alerts()
    assert alert.header.subject == min(id_number, phone)
    assert reason_codes(alert) == ["convergence"]
    assert alert.sections["details"]["related_events"] == [eid(1), eid(2)]
    assert hub.count("lianfang_hub_linked_events_total") == 1
    alias = max(id_number, phone)
    assert LinkState.from_json(hub.worker.links[alias.encode()]).into == min(id_number, phone)
    # Each lead is still applied where it was keyed: its own supervision watches it.
    assert [lead.id for lead in hub.state(alias).leads] == [eid(1) if alias == id_number else eid(2)]


def test_a_links_record_that_is_unreadable_is_counted_and_changes_nothing(hub: Harness) -> None:
    asyncio.run(hub.worker.on_link(b"{"))
    assert hub.worker.links == {}
    assert hub.count("lianfang_hub_events_rejected_total", source="links", reason="malformed") == 1


def test_a_refused_link_is_counted_and_the_lead_stays_where_it_was_keyed(hub: Harness) -> None:
    hub.worker.config = HubConfig(max_linked=1)
    canonical = min(LOW, HIGH, pseudonym("third linked"), pseudonym("fourth linked"))
    others = sorted({LOW, HIGH, pseudonym("third linked"), pseudonym("fourth linked")} - {canonical})
    for n, other in enumerate(others[:2], start=1):
        deliver(hub, sealed_lead(hub.domain, n, "health", other, []), other)
    deliver(hub, sealed_lead(hub.domain, 9, "police", canonical, others[:2]), canonical)
    pump(hub)
    assert hub.count("lianfang_hub_links_refused_total", reason="too_many_linked") == 1
    assert len(hub.state(canonical).leads) == 2  # its own and the first linked one
    for n, other in enumerate(others[:2], start=1):
        assert [lead.id for lead in hub.state(other).leads] == [eid(n)]


def test_a_forwarded_lead_s_alert_is_audited_on_disk_before_the_linked_states_are_written(
    hub: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    id_number, phone = pseudonym("cnid of the audited"), pseudonym("phone of the audited")
    deliver(hub, sealed_lead(hub.domain, 1, "police", id_number, [phone]), id_number)
    deliver(hub, sealed_lead(hub.domain, 2, "health", phone, []), phone)
    trail = hub.worker.trail.trail
    at_sync: list[tuple[int, bytes | None]] = []
    sync = trail.sync
    canonical = min(id_number, phone).encode()

    def recording_sync() -> None:
        at_sync.append((len(hub.alerts()), hub.victims.get(canonical)))
        sync()

    monkeypatch.setattr(trail, "sync", recording_sync)
    before = hub.victims.get(canonical)
    pump(hub)
    assert len(hub.alerts()) == 1
    alert_sync = next(i for i, (alerts, _) in enumerate(at_sync) if alerts == 1)
    assert at_sync[alert_sync][1] == before, "the alert was sent; its state not yet written"
    assert hub.victims[canonical] != before
