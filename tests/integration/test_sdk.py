"""The SDK on the real broker with the router: publish, read back on the recipients' side, follow up,
an event accepted while Kafka is unreachable arrives after a restart of the adapter; every event is
handed out once, an event a recipient cannot open is reported on the dead-letter topic, and each
reader of one inbox (the console, ``lianfang inbox``) reads in its own group."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition

from services.cli.bus import deadletter_rows
from services.kernel import envelope
from services.sdk.client import Client
from tests.integration.buskit import Bus, RegistryChange, RouterProcess
from tests.kit import CONTENT, DemoDomain, RandomKeyFor, header

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bus(kafka_bootstrap: str, live_domain: DemoDomain) -> Bus:
    return Bus.create(kafka_bootstrap, f"t-sdk-{datetime.now(UTC):%H%M%S%f}.", live_domain)


@pytest.fixture(scope="module")
def router(bus: Bus, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    worker = RouterProcess.started(bus, Path(tmp_path_factory.mktemp("router")) / "router.log")
    yield worker
    worker.stop()


def client(
    bus: Bus,
    participant: str,
    tmp_path: Path,
    bootstrap: str | None = None,
    reader: str | None = None,
    **kwargs: Any,
) -> Client:
    return Client(
        keystore=bus.domain.keys(participant),
        registry=bus.domain.registry,
        bootstrap=bootstrap or bus.bootstrap,
        outbox_path=tmp_path / f"{participant}.sqlite",
        topic_prefix=bus.prefix,
        reader=reader,
        **kwargs,
    )


def a_lead(phone: str, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "category": "domestic_violence",
        "channel": "police_call",
        "town": "nancai",
        "victim": {"name": "赵某某", "phone": phone, "is_minor": False, "sex": "female"},
        "suspects": [{"name": "钱某", "phone": "13911112222", "is_minor": False, "relationship": "spouse"}],
        "minor": False,
        "risk_indicators": ["threats_to_kill"],
        "narrative": "丈夫威胁要杀死她。",
        "requests_joint_meeting": False,
    }
    data.update(overrides)
    return data


def read_until(c: Client, event_id: str, timeout: float = 60) -> Any:
    for opened in c.inbox(timeout=timeout):
        if opened.header.id == event_id:
            return opened
    raise AssertionError(f"{c.participant} never received {event_id}")


# ----------------------------------------------- offsets committed together (first: police's inbox empty)


def end_offset(bus: Bus, participant: str, partition: int) -> int:
    tp = TopicPartition(bus.names.inbox(participant), partition)
    reader = KafkaConsumer(bootstrap_servers=bus.bootstrap)
    try:
        return int(reader.end_offsets([tp])[tp])
    finally:
        reader.close()


def test_the_offsets_of_events_handed_out_are_committed_together_when_the_reading_ends_not_after_each(
    bus: Bus, tmp_path: Path
) -> None:
    # These run before any other test of the module writes to police's inbox: one partition holds all.
    sealed = [bus.seal("womens_federation", phone="13866660401") for _ in range(5)]
    bus.produce([(r.key, r.value) for r in sealed], topic=bus.names.inbox("police"), partition=0)
    with client(bus, "police", tmp_path, reader="together", inbox_commit_every_s=3600) as police:
        reading = police.inbox(timeout=3)
        got = [next(reading).header.id for _ in range(4)]  # asked past three of them
        assert bus.inbox_commits(police.inbox_group, "police") == {}, "committed before the reading ended"
        got += [opened.header.id for opened in reading]
        assert bus.inbox_commits(police.inbox_group, "police") == {0: end_offset(bus, "police", 0)}
    assert got == [r.header.id for r in sealed]


def test_a_reader_that_died_hands_out_again_the_event_its_caller_was_handling_and_none_it_had_finished(
    bus: Bus, tmp_path: Path
) -> None:
    sealed = [bus.seal("womens_federation", phone="13866660402") for _ in range(4)]
    bus.produce([(r.key, r.value) for r in sealed], topic=bus.names.inbox("police"), partition=0)
    ids = [r.header.id for r in sealed]
    first = client(bus, "police", tmp_path, reader="died", inbox_commit_every_s=3600)
    reading = first.inbox(timeout=3)
    try:
        while next(reading).header.id != ids[1]:  # finished the events before ids[1], then "dies"
            pass  # while its caller handles ids[1]
        assert first._consumer is not None
        first._consumer.close(autocommit=False)  # nothing it handed out is committed
        assert bus.inbox_commits(first.inbox_group, "police") == {}
        with client(bus, "police", tmp_path, reader="died") as again:  # same group, same record of ids
            skipped = again.metrics.duplicates_skipped._value.get()
            got = [opened.header.id for opened in again.inbox(timeout=3)]
            assert again.metrics.duplicates_skipped._value.get() - skipped >= 1  # ids[0], and earlier
    finally:
        reading.close()
        first.close()
    assert got == ids[1:], "the event in hand comes again, under its id; the finished one does not"


def test_a_lead_published_with_the_sdk_is_opened_by_each_recipient_and_by_no_one_else(
    bus: Bus, router: RouterProcess, tmp_path: Path
) -> None:
    with client(bus, "police", tmp_path) as police:
        lead_id = police.publish_lead(a_lead("13822223333"))
        assert police.flush(30)
    bus.wait_for(lambda: sum(c.get(lead_id, 0) for c in bus.inbox_ids().values()) == 4, what="4 copies")
    holders = {p for p, counts in bus.inbox_ids().items() if counts.get(lead_id)}
    assert holders == {"police", "womens_federation", "mediation.nancai", "hub"}
    with client(bus, "mediation.nancai", tmp_path) as room:
        opened = read_until(room, lead_id)
    assert opened.header.urgency == "immediate", "a threat to kill makes a lead immediate"
    assert opened.sections["details"]["victim"]["name"] == "赵某某"
    assert opened.sections["triage"]["suspect_pseudonyms"], "the suspect is linked by pseudonym"
    with client(bus, "hub", tmp_path) as hub:
        assert set(read_until(hub, lead_id).sections) == {"triage"}
    for recipient in ("police", "womens_federation"):  # the sender's own copy too
        with client(bus, recipient, tmp_path, reader="each") as reader:
            assert read_until(reader, lead_id).sections["details"]["victim"]["name"] == "赵某某"


def test_an_event_whose_handler_failed_is_read_again_by_the_next_reader(
    bus: Bus, router: RouterProcess, tmp_path: Path
) -> None:
    with client(bus, "police", tmp_path) as police:
        lead_id = police.publish_lead(a_lead("13833334444", town="beiwu"))
        police.flush(30)
    with (
        client(bus, "mediation.beiwu", tmp_path) as room,
        pytest.raises(RuntimeError, match="handler failed"),
    ):
        for opened in room.inbox(timeout=60):
            assert opened.header.id == lead_id
            raise RuntimeError("handler failed")
    with client(bus, "mediation.beiwu", tmp_path) as again:
        assert next(again.inbox(timeout=60)).header.id == lead_id


def test_a_follow_up_reaches_the_lead_s_recipients_and_refers_to_the_lead(
    bus: Bus, router: RouterProcess, tmp_path: Path
) -> None:
    with client(bus, "police", tmp_path) as police, client(bus, "womens_federation", tmp_path) as wf:
        lead_id = police.publish_lead(a_lead("13844445555", town="lisui"))
        police.flush(30)
        lead = read_until(wf, lead_id)
        ack_id = wf.acknowledge(lead)
        resolved_id = wf.resolve(lead, outcome="resolved", satisfaction="satisfied")
        wf.flush(30)
        ack = read_until(police, ack_id)
        resolved = read_until(police, resolved_id)
    assert ack.header.type == "lead.acknowledged"
    assert ack.header.refs == [lead_id]
    assert ack.header.subject == lead.header.subject
    assert resolved.sections["triage"]["satisfaction"] == "satisfied"


CLOSE_BOUND_S = 45.0
"""Closing a client while Kafka is unreachable waits for its background senders' bounded first
connection attempt (:data:`services.bus.cluster.BACKGROUND_BOOTSTRAP_TIMEOUT_MS`, a few seconds), not for
kafka-python's own default, a minute: the bound tells the two apart with room for any loaded machine."""


