"""One exactly-once worker copying its source to ``OUT``, in a process of its own, for tests that kill
it: ``python -m tests.integration.eos_worker BOOTSTRAP GROUP SOURCE STATE OUT WORKER_ID SESSION_MS``
(``WORKER_ID`` ``-``: unnamed). It runs until it is killed. (The same worker in the test's process:
``test_eos_restart._copier``.)"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from services.bus.eos import Output, PartitionState, TransactionalRunner


def main(argv: list[str]) -> int:
    bootstrap, group, source, state, out, worker_id, session_ms = argv

    async def copy(record: Any, _state: PartitionState) -> list[Output]:
        return [Output(out, record.value, record.key)]

    runner = TransactionalRunner(
        bootstrap=bootstrap,
        group_id=group,
        source=source,
        state_topic=state,
        handler=copy,
        worker_id=None if worker_id == "-" else worker_id,
        session_timeout_ms=int(session_ms),
    )
    asyncio.run(runner.run())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
