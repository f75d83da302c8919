"""The gateway fuzzed through its own OpenAPI document (schemathesis), briefly and with a fixed seed:
unsigned requests get 4xx problem answers, signed ones with generated bodies never get a 5xx. The inbox
is read from the session's Kafka. ``make fuzz`` runs the same target for longer (tests/fuzz)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Unique
from tests.fuzz.gateway import fuzz_gateway, running_gateway

pytestmark = pytest.mark.integration

EXAMPLES = 25  # generated requests per operation and generation mode, each sent unsigned and signed
SEED = 1


def test_no_generated_request_gets_a_5xx_and_every_refusal_is_a_problem_document(
    kafka_bootstrap: str, unique: Unique, tmp_path: Path
) -> None:
    with running_gateway(tmp_path, bootstrap=kafka_bootstrap, prefix=unique.prefix + ".") as gw:
        outcome = fuzz_gateway(gw, examples=EXAMPLES, seed=SEED)
    assert outcome.findings == []
    assert outcome.requests >= 3 * 2 * EXAMPLES
    assert outcome.statuses.get(202, 0) > 0, f"no generated event was accepted: {outcome.statuses}"
    assert outcome.statuses.get(200, 0) > 0, f"no inbox page was served: {outcome.statuses}"
