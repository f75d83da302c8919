"""The coordinators' SDK inbox, read in a process of its own for the hub benchmark's end-to-end case.

The coordinators read their alerts in their own program, not in the police's: read in the benchmark's
process, the reader shared one interpreter lock with the eight publishing threads and the per-hop
consumers, and the read hop measured that contention. ``python -m tests.bench.alert_reader OUT PREFIX
OUTBOX`` (``LIANFANG_HOME`` and ``LIANFANG_BOOTSTRAP`` in the environment) reads the coordinators' inbox
under the topic prefix ``PREFIX`` until SIGTERM and appends a line ``<subject> <wall-clock seconds>`` to
``OUT`` (flushed at once) when a victim's first alert is handed out. Nothing else is written: the
subjects are pseudonyms.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from services import trust
from services.sdk.client import Client

ALERT = "joint_meeting.alert"
POLL_TIMEOUT_S = 0.2  # how long one pass over the inbox waits for a record before it checks for SIGTERM


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m tests.bench.alert_reader OUT PREFIX OUTBOX", file=sys.stderr)
        return 2
    out, prefix, outbox = Path(argv[0]), argv[1], Path(argv[2])
    domain = trust.open_domain(Path(os.environ["LIANFANG_HOME"]))
    client = Client(
        keystore=domain.keystore("coordinators"),
        registry=domain.registry(datetime.now(UTC)),
        bootstrap=os.environ["LIANFANG_BOOTSTRAP"],
        outbox_path=outbox,
        topic_prefix=prefix,
    )
    halt = threading.Event()

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        halt.set()

    signal.signal(signal.SIGTERM, on_term)
    seen: set[str] = set()
    try:
        with out.open("a", encoding="utf-8") as lines:
            while not halt.is_set():
                for opened in client.inbox(timeout=POLL_TIMEOUT_S):
                    at = time.time()
                    subject = opened.header.subject
                    if opened.header.type == ALERT and subject not in seen:
                        seen.add(subject)
                        lines.write(f"{subject} {at:.6f}\n")
                        lines.flush()
                    if halt.is_set():
                        break
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
