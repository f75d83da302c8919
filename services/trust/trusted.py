"""A process's record of the highest registry it trusted: ``HOME/trusted/<name>.json``.

The record is that registry's file, byte for byte (signature line and payload), so it holds the
version, the digest and the roots the process trusts, and proves itself: it is re-read with
:func:`~services.kernel.registry.self_signed`. A process loads it at start and never goes below it
(:func:`~services.kernel.registry.judge_start`), and replaces it each time it takes a newer registry.

Several processes share one home folder in the demo, so each names its own record after its service,
participant and registry topic (:func:`record_name`); processes that share a name (two router workers
on one machine) only ever raise it: a write under an exclusive lock replaces the file only with a newer
version. The file is replaced atomically (temporary file, fsync, rename, fsync of the folder).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
from datetime import datetime
from pathlib import Path

from services.kernel.errors import LianfangError, UsageError
from services.kernel.registry import Registry, self_signed

log = logging.getLogger("lianfang.registry")

FOLDER = "trusted"


def record_name(service: str, topic: str, participant: str | None = None) -> str:
    """``router@lianfang.registry.v1``, ``sdk.police@lianfang.registry.v1``: one record per process
    kind, participant and registry topic (a test bus with its own topic prefix has its own)."""
    name = f"{service}.{participant}@{topic}" if participant else f"{service}@{topic}"
    if re.fullmatch(r"[A-Za-z0-9._@-]{1,200}", name) is None:
        raise UsageError(f"{name!r} cannot name a trusted-registry record")
    return name


class TrustedRecord:
    """``HOME/trusted/<name>.json``: read at start, raised with every registry the process takes."""

    def __init__(self, home: Path, name: str) -> None:
        self.folder = home / FOLDER
        self.path = self.folder / f"{name}.json"
        self._lock_path = self.folder / f".{name}.lock"

    def load(self, now: datetime) -> Registry | None:
        """The registry recorded, or ``None`` if there is none yet; a record that does not verify
        against its own roots (edited, cut short) stops the process: it must not fall back to less."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return self_signed(data, now=now)
        except LianfangError as e:
            raise UsageError(
                f"{self.path} does not hold a whole signed registry ({e}); it records the newest registry "
                "this process trusted: restore it, or, after checking HOME/root.json and HOME/registry.json "
                "with the root holders, remove it to trust them again"
            ) from e

    def save(self, registry: Registry, now: datetime) -> bool:
        """Record ``registry`` if it is newer than the record; whether it was written."""
        if not registry.data:
            raise UsageError("only a registry read from its signed file can be recorded")
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self._lock_path, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                recorded = self.load(now)
            except UsageError:
                recorded = None  # a broken record is replaced by a whole one
            if recorded is not None and recorded.version >= registry.version:
                return False
            _replace(self.path, registry.data)
        log.info("recorded registry v%d as the newest trusted, in %s", registry.version, self.path)
        return True


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself survives a crash
    finally:
        os.close(folder)
