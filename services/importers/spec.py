"""Import formats as data: one TOML file per export format under ``formats/``, checked when loaded.

A format names its columns and the field each one fills (``to``), which columns are required, the
value maps that turn words such as 家庭暴力 or 是 into the catalogue's vocabulary, and defaults. The
kind of a target decides how a cell is read: ``victim.id_number`` is checked as a resident ID number,
``occurred_at`` parsed with the format's date formats, ``category`` looked up in the ``category`` map.
A mistake in a format file (an unknown target, a map value outside the vocabulary) fails at load time
with the file and the entry named, never in the middle of an import.
"""

from __future__ import annotations

import tomllib
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Final, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from schemas.common import Category, Channel
from schemas.events import ActionKind, Relationship, RiskIndicator, Sex
from services.kernel.errors import UsageError, validation_summary

FORMATS_DIR: Final = Path(__file__).resolve().parent / "formats"
COMMON_FILE: Final = FORMATS_DIR / "common.toml"

Kind = Literal["text", "int", "datetime", "date", "id_number", "phone", "town", "vocab", "bool", "list"]


@dataclass(frozen=True, slots=True)
class Target:
    """What a mapped field fills: how its cells are read, and which value map it uses by default."""

    kind: Kind
    default_map: str | None = None
    vocabulary: tuple[str, ...] | None = None  # the values a map for this target may produce
    future: bool = False  # a time that may lie ahead (an order's expiry); others may not


def _person(*, relationship: bool = False) -> dict[str, Target]:
    fields = {
        "name": Target("text"),
        "id_number": Target("id_number"),
        "phone": Target("phone"),
        "birth_date": Target("date"),
        "sex": Target("vocab", "sex", get_args(Sex)),
        "age": Target("int"),
        "is_minor": Target("bool", "yes_no"),
    }
    if relationship:
        fields["relationship"] = Target("vocab", "relationship", get_args(Relationship))
    return fields


def _prefixed(prefix: str, fields: Mapping[str, Target]) -> dict[str, Target]:
    return {f"{prefix}.{name}": target for name, target in fields.items()}


_COMMON_TARGETS: Final[dict[str, Target]] = {
    "source_id": Target("text"),  # the export's own record number; only identifies the row
    "include": Target("bool", "yes_no"),  # false: the row is not a lead (counted, not imported)
    "category": Target("vocab", "category", get_args(Category)),
    "town": Target("town"),
}

LEAD_TARGETS: Final[dict[str, Target]] = {
    **_COMMON_TARGETS,
    "channel": Target("vocab", "channel", get_args(Channel)),
    "occurred_at": Target("datetime"),
    "narrative": Target("text"),
    "reporter_contact": Target("text"),
    "requests_joint_meeting": Target("bool", "yes_no"),
    "school_related": Target("bool", "yes_no"),
    "risk_indicators": Target("list", "risk", get_args(RiskIndicator)),
    **_prefixed("victim", _person()),
    **_prefixed("suspect", _person(relationship=True)),
    **{f"actions.{kind}": Target("bool", "yes_no") for kind in get_args(ActionKind)},
    "actions_at": Target("datetime"),
}
"""What a ``produces = "lead"`` format may fill: a lead.reported, and lead.action_taken follow-ups for
each ``actions.<kind>`` that is true (taken at ``actions_at``, else when the lead occurred)."""

ORDER_TARGETS: Final[dict[str, Target]] = {
    **_COMMON_TARGETS,
    **_prefixed("applicant", {k: v for k, v in _person().items() if k != "sex"}),
    **_prefixed("respondent", {k: _person()[k] for k in ("name", "id_number", "phone")}),
    "urgent": Target("bool", "yes_no"),
    "requested_at": Target("datetime"),
    "grounds": Target("text"),
    "decided_at": Target("datetime"),
    "granted": Target("bool", "decision"),
    "valid_until": Target("datetime", future=True),
    "terms": Target("list"),
}
"""What a ``produces = "protection_order"`` format may fill: a protection_order.requested, and a
protection_order.decided when the row has a ruling."""

TARGETS: Final[dict[str, dict[str, Target]]] = {"lead": LEAD_TARGETS, "protection_order": ORDER_TARGETS}

MapValue = str | bool


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class FieldSpec(_Strict):
    """One mapped field: a source column (or several, joined) and the target it fills."""

    to: str = Field(min_length=1)
    column: str | None = Field(default=None, min_length=1)
    aliases: list[str] = Field(default_factory=list)
    columns: list[str] = Field(default_factory=list)
    join: str = "\n"
    labelled: bool = False  # joined cells are written as "列名：值"
    split: str | None = None  # for a list target: the item separators, if not the format's
    map: str | None = None
    required: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> FieldSpec:
        if (self.column is None) == (not self.columns):
            raise ValueError("give either `column` or `columns`")
        if self.columns and self.aliases:
            raise ValueError("`aliases` are for a single `column`")
        return self

    @property
    def sources(self) -> tuple[str, ...]:
        """The columns this field reads (canonical names, not aliases)."""
        return (self.column,) if self.column is not None else tuple(self.columns)

    @property
    def label(self) -> str:
        """How the field is named in messages: its column(s)."""
        return "+".join(self.sources)


