"""``python -m services.router``: one router worker, configured from the environment."""

from __future__ import annotations

import asyncio
import logging
import sys

from pydantic import ValidationError

from services.kernel import allocator, heapwatch
from services.kernel.errors import LianfangError, UsageError
from services.router.app import RouterSettings, serve

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        allocator.configure()
        heapwatch.start()  # off unless LIANFANG_TRACEMALLOC_EVERY_S is set
        asyncio.run(serve(RouterSettings()))
    except (LianfangError, ValidationError) as e:  # a setting, the login or the trust domain: one line
        print(f"lianfang router: {e}", file=sys.stderr)
        sys.exit(2 if isinstance(e, UsageError | ValidationError) else 1)
