"""A hostile participant's stream through a running pipeline: a router and a hub as processes, the
gateway as a process, police publishing good leads through the SDK and the gateway, and ``health`` —
a participant with a valid signing key — writing hostile records straight to the events topic between
them (and garbage on the hub's own topics).

Every hostile record ends where it must: the router dead-letters what it can see from the signed
clear header, with its reason; a lead whose data key for the hub is random is the hub's to refuse, and
it dead-letters it as the router would. Two hostile records are not the router's to refuse: planted
Kafka headers on an otherwise valid event (the router delivers the event and drops the headers), and a
random data key wrapped for police (the router cannot decrypt, so police's reader finds it out). Every
good lead reaches exactly the inboxes the policy names, once, and the hub raises its alert; no process
exits; and none of the names, phone numbers and ID numbers used here shows in any clear header, Kafka
header, dead-letter header, log or /metrics of the processes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from schemas.envelope import MAX_RECORD_BYTES, SectionName
from services.kernel import envelope, jsonx, policy, topics
from services.kernel.errors import DecryptFailedError
from services.kernel.pseudonym import id_check_digit
from services.sdk.client import Client
from tests.integration.buskit import Bus, HubProcess, RouterProcess
from tests.integration.test_gateway import GatewayProcess
from tests.kit import DemoDomain, header, rewrite_body, sections_for

pytestmark = pytest.mark.e2e


def _id_number(first17: str) -> str:
    return first17 + id_check_digit(first17)


@dataclasses.dataclass(frozen=True)
class Person:
    name: str
    phone: str
    id_number: str

    def as_victim(self) -> dict[str, Any]:
        return {"name": self.name, "phone": self.phone, "id_number": self.id_number, "is_minor": False}


VICTIMS = [
    Person("欧阳娜娜", "13911110001", _id_number("11010119850101123")),
    Person("司马芳芳", "13911110002", _id_number("11010119860202234")),
    Person("上官婷婷", "13911110003", _id_number("11010119870303345")),
]
SUSPECT = Person("皇甫强", "13922220001", _id_number("11010119800404456"))  # named in two leads: serial
BY_GATEWAY = Person("诸葛玲玲", "13911110009", _id_number("11010119880505567"))
UNKNOWN_TOWN = Person("东方小红", "13911110010", _id_number("11010119890606678"))
HOSTILE = Person("慕容雪", "13933330001", _id_number("11010119900707789"))
PEOPLE = [*VICTIMS, SUSPECT, BY_GATEWAY, UNKNOWN_TOWN, HOSTILE]


def _forms(text: str) -> set[bytes]:
    """``text`` as it could appear in bytes: UTF-8, JSON and Python escapes, percent-encoding."""
    return {
        text.encode(),
        json.dumps(text).strip('"').encode(),
        text.encode("unicode_escape"),
        repr(text.encode())[2:-1].encode(),
        urllib.parse.quote(text).encode(),
    }


PERSONAL = sorted(
    {form for p in PEOPLE for value in (p.name, p.phone, p.id_number) for form in _forms(value)}
)


def _personal_data_in(where: str, data: bytes) -> list[str]:
    return [f"{where}: {form!r}" for form in PERSONAL if form in data]


def _lead_data(victim: Person, *, suspect: Person | None = None, town: str = "mapo") -> dict[str, Any]:
    suspects = []
    if suspect is not None:
        suspects.append(
            {"name": suspect.name, "phone": suspect.phone, "is_minor": False, "relationship": "spouse"}
        )
    return {
        "category": "domestic_violence",
        "channel": "police_call",
        "town": town,
        "victim": victim.as_victim(),
        "suspects": suspects,
        "minor": False,
        "risk_indicators": [],
        "narrative": "丈夫多次殴打, 邻居报警。",
        "requests_joint_meeting": True,
    }


HOSTILE_CONTENT: dict[SectionName, dict[str, Any]] = {
    "triage": {"category": "domestic_violence", "risk_indicators": [], "minor": False},
    "details": {"victim": HOSTILE.as_victim(), "narrative": "伪造。"},
}


class RandomKeyFor:
    """Sealing randomness that wraps a random data key, not the section's, for one recipient."""

    def __init__(self, victim: str) -> None:
        self.victim = victim

    def data_key(self) -> bytes:
        return envelope.SYSTEM_ENTROPY.data_key()

    def nonce(self) -> bytes:
        return envelope.SYSTEM_ENTROPY.nonce()

    def hpke_wrap(self, recipient_public_raw: bytes, plaintext: bytes, info: bytes) -> bytes:
        if info.split(b"\0")[3] == self.victim.encode():
            plaintext = os.urandom(len(plaintext))
        return envelope.SYSTEM_ENTROPY.hpke_wrap(recipient_public_raw, plaintext, info)


