"""The outbox keeps an accepted event on disk, in order, until Kafka has it, and never lets one event
id stand for two contents."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from services.sdk.outbox import ConflictError, Outbox, Record
from tests.kit import until

pytestmark = pytest.mark.unit


def _put(box: Outbox, event_id: str, value: bytes = b"sealed") -> bool:
    return box.put(event_id=event_id, topic="events", key=b"subject", value=value, headers=[("ce_id", b"x")])


def test_accepted_records_wait_in_acceptance_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.sqlite")
    for i in range(5):
        _put(box, f"id-{i}")
    assert [p.event_id for p in box.pending()] == [f"id-{i}" for i in range(5)]
    assert box.pending()[0].headers == [("ce_id", b"x")]
    assert box.depth() == 5


def test_an_accepted_record_survives_closing_and_reopening_the_spool(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path)
    _put(box, "kept")
    box.close()
    assert [p.event_id for p in Outbox(path).pending()] == ["kept"]


def test_the_spool_is_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.sqlite")
    assert box._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert box._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_the_same_event_again_with_the_same_bytes_is_accepted_once(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.sqlite")
    assert _put(box, "once") is True
    assert _put(box, "once") is False
    assert box.depth() == 1


def test_an_event_id_with_other_content_is_refused_before_and_after_it_was_sent(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.sqlite")
    _put(box, "e1", b"first")
    with pytest.raises(ConflictError, match="different content"):
        _put(box, "e1", b"second")
    box.mark_sent(box.pending())
    assert box.depth() == 0
    with pytest.raises(ConflictError):
        _put(box, "e1", b"second")
    assert _put(box, "e1", b"first") is False, "a retry of a sent event is not sent again"


def test_sent_records_leave_the_spool_and_the_oldest_age_follows(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.sqlite")
    _put(box, "a")
    _put(box, "b")
    first = box.pending()[0]
    assert box.oldest_age(now=first.accepted + 10) == pytest.approx(10, abs=0.01)
    box.mark_sent([first])
    assert [p.event_id for p in box.pending()] == ["b"]
    box.mark_sent(box.pending())
    assert box.oldest_age() == 0.0


def test_a_failed_write_leaves_no_half_record(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.sqlite")
    with pytest.raises(sqlite3.Error):
        box.put(event_id="x", topic=None, key=None, value=b"v", headers=[])  # type: ignore[arg-type]
    assert box.depth() == 0


def _record(event_id: str, value: bytes = b"sealed") -> Record:
    return Record(event_id=event_id, topic="events", key=b"subject", value=value, headers=[("ce_id", b"x")])


def test_a_batch_is_stored_with_one_commit_and_says_which_records_were_new_the_same_or_a_conflict(
    tmp_path: Path,
) -> None:
    box = Outbox(tmp_path / "outbox.sqlite")
    _put(box, "before", b"first")
    commits = box.commits
    outcomes = box.put_many([_record("a"), _record("before", b"first"), _record("before", b"other"),
                             _record("b")])  # fmt: skip
    assert outcomes == ["new", "same", "conflict", "new"]
    assert box.commits == commits + 1
    assert [p.event_id for p in box.pending()] == ["before", "a", "b"]
    assert box.pending()[0].value == b"first", "a conflict changes nothing"


def test_the_counts_a_publish_asks_for_do_not_wait_for_a_commit_in_flight(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.sqlite")
    _put(box, "committed")
    box.put_deferred(event_id="waits", kid="k", sealed=b"opaque")
    in_flight, release, counted = threading.Event(), threading.Event(), threading.Event()
    counts: list[int] = []

    def commit_in_flight() -> None:  # holds the writer's lock as a commit does through its fsync
        with box._lock:
            in_flight.set()
            release.wait(10)

    def count() -> None:
        counts.extend([box.depth(), box.waiting()])
        counted.set()

    holder = threading.Thread(target=commit_in_flight)
    holder.start()
    until(in_flight.is_set, "the commit in flight holding the writer's lock")
    threading.Thread(target=count).start()
    try:
        until(counted.is_set, "the counts read while a commit holds the writer's lock", deadline_s=5)
        assert counts == [2, 1], "every committed row counted"
    finally:
        release.set()
        holder.join(10)
        box.close()
