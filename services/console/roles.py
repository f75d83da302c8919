"""Who may do what in the console: three roles, least privilege, as a pure table.

- ``coordinator`` (联席会议协调员): reads alerts, timelines and supervision, and acts on alerts
  (acknowledge, schedule, conclude).
- ``supervisor`` (督查): reads alerts, timelines, supervision and meeting records; cannot act.
- ``administrator``: manages accounts only; sees no case content.

Every route of the console needs one permission (:func:`needed`); a route missing from the table needs
one no role holds, so a new page is refused until it is given a rule here. Nothing here does I/O.
"""

from __future__ import annotations

import re
from typing import Final, Literal, get_args

from services.kernel.errors import UsageError

__all__ = ["ROLES", "Permission", "Role", "allows", "check_role", "home", "needed", "role_or_none"]

Role = Literal["coordinator", "supervisor", "administrator"]
ROLES: Final[tuple[Role, ...]] = get_args(Role)

Permission = Literal["signed_in", "read_cases", "act", "manage_accounts", "unlisted"]
"""``signed_in``: any account (sign-out, the front door); ``unlisted``: a route without a rule."""

_GRANTS: Final[dict[Role, frozenset[Permission]]] = {
    "coordinator": frozenset({"signed_in", "read_cases", "act"}),
    "supervisor": frozenset({"signed_in", "read_cases"}),
    "administrator": frozenset({"signed_in", "manage_accounts"}),
}
_ALERT: Final = r"/alerts/[^/]+"
_TABLE: Final[tuple[tuple[str, str, Permission], ...]] = (
    ("GET", r"/", "signed_in"),
    ("POST", r"/logout", "signed_in"),
    ("GET", r"/alerts", "read_cases"),
    ("GET", r"/alerts/rows", "read_cases"),
    ("GET", _ALERT, "read_cases"),
    ("GET", _ALERT + r"/record", "read_cases"),
    ("POST", _ALERT + r"/(acknowledge|schedule|conclude)", "act"),
    ("GET", r"/supervision", "read_cases"),
    ("GET", r"/events", "read_cases"),
    ("GET", r"/accounts", "manage_accounts"),
)
_RULES: Final = tuple((method, re.compile(pattern), permission) for method, pattern, permission in _TABLE)
_HOME: Final[dict[Role, str]] = {
    "coordinator": "/alerts",
    "supervisor": "/alerts",
    "administrator": "/accounts",
}


def check_role(value: str) -> Role:
    """A role's name as stored, or a :class:`UsageError` naming the roles there are."""
    role = role_or_none(value)
    if role is None:
        raise UsageError(f"unknown role {value!r}: the roles are {', '.join(ROLES)}")
    return role


def role_or_none(value: str) -> Role | None:
    """The role of a stored name; None for a name this version does not know (it grants nothing)."""
    return next((role for role in ROLES if role == value), None)


def needed(method: str, path: str) -> Permission:
    """The permission a signed-in request needs (``HEAD`` is a ``GET``)."""
    method = "GET" if method == "HEAD" else method
    for rule_method, pattern, permission in _RULES:
        if rule_method == method and pattern.fullmatch(path):
            return permission
    return "unlisted"


def allows(role: Role, permission: Permission) -> bool:
    return permission in _GRANTS[role]


def home(role: Role) -> str:
    """Where an account of this role lands after signing in."""
    return _HOME[role]
