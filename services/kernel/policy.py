"""The sharing policy as a pure function of the clear header: who receives which section."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from schemas.envelope import SECTION_NAMES, EnvelopeHeader, SectionName
from schemas.registry import Match, Policy, Rule

TOWN_MEDIATION = "$town_mediation"
AUDIENCE = "$audience"


def _matches(when: Match, header: EnvelopeHeader) -> bool:
    checks: list[bool] = []
    if when.type is not None:
        checks.append(header.type in when.type)
    if when.category is not None:
        checks.append(header.category in when.category)
    if when.minor is not None:
        checks.append(header.minor is when.minor)
    if when.school_related is not None:
        checks.append(bool(header.school_related) is when.school_related)
    if when.town is not None:
        checks.append(header.town in when.town)
    if when.urgency is not None:
        checks.append(header.urgency in when.urgency)
    return all(checks)


def town_mediation(town: str) -> str:
    """The participant id of a town's mediation committee, which ``$town_mediation`` names."""
    return f"mediation.{town}"


def _expand(recipient: str, header: EnvelopeHeader) -> list[str]:
    if recipient == TOWN_MEDIATION:
        return [town_mediation(header.town)] if header.town else []
    if recipient == AUDIENCE:
        return list(header.audience)
    return [recipient]


def matching_rules(policy: Policy, header: EnvelopeHeader) -> list[Rule]:
    return [rule for rule in policy.rules if _matches(rule.when, header)]


def recipients(policy: Policy, header: EnvelopeHeader) -> dict[SectionName, frozenset[str]]:
    """The participants who must receive each section: the union over every matching rule.

    A section nobody receives maps to an empty set (and is left out of the envelope).
    """
    result: dict[SectionName, set[str]] = {name: set() for name in SECTION_NAMES}
    for rule in matching_rules(policy, header):
        for name in SECTION_NAMES:
            for r in getattr(rule, name):
                result[name].update(_expand(r, header))
    return {name: frozenset(ids) for name, ids in result.items()}


RoutingFields = tuple[str, str | None, bool | None, bool, str | None, str | None, tuple[str, ...]]
"""The clear-header fields the policy reads: type, category, minor, school_related, town, urgency and
audience (``school_related`` absent counts as false, as :func:`_matches` reads it)."""


def routing_fields(header: EnvelopeHeader) -> RoutingFields:
    return (
        header.type,
        header.category,
        header.minor,
        bool(header.school_related),
        header.town,
        header.urgency,
        tuple(header.audience),
    )


class Recipients:
    """:func:`recipients` of one policy, remembered per :func:`routing_fields`: every event verified or
    sealed asks it, and the answer depends on those seven fields alone, which events of one kind share.

    At most ``limit`` answers are kept; past it the memory starts again. A header with an audience
    (joint meetings, supervision: few events) is answered without being remembered: its audience is up
    to 128 ids the sender chose, so remembering it would let one sender fill the memory with megabytes
    of its own lists. The answers are read-only.
    """

    def __init__(self, policy: Policy, limit: int = 4096) -> None:
        self.policy = policy
        self.limit = limit
        self._answers: dict[RoutingFields, Mapping[SectionName, frozenset[str]]] = {}

    def __call__(self, header: EnvelopeHeader) -> Mapping[SectionName, frozenset[str]]:
        if header.audience:
            return MappingProxyType(recipients(self.policy, header))
        fields = routing_fields(header)
        answer = self._answers.get(fields)
        if answer is None:
            answer = MappingProxyType(recipients(self.policy, header))
            if len(self._answers) >= self.limit:
                self._answers.clear()  # one call, safe beside other threads' look-ups
            self._answers[fields] = answer
        return answer

    def __len__(self) -> int:
        return len(self._answers)
