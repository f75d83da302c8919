"""Imports and the pseudonymizer (served on loopback, no Kafka): a batch of rows' identifiers is one
request, not one a row; while the service is away an import goes on (its events wait in the outbox,
encrypted), and once the service answers every event is sealed with its real pseudonyms, each follow-up
behind its lead, nothing with a stand-in."""

from __future__ import annotations

import io
import json
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from services.cli import importers as importers_cli
from services.importers import engine
from services.importers.engine import run_import
from services.importers.ledger import Ledger
from services.importers.progress import Progress
from services.importers.reader import ExportFile, Line
from services.importers.spec import load_format
from services.kernel import envelope
from services.kernel.pseudonym import EpochPseudonyms, normalize_subject
from services.pseudonymizer.client import (
    ClientMetrics,
    ObliviousPseudonymizer,
    PseudonymizerUnavailableError,
)
from services.sdk.client import Client
from services.sdk.metrics import SdkMetrics
from tests.kit import NOW, DemoDomain
from tests.unit.test_importers_ledger import HOTLINE, SAMPLES, do_import
from tests.unit.test_pseudonymizer_client import Served, the_service

pytestmark = pytest.mark.unit

AWAY = "http://127.0.0.1:9"  # nothing listens on the discard port


@pytest.fixture(scope="module")
def oblivious(tmp_path_factory: pytest.TempPathFactory) -> DemoDomain:
    return DemoDomain.create(
        Path(tmp_path_factory.mktemp("batched")) / ".lianfang", pseudonymizer_url="http://127.0.0.1:9"
    )


@pytest.fixture(scope="module")
def service(oblivious: DemoDomain) -> Iterator[Served]:
    served = the_service(oblivious, rate_per_s=10_000.0)
    yield served
    served.close()


def a_client(domain: DemoDomain, participant: str, url: str, folder: Path, in_flight: int = 1) -> Client:
    """A client without Kafka (its sender not started) asking the pseudonymizer at ``url``, ``in_flight``
    requests at a time."""
    asker = ObliviousPseudonymizer(
        keystore=domain.keys(participant),
        registry=lambda: domain.registry,
        url=url,
        clock=lambda: NOW,
        metrics=ClientMetrics(CollectorRegistry()),
        in_flight=in_flight,
    )
    return Client(
        keystore=domain.keys(participant),
        registry=domain.registry,
        bootstrap="",
        outbox_path=folder / "outbox" / f"{participant}.sqlite",
        clock=lambda: NOW,
        start=False,
        pseudonymizer=asker,
        metrics=SdkMetrics(CollectorRegistry()),
    )


@pytest.fixture
def client_at(oblivious: DemoDomain, tmp_path: Path) -> Iterator[Callable[[str, str], Client]]:
    clients: list[Client] = []

    def make(participant: str, url: str) -> Client:
        client = a_client(oblivious, participant, url, tmp_path)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def requests(client: Client, outcome: str) -> float:
    asker = client.pseudonymizer
    assert isinstance(asker, ObliviousPseudonymizer)
    return float(asker.metrics.requests.labels(outcome)._value.get())


def test_an_import_asks_for_a_batch_of_rows_pseudonyms_in_one_request(
    service: Served, client_at: Callable[[str, str], Client], tmp_path: Path
) -> None:
    client = client_at("womens_federation", service.url)
    summary, reports = do_import(HOTLINE, "hotline_12338", "womens_federation", tmp_path, client)
    assert reports == []
    assert summary.imported == 20
    assert requests(client, "ok") == 1, "twenty rows, one request"
    records = client.outbox.pending(100)
    assert len(records) == 20
    assert all(r.key is not None and r.key.startswith(b"p1.") for r in records)


def test_an_imports_first_batches_are_small_and_double_up_to_the_batch_size(
    service: Served, client_at: Callable[[str, str], Client], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "BATCH_ROWS", 8)
    monkeypatch.setattr(engine, "FIRST_BATCH_ROWS", 2)
    asked: list[int] = []
    ask = engine._Run.ask

    def noting(run: engine._Run, asking: Executor, lines: Sequence[Line]) -> Future[dict[str, str]]:
        asked.append(len(lines))
        return ask(run, asking, lines)

    monkeypatch.setattr(engine._Run, "ask", noting)
    client = client_at("womens_federation", service.url)
    summary, reports = do_import(HOTLINE, "hotline_12338", "womens_federation", tmp_path, client)
    assert (summary.imported, reports) == (20, [])
    assert asked == [2, 4, 8, 6], "the rows of each batch whose pseudonyms were asked for"


