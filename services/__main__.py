"""``python -m services``: the ``lianfang`` command (for child processes started by ``lianfang run``)."""

from __future__ import annotations

import sys

from services.cli import main

if __name__ == "__main__":
    sys.exit(main())