@dataclasses.dataclass
class Hostile:
    """One hostile record: where it goes and what must become of it (a reason, or ``None``)."""

    name: str
    key: bytes | None
    value: bytes
    reason: str | None
    headers: list[tuple[str, bytes]] = dataclasses.field(default_factory=list)
    partition: int | None = None


def _sealed(bus: Bus, *, entropy: Any = envelope.SYSTEM_ENTROPY, **fields: Any) -> envelope.SealedRecord:
    defaults = {
        "id": envelope.new_event_id(),
        "source": "urn:lianfang:health",
        "time": datetime.now(UTC),
        "subject": bus.domain.subject(HOSTILE.phone),
        "town": "mapo",
    }
    h = header(**{**defaults, **fields})
    sections = sections_for(h, HOSTILE_CONTENT)
    return envelope.seal(
        h, sections, registry=bus.domain.registry, signer=bus.domain.keys("health"), entropy=entropy
    )


def _resigned(bus: Bus, **changes: Any) -> tuple[bytes, bytes]:
    """A valid event of health's with its clear header edited and signed again by health."""
    sealed = _sealed(bus)

    def edit(h: bytes, s: object) -> tuple[bytes, object]:
        return jsonx.compact_json({**json.loads(h), **changes}), s

    value = rewrite_body(sealed.value, edit, bus.domain.keys("health"))
    return str(changes.get("subject", sealed.header.subject)).encode(), value


PLANTED = [("victim_name", HOSTILE.name.encode()), ("ce_id_number", HOSTILE.id_number.encode())]


def _hostile_records(bus: Bus) -> list[Hostile]:
    n = bus.partitions(bus.names.events)
    original = _sealed(bus)
    replay = _sealed(bus, id=original.header.id)  # the same id, other bytes
    home = topics.partition_for(original.key, n)
    key, not_a_pseudonym = _resigned(bus, subject=HOSTILE.name)
    unknown_key, unknown_field = _resigned(bus, victim_id_number=HOSTILE.id_number)
    police_cannot_open = _sealed(bus, entropy=RandomKeyFor("police"))
    hub_cannot_open = _sealed(bus, entropy=RandomKeyFor("hub"))
    return [
        Hostile("a subject that is not a pseudonym", key, not_a_pseudonym, "malformed", PLANTED),
        Hostile("an unknown clear-header field", unknown_key, unknown_field, "malformed"),
        Hostile("planted Kafka headers on a valid event", original.key, original.value, None, PLANTED),
        Hostile(
            "a verbatim copy on another partition",
            original.key,
            original.value,
            "misplaced",
            [],
            (home + 1) % n,
        ),
        Hostile("a replayed event", replay.key, replay.value, "replay", PLANTED),
        Hostile(
            "a random data key wrapped for police", police_cannot_open.key, police_cannot_open.value, None
        ),
        Hostile(
            "a random data key wrapped for the hub",
            hub_cannot_open.key,
            hub_cannot_open.value,
            "decrypt_failed",
        ),
        Hostile("a garbage value", b"k", b"\x00{garbage" + HOSTILE.phone.encode(), "malformed", PLANTED),
        Hostile("an oversized value", b"k", b"x" * (MAX_RECORD_BYTES + 1), "too_large"),
    ]


def _produce(bus: Bus, records: list[Hostile]) -> None:
    for r in records:  # one at a time, in order: a replay must follow its original
        bus.produce([(r.key, r.value)], partition=r.partition, headers=r.headers)


# --------------------------------------------------------------------------- the pipeline


@dataclasses.dataclass
class Pipeline:
    bus: Bus
    router: RouterProcess
    hub: HubProcess
    gateway: GatewayProcess
    police: Client


