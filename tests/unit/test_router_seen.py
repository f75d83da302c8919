"""The router's compact replay state (``services/router/seen.py``): it behaves as the dict it replaces,
keeps every id whole (no new event refused as another's replay), never forgets an id while its event
is inside the window, and takes at most 40 bytes a remembered id."""

from __future__ import annotations

import hashlib
import math
import tracemalloc
import uuid
from datetime import timedelta
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.bus.eos import PartitionState
from services.kernel.envelope import DIGEST_HEX, DuplicateError, ReplayError, ReplayWindow, Seen, new_event_id
from services.router.app import SeenIds
from services.router.seen import SeenStore
from tests.kit import NOW

pytestmark = pytest.mark.unit

IDS = [
    *(str(uuid.UUID(int=i * 0x1_0000_0000_0001)) for i in range(1, 6)),
    "0190abcd-ef01-7abc-8def-0123456789ab",
]
# Keys that only look like ids: the upper-case form of one, one with a space where fromhex would skip
# it, and 36 characters that are no UUID. The store keeps them apart from the ids, as a dict would.
LOOKALIKES = [IDS[-1].upper(), "0190abcd-ef01-7abc-8def-0123456789 b", "x" * 36]
KEYS = [*IDS, *LOOKALIKES, "audit:head", "audit:signed"]


def _seen(time: float, body: bytes = b"x") -> bytes:
    return Seen(time, hashlib.sha256(body).hexdigest()).encode()


def _as_remembered(key: str, value: bytes) -> bytes:
    """What the store gives back for ``value``: a Seen under an id is kept as time (rounded up) and
    the start of its digest; anything else as given."""
    if key not in IDS:
        return value
    seen = Seen.decode(value)
    return Seen(float(math.ceil(seen.time)), seen.digest).encode()


operations = st.lists(
    st.tuples(
        st.sampled_from(["set", "del"]),
        st.sampled_from(KEYS),
        st.floats(min_value=0, max_value=4e9, allow_nan=False),
    ),
    max_size=40,
)


@given(ops=operations)
def test_the_store_holds_what_a_dict_holds_under_any_sequence_of_puts_and_deletes(
    ops: list[tuple[str, str, float]],
) -> None:
    store, model = SeenStore(), {}
    for op, key, t in ops:
        if op == "set":
            value = _seen(t) if key in IDS else str(t).encode()
            store[key] = value
            model[key] = _as_remembered(key, value)
        elif key in model:
            del store[key]
            del model[key]
        else:
            with pytest.raises(KeyError):
                del store[key]
    assert dict(store.items()) == model
    assert len(store) == len(model)
    assert all((k in store) == (k in model) for k in KEYS)
    assert all(store.get(k) == model.get(k) for k in KEYS)
    assert store.get(str(uuid.UUID(int=7)), b"-") == b"-"  # an id never put: the default


def test_ids_that_differ_in_one_bit_are_two_ids() -> None:
    store = SeenStore()
    a = str(uuid.UUID(int=0x0190_0000_0000_7000_8000_0000_0000_0000))
    b = str(uuid.UUID(int=0x0190_0000_0000_7000_8000_0000_0000_0001))
    store[a] = _seen(1.0)
    assert b not in store
    assert a in store


def test_a_time_is_rounded_up_so_an_id_is_never_forgotten_while_its_event_is_in_the_window() -> None:
    store = SeenStore()
    event = new_event_id()
    store[event] = _seen(1000.25)
    assert store.older_than(1000.25) == []
    assert store.older_than(1000.5) == []
    assert store.older_than(1001.5) == [event]


def test_a_full_digest_remembered_before_reads_as_its_start() -> None:
    store = SeenStore()
    event = new_event_id()
    full = hashlib.sha256(b"record").hexdigest()
    store[event] = f"{12.0!r} {full}".encode()
    assert Seen.decode(store[event]).digest == full[:DIGEST_HEX]


def test_the_replay_window_over_the_compact_state_drops_a_copy_and_refuses_a_replay() -> None:
    state = PartitionState(0, SeenStore())
    window = ReplayWindow(seen=SeenIds(state))
    header = SimpleNamespace(id=new_event_id(), time=NOW)
    window.check(header, NOW, b"record")  # type: ignore[arg-type]
    state._apply()
    with pytest.raises(DuplicateError):
        window.check(header, NOW, b"record")  # type: ignore[arg-type]
    with pytest.raises(ReplayError) as refused:
        window.check(header, NOW, b"another record under the same id")  # type: ignore[arg-type]
    assert not isinstance(refused.value, DuplicateError)


def test_pruning_the_compact_state_forgets_exactly_the_ids_before_the_window() -> None:
    state = PartitionState(0, SeenStore())
    window = ReplayWindow(window=timedelta(days=1), seen=SeenIds(state))
    old = [SimpleNamespace(id=new_event_id(), time=NOW - timedelta(hours=h)) for h in (30, 26)]
    new = [SimpleNamespace(id=new_event_id(), time=NOW - timedelta(hours=h)) for h in (23, 1)]
    for header in [*old, *new]:
        window.check(header, NOW - timedelta(hours=25) if header in old else NOW)  # type: ignore[arg-type]
    state._apply()
    assert window.prune(NOW) == 2
    assert {k for k, v in state.pending.items() if v is None} == {h.id for h in old}
    state._apply()
    assert set(state.data) == {h.id for h in new}


def test_a_remembered_id_takes_at_most_40_bytes() -> None:
    n = 20_000
    ids = [new_event_id() for _ in range(n)]
    value = _seen(NOW.timestamp())
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        store = SeenStore()
        for event in ids:
            store[event] = value
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(store) == n
    assert used / n <= 40, f"{used / n:.1f} bytes an id"
