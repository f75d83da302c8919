"""The audit trail: each edit, removal or reordering is caught at the entry where it happened, and what
another participant appends under a writer's name is set aside as forged without breaking its chain."""

from __future__ import annotations

import argparse
import dataclasses
import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from services.audit.chain import (
    ACTIONS,
    Action,
    AuditEntry,
    AuditError,
    AuditReport,
    Checkpoint,
    KeyLookup,
    Signer,
    next_entry,
    parse_line,
    principal,
    verify,
    verify_lines,
)
from services.audit.metrics import AuditMetrics
from services.audit.shipping import Shipper
from services.audit.trail import AuditTrail, LocalTrail, read_file
from services.cli import audit as audit_cli
from services.cli.audit import EXIT_CODES, add_commands
from services.kernel import crypto, jsonx
from services.kernel.errors import TransportError, UnknownKeyError
from tests.kit import until

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
SUBJECT = "p0." + "Q" * 43


def chain(
    n: int, actor: str = "police", signer: Signer | None = None, head: AuditEntry | None = None
) -> list[AuditEntry]:
    """``n`` entries of ``actor``'s chain after ``head``, signed by ``signer`` (unsigned without)."""
    entries: list[AuditEntry] = []
    for _ in range(n):
        i = head.seq + 1 if head is not None else 0
        head = next_entry(
            head,
            actor=actor,
            action="open_section",
            at=T0 + timedelta(minutes=i),
            subject=SUBJECT,
            object=f"0190f2a0-0000-7000-8000-{i:012d}",
            signer=signer,
        )
        entries.append(head)
    return entries


def test_an_untouched_chain_verifies() -> None:
    result = verify(chain(5))
    assert result.ok, result
    assert (result.entries, result.head_seq) == (5, 4)


@pytest.mark.parametrize("at", [0, 3, 6])
def test_an_edited_entry_is_caught_at_that_entry(at: int) -> None:
    entries = chain(7)
    entries[at] = dataclasses.replace(entries[at], action="route")
    result = verify(entries)
    assert not result.ok
    assert result.bad_seq == at
    assert "edited" in (result.problem or "")


@pytest.mark.parametrize("at", [1, 4])
def test_an_entry_rewritten_with_a_fresh_hash_is_caught_by_the_next_entry(at: int) -> None:
    entries = chain(6)
    edited = dataclasses.replace(entries[at], object="0190f2a0-0000-7000-8000-999999999999")
    entries[at] = dataclasses.replace(edited, hash=edited.computed_hash())
    result = verify(entries)
    assert (result.ok, result.bad_seq) == (False, at)
    assert "rewritten" in (result.problem or "")


@pytest.mark.parametrize("at", [0, 2, 5])
def test_a_removed_entry_is_caught_at_its_seq(at: int) -> None:
    entries = chain(7)
    del entries[at]
    result = verify(entries)
    assert (result.ok, result.bad_seq) == (False, at)
    assert "missing" in (result.problem or "")


@pytest.mark.parametrize("at", [0, 3, 5])
def test_two_swapped_entries_are_caught_at_the_first_of_them(at: int) -> None:
    entries = chain(7)
    entries[at], entries[at + 1] = entries[at + 1], entries[at]
    result = verify(entries)
    assert (result.ok, result.bad_seq) == (False, at)
    assert "out of order" in (result.problem or "")


def test_an_entry_moved_to_the_end_is_caught_where_it_was_taken_from() -> None:
    entries = chain(6)
    entries.append(entries.pop(2))
    assert verify(entries).bad_seq == 2


def test_a_duplicated_entry_is_caught_at_its_seq() -> None:
    entries = chain(4)
    entries.insert(2, entries[1])
    result = verify(entries)
    assert (result.ok, result.bad_seq) == (False, 1)


def test_an_edited_copy_appended_after_the_original_is_caught_at_the_originals_seq() -> None:
    entries = chain(4)
    edited = dataclasses.replace(entries[2], action="console_view")
    lines = [e.to_line() for e in entries] + [edited.to_line()]
    results = verify_lines(lines).chains
    assert [(r.ok, r.bad_seq) for r in results] == [(False, 2)]


def test_a_cut_off_tail_is_caught_by_the_signed_checkpoint() -> None:
    key = Ed25519PrivateKey.generate()
    entries = chain(5, signer=Signer(key, "k1"))
    cp = Checkpoint.sign(entries[-1], key, "k1", at=T0 + timedelta(hours=1))
    keys = _keys(key)
    assert verify(entries, [cp], keys=keys).checkpoints_verified == 1
    result = verify(entries[:3], [cp], keys=keys)
    assert (result.ok, result.bad_seq) == (False, 3)
    assert "missing" in (result.problem or "")


