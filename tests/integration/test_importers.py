"""The batch importer on the real broker with the router: `lianfang import` publishes the valid rows of
a sample export, the recipients read them back with the SDK, and importing the file again adds nothing."""

from __future__ import annotations

import csv
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from schemas.envelope import EnvelopeHeader
from services import cli
from services.cli import importers as importers_cli
from services.kernel import envelope, policy
from services.sdk.client import Client
from tests.integration.buskit import Bus, RouterProcess
from tests.kit import DemoDomain, WatchedWork
from tests.samples import generate as samples

pytestmark = pytest.mark.integration

SAMPLES = Path(samples.__file__).resolve().parent
HOTLINE = SAMPLES / "hotline_12338.csv"


@pytest.fixture
def bus(kafka_bootstrap: str, live_domain: DemoDomain) -> Bus:
    return Bus.create(kafka_bootstrap, f"t-import-{uuid.uuid4().hex[:10]}.", live_domain)


@pytest.fixture
def router(bus: Bus, tmp_path: Path) -> Iterator[RouterProcess]:
    worker = RouterProcess.started(bus, tmp_path / "router.log")
    yield worker
    worker.stop()


@pytest.fixture
def home(live_domain: DemoDomain, tmp_path: Path) -> Path:
    """The live domain's keys and registry, with an outbox and an import ledger of this test's own."""
    copy = tmp_path / "home"
    shutil.copytree(live_domain.home, copy, ignore=shutil.ignore_patterns("outbox", "imports"))
    return copy


def lianfang(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[int, str]:
    """Run `lianfang` in-process (services/cli/main.py registers the import command)."""
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _published(bus: Bus) -> list[EnvelopeHeader]:
    records = bus.read_all([bus.names.events])[bus.names.events]
    return [envelope.parse(r.value)[4] for r in records]


def _delivered_once(bus: Bus, headers: list[Any]) -> bool:
    """True once each event sits exactly once in every inbox the policy names (and nowhere else)."""
    got = bus.inbox_ids()
    rules = bus.domain.registry.document.policy
    complete = True
    for header in headers:
        expected = set().union(*policy.recipients(rules, header).values())
        for participant, counts in got.items():
            n = counts.get(header.id, 0)
            assert n <= 1, f"{header.id} reached {participant} {n} times"
            assert participant in expected or n == 0, f"{header.id} reached {participant}, not a recipient"
            complete = complete and (participant not in expected or n == 1)
    return complete


def test_an_imported_hotline_log_reaches_its_recipients_and_importing_it_again_adds_nothing(
    bus: Bus,
    router: RouterProcess,
    home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [
        "--home", str(home), "import", "--as", "womens_federation", "--format", "hotline_12338",
        "--bootstrap", bus.bootstrap, "--topic-prefix", bus.prefix, str(HOTLINE),
    ]  # fmt: skip
    pools: list[WatchedWork] = []
    monkeypatch.setattr(importers_cli, "work_process", lambda: pools.append(WatchedWork()) or pools[-1])
    code, output = lianfang(monkeypatch, capsys, *argv)
    assert code == 0, output
    assert "imported               20" in output
    # The pseudonyms' arithmetic (blinding, checking the service's proofs) ran in the import's process
    # for it, which the import shut down.
    assert {"blind_request", "read_answer"} <= set(pools[0].ran)
    assert not pools[0].pool._processes
    assert "every accepted event was acknowledged by Kafka" in output

    headers = _published(bus)
    assert len(headers) == 20
    assert {h.sender for h in headers} == {"womens_federation"}
    assert all(uuid.UUID(h.id).version == 8 for h in headers)
    bus.wait_for(lambda: _delivered_once(bus, headers), 120, "every imported lead in its recipients' inboxes")
    assert not bus.deadletters()

    # The women's federation's own system reads them back with the SDK: verified, opened, all of them.
    reader = Client.open(
        participant="womens_federation",
        home=home,
        bootstrap=bus.bootstrap,
        topic_prefix=bus.prefix,
        outbox_path=tmp_path / "reader-outbox.sqlite",
        start=False,
    )
    try:
        opened = list(reader.inbox(max_records=20, timeout=30))
    finally:
        reader.close()
    with HOTLINE.open(encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {o.header.id for o in opened} == {h.id for h in headers}
    assert sorted(o.sections["details"]["victim"]["name"] for o in opened) == sorted(
        r["来电人姓名"] for r in rows
    )
    first = next(o for o in opened if o.sections["details"]["victim"]["name"] == rows[0]["来电人姓名"])
    assert first.sections["details"]["victim"]["id_number"] == rows[0]["身份证号"]
    assert first.sections["triage"]["category"] == "domestic_violence"

    # The police read the domestic-violence leads among them.
    police = Client.open(
        participant="police",
        home=home,
        bootstrap=bus.bootstrap,
        topic_prefix=bus.prefix,
        outbox_path=tmp_path / "police-outbox.sqlite",
        start=False,
    )
    expected_police = [
        h for h in headers if "police" in policy.recipients(bus.domain.registry.document.policy, h)["details"]
    ]
    try:
        seen = list(police.inbox(max_records=len(expected_police), timeout=30))
    finally:
        police.close()
    assert {o.header.id for o in seen} == {h.id for h in expected_police}

    # Again: nothing new reaches the bus.
    code, output = lianfang(monkeypatch, capsys, *argv)
    assert code == 0, output
    assert "imported                0" in output
    assert "already imported       20" in output
    assert len(_published(bus)) == 20
    assert _delivered_once(bus, headers)


def test_an_export_with_bad_rows_publishes_the_good_ones_and_exits_1(
    bus: Bus,
    router: RouterProcess,
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, output = lianfang(
        monkeypatch, capsys,
        "--home", str(home), "import", "--as", "police", "--format", "police",
        "--bootstrap", bus.bootstrap, "--topic-prefix", bus.prefix, str(SAMPLES / "police_with_errors.csv"),
    )  # fmt: skip
    assert code == 1
    assert "rejected                3" in output
    assert "line 6:" not in output  # a suspect's ID number with a wrong check digit: imported, flagged
    assert "line 5:" not in output  # a victim's ID number with an impossible birth date: her phone keys it
    headers = _published(bus)
    assert sorted(h.type for h in headers) == ["lead.action_taken"] * 4 + ["lead.reported"] * 5
    bus.wait_for(lambda: _delivered_once(bus, headers), 120, "the good rows in their recipients' inboxes")