@pytest.fixture(scope="module")
def pipeline(
    kafka_bootstrap: str, live_domain: DemoDomain, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    tmp = Path(tmp_path_factory.mktemp("hostile"))
    bus = Bus.create(kafka_bootstrap, f"t-hostile-{datetime.now(UTC):%H%M%S%f}.", live_domain)
    router = RouterProcess(bus, live_domain.home, tmp / "router.log", group=f"{bus.prefix}router")
    hub = HubProcess(bus, tmp / "hub.log", tmp / "hub-data")
    gateway = GatewayProcess(bus, tmp / "spool", tmp / "gateway.log")
    police = Client(
        keystore=live_domain.keys("police"),
        registry=live_domain.registry,
        bootstrap=bus.bootstrap,
        outbox_path=tmp / "police.sqlite",
        topic_prefix=bus.prefix,
    )
    try:
        bus.wait_for(lambda: router.metric("lianfang_registry_version", service="router"), 60, "router start")
        bus.wait_for(lambda: hub.metric("lianfang_hub_events_observed_total") is not None, 120, "hub start")
        gateway.wait_ready(bus)
        yield Pipeline(bus, router, hub, gateway, police)
    finally:
        police.close()
        gateway.stop()
        hub.stop()
        router.stop()


def _clear_header(value: bytes) -> bytes:
    return envelope.parse(value)[2]


def _expected_inboxes(bus: Bus, value: bytes) -> set[str]:
    h = envelope.parse(value)[4]
    return set().union(*policy.recipients(bus.domain.registry.document.policy, h).values())


def _events_by_id(bus: Bus, ids: set[str]) -> dict[str, bytes]:
    found = {}
    for record in bus.read_all([bus.names.events])[bus.names.events]:
        event_id = dict(record.headers or []).get("ce_id", b"").decode()
        if event_id in ids:
            found[event_id] = record.value
    return found


def _delivered_exactly_once(bus: Bus, ids: set[str]) -> bool:
    values = _events_by_id(bus, ids)
    if set(values) != ids:
        return False
    got = bus.inbox_ids()
    complete = True
    for event_id, value in values.items():
        expected = _expected_inboxes(bus, value)
        for participant, counts in got.items():
            n = counts.get(event_id, 0)
            assert n <= 1, f"{event_id} reached {participant} {n} times"
            assert participant in expected or n == 0, f"{event_id} reached {participant} wrongly"
            complete = complete and (participant not in expected or n == 1)
    return complete


def _alerts(bus: Bus) -> dict[str, set[str]]:
    """The alerts in the coordinators' inbox: for each subject, the rules they name (from the
    coordinators' own opening of them)."""
    coordinators = bus.domain.keys("coordinators")
    topic = bus.names.inbox("coordinators")
    out: dict[str, set[str]] = {}
    for record in bus.read_all([topic])[topic]:
        if dict(record.headers).get("ce_type") != b"joint_meeting.alert":
            continue
        opened = envelope.verify_and_open(
            record.value, registry=bus.domain.registry, now=datetime.now(UTC), keystore=coordinators
        )
        codes = {r["code"] for r in opened.sections["details"]["reasons"]}
        out.setdefault(opened.header.subject, set()).update(codes)
    return out


def _metrics_text(port: int | None) -> bytes:
    assert port is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return bytes(response.read())


def test_a_hostile_participant_s_stream_is_dead_lettered_by_reason_while_good_leads_raise_alerts(
    pipeline: Pipeline,
) -> None:
    bus, police = pipeline.bus, pipeline.police
    hostile = _hostile_records(bus)

    # Garbage on the hub's own topics first: a later lead's suspect passes through both.
    bus.produce([(b"k", b"not a note")], topic=bus.names.hub_suspects)
    bus.produce([(b"k", b"{")], topic=bus.names.hub_serial)

    good: list[tuple[Person, str]] = []
    good.append((VICTIMS[0], police.publish_lead(_lead_data(VICTIMS[0], suspect=SUSPECT))))
    assert police.flush(30)
    _produce(bus, hostile[:4])
    good.append((VICTIMS[1], police.publish_lead(_lead_data(VICTIMS[1], suspect=SUSPECT))))
    assert police.flush(30)
    _produce(bus, hostile[4:])
    good.append((VICTIMS[2], police.publish_lead(_lead_data(VICTIMS[2]))))
    assert police.flush(30)

    gateway = pipeline.gateway
    body = json.dumps({"type": "lead.reported", "event": _lead_data(BY_GATEWAY)}, ensure_ascii=False).encode()
    status, answer = gateway.post(body)
    assert status == 202, answer
    good.append((BY_GATEWAY, answer["event_id"]))
    unknown = {"type": "lead.reported", "event": _lead_data(UNKNOWN_TOWN, town="atlantis")}
    status, answer = gateway.post(json.dumps(unknown, ensure_ascii=False).encode())
    assert status == 422, answer
    assert [e["pointer"] for e in answer["errors"]] == ["/event/town"]

    # Every good lead reaches exactly its inboxes, once, and the hub raises its alert for each.
    good_ids = {event_id for _person, event_id in good}
    bus.wait_for(lambda: _delivered_exactly_once(bus, good_ids), 120, "the good leads' deliveries")
    subjects = {envelope.parse(v)[4].subject for v in _events_by_id(bus, good_ids).values()}
    alerts = bus.wait_for(
        lambda: (a := _alerts(bus)) and subjects <= set(a) and a, 120, "an alert for every good lead"
    )
    assert all("professional_judgement" in alerts[s] for s in subjects)
    serial = bus.wait_for(
        lambda: {s for s, codes in _alerts(bus).items() if "serial_suspect" in codes},
        120,
        "the serial-suspect alerts of the two victims of one suspect",
    )
    assert len(serial) == 2

    # Every hostile record the router or the hub can refuse is dead-lettered, once, with its reason.
    expected = Counter(h.reason for h in hostile if h.reason is not None)
    letters = bus.wait_for(
        lambda: len(dl := bus.deadletters()) >= expected.total() and dl, 120, "the dead letters"
    )
    assert Counter(dict(r.headers)["lianfang_reason"].decode() for r in letters) == expected
    by_reason = {dict(r.headers)["lianfang_reason"].decode(): dict(r.headers) for r in letters}
    assert by_reason["decrypt_failed"]["lianfang_source_topic"] == bus.names.inbox("hub").encode()
    for reason in expected.keys() - {"decrypt_failed"}:
        assert by_reason[reason]["lianfang_source_topic"] == bus.names.events.encode(), reason
    for reason, n in expected.items():
        if reason != "decrypt_failed":
            assert pipeline.router.metric("lianfang_router_deadletters_total", reason=reason) == n
    assert (
        pipeline.hub.metric("lianfang_hub_events_rejected_total", source="inbox", reason="decrypt_failed")
        == 1
    )
    assert (
        pipeline.hub.metric("lianfang_hub_events_rejected_total", source="suspects", reason="malformed") == 1
    )
    assert pipeline.hub.metric("lianfang_hub_events_rejected_total", source="serial", reason="malformed") == 1

    # The two the router cannot refuse: the valid event is delivered without the planted headers,
    # and police's reader cannot open the lead whose key for police is random.
    planted = next(h for h in hostile if h.name == "planted Kafka headers on a valid event")
    inboxes = [bus.names.inbox(p) for p in bus.domain.registry.participant_ids()]
    delivered = bus.read_all(inboxes)
    copies = [r for records in delivered.values() for r in records if r.value == planted.value]
    assert len(copies) == len(_expected_inboxes(bus, planted.value))
    for c in copies:  # the headers the router derives: the mirrored header, then when it accepted it
        *mirrored, (accepted, _at) = list(c.headers)
        assert mirrored == envelope.kafka_headers(envelope.parse(c.value)[4])
        assert accepted == envelope.ACCEPTED_AT_HEADER
    random_for_police = next(h for h in hostile if h.name == "a random data key wrapped for police")
    [police_copy] = [r for r in delivered[bus.names.inbox("police")] if r.value == random_for_police.value]
    with pytest.raises(DecryptFailedError):
        envelope.verify_and_open(
            police_copy.value,
            registry=bus.domain.registry,
            now=datetime.now(UTC),
            keystore=bus.domain.keys("police"),
        )

    # No process exited.
    for worker in (pipeline.router, pipeline.hub, pipeline.gateway):
        worker.check_alive()

    # No personal data anywhere a reader without a key sees it.
    hostile_values = {h.value for h in hostile}
    found: list[str] = []
    for topic, records in delivered.items():
        for r in records:
            found += _personal_data_in(f"{topic} clear header", _clear_header(r.value))
            found += _personal_data_in(f"{topic} Kafka headers", repr(r.headers).encode())
    for r in bus.read_all([bus.names.events])[bus.names.events]:
        if r.value not in hostile_values:
            found += _personal_data_in("events clear header", _clear_header(r.value))
            found += _personal_data_in("events Kafka headers", repr(r.headers).encode())
    for r in letters:
        found += _personal_data_in("dead-letter headers", b"".join(v for _k, v in r.headers))
    for worker in (pipeline.router, pipeline.hub, pipeline.gateway):
        found += _personal_data_in(f"{worker.what} log", worker.log.read_bytes())
        found += _personal_data_in(f"{worker.what} /metrics", _metrics_text(worker.port))
    assert found == []