def test_an_import_whose_client_allows_two_requests_has_two_batches_requests_in_flight_at_once(
    oblivious: DemoDomain, service: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "BATCH_ROWS", 4)  # 20 rows: 5 batches
    client = a_client(oblivious, "womens_federation", service.url, tmp_path, in_flight=engine.ASK_AHEAD)
    asker = client.pseudonymizer
    assert isinstance(asker, ObliviousPseudonymizer)
    # The first two requests each wait at the service's door until the other is there too: with one
    # request in flight at a time, the first would wait alone and time out.
    together = threading.Barrier(2, timeout=5.0)
    post = asker._post
    posted: list[bytes] = []
    counting = threading.Lock()

    def post_together(registry: Any, body: bytes) -> bytes:
        with counting:
            posted.append(body)
            first_two = len(posted) <= 2
        if first_two:
            together.wait()
        return post(registry, body)

    monkeypatch.setattr(asker, "_post", post_together)
    try:
        summary, reports = do_import(HOTLINE, "hotline_12338", "womens_federation", tmp_path, client)
    finally:
        client.close()
    assert (summary.imported, reports) == (20, [])
    assert not together.broken, "the second batch's request was not sent while the first was in flight"
    assert requests(client, "ok") == 5, "one request a batch"


def test_while_the_service_is_away_an_import_of_leads_goes_on_and_they_wait_encrypted(
    client_at: Callable[[str, str], Client], tmp_path: Path
) -> None:
    client = client_at("womens_federation", AWAY)
    summary, reports = do_import(HOTLINE, "hotline_12338", "womens_federation", tmp_path, client)
    assert (reports, summary.stopped) == ([], None)
    assert summary.imported == 20
    assert client.leads_waiting() == 20
    assert client.outbox.pending() == [], "nothing is sealed before its pseudonyms are known"
    ledger = Ledger.open(tmp_path, "womens_federation")
    try:
        assert ledger.count() == 20
    finally:
        ledger.close()


def test_once_a_lead_of_a_batch_must_wait_for_the_service_the_rows_after_it_wait_too(
    client_at: Callable[[str, str], Client], service: Served, tmp_path: Path
) -> None:
    client = client_at("womens_federation", service.url)
    asker = client.pseudonymizer
    sealing = 0

    class GoneAfterFourLeads:
        """Answers the batch's request, then fails for the fifth lead only (sealed, then published)."""

        def pseudonyms(self, canonicals: Sequence[str]) -> list[str]:
            return asker.pseudonyms(canonicals)

        def epochs(self, canonicals: Sequence[str]) -> list[EpochPseudonyms]:
            nonlocal sealing
            if threading.current_thread() is threading.main_thread():
                sealing += 1
                if sealing in {5, 6}:
                    raise PseudonymizerUnavailableError("no answer", code="unreachable")
            return asker.epochs(canonicals)  # type: ignore[attr-defined, no-any-return]

    client._pseudonymizer = GoneAfterFourLeads()
    summary, reports = do_import(HOTLINE, "hotline_12338", "womens_federation", tmp_path, client)
    assert (reports, summary.stopped, summary.imported) == ([], None, 20)
    assert len(client.outbox.pending()) == 4
    assert client.leads_waiting() == 16, "no lead after the first waiting one is sealed ahead of it"


def sealed_content(domain: DemoDomain, client: Client) -> list[tuple[Any, str]]:
    """Each record in the outbox: its verified header, and its sections as one of its recipients reads them."""
    out = []
    for record in client.outbox.pending(10_000):
        verified = envelope.verify(record.value, registry=domain.registry, now=NOW)
        reader = sorted(set().union(*verified.recipients().values()))[0]
        opened = envelope.open_sections(verified, domain.keys(reader))
        out.append((verified.header, json.dumps(opened.sections, ensure_ascii=False)))
    return out


