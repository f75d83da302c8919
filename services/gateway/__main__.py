"""``python -m services.gateway``: the HTTP gateway, configured from the environment."""

from __future__ import annotations

import asyncio
import logging
import sys

from pydantic import ValidationError

from services.gateway.app import GatewaySettings, serve
from services.kernel import allocator, heapwatch
from services.kernel.errors import UsageError

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("kafka", "aiokafka"):  # their INFO lines are per connection; warnings still show
        logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        allocator.configure()  # before the request threads start
        heapwatch.start()  # off unless LIANFANG_TRACEMALLOC_EVERY_S is set
        asyncio.run(serve(GatewaySettings()))
    except (UsageError, ValidationError) as e:  # a setting or the trust domain is wrong: say what
        print(f"lianfang gateway: {e}", file=sys.stderr)
        sys.exit(2)
