"""Coordinator accounts: Argon2id hashes, lock-out after repeated failures, and the commands that
create accounts (``lianfang console adduser``) and the demo login of ``lianfang run``."""

from __future__ import annotations

import argparse
import io
import sqlite3
import stat
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from services.cli import console as command
from services.console.accounts import AccountStore, accounts_path
from services.kernel.errors import UsageError
from services.kernel.keystore import KdfParams
from tests.kit import NOW, SetClock

pytestmark = pytest.mark.unit

PASSWORD = "correct horse battery staple"


@pytest.fixture
def clock() -> SetClock:
    return SetClock()


@pytest.fixture
def store(tmp_path: Path, clock: SetClock) -> AccountStore:
    accounts = AccountStore(
        tmp_path / "accounts.sqlite",
        kdf=KdfParams.for_tests(),
        max_failures=3,
        lockout=timedelta(minutes=15),
        clock=clock,
    )
    accounts.create("wang.li", PASSWORD)
    return accounts


def stored_hash(store: AccountStore, name: str) -> str:
    db = sqlite3.connect(store.path)
    try:
        (phc,) = db.execute("SELECT phc FROM accounts WHERE name = ?", (name,)).fetchone()
    finally:
        db.close()
    return str(phc)


def test_the_password_is_stored_as_an_argon2id_hash_with_its_own_salt(store: AccountStore) -> None:
    store.create("zhao", PASSWORD)
    first, second = stored_hash(store, "wang.li"), stored_hash(store, "zhao")
    assert first.startswith("$argon2id$v=19$m=8192,t=1,p=1$")
    assert PASSWORD not in first
    assert first != second, "equal passwords get different salts"
    assert PASSWORD.encode() not in store.path.read_bytes()


def test_the_accounts_file_is_private(store: AccountStore) -> None:
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600


def test_the_right_password_signs_in_and_a_wrong_one_is_refused(store: AccountStore) -> None:
    assert store.verify("wang.li", PASSWORD).ok
    refused = store.verify("wang.li", PASSWORD + "!")
    assert (refused.outcome, refused.name) == ("bad_credentials", "wang.li")


def test_an_unknown_name_is_refused_like_a_wrong_password_and_not_named(store: AccountStore) -> None:
    result = store.verify("nobody", PASSWORD)
    assert (result.outcome, result.name) == ("bad_credentials", None)
    assert store.verify("not a valid name!", PASSWORD).outcome == "bad_credentials"


def test_three_failures_in_a_row_lock_the_account_even_against_the_right_password(
    store: AccountStore, clock: SetClock
) -> None:
    assert store.verify("wang.li", "wrong-1-password").outcome == "bad_credentials"
    assert store.verify("wang.li", "wrong-2-password").outcome == "bad_credentials"
    locked = store.verify("wang.li", "wrong-3-password")
    assert locked.outcome == "locked"
    assert locked.locked_until == NOW + timedelta(minutes=15)
    clock.now += timedelta(minutes=14)
    assert store.verify("wang.li", PASSWORD).outcome == "locked"


def test_attempts_while_locked_do_not_extend_the_lock(store: AccountStore, clock: SetClock) -> None:
    for n in range(3):
        store.verify("wang.li", f"wrong-{n}-password")
    for minute in range(1, 15):
        clock.now = NOW + timedelta(minutes=minute)
        store.verify("wang.li", "still-wrong-password")
    clock.now = NOW + timedelta(minutes=15)
    assert store.verify("wang.li", PASSWORD).ok


def test_a_success_resets_the_count_of_failures(store: AccountStore) -> None:
    store.verify("wang.li", "wrong-1-password")
    store.verify("wang.li", "wrong-2-password")
    assert store.verify("wang.li", PASSWORD).ok
    store.verify("wang.li", "wrong-3-password")
    store.verify("wang.li", "wrong-4-password")
    assert store.verify("wang.li", PASSWORD).ok


