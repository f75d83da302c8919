"""``python -m services.router``: one router worker, configured from the environment."""

from __future__ import annotations

import asyncio
import logging

from services.router.app import RouterSettings, serve

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(RouterSettings()))
