"""The trust registry and sharing policy (version 1): who is on the bus, with which keys, may say what,
and who receives which section of which event.

A registry file is a signature line (payload type ``application/vnd.lianfang.registry.v1``) followed by
:class:`RegistryDocument` as indented JSON, signed by at least ``roots.threshold`` root keys (k of n);
see :mod:`services.kernel.registry` for the exact layout.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import AwareDatetime, Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from schemas.common import Category, ParticipantId, Town, UniqueList, Urgency, WireModel
from schemas.envelope import Base64, SectionName

REGISTRY_PAYLOAD_TYPE: Final = "application/vnd.lianfang.registry.v1"
MAX_REGISTRY_BYTES: Final = 4 * 1024 * 1024

KeyStatus = Literal["active", "retired", "revoked"]


class PublicKey(WireModel):
    """A participant's public key with its validity window and status.

    A key signs (or is sealed to) from ``valid_from`` until ``valid_until`` (open-ended when null). A
    retired key has a ``valid_until``: what it signed before stays verifiable. A revoked key also has
    ``revoked_at``: anything it signed from then on is refused.
    """

    kid: str = Field(min_length=1, max_length=64)
    use: Literal["sign", "encrypt"]
    alg: Literal["ed25519", "x25519"]
    public: Base64 = Field(description="raw 32-byte public key, base64")
    valid_from: AwareDatetime
    valid_until: AwareDatetime | None = None
    status: KeyStatus = "active"
    revoked_at: AwareDatetime | None = None


class Participant(WireModel):
    """One participant of the trust domain."""

    id: ParticipantId
    name_zh: str = Field(min_length=1, max_length=64)
    name_en: str = Field(min_length=1, max_length=128)
    may_publish: UniqueList[str] = Field(description="event types this participant may publish")
    keys: list[PublicKey]


class RootKey(WireModel):
    """A root key, held by one founding agency."""

    kid: str = Field(min_length=1, max_length=64)
    holder: ParticipantId
    public: Base64


class Roots(WireModel):
    """The root keys and how many of them must sign a registry (k of n).

    Thresholds count distinct public keys, so one key listed under two key ids would meet a
    threshold of 2 alone: a root set that lists a key (or a key id) twice, or whose threshold its
    keys cannot meet, is refused wherever it is built or read.
    """

    threshold: int = Field(ge=1)
    keys: list[RootKey] = Field(min_length=1)

    @model_validator(mode="after")
    def _distinct_keys_meet_the_threshold(self) -> Roots:
        kids = [k.kid for k in self.keys]
        publics = [k.public for k in self.keys]
        if len(set(kids)) != len(kids):
            raise ValueError("a root key id is listed twice")
        if len(set(publics)) != len(publics):
            raise ValueError("one root public key is listed twice: thresholds count distinct keys")
        if self.threshold > len(publics):
            raise ValueError(f"a threshold of {self.threshold} cannot be met by {len(publics)} root keys")
        return self


class DelegatedRole(WireModel):
    """An online role the roots delegate to (TUF's timestamp role): its keys and how many must sign.

    The roots sign it as part of the registry, so a new registry version rotates its keys."""

    threshold: int = Field(ge=1)
    keys: list[RoleKey] = Field(min_length=1)


class RoleKey(WireModel):
    """A key of a delegated role: Ed25519, held by the service that performs the role."""

    kid: str = Field(min_length=1, max_length=64)
    public: Base64 = Field(description="raw 32-byte Ed25519 public key, base64")


class Match(WireModel):
    """Conditions on clear-header fields; a rule matches when every present condition holds."""

    type: UniqueList[str] | None = None
    category: UniqueList[Category] | None = None
    minor: bool | None = None
    school_related: bool | None = None
    town: UniqueList[Town] | None = None
    urgency: UniqueList[Urgency] | None = None


class Rule(WireModel):
    """A sharing rule: when the header matches, these participants receive these sections.

    Recipients are participant ids or two tokens: ``$town_mediation`` (the mediation room of the
    header's town) and ``$audience`` (the header's ``audience`` list, for joint-meeting and supervision
    events addressed to particular agencies).
    """

    name: str = Field(pattern=r"^[a-z0-9_]+$")
    description: str = ""
    when: Match
    triage: UniqueList[str] = Field(default_factory=list)
    details: UniqueList[str] = Field(default_factory=list)


class Policy(WireModel):
    """The sharing policy: the union of every matching rule's recipients, per section."""

    version: int = Field(ge=1)
    rules: list[Rule]


class SealedPseudonymKey(WireModel):
    """The pseudonym key, sealed with HPKE to each participant's current encryption key."""

    version: int = Field(ge=0)
    sealed: list[WrappedPseudonymKey]


class WrappedPseudonymKey(WireModel):
    to: ParticipantId
    kid: str
    enc: Base64


class PseudonymizerRole(WireModel):
    """The oblivious pseudonymization service the roots name (RFC 9497 VOPRF, ristretto255-SHA512).

    Only the service holds the secret half of ``public``; every client verifies each answer's proof
    against this key, never against one the service offers, so the service cannot give one agency other
    pseudonyms than the rest. ``version`` is the ``p<version>.`` of the pseudonyms it gives; ``url`` is
    where it is served (an operator may point a client elsewhere; the key still comes from here).
    """

    suite: Literal["ristretto255-SHA512"] = "ristretto255-SHA512"
    mode: Literal["voprf"] = "voprf"
    version: int = Field(ge=0, le=999_999_999)
    public: Base64 = Field(description="the VOPRF public key: a 32-byte ristretto255 element, base64")
    url: str = Field(min_length=1, max_length=512, pattern=r"^https?://[^\s]+$")
    previous: PreviousPseudonymizerKey | None = Field(
        default=None,
        description="during a key transition, the key before this one: clients also ask for the pseudonym "
        "under it, for the header's links",
    )
    transition_until: AwareDatetime | None = Field(
        default=None,
        description="during a transition (a previous key here, or a sealed pseudonym key beside this "
        "role), the earliest time the roots may end it: the hub's longest look-back after it began",
    )

    @model_serializer(mode="wrap")
    def _only_a_transition_adds_fields(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Outside a transition the role is written as before these fields existed, so a registry that
        # rotates nothing stays readable by processes that do not know them yet.
        data: dict[str, Any] = handler(self)
        for name in ("previous", "transition_until"):
            if data.get(name) is None:
                data.pop(name, None)
        return data

    @model_validator(mode="after")
    def _versions_grow(self) -> PseudonymizerRole:
        if self.previous is not None:
            if self.previous.version >= self.version:
                raise ValueError("the previous pseudonymizer key's version must be below the current one")
            if self.previous.public == self.public:
                raise ValueError("the previous pseudonymizer key is the current one")
        return self


class PreviousPseudonymizerKey(WireModel):
    """The pseudonymizer's key of the epoch before, named only while the transition lasts."""

    version: int = Field(ge=0, le=999_999_999)
    public: Base64 = Field(description="its VOPRF public key: a 32-byte ristretto255 element, base64")


class RegistryDocument(WireModel):
    """What the root keys sign."""

    v: Literal[1] = 1
    version: int = Field(ge=1, description="increases with every change")
    issued: AwareDatetime
    expires: AwareDatetime = Field(description="consumers refuse the registry from this time on")
    roots: Roots
    participants: list[Participant]
    policy: Policy
    pseudonym_key: SealedPseudonymKey | None = Field(
        default=None,
        description="the pseudonym key sealed to every participant: only in domains that name no "
        "pseudonymizer (older ones); any keystore then computes pseudonyms offline",
    )
    pseudonymizer: PseudonymizerRole | None = Field(
        default=None,
        description="the oblivious pseudonymization service: nobody computes a pseudonym without it",
    )
    timestamp: DelegatedRole | None = Field(
        default=None,
        description="the online key(s) that sign freshness statements (services.kernel.freshness); "
        "without it no process can be fresh",
    )

    @model_validator(mode="after")
    def _one_way_to_pseudonymize(self) -> RegistryDocument:
        role, sealed = self.pseudonymizer, self.pseudonym_key
        if role is None and sealed is None:
            raise ValueError(
                "a registry either names a pseudonymizer or carries a sealed pseudonym key, exactly one "
                "(except while a domain moves from the sealed key to the pseudonymizer)"
            )
        if role is None:
            return self
        # A sealed key beside a pseudonymizer lets every keystore compute the old pseudonyms offline: it
        # is allowed only as the previous epoch of a transition to the pseudonymizer, which has an end.
        migrating = sealed is not None
        if migrating and role.previous is not None:
            raise ValueError(
                "one transition at a time: a previous pseudonymizer key or a sealed key, not both"
            )
        if migrating and sealed is not None and sealed.version >= role.version:
            raise ValueError("the pseudonymizer's version must be above the sealed pseudonym key's")
        if (migrating or role.previous is not None) != (role.transition_until is not None):
            raise ValueError(
                "a pseudonymizer has a transition_until exactly while a transition is underway (a previous "
                "key, or a sealed pseudonym key beside it)"
            )
        return self

    @property
    def in_transition(self) -> bool:
        """Whether pseudonyms are being linked across a key change (see PseudonymizerRole)."""
        return self.pseudonymizer is not None and self.pseudonymizer.transition_until is not None


SectionRecipients = dict[SectionName, frozenset[str]]

SealedPseudonymKey.model_rebuild()
PseudonymizerRole.model_rebuild()
DelegatedRole.model_rebuild()
