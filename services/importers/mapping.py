"""From one row of an export to the events it stands for, following a format's declarative mapping.

Pure but for the pseudonymizer it is given (which may ask a service): a row (column → cell text), the
participant, a pseudonymizer and a clock in; either the events to publish (validated against the
catalogue), "not a lead" (the format's ``include`` field is false), or the row's problems, each naming
a column and what is wrong with it but never the cell's content.

Derived values, in order: cells → whether each person the row names is a minor (from 是否未成年, else
the birth date in the ID number or 出生日期 at the time of the incident, else 年龄) → the format's
defaults for whatever is still missing (a suspect's or applicant's defaults only when the row names
one, so a default never invents a person). When an ID number gives the birth date, the exact age
replaces a stated age that is one or two years off (a nominal age, 虚岁); a larger difference, or a
是否未成年 that contradicts the birth date, is a problem of the row.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Final, TypeVar

from pydantic import ValidationError

from schemas.events import (
    EventModel,
    LeadActionTaken,
    LeadReported,
    ProtectionOrderDecided,
    ProtectionOrderRequested,
)
from services.importers import values
from services.importers.spec import FieldSpec, FormatSpec, Target
from services.kernel.errors import UsageError
from services.kernel.pseudonym import Pseudonymizer
from services.sdk.client import CaseContext, default_urgency, lead_identities
from services.sdk.client import person_pseudonym as subject_pseudonym

Row = Mapping[str, str]
"""A row: canonical column name → cell text. A column the row does not have is absent."""

_M = TypeVar("_M", bound=EventModel)
_NOMINAL_AGE_SLACK: Final = 2
_REQUESTED: Final = ProtectionOrderRequested.EVENT_TYPE
_DECIDED: Final = ProtectionOrderDecided.EVENT_TYPE
_PEOPLE: Final = ("victim", "suspect", "applicant", "respondent")


@dataclass(frozen=True, slots=True)
class RowProblem:
    """Why a row (or one cell of it) cannot be imported. ``where`` is a column or a field."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where} {self.reason}" if self.where else self.reason


@dataclass(frozen=True, slots=True)
class Publication:
    """One event a row stands for. ``emit`` names it within the row for the import ledger."""

    emit: str
    event_type: str
    event_id: str
    urgency: str
    lead: dict[str, Any] | None = None  # for Client.publish_lead: the lead without pseudonyms
    event: EventModel | None = None  # for Client.publish, with ``context``
    context: CaseContext | None = None


@dataclass(frozen=True, slots=True)
class Filtered:
    """The row is not a lead (for example a mediation case that involves no domestic violence)."""


@dataclass(slots=True)
class Rejected:
    problems: list[RowProblem] = field(default_factory=list)


RowResult = list[Publication] | Filtered | Rejected
EventIds = Callable[[str], str]
"""The event id of each ``emit`` of the row (deterministic: the import ledger derives it)."""
Read = tuple[dict[str, Any], Filtered | Rejected | None]
"""A row read into a record of typed values (:meth:`Mapper.read`), or why it maps to no event."""


def normalized(cell: str | None) -> str:
    """A cell as compared for re-imports: NFKC, whitespace runs collapsed, trimmed."""
    return " ".join(unicodedata.normalize("NFKC", cell or "").split())


