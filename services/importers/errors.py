"""The importers' errors. A problem with one row is not an exception: it is reported with the row's
line and the import goes on. These are for what stops an import."""

from __future__ import annotations

from services.kernel.errors import UsageError


class FileFormatError(UsageError):
    """The file as a whole cannot be imported with this format: it is missing, empty, not in the
    encoding given, or its header lacks a required column. Raised before the first row, nothing was
    imported; raised later (bytes that do not decode, deep in a file read with an explicit
    ``--encoding``), the import stops there, keeps the rows before it, and its summary says so."""
