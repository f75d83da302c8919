"""The audit trail: each edit, removal or reordering is caught at the entry where it happened."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
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
    Checkpoint,
    KeyLookup,
    next_entry,
    parse_line,
    principal,
    verify,
    verify_lines,
)
from services.audit.metrics import AuditMetrics
from services.audit.shipping import Shipper
from services.audit.trail import AuditTrail, LocalTrail, Signer, read_file
from services.cli.audit import add_commands
from services.kernel import crypto, jsonx
from services.kernel.errors import TransportError

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
SUBJECT = "p0." + "Q" * 43


def chain(n: int, actor: str = "police") -> list[AuditEntry]:
    entries: list[AuditEntry] = []
    head = None
    for i in range(n):
        head = next_entry(
            head,
            actor=actor,
            action="open_section",
            at=T0 + timedelta(minutes=i),
            subject=SUBJECT,
            object=f"0190f2a0-0000-7000-8000-{i:012d}",
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
    results = verify_lines(lines)
    assert [(r.ok, r.bad_seq) for r in results] == [(False, 2)]


def test_a_cut_off_tail_is_caught_by_the_signed_checkpoint() -> None:
    key = Ed25519PrivateKey.generate()
    entries = chain(5)
    cp = Checkpoint.sign(entries[-1], key, "k1", at=T0 + timedelta(hours=1))
    keys = _keys(key)
    assert verify(entries, [cp], keys=keys).checkpoints_verified == 1
    result = verify(entries[:3], [cp], keys=keys)
    assert (result.ok, result.bad_seq) == (False, 3)
    assert "missing" in (result.problem or "")


def test_a_wholly_rewritten_chain_is_caught_by_the_signed_checkpoint() -> None:
    key = Ed25519PrivateKey.generate()
    entries = chain(4)
    cp = Checkpoint.sign(entries[-1], key, "k1", at=T0 + timedelta(hours=1))
    forged = _relink(chain(4))  # same length, other content: every link holds, every hash differs
    assert verify(forged).ok
    result = verify(forged, [cp], keys=_keys(key))
    assert not result.ok
    assert "differs from the signed checkpoint" in (result.problem or "")


def test_a_checkpoint_signed_by_another_key_is_refused() -> None:
    entries = chain(2)
    cp = Checkpoint.sign(entries[-1], Ed25519PrivateKey.generate(), "k1", at=T0)
    result = verify(entries, [cp], keys=_keys(Ed25519PrivateKey.generate()))
    assert not result.ok
    assert "does not verify" in (result.problem or "")


def test_personal_data_is_refused_in_subject_and_object() -> None:
    for bad in ("13800138000", "11010519491231002X", "王小红", "Wang Xiaohong"):
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
    results = verify_lines(read_file(path), keys=_keys(key), require_checkpoint=True)
    assert [r.ok for r in results] == [True]
    assert [k for k, _ in published] == [b"police"] * 3
    lines = path.read_bytes().splitlines()
    body = json.loads(lines[0])
    body["subject"] = None
    path.write_bytes(b"\n".join([jsonx.compact_json(body), *lines[1:]]) + b"\n")
    with pytest.raises(AuditError, match="seq 0"):
        AuditTrail("police", path=path)


def test_audit_verify_command_names_the_first_bad_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"".join(e.to_line() + b"\n" for e in chain(5)))
    parser = _parser()
    args = parser.parse_args(["audit", "verify", str(path), "--home", str(tmp_path / "none")])
    assert args.func(args) == 0
    lines = path.read_bytes().splitlines()
    edited = json.loads(lines[3])
    edited["action"] = "route"
    lines[3] = jsonx.compact_json(edited)
    path.write_bytes(b"\n".join(lines) + b"\n")
    args = parser.parse_args(["audit", "verify", str(path), "--home", str(tmp_path / "none")])
    assert args.func(args) == 1
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
    results = verify_lines([e.to_line() for e in entries])
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
    assert [(r.ok, r.entries) for r in verify_lines(resent)] == [(True, 4)]
    other = dataclasses.replace(entries[1], action="route")
    forged = [*lines[:3], dataclasses.replace(other, hash=other.computed_hash()).to_line(), lines[3]]
    assert [r.ok for r in verify_lines(forged)] == [False]


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
    results = verify_lines(read_file(path), keys=_keys(key), require_checkpoint=True)
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
    results = verify_lines(read_file(trail.path), keys=_keys(key), require_checkpoint=True)
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


def _relink(entries: list[AuditEntry]) -> list[AuditEntry]:
    out: list[AuditEntry] = []
    for entry in entries:
        head = out[-1] if out else None
        out.append(
            next_entry(
                head, actor=entry.actor, action="route", at=T0 + timedelta(days=1), subject=entry.subject
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