class Mapper:
    """Applies one format's mapping for one participant."""

    def __init__(
        self, spec: FormatSpec, *, participant: str, pseudonymizer: Pseudonymizer, now: datetime
    ) -> None:
        self.spec = spec
        self.participant = participant
        self.key = pseudonymizer
        self.now = now
        self._labels: dict[str, str] = {}
        for f in spec.fields:
            self._labels.setdefault(f.to, f.label)

    def using(self, pseudonymizer: Pseudonymizer) -> Mapper:
        """This mapping with another pseudonymizer (an import evaluates a batch of rows' identifiers
        at once, then maps each row from the answer)."""
        return Mapper(self.spec, participant=self.participant, pseudonymizer=pseudonymizer, now=self.now)

    # -- identity for the ledger

    def identity(self, row: Row) -> tuple[str, str]:
        """``(key material, content material)``: what identifies the row across exports (the format's
        key columns, else its whole mapped content) and what it says (its mapped content)."""
        content = json.dumps(
            [[column, normalized(row.get(column))] for column in sorted(self.spec.columns())],
            ensure_ascii=False,
        )
        if not self.spec.key:
            return content, content
        key = json.dumps([normalized(row.get(column)) for column in self.spec.key], ensure_ascii=False)
        return key, content

    # -- the row

    def map_row(self, row: Row, event_ids: EventIds) -> RowResult:
        """The events of ``row``, or why there are none."""
        return self.map_read(self.read(row), event_ids)

    def map_read(self, read: Read, event_ids: EventIds) -> RowResult:
        """The events of a row :meth:`read` read (by this mapping or another of the same format,
        participant and clock: reading uses no pseudonymizer), or why there are none. The record is
        not changed."""
        record, outcome = read
        if outcome is not None:
            return outcome
        try:
            if self.spec.produces == "protection_order":
                return self._orders(record, event_ids)
            return self._leads(record, event_ids)
        except _RowProblemsError as e:
            return Rejected(e.problems)

    def ask_pseudonyms(self, read: Read, event_id: str) -> None:
        """Ask this mapping's pseudonymizer for every pseudonym :meth:`map_read` would ask it for on the
        same row (``event_id`` standing for the lead's), and do nothing else: no event is built nor
        validated. An import's first pass over a batch of rows, with a pseudonymizer that only notes
        what it is asked (:class:`~services.sdk.deferred.Recording`)."""
        record, outcome = read
        if outcome is not None:
            return
        if self.spec.produces == "protection_order":
            applicant = _person_json(record.get("applicant"))
            try:
                if applicant is not None:
                    subject_pseudonym(self.key, applicant)
            except UsageError:
                return  # not identifiable: the row is rejected when mapped, before its respondent
            respondent = _person_json(record.get("respondent"))
            if applicant is not None and respondent is not None:
                with contextlib.suppress(UsageError):  # not identifiable: nothing to ask
                    subject_pseudonym(self.key, respondent)
            return
        try:
            lead = self._lead_data(record)
        except _RowProblemsError:
            return  # no victim: the row is rejected when mapped
        lead_identities(self.key, lead, token=event_id)

    def read(self, row: Row) -> Read:
        """The row as a nested record of typed values, with defaults and derived values."""
        rejected = Rejected()
        record: dict[str, Any] = {}
        for f in sorted(self.spec.fields, key=lambda f: f.to != "include"):  # include first
            try:
                value = self._cell(f, row)
            except values.CellError as e:
                rejected.problems.append(RowProblem(f.label, e.reason))
                continue
            if f.to == "include":
                if value is False:
                    return {}, Filtered()
            elif value is not None:
                _put(record, f.to, value)
        if self.spec.town_from_participant and "town" not in record:
            room, _, town = self.participant.partition(".")
            if room == "mediation" and town:
                record["town"] = town
        if not rejected.problems:
            when = self._incident_time(record).date()
            people = [p for p in _PEOPLE if isinstance(record.get(p), dict)]
            found = (self._derive_minor(p, record[p], when) for p in people)
            rejected.problems.extend(problem for problem in found if problem is not None)
        if rejected.problems:
            return record, rejected
        self._defaults(record, self.spec.defaults)
        return record, None

    def _cell(self, f: FieldSpec, row: Row) -> Any:
        """The typed value of a field, None when its cells are empty (or say "no value")."""
        cells = [(column, row.get(column)) for column in f.sources]
        if all(cell is None for _, cell in cells) and f.required:
            raise values.CellError("is missing")
        present = [(column, cell.strip()) for column, cell in cells if cell is not None and cell.strip()]
        if not present:
            if f.required:
                raise values.CellError("is empty")
            return None
        if len(f.sources) > 1:
            parts = [f"{column}：{cell}" if f.labelled else cell for column, cell in present]
            return f.join.join(parts)
        separators = f.split or self.spec.split
        return self._convert(self.spec.targets[f.to], self.spec.map_for(f), present[0][1], separators)

    def _convert(self, target: Target, map_name: str | None, raw: str, separators: str) -> Any:
        simple: dict[str, Callable[[str], Any]] = {
            "text": values.text,
            "int": values.integer,
            "datetime": lambda cell: values.moment(
                cell, self.spec.date_formats, now=None if target.future else self.now
            ),
            "date": lambda cell: values.day(cell, self.spec.date_formats, now=self.now),
            "id_number": values.id_number,
            "phone": values.phone,
            "town": values.town,
        }
        if target.kind in simple:
            return simple[target.kind](raw)
        if target.kind == "list":
            out: list[str] = []
            for item in values.items(raw, separators):
                value = item if map_name is None else values.mapped(item, self.spec.maps[map_name], map_name)
                if isinstance(value, str) and value and value not in out:
                    out.append(value)
            return out
        assert map_name is not None  # vocab and bool targets have a map (checked when loaded)
        value = values.mapped(raw, self.spec.maps[map_name], map_name)
        return None if value == "" else value

    def _defaults(self, record: dict[str, Any], defaults: Mapping[str, Any]) -> None:
        for name, value in defaults.items():
            if isinstance(value, dict):
                # A person's defaults fill in a person the row names; they never invent one.
                if name in _PEOPLE and name not in record:
                    continue
                self._defaults(record.setdefault(name, {}), value)
            else:
                record.setdefault(name, list(value) if isinstance(value, list) else value)

    def _incident_time(self, record: Mapping[str, Any]) -> datetime:
        for name in ("occurred_at", "requested_at"):
            value = record.get(name)
            if isinstance(value, datetime):
                return value
        return self.now

    def _derive_minor(self, person: str, data: dict[str, Any], when: date) -> RowProblem | None:
        birth: date | None = data.get("birth_date")
        if birth is None and data.get("id_number"):
            birth = values.birth_date_of(data["id_number"])
        exact = values.age_at(birth, when) if birth is not None else None
        stated: int | None = data.get("age")
        if exact is not None and stated is not None and stated != exact:
            if abs(stated - exact) > _NOMINAL_AGE_SLACK:
                return RowProblem(
                    self._column(f"{person}.age"), "disagrees with the birth date by more than two years"
                )
            data["age"] = exact
        if "is_minor" in data:  # given in a column (defaults come later)
            if exact is not None and data["is_minor"] != (exact < 18):
                return RowProblem(
                    self._column(f"{person}.is_minor"),
                    "disagrees with the birth date (the age at the time of the incident)",
                )
            return None
        if exact is not None:
            data["is_minor"] = exact < 18
        elif data.get("age") is not None:
            data["is_minor"] = data["age"] < 18
        return None

    def _label(self, path: str) -> str:
        """A field as named in a schema problem: its column and the event field."""
        label = self._labels.get(path)
        return f"{label} ({path})" if label else path

    def _column(self, path: str) -> str:
        return self._labels.get(path, path)

    # -- leads

    def _lead_data(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """The lead of a row's record, as :meth:`Client.publish_lead` takes it (no pseudonyms)."""
        victim = _person_json(record.get("victim"))
        if victim is None:
            raise _RowProblemsError([RowProblem("", "names no victim")])
        suspect = _person_json(record.get("suspect"))
        occurred: datetime | None = record.get("occurred_at")
        lead: dict[str, Any] = {
            "category": record.get("category"),
            "channel": record.get("channel"),
            "town": record.get("town"),
            "occurred_at": _iso(occurred),
            "victim": victim,
            "suspects": [suspect] if suspect is not None else [],
            "minor": victim.get("is_minor"),
            "school_related": record.get("school_related", False),
            "risk_indicators": record.get("risk_indicators", []),
            "narrative": record.get("narrative", ""),
            "requests_joint_meeting": record.get("requests_joint_meeting", False),
            "reporter_contact": record.get("reporter_contact"),
        }
        return {name: value for name, value in lead.items() if value is not None}

    def _leads(self, record: dict[str, Any], event_ids: EventIds) -> list[Publication]:
        lead = self._lead_data(record)
        occurred: datetime | None = record.get("occurred_at")
        lead_id = event_ids("lead")
        model = self.lead_model(lead, event_id=lead_id)
        urgency = default_urgency(model)
        out = [Publication("lead", LeadReported.EVENT_TYPE, lead_id, urgency, lead=lead)]
        context = CaseContext(
            subject=model.victim_pseudonym,
            category=model.category,
            minor=model.minor,
            town=model.town,
            school_related=model.school_related,
            lead_id=lead_id,
        )
        taken_at: datetime | None = record.get("actions_at") or occurred
        for action in [kind for kind, done in record.get("actions", {}).items() if done]:
            if taken_at is None:
                raise _RowProblemsError([RowProblem(self._column("actions_at"), "is empty")])
            emit = f"action.{action}"
            event = self._validate(
                LeadActionTaken,
                {"lead_id": lead_id, "action": action, "taken_at": taken_at.isoformat()},
                {"taken_at": "actions_at", "action": f"actions.{action}"},
            )
            out.append(
                Publication(
                    emit, LeadActionTaken.EVENT_TYPE, event_ids(emit), urgency, event=event, context=context
                )
            )
        return out

    def lead_model(self, lead: Mapping[str, Any], *, event_id: str) -> LeadReported:
        """Validate a lead as the SDK will publish it as ``event_id``: its identifiers flagged and its
        pseudonyms computed (a victim without a valid identifier is kept under one of its own)."""
        data = lead_identities(self.key, lead, token=event_id).data
        return self._validate(LeadReported, data, {"suspects": "suspect"})

    def _no_identifier(self, person: str) -> str:
        columns = [
            self._labels[f"{person}.{name}"]
            for name in ("id_number", "phone", "birth_date")
            if f"{person}.{name}" in self._labels
        ]
        given = " or ".join(columns) or "an ID number or phone"
        return (
            f"the {person} has no identifier: give {given} (a birth date only together with the name), "
            "so that agencies can link reports about the same person"
        )

    # -- protection orders

    def _orders(self, record: dict[str, Any], event_ids: EventIds) -> list[Publication]:
        applicant = _person_json(record.get("applicant"))
        if applicant is None:
            raise _RowProblemsError([RowProblem("", "names no applicant")])
        try:
            victim = subject_pseudonym(self.key, applicant)
        except UsageError:
            raise _RowProblemsError([RowProblem("", self._no_identifier("applicant"))]) from None
        try:
            respondent: str | None = subject_pseudonym(self.key, _person_json(record.get("respondent")) or {})
        except UsageError:
            respondent = None  # named but not identifiable: the order is not linked to a suspect
        urgent = bool(record.get("urgent", False))
        urgency = "urgent" if urgent else "routine"
        request_id = event_ids("request")
        context = CaseContext(
            subject=victim,
            category=record.get("category"),
            minor=applicant.get("is_minor"),
            town=record.get("town"),
            school_related=None,
        )
        request = self._validate(
            ProtectionOrderRequested,
            {
                "victim_pseudonym": victim,
                "respondent_pseudonym": respondent,
                "urgent": urgent,
                "requested_at": _iso(record.get("requested_at")),
                "grounds": record.get("grounds"),
            },
            {},
        )
        out = [Publication("request", _REQUESTED, request_id, urgency, event=request, context=context)]
        decided, granted = record.get("decided_at"), record.get("granted")
        if decided is None and granted is None:
            return out
        if decided is None or granted is None:
            missing = self._column("decided_at" if decided is None else "granted")
            raise _RowProblemsError(
                [RowProblem(missing, "is empty, but the row has the other half of a ruling")]
            )
        decision = self._validate(
            ProtectionOrderDecided,
            {
                "request_id": request_id,
                "granted": granted,
                "decided_at": _iso(decided),
                "valid_until": _iso(record.get("valid_until")),
                "terms": record.get("terms", []),
            },
            {},
        )
        follow = dataclasses.replace(context, lead_id=request_id)
        decision_id = event_ids("decision")
        out.append(Publication("decision", _DECIDED, decision_id, urgency, event=decision, context=follow))
        return out

    # -- validation

    def _validate(self, model: type[_M], data: Mapping[str, Any], rename: Mapping[str, str]) -> _M:
        given = {name: value for name, value in data.items() if value is not None}
        try:
            return model.model_validate_json(json.dumps(given, ensure_ascii=False, default=str))
        except ValidationError as e:
            problems = []
            for err in e.errors(include_input=False):
                loc = [str(p) for p in err["loc"]]
                if loc and loc[0] in rename:
                    loc[0] = rename[loc[0]]
                    if len(loc) > 1 and loc[1].isdigit():
                        del loc[1]  # suspects.0.name -> suspect.name: the row has one suspect
                path = ".".join(loc)
                reason = (
                    "is empty" if err["type"] == "missing" else str(err["msg"]).removeprefix("Value error, ")
                )
                if not path:  # a rule across fields: name the columns of the fields it mentions
                    named = [f"{label} = {to}" for to, label in self._labels.items() if to in reason.split()]
                    reason += f" ({', '.join(named)})" if named else ""
                problems.append(RowProblem(self._label(path) if path else "", reason))
            raise _RowProblemsError(problems) from e


class _RowProblemsError(UsageError):
    def __init__(self, problems: list[RowProblem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


def _put(record: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = record
    for name in parents:
        node = node.setdefault(name, {})
    node[leaf] = value


def _person_json(data: Any) -> dict[str, Any] | None:
    if not isinstance(data, dict) or not data:
        return None
    out = {k: v for k, v in data.items() if v is not None}
    if isinstance(out.get("birth_date"), date):
        out["birth_date"] = out["birth_date"].isoformat()
    return out


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value