def test_a_new_password_or_unlock_lifts_the_lock(store: AccountStore) -> None:
    for n in range(3):
        store.verify("wang.li", f"wrong-{n}-password")
    store.unlock("wang.li")
    assert store.verify("wang.li", PASSWORD).ok
    for n in range(3):
        store.verify("wang.li", f"wrong-{n}-password")
    store.create("wang.li", "another long password", replace=True)
    assert store.verify("wang.li", "another long password").ok
    assert not store.verify("wang.li", PASSWORD).ok


def test_a_hash_weaker_than_the_stores_parameters_is_upgraded_at_sign_in(tmp_path: Path) -> None:
    weak = AccountStore(tmp_path / "a.sqlite", kdf=KdfParams.for_tests())
    weak.create("wang", PASSWORD)
    weak.close()
    stronger = AccountStore(
        tmp_path / "a.sqlite", kdf=KdfParams(iterations=2, lanes=1, memory_cost_kib=16384)
    )
    assert stronger.verify("wang", PASSWORD).ok
    assert stored_hash(stronger, "wang").startswith("$argon2id$v=19$m=16384,t=2,p=1$")
    cheaper = AccountStore(tmp_path / "a.sqlite", kdf=KdfParams.for_tests())
    assert cheaper.verify("wang", PASSWORD).ok
    assert "m=16384" in stored_hash(cheaper, "wang"), "a cheaper store never downgrades a hash"


@pytest.mark.parametrize(
    ("name", "password"),
    [("wang li", PASSWORD), ("", PASSWORD), ("x" * 65, PASSWORD), ("wang", "short"), ("wang", "x" * 1025)],
    ids=["a space in the name", "no name", "a long name", "a short password", "a huge password"],
)
def test_bad_names_and_weak_passwords_are_refused(store: AccountStore, name: str, password: str) -> None:
    with pytest.raises(UsageError):
        store.create(name, password)


def test_an_existing_account_is_not_replaced_by_accident(store: AccountStore) -> None:
    with pytest.raises(UsageError, match="--replace"):
        store.create("wang.li", "another long password")


# --------------------------------------------------------------------------- the commands


def run(argv: list[str], monkeypatch: pytest.MonkeyPatch, stdin: str = "") -> int:
    """Run ``argv`` through a parser built the way services/cli/main.py builds its own."""
    parser = argparse.ArgumentParser(prog="lianfang")
    parser.add_argument("--home", type=Path, default=None)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", type=Path, default=argparse.SUPPRESS)
    subcommands = parser.add_subparsers(dest="command", required=True)

    def make(subs: Any, name: str, func: Callable[..., int], parent: Any, help: str) -> Any:
        sub = subs.add_parser(name, help=help, parents=[parent])
        sub.set_defaults(func=func)
        return sub

    def group(subs: Any, name: str, help: str) -> Any:
        return subs.add_parser(name, help=help).add_subparsers(dest=f"{name}_command", required=True)

    command.add_commands(subcommands, common, make, group)
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_adduser_reads_the_password_from_the_environment_and_never_prints_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LIANFANG_INSECURE_FAST_KDF", "1")
    monkeypatch.setenv(command.PASSWORD_ENV, PASSWORD)
    argv = ["--home", str(tmp_path), "console", "adduser", "--name", "wang", "--role", "coordinator"]
    assert run(argv, monkeypatch) == 0
    out = capsys.readouterr()
    assert "wang" in out.out
    assert PASSWORD not in out.out + out.err
    assert AccountStore(accounts_path(tmp_path), kdf=KdfParams.for_tests()).verify("wang", PASSWORD).ok


def test_adduser_reads_the_password_from_stdin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIANFANG_INSECURE_FAST_KDF", "1")
    monkeypatch.delenv(command.PASSWORD_ENV, raising=False)
    argv = ["console", "adduser", "--home", str(tmp_path), "--name", "li", "--role", "supervisor"]
    argv.append("--password-stdin")
    assert run(argv, monkeypatch, stdin=PASSWORD + "\n") == 0
    assert AccountStore(accounts_path(tmp_path), kdf=KdfParams.for_tests()).verify("li", PASSWORD).ok
    with pytest.raises(UsageError, match="--replace"):
        run(argv, monkeypatch, stdin=PASSWORD + "\n")
    with pytest.raises(UsageError, match="no password"):
        run([*argv, "--replace"], monkeypatch, stdin="")


