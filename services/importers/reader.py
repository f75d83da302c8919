"""Reading an export file: its encoding, its header, and its rows with the line each starts on.

CSV (the standard library's ``csv`` module; a quoted cell may span lines) and JSON Lines (one object a
line). Encodings: UTF-8 with or without a byte-order mark, and GB18030 (what Excel on a Chinese
Windows saves); ``auto`` checks the whole file as UTF-8 first and falls back to GB18030. Header names
are matched after NFKC folding, so full-width letters and stray spaces do not matter; a format's
aliases give other spellings of a column.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, Literal

from services.importers.errors import FileFormatError
from services.importers.mapping import RowProblem
from services.importers.spec import FormatSpec, fold

Encoding = Literal["auto", "utf-8", "gb18030"]
ENCODINGS: Final[tuple[Encoding, ...]] = ("auto", "utf-8", "gb18030")
_CHUNK: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class Line:
    """One row of the file: the line it starts on, and its cells or why it could not be read."""

    number: int
    cells: dict[str, str] | None
    problem: RowProblem | None = None


def detect_encoding(path: Path) -> Literal["utf-8", "gb18030"]:
    """UTF-8 when every byte of the file decodes as UTF-8, else GB18030."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return "gb18030"
    return "utf-8"


@dataclass
class ExportFile:
    """An open export file; iterate :meth:`lines` once."""

    path: Path
    spec: FormatSpec
    encoding: Literal["utf-8", "gb18030"]
    size: int
    _binary: IO[bytes]
    _text: io.TextIOWrapper
    header: list[str] = field(default_factory=list)
    unused_columns: list[str] = field(default_factory=list)
    _columns: dict[int, str] = field(default_factory=dict)
    _aliases: dict[str, str] = field(default_factory=dict)
    _csv: Any = None

    @classmethod
    def open(cls, path: Path, spec: FormatSpec, encoding: Encoding = "auto") -> ExportFile:
        if not path.is_file():
            raise FileFormatError(f"no file {path}")
        chosen = detect_encoding(path) if encoding == "auto" else encoding
        binary = path.open("rb")
        text = io.TextIOWrapper(binary, encoding="utf-8-sig" if chosen == "utf-8" else chosen, newline="")
        known = {fold(c): c for c in spec.columns()} | spec.aliases()
        export = cls(path, spec, chosen, path.stat().st_size, binary, text, _aliases=known)
        if spec.file == "csv":
            try:
                export._read_header()
            except BaseException:
                export.close()
                raise
        return export

    @property
    def position(self) -> int:
        """How many bytes have been read (ahead of the rows handed out by up to a buffer)."""
        try:
            return self._binary.tell()
        except (OSError, ValueError):
            return self.size

    def close(self) -> None:
        self._text.close()

    def __enter__(self) -> ExportFile:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- CSV

    def _reader(self) -> Any:
        if self._csv is None:
            self._csv = csv.reader(self._text, delimiter=self.spec.delimiter)
        return self._csv

    def _read_header(self) -> None:
        reader = self._reader()
        for cells in self._decoding(reader):
            if any(c.strip() for c in cells):
                self.header = [c.strip().lstrip("\ufeff") for c in cells]
                break
        else:
            raise FileFormatError(f"{self.path.name} is empty: no header row")
        seen: dict[str, str] = {}
        for index, name in enumerate(self.header):
            column = self._aliases.get(fold(name))
            if column is None:
                if name:
                    self.unused_columns.append(name)
                continue
            if column in seen:
                raise FileFormatError(
                    f"{self.path.name}: the header has both {seen[column]!r} and {name!r} for {column}"
                )
            seen[column] = name
            self._columns[index] = column
        missing = [c for c in self.spec.required_columns() if c not in seen]
        if missing:
            # Only the cells the format knows are named: a file without a header row has data here.
            known = ", ".join(seen.values()) if seen else "none"
            raise FileFormatError(
                f"{self.path.name} has no column {', '.join(missing)}, which the {self.spec.name} format "
                f"requires; of the {len(self.header)} cells of its first row the format knows {known}"
                + ("" if seen else " (is its header row missing?)")
            )

    def _decoding(self, rows: Iterator[Any]) -> Iterator[Any]:
        try:
            yield from rows
        except UnicodeDecodeError:
            raise FileFormatError(
                f"{self.path.name} is not valid {self.encoding.upper()} (after about {self.position} bytes); "
                "name its encoding with --encoding utf-8 or --encoding gb18030"
            ) from None
        except csv.Error as e:
            raise FileFormatError(f"{self.path.name}: unreadable CSV: {e}") from None

    def lines(self) -> Iterator[Line]:
        if self.spec.file == "jsonl":
            yield from self._jsonl_lines()
        else:
            yield from self._csv_lines()

    def _csv_lines(self) -> Iterator[Line]:
        reader = self._reader()
        width = len(self.header)
        start = reader.line_num + 1
        for cells in self._decoding(reader):
            number, start = start, reader.line_num + 1
            if not any(c.strip() for c in cells):
                continue
            if len(cells) > width and any(c.strip() for c in cells[width:]):
                yield Line(number, None, RowProblem("", f"has {len(cells)} cells but the header has {width}"))
                continue
            row = {column: cells[i] if i < len(cells) else "" for i, column in self._columns.items()}
            yield Line(number, row)

    # -- JSON Lines

    def _jsonl_lines(self) -> Iterator[Line]:
        for number, raw in enumerate(self._decoding(iter(self._text)), start=1):
            text = raw.lstrip("\ufeff") if number == 1 else raw
            if not text.strip():
                continue
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                yield Line(number, None, RowProblem("", f"is not valid JSON ({e.msg})"))
                continue
            if not isinstance(data, dict):
                yield Line(number, None, RowProblem("", "is not a JSON object"))
                continue
            row: dict[str, str] = {}
            problem: RowProblem | None = None
            for name, value in data.items():
                column = self._aliases.get(fold(name))
                if column is None:
                    if name not in self.unused_columns:
                        self.unused_columns.append(name)
                    continue
                cell = _json_cell(value)
                if cell is None:
                    problem = RowProblem(column, "is not a single value (text, number or true/false)")
                    break
                row[column] = cell
            yield Line(number, None, problem) if problem else Line(number, row)


def _json_cell(value: Any) -> str | None:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "是" if value else "否"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else str(value)
    if isinstance(value, str):
        return value
    return None
