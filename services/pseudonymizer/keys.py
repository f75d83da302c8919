"""The pseudonymizer's key folder, ``HOME/pseudonymizer/``: every key file it holds, and destroying one.

``lianfang init`` writes the first key to ``key.json``; ``lianfang pseudonymizer rotate`` writes the next
ones to ``key.v<N>.json`` (:func:`~services.pseudonymizer.core.key_file_name`). The version inside a file
is what counts. Which keys the service serves, and which it destroys, the registry in force decides
(:func:`~services.pseudonymizer.core.named_versions`, :func:`~services.pseudonymizer.core.retired_versions`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from services.kernel.errors import UsageError
from services.pseudonymizer.core import PseudonymizerKey

__all__ = ["KeyFolder", "destroy_file"]


@dataclass(frozen=True, slots=True)
class KeyFolder:
    path: Path

    def files(self) -> list[Path]:
        return sorted(self.path.glob("key*.json")) if self.path.is_dir() else []

    def read(self) -> dict[int, tuple[Path, PseudonymizerKey]]:
        """Every key in the folder by version. Two files of one version must hold the same key (a copy);
        two different keys under one version are refused, since either could be the one the roots
        named."""
        found: dict[int, tuple[Path, PseudonymizerKey]] = {}
        for path in self.files():
            key = PseudonymizerKey.from_json(path.read_bytes())
            held = found.get(key.version)
            if held is not None and held[1].key.public != key.key.public:
                raise UsageError(
                    f"{held[0]} and {path} hold two different pseudonymizer keys of version {key.version}: "
                    "keep the one the registry names"
                )
            found.setdefault(key.version, (path, key))
        return found

    def paths_of(self, version: int) -> list[Path]:
        """The files holding the key of ``version`` (a copy may sit beside the original)."""
        return [p for p in self.files() if PseudonymizerKey.from_json(p.read_bytes()).version == version]


def destroy_file(path: Path) -> None:
    """Overwrite a key file with zeros, flush it to disk, unlink it and flush the folder, so the key is
    neither in the file nor in the folder after a crash. Copies a filesystem or a backup made elsewhere
    are out of reach; raises ``OSError`` (a read-only mount) with the file possibly still there."""
    size = path.stat().st_size
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, b"\0" * size)
        os.fsync(fd)
    finally:
        os.close(fd)
    path.unlink()
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
