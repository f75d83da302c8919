"""Coalesced pseudonym requests: callers queued while a request is in flight share the next one, each
gets only its own answers (or the error of the request that carried them), and callers of another
registry, or beyond the batch limit, are never mixed in."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from services.pseudonymizer.coalesce import Coalescer, plan, take
from tests.kit import until

pytestmark = pytest.mark.unit


# --------------------------------------------------------------------------- the pure parts


def test_an_identifier_asked_by_several_callers_is_in_the_batch_once_and_each_gets_its_own_answers() -> None:
    together = plan([["a", "b"], ["b", "c", "a"], ["c", "c"]])
    assert together.unique == ("a", "b", "c")
    assert together.split(["A", "B", "C"]) == [["A", "B"], ["B", "C", "A"], ["C", "C"]]


def test_answers_that_do_not_match_the_batch_are_refused_not_handed_out() -> None:
    with pytest.raises(ValueError, match="2 answers to 3"):
        plan([["a", "b", "c"]]).split(["A", "B"])


TAKE_CASES = {
    "every caller under the leader's key within the limit": ([1, 1, 1], [True] * 3, 1, 10, [0, 1, 2]),
    "a caller under another key is left for a request of its own": (
        [1, 1, 1],
        [True, False, True],
        0,
        10,
        [0, 2],
    ),
    "callers beyond the limit wait for the next request": ([4, 4, 4], [True] * 3, 0, 9, [0, 1]),
    "the leader is served even when it alone is over the limit": ([1, 20, 1], [True] * 3, 1, 10, [1]),
    "older callers come first, the leader always": ([3, 3, 3, 3], [True] * 4, 3, 7, [0, 3]),
}


@pytest.mark.parametrize("case", TAKE_CASES)
def test_whom_one_request_serves(case: str) -> None:
    sizes, same_key, own, limit, expected = TAKE_CASES[case]
    assert take(sizes, same_key, own, limit) == expected


# --------------------------------------------------------------------------- callers in threads


class Service:
    """An evaluation that holds its first request until told, so that callers queue behind it."""

    def __init__(self, *, fail_on: str | None = None) -> None:
        self.asked: list[tuple[object, list[str]]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.fail_on = fail_on

    def __call__(self, key: object, items: list[str]) -> list[str]:
        self.asked.append((key, items))
        if len(self.asked) == 1:
            self.started.set()
            self.release.wait(10)
        if self.fail_on in items:
            raise ConnectionError(f"the request with {self.fail_on} failed")
        return [f"{key}:{item}" for item in items]


def _queued_behind_a_first_request(
    coalescer: Coalescer[object, str], service: Service, calls: Sequence[tuple[object, list[str]]]
) -> list[object]:
    """Each call's outcome (its answers or its exception), all of them made while a first request
    was in flight."""
    outcomes: list[object] = [None] * len(calls)

    def call(i: int) -> None:
        try:
            outcomes[i] = coalescer.run(*calls[i])
        except Exception as e:
            outcomes[i] = e

    first = threading.Thread(target=coalescer.run, args=("k", ["first"]))
    first.start()
    until(service.started.is_set, "the first request in flight")
    others = [threading.Thread(target=call, args=(i,)) for i in range(len(calls))]
    for t in others:
        t.start()
    until(lambda: coalescer.queued == len(calls), "every caller queued behind the first request")
    service.release.set()
    for t in [first, *others]:
        t.join(10)
    return outcomes


def test_callers_queued_while_a_request_is_in_flight_share_the_next_and_each_gets_its_own_answers() -> None:
    service = Service()
    coalescer: Coalescer[object, str] = Coalescer(service, limit=100)
    outcomes = _queued_behind_a_first_request(
        coalescer, service, [("k", [f"x{i}", "shared"]) for i in range(6)]
    )
    assert outcomes == [[f"k:x{i}", "k:shared"] for i in range(6)]
    assert coalescer.requests == 2, "one request for the first caller, one for the six behind it"
    assert sorted(service.asked[1][1]) == sorted([*(f"x{i}" for i in range(6)), "shared"])


def test_a_failed_request_reaches_every_caller_it_carried_and_no_other() -> None:
    service = Service(fail_on="bad")
    coalescer: Coalescer[object, str] = Coalescer(service, limit=2)
    calls: list[tuple[object, list[str]]] = [("k", ["bad"]), ("k", ["ok1"]), ("k", ["ok2"])]
    outcomes = _queued_behind_a_first_request(coalescer, service, calls)
    failed = next(items for _, items in service.asked if "bad" in items)
    assert len(failed) == 2, "the limit lets two callers share a request"
    for (_, items), outcome in zip(calls, outcomes, strict=True):
        if items[0] in failed:
            assert isinstance(outcome, ConnectionError), f"{items} shared the failed request"
        else:
            assert outcome == [f"k:{items[0]}"], f"{items} had a request of its own, which succeeded"


def test_callers_under_another_key_are_never_sent_in_the_same_request() -> None:
    service = Service()
    coalescer: Coalescer[object, str] = Coalescer(service, limit=100)
    outcomes = _queued_behind_a_first_request(
        coalescer, service, [("k", ["a"]), ("other", ["b"]), ("k", ["c"])]
    )
    assert outcomes == [["k:a"], ["other:b"], ["k:c"]]
    assert [items for key, items in service.asked if key == "other"] == [["b"]]
    assert all("b" not in items for key, items in service.asked if key != "other")


def test_a_caller_alone_gets_a_request_at_once_and_one_with_nothing_to_ask_sends_none() -> None:
    service = Service()
    service.release.set()
    coalescer: Coalescer[object, str] = Coalescer(service, limit=100)
    assert coalescer.run("k", ["a", "a"]) == ["k:a", "k:a"]
    assert coalescer.run("k", []) == []
    assert service.asked == [("k", ["a"])]


# --------------------------------------------------------------------------- more than one in flight


class HeldService:
    """An evaluation that holds every request until the test releases it (in any order)."""

    def __init__(self) -> None:
        self.asked: list[list[str]] = []
        self.releases: list[threading.Event] = []
        self._lock = threading.Lock()

    def __call__(self, key: object, items: list[str]) -> list[str]:
        release = threading.Event()
        with self._lock:
            self.asked.append(items)
            self.releases.append(release)
        release.wait(10)
        return [f"{key}:{item}" for item in items]

    def in_flight(self, n: int) -> bool:
        with self._lock:
            return len(self.asked) == n


def _run_in_thread(
    coalescer: Coalescer[object, str], items: list[str], outcomes: dict[str, object]
) -> threading.Thread:
    def call() -> None:
        try:
            outcomes[items[0]] = coalescer.run("k", items)
        except Exception as e:
            outcomes[items[0]] = e

    thread = threading.Thread(target=call)
    thread.start()
    return thread


def _two_in_flight(
    service: HeldService, outcomes: dict[str, object]
) -> tuple[Coalescer[object, str], list[threading.Thread]]:
    """A coalescer allowing two requests, with callers "a" and "b" each in a request of its own."""
    coalescer: Coalescer[object, str] = Coalescer(service, limit=100, in_flight=2)
    threads = [_run_in_thread(coalescer, ["a"], outcomes)]
    until(lambda: service.in_flight(1), "the first request in flight")
    threads.append(_run_in_thread(coalescer, ["b"], outcomes))
    until(lambda: service.in_flight(2), "a second request in flight beside the first")
    return coalescer, threads


def test_with_two_in_flight_a_second_caller_is_sent_at_once_and_a_third_waits_for_one_to_end() -> None:
    service = HeldService()
    outcomes: dict[str, object] = {}
    coalescer, threads = _two_in_flight(service, outcomes)
    threads.append(_run_in_thread(coalescer, ["c"], outcomes))
    until(lambda: coalescer.queued == 1, "the third caller queued")
    assert service.in_flight(2), "no third request while two are in flight"
    service.releases[1].set()  # the second ends first: the third caller's request goes out
    until(lambda: service.in_flight(3), "the third caller's request in flight")
    for release in service.releases:
        release.set()
    for t in threads:
        t.join(10)
    assert outcomes == {"a": ["k:a"], "b": ["k:b"], "c": ["k:c"]}
    assert service.asked == [["a"], ["b"], ["c"]]


def test_a_caller_carried_by_another_request_waits_for_it_when_a_different_request_ends_first() -> None:
    service = HeldService()
    outcomes: dict[str, object] = {}
    coalescer, threads = _two_in_flight(service, outcomes)
    threads += [_run_in_thread(coalescer, [name], outcomes) for name in ("c", "d")]
    until(lambda: coalescer.queued == 2, "two callers queued behind both requests")
    service.releases[0].set()  # one of c and d leads a request carrying both
    until(lambda: service.in_flight(3), "a third request, for c and d together")
    assert sorted(service.asked[2]) == ["c", "d"]
    # The second request ends while the third is in flight: whichever of c and d did not lead is
    # woken with room for another request, and must keep waiting for the one that carries it.
    service.releases[1].set()
    threads[1].join(10)
    assert coalescer.requests == 3, "no request of its own for a caller already carried"
    service.releases[2].set()
    for t in threads:
        t.join(10)
    assert outcomes == {"a": ["k:a"], "b": ["k:b"], "c": ["k:c"], "d": ["k:d"]}
    assert len(service.asked) == 3


def test_a_coalescer_needs_room_for_at_least_one_request() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Coalescer(HeldService(), limit=100, in_flight=0)
