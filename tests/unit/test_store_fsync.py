"""Group fsync of an append-only file (the audit trail's)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from services.store import fsync
from services.store.fsync import AppendFile
from tests.kit import until

pytestmark = pytest.mark.unit


def test_lines_written_while_an_fsync_is_in_flight_share_the_next_fsync_and_each_is_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync
    in_flight, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def slow_first_fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            in_flight.set()
            release.wait(10)
        real_fsync(fd)

    file = AppendFile(tmp_path / "a.jsonl")  # opening syncs what an earlier process left: not counted
    monkeypatch.setattr(fsync.os, "fsync", slow_first_fsync)
    first = threading.Thread(target=file.append, args=(b"line 0\n",))
    first.start()
    until(in_flight.is_set, "the first fsync")
    others = [threading.Thread(target=file.write, args=(f"line {i}\n".encode(),)) for i in range(1, 8)]
    for t in others:
        t.start()
    for t in others:
        t.join(10)
    waiters = [
        threading.Thread(target=file.wait_durable, args=(8,)) for _ in range(3)
    ]  # 8: the last line's ticket
    for t in waiters:
        t.start()
    release.set()
    for t in [first, *waiters]:
        t.join(10)
    assert file.syncs == 2, "one fsync for the first line, one for the seven written during it"
    lines = (tmp_path / "a.jsonl").read_bytes().splitlines()
    assert sorted(lines) == sorted(f"line {i}".encode() for i in range(8))
    file.close()


def test_a_failed_fsync_reaches_its_waiter_and_the_next_append_syncs_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync
    failures = [OSError(5, "Input/output error")]

    def failing_once(fd: int) -> None:
        if failures:
            raise failures.pop()
        real_fsync(fd)

    file = AppendFile(tmp_path / "b.jsonl")
    monkeypatch.setattr(fsync.os, "fsync", failing_once)
    with pytest.raises(OSError, match="Input/output error"):
        file.append(b"first\n")
    file.append(b"second\n")
    assert file.syncs == 1
    assert (tmp_path / "b.jsonl").read_bytes() == b"first\nsecond\n"
    file.close()


def test_only_bytes_a_finished_fsync_covers_count_as_durable(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(b"left by an earlier process\n")
    file = AppendFile(path)
    assert file.durable_size == 27, "what the file held when opened is synced then"
    ticket = file.write(b"new line\n")
    assert file.durable_size == 27, "written, not yet synced"
    file.wait_durable(ticket)
    assert file.durable_size == 36
    file.close()
