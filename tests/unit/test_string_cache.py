"""pydantic-core keeps strings parsed from JSON in one cache for the whole process; the hub's stored
states and the wire models leave only their keys in it, not their values (pseudonyms, ids, times)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.unit

PARSED = 5_000
KEPT_AT_MOST = 64 * 1024  # bytes; caching the values kept ~900 KiB here (895 KiB measured with "all")

# A fresh process: the cache is process-wide and has no public way to empty it, so in the test process
# another test may already have filled it, and a full cache only swaps strings (no growth to see).
PROBE = textwrap.dedent(
    f"""
    import base64, gc, os, tracemalloc
    from schemas.common import WireModel
    from services.hub.state import LinkState, VictimState

    class Probe(WireModel):
        subject: str
        event: str

    def name() -> str:
        return "p1." + base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")

    victims = [VictimState.new(name()).to_json() for _ in range({PARSED})]
    links = [LinkState(pseudonym=name(), into=name()).to_json() for _ in range({PARSED})]
    wires = [Probe(subject=name(), event=name()).model_dump_json() for _ in range({PARSED})]
    for parse, raw in ((VictimState.from_json, victims[0]), (LinkState.from_json, links[0]),
                       (Probe.model_validate_json, wires[0])):
        parse(raw)  # the keys, once
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for raw in victims:
        VictimState.from_json(raw)
    for raw in links:
        LinkState.from_json(raw)
    for raw in wires:
        Probe.model_validate_json(raw)
    gc.collect()
    print(tracemalloc.get_traced_memory()[0] - before)
    """
)


def test_parsing_distinct_states_and_wire_records_keeps_none_of_their_values_in_memory() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    kept = int(done.stdout.strip())
    assert kept < KEPT_AT_MOST, f"{kept} bytes kept after parsing {3 * PARSED} distinct records"