def test_a_wholly_rewritten_chain_is_caught_by_the_signed_checkpoint() -> None:
    key = Ed25519PrivateKey.generate()
    entries = chain(4, signer=Signer(key, "k1"))
    cp = Checkpoint.sign(entries[-1], key, "k1", at=T0 + timedelta(hours=1))
    forged = _relink(chain(4), Signer(key, "k1"))  # same length, other content, signed by the writer
    assert verify(forged, keys=_keys(key)).ok
    result = verify(forged, [cp], keys=_keys(key))
    assert not result.ok
    assert "differs from the signed checkpoint" in (result.problem or "")


def test_a_checkpoint_signed_by_another_key_is_set_aside_as_forged() -> None:
    key = Ed25519PrivateKey.generate()
    entries = chain(2, signer=Signer(key, "k1"))
    cp = Checkpoint.sign(entries[-1], Ed25519PrivateKey.generate(), "k1", at=T0)
    result = verify(entries, [cp], keys=_keys(key))
    assert (result.ok, result.checkpoints_verified, result.unproven) == (True, 0, 2)
    assert [(s.position, s.kind, s.what) for s in result.set_aside] == [(3, "forged", "checkpoint of seq 1")]


def test_personal_data_is_refused_in_subject_and_object() -> None:
    # a mobile number, an 18- and a 15-digit resident ID, a name
    for bad in ("13800138000", "11010519491231002X", "110105491231002", "王小红", "Wang Xiaohong"):
        with pytest.raises(AuditError):
            next_entry(None, actor="police", action="publish", at=T0, subject=bad)
        with pytest.raises(AuditError):
            next_entry(None, actor="police", action="publish", at=T0, object=bad)


def test_the_trail_file_resumes_and_refuses_a_tampered_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    published: list[tuple[bytes, bytes]] = []
    trail = AuditTrail("police", path=path, publish=lambda k, v: published.append((k, v)), clock=lambda: T0)
    trail.append("publish", subject=SUBJECT)
    trail.append("open_section", object="0190f2a0-0000-7000-8000-000000000001")
    key = Ed25519PrivateKey.generate()
    trail.checkpoint(key, "k1")
    again = AuditTrail("police", path=path, clock=lambda: T0)
    assert again.append("console_view").seq == 2
    results = verify_lines(read_file(path), keys=_keys(key), require_checkpoint=True).chains
    assert [r.ok for r in results] == [True]
    assert [k for k, _ in published] == [b"police"] * 3
    lines = path.read_bytes().splitlines()
    body = json.loads(lines[0])
    body["subject"] = None
    path.write_bytes(b"\n".join([jsonx.compact_json(body), *lines[1:]]) + b"\n")
    with pytest.raises(AuditError, match="seq 0"):
        AuditTrail("police", path=path)


def test_audit_verify_command_names_the_first_bad_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_cli, "_keys", lambda _args: registry_keys)
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"".join(e.to_line() + b"\n" for e in chain(5, signer=POLICE)))
    parser = _parser()
    args = parser.parse_args(["audit", "verify", str(path)])
    assert args.func(args) == 0
    lines = path.read_bytes().splitlines()
    edited = json.loads(lines[3])
    edited["action"] = "route"
    lines[3] = jsonx.compact_json(edited)
    path.write_bytes(b"\n".join(lines) + b"\n")
    args = parser.parse_args(["audit", "verify", str(path)])
    assert args.func(args) == 3
    assert "first bad entry: seq 3 of police" in capsys.readouterr().err


@given(
    st.lists(
        st.tuples(
            st.sampled_from(ACTIONS),
            st.one_of(st.none(), st.from_regex(r"p0\.[A-Za-z0-9_-]{43}", fullmatch=True)),
            st.one_of(st.none(), st.uuids().map(str)),
            st.integers(min_value=0, max_value=10**9),
        ),
        max_size=20,
    )
)
def test_any_chain_round_trips_through_its_lines_and_verifies(
    steps: list[tuple[Action, str | None, str | None, int]],
) -> None:
    head = None
    entries = []
    for action, subject, obj, seconds in steps:
        head = next_entry(
            head, actor="hub", action=action, at=T0 + timedelta(seconds=seconds), subject=subject, object=obj
        )
        entries.append(head)
    parsed = [parse_line(e.to_line()) for e in entries]
    assert parsed == entries
    results = verify_lines([e.to_line() for e in entries]).chains
    assert all(r.ok for r in results)
    assert sum(r.entries for r in results) == len(entries)


