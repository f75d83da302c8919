"""``python -m services.hub worker``: one hub worker, configured from the environment."""

from __future__ import annotations

from services.hub.app import HubSettings, run_worker

if __name__ == "__main__":
    run_worker(HubSettings())
