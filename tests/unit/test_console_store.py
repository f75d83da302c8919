"""The console's store: records and own actions kept once each, and writes of concurrent callers sharing
one commit while each caller still returns only once its own row is on disk."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.console.store import ViewStore
from services.console.view import OwnAction
from tests.kit import until

pytestmark = pytest.mark.unit


def test_a_record_is_kept_once_and_survives_reopening_the_store(tmp_path: Path) -> None:
    store = ViewStore(tmp_path / "view.sqlite")
    assert store.add_record("e1", b"sealed") is True
    assert store.add_record("e1", b"sealed") is False
    action = OwnAction("e2", "acknowledge", "a1", "subject", datetime(2026, 1, 2, tzinfo=UTC), "li")
    store.add_own(action)
    store.add_own(action)
    store.close()
    again = ViewStore(tmp_path / "view.sqlite")
    assert list(again.records()) == [b"sealed"]
    assert again.own_actions() == [action]


def test_records_written_while_a_commit_is_in_flight_share_the_next_commit(tmp_path: Path) -> None:
    store = ViewStore(tmp_path / "view.sqlite")
    results: dict[str, bool] = {}

    def add(event_id: str) -> None:
        results[event_id] = store.add_record(event_id, event_id.encode())

    with store._lock:  # the first writer's commit waits for the store, the others queue behind it
        threads = [threading.Thread(target=add, args=(f"e{i}",)) for i in range(8)]
        for thread in threads:
            thread.start()
        until(lambda: store._commits.queued == 7, "seven writes queued behind the first commit")
    for thread in threads:
        thread.join(10)
    assert results == {f"e{i}": True for i in range(8)}
    assert store.commits == 2, "one commit for the first write, one for the seven queued behind it"
    assert sorted(store.records()) == sorted(f"e{i}".encode() for i in range(8))
