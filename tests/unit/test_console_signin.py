"""Sign-ins that run at once: the production Argon2id parameters in threads, with deadlines (a KDF that
deadlocks fails the test instead of hanging it), the lock-out under a burst of parallel guesses, and the
cost of refusals that tell nothing."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from services.console.accounts import PASSWORD_KDF, AccountStore, LoginResult
from services.console.app import FAST_KDF_ENV, kdf_params
from services.kernel import crypto
from services.kernel.keystore import KdfParams
from tests.kit import SetClock

pytestmark = pytest.mark.unit

PASSWORD = "correct horse battery staple"
DEADLINE_S = 60.0


def at_once(calls: list[Callable[[], LoginResult]], deadline: float = DEADLINE_S) -> list[LoginResult]:
    """Run every call in its own thread, released together; fail if any is still running at the deadline
    (daemon threads: a deadlocked KDF cannot hold up the test run)."""
    results: list[LoginResult | None] = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def run(index: int) -> None:
        start.wait()
        results[index] = calls[index]()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(deadline)
    stuck = sum(thread.is_alive() for thread in threads)
    assert stuck == 0, f"{stuck} of {len(calls)} sign-ins still running after {deadline:.0f} s"
    return [r for r in results if r is not None]


def stored_hash(path: Path, name: str) -> str:
    db = sqlite3.connect(path)
    try:
        (phc,) = db.execute("SELECT phc FROM accounts WHERE name = ?", (name,)).fetchone()
    finally:
        db.close()
    return str(phc)


def test_new_passwords_are_hashed_with_64_mib_and_three_passes_on_one_lane(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(FAST_KDF_ENV, raising=False)
    assert kdf_params() == PASSWORD_KDF
    store = AccountStore(tmp_path / "a.sqlite")
    store.create("wang", PASSWORD)
    assert stored_hash(store.path, "wang").startswith("$argon2id$v=19$m=65536,t=3,p=1$")


def test_four_sign_ins_at_once_with_the_production_parameters_all_return(tmp_path: Path) -> None:
    store = AccountStore(tmp_path / "a.sqlite")
    assert store.kdf == PASSWORD_KDF
    for name in ("wang", "li"):
        store.create(name, PASSWORD)
    results = at_once([lambda n=n: store.verify(n, PASSWORD) for n in ("wang", "li", "wang", "li")])
    assert [r.outcome for r in results] == ["ok"] * 4


def test_hashes_made_with_four_lanes_verify_when_signed_in_at_once_and_move_to_one_lane(
    tmp_path: Path,
) -> None:
    """Accounts created before one lane was the default (the keystores' 64 MiB, 3 passes, 4 lanes)."""
    legacy = AccountStore(tmp_path / "a.sqlite", kdf=KdfParams())
    for name in ("wang", "li"):
        legacy.create(name, PASSWORD)
    legacy.close()
    assert stored_hash(tmp_path / "a.sqlite", "wang").startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    store = AccountStore(tmp_path / "a.sqlite")
    results = at_once([lambda n=n: store.verify(n, PASSWORD) for n in ("wang", "li", "wang", "li")])
    assert [r.outcome for r in results] == ["ok"] * 4
    for name in ("wang", "li"):
        assert stored_hash(store.path, name).startswith("$argon2id$v=19$m=65536,t=3,p=1$")
    assert store.verify("wang", PASSWORD).ok


def test_two_multi_lane_derivations_at_once_both_return() -> None:
    """What keystores do (four lanes): two opened at once in one process."""
    derive = lambda: crypto.argon2id(  # noqa: E731
        b"passphrase", salt=b"0123456789abcdef", length=32, iterations=3, lanes=4, memory_kib=65536
    )
    keys: list[bytes] = []
    threads = [threading.Thread(target=lambda: keys.append(derive()), daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE_S)
    assert len(keys) == 2
    assert keys[0] == keys[1]


def test_a_burst_of_parallel_wrong_passwords_checks_no_more_than_the_lock_out_allows(
    tmp_path: Path,
) -> None:
    store = AccountStore(tmp_path / "a.sqlite", max_failures=3, lockout=timedelta(minutes=15))
    store.create("wang", PASSWORD)
    guesses = [f"wrong-password-{n:02d}" for n in range(12)]
    lock = threading.Lock()
    queue = list(guesses)

    def guess_until_empty() -> list[LoginResult]:
        outcomes = []
        while True:
            with lock:
                if not queue:
                    return outcomes
                guess = queue.pop()
            outcomes.append(store.verify("wang", guess))

    per_thread: list[list[LoginResult]] = []
    threads = [
        threading.Thread(target=lambda: per_thread.append(guess_until_empty()), daemon=True) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE_S)
    outcomes = [r.outcome for results in per_thread for r in results]
    assert len(outcomes) == 12
    assert outcomes.count("bad_credentials") <= 2, outcomes  # the third checked guess locks
    assert outcomes.count("locked") >= 10
    assert store.verify("wang", PASSWORD).outcome == "locked", "the lock holds against the right password"


def test_an_attempt_cut_short_locks_the_account_for_a_while_not_for_ever(tmp_path: Path) -> None:
    """Attempts are counted before their check: a process killed mid-check leaves them counted."""
    clock = SetClock()
    store = AccountStore(
        tmp_path / "a.sqlite",
        kdf=KdfParams.for_tests(),
        max_failures=3,
        lockout=timedelta(minutes=15),
        clock=clock,
    )
    store.create("wang", PASSWORD)
    db = sqlite3.connect(store.path)
    db.execute("UPDATE accounts SET failures = 3 WHERE name = 'wang'")
    db.commit()
    db.close()
    assert store.verify("wang", PASSWORD).outcome == "locked"
    clock.now += timedelta(minutes=15)
    assert store.verify("wang", PASSWORD).ok


@pytest.mark.parametrize("case", ["unknown name", "invalid name", "locked account"])
def test_a_refusal_that_checks_nothing_still_costs_one_kdf_at_the_stores_parameters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    store = AccountStore(tmp_path / "a.sqlite", kdf=KdfParams.for_tests(), max_failures=1)
    store.create("wang", PASSWORD)
    if case == "locked account":
        assert store.verify("wang", "wrong-password-1").outcome == "locked"
    checked: list[str] = []
    real = crypto.argon2id_verify_phc

    def spy(secret: bytes, phc: str) -> bool:
        checked.append(phc.split("$")[3])
        return real(secret, phc)

    monkeypatch.setattr(crypto, "argon2id_verify_phc", spy)
    name = {"unknown name": "nobody", "invalid name": "no such name!", "locked account": "wang"}[case]
    result = store.verify(name, PASSWORD)
    assert not result.ok
    assert checked == ["m=8192,t=1,p=1"]
