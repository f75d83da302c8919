"""The router's state of one events partition, compact: the ids its replay window remembers take 28
bytes each instead of a few hundred as Python strings in a dict.

The state (:class:`services.bus.eos.PartitionState`) maps string keys to bytes values. The replay
window writes one key per accepted event: its id, a UUID, with a :class:`~services.kernel.envelope.Seen`
(the event's time and the digest of its bytes) as value; the audit trail writes a couple of other keys.
:class:`SeenStore` holds each remembered id as one fixed-width record in a sorted ``bytearray``:

- the id's 16 bytes, exactly: an id is never mistaken for another, so a new event is never refused as a
  replay of an event it is not (no false positive, whatever the number of ids);
- the first 8 bytes of the SHA-256 of the accepted record: it only tells a byte-identical copy (a
  producer's retry, dropped and counted) from another record under the same id (a replay, dead-lettered).
  A different record taken for a copy needs the first 64 bits of two SHA-256 digests to agree: 2^-64 for
  a record that is not chosen to, about 2^64 hashing for one that is. Either way it is refused;
  only the reason differs;
- the event's time as whole seconds rounded *up*, so an id is never forgotten before its time leaves the
  window (pruning drops an id whose time is before the window's start; rounding up can only keep it
  up to a second longer).

Records are ordered by id; UUIDv7 ids sort by creation time, so new ids land at or near the end and an
insert moves few bytes. Other keys, and a value under a UUID key that is not a ``Seen``, are kept as
given in a plain dict. Pure: no I/O.
"""

from __future__ import annotations

import bisect
import math
import struct
import uuid
from collections.abc import Iterator, MutableMapping
from typing import Final

from services.kernel.envelope import DIGEST_HEX, Seen

RECORD: Final = struct.Struct(">16s8sI")
"""One remembered id: the UUID's 16 bytes, 8 bytes of the record's digest, the time (ceil, seconds)."""
ID_BYTES: Final = 16
MAX_TIME: Final = 2**32 - 1


def _uuid_bytes(key: str) -> bytes | None:
    """The 16 bytes of ``key`` if it is a UUID in canonical lower-case form (so it can be rebuilt).

    Read with ``bytes.fromhex`` and checked by writing the bytes back in canonical form (``fromhex``
    also takes upper case and spaces, which the comparison refuses): the router asks this twice for
    every event, and ``uuid.UUID`` costs several times more."""
    if len(key) != 36:
        return None
    try:
        raw = bytes.fromhex(key[0:8] + key[9:13] + key[14:18] + key[19:23] + key[24:36])
    except ValueError:
        return None
    if len(raw) != ID_BYTES:
        return None
    h = raw.hex()
    return raw if f"{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}" == key else None


def _packed(value: bytes) -> tuple[bytes, int] | None:
    """(digest bytes, time) of a ``Seen`` value, or None if ``value`` is not one this store can hold."""
    try:
        seen = Seen.decode(value)
        digest = bytes.fromhex(seen.digest)
    except (UnicodeDecodeError, ValueError):
        return None
    if len(digest) != DIGEST_HEX // 2 or not math.isfinite(seen.time):
        return None
    return digest, min(MAX_TIME, max(0, math.ceil(seen.time)))


class _Ids:
    """The sorted records seen as a sequence of ids, for :mod:`bisect`."""

    __slots__ = ("buf",)

    def __init__(self, buf: bytearray) -> None:
        self.buf = buf

    def __len__(self) -> int:
        return len(self.buf) // RECORD.size

    def __getitem__(self, i: int) -> bytes:
        at = i * RECORD.size
        return bytes(self.buf[at : at + ID_BYTES])


class SeenStore(MutableMapping[str, bytes]):
    """A partition's committed state: remembered ids packed (28 bytes each), other keys as given."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._ids = _Ids(self._buf)
        self._other: dict[str, bytes] = {}

    def _find(self, raw: bytes) -> tuple[int, bool]:
        """Where ``raw`` is, or would go, and whether it is there. A new UUIDv7 id sorts after every
        remembered one: it is compared with the last record first, before any binary search."""
        n = len(self._buf) // RECORD.size
        if n == 0:
            return 0, False
        last = (n - 1) * RECORD.size
        if self._buf[last : last + ID_BYTES] < raw:
            return n, False
        i = bisect.bisect_left(self._ids, raw)
        return i, i < n and self._ids[i] == raw

    def __getitem__(self, key: str) -> bytes:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def get(self, key: str, default: bytes | None = None) -> bytes | None:  # type: ignore[override]
        """The value under ``key``, or ``default``. The router asks this for every new event's id,
        which is not there: answered without raising and catching a ``KeyError``, as the mixin would."""
        raw = _uuid_bytes(key)
        if raw is not None:
            i, found = self._find(raw)
            if found:
                _, digest, at = RECORD.unpack_from(self._buf, i * RECORD.size)
                return Seen(float(at), digest.hex()).encode()
        return self._other.get(key, default)

    def __setitem__(self, key: str, value: bytes) -> None:
        raw = _uuid_bytes(key)
        packed = None if raw is None else _packed(value)
        if raw is None or packed is None:
            if raw is not None:
                self._remove(raw)
            self._other[key] = value
            return
        self._other.pop(key, None)
        record = RECORD.pack(raw, *packed)
        i, found = self._find(raw)
        at = i * RECORD.size
        if found:
            self._buf[at : at + RECORD.size] = record
        else:
            self._buf[at:at] = record

    def _remove(self, raw: bytes) -> bool:
        i, found = self._find(raw)
        if found:
            del self._buf[i * RECORD.size : (i + 1) * RECORD.size]
        return found

    def __delitem__(self, key: str) -> None:
        raw = _uuid_bytes(key)
        if raw is not None and self._remove(raw):
            return
        del self._other[key]

    def __iter__(self) -> Iterator[str]:
        for i in range(len(self._ids)):
            yield str(uuid.UUID(bytes=self._ids[i]))
        yield from list(self._other)

    def __len__(self) -> int:
        return len(self._ids) + len(self._other)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        raw = _uuid_bytes(key)
        return (raw is not None and self._find(raw)[1]) or key in self._other

    def older_than(self, cutoff: float) -> list[str]:
        """The remembered ids whose time is before ``cutoff`` (seconds), in one pass over the records."""
        old = []
        size = RECORD.size
        for at in range(0, len(self._buf), size):
            raw, _, t = RECORD.unpack_from(self._buf, at)
            if t < cutoff:
                old.append(str(uuid.UUID(bytes=raw)))
        return old

    def bytes_used(self) -> int:
        """What the remembered ids take: the records' buffer as allocated (its spare room included)."""
        return self._buf.__sizeof__()