def test_a_routing_entry_names_its_recipients_and_an_edit_of_them_is_caught() -> None:
    first = next_entry(None, actor="router/p3", action="route", at=T0, subject=SUBJECT, to=["police", "hub"])
    assert parse_line(first.to_line()) == first
    assert json.loads(first.to_line())["to"] == ["police", "hub"]
    edited = dataclasses.replace(first, to=("police",))
    assert verify([edited]).bad_seq == 0
    with pytest.raises(AuditError):
        next_entry(None, actor="router/p3", action="route", at=T0, to=["13800138000"])


def test_a_chain_named_after_its_writer_is_checkpointed_with_its_participants_key() -> None:
    key = Ed25519PrivateKey.generate()
    entries = chain(3, actor="police/sdk-0a1b2c3d")
    cp = Checkpoint.sign(entries[-1], key, "k1", at=T0)
    asked: list[str] = []

    def lookup(participant: str, _kid: str, _at: datetime) -> bytes:
        asked.append(participant)
        return crypto.ed25519_public_raw(key)

    assert verify(entries, [cp], keys=lookup).checkpoints_verified == 1
    assert asked == ["police"]
    assert principal("mediation.renhe/console-1") == "mediation.renhe"
    with pytest.raises(AuditError):
        next_entry(None, actor="Police/x", action="publish", at=T0)


def test_a_line_sent_twice_is_read_once_but_a_different_entry_under_a_seen_seq_is_caught() -> None:
    entries = chain(4)
    lines = [e.to_line() for e in entries]
    resent = [*lines[:3], lines[1], lines[2], lines[3]]  # a crash after the broker had seq 1 and 2
    assert [(r.ok, r.entries) for r in verify_lines(resent).chains] == [(True, 4)]
    other = dataclasses.replace(entries[1], action="route")
    forged = [*lines[:3], dataclasses.replace(other, hash=other.computed_hash()).to_line(), lines[3]]
    assert [r.ok for r in verify_lines(forged).chains] == [False]


