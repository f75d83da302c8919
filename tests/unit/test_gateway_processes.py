"""Several gateway processes without Kafka: the slots' shared memory of requests (a key one slot holds is
answered 409 in_progress by another, then the first's answer), what slot 0 of a gateway started with
fewer processes takes over from the slots that no longer run, and the pure parts (slot folders, the
metrics merged from every slot). Two in-process gateways on one spool folder stand for two processes;
the supervisor and the port they share run in tests/integration/test_gateway_processes.py."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from services.gateway import processes
from services.gateway.app import GatewaySettings
from services.gateway.idempotency import IdempotencyStore
from services.kernel import envelope
from tests.kit import DemoDomain
from tests.unit.test_gateway_http import Harness, body_of, lead

pytestmark = pytest.mark.unit


def _slot(domain: DemoDomain, spool: Path, slot: int, of: int) -> Harness:
    return Harness(domain, spool, slot=slot, processes=of)


def _digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def test_a_retry_that_reaches_another_process_while_the_first_holds_the_key_is_409_in_progress_then_gets_the_first_answer(
    domain: DemoDomain, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    zero, one = _slot(domain, spool, 0, 2), _slot(domain, spool, 1, 2)
    try:
        body = body_of()
        # Slot 1 has reserved the key (durably) and not yet put the event into its outbox.
        reserved = one.gateway.idempotency.reserve(
            "police", "key:k-1", _digest(body), envelope.new_event_id()
        )
        status, headers, problem = zero.send(
            "POST", "/v1/events", body, zero.headers(body, idempotency_key="k-1")
        )
        assert status == 409
        assert problem["type"].endswith("/in-progress")
        assert headers["Retry-After"] == "1"
        assert headers["Connection"] == "close"
        assert zero.depth() == 0, "slot 0 sealed nothing"
        assert zero.metric("lianfang_gateway_rejections_total", reason="in_progress") == 1

        assert one.post(body, idempotency_key="k-1") == (202, {"event_id": reserved.event_id})
        assert one.depth() == 1
        assert zero.post(body, idempotency_key="k-1") == (202, {"event_id": reserved.event_id})
        assert zero.depth() == 0, "the first answer again, no second event"
    finally:
        zero.close()
        one.close()


def test_a_key_another_process_reserved_after_this_one_looked_it_up_is_409_and_this_one_seals_nothing(
    domain: DemoDomain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = tmp_path / "spool"
    zero, one = _slot(domain, spool, 0, 2), _slot(domain, spool, 1, 2)
    try:
        body = body_of()
        first = one.gateway.idempotency.reserve("police", "key:k-2", _digest(body), envelope.new_event_id())
        # Slot 0 looked before slot 1 reserved: its own reservation then finds slot 1's.
        monkeypatch.setattr(zero.gateway.idempotency, "lookup", lambda participant, key: None)
        status, answer = zero.post(body, idempotency_key="k-2")
        assert (status, answer["type"].rsplit("/", 1)[1]) == (409, "in-progress")
        status, answer = zero.post(body_of(lead(narrative="另一份报告。")), idempotency_key="k-2")
        assert (status, answer["type"].rsplit("/", 1)[1]) == (409, "idempotency-conflict")
        assert zero.depth() == 0
        assert one.gateway.idempotency.lookup("police", "key:k-2") == first
    finally:
        zero.close()
        one.close()


def test_slot_zero_of_a_gateway_started_with_fewer_processes_sends_and_completes_what_a_stopped_slot_left(
    domain: DemoDomain, tmp_path: Path
) -> None:
    """Slot 1 of two leaves: an accepted lead in its outbox; one in its outbox whose key was never
    marked (a crash between the two); one key reserved whose lead never reached the outbox. One process
    then runs on the spool."""
    spool = tmp_path / "spool"
    one = _slot(domain, spool, 1, 2)
    accepted, unmarked, reserved_only = (body_of(lead(narrative=f"第{i}份报告。")) for i in range(3))
    try:
        _, first = one.post(accepted, idempotency_key="accepted")
        _, second = one.post(unmarked, idempotency_key="unmarked")
        third = one.gateway.idempotency.reserve(
            "police", "key:reserved", _digest(reserved_only), envelope.new_event_id()
        )
    finally:
        one.close()
    with sqlite3.connect(spool / "idempotency.sqlite") as db:
        db.execute("UPDATE requests SET accepted = 0 WHERE key = 'key:unmarked'")

    alone = Harness(domain, spool)  # one process: slot 0
    try:
        (adopted,) = (c for c in alone.gateway.adopted if c.participant == "police")
        assert adopted.outbox.depth() == 2, "slot 1's outbox is drained by slot 0's gateway"
        assert alone.metric("lianfang_gateway_outbox_depth", participant="police") == 2
        store = alone.gateway.idempotency
        assert store.lookup("police", "key:unmarked").accepted, "its lead was in slot 1's outbox"
        assert store.lookup("police", "key:reserved").slot == 0, "slot 0's to complete"

        assert alone.post(unmarked, idempotency_key="unmarked") == (202, second)
        assert alone.post(accepted, idempotency_key="accepted") == (202, first)
        assert alone.depth() == 0, "neither sealed again"
        assert alone.post(reserved_only, idempotency_key="reserved") == (202, {"event_id": third.event_id})
        assert [p.event_id for p in alone.gateway.clients["police"].outbox.pending()] == [third.event_id]
    finally:
        alone.close()


def test_a_store_written_before_there_were_slots_reads_its_reservations_as_slot_zeros(tmp_path: Path) -> None:
    path = tmp_path / "idempotency.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE requests (participant TEXT NOT NULL, key TEXT NOT NULL, digest TEXT NOT NULL,"
            " event_id TEXT NOT NULL, accepted INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL,"
            " PRIMARY KEY (participant, key))"
        )
        db.execute("INSERT INTO requests VALUES ('police', 'key:old', 'd', 'e-1', 0, 1.0)")
    store = IdempotencyStore(path, slot=1)
    try:
        remembered = store.lookup("police", "key:old")
        assert remembered is not None
        assert (remembered.event_id, remembered.slot) == ("e-1", 0)
        assert store.reserve("police", "key:new", "d", "e-2").slot == 1
    finally:
        store.close()


def test_a_slot_must_be_one_of_the_processes() -> None:
    with pytest.raises(ValidationError, match="not one of 2 processes"):
        GatewaySettings(processes=2, slot=2)
    assert GatewaySettings(processes=2, slot=1).slot == 1


def test_slot_zero_keeps_the_spool_folder_and_the_others_have_folders_in_it(tmp_path: Path) -> None:
    assert processes.slot_dir(tmp_path, 0) == tmp_path
    assert processes.slot_dir(tmp_path, 3) == tmp_path / "slot-3"
    assert processes.control_socket(tmp_path, 1) == tmp_path / "slot-1" / "gateway.sock"


def test_the_slots_left_behind_are_the_folders_numbered_from_the_processes_up(tmp_path: Path) -> None:
    for name in ("slot-1", "slot-2", "slot-7", "slot-x", "slot-03", "slot-"):
        (tmp_path / name).mkdir()
    (tmp_path / "slot-4").write_text("a file, not a spool")
    assert processes.orphaned_slots(tmp_path, 2) == [2, 7]
    assert processes.orphaned_slots(tmp_path, 8) == []


def _exposition(accepted: float, depth: float, latencies: list[float]) -> str:
    registry = CollectorRegistry()
    Counter("demo_accepted", "Accepted.", ["participant"], registry=registry).labels("police").inc(accepted)
    Gauge("demo_depth", "Depth.", registry=registry).set(depth)
    histogram = Histogram("demo_latency_seconds", "Latency.", buckets=(0.1, 1.0), registry=registry)
    for latency in latencies:
        histogram.observe(latency)
    return generate_latest(registry).decode()


def test_the_merged_metrics_hold_every_slots_samples_labelled_by_slot_under_one_help_and_type() -> None:
    merged = processes.merge_metrics(
        {1: _exposition(3, 7, [0.05, 2.0]), 0: _exposition(2, 1, [0.5])}
    ).decode()
    assert merged.count("# TYPE demo_accepted_total counter") == 1
    assert merged.count("# HELP demo_latency_seconds Latency.") == 1
    families = {f.name: f for f in text_string_to_metric_families(merged)}
    accepted = {
        s.labels["slot"]: s.value
        for s in families["demo_accepted"].samples
        if s.name == "demo_accepted_total"
    }
    assert accepted == {"0": 2.0, "1": 3.0}
    assert {s.labels["slot"]: s.value for s in families["demo_depth"].samples} == {"0": 1.0, "1": 7.0}
    counts = {
        s.labels["slot"]: s.value
        for s in families["demo_latency_seconds"].samples
        if s.name == "demo_latency_seconds_count"
    }
    assert counts == {"0": 1.0, "1": 2.0}
    assert all(
        s.labels.get("participant") == "police"
        for s in families["demo_accepted"].samples
        if s.name == "demo_accepted_total"
    )
