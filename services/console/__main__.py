"""``python -m services.console``: the coordinator console, configured from the environment."""

from __future__ import annotations

import sys

from services.console.app import run
from services.console.settings import ConsoleSettings
from services.kernel import allocator, heapwatch
from services.kernel.errors import LianfangError, UsageError

if __name__ == "__main__":
    try:
        allocator.configure()
        heapwatch.start()  # off unless LIANFANG_TRACEMALLOC_EVERY_S is set
        run(ConsoleSettings())
    except LianfangError as e:  # a missing trust domain or broker address: one line, not a traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2 if isinstance(e, UsageError) else 1)
