"""The administrators' page of the console: the accounts, their roles and lock-outs. It shows no case
content; accounts are created and changed with ``lianfang console …`` (``services/cli/console.py``)."""

from __future__ import annotations

from collections.abc import Sequence

from services.console.accounts import Account
from services.console.markup import Markup, fmt, join
from services.console.pages import Viewer, page


def accounts_page(viewer: Viewer, accounts: Sequence[Account]) -> Markup:
    rows = join(
        fmt(
            '<tr data-account="{name}" data-role="{role}"><td>{name}</td><td>{role_name}</td>'
            "<td>{locked}</td><td>{last}</td></tr>",
            name=account.name,
            role=account.role or "",
            role_name=viewer.t(f"role.{account.role}") if account.role else "—",
            locked=viewer.when(account.locked_until),
            last=viewer.when(account.last_login),
        )
        for account in accounts
    )
    body = fmt(
        '<section class="accounts"><h1>{title}</h1><p class="muted">{note}</p>'
        '<table class="grid" id="accounts"><thead><tr><th>{name}</th><th>{role}</th><th>{locked}</th>'
        "<th>{last}</th></tr></thead><tbody>{rows}</tbody></table></section>",
        title=viewer.t("accounts.title"),
        note=viewer.t("accounts.note"),
        name=viewer.t("accounts.name"),
        role=viewer.t("accounts.role"),
        locked=viewer.t("accounts.locked"),
        last=viewer.t("accounts.last_login"),
        rows=rows,
    )
    return page(viewer, name="accounts", title=viewer.t("accounts.title"), body=body)