def test_an_event_accepted_while_kafka_is_unreachable_arrives_after_the_adapter_restarts_and_the_offline_client_closes_within_the_bound(
    bus: Bus, router: RouterProcess, tmp_path: Path
) -> None:
    with socket.socket() as s:  # a port nobody listens on: the broker is "down"
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    offline = client(bus, "police", tmp_path, bootstrap=dead)
    lead_id = offline.publish_lead(a_lead("13855556666", town="mulin"))
    assert offline.outbox.depth() == 1, "accepted means on disk"
    assert offline.flush(timeout=2) is False
    started = time.monotonic()
    offline.close()
    took = time.monotonic() - started
    assert took < CLOSE_BOUND_S, f"closing a client without Kafka took {took:.0f} s"

    with client(bus, "police", tmp_path) as restarted:  # same outbox file, broker reachable
        assert restarted.flush(60)
    bus.wait_for(lambda: bus.inbox_ids()["mediation.mulin"].get(lead_id) == 1, what="the spooled lead")


# --------------------------------------------------------------------------- each event once, and visibly


def read_through(c: Client, last_id: str, timeout: float = 60) -> list[str]:
    """The ids ``c`` hands out, in order, up to and including ``last_id``."""
    got = []
    for opened in c.inbox(timeout=timeout):
        got.append(opened.header.id)
        if opened.header.id == last_id:
            return got
    raise AssertionError(f"{c.participant} never received {last_id}; got {got}")


