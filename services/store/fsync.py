"""Group fsync of an append-only file: one ``fsync`` covers every line written while the last was in flight.

An append that must be on disk before its caller goes on (an audit entry before the audited action is
acknowledged) used to open, write and fsync the file once per line, so concurrent writers queued behind
each other's fsync. Here writers append under their own ordering lock and take a ticket; a writer then
waits until a sync that started after its write has finished. The first waiter to find no sync in
flight runs one for everything written so far; the others wait for it, or lead the next.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

__all__ = ["AppendFile"]


class AppendFile:
    """An append-only file kept open, with group fsync. Thread-safe: :meth:`append` may be called from
    any thread, under the caller's lock when lines must keep an order."""

    def __init__(self, path: Path, mode: int = 0o600) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode)
        os.fsync(self._fd)  # what an earlier process left may still be in the page cache only
        self._cond = threading.Condition()
        self._written = 0  # lines written (tickets handed out)
        self._durable = 0  # lines covered by a finished fsync
        self._size = os.fstat(self._fd).st_size  # bytes in the file, with what this object wrote
        self.durable_size = self._size
        """Bytes at the start of the file that a finished fsync covers: readers that must not see a
        line the file could still lose (the audit shipper) read no further."""
        self._syncing = False
        self.syncs = 0  # fsyncs run (for tests and benchmarks: lines per fsync)

    def write(self, line: bytes) -> int:
        """Append ``line`` (one ``write``, so lines of concurrent writers never interleave); its ticket
        for :meth:`wait_durable`. Raises :class:`OSError` as ``os.write`` does."""
        with self._cond:
            os.write(self._fd, line)
            self._written += 1
            self._size += len(line)
            return self._written

    def wait_durable(self, ticket: int) -> None:
        """Return once the line of ``ticket`` is on disk; raise :class:`OSError` if the fsync that was
        to cover it failed (the next caller tries again)."""
        with self._cond:
            while self._durable < ticket:
                if self._syncing:
                    self._cond.wait()
                    continue
                self._syncing = True
                target, target_size = self._written, self._size
                self._cond.release()
                try:
                    os.fsync(self._fd)
                finally:  # a failed fsync covers nothing: the next waiter runs another
                    self._cond.acquire()
                    self._syncing = False
                    self._cond.notify_all()
                self.syncs += 1
                self._durable = max(self._durable, target)
                self.durable_size = max(self.durable_size, target_size)

    def append(self, line: bytes) -> None:
        """:meth:`write` then :meth:`wait_durable`: the line is on disk when this returns."""
        self.wait_durable(self.write(line))

    def close(self) -> None:
        with self._cond:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
