"""``lianfang console adduser|role|unlock|users``: the console's accounts and their roles
(:mod:`services.console.roles`), and the demo account of ``lianfang run``.

``services/cli/main.py`` registers the subcommands with :func:`add_commands`. A password is read from
``LIANFANG_CONSOLE_PASSWORD`` (for scripts and tests), else from the first line of standard input when
it is not a terminal (or with ``--password-stdin``), else asked for twice without echo. Nothing here
prints a password, except :func:`demo_login`'s caller, once, for the generated demo account.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from services.cli.settings import HomeSettings
from services.console.accounts import AccountStore, accounts_path, generate_password
from services.console.app import kdf_params
from services.console.roles import ROLES, Role, check_role
from services.kernel.errors import UsageError

if TYPE_CHECKING:
    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]

PASSWORD_ENV: Final = "LIANFANG_CONSOLE_PASSWORD"  # noqa: S105 - a variable's name, not a password
DEMO_ACCOUNT: Final = "demo"


def add_commands(
    subcommands: Subcommands,
    common: argparse.ArgumentParser,
    command: Callable[..., argparse.ArgumentParser],
    group: Callable[..., Subcommands],
) -> None:
    """Register the ``console`` group: ``adduser``, ``role``, ``unlock`` and ``users``."""
    console = group(subcommands, "console", "console accounts and their roles (HOME/console/accounts.sqlite)")
    add = command(
        console,
        "adduser",
        cmd_adduser,
        common,
        f"create a console account with a role; the password comes from ${PASSWORD_ENV}, stdin or a prompt",
    )
    add.add_argument("--name", required=True, metavar="N", help="account name (letters, digits, _ . @ -)")
    add.add_argument(
        "--role",
        choices=ROLES,
        default=None,
        help="coordinator (acts on alerts), supervisor (reads alerts and supervision, cannot act) or"
        " administrator (accounts only); required for a new account, kept by --replace when omitted",
    )
    add.add_argument(
        "--replace", action="store_true", help="set a new password for an existing account and unlock it"
    )
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from the first line of stdin"
    )
    role = command(console, "role", cmd_role, common, "give an account another role (from its next request)")
    role.add_argument("--name", required=True, metavar="N", help="account name")
    role.add_argument("--role", required=True, choices=ROLES, help="coordinator, supervisor or administrator")
    unlock = command(console, "unlock", cmd_unlock, common, "lift the lock-out of an account")
    unlock.add_argument("--name", required=True, metavar="N", help="account name")
    command(console, "users", cmd_users, common, "list the accounts: name and role")


def _store(args: argparse.Namespace) -> AccountStore:
    home: Path | None = getattr(args, "home", None)
    return AccountStore(accounts_path(home if home is not None else HomeSettings().home), kdf=kdf_params())


def read_password(*, from_stdin: bool) -> str:
    """The new password from the environment, stdin or a prompt (asked twice)."""
    if env := os.environ.get(PASSWORD_ENV):
        return env
    if from_stdin or not sys.stdin.isatty():
        line = sys.stdin.readline()
        if not line:
            raise UsageError(f"no password on stdin (or set {PASSWORD_ENV})")
        return line.rstrip("\r\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise UsageError("the two passwords differ; nothing was changed")
    return first


def cmd_adduser(args: argparse.Namespace) -> int:
    role: Role | None = check_role(args.role) if args.role is not None else None
    if role is None and not args.replace:
        raise UsageError(f"a new account needs --role: {', '.join(ROLES)}")
    password = read_password(from_stdin=args.password_stdin)
    store = _store(args)
    try:
        name = store.create(args.name, password, role=role, replace=args.replace)
        role = store.role_of(name)
    finally:
        store.close()
    verb = "password replaced for" if args.replace else "created"
    print(f"console account {name!r} ({role}) {verb} in {store.path}")
    return 0


def cmd_role(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        store.set_role(args.name, check_role(args.role))
    finally:
        store.close()
    print(f"console account {args.name!r} is now {args.role}")
    return 0


def cmd_unlock(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        if not store.exists(args.name):
            raise UsageError(f"no console account {args.name!r} in {store.path}")
        store.unlock(args.name)
    finally:
        store.close()
    print(f"console account {args.name!r} unlocked")
    return 0


def cmd_users(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        accounts = store.accounts()
    finally:
        store.close()
    for account in accounts:
        print(f"{account.name}\t{account.role or 'unknown role'}")
    if not accounts:
        hint = "`lianfang console adduser --name N --role R`"
        print(f"no console accounts in {store.path} ({hint})", file=sys.stderr)
    return 0


@dataclass(frozen=True, slots=True)
class DemoLogin:
    """The demo coordinator's sign-in. ``password`` is new each time and shown only to whoever runs
    the demo; the repository holds none."""

    name: str
    password: str = field(repr=False)


def demo_login(home: Path) -> DemoLogin:
    """Create the demo account (or give it a new password): for ``lianfang run`` to print once."""
    store = AccountStore(accounts_path(home), kdf=kdf_params())
    try:
        password = generate_password()
        store.create(DEMO_ACCOUNT, password, role="coordinator", replace=True)
    finally:
        store.close()
    return DemoLogin(DEMO_ACCOUNT, password)