def test_an_event_delivered_twice_to_the_inbox_is_handed_out_once_by_the_sdk(
    bus: Bus, router: RouterProcess, tmp_path: Path
) -> None:
    # One subject: one key, one partition, so the inbox holds them in this order.
    twice = bus.seal("womens_federation", phone="13866660001")
    after = bus.seal("womens_federation", phone="13866660001")
    # A second copy in the inbox, as a crash of a reader before its commit or a slipped duplicate makes.
    bus.produce([(twice.key, twice.value), (twice.key, twice.value), (after.key, after.value)],
                topic=bus.names.inbox("police"))  # fmt: skip
    with client(bus, "police", tmp_path, reader="twice") as police:
        got = read_through(police, after.header.id)
        skipped = police.metrics.duplicates_skipped._value.get()
    assert got.count(twice.header.id) == 1
    assert skipped >= 1
    with client(bus, "police", tmp_path, reader="twice") as restarted:  # same group, same ids file
        assert twice.header.id not in [o.header.id for o in restarted.inbox(timeout=5)]


def test_an_event_sealed_with_a_random_key_for_police_reaches_the_dead_letter_topic_as_unreadable_and_the_next_lead_is_still_read(
    bus: Bus, router: RouterProcess, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    h = header(source="urn:lianfang:womens_federation", id=envelope.new_event_id(), time=now,
               subject=bus.domain.subject("13866660003"))  # fmt: skip
    unreadable = envelope.seal(
        h, CONTENT, registry=bus.domain.registry, signer=bus.domain.keys("womens_federation"),
        entropy=RandomKeyFor("police"),
    )  # fmt: skip
    next_lead = bus.seal("womens_federation", phone="13866660003")  # same subject: read after it
    bus.publish([unreadable, next_lead])
    with client(bus, "police", tmp_path, reader="random-key") as police:
        got = read_through(police, next_lead.header.id)
        refused = police.metrics.inbox_rejected.labels("decrypt_failed")._value.get()
    assert unreadable.header.id not in got, "the router routed it; police could not open it"
    assert refused >= 1

    def problem() -> dict[str, bytes] | None:
        for record in bus.deadletters():
            headers = dict(record.headers)
            if headers.get("lianfang_event_id") == h.id.encode():
                assert record.value == b"", "a problem record holds no content"
                return headers
        return None

    headers = bus.wait_for(problem, 30, "the problem record")
    assert headers["lianfang_reason"] == b"decrypt_failed"
    assert headers["lianfang_sender"] == b"womens_federation"
    assert headers["lianfang_reader"] == b"police/random-key"
    assert headers["lianfang_source_topic"] == bus.names.inbox("police").encode()
    row = next(r for r in deadletter_rows(bus.bootstrap, bus.names.deadletter) if r.get("event_id") == h.id)
    assert (row["reason"], row["sender"], row["reader"]) == (
        "decrypt_failed",
        "womens_federation",
        "police/random-key",
    )


def test_the_console_and_lianfang_inbox_read_the_coordinators_inbox_at_once_and_each_gets_every_alert(
    bus: Bus, router: RouterProcess, tmp_path: Path
) -> None:
    alerts = [
        bus.seal("hub", phone=f"1386666010{i}", type="joint_meeting.alert", schema="joint_meeting.alert/1")
        for i in range(4)
    ]
    ids = bus.publish(alerts)
    cli = subprocess.Popen(  # `lianfang inbox --as coordinators`, as the make run banner suggests
        [sys.executable, "-m", "services", "inbox", "--as", "coordinators", "--limit", "4",
         "--home", str(bus.domain.home), "--bootstrap", bus.bootstrap, "--topic-prefix", bus.prefix],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ},
    )  # fmt: skip
    try:
        with client(bus, "coordinators", tmp_path, reader="console") as console:  # the console's reader
            seen = [o.header.id for o in console.inbox(timeout=30, max_records=4)]
        out, err = cli.communicate(timeout=120)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert sorted(seen) == sorted(ids), "the console got every alert"
    assert cli.returncode == 0, err
    assert all(event_id in out for event_id in ids), f"lianfang inbox got every alert:\n{out}\n{err}"


