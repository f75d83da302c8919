"""Several gateway processes without Kafka: the slots' shared memory of requests (a key one slot holds is
answered 409 in_progress by another, then the first's answer), what slot 0 of a gateway started with
fewer processes takes over from the slots that no longer run, and the pure parts (slot folders, the
metrics merged from every slot). Two in-process gateways on one spool folder stand for two processes;
the supervisor and the port they share run in tests/integration/test_gateway_processes.py."""

from __future__ import annotations

import errno
import hashlib
import socket
import sqlite3
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError
from yarl import URL

from services.gateway import processes
from services.gateway.app import GatewaySettings, forwarded_headers
from services.gateway.idempotency import IdempotencyStore
from services.kernel import envelope
from services.kernel.errors import UsageError
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


def test_a_forwarded_inbox_read_carries_every_header_line_in_order_and_nothing_the_caller_did_not_send(
    domain: DemoDomain, tmp_path: Path
) -> None:
    """Slot 0 checks the signature over the headers as they came: a field on two lines stays two lines
    (RFC 9421 joins them), and no header is added or dropped but the hop-by-hop ones."""
    spool = tmp_path / "s"
    one = _slot(domain, spool, 1, 2)
    seen: list[list[tuple[str, str]]] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append(list(request.headers.items()))
        return web.json_response({"path": request.raw_path}, headers={"Cache-Control": "no-store"})

    async def serve_slot_zero() -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/v1/inbox", echo)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.UnixSite(runner, str(processes.control_socket(spool, 0))).start()
        return runner

    runner = one.loop.run_until_complete(serve_slot_zero())
    try:
        path = "/v1/inbox?limit=5&cursor=v1.e30"
        headers = CIMultiDict(one.headers(None, method="GET", path=path))
        headers.add("X-Trace", "a")
        headers.add("X-Trace", "b")
        headers["Keep-Alive"] = "timeout=5"
        headers["Connection"] = "keep-alive, X-Hop"
        headers["X-Hop"] = "dropped"

        async def get() -> tuple[int, str, object]:
            async with (
                aiohttp.ClientSession(skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent")) as s,
                s.get(URL(one.url(path), encoded=True), headers=headers) as response,
            ):
                return response.status, response.headers["Cache-Control"], await response.json()

        assert one.loop.run_until_complete(get()) == (200, "no-store", {"path": path})
        (got,) = seen
        names = [name.lower() for name, _ in got]
        assert [v for n, v in got if n.lower() == "x-trace"] == ["a", "b"]
        assert {"accept", "accept-encoding", "user-agent", "keep-alive", "x-hop"}.isdisjoint(names)
        sent = {k.lower(): v for k, v in headers.items() if k.lower().startswith("signature")}
        assert sent == {n.lower(): v for n, v in got if n.lower().startswith("signature")}
        assert dict(got)["Host"] == f"127.0.0.1:{one.server.port}"
    finally:
        one.loop.run_until_complete(runner.cleanup())
        one.close()


def test_forwarded_headers_keep_repeated_lines_and_drop_hop_by_hop_ones_and_those_connection_names() -> None:
    headers = CIMultiDict(
        [("A", "1"), ("Connection", "close, X-Private"), ("A", "2"), ("X-Private", "p"), ("TE", "t")]
    )
    headers.add("Host", "wrong")
    out = forwarded_headers(headers, host="gw.example:8080")
    assert list(out.items()) == [("A", "1"), ("A", "2"), ("Host", "gw.example:8080")]


def test_a_spool_folder_too_long_for_the_control_sockets_is_refused_as_a_setting(tmp_path: Path) -> None:
    long = tmp_path / ("s" * 120)
    with pytest.raises(ValidationError, match="too long for the processes' control sockets"):
        GatewaySettings(processes=2, spool_dir=long)
    assert GatewaySettings(processes=1, spool_dir=long).processes == 1


def test_adopting_leaves_a_reservation_whose_outbox_is_not_known_as_it_is(tmp_path: Path) -> None:
    store = IdempotencyStore(tmp_path / "i.sqlite", slot=2)
    try:
        for key in ("unknown", "sent", "not-sent"):
            store.reserve("police", key, "d", f"e-{key}")
        answers = {"e-unknown": None, "e-sent": True, "e-not-sent": False}
        done = store.adopt(1, sent=lambda slot, participant, event_id: answers[event_id])
        assert (done.accepted, done.moved) == (1, 1)
        after = {key: store.lookup("police", key) for key in ("unknown", "sent", "not-sent")}
        assert (after["unknown"].slot, after["unknown"].accepted) == (2, False)
        assert after["sent"].accepted
        assert (after["not-sent"].slot, after["not-sent"].accepted) == (0, False)
    finally:
        store.close()


def _bind(port: int, *, reuse_addr: bool = False, reuse_port: bool = False) -> socket.socket | int:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, int(reuse_addr))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, int(reuse_port))
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as e:
        sock.close()
        return e.errno or 0
    return sock


def test_a_reserved_port_takes_the_slots_and_refuses_another_gateway_and_any_other_server() -> None:
    held = processes.reserve("127.0.0.1", 0)
    port = held.getsockname()[1]
    opened: list[socket.socket] = []
    try:
        slot = _bind(port, reuse_addr=True, reuse_port=True)
        assert isinstance(slot, socket.socket), "a slot listens beside the reservation"
        opened.append(slot)
        slot.listen()
        assert _bind(port, reuse_addr=True) == errno.EADDRINUSE, "a one-process gateway"
        with pytest.raises(UsageError, match="cannot bind"):
            processes.reserve("127.0.0.1", port)  # a second gateway of several processes
        slot.close()
        assert _bind(port, reuse_addr=True) == errno.EADDRINUSE, "held while no slot listens"
    finally:
        held.close()
        for sock in opened:
            sock.close()


def test_a_slot_that_keeps_dying_waits_twice_as_long_each_time_up_to_30_s_and_1_s_after_a_long_run() -> None:
    waits = [1.0]
    for _ in range(6):
        waits.append(processes._backoff(waits[-1], ran_s=5))
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert processes._backoff(30.0, ran_s=120) == 1.0
    assert processes._backoff(0.0, ran_s=1) == 1.0


def test_an_inbox_read_another_process_hands_over_is_counted_once_and_its_refusal_once(
    domain: DemoDomain, tmp_path: Path
) -> None:
    """The process the request came to counts the request; slot 0, which refuses it, the refusal."""
    spool = tmp_path / "s"
    zero, one = _slot(domain, spool, 0, 2), _slot(domain, spool, 1, 2)

    async def serve_slot_zero() -> web.AppRunner:
        runner = web.AppRunner(zero.gateway.control_application())
        await runner.setup()
        await web.UnixSite(runner, str(processes.control_socket(spool, 0))).start()
        return runner

    runner = one.loop.run_until_complete(serve_slot_zero())
    try:
        status, _headers, problem = one.send("GET", "/v1/inbox", None, {})
        assert (status, problem["type"].rsplit("/", 1)[1]) == (401, "signature-missing")
        requests = "lianfang_gateway_requests_total"
        labels = {"route": "/v1/inbox", "method": "GET", "status": "401"}
        assert (one.metric(requests, **labels), zero.metric(requests, **labels)) == (1, 0)
        rejected = "lianfang_gateway_rejections_total"
        assert one.metric(rejected, reason="signature_missing") == 0
        assert zero.metric(rejected, reason="signature_missing") == 1
    finally:
        one.loop.run_until_complete(runner.cleanup())
        zero.close()
        one.close()
