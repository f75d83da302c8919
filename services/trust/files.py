"""Keystore files: written atomically with mode 0600 and fsync, read with a size cap before parsing.

The format and its encryption are :mod:`services.kernel.keystore`'s; this module only does the I/O.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from services.kernel.errors import TransportError, UsageError
from services.kernel.keystore import MAX_KEYSTORE_BYTES, KdfParams, Keystore

DEFAULT_KDF = KdfParams()


def save_keystore(
    store: Keystore, path: str | os.PathLike[str], passphrase: str, *, kdf: KdfParams = DEFAULT_KDF
) -> None:
    """Encrypt and write atomically: a 0600 temporary file in the same folder, fsync, rename."""
    data = store.to_bytes(passphrase, kdf=kdf)
    target = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as e:
        raise TransportError(f"cannot write the keystore in {target.parent}: {e.strerror}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise TransportError(f"cannot write the keystore {target}: {e.strerror}") from e
    _fsync_directory(target.parent)


def load_keystore(path: str | os.PathLike[str], passphrase: str) -> Keystore:
    """Read and decrypt a keystore file written by :func:`save_keystore`."""
    target = Path(path)
    try:
        with target.open("rb") as f:
            data = f.read(MAX_KEYSTORE_BYTES + 1)
    except FileNotFoundError:
        raise UsageError(f"there is no keystore at {target}") from None
    except OSError as e:
        raise TransportError(f"cannot read the keystore {target}: {e.strerror}") from e
    return Keystore.from_bytes(data, passphrase)


def _fsync_directory(directory: Path) -> None:
    # Make the rename itself durable. Best effort: some platforms cannot open a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