def test_while_the_service_is_away_follow_ups_wait_behind_their_leads_and_get_the_real_pseudonyms(
    oblivious: DemoDomain, service: Served, client_at: Callable[[str, str], Client], tmp_path: Path
) -> None:
    lines = (SAMPLES / "police.csv").read_text(encoding="utf-8-sig").splitlines(keepends=True)
    path = tmp_path / "police.csv"
    path.write_text("".join([lines[0], lines[3], lines[1], lines[4]]), encoding="utf-8")
    assert [line.rstrip().split(",")[18] for line in (lines[3], lines[1], lines[4])] == ["否", "是", "否"]
    client = client_at("police", AWAY)
    summary, reports = do_import(path, "police", "police", tmp_path, client)
    assert (reports, summary.stopped, summary.imported) == ([], None, 3)
    assert client.leads_waiting() == 4, "three leads and one warning letter wait"
    assert client.outbox.pending() == [], "nothing is sealed with a stand-in pseudonym"

    asker = client.pseudonymizer
    assert isinstance(asker, ObliviousPseudonymizer)
    asker.url = service.url
    assert client.drainer.resolve_waiting() == 4
    assert requests(client, "ok") == 1
    records = sealed_content(oblivious, client)
    kinds = [(h.type, h.subject) for h, _ in records]
    assert [k for k, _ in kinds] == ["lead.reported", "lead.reported", "lead.action_taken", "lead.reported"]
    lead, action = records[1][0], records[2][0]
    assert action.subject == lead.subject, "the warning letter follows its lead, under its real pseudonym"
    assert lead.id in action.refs
    assert all(h.subject.startswith("p1.") for h, _ in records)
    assert all("p0." not in text for _, text in records), "no stand-in reached a sealed section"


def test_while_the_service_is_away_protection_orders_wait_and_carry_the_real_pseudonyms(
    oblivious: DemoDomain, service: Served, client_at: Callable[[str, str], Client], tmp_path: Path
) -> None:
    client = client_at("court", AWAY)
    summary, reports = do_import(SAMPLES / "court.csv", "court", "court", tmp_path, client)
    assert (reports, summary.stopped) == ([], None)
    assert client.leads_waiting() == sum(summary.events.values()) > 0
    asker = client.pseudonymizer
    assert isinstance(asker, ObliviousPseudonymizer)
    asker.url = service.url
    while client.drainer.resolve_waiting():
        pass
    records = sealed_content(oblivious, client)
    assert len(records) == sum(summary.events.values())
    assert all(h.subject.startswith("p1.") for h, _ in records)
    assert all("p0." not in text for _, text in records)
    assert all(h.subject in text for h, text in records if h.type == "protection_order.requested")


def test_a_rate_limited_import_says_so_on_its_progress_line_and_asks_nothing_more_while_its_leads_wait(
    oblivious: DemoDomain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "BATCH_ROWS", 4)  # 20 rows: 5 batches
    served = the_service(oblivious, rate_per_s=1.0, burst=64)  # buckets of its own
    client = a_client(oblivious, "womens_federation", served.url, tmp_path)  # _finish closes it
    try:
        asker = client.pseudonymizer
        assert isinstance(asker, ObliviousPseudonymizer)
        asker.pseudonyms([normalize_subject(phone=f"1370000{i:04d}") for i in range(64)])  # the whole burst
        asked: list[int] = []
        ask = asker.pseudonyms
        monkeypatch.setattr(
            asker, "pseudonyms", lambda canonicals: asked.append(len(canonicals)) or ask(canonicals)
        )
        shown = io.StringIO()
        ledger = Ledger.open(tmp_path, "womens_federation")
        try:
            with ExportFile.open(HOTLINE, load_format("hotline_12338")) as export:
                progress = Progress(total_bytes=export.size, stream=shown, every=1, tty=False)
                summary = run_import(export, participant="womens_federation", publisher=client,
                                     ledger=ledger, now=NOW, report=shown.write, progress=progress)  # fmt: skip
        finally:
            ledger.close()
        assert (summary.imported, client.leads_waiting()) == (20, 20)
        # The first batch and the next two (asked for ahead, before any answer came) asked; one request
        # reached the service and was refused, and the client, within its Retry-After, refused the
        # others itself; the last two batches waited behind the leads, unasked.
        assert len(asked) == 1 + engine.ASK_AHEAD
        assert requests(client, "rate_limited") == 1
        assert re.search(
            r"\d+ lead\(s\) wait for the pseudonymizer \(rate_limited, next request in \d+ s\)",
            shown.getvalue(),
        )
        said: list[str] = []
        monkeypatch.setattr(importers_cli, "STATUS_EVERY_S", 0.05)
        outcome = importers_cli._finish(client, 0.3, said.append)
        assert said, "a line while the outbox drains"
        assert all(
            re.fullmatch(r"outbox: 20 event\(s\) to send; 20 lead\(s\) wait for the pseudonymizer "
                         r"\(rate_limited, next request in \d+ s\)", line)
            for line in said
        )  # fmt: skip
        assert "LIANFANG_PSEUDONYMIZER_RATES" in outcome
    finally:
        served.close()
