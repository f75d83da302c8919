"""The simulator's memory between runs (``--state FILE``): the seed the next run takes, so a second
``make run`` continues the district with new people instead of replaying the first run's.

A small JSON file, ``{"next_seed": N, "runs": K}``, written atomically. A run takes its seed and moves
the file on before it publishes anything, so a run stopped half way (Ctrl-C) is not replayed either.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Final

from services.kernel.errors import UsageError

__all__ = ["FIRST_SEED", "take_seed"]

FIRST_SEED: Final = 1


def take_seed(path: Path) -> int:
    """The seed of this run (``FIRST_SEED`` on the first); records the next one in ``path``."""
    seed, runs = FIRST_SEED, 0
    if path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            seed, runs = int(data["next_seed"]), int(data.get("runs", 0))
        except (ValueError, KeyError, TypeError) as e:
            raise UsageError(
                f"{path} is not the simulator's state ({type(e).__name__}); remove it to start the "
                "district afresh"
            ) from e
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps({"next_seed": seed + 1, "runs": runs + 1}) + "\n", encoding="utf-8")
    os.replace(partial, path)
    return seed
