"""The HTTP gateway on a real broker, with the router: a signed lead reaches exactly the policy's
recipients, who read it with the SDK; each bad request gets its status and problem body; an event
accepted just before a SIGKILL arrives after the restart; a broker outage in the middle of a few
hundred requests loses nothing and duplicates nothing; the inbox endpoint and the webhook hand a copied
event out once and report one the participant cannot open. Gateway and router run as child processes."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from deploy.kafka.local import LocalKafka, running
from services.audit.chain import AuditEntry, parse_line
from services.audit.trail import read_file
from services.gateway import httpsig
from services.gateway.client import signed_headers
from services.gateway.inbox import decode_cursor
from services.kernel import envelope, policy
from services.kernel.keystore import Keystore
from services.sdk.client import Client
from tests.integration.buskit import Bus, RegistryChange
from tests.kit import CONTENT, DemoDomain, RandomKeyFor
from tests.kit import header as clear_header
from tests.workers import Worker, free_port

pytestmark = pytest.mark.integration

SERVED = "police,womens_federation"


class RouterProcess(Worker):
    def __init__(self, bus: Bus, log: Path) -> None:
        port = free_port()
        super().__init__(
            "services.router",
            {
                "LIANFANG_BOOTSTRAP": bus.bootstrap,
                "LIANFANG_HOME": str(bus.domain.home),
                "LIANFANG_ROUTER_TOPIC_PREFIX": bus.prefix,
                "LIANFANG_ROUTER_GROUP_ID": f"{bus.prefix}router",
                "LIANFANG_ROUTER_METRICS_PORT": str(port),
            },
            log,
            port=port,
        )

    def wait_ready(self, bus: Bus) -> None:
        bus.wait_for(lambda: self.metric("lianfang_registry_version", service="router"), 60, "router start")


class GatewayProcess(Worker):
    """``python -m services.gateway`` on a free port, serving police and the women's federation."""

    def __init__(
        self,
        bus: Bus,
        spool: Path,
        log: Path,
        *,
        bootstrap: str | None = None,
        webhooks: str = "",
        served: str = SERVED,
        **env: str,
    ) -> None:
        port = free_port()
        self.domain = bus.domain
        self.spool = spool
        super().__init__(
            "services.gateway",
            {
                "LIANFANG_BOOTSTRAP": bootstrap or bus.bootstrap,
                "LIANFANG_HOME": str(bus.domain.home),
                "LIANFANG_GATEWAY_PARTICIPANTS": served,
                "LIANFANG_GATEWAY_PORT": str(port),
                "LIANFANG_GATEWAY_SPOOL_DIR": str(spool),
                "LIANFANG_GATEWAY_TOPIC_PREFIX": bus.prefix,
                "LIANFANG_GATEWAY_WEBHOOKS": webhooks,
                **env,
            },
            log,
            port=port,
        )

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, bus: Bus) -> None:
        bus.wait_for(
            lambda: (
                self.alive()
                and self.metric("lianfang_gateway_outbox_depth", participant="police") is not None
            ),
            60,
            f"gateway start:\n{self.tail()}",
        )

    def signed(
        self,
        method: str,
        path: str,
        body: bytes | None,
        *,
        sender: str = "police",
        key: Keystore | None = None,
        **kw: Any,
    ) -> dict[str, str]:
        store = key or self.domain.keys(sender)
        return signed_headers(store, next(iter(store.signing)), method, self.base + path, body, **kw)

    def request(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, Any]:
        req = urllib.request.Request(self.base + path, data=body, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        return status, json.loads(raw) if raw else None

    def post(self, body: bytes, *, sender: str = "police", **kw: Any) -> tuple[int, Any]:
        return self.request(
            "POST", "/v1/events", body, self.signed("POST", "/v1/events", body, sender=sender, **kw)
        )


def lead_body(
    phone: str, *, town: str = "mapo", name: str = "赵某某", narrative: str = "丈夫多次殴打, 邻居报警。"
) -> bytes:
    event = {
        "category": "domestic_violence",
        "channel": "hotline_12338",
        "town": town,
        "victim": {"name": name, "phone": phone, "is_minor": False},
        "suspects": [{"name": "钱某", "is_minor": False, "relationship": "spouse"}],
        "minor": False,
        "risk_indicators": ["escalation"],
        "narrative": narrative,
        "requests_joint_meeting": False,
    }
    return json.dumps({"type": "lead.reported", "event": event}, ensure_ascii=False).encode()


def _headers_by_id(bus: Bus, ids: set[str]) -> dict[str, Any]:
    """The clear header of each of these events, read back from the events topic."""
    records = bus.read_all([bus.names.events])[bus.names.events]
    out = {}
    for record in records:
        event_id = dict(record.headers).get("ce_id", b"").decode()
        if event_id in ids:
            out[event_id] = envelope.parse(record.value)[4]
    return out


def _expected(bus: Bus, header: Any) -> set[str]:
    return set().union(*policy.recipients(bus.domain.registry.document.policy, header).values())


def _delivered_exactly_once(bus: Bus, ids: set[str]) -> bool:
    """True once every event is exactly once in each inbox the policy names and nowhere else; fails at
    once on a duplicate or a misdelivery (waiting cannot repair those)."""
    headers = _headers_by_id(bus, ids)
    if set(headers) != ids:
        return False
    got = bus.inbox_ids()
    complete = True
    for event_id, header in headers.items():
        expected = _expected(bus, header)
        for participant, counts in got.items():
            n = counts.get(event_id, 0)
            assert n <= 1, f"{event_id} reached {participant} {n} times"
            assert participant in expected or n == 0, f"{event_id} reached {participant}, not a recipient"
            if participant in expected and n == 0:
                complete = False
    return complete


# --------------------------------------------------------------------------- a webhook receiver


class Receiver:
    """A small HTTP server standing in for police's own system: it refuses the first attempts with 503
    and records what it accepted, after checking the RFC 9421 signature with police's public key."""

    def __init__(self, domain: DemoDomain, fail_first: int = 2) -> None:
        self.domain = domain
        self.fail_first = fail_first
        self.attempts = 0
        self.accepted: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.bad_signatures = 0
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the webhook receiver did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self.loop.run_forever()

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.attempts += 1
        message = httpsig.Message("POST", self.url, tuple(request.headers.items()))
        try:
            sig = httpsig.parse_signature(message, tag=httpsig.WEBHOOK_TAG)
            public = self.domain.registry.signing_key("police", sig.keyid, at=datetime.now(UTC))
            httpsig.verify_signature(
                message, sig, public, now=time.time(),
                required=["@method", "@target-uri", "content-digest", "content-type", "idempotency-key"],
            )  # fmt: skip
            httpsig.check_content_digest(request.headers.get("Content-Digest"), body)
        except Exception:
            self.bad_signatures += 1
            return web.Response(status=401)
        if self.attempts <= self.fail_first:
            return web.Response(status=503)
        self.accepted.append((dict(request.headers), json.loads(body)))
        return web.Response(status=204)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def bus(kafka_bootstrap: str, live_domain: DemoDomain) -> Bus:
    return Bus.create(kafka_bootstrap, f"t-gw-{datetime.now(UTC):%H%M%S%f}.", live_domain)


@pytest.fixture(scope="module")
def router(bus: Bus, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    worker = RouterProcess(bus, Path(tmp_path_factory.mktemp("router")) / "router.log")
    worker.wait_ready(bus)
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def receiver(live_domain: DemoDomain) -> Iterator[Receiver]:
    r = Receiver(live_domain)
    yield r
    r.close()


@pytest.fixture(scope="module")
def gateway(
    bus: Bus, router: RouterProcess, receiver: Receiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    folder = Path(tmp_path_factory.mktemp("gateway"))
    process = GatewayProcess(bus, folder / "spool", folder / "gateway.log", webhooks=f"police={receiver.url}")
    process.wait_ready(bus)
    yield process
    process.stop()


# --------------------------------------------------------------------------- a lead end to end


def test_a_signed_lead_reaches_exactly_the_policys_recipients_who_read_it_with_the_sdk(
    bus: Bus, gateway: GatewayProcess, tmp_path: Path
) -> None:
    status, answer = gateway.post(lead_body("13700000001", town="mapo", name="孙某某"))
    assert status == 202, answer
    event_id = answer["event_id"]
    bus.wait_for(lambda: _delivered_exactly_once(bus, {event_id}), 90, "delivery")
    holders = {p for p, counts in bus.inbox_ids().items() if counts.get(event_id)}
    assert holders == {"police", "womens_federation", "mediation.mapo", "hub"}

    for participant in sorted(holders):
        client = Client(
            keystore=bus.domain.keys(participant),
            registry=bus.domain.registry,
            bootstrap=bus.bootstrap,
            outbox_path=tmp_path / f"{participant}.sqlite",
            topic_prefix=bus.prefix,
            start=False,
        )
        try:
            opened = next((o for o in client.inbox(timeout=20) if o.header.id == event_id), None)
        finally:
            client.close()
        assert opened is not None, f"{participant} did not read the lead with the SDK"
        assert opened.header.source == "urn:lianfang:police"
        if participant == "hub":
            assert set(opened.sections) == {"triage"}, "the hub reads triage only"
            assert opened.sections["triage"]["category"] == "domestic_violence"
        else:
            assert opened.sections["details"]["victim"]["name"] == "孙某某"


def test_the_inbox_endpoint_pages_with_a_cursor_and_the_webhook_pushes_signed_events(
    bus: Bus, gateway: GatewayProcess, receiver: Receiver
) -> None:
    ids = []
    for i in range(3):
        status, answer = gateway.post(lead_body(f"1370000010{i}", name="周某某"))
        assert status == 202
        ids.append(answer["event_id"])
    bus.wait_for(lambda: _delivered_exactly_once(bus, set(ids)), 90, "delivery")

    seen: list[str] = []
    cursor = None
    for _ in range(50):
        path = "/v1/inbox?limit=2" + (f"&cursor={cursor}" if cursor else "")
        status, page = gateway.request(
            "GET", path, None, gateway.signed("GET", path, None, sender="womens_federation")
        )
        assert status == 200, page
        decode_cursor(page["cursor"])
        seen += [e["header"]["id"] for e in page["events"]]
        assert all(set(e) == {"header", "sections", "context"} for e in page["events"])
        cursor = page["cursor"]
        if not page["more"] and set(ids) <= set(seen):
            break
    assert len(seen) == len(set(seen)), "a cursor never returns an event twice"
    assert set(ids) <= set(seen)

    status, problem = gateway.request(
        "GET", "/v1/inbox?cursor=nonsense", None, gateway.signed("GET", "/v1/inbox?cursor=nonsense", None)
    )
    assert status == 400
    assert problem["type"].endswith("/invalid-cursor")
    status, problem = gateway.request("GET", "/v1/inbox", None, {})
    assert status == 401

    bus.wait_for(
        lambda: set(ids) <= {b["header"]["id"] for _h, b in receiver.accepted}, 90, "webhook deliveries"
    )
    assert receiver.bad_signatures == 0
    assert receiver.attempts > len(receiver.accepted), "the first attempts were refused and retried"
    headers, pushed = next((h, b) for h, b in receiver.accepted if b["header"]["id"] == ids[0])
    assert headers["Idempotency-Key"] == ids[0]
    assert pushed["sections"]["details"]["victim"]["name"] == "周某某"
    assert pushed["context"]["lead_id"] == ids[0]
    assert (
        gateway.metric(
            "lianfang_gateway_webhook_attempt_failures_total", participant="police", outcome="status_5xx"
        )
        or 0
    ) >= 2
    # Each event the inbox endpoint or the webhook opened is in the participant's audit chain.
    for participant in ("womens_federation", "police"):
        opened = {
            (e.object or "").split("/")[0]
            for path in (gateway.spool / "audit" / participant).glob("*.audit.jsonl")
            for e in map(parse_line, read_file(path))
            if isinstance(e, AuditEntry) and e.action == "open_section"
        }
        assert set(ids) <= opened, participant


def test_the_inbox_endpoint_and_the_webhook_hand_a_copied_event_out_once_and_report_an_unreadable_one(
    bus: Bus, gateway: GatewayProcess, receiver: Receiver
) -> None:
    twice = bus.seal("womens_federation", phone="13700000301")
    h = clear_header(source="urn:lianfang:womens_federation", id=envelope.new_event_id(), time=datetime.now(UTC),
               subject=bus.domain.subject("13700000301"))  # fmt: skip
    unreadable = envelope.seal(
        h, CONTENT, registry=bus.domain.registry, signer=bus.domain.keys("womens_federation"),
        entropy=RandomKeyFor("police"),
    )  # fmt: skip
    after = bus.seal("womens_federation", phone="13700000301")  # twice's subject: after it in its partition
    records = [(r.key, r.value) for r in (unreadable, twice, twice, after)]
    bus.produce(records, topic=bus.names.inbox("police"))  # the second copy is a duplicate in the inbox

    def read_pages(cursor: str | None = None) -> list[str]:
        seen: list[str] = []
        for _ in range(100):
            path = "/v1/inbox?limit=50" + (f"&cursor={cursor}" if cursor else "")
            status, page = gateway.request("GET", path, None, gateway.signed("GET", path, None))
            assert status == 200, page
            seen += [e["header"]["id"] for e in page["events"]]
            cursor = page["cursor"]
            if after.header.id in seen and not page["more"]:
                return seen
        raise AssertionError(f"police's inbox never showed {after.header.id}")

    seen = read_pages()
    assert seen.count(twice.header.id) == 1
    assert h.id not in seen
    assert read_pages().count(twice.header.id) == 1, "a cursor replayed from the start returns it again, once"

    accepted = bus.wait_for(
        lambda: [b["header"]["id"] for _h, b in receiver.accepted] if any(
            b["header"]["id"] == after.header.id for _h, b in receiver.accepted) else None,
        90, "the webhook's delivery of the last event",
    )  # fmt: skip
    assert accepted.count(twice.header.id) == 1
    assert h.id not in accepted

    def problems() -> set[bytes] | None:
        readers = {
            dict(r.headers).get("lianfang_reader", b"")
            for r in bus.deadletters()
            if dict(r.headers).get("lianfang_event_id") == h.id.encode()
        }
        return readers if {b"police/gateway-inbox", b"police/webhook"} <= readers else None

    assert bus.wait_for(problems, 30, "a problem record from each reader") == {
        b"police/gateway-inbox",
        b"police/webhook",
    }, "once per reader, though the inbox endpoint met the record twice"
    for reader in ("inbox", "webhook"):
        assert (gateway.metric("lianfang_gateway_inbox_duplicates_skipped_total", reader=reader) or 0) >= 1
    assert (gateway.metric("lianfang_gateway_inbox_rejected_total", reason="decrypt_failed") or 0) == 2


# --------------------------------------------------------------------------- refusals on the real service


def test_each_bad_request_gets_its_status_and_problem_body(bus: Bus, gateway: GatewayProcess) -> None:
    def problem(status: int, answer: Any, expected: int, kind: str) -> dict[str, Any]:
        assert status == expected, answer
        assert answer["type"] == f"https://lianfang.example/problems/{kind}"
        assert answer["status"] == expected
        return dict(answer)

    problem(*gateway.post(b'{"type": "lead.reported", "event": '), 400, "malformed-json")

    wrong = json.loads(lead_body("13700000200", name="吴某某"))
    wrong["event"]["victim"]["is_minor"] = "yes"
    wrong["event"]["town"] = 7
    answer = problem(*gateway.post(json.dumps(wrong).encode()), 422, "invalid-request")
    assert {"/event/victim/is_minor", "/event/town"} <= {e["pointer"] for e in answer["errors"]}
    assert "吴某某" not in json.dumps(answer, ensure_ascii=False)

    stranger = Keystore.generate("stranger")
    problem(*gateway.post(lead_body("13700000201"), key=stranger), 401, "unknown-key")

    body = lead_body("13700000202")
    headers = gateway.signed("POST", "/v1/events", body)
    headers["Signature"] = (
        headers["Signature"][:10]
        + ("A" if headers["Signature"][10] != "A" else "B")
        + headers["Signature"][11:]
    )
    problem(*gateway.request("POST", "/v1/events", body, headers), 401, "signature-invalid")

    problem(*gateway.post(lead_body("13700000203"), sender="health"), 403, "not-served")

    big = lead_body("13700000204", narrative="很" * 90_000)
    problem(*gateway.post(big), 413, "too-large")

    first = gateway.post(lead_body("13700000205"), idempotency_key="gw-key-1")
    assert first[0] == 202
    problem(*gateway.post(lead_body("13700000206"), idempotency_key="gw-key-1"), 409, "idempotency-conflict")
    again = gateway.post(lead_body("13700000205"), idempotency_key="gw-key-1")
    assert again == first, "the same key and body get the same 202 and event id"

    bus.wait_for(lambda: _delivered_exactly_once(bus, {first[1]["event_id"]}), 90, "the idempotent lead")
    assert bus.inbox_ids()["police"][first[1]["event_id"]] == 1
    assert (gateway.metric("lianfang_gateway_rejections_total", reason="too_large") or 0) >= 1


def test_a_revocation_published_while_the_gateway_runs_refuses_a_request_signed_with_the_revoked_key_within_seconds(
    kafka_bootstrap: str, live_domain: DemoDomain, tmp_path: Path
) -> None:
    own = Bus.create(kafka_bootstrap, f"t-gw-revoke-{datetime.now(UTC):%H%M%S%f}.", live_domain)
    gateway = GatewayProcess(own, tmp_path / "spool", tmp_path / "gateway.log", served="police")
    try:
        gateway.wait_ready(own)
        assert gateway.post(lead_body("13700000301"))[0] == 202, "police's key is good before"
        (kid,) = live_domain.keys("police").signing
        revoked = RegistryChange.revocation(live_domain, "police", kid)
        own.produce([(b"registry", revoked.data)], topic=own.names.registry)
        status, answer = own.wait_for(
            lambda: (r := gateway.post(lead_body("13700000302")))[0] != 202 and r, 10, "the revocation"
        )
        assert (status, answer["type"]) == (401, "https://lianfang.example/problems/key-revoked"), answer
        # The gauge is set just after the new registry is in force: poll it, do not race it.
        own.wait_for(
            lambda: (
                gateway.metric("lianfang_registry_version", service="gateway") == revoked.registry.version
            ),
            10,
            "the gateway's registry version gauge",
        )
        assert gateway.alive(), "no restart"
    finally:
        gateway.stop()


# --------------------------------------------------------------------------- crashes and outages


def test_events_accepted_right_before_a_sigkill_arrive_after_the_restart(
    bus: Bus, router: RouterProcess, tmp_path: Path
) -> None:
    """Twenty leads in a row, then SIGKILL the moment the last 202 is in; the restarted gateway's
    outbox sends whatever the first one had not."""
    spool = tmp_path / "spool"
    first = GatewayProcess(bus, spool, tmp_path / "gateway-1.log")
    first.wait_ready(bus)
    ids = set()
    try:
        for i in range(20):
            status, answer = first.post(lead_body(f"1370003{i:04d}"))
            assert status == 202
            ids.add(answer["event_id"])
    finally:
        first.kill()
    sent_by_a_new_gateway(bus, spool, tmp_path / "gateway-2.log", ids)


def sent_by_a_new_gateway(bus: Bus, spool: Path, log: Path, ids: set[str]) -> None:
    """A gateway (one process) started on ``spool`` sends every lead of ``ids`` once, and its outboxes
    empty."""
    gateway = GatewayProcess(bus, spool, log)
    try:
        gateway.wait_ready(bus)
        bus.wait_for(lambda: _delivered_exactly_once(bus, ids), 90, "every accepted lead")
        bus.wait_for(
            lambda: gateway.metric("lianfang_gateway_outbox_depth", participant="police") == 0,
            30,
            "empty outboxes",
        )
    finally:
        gateway.stop()


def test_an_event_that_never_left_the_outbox_before_a_sigkill_is_sent_by_the_restarted_gateway(
    bus: Bus, router: RouterProcess, tmp_path: Path
) -> None:
    """The first gateway cannot reach Kafka at all, so the 202 is certainly only on its disk. Nor can
    it read a timestamp statement, so it runs with freshness turned off: what is tested is the outbox
    (a gateway that requires freshness answers 503 until it has read one)."""
    spool = tmp_path / "spool"
    dead = f"127.0.0.1:{free_port()}"
    first = GatewayProcess(
        bus, spool, tmp_path / "gateway-1.log", bootstrap=dead, LIANFANG_GATEWAY_REQUIRE_FRESHNESS="false"
    )
    first.wait_ready(bus)
    try:
        status, answer = first.post(lead_body("13700000400", name="郑某某"), idempotency_key="before-kill")
        assert status == 202
        assert first.metric("lianfang_gateway_outbox_depth", participant="police") == 1
    finally:
        first.kill()
    second = GatewayProcess(bus, spool, tmp_path / "gateway-2.log")
    try:
        second.wait_ready(bus)
        bus.wait_for(lambda: _delivered_exactly_once(bus, {answer["event_id"]}), 90, "the spooled lead")
        assert second.post(lead_body("13700000400", name="郑某某"), idempotency_key="before-kill") == (
            202,
            answer,
        )
    finally:
        second.stop()
    assert bus.inbox_ids()["police"][answer["event_id"]] == 1


def test_a_broker_outage_during_a_few_hundred_requests_loses_and_duplicates_nothing(
    live_domain: DemoDomain, tmp_path: Path
) -> None:
    """The gateway on a broker of its own; the broker is SIGKILLed while requests come in and
    restarted on the same port. Every request gets 202 (the outbox holds them) and every accepted
    event reaches each of its recipients exactly once after the restart.

    The router starts once the broker is back: it is not what this test is about (the outbox may
    have sent some records twice around the outage; the router delivers each event once)."""
    total, kill_after = 300, 60
    with running(tmp_path / "kafka", discard=True) as cluster:
        bus = Bus.create(cluster.bootstrap, f"t-gw-outage-{datetime.now(UTC):%H%M%S%f}.", live_domain)
        gateway = GatewayProcess(bus, tmp_path / "spool", tmp_path / "gateway.log")
        router: RouterProcess | None = None
        try:
            gateway.wait_ready(bus)
            results = _send_during_outage(gateway, cluster, total, kill_after)
            statuses = Counter(status for status, _ in results)
            assert statuses == {202: total}, statuses
            ids = {answer["event_id"] for _status, answer in results}
            assert len(ids) == total
            bus.wait_for(lambda: gateway.metric("lianfang_outbox_depth") == 0, 120, "the outbox to drain")
            router = RouterProcess(bus, tmp_path / "router.log")
            bus.wait_for(lambda: _delivered_exactly_once(bus, ids), 180, "every accepted event, once")
        finally:
            gateway.stop()
            if router is not None:
                router.stop()


def _send_during_outage(
    gateway: GatewayProcess, cluster: LocalKafka, total: int, kill_after: int
) -> list[tuple[int, Any]]:
    """Send ``total`` leads from 8 threads; kill the broker once ``kill_after`` were accepted and
    restart it when all were sent (the outage spans most of the run)."""
    accepted = threading.Semaphore(0)
    towns = ["mapo", "renhe", "shengli", "liqiao", "nancai"]

    def one(i: int) -> tuple[int, Any]:
        result = gateway.post(
            lead_body(f"136{i:08d}", town=towns[i % len(towns)]), idempotency_key=f"outage-{i}"
        )
        accepted.release()
        return result

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(one, i) for i in range(total)]
        for _ in range(kill_after):
            accepted.acquire(timeout=60)
        cluster.kill_node(1)
        results = [f.result(timeout=120) for f in futures]
    assert gateway.metric("lianfang_gateway_outbox_depth", participant="police"), (
        "the outage held events back"
    )
    cluster.restart_node(1)
    return results