class FormatSpec(_Strict):
    """A whole import format, with the shared maps and date formats of ``common.toml`` merged in."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    title: str
    file: Literal["csv", "jsonl"]
    produces: Literal["lead", "protection_order"]
    participants: list[str] = Field(min_length=1)
    key: list[str] = Field(default_factory=list)
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    town_from_participant: bool = False
    date_formats: list[str] = Field(min_length=1)
    split: str = Field(min_length=1)
    defaults: dict[str, Any] = Field(default_factory=dict)
    field: list[FieldSpec] = Field(min_length=1)
    maps: dict[str, dict[str, MapValue]] = Field(default_factory=dict)

    @property
    def fields(self) -> list[FieldSpec]:
        return self.field

    @property
    def targets(self) -> dict[str, Target]:
        return TARGETS[self.produces]

    def columns(self) -> list[str]:
        """Every column the format reads, in file order of the mapping, each once."""
        return list(dict.fromkeys(c for f in self.fields for c in f.sources))

    def required_columns(self) -> list[str]:
        return list(dict.fromkeys(c for f in self.fields if f.required for c in f.sources))

    def aliases(self) -> dict[str, str]:
        """Header spelling → canonical column, for columns that have other spellings."""
        out: dict[str, str] = {}
        for f in self.fields:
            if f.column is not None:
                for alias in f.aliases:
                    out[fold(alias)] = f.column
        return out

    def map_for(self, f: FieldSpec) -> str | None:
        return f.map or self.targets[f.to].default_map

    def event_types(self) -> list[str]:
        """The event types an import of this format may publish (for the may-publish check)."""
        if self.produces == "protection_order":
            return ["protection_order.requested", "protection_order.decided"]
        types = ["lead.reported"]
        if any(f.to.startswith("actions.") for f in self.fields):
            types.append("lead.action_taken")
        return types

    def usual_participant(self, participant: str) -> bool:
        return any(
            participant == p or (p.endswith(".*") and participant.startswith(p[:-1]))
            for p in self.participants
        )

    @model_validator(mode="after")
    def _consistent(self) -> FormatSpec:
        targets = self.targets
        for f in self.fields:
            target = targets.get(f.to)
            if target is None:
                raise ValueError(f"field {f.label}: unknown target {f.to!r} for a {self.produces} format")
            name = self.map_for(f)
            if target.kind in ("vocab", "bool") and name is None:
                raise ValueError(f"field {f.label}: {f.to} needs a value map")
            if name is not None:
                if name not in self.maps:
                    raise ValueError(f"field {f.label}: no map named {name!r}")
                _check_map(name, self.maps[name], target)
        columns = set(self.columns())
        for column in self.key:
            if column not in columns:
                raise ValueError(f"key column {column!r} is not a mapped column")
        for path, _value in _flatten(self.defaults):
            if path not in targets:
                raise ValueError(f"defaults: unknown target {path!r}")
        return self


def _check_map(name: str, values: Mapping[str, MapValue], target: Target) -> None:
    for key, value in values.items():
        if value == "":
            continue  # "no value"
        if target.kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"map {name!r}: {key!r} must map to true or false for a yes/no field")
        elif target.vocabulary is not None and value not in target.vocabulary:
            raise ValueError(f"map {name!r}: {key!r} maps to {value!r}, which is not one of the vocabulary")


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, f"{path}.")
        else:
            yield path, value


def fold(text: str) -> str:
    """How headers and map keys are compared: NFKC, no whitespace, lower case."""
    return "".join(unicodedata.normalize("NFKC", text).split()).lower()


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"no import format file {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path} is not valid TOML: {e}") from e


def _merge(common: Mapping[str, Any], own: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(own)
    merged.setdefault("date_formats", common["date_formats"])
    merged.setdefault("split", common["split"])
    maps: dict[str, dict[str, Any]] = {name: dict(m) for name, m in common.get("maps", {}).items()}
    for name, m in own.get("maps", {}).items():
        maps.setdefault(name, {}).update(m)
    merged["maps"] = {name: {fold(k): v for k, v in m.items()} for name, m in maps.items()}
    return merged


def format_names() -> list[str]:
    """The formats shipped in ``formats/`` (every TOML file except ``common.toml``)."""
    return sorted(p.stem for p in FORMATS_DIR.glob("*.toml") if p.name != COMMON_FILE.name)


@cache
def load_format(name: str) -> FormatSpec:
    """The named format, checked; :class:`UsageError` names the file and what is wrong in it."""
    if name not in format_names():
        raise UsageError(f"unknown import format {name!r}; the formats are: {', '.join(format_names())}")
    path = FORMATS_DIR / f"{name}.toml"
    data = _merge(_read_toml(COMMON_FILE), _read_toml(path))
    try:
        spec = FormatSpec.model_validate(data)
    except ValidationError as e:
        raise UsageError(f"{path}: {validation_summary(e, limit=None, whole='(file)')}") from e
    if spec.name != name:
        raise UsageError(f"{path}: `name` is {spec.name!r} but the file is named {name!r}")
    return spec
