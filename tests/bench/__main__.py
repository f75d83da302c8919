"""``python -m tests.bench [-k SUBSTRING] [--quick]``: run the benchmarks (see ``harness.py``)."""

from __future__ import annotations

import sys

from tests.bench.harness import main

if __name__ == "__main__":
    sys.exit(main())