def test_users_lists_names_and_unlock_lifts_a_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LIANFANG_INSECURE_FAST_KDF", "1")
    store = AccountStore(accounts_path(tmp_path), kdf=KdfParams.for_tests(), max_failures=1)
    store.create("wang", PASSWORD)
    assert store.verify("wang", "wrong-password-1").outcome == "locked"
    assert run(["--home", str(tmp_path), "console", "unlock", "--name", "wang"], monkeypatch) == 0
    assert store.verify("wang", PASSWORD).ok
    capsys.readouterr()
    assert run(["--home", str(tmp_path), "console", "users"], monkeypatch) == 0
    assert capsys.readouterr().out.split() == ["wang", "coordinator"]
    with pytest.raises(UsageError):
        run(["--home", str(tmp_path), "console", "unlock", "--name", "nobody"], monkeypatch)


def test_the_demo_login_is_a_new_generated_password_each_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIANFANG_INSECURE_FAST_KDF", "1")
    first = command.demo_login(tmp_path)
    second = command.demo_login(tmp_path)
    assert first.name == second.name == "demo"
    assert first.password != second.password
    assert len(second.password) >= 20
    store = AccountStore(accounts_path(tmp_path), kdf=KdfParams.for_tests())
    assert store.verify("demo", second.password).ok
    assert not store.verify("demo", first.password).ok


def test_adduser_refuses_a_new_account_without_a_role_and_names_the_roles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIANFANG_INSECURE_FAST_KDF", "1")
    monkeypatch.setenv(command.PASSWORD_ENV, PASSWORD)
    with pytest.raises(UsageError, match="coordinator, supervisor, administrator"):
        run(["--home", str(tmp_path), "console", "adduser", "--name", "wang"], monkeypatch)
    assert not AccountStore(accounts_path(tmp_path), kdf=KdfParams.for_tests()).exists("wang")


def test_each_role_is_stored_and_the_role_command_changes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LIANFANG_INSECURE_FAST_KDF", "1")
    monkeypatch.setenv(command.PASSWORD_ENV, PASSWORD)
    for name, role in (("zhao", "coordinator"), ("qian", "supervisor"), ("sun", "administrator")):
        run(["--home", str(tmp_path), "console", "adduser", "--name", name, "--role", role], monkeypatch)
    store = AccountStore(accounts_path(tmp_path), kdf=KdfParams.for_tests())
    assert [(a.name, a.role) for a in store.accounts()] == [
        ("qian", "supervisor"),
        ("sun", "administrator"),
        ("zhao", "coordinator"),
    ]
    assert (
        run(
            ["--home", str(tmp_path), "console", "role", "--name", "qian", "--role", "coordinator"],
            monkeypatch,
        )
        == 0
    )
    assert store.role_of("qian") == "coordinator"
    argv = ["--home", str(tmp_path), "console", "adduser", "--name", "sun", "--replace"]
    assert run(argv, monkeypatch) == 0
    assert store.role_of("sun") == "administrator", "a new password keeps the role"
    with pytest.raises(UsageError, match="no console account"):
        run(
            ["--home", str(tmp_path), "console", "role", "--name", "nobody", "--role", "supervisor"],
            monkeypatch,
        )
    with pytest.raises(SystemExit):  # argparse names the choices
        run(["--home", str(tmp_path), "console", "role", "--name", "sun", "--role", "root"], monkeypatch)


def test_accounts_made_before_roles_existed_become_coordinators(tmp_path: Path) -> None:
    path = tmp_path / "accounts.sqlite"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE accounts (name TEXT PRIMARY KEY, phc TEXT NOT NULL, created_at TEXT NOT NULL,"
        " failures INTEGER NOT NULL DEFAULT 0, locked_until TEXT, last_login TEXT)"
    )
    db.execute("INSERT INTO accounts (name, phc, created_at) VALUES ('old', '$argon2id$x', '2024-01-01')")
    db.commit()
    db.close()
    store = AccountStore(path, kdf=KdfParams.for_tests())
    assert store.role_of("old") == "coordinator"
    assert store.role_of("nobody") is None
