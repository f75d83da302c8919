"""Concurrent pseudonym requests of one client coalesced into one request to the service.

The pseudonymizer evaluates a batch of a few hundred elements several times faster per element than
single ones, and each request costs a round trip; threads of one SDK client (or the gateway's requests)
that each asked for their own lead's pseudonyms waited for a request each. :class:`Coalescer` is shaped
like the outbox's group commit (:class:`services.store.sqlite.GroupCommit`): it has no thread of its own;
the first caller to find no request in flight leads one for itself and every caller queued under the same
key (the registry in force), up to ``limit`` identifiers, each identifier once; every caller gets only its
own answers, in its own order, or the error of the request that carried its identifiers. A caller whose
key differs waits for a request of its own. The lead then passes to a caller still waiting.

``in_flight`` requests may run at once (1 by default): a caller that finds fewer leading than that leads
one of its own for the callers queued at that moment. More than one suits a caller that asks ahead for
work it does meanwhile (an import asks for its next two batches); for many small callers (the gateway's
requests) it splits one request into several smaller ones, each with its own proof and round trip.

:func:`take` (whom a request serves) and :func:`plan` / :meth:`Plan.split` (one batch of distinct
identifiers, and each caller's answers out of it) are pure.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["Coalescer", "Plan", "plan", "take"]

K = TypeVar("K")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Plan:
    """Distinct identifiers of several callers in first-asked order, and where each caller's are."""

    unique: tuple[str, ...]
    positions: tuple[tuple[int, ...], ...]

    def split(self, answers: Sequence[T]) -> list[list[T]]:
        """Each caller's answers, in the order it asked, from the answers to :attr:`unique`."""
        if len(answers) != len(self.unique):
            raise ValueError(f"{len(answers)} answers to {len(self.unique)} identifiers")
        return [[answers[i] for i in where] for where in self.positions]


def plan(requests: Sequence[Sequence[str]]) -> Plan:
    """One batch for ``requests``: an identifier asked by several callers (or twice by one) goes once."""
    index: dict[str, int] = {}
    positions = tuple(tuple(index.setdefault(item, len(index)) for item in request) for request in requests)
    return Plan(tuple(index), positions)


def take(sizes: Sequence[int], same_key: Sequence[bool], own: int, limit: int) -> list[int]:
    """Which queued callers one request serves (their indices in the queue, oldest first): the leader
    ``own`` always, and the oldest others under the same key while the identifiers stay within ``limit``
    (a caller that alone asks for more is served alone, in several requests of its own)."""
    chosen = [own]
    total = sizes[own]
    for i, (size, same) in enumerate(zip(sizes, same_key, strict=True)):
        if i == own or not same:
            continue
        if total + size > limit:
            break
        chosen.append(i)
        total += size
    return sorted(chosen)


@dataclass(eq=False)
class _Call(Generic[K, T]):
    key: K
    items: Sequence[str]
    taken: bool = False  # carried by a request in flight (its own or another caller's)
    done: bool = False
    result: list[T] = field(default_factory=list)
    error: BaseException | None = None


class Coalescer(Generic[K, T]):
    """Up to ``in_flight`` requests at a time for callers of one client; see the module's docstring.

    ``evaluate(key, identifiers)`` asks the service (in as many requests of ``limit`` as it needs) and
    returns one answer an identifier, in order, or raises. Keys are compared by identity.
    """

    def __init__(
        self, evaluate: Callable[[K, list[str]], list[T]], *, limit: int, in_flight: int = 1
    ) -> None:
        if in_flight < 1:
            raise ValueError("at least one request in flight")
        self._evaluate = evaluate
        self._limit = limit
        self._in_flight = in_flight
        self._queue: list[_Call[K, T]] = []
        self._cond = threading.Condition()
        self._leading = 0  # requests in flight
        self.requests = 0  # evaluations led (for tests and benchmarks: callers per request)

    @property
    def queued(self) -> int:
        """Callers waiting for a request."""
        with self._cond:
            return len(self._queue)

    def run(self, key: K, items: Sequence[str]) -> list[T]:
        """The answers to ``items`` (in order), from a request that may also serve other callers."""
        if not items:
            return []
        call: _Call[K, T] = _Call(key, items)
        with self._cond:
            self._queue.append(call)
            while not call.done:
                # Carried by a request in flight, or no room for another: wait for a request to end.
                if call.taken or self._leading >= self._in_flight:
                    self._cond.wait()
                    continue
                self._leading += 1
                self.requests += 1  # counted under the lock: with two in flight, two leaders count
                queue = self._queue
                chosen = take(
                    [len(c.items) for c in queue],
                    [c.key is key for c in queue],
                    queue.index(call),
                    self._limit,
                )
                batch = [queue[i] for i in chosen]
                for c in batch:
                    c.taken = True
                picked = set(chosen)
                self._queue = [c for i, c in enumerate(queue) if i not in picked]
                self._cond.release()
                try:
                    self._lead(key, batch)
                finally:
                    self._cond.acquire()
                    self._leading -= 1
                    self._cond.notify_all()
        if call.error is not None:
            raise call.error
        return call.result

    def _lead(self, key: K, batch: list[_Call[K, T]]) -> None:
        """One evaluation for ``batch``; each call is done with its own answers or the request's error."""
        together = plan([c.items for c in batch])
        try:
            answers = self._evaluate(key, list(together.unique))
            parts = together.split(answers)
        except BaseException as e:  # every caller whose identifiers the failed request carried hears it
            for c in batch:
                c.error = e
                c.done = True
            return
        for c, part in zip(batch, parts, strict=True):
            c.result = part
            c.done = True