def test_an_sdk_client_opened_before_a_rotation_reads_the_lead_signed_with_the_new_key(
    bus: Bus, router: RouterProcess, tmp_path: Path
) -> None:
    with Client.open(
        participant="womens_federation",
        home=bus.domain.home,
        bootstrap=bus.bootstrap,
        outbox_path=tmp_path / "wf-long-lived.sqlite",
        topic_prefix=bus.prefix,
    ) as reader:
        before = reader.registry.version
        for _opened in reader.inbox(timeout=1):  # reading already, with the registry of before
            pass
        rotated, health = RegistryChange.rotation(bus.domain, "health")
        bus.produce([(b"registry", rotated.data)], topic=bus.names.registry)
        version = rotated.registry.version
        bus.wait_for(
            lambda: router.metric("lianfang_registry_version", service="router") == version,
            30,
            "the router's v2",
        )
        with Client(
            keystore=health,
            registry=rotated.registry,
            bootstrap=bus.bootstrap,
            outbox_path=tmp_path / "health-rotated.sqlite",
            topic_prefix=bus.prefix,
            # The session's pseudonymizer does not follow this bus's registry (it would not know the
            # new key yet): the key's holder computes the pseudonyms here.
            pseudonymizer=bus.domain.pseudonymizer(),
        ) as sender:
            lead_id = sender.publish_lead(a_lead("13866667777", town="nancai"))
            assert sender.flush(30)
        lead = read_until(reader, lead_id)
        assert lead.header.sender == "health"
        assert reader.registry.version == version > before
