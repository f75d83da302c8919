"""The import ledger and the SDK together: re-importing publishes nothing twice, an import cut off
between the outbox and the ledger is recognized by its event ids, and the ledger keeps no personal data.

The SDK client here is real (it validates, pseudonymizes, seals, signs and writes its SQLite outbox)
but its drainer is not started, so no broker is needed: what would reach Kafka is the outbox.
"""

from __future__ import annotations

import csv
import io
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from schemas.events import EventModel
from services.importers import engine
from services.importers.engine import DryRun, Publisher, Summary, run_import
from services.importers.errors import FileFormatError
from services.importers.ledger import Ledger, ledger_path
from services.importers.reader import ExportFile, Line
from services.importers.spec import load_format
from services.kernel import envelope
from services.kernel.errors import TransportError
from services.kernel.pseudonym import Pseudonymizer
from services.sdk.client import CaseContext, Client, Sealed
from services.sdk.outbox import Record
from tests.kit import NOW, DemoDomain
from tests.samples import generate as samples

pytestmark = pytest.mark.unit

SAMPLES = Path(samples.__file__).resolve().parent


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def client_for(domain: DemoDomain, home: Path) -> Iterator[Callable[[str], Client]]:
    clients: list[Client] = []

    def make(participant: str) -> Client:
        client = Client(
            keystore=domain.keys(participant),
            registry=domain.registry,
            bootstrap="127.0.0.1:9",  # never contacted: the drainer is not started
            outbox_path=home / "outbox" / f"{participant}.sqlite",
            clock=lambda: NOW,
            start=False,
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def do_import(
    path: Path,
    fmt: str,
    participant: str,
    home: Path,
    publisher: Publisher,
    ledger: Ledger | None = None,
) -> tuple[Summary, list[str]]:
    reports: list[str] = []
    ledger = ledger or Ledger.open(home, participant)
    try:
        with ExportFile.open(path, load_format(fmt)) as export:
            summary = run_import(
                export,
                participant=participant,
                publisher=publisher,
                ledger=ledger,
                now=NOW,
                report=reports.append,
            )
    finally:
        ledger.close()
    return summary, reports


def opened(domain: DemoDomain, client: Client, reader: str) -> list[envelope.Opened]:
    """What ``reader`` can open of the records waiting in ``client``'s outbox."""
    out = []
    for record in client.outbox.pending(10_000):
        verified = envelope.verify(record.value, registry=domain.registry, now=NOW)
        if reader in verified.recipients()["details"]:
            out.append(envelope.open_sections(verified, domain.keys(reader)))
    return out


HOTLINE = SAMPLES / "hotline_12338.csv"


def test_importing_a_file_again_publishes_nothing(client_for: Callable[[str], Client], home: Path) -> None:
    client = client_for("womens_federation")
    first, _ = do_import(HOTLINE, "hotline_12338", "womens_federation", home, client)
    assert (first.imported, first.already, first.events["lead.reported"]) == (20, 0, 20)
    assert client.outbox.depth() == 20
    again, reports = do_import(HOTLINE, "hotline_12338", "womens_federation", home, client)
    assert (again.imported, again.already, again.rejected, reports) == (0, 20, 0, [])
    assert client.outbox.depth() == 20


def test_the_imported_leads_open_for_their_recipients_with_the_rows_content(
    domain: DemoDomain, client_for: Callable[[str], Client], home: Path
) -> None:
    client = client_for("womens_federation")
    do_import(HOTLINE, "hotline_12338", "womens_federation", home, client)
    police = opened(domain, client, "police")
    assert police, "domestic violence leads are shared with the police"
    first = next(o for o in police if o.sections["details"]["victim"]["name"] == "赵某某")
    assert first.header.sender == "womens_federation"
    assert first.header.category == "domestic_violence"
    assert first.header.town == "houshayu"
    assert uuid.UUID(first.header.id).version == 8  # derived from the row, not random
    assert first.sections["triage"]["channel"] == "hotline_12338"
    # The women's federation reads every hotline category (its own leads come back to it too).
    assert len(opened(domain, client, "womens_federation")) == 20


def test_a_row_repeated_in_a_file_is_imported_once(
    client_for: Callable[[str], Client], home: Path, tmp_path: Path
) -> None:
    lines = HOTLINE.read_text(encoding="utf-8-sig").splitlines(keepends=True)
    path = tmp_path / "calls.csv"
    path.write_text("".join([lines[0], lines[1], lines[2], lines[1]]), encoding="utf-8")
    summary, reports = do_import(
        path, "hotline_12338", "womens_federation", home, client_for("womens_federation")
    )
    assert (summary.imported, summary.already, reports) == (2, 1, [])


def test_an_import_stores_each_batch_of_rows_with_one_outbox_commit_and_one_audit_fsync(
    client_for: Callable[[str], Client], home: Path
) -> None:
    client = client_for("womens_federation")
    summary, _ = do_import(HOTLINE, "hotline_12338", "womens_federation", home, client)
    assert summary.imported == 20
    assert client.outbox.commits == 1, "the file's twenty rows are one batch"
    audit_file = client.trail.trail._file  # opened by the import's first entry
    assert audit_file is not None
    assert audit_file.syncs == 1


def test_a_batch_the_outbox_failed_to_store_is_neither_counted_nor_entered_in_the_ledger(
    client_for: Callable[[str], Client], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = client_for("womens_federation")

    def disk_full(_records: object) -> list[str]:
        raise TransportError("the disk is full")

    with monkeypatch.context() as patched:
        patched.setattr(client.outbox, "put_many", disk_full)
        summary, _ = do_import(HOTLINE, "hotline_12338", "womens_federation", home, client)
    assert summary.stopped is not None
    assert (summary.imported, sum(summary.events.values())) == (0, 0)
    assert Ledger.open(home, "womens_federation").count() == 0
    again, _ = do_import(HOTLINE, "hotline_12338", "womens_federation", home, client)
    assert (again.imported, again.already, again.recovered) == (20, 0, 0)


def test_an_import_killed_after_its_batch_reached_the_outbox_publishes_no_row_twice(
    client_for: Callable[[str], Client], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = client_for("womens_federation")
    stored = client.outbox.put_many

    def stored_then_killed(records: Sequence[Record]) -> list[str]:
        stored(records)
        raise KeyboardInterrupt  # the process dies once the outbox committed, before the ledger did

    with monkeypatch.context() as patched:
        patched.setattr(client.outbox, "put_many", stored_then_killed)
        with pytest.raises(KeyboardInterrupt):
            do_import(HOTLINE, "hotline_12338", "womens_federation", home, client)
    assert client.outbox.depth() == 20
    assert Ledger.open(home, "womens_federation").count() == 0
    summary, reports = do_import(HOTLINE, "hotline_12338", "womens_federation", home, client)
    assert (summary.recovered, summary.imported, summary.already, reports) == (20, 0, 20, [])
    assert client.outbox.depth() == 20


def test_the_next_two_batches_pseudonyms_are_asked_for_while_this_batch_is_stored(
    client_for: Callable[[str], Client], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = client_for("womens_federation")
    real = client.pseudonymizer
    asked = 0
    both_asked = threading.Event()

    class Counting:
        def pseudonyms(self, canonicals: Sequence[str]) -> list[str]:
            nonlocal asked
            if threading.current_thread().name.startswith("lianfang-import-pseudonyms"):  # a batch's
                asked += 1
                if asked == 1 + engine.ASK_AHEAD:
                    both_asked.set()
            return real.pseudonyms(canonicals)

    client._pseudonymizer = Counting()
    store = client.put_sealed
    overlapped: list[bool] = []

    def put_sealed(batch: Sequence[Sealed]) -> list[bool]:
        if not overlapped:  # the first batch: are the next two batches' requests on their way?
            overlapped.append(both_asked.wait(timeout=5.0))
        return store(batch)

    monkeypatch.setattr(client, "put_sealed", put_sealed)
    monkeypatch.setattr(engine, "BATCH_ROWS", 8)
    summary, _ = do_import(HOTLINE, "hotline_12338", "womens_federation", home, client)
    assert summary.imported == 20
    assert overlapped == [True]
    assert asked == 3, "twenty rows are three batches of at most eight"


def test_each_chunk_comes_with_the_next_and_a_read_error_after_every_chunk_read_before_it() -> None:
    def chunks() -> Iterator[list[Line]]:
        yield [Line(1, {"a": "1"})]
        yield [Line(2, {"a": "2"})]
        raise FileFormatError("line 3: not UTF-8")

    seen = []
    with pytest.raises(FileFormatError, match="line 3"):
        for chunk, after in engine._with_following(chunks()):
            seen.append((chunk[0].number, [a[0].number for a in after]))
    assert seen == [(1, [2]), (2, [])]
    assert [(c[0].number, a) for c, a in engine._with_following(iter([[Line(1, {})]]))] == [(1, [])]


def test_each_chunk_comes_with_as_many_after_it_as_asked_and_a_read_error_still_comes_last() -> None:
    def chunks() -> Iterator[list[Line]]:
        for number in (1, 2, 3):
            yield [Line(number, {"a": str(number)})]
        raise FileFormatError("line 4: not UTF-8")

    seen = []
    with pytest.raises(FileFormatError, match="line 4"):
        for chunk, after in engine._with_following(chunks(), 2):
            seen.append((chunk[0].number, [a[0].number for a in after]))
    assert seen == [(1, [2, 3]), (2, [3]), (3, [])]


class Crashing:
    """A publisher that dies (as a killed process would) when it is asked for event ``after + 1``."""

    def __init__(self, client: Client, after: int) -> None:
        self.client = client
        self.left = after

    @property
    def pseudonymizer(self) -> Pseudonymizer:
        return self.client.pseudonymizer

    def leads_waiting(self) -> int:
        return self.client.leads_waiting()

    def waiting_status(self) -> str:
        return self.client.waiting_status()

    def defer_event(self, event: EventModel, **kwargs: Any) -> str:
        raise AssertionError("a hotline import publishes leads only")

    def publish_lead(
        self, data: Mapping[str, Any], *, urgency: str | None = None, event_id: str | None = None
    ) -> str:
        if self.left == 0:
            raise KeyboardInterrupt
        self.left -= 1
        return self.client.publish_lead(data, urgency=urgency, event_id=event_id)

    def publish(
        self,
        event: EventModel,
        *,
        context: CaseContext,
        urgency: str = "routine",
        refs: Sequence[str] = (),
        audience: Sequence[str] = (),
        event_id: str | None = None,
    ) -> str:
        raise AssertionError("a hotline import publishes leads only")


def test_an_import_killed_between_the_outbox_and_the_ledger_publishes_no_row_twice(
    client_for: Callable[[str], Client], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = client_for("womens_federation")
    ledger = Ledger.open(home, "womens_federation")
    monkeypatch.setattr(ledger, "commit", lambda: None)  # the process dies before its batch commits
    with pytest.raises(KeyboardInterrupt):
        do_import(HOTLINE, "hotline_12338", "womens_federation", home, Crashing(client, after=7), ledger)
    ledger._db.close()  # without COMMIT: the ledger lost the seven rows the outbox kept
    assert client.outbox.depth() == 7
    assert Ledger.open(home, "womens_federation").count() == 0

    summary, reports = do_import(HOTLINE, "hotline_12338", "womens_federation", home, client)
    assert (summary.recovered, summary.imported, summary.already, reports) == (7, 13, 7, [])
    assert client.outbox.depth() == 20
    ids = [record.event_id for record in client.outbox.pending()]
    assert len(set(ids)) == 20
    final, _ = do_import(HOTLINE, "hotline_12338", "womens_federation", home, client)
    assert (final.imported, final.already, final.recovered) == (0, 20, 0)


def test_rows_already_sent_to_kafka_are_recognized_too(
    client_for: Callable[[str], Client], home: Path
) -> None:
    client = client_for("womens_federation")
    do_import(HOTLINE, "hotline_12338", "womens_federation", home, client)
    client.outbox.mark_sent(client.outbox.pending())  # Kafka acknowledged them: they left the spool
    with sqlite3.connect(ledger_path(home, "womens_federation")) as db:
        db.execute("DELETE FROM imported")  # and then the ledger's entries were lost
    summary, _ = do_import(HOTLINE, "hotline_12338", "womens_federation", home, client)
    assert (summary.recovered, summary.imported) == (20, 0)
    assert client.outbox.depth() == 0


def test_event_ids_are_uuidv8s_that_only_this_ledger_derives_from_the_row(home: Path, tmp_path: Path) -> None:
    one = Ledger.open(home, "police")
    other = Ledger.open(tmp_path / "elsewhere", "police")
    key = one.key("police", "lead", '["J110113202608190001"]')
    assert Ledger.event_id(key) == Ledger.event_id(one.key("police", "lead", '["J110113202608190001"]'))
    assert uuid.UUID(Ledger.event_id(key)).version == 8
    assert key != other.key("police", "lead", '["J110113202608190001"]')
    assert key != one.key("police", "action.warning_letter", '["J110113202608190001"]')
    one.close()
    other.close()
    reopened = Ledger.open(home, "police")
    assert reopened.key("police", "lead", '["J110113202608190001"]') == key  # the secret is kept
    reopened.close()


def test_the_ledger_keeps_no_personal_data(client_for: Callable[[str], Client], home: Path) -> None:
    do_import(HOTLINE, "hotline_12338", "womens_federation", home, client_for("womens_federation"))
    stored = b"".join(p.read_bytes() for p in (home / "imports").iterdir())
    rows = list(csv.reader(io.StringIO(HOTLINE.read_text(encoding="utf-8-sig"), newline="")))[1:]
    for row in rows:
        for cell in (row[0], row[2], row[5], row[6], row[10]):  # 工单编号, names, ID, phone, narrative
            if cell:
                assert cell.encode() not in stored


def test_a_later_export_that_changed_a_row_is_reported_and_not_published_again(
    client_for: Callable[[str], Client], home: Path, tmp_path: Path
) -> None:
    client = client_for("womens_federation")
    do_import(HOTLINE, "hotline_12338", "womens_federation", home, client)
    rows = list(csv.reader(io.StringIO(HOTLINE.read_text(encoding="utf-8-sig"), newline="")))
    rows[1][16] = "已回访，当事人已搬离"  # 处理意见: an unmapped column changes nothing
    rows[2][10] += "补充：已报警。"  # 事情经过 of call 12338-2026000002 changed
    path = tmp_path / "calls-later.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows)
    summary, reports = do_import(path, "hotline_12338", "womens_federation", home, client)
    assert (summary.imported, summary.already, summary.changed) == (0, 20, 1)
    assert reports == [
        "line 3: was imported before (line 3 of hotline_12338.csv) and has changed since; the change is not "
        "published (report it as a follow-up event instead)"
    ]
    assert client.outbox.depth() == 20


def test_the_court_register_exported_again_with_rulings_publishes_only_the_rulings(
    domain: DemoDomain, client_for: Callable[[str], Client], home: Path, tmp_path: Path
) -> None:
    court = SAMPLES / "court.csv"
    rows = list(csv.reader(io.StringIO(court.read_text(encoding="utf-8"), newline="")))
    header = rows[0]
    ruling = [header.index(c) for c in ("裁定日期", "裁定结果", "保护令措施", "有效期至")]
    pending = [rows[0]] + [[("" if i in ruling else cell) for i, cell in enumerate(r)] for r in rows[1:]]
    path = tmp_path / "register-before-rulings.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(pending)
    client = client_for("court")
    before, _ = do_import(path, "court", "court", home, client)
    assert dict(before.events) == {"protection_order.requested": 10}
    after, reports = do_import(court, "court", "court", home, client)
    assert dict(after.events) == {"protection_order.decided": 6}
    assert (after.imported, after.already) == (6, 4)
    # The two withdrawn applications (裁定结果 撤回) changed but have no event to publish: said so.
    assert [r.split(":")[0] for r in reports] == ["line 6", "line 11"]
    assert all("has changed since" in r for r in reports)
    events = opened(domain, client, "court")
    requests = {o.header.id for o in events if o.header.type == "protection_order.requested"}
    decisions = [o for o in events if o.header.type == "protection_order.decided"]
    assert {d.sections["triage"]["request_id"] for d in decisions} <= requests
    assert all(d.header.refs[0] in requests for d in decisions)


def test_a_dry_run_writes_neither_a_ledger_nor_an_outbox(home: Path) -> None:
    summary, _ = do_import(
        HOTLINE,
        "hotline_12338",
        "womens_federation",
        home,
        DryRun(),
        Ledger.open_for_dry_run(home, "womens_federation"),
    )
    assert summary.imported == 20
    assert not home.exists()


def test_a_dry_run_after_an_import_reports_what_was_imported_and_changes_nothing(
    client_for: Callable[[str], Client], home: Path, tmp_path: Path
) -> None:
    rows = HOTLINE.read_text(encoding="utf-8-sig").splitlines(keepends=True)
    half = tmp_path / "half.csv"
    half.write_text("".join(rows[:11]), encoding="utf-8")
    do_import(half, "hotline_12338", "womens_federation", home, client_for("womens_federation"))
    before = ledger_path(home, "womens_federation").read_bytes()
    dry, _ = do_import(
        HOTLINE,
        "hotline_12338",
        "womens_federation",
        home,
        DryRun(),
        Ledger.open_for_dry_run(home, "womens_federation"),
    )
    assert (dry.imported, dry.already) == (10, 10)
    assert ledger_path(home, "womens_federation").read_bytes() == before
    real, _ = do_import(HOTLINE, "hotline_12338", "womens_federation", home, client_for("womens_federation"))
    assert (real.imported, real.already) == (10, 10)
