"""Who logs in to Kafka as whom, and what each login may do. Pure: names in, ACL rules out.

Every service logs in as its own principal: the router as ``router``, the hub as ``hub``, the console as
the participant whose inbox it reads (``coordinators``), an agency's own system as its participant id.
A process that acts for several participants (a gateway serving several agencies; the demo's
simulator, which plays the whole district) logs in as a principal of its own that is allowed exactly
the union of what those participants are allowed (:func:`acting_for`) and nothing else. It holds their
signing keys, so it can already say what they can say; rights beyond theirs are never given, and the
rights of participants it does not serve are never given to it either.

``User:operator`` is the broker's only super user: it creates topics and ACLs and publishes the signed
registry; no service runs as it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Final

from services.kernel import acls, ids
from services.kernel.topics import TopicNames

OPERATOR: Final = "operator"
GATEWAY: Final = "gateway"
"""The principal of a gateway that serves several participants (the demo runs one)."""
SIMULATOR: Final = "simulator"
"""The principal of ``lianfang simulate``, which publishes for every participant of the demo district."""

SHARED: Final = (GATEWAY, SIMULATOR)


def acting_for(
    principal: str, participants: Iterable[str], names: TopicNames = acls.DEFAULT_NAMES
) -> list[acls.AclRule]:
    """The rules of ``User:<principal>``: exactly the union of the participant rules of ``participants``."""
    me = acls.user(principal)
    rules = {
        dataclasses.replace(rule, principal=me)
        for participant in dict.fromkeys(participants)
        for rule in acls.participant_rules(participant, names)
    }
    return sorted(rules)


def deployment_rules(
    participants: Iterable[str],
    shared: Mapping[str, Iterable[str]] = {},
    names: TopicNames = acls.DEFAULT_NAMES,
) -> list[acls.AclRule]:
    """Every rule of a deployment: the registry's (:func:`services.kernel.acls.generate`) and, for each
    shared principal in ``shared``, the rules of the participants it acts for, which must be
    participants of the registry."""
    known = list(dict.fromkeys(participants))
    rules = set(acls.generate(known, names))
    for principal, acts_for in shared.items():
        served = set(acts_for)
        if principal in known or principal == OPERATOR:
            raise ValueError(
                f"{principal!r} is a participant or the operator: a shared principal needs a name"
            )
        unknown = sorted((served - set(known)) | (served & {ids.ROUTER}))
        if unknown:
            raise ValueError(
                f"{principal} cannot act for {', '.join(unknown)}: not a participant with an inbox"
            )
        rules.update(acting_for(principal, served, names))
    return sorted(rules)
