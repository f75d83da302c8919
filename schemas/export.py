"""Write the JSON Schema of every event type to ``schemas/json/``, for agency systems in other languages.

``python -m schemas.export`` rewrites the files; ``python -m schemas.export --check`` changes nothing and
exits 1 naming the files that are stale, missing or left over, so that CI keeps the export current.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from schemas.events import EVENT_MODELS, EventModel

__all__ = ["SCHEMA_DIR", "SCHEMA_ID_BASE", "main", "render_schemas", "schema_document", "stale_files"]

SCHEMA_DIR: Final = Path(__file__).resolve().parent / "json"
SCHEMA_ID_BASE: Final = "https://lianfang.example/schemas/v1/"
_SUFFIX: Final = ".schema.json"


def schema_document(model: type[EventModel]) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one event model, with its id and which fields are triage."""
    document = model.model_json_schema()
    document.update(
        {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"{SCHEMA_ID_BASE}{model.EVENT_TYPE}{_SUFFIX}",
            "title": model.__name__,
            "x-lianfang-event-type": model.EVENT_TYPE,
            "x-lianfang-schema-version": model.model_fields["schema_version"].default,
            "x-lianfang-triage-fields": sorted(model.TRIAGE_FIELDS),
        }
    )
    return document


def render_schemas() -> dict[str, str]:
    """File name → file text for every event type: sorted keys, two-space indent, a final newline."""
    return {
        f"{event_type}{_SUFFIX}": json.dumps(
            schema_document(model), sort_keys=True, indent=2, ensure_ascii=False
        )
        + "\n"
        for event_type, model in sorted(EVENT_MODELS.items())
    }


def stale_files(directory: Path = SCHEMA_DIR) -> list[str]:
    """How ``directory`` differs from a fresh export: a ``stale``, ``missing`` or ``unexpected`` line each."""
    expected = render_schemas()
    problems: list[str] = []
    for name, text in expected.items():
        path = directory / name
        if not path.is_file():
            problems.append(f"missing: {path}")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"stale: {path}")
    for path in sorted(directory.glob(f"*{_SUFFIX}")):
        if path.name not in expected:
            problems.append(f"unexpected: {path}")
    return problems


def write_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Write every schema file that changed and remove schema files of no event type; return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    expected = render_schemas()
    changed: list[Path] = []
    for name, text in expected.items():
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    for path in sorted(directory.glob(f"*{_SUFFIX}")):
        if path.name not in expected:
            path.unlink()
            changed.append(path)
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: write the schema files, or with ``--check`` only report what is out of date."""
    parser = argparse.ArgumentParser(
        prog="python -m schemas.export",
        description="Write or check the JSON Schema files of the event catalogue.",
    )
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if any file is out of date"
    )
    parser.add_argument("--dir", type=Path, default=SCHEMA_DIR, help=f"output folder (default: {SCHEMA_DIR})")
    args = parser.parse_args(argv)
    directory: Path = args.dir
    if args.check:
        problems = stale_files(directory)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print("fix: run `python -m schemas.export` and commit schemas/json/", file=sys.stderr)
            return 1
        return 0
    for path in write_schemas(directory):
        print(f"wrote {path}" if path.exists() else f"removed {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
