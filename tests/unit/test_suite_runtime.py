"""The interpreter the suite runs in: Python started without column positions, so that a traceback
formatted by a finalizer in the middle of a parse cannot fail the parse (CPython 3.11, see
tests/conftest.py)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

FINALIZER_DURING_PARSE = textwrap.dedent(
    """
    import ast, logging

    logging.basicConfig(level=logging.ERROR, stream=open(__import__("os").devnull, "w"))
    log = logging.getLogger("finalizer")

    class Logs:
        def __del__(self):
            try:
                [][1]
            except IndexError:
                log.error("in a finalizer", exc_info=True)

    source = open(ast.__file__).read() * 3
    failed = 0
    for _ in range(5):
        for _ in range(300):  # cycles with a finalizer, left for the collector to run mid-parse
            cycle = Logs()
            cycle.self = cycle
        del cycle
        try:
            ast.parse(source)
        except SystemError:
            failed += 1
    print(failed)
    """
)


def test_the_suite_s_processes_and_the_services_they_start_run_without_column_positions() -> None:
    assert os.environ.get("PYTHONNODEBUGRANGES") == "1"
    child = subprocess.run(
        [sys.executable, "-c", "print(repr(list((lambda: 0).__code__.co_positions())[-1]))"],
        capture_output=True,
        text=True,
        check=True,
    )
    _line, _end_line, column, end_column = ast.literal_eval(child.stdout)
    assert (column, end_column) == (None, None)


def test_a_parse_interrupted_by_a_finalizer_that_logs_a_traceback_does_not_fail_in_the_suite(
    tmp_path: Path,
) -> None:
    script = tmp_path / "finalizer_during_parse.py"  # a file: a traceback shows (and parses) its lines
    script.write_text(FINALIZER_DURING_PARSE, encoding="utf-8")
    child = subprocess.run([sys.executable, script], capture_output=True, text=True, check=True, timeout=120)
    assert child.stdout.strip() == "0", f"parses that failed of 5: {child.stdout.strip()}"
