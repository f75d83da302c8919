"""``python -m services.hub worker``: one hub worker, configured from the environment."""

from __future__ import annotations

import sys

from pydantic import ValidationError

from services.hub.app import HubSettings, run_worker
from services.kernel import allocator, heapwatch
from services.kernel.errors import LianfangError, UsageError

if __name__ == "__main__":
    try:
        memory = allocator.configure()  # before faust and RocksDB start their threads
        heapwatch.start()  # off unless LIANFANG_TRACEMALLOC_EVERY_S is set
        run_worker(HubSettings(), memory=memory)
    except (LianfangError, ValidationError) as e:  # a setting, the login or the trust domain: one line
        print(f"lianfang hub: {e}", file=sys.stderr)
        sys.exit(2 if isinstance(e, UsageError | ValidationError) else 1)