def test_the_trail_signs_a_checkpoint_when_due_and_when_it_closes(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    now = [T0]
    path = tmp_path / "audit.jsonl"
    trail = AuditTrail(
        "hub/hub-1", path=path, signer=Signer(key, "k1"), clock=lambda: now[0], checkpoint_every_s=60
    )
    trail.append("publish", subject=SUBJECT)
    now[0] = T0 + timedelta(seconds=61)
    trail.append("publish", subject=SUBJECT)  # due: a checkpoint of seq 1 follows it
    trail.append("publish", subject=SUBJECT)
    trail.close()  # seq 2 is not covered yet: a last checkpoint
    trail.close()  # nothing new: no third
    items = [parse_line(line) for line in read_file(path)]
    assert [(type(i).__name__, i.seq) for i in items] == [
        ("AuditEntry", 0),
        ("AuditEntry", 1),
        ("Checkpoint", 1),
        ("AuditEntry", 2),
        ("Checkpoint", 2),
    ]
    results = verify_lines(read_file(path), keys=_keys(key), require_checkpoint=True).chains
    assert [(r.ok, r.checkpoints_verified) for r in results] == [(True, 2)]


def test_a_local_trail_keeps_its_name_and_a_second_writer_gets_its_own_file(tmp_path: Path) -> None:
    first = LocalTrail(tmp_path, "police", "sdk", clock=lambda: T0)
    first.append("publish", subject=SUBJECT)
    second = LocalTrail(tmp_path, "police", "sdk", clock=lambda: T0)  # first still holds its file
    second.append("publish", subject=SUBJECT)
    assert first.path != second.path
    assert first.actor != second.actor
    assert first.actor.startswith("police/sdk-")
    name, path = first.actor, first.path
    first.close()
    second.close()
    resumed = LocalTrail(tmp_path, "police", "sdk", clock=lambda: T0)
    assert (resumed.path, resumed.actor) == (path, name)
    assert resumed.append("open_section").seq == 1
    resumed.close()
    with pytest.raises(AuditError, match="not of a 'court' chain"):
        LocalTrail(tmp_path, "court", "sdk")


def test_the_shipper_sends_each_line_once_in_order_and_resumes_after_a_failure(tmp_path: Path) -> None:
    sent: list[bytes] = []
    down = [True]

    class Broker:
        closed = 0

        def send(self, key: bytes, lines: Any) -> None:
            if down[0]:
                raise TransportError("broker away")
            assert key == b"police/sdk-00000001"
            sent.extend(lines)

        def cluster(self) -> str:
            return "cluster-a"

        def close(self) -> None:
            self.closed += 1

    publish = Broker()

    path = tmp_path / "sdk.audit.jsonl"
    path.write_bytes(b"".join(e.to_line() + b"\n" for e in chain(3, actor="police/sdk-00000001")))
    shipper = Shipper(path, publish, retry_s=0.01)
    shipper.wake()
    deadline = time.monotonic() + 10
    while shipper.failures == 0 and time.monotonic() < deadline:
        shipper.wake()
    assert shipper.failures >= 1
    assert shipper.pending_bytes == path.stat().st_size  # nothing is marked shipped while it fails
    down[0] = False
    assert shipper.stop(timeout=5)
    assert sent == read_file(path)
    assert publish.closed == 1
    # A new shipper (a restart) starts from the mark: nothing is sent again.
    again = Shipper(path, publish)
    assert again.stop(timeout=5)
    assert len(sent) == 3


def test_the_shipper_leaves_a_half_written_line_for_later(tmp_path: Path) -> None:
    sent: list[bytes] = []
    path = tmp_path / "a.audit.jsonl"
    line = chain(1)[0].to_line()
    path.write_bytes(line + b"\n" + line[:10])

    shipper = Shipper(path, Collect(sent))
    shipper.stop(timeout=5)
    assert sent == [line]
    assert shipper.pending_bytes == 10


def test_the_shipper_sends_no_entry_the_file_could_still_lose_and_sends_it_once_synced(
    tmp_path: Path,
) -> None:
    sent: list[bytes] = []
    trail = LocalTrail(tmp_path, "hub", "hub", ship=Collect(sent))
    assert trail.shipper is not None
    trail.append("open_section", subject="p0." + "B" * 43, object="e1", durable=False)
    trail.shipper.ship_once()
    assert sent == [], "written but not yet on disk: not shipped"
    trail.sync()
    trail.shipper.ship_once()
    assert sent == read_file(trail.path)
    trail.close()


def test_callers_and_the_shipping_thread_shipping_at_once_send_every_line_exactly_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "sdk.audit.jsonl"
    lines = [e.to_line() for e in chain(400)]
    path.write_bytes(b"")
    sent: list[bytes] = []
    shipper = Shipper(path, Collect(sent), retry_s=0.001)
    failures: list[BaseException] = []

    def ship_until_all_sent() -> None:
        deadline = time.monotonic() + 30
        while len(sent) < len(lines) and time.monotonic() < deadline:
            try:
                shipper.ship_once()
            except BaseException as e:  # the race: a mark replaced from under another caller
                failures.append(e)
                return

    callers = [threading.Thread(target=ship_until_all_sent) for _ in range(4)]
    for thread in callers:
        thread.start()
    with path.open("ab") as f:
        for line in lines:  # appended while everyone ships
            f.write(line + b"\n")
            f.flush()
            shipper.wake()
    for thread in callers:
        thread.join()
    assert shipper.stop(timeout=5)
    assert failures == []
    assert sent == lines


def test_the_lines_a_busy_writer_appends_within_a_linger_go_to_the_broker_in_one_send(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gateway.audit.jsonl"
    path.write_bytes(b"")
    lines = [e.to_line() for e in chain(20)]
    sends: list[int] = []

    class Count(Collect):
        def send(self, key: bytes, batch: Any) -> None:
            sends.append(len(batch))
            super().send(key, batch)

    sent: list[bytes] = []
    # A linger far longer than the writer's 200 ms, so that no scheduler splits them across two.
    shipper = Shipper(path, Count(sent), linger_s=3.0)
    with path.open("ab") as f:
        for line in lines:
            f.write(line + b"\n")
            f.flush()
            shipper.wake()
            time.sleep(0.01)  # a writer appending a line every 10 ms (its pace, not a wait for a condition)
    until(lambda: len(sent) == len(lines), "the shipper to send the writer's lines", deadline_s=15)
    assert sent == lines
    assert sends == [len(lines)], "one send for the linger (each line on its own without it)"
    assert shipper.stop(timeout=5)


def test_a_chain_shipped_to_one_cluster_is_shipped_whole_to_another(tmp_path: Path) -> None:
    path = tmp_path / "sdk.audit.jsonl"
    path.write_bytes(b"".join(e.to_line() + b"\n" for e in chain(3)))
    first: list[bytes] = []
    assert Shipper(path, Collect(first, "cluster-a")).stop(timeout=5)
    again: list[bytes] = []
    assert Shipper(path, Collect(again, "cluster-a")).stop(timeout=5)
    fresh: list[bytes] = []
    assert Shipper(path, Collect(fresh, "cluster-b")).stop(timeout=5)
    assert (len(first), len(again), fresh) == (3, 0, first)


def test_a_quiet_chain_is_signed_by_the_shippers_tick_without_another_append(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    now = [T0]
    sent: list[bytes] = []
    trail = LocalTrail(
        tmp_path,
        "police",
        "sdk",
        signer=Signer(key, "k1"),
        ship=Collect(sent),
        clock=lambda: now[0],
        checkpoint_every_s=60,
    )
    trail.append("publish", subject=SUBJECT)
    now[0] = T0 + timedelta(seconds=61)  # a minute passes with nothing to append
    assert trail.shipper is not None
    deadline = time.monotonic() + 10
    while not any(b'"checkpoint"' in line for line in sent) and time.monotonic() < deadline:
        trail.shipper.wake()
        time.sleep(0.05)  # poll interval inside a deadline loop
    assert any(b'"checkpoint"' in line for line in sent)
    trail.close()
    results = verify_lines(read_file(trail.path), keys=_keys(key), require_checkpoint=True).chains
    assert [(r.ok, r.checkpoints_verified) for r in results] == [(True, 1)]


def test_unshipped_audit_bytes_and_failures_are_exported_per_chain(tmp_path: Path) -> None:
    class Away(Collect):
        def send(self, _key: bytes, lines: Any) -> None:
            raise TransportError("broker away")

    registry = CollectorRegistry()
    metrics = AuditMetrics(registry)
    trail = LocalTrail(tmp_path, "police", "sdk", ship=Away([]), clock=lambda: T0, metrics=metrics)
    trail.append("publish", subject=SUBJECT)
    assert trail.shipper is not None
    size = trail.path.stat().st_size
    labels = {"chain": trail.actor}
    deadline = time.monotonic() + 10
    while not registry.get_sample_value("lianfang_audit_ship_failures_total", labels):
        assert time.monotonic() < deadline, "no failed attempt was counted"
        trail.shipper.wake()
        time.sleep(0.05)  # poll interval inside a deadline loop
    assert registry.get_sample_value("lianfang_audit_unshipped_bytes", labels) == size
    trail.close(timeout=1)
    assert registry.get_sample_value("lianfang_audit_unshipped_bytes", labels) is None


def test_two_writers_of_one_process_are_reported_by_the_one_collector_of_its_registry(
    tmp_path: Path,
) -> None:
    registry = CollectorRegistry()
    metrics = AuditMetrics(registry)  # e.g. the console and its SDK client: one registry, one collector
    console = LocalTrail(tmp_path, "police", "console", ship=Collect([]), clock=lambda: T0, metrics=metrics)
    sdk = LocalTrail(tmp_path, "police", "sdk", ship=Collect([]), clock=lambda: T0, metrics=metrics)

    def reported() -> list[str]:
        return sorted(
            sample.labels["chain"]
            for family in registry.collect()
            for sample in family.samples
            if sample.name == "lianfang_audit_unshipped_bytes"
        )

    assert reported() == sorted([console.actor, sdk.actor])
    console.close(timeout=5)
    assert reported() == [sdk.actor]
    sdk.close(timeout=5)
    assert reported() == []


# --------------------------------------------------------------------------- hostile participants
# Any participant may append to the audit topic and holds a valid key of its own. These cases start
# from the router's genuine chain of one partition (6 signed entries, then a checkpoint of seq 5:
# lines 1 to 7) and add, remove or change lines.

ROUTER = Signer(Ed25519PrivateKey.generate(), "router-k1")
POLICE = Signer(Ed25519PrivateKey.generate(), "police-k1")
RACTOR = "router/lianfang-router.p3"
FAKE_POLICE = "police/sdk-0a1b2c3d"


def registry_keys(participant: str, kid: str, _at: datetime) -> bytes:
    """The registry's signing keys: router-k1 is the router's, police-k1 police's."""
    for owner, signer in (("router", ROUTER), ("police", POLICE)):
        if (participant, kid) == (owner, signer.kid):
            return crypto.ed25519_public_raw(signer.key)
    raise UnknownKeyError(f"{participant!r} has no signing key {kid!r}")


def _router(n: int = 6, checkpoint: int | None = 5) -> tuple[list[AuditEntry], list[bytes]]:
    entries = chain(n, RACTOR, ROUTER)
    lines = [e.to_line() for e in entries]
    if checkpoint is not None:
        cp = Checkpoint.sign(entries[checkpoint], ROUTER.key, ROUTER.kid, at=T0 + timedelta(hours=1))
        lines.insert(checkpoint + 1, cp.to_line())
    return entries, lines


def _genuine() -> list[bytes]:
    return _router()[1]


def _appended(signer: Signer | None) -> list[bytes]:
    entries, lines = _router()
    return [*lines, chain(1, RACTOR, signer, head=entries[-1])[0].to_line()]


def _injected_in_the_middle() -> list[bytes]:
    entries, lines = _router()
    (forged,) = chain(1, RACTOR, POLICE, head=entries[1])  # another seq 2, signed by police
    return [*lines[:2], forged.to_line(), *lines[2:]]


def _checkpoint_signed_by_police() -> list[bytes]:
    entries, lines = _router()
    fake_head = dataclasses.replace(entries[-1], seq=40)
    return [*lines, Checkpoint.sign(fake_head, POLICE.key, POLICE.kid, at=T0).to_line()]


def _altered_copy() -> list[bytes]:
    entries, lines = _router()
    return [*lines, dataclasses.replace(entries[2], action="deadletter").to_line()]


def _respaced_copy() -> list[bytes]:
    lines = _genuine()
    return [*lines, json.dumps(json.loads(lines[2]), indent=1).replace("\n", " ").encode()]


def _fabricated_police_chain(signer: Signer | None) -> list[bytes]:
    return [*_genuine(), *(e.to_line() for e in chain(3, FAKE_POLICE, signer))]


def _removed_among_forged() -> list[bytes]:
    entries, lines = _router()
    (forged,) = chain(1, RACTOR, POLICE, head=entries[1])
    return [*lines[:2], forged.to_line(), *lines[3:]]


def _edited_in_place() -> list[bytes]:
    entries, lines = _router()
    lines[3] = dataclasses.replace(entries[3], action="deadletter").to_line()  # hash and sig kept
    return lines


def _swapped() -> list[bytes]:
    lines = _genuine()
    lines[1], lines[2] = lines[2], lines[1]
    return lines


def _rewritten_with_a_fresh_hash() -> list[bytes]:
    entries, lines = _router()
    edited = dataclasses.replace(entries[2], action="deadletter")
    lines[2] = dataclasses.replace(edited, hash=edited.computed_hash()).to_line()  # the old sig
    return lines


def _unreadable() -> list[bytes]:
    lines = _genuine()
    return [*lines[:3], b'{"actor":"' + RACTOR.encode() + b'","seq":3,', *lines[3:]]


def _cut_through_the_checkpoint() -> list[bytes]:
    lines = _genuine()
    return [*lines[:4], lines[6]]  # seq 4 and 5 gone, the checkpoint of seq 5 kept


def _cut_after_the_last_checkpoint() -> list[bytes]:
    _, lines = _router(12, checkpoint=2)
    return lines[:-7]  # seq 5 to 11 cut off: seq 3 and 4 remain after the checkpoint of seq 2


def _unsigned_chain_under_a_checkpoint() -> list[bytes]:
    entries = chain(4, RACTOR)
    cp = Checkpoint.sign(entries[-1], ROUTER.key, ROUTER.kid, at=T0 + timedelta(hours=1))
    return [*(e.to_line() for e in entries), cp.to_line()]


def _unsigned_then_signed() -> list[bytes]:
    old = chain(3, RACTOR)
    new = chain(3, RACTOR, ROUTER, head=old[-1])
    cp = Checkpoint.sign(new[-1], ROUTER.key, ROUTER.kid, at=T0 + timedelta(hours=1))
    return [*(e.to_line() for e in [*old, *new]), cp.to_line()]


def _unsigned_after_the_checkpoint() -> list[bytes]:
    entries = chain(4, RACTOR)
    cp = Checkpoint.sign(entries[1], ROUTER.key, ROUTER.kid, at=T0 + timedelta(hours=1))
    return [*(e.to_line() for e in entries[:2]), cp.to_line(), *(e.to_line() for e in entries[2:])]


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    lines: Callable[[], list[bytes]]
    status: str
    set_aside: list[tuple[int, str, str | None]] = dataclasses.field(default_factory=list)
    """(position, kind, actor claimed) of each line set aside."""
    router: tuple[bool, int | None, int] = (True, None, 0)
    """The router's chain: (holds, bad seq, unproven entries)."""
    require_checkpoint: bool = False


CASES = [
    Case("the router's untouched chain verifies", _genuine, "ok"),
    Case(
        "an entry appended under the router's actor by police is reported forged and the router's "
        "chain still verifies",
        lambda: _appended(POLICE),
        "forged",
        [(8, "forged", RACTOR)],
    ),
    Case(
        "an entry signed under the router's key id by another key is reported forged",
        lambda: _appended(Signer(POLICE.key, ROUTER.kid)),
        "forged",
        [(8, "forged", RACTOR)],
    ),
    Case(
        "an entry injected into the middle of the router's chain is reported forged and the chain "
        "still verifies",
        _injected_in_the_middle,
        "forged",
        [(3, "forged", RACTOR)],
    ),
    Case(
        "an unsigned entry under the router's actor is reported unsigned and the chain still verifies",
        lambda: _appended(None),
        "forged",
        [(8, "unsigned", RACTOR)],
    ),
    Case(
        "a checkpoint signed by police under the router's actor is reported forged and cuts nothing",
        _checkpoint_signed_by_police,
        "forged",
        [(8, "forged", RACTOR)],
    ),
    Case(
        "an altered copy of a genuine router entry is reported forged and the chain still verifies",
        _altered_copy,
        "forged",
        [(8, "forged", RACTOR)],
    ),
    Case("a re-spaced copy of a genuine entry is read once", _respaced_copy, "ok"),
    Case(
        "a copy of a genuine entry re-sent ahead of its chain, as to an earlier partition, breaks nothing",
        lambda: [_genuine()[3], *_genuine()],
        "ok",
    ),
    Case(
        "a copy of the chain's first entry re-sent after its chain breaks nothing",
        lambda: [*_genuine(), _genuine()[0]],
        "ok",
    ),
    Case(
        "a police chain fabricated by another participant is reported forged, not ok",
        lambda: _fabricated_police_chain(ROUTER),
        "forged",
        [(8, "forged", FAKE_POLICE), (9, "forged", FAKE_POLICE), (10, "forged", FAKE_POLICE)],
    ),
    Case(
        "a fabricated unsigned police chain is reported unsigned, not ok",
        lambda: _fabricated_police_chain(None),
        "forged",
        [(8, "unsigned", FAKE_POLICE), (9, "unsigned", FAKE_POLICE), (10, "unsigned", FAKE_POLICE)],
    ),
    Case(
        "a genuine entry removed where a forged one stands breaks the chain at its seq",
        _removed_among_forged,
        "broken",
        [(3, "forged", RACTOR)],
        router=(False, 2, 0),
    ),
    Case(
        "a genuine entry edited in place breaks the chain at its seq",
        _edited_in_place,
        "broken",
        router=(False, 3, 0),
    ),
    Case(
        "two swapped genuine entries break the chain at the first of them",
        _swapped,
        "broken",
        router=(False, 1, 0),
    ),
    Case(
        "a genuine entry rewritten with a fresh hash is forged and breaks the chain at its seq",
        _rewritten_with_a_fresh_hash,
        "broken",
        [(3, "forged", RACTOR)],
        router=(False, 2, 0),
    ),
    Case(
        "an unreadable line is blamed on no actor and the chain around it still verifies",
        _unreadable,
        "forged",
        [(4, "unreadable", None)],
    ),
    Case(
        "a tail cut through a signed checkpoint breaks the chain at the first missing seq",
        _cut_through_the_checkpoint,
        "broken",
        router=(False, 4, 0),
    ),
    Case(
        "a chain cut after its last checkpoint reports its tail unproven and fails --require-checkpoint",
        _cut_after_the_last_checkpoint,
        "unproven",
        router=(True, None, 2),
        require_checkpoint=True,
    ),
    Case(
        "a chain cut after its last checkpoint passes without --require-checkpoint, its tail unproven",
        _cut_after_the_last_checkpoint,
        "ok",
        router=(True, None, 2),
    ),
    Case(
        "a chain whose head a signed checkpoint covers passes --require-checkpoint",
        _genuine,
        "ok",
        require_checkpoint=True,
    ),
    Case(
        "an unsigned chain written before entries were signed is proven by its signed checkpoint",
        _unsigned_chain_under_a_checkpoint,
        "ok",
        require_checkpoint=True,
    ),
    Case(
        "unsigned entries count where the writer's first signed entry links to them",
        _unsigned_then_signed,
        "ok",
        require_checkpoint=True,
    ),
    Case(
        "unsigned entries after the last checkpoint are reported unsigned",
        _unsigned_after_the_checkpoint,
        "forged",
        [(4, "unsigned", RACTOR), (5, "unsigned", RACTOR)],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_what_a_hostile_participant_appends_is_set_aside_and_breaks_no_genuine_chain(case: Case) -> None:
    report = verify_lines(case.lines(), keys=registry_keys, require_checkpoint=case.require_checkpoint)
    assert report.status == case.status, [str(c) for c in report.chains]
    assert [(s.position, s.kind, s.actor) for s in report.set_aside] == case.set_aside
    (router,) = [c for c in report.chains if c.actor == RACTOR]
    assert (router.ok, router.bad_seq, router.unproven) == case.router, str(router)
    assert all(c.ok for c in report.chains if c.actor != RACTOR)


def test_every_state_of_a_trail_has_a_case_and_its_own_exit_code() -> None:
    assert {c.status for c in CASES} == set(EXIT_CODES)
    assert len(set(EXIT_CODES.values())) == len(EXIT_CODES)
    assert not {1, 2} & set(EXIT_CODES.values())  # the CLI's own: unreadable trail, misuse


def test_an_entry_is_signed_by_its_writer_over_its_hash_and_its_kid_is_hashed() -> None:
    (entry,) = chain(1, RACTOR, ROUTER)
    assert parse_line(entry.to_line()) == entry
    assert json.loads(entry.to_line())["v"] == 2
    entry.check_signature(registry_keys)
    assert "kid" in entry.body()
    assert dataclasses.replace(entry, kid="police-k1").computed_hash() != entry.hash


def test_an_entry_written_before_entries_were_signed_still_parses_as_unsigned() -> None:
    (entry,) = chain(1)
    line = entry.to_line()
    assert json.loads(line)["v"] == 1
    assert set(json.loads(line)) == {
        "v", "seq", "time", "actor", "action", "subject", "object", "to", "prev_hash", "hash"
    }  # fmt: skip
    assert parse_line(line) == entry
    assert entry.kid is None


def test_the_report_names_each_state_in_words(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_cli, "_keys", lambda _args: registry_keys)
    parser = _parser()

    def run(lines: list[bytes], *flags: str) -> tuple[int, str]:
        path = tmp_path / "audit.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        args = parser.parse_args(["audit", "verify", str(path), *flags])
        code = args.func(args)
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    code, text = run(_appended(POLICE))
    assert code == EXIT_CODES["forged"]
    assert f"{RACTOR}: ok, 6 entries" in text
    assert f"line 8: FORGED entry seq 6 claiming {RACTOR}" in text
    code, text = run(_unreadable())
    assert code == EXIT_CODES["forged"]
    assert "line 4: UNREADABLE, blamed on no actor" in text
    code, text = run(_cut_after_the_last_checkpoint(), "--require-checkpoint")
    assert code == EXIT_CODES["unproven"]
    assert "tail unproven: seq 3 to 4 (2 entries)" in text
    assert "cut off after them cannot be detected" in text
    code, text = run(_swapped())
    assert code == EXIT_CODES["broken"]
    assert f"first bad entry: seq 1 of {RACTOR}" in text
    monkeypatch.setattr(audit_cli, "_keys", lambda _args: None)
    code, text = run(_genuine())
    assert code == EXIT_CODES["unproven"]
    assert "no signature or checkpoint was checked" in text


def test_a_report_without_keys_checks_the_links_and_proves_nothing() -> None:
    report = verify_lines(_genuine())
    assert report.status == "unproven"
    assert [(c.ok, c.entries, c.unproven, c.signatures_checked) for c in report.chains] == [
        (True, 6, 6, False)
    ]
    assert isinstance(report, AuditReport)


# --------------------------------------------------------------------------- helpers


class Collect:
    """A sink that keeps what it was sent, on a cluster of a given id."""

    def __init__(self, sent: list[bytes], cluster: str = "cluster-a") -> None:
        self.sent = sent
        self.id = cluster

    def send(self, _key: bytes, lines: Any) -> None:
        self.sent.extend(lines)

    def cluster(self) -> str:
        return self.id

    def close(self) -> None:
        pass


def _keys(key: Ed25519PrivateKey) -> KeyLookup:
    public = crypto.ed25519_public_raw(key)
    return lambda _actor, _kid, _at: public


def _relink(entries: list[AuditEntry], signer: Signer | None = None) -> list[AuditEntry]:
    out: list[AuditEntry] = []
    for entry in entries:
        head = out[-1] if out else None
        out.append(
            next_entry(
                head,
                actor=entry.actor,
                action="route",
                at=T0 + timedelta(days=1),
                subject=entry.subject,
                signer=signer,
            )
        )
    return out


def _parser() -> argparse.ArgumentParser:
    """The audit commands on a bare parser, registered as services/cli/main.py registers its groups."""
    parser = argparse.ArgumentParser(prog="lianfang")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", type=Path, default=argparse.SUPPRESS)
    subcommands = parser.add_subparsers(dest="command", required=True)

    def command(sub: Any, name: str, func: Any, parent: argparse.ArgumentParser, help: str) -> Any:
        p = sub.add_parser(name, help=help, parents=[parent])
        p.set_defaults(func=func)
        return p

    def group(sub: Any, name: str, help: str) -> Any:
        return sub.add_parser(name, help=help).add_subparsers(dest=f"{name}_command", required=True)

    add_commands(subcommands, common, command, group)
    return parser
