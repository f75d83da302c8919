"""HTML escaping by default, and the console's tiny template syntax.

A value is escaped when it is put into a page unless it is :class:`Markup` (HTML this package built
from escaped parts). Templates are package files with two placeholders: ``{{ name }}`` for a value and
``{{ t:key }}`` for a message of :mod:`services.console.i18n` in the page's language. A placeholder with
no value is an error, not an empty string, so a typo cannot hide a field.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Final

from services.console import i18n

TEMPLATES: Final = Path(__file__).resolve().parent / "templates"
_PLACEHOLDER: Final = re.compile(r"\{\{\s*(t:)?([A-Za-z0-9_.]+)\s*\}\}")


class Markup(str):
    """A string that is already safe HTML. Adding text to it escapes the text."""

    __slots__ = ()

    def __add__(self, other: str) -> Markup:
        return Markup(str.__add__(self, escape(other)))

    def __radd__(self, other: str) -> Markup:
        return Markup(str.__add__(escape(other), self))


def escape(value: object) -> Markup:
    """``value`` as HTML text: Markup passes through, ``None`` is empty, anything else is escaped."""
    if isinstance(value, Markup):
        return value
    if value is None:
        return Markup("")
    return Markup(html.escape(str(value), quote=True))


def fmt(template: str, /, **values: object) -> Markup:
    """``str.format`` over a literal HTML snippet with every value escaped (Markup kept as it is)."""
    return Markup(template.format(**{name: escape(value) for name, value in values.items()}))


def join(parts: Iterable[object], sep: str = "") -> Markup:
    return Markup(sep.join(escape(part) for part in parts))


@cache
def load(name: str) -> str:
    """A template of this package by file name (read once)."""
    path = (TEMPLATES / name).resolve()
    if path.parent != TEMPLATES:
        raise ValueError(f"no template {name!r}")
    return path.read_text(encoding="utf-8")


def render(name: str, lang: str, values: Mapping[str, object]) -> Markup:
    """Fill template ``name``: values escaped unless Markup, ``t:`` keys translated into ``lang``."""

    def fill(match: re.Match[str]) -> str:
        key = match.group(2)
        if match.group(1):
            return escape(i18n.text(lang, key))
        if key not in values:
            raise KeyError(f"template {name} needs a value for {key!r}")
        return escape(values[key])

    return Markup(_PLACEHOLDER.sub(fill, load(name)))
